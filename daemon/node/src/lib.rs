//! A locus node: everything a daemon does for its own machine.
//!
//! # The read path
//! A request names a URI. [`Node::resolve`] turns its revision into an immutable commit (cached
//! for the metadata TTL, and kept past it if the origin is unreachable) and lists the files at
//! that commit (immutable, so cached for good, in memory and in the store's index). For each
//! file, [`Node::ensure_file`] registers it in the [`Store`](locus_store::Store) and asks for each
//! missing chunk:
//!
//! 1. local disk: a stored chunk is a hit;
//! 2. otherwise one fetch per chunk on this node (single-flight: concurrent readers of a missing
//!    chunk await the same task), bounded by `concurrency` origin connections. The fetch streams the
//!    range into the sparse file at the chunk's offset in 1 MiB writes, computing CRC32C on the
//!    way, and records the chunk only once all its bytes are written. Transient failures
//!    (5xx, 429, a body cut short) are retried with backoff.
//!
//! Once every chunk is stored, the whole file is read back once and checked against the digest
//! the origin published (LFS sha256, or the git blob id); each chunk's CRC is checked on that
//! pass too. A failed chunk is dropped and fetched again; a failed digest drops the file's chunks
//! and fetches them once more, then fails, so wrong bytes are never served.

pub mod http;
pub mod metrics_defs;
mod read;
pub mod service;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use futures::future::{BoxFuture, Shared};
use locus_core::uri::LocusUri;
use locus_core::{Namespace, RemoteFile, UriError};
use locus_origin::{Origin, OriginError, RetryPolicy};
use locus_store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

pub use read::WarmProgress;

/// What a node does when asked.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Chunk size of files entering the cache.
    pub chunk_size: u64,
    /// Origin connections at once.
    pub concurrency: usize,
    /// How long a branch or tag stays resolved to one commit.
    pub metadata_ttl: Duration,
    /// Retries of chunk fetches whose body broke off.
    pub retry: RetryPolicy,
    /// This node's address as shown in status.
    pub advertise: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
            concurrency: 16,
            metadata_ttl: Duration::from_secs(60),
            retry: RetryPolicy::default(),
            advertise: "local".into(),
        }
    }
}

/// The default chunk size; see ARCHITECTURE.md for the measurement behind it.
pub const DEFAULT_CHUNK_SIZE: u64 = 8 << 20;

/// Errors of the read path. Cloneable, as one fetch's result is shared by every waiter.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeError {
    /// A malformed URI.
    #[error(transparent)]
    Uri(#[from] UriError),
    /// The origin failed.
    #[error(transparent)]
    Origin(#[from] OriginError),
    /// The store failed.
    #[error(transparent)]
    Store(Arc<StoreError>),
    /// Nothing at that path.
    #[error("{0}: no such file or folder")]
    NotFound(String),
    /// A folder where a file was expected.
    #[error("{0} is a folder, not a file")]
    IsFolder(String),
    /// The origin's bytes do not match the digest it published, twice.
    #[error("{0}: the origin's bytes do not match its published digest (fetched twice); not serving them")]
    DigestMismatch(String),
    /// The origin sent more or fewer bytes than asked.
    #[error("{what}: origin sent {got} bytes for a {want}-byte range")]
    ShortBody {
        /// Which file.
        what: String,
        /// Bytes received.
        got: u64,
        /// Bytes asked for.
        want: u64,
    },
    /// An internal task failed.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for NodeError {
    fn from(e: StoreError) -> Self {
        NodeError::Store(Arc::new(e))
    }
}

impl NodeError {
    fn is_transient(&self) -> bool {
        match self {
            NodeError::Origin(e) => e.is_transient(),
            NodeError::ShortBody { .. } => true,
            _ => false,
        }
    }
}

/// Node-wide counters, for `locus status` (the same figures go to Prometheus).
#[derive(Default)]
pub struct Counters {
    /// Bytes received from the origin.
    pub origin_bytes: AtomicU64,
    /// Bytes received from peers.
    pub peer_bytes: AtomicU64,
    /// Bytes served from the local disk.
    pub local_bytes: AtomicU64,
    /// Chunk lookups found on disk.
    pub hits: AtomicU64,
    /// Chunk lookups that needed a fetch.
    pub misses: AtomicU64,
    /// Origin data requests (chunk fetch attempts).
    pub origin_requests: AtomicU64,
}

type ChunkFuture = Shared<BoxFuture<'static, Result<(), NodeError>>>;

#[derive(Serialize, Deserialize)]
struct CachedRevision {
    id: String,
    at_ms: u64,
}

/// A node.
pub struct Node {
    origin: Arc<dyn Origin>,
    store: Arc<Store>,
    cfg: NodeConfig,
    inflight: DashMap<(String, u32), ChunkFuture>,
    revisions: DashMap<(Namespace, String), (String, Instant)>,
    listings: DashMap<(Namespace, String), Arc<Vec<RemoteFile>>>,
    permits: Arc<Semaphore>,
    counters: Counters,
}

/// A URI resolved at an immutable revision.
pub struct Resolved {
    /// The commit.
    pub revision: String,
    /// The files it names (one for a file URI).
    pub files: Vec<RemoteFile>,
    /// Whether the URI named a single file.
    pub is_file: bool,
}

impl Node {
    /// A node over `origin` and `store`.
    pub fn new(origin: Arc<dyn Origin>, store: Arc<Store>, cfg: NodeConfig) -> Arc<Node> {
        Arc::new(Node {
            permits: Arc::new(Semaphore::new(cfg.concurrency.max(1))),
            origin,
            store,
            cfg,
            inflight: DashMap::new(),
            revisions: DashMap::new(),
            listings: DashMap::new(),
            counters: Counters::default(),
        })
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// Resolves a revision to an immutable id: cached for the metadata TTL; past it, a fresh
    /// answer is asked for, and an old one is used only if the origin cannot be reached.
    async fn revision(&self, ns: &Namespace, rev: &str) -> Result<String, NodeError> {
        let k = (ns.clone(), rev.to_string());
        if let Some(e) = self.revisions.get(&k) {
            if e.1.elapsed() < self.cfg.metadata_ttl {
                return Ok(e.0.clone());
            }
        }
        let meta_key = format!("rev:{ns}@{rev}");
        match self.origin.resolve(ns, rev).await {
            Ok(id) => {
                self.revisions.insert(k, (id.clone(), Instant::now()));
                let v = CachedRevision {
                    id: id.clone(),
                    at_ms: locus_core::unix_ms(),
                };
                if let Ok(b) = serde_json::to_vec(&v) {
                    self.store.meta_put(&meta_key, b);
                }
                Ok(id)
            }
            Err(e) if e.is_transient() => {
                let stale = self.revisions.get(&k).map(|e| e.0.clone()).or_else(|| {
                    self.store
                        .meta_get(&meta_key)
                        .and_then(|b| serde_json::from_slice::<CachedRevision>(&b).ok())
                        .map(|c| c.id)
                });
                match stale {
                    Some(id) => {
                        tracing::warn!(%ns, rev, id, error = %e, "origin unreachable; using the last known revision");
                        Ok(id)
                    }
                    None => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn listing(
        &self,
        ns: &Namespace,
        rev_id: &str,
    ) -> Result<Arc<Vec<RemoteFile>>, NodeError> {
        let k = (ns.clone(), rev_id.to_string());
        if let Some(l) = self.listings.get(&k) {
            return Ok(l.clone());
        }
        let meta_key = format!("list:{ns}@{rev_id}");
        let files = match self
            .store
            .meta_get(&meta_key)
            .and_then(|b| serde_json::from_slice::<Vec<RemoteFile>>(&b).ok())
        {
            Some(f) => f,
            None => {
                let f = self.origin.list(ns, rev_id).await?;
                if let Ok(b) = serde_json::to_vec(&f) {
                    self.store.meta_put(&meta_key, b);
                }
                f
            }
        };
        let files = Arc::new(files);
        self.listings.insert(k, files.clone());
        Ok(files)
    }

    /// Resolves `uri` to the files it names at an immutable revision.
    pub async fn resolve(&self, uri: &LocusUri) -> Result<Resolved, NodeError> {
        let revision = self
            .revision(&uri.namespace, uri.revision_or_default())
            .await?;
        let all = self.listing(&uri.namespace, &revision).await?;
        if uri.path.is_empty() {
            return Ok(Resolved {
                revision,
                files: all.to_vec(),
                is_file: false,
            });
        }
        if let Some(f) = all.iter().find(|f| f.path == uri.path) {
            return Ok(Resolved {
                revision,
                files: vec![f.clone()],
                is_file: true,
            });
        }
        let prefix = format!("{}/", uri.path);
        let files: Vec<_> = all
            .iter()
            .filter(|f| f.path.starts_with(&prefix))
            .cloned()
            .collect();
        if files.is_empty() {
            return Err(NodeError::NotFound(uri.at_revision(&revision).to_string()));
        }
        Ok(Resolved {
            revision,
            files,
            is_file: false,
        })
    }

    /// Resolves a URI that must name one file.
    pub async fn resolve_file(&self, uri: &LocusUri) -> Result<RemoteFile, NodeError> {
        let r = self.resolve(uri).await?;
        match (r.is_file, r.files.into_iter().next()) {
            (true, Some(f)) => Ok(f),
            _ => Err(NodeError::IsFolder(uri.to_string())),
        }
    }
}

#[cfg(test)]
mod tests;
