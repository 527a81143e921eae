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
//!    chunk await the same task). The fetch streams the chunk into the sparse file at its offset
//!    in 1 MiB writes, computing CRC32C on the way, and records the chunk only once all its bytes
//!    are written and their CRC matches. Its source:
//!    - a peer, when this node is not the chunk's primary owner on the ring: the peer chosen by
//!      bounded loads (see `locus-cluster`), which serves it from its disk or gets it itself
//!      (from the origin if it is the primary, else from the primary); a peer that fails is
//!      marked down and the next candidate tried, then the origin;
//!    - the origin, when this node is the primary owner (or no peer could help), bounded by
//!      `concurrency` connections; transient failures (5xx, 429, a body cut short) are retried
//!      with backoff.
//!
//! Metadata goes the same way: revisions and listings are asked of the namespace's owner on the
//! ring, which answers from its cache, so the cluster asks the origin once per TTL.
//!
//! Once every chunk is stored, the whole file is read back once and checked against the digest
//! the origin published (LFS sha256, or the git blob id); each chunk's CRC is checked on that
//! pass too. A failed chunk is dropped and fetched again; a failed digest drops the file's chunks
//! and fetches them once more, then fails, so wrong bytes are never served.

#[doc(hidden)]
pub mod fuzz;
pub mod http;
pub mod metrics_defs;
pub mod peer;
mod read;
mod scope;
pub mod service;
pub mod sha_chain;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use futures::future::{BoxFuture, Shared};
use locus_cluster::{key_hash, Cluster, ClusterConfig};
use locus_core::uri::LocusUri;
use locus_core::{Namespace, RemoteFile, UriError};
use locus_origin::{Origin, OriginError, RetryPolicy};
use locus_store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

pub use read::{chunk_hash, Source, WarmProgress};

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
    /// Pin what a peer's all-nodes warm asks to pin (pinning is otherwise a local decision).
    pub accept_peer_pins: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
            concurrency: 16,
            metadata_ttl: Duration::from_secs(60),
            retry: RetryPolicy::default(),
            accept_peer_pins: false,
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
    WrongLength {
        /// Which file.
        what: String,
        /// Bytes received.
        got: u64,
        /// Bytes asked for.
        want: u64,
    },
    /// A peer answered with an error that settles the matter (the file is missing at the
    /// origin, access is denied).
    #[error(transparent)]
    Peer(#[from] peer::PeerError),
    /// An internal task failed.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for NodeError {
    fn from(e: StoreError) -> Self {
        NodeError::Store(Arc::new(e))
    }
}

impl locus_origin::retry::Transient for NodeError {
    /// Whether one attempt failed in a way another may not (the node owns these retries).
    fn is_transient(&self) -> bool {
        match self {
            NodeError::Origin(e) => e.is_transient(),
            NodeError::WrongLength { .. } => true,
            _ => false,
        }
    }

    /// The wait the origin asked for before the next attempt.
    fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            NodeError::Origin(e) => e.retry_after(),
            _ => None,
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
    /// Bytes sent to peers.
    pub peer_bytes_sent: AtomicU64,
    /// Bytes served from the local disk.
    pub local_bytes: AtomicU64,
    /// Chunk lookups found on disk.
    pub hits: AtomicU64,
    /// Chunk lookups that needed a fetch.
    pub misses: AtomicU64,
    /// Origin data requests (chunk fetch attempts).
    pub origin_requests: AtomicU64,
}

/// Each count is made in one place: the figure `locus status` reads and the Prometheus counter
/// move together.
impl Counters {
    pub(crate) fn hits(&self, chunks: u64) {
        self.hits.fetch_add(chunks, Ordering::Relaxed);
        metrics::counter!(locus_core::metric::CACHE_HITS).increment(chunks);
    }

    pub(crate) fn miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(locus_core::metric::CACHE_MISSES).increment(1);
    }

    pub(crate) fn origin_bytes(&self, n: u64) {
        self.origin_bytes.fetch_add(n, Ordering::Relaxed);
        metrics::counter!(locus_core::metric::ORIGIN_BYTES).increment(n);
    }

    pub(crate) fn peer_received(&self, n: u64) {
        self.peer_bytes.fetch_add(n, Ordering::Relaxed);
        metrics::counter!(locus_core::metric::PEER_BYTES, "direction" => "received").increment(n);
    }

    pub(crate) fn peer_sent(&self, n: u64) {
        self.peer_bytes_sent.fetch_add(n, Ordering::Relaxed);
        metrics::counter!(locus_core::metric::PEER_BYTES, "direction" => "sent").increment(n);
    }
}

type ChunkFuture = Shared<BoxFuture<'static, Result<read::Source, NodeError>>>;

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
    /// Resolved revisions, with when they were resolved. Bounded (least recently used go;
    /// they are resolved again): names come from users and peers.
    revisions: quick_cache::sync::Cache<(Namespace, String), (String, Instant)>,
    /// One lock per metadata key being fetched.
    meta_flights: DashMap<String, Arc<tokio::sync::Mutex<()>>>,
    /// S3 prefixes and folders listed here: a key under one is looked up in its listing.
    prefixes: quick_cache::sync::Cache<Namespace, ()>,
    /// Namespaces whose listing an object changed under: listed again on their next use.
    stale: quick_cache::sync::Cache<Namespace, ()>,
    /// Listings in memory, bounded by their files in all (the index keeps those at immutable
    /// revisions).
    listings: quick_cache::sync::Cache<(Namespace, String), Arc<Vec<RemoteFile>>, ListingWeight>,
    permits: Arc<Semaphore>,
    counters: Counters,
    cluster: Arc<Cluster>,
    peers: Option<Arc<dyn peer::PeerTransport>>,
    /// Peer requests being served now (the load this node reports).
    serving: AtomicU32,
    /// Chunk copies peers started here in the background (bounded: they cannot queue work).
    background: Arc<Semaphore>,
    /// Background copies under way per asking peer (by address): no peer takes them all.
    background_by_peer: Arc<DashMap<std::net::IpAddr, usize>>,
}

/// Background chunk copies peers may have under way on a node at once.
pub(crate) const MAX_BACKGROUND_COPIES: usize = 64;
/// At most this many of them for one peer.
pub(crate) const MAX_BACKGROUND_COPIES_PER_PEER: usize = 16;

/// After an object changed under a listing, answers older than this are not taken (a burst of
/// readers that hit the change still costs one listing).
pub(crate) const RELIST_AGE: Duration = Duration::from_secs(1);

/// Listings, prefixes and namespaces marked stale kept in memory at most.
const MAX_LISTINGS: usize = 4096;
/// Files of all the listings kept in memory at most.
const MAX_LISTED_FILES: u64 = 1 << 20;
/// Resolved revisions kept in memory at most.
const MAX_REVISIONS: usize = 65_536;

/// A listing weighs its files.
#[derive(Clone)]
struct ListingWeight;

impl quick_cache::Weighter<(Namespace, String), Arc<Vec<RemoteFile>>> for ListingWeight {
    fn weight(&self, _: &(Namespace, String), v: &Arc<Vec<RemoteFile>>) -> u64 {
        v.len() as u64 + 1
    }
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
    /// A node on its own, over `origin` and `store`.
    pub fn new(origin: Arc<dyn Origin>, store: Arc<Store>, cfg: NodeConfig) -> Arc<Node> {
        Self::with_cluster(
            origin,
            store,
            cfg,
            Cluster::new(ClusterConfig::solo("local")),
            None,
        )
    }

    /// A node that is a member of `cluster`, reaching its peers through `peers`.
    pub fn with_cluster(
        origin: Arc<dyn Origin>,
        store: Arc<Store>,
        cfg: NodeConfig,
        cluster: Arc<Cluster>,
        peers: Option<Arc<dyn peer::PeerTransport>>,
    ) -> Arc<Node> {
        Arc::new(Node {
            permits: Arc::new(Semaphore::new(cfg.concurrency.max(1))),
            origin,
            store,
            cfg,
            inflight: DashMap::new(),
            revisions: quick_cache::sync::Cache::new(MAX_REVISIONS),
            meta_flights: DashMap::new(),
            prefixes: quick_cache::sync::Cache::new(MAX_LISTINGS),
            stale: quick_cache::sync::Cache::new(MAX_LISTINGS),
            listings: quick_cache::sync::Cache::with_weighter(
                MAX_LISTINGS,
                MAX_LISTED_FILES,
                ListingWeight,
            ),
            counters: Counters::default(),
            cluster,
            peers,
            serving: AtomicU32::new(0),
            background: Arc::new(Semaphore::new(MAX_BACKGROUND_COPIES)),
            background_by_peer: Arc::new(DashMap::new()),
        })
    }

    /// The cluster view.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// The peer transport, when the node has peers.
    pub fn peers(&self) -> Option<&Arc<dyn peer::PeerTransport>> {
        self.peers.as_ref()
    }

    /// Peer requests being served now.
    pub fn serving(&self) -> u32 {
        self.serving.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts chunk bytes received from a peer.
    pub(crate) fn count_received(&self, n: u64) {
        self.counters.peer_received(n);
    }

    /// Counts chunk bytes sent to a peer.
    pub(crate) fn count_sent(&self, n: u64) {
        self.counters.peer_sent(n);
    }

    /// Marks `addr` down when `e` says it cannot serve this node.
    fn peer_failed(&self, addr: &str, e: &peer::PeerError) {
        if e.marks_down() {
            self.cluster.mark_down(addr, &e.to_string());
        }
    }

    /// The member that owns `ns`'s metadata, when it is another node that answers.
    fn metadata_owner(&self, ns: &Namespace) -> Option<(String, Arc<dyn peer::PeerTransport>)> {
        if matches!(ns, Namespace::Http { url } if locus_core::redact::private(url)) {
            return None;
        }
        let peers = self.peers.clone()?;
        let owner = self
            .cluster
            .primary(key_hash(format!("meta:{ns}").as_bytes()));
        (owner != self.cluster.me()).then_some((owner, peers))
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

    /// Serializes fetches of one metadata key, so that concurrent misses make one request.
    async fn meta_flight(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        if self.meta_flights.len() > MAX_LISTINGS {
            self.meta_flights.retain(|_, m| Arc::strong_count(m) > 1);
        }
        let m = self
            .meta_flights
            .entry(key.to_string())
            .or_default()
            .clone();
        m.lock_owned().await
    }

    /// Resolves a revision to an immutable id: cached for the metadata TTL; past it, a fresh
    /// answer is asked for, and an old one is used only if the origin cannot be reached.
    async fn revision(&self, ns: &Namespace, rev: &str) -> Result<String, NodeError> {
        // A full commit id is immutable: nothing to ask.
        if ns.has_revisions() && is_commit_id(rev) {
            return Ok(rev.to_string());
        }
        let k = (ns.clone(), rev.to_string());
        // After an object changed under this namespace's listing: a fresh one, also from its owner.
        let max_age = match self.stale.remove(ns) {
            Some(_) => RELIST_AGE,
            None => self.cfg.metadata_ttl,
        };
        if let Some(e) = self.revisions.get(&k) {
            if e.1.elapsed() < max_age {
                return Ok(e.0.clone());
            }
        }
        if let Some((owner, peers)) = self.metadata_owner(ns) {
            let req = locus_grpc::v1::ResolveRequest {
                namespace: ns.to_string(),
                revision: rev.to_string(),
                max_age_ms: max_age.as_millis() as u64,
            };
            match peers.resolve(&owner, req).await {
                Ok(r) if r.id.len() <= peer::MAX_FIELD && !r.id.is_empty() => {
                    let age = Duration::from_millis(r.age_ms).min(self.cfg.metadata_ttl);
                    let at = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
                    self.revisions.insert(k, (r.id.clone(), at));
                    return Ok(r.id);
                }
                Ok(_) => self.cluster.mark_down(&owner, "sent an empty revision"),
                Err(e) => {
                    self.peer_failed(&owner, &e);
                    if e.settles() {
                        return Err(e.into());
                    }
                    tracing::warn!(%ns, rev, error = %e, "metadata owner did not answer; asking the origin");
                }
            }
        }
        self.revision_local(ns, rev, max_age)
            .await
            .map(|(id, _)| id)
    }

    /// Marks the listing `file` came from as out of date (an object changed under it): the next
    /// resolution of its namespace lists again, at its owner too.
    pub(crate) fn listing_changed(&self, file: &RemoteFile) {
        let Some(l) = &file.listed else { return };
        if let Ok(u) = LocusUri::parse(&l.namespace) {
            self.revisions
                .remove(&(u.namespace.clone(), locus_core::LATEST.to_string()));
            self.stale.insert(u.namespace, ());
        }
    }

    /// Resolves a revision from this node's cache (answers younger than `max_age` and the TTL)
    /// or the origin (never a peer), with the age of the answer: what a metadata owner serves.
    pub async fn revision_local(
        &self,
        ns: &Namespace,
        rev: &str,
        max_age: Duration,
    ) -> Result<(String, Duration), NodeError> {
        let k = (ns.clone(), rev.to_string());
        let max_age = max_age.min(self.cfg.metadata_ttl);
        let fresh = |n: &Node| {
            n.revisions
                .get(&k)
                .filter(|e| e.1.elapsed() < max_age)
                .map(|e| (e.0.clone(), e.1.elapsed()))
        };
        if let Some(hit) = fresh(self) {
            return Ok(hit);
        }
        let meta_key = format!("rev:{ns}@{rev}");
        // Concurrent misses (a burst of peers asking the owner) make one origin call.
        let _flight = self.meta_flight(&meta_key).await;
        if let Some(hit) = fresh(self) {
            return Ok(hit);
        }
        self.revision_origin(ns, rev, k, meta_key)
            .await
            .map(|id| (id, Duration::ZERO))
    }

    async fn revision_origin(
        &self,
        ns: &Namespace,
        rev: &str,
        k: (Namespace, String),
        meta_key: String,
    ) -> Result<String, NodeError> {
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
            Err(e) if e.is_outage() => {
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

    /// Every file of `ns` at `rev_id`: from memory, the index, the namespace's owner (unless
    /// `local_only`), or the origin.
    pub async fn listing(
        &self,
        ns: &Namespace,
        rev_id: &str,
        local_only: bool,
    ) -> Result<Arc<Vec<RemoteFile>>, NodeError> {
        let k = (ns.clone(), rev_id.to_string());
        if let Some(l) = self.listings.get(&k) {
            return Ok(l);
        }
        let meta_key = format!("list:{ns}@{rev_id}");
        // A metadata owner serving a peer (`local_only`) never waits behind this node's own
        // request to another owner: two nodes that disagree about the owner would wait on each
        // other.
        let flight = match local_only {
            true => format!("local:{meta_key}"),
            false => meta_key.clone(),
        };
        let _flight = self.meta_flight(&flight).await;
        if let Some(l) = self.listings.get(&k) {
            return Ok(l);
        }
        let from_owner = match self.metadata_owner(ns).filter(|_| !local_only) {
            Some((owner, peers)) if self.store.meta_get(&meta_key).is_none() => {
                self.listing_from(ns, rev_id, &owner, &*peers).await?
            }
            _ => None,
        };
        let files = match from_owner.or_else(|| {
            self.store
                .meta_get(&meta_key)
                .and_then(|b| serde_json::from_slice::<Vec<RemoteFile>>(&b).ok())
        }) {
            Some(f) => f,
            None => {
                let f = self.origin.list(ns, rev_id).await?;
                // Listings of names without revisions move on every TTL: kept in memory only.
                if ns.has_revisions() {
                    if let Ok(b) = serde_json::to_vec(&f) {
                        self.store.meta_put(&meta_key, b);
                    }
                }
                f
            }
        };
        let mut files = files;
        if !ns.has_revisions() {
            // One listing per such namespace: the latest.
            self.listings.retain(|(n, _), _| n != ns);
            // Prefixes whose keys are worth a re-list instead of a HEAD each: not a whole
            // bucket or file system, and not more than a few LIST pages.
            let root = matches!(ns, Namespace::S3 { prefix, .. } if prefix.is_empty())
                || matches!(ns, Namespace::File { path } if path == "/");
            if files.len() > 1 && files.len() <= 5_000 && !root {
                self.prefixes.insert(ns.clone(), ());
            }
            let listed = locus_core::Listed {
                namespace: ns.to_string(),
                revision: rev_id.to_string(),
            };
            for f in &mut files {
                f.listed = Some(listed.clone());
            }
        }
        let files = Arc::new(files);
        self.listings.insert(k, files.clone());
        Ok(files)
    }

    /// A listing from the namespace's owner, checked entry by entry; `None` (ask the origin)
    /// when the owner cannot answer, an error when its answer settles the matter.
    async fn listing_from(
        &self,
        ns: &Namespace,
        rev_id: &str,
        owner: &str,
        peers: &dyn peer::PeerTransport,
    ) -> Result<Option<Vec<RemoteFile>>, NodeError> {
        let req = locus_grpc::v1::PeerListRequest {
            namespace: ns.to_string(),
            revision_id: rev_id.to_string(),
        };
        let e = match peers.list(owner, req).await {
            Ok(r) if r.files.len() <= peer::MAX_FILES => {
                match r
                    .files
                    .into_iter()
                    .map(peer::file_from_pb)
                    .collect::<Result<Vec<_>, _>>()
                {
                    Ok(f) => {
                        if ns.has_revisions() {
                            if let Ok(b) = serde_json::to_vec(&f) {
                                self.store.meta_put(&format!("list:{ns}@{rev_id}"), b);
                            }
                        }
                        return Ok(Some(f));
                    }
                    Err(why) => peer::PeerError::garbled(owner, why),
                }
            }
            Ok(_) => peer::PeerError::garbled(owner, "too many files"),
            Err(e) => e,
        };
        self.peer_failed(owner, &e);
        if e.settles() {
            return Err(e.into());
        }
        tracing::warn!(%ns, rev_id, error = %e, "metadata owner did not answer; asking the origin");
        Ok(None)
    }

    /// What a fresh listing of an enclosing prefix or folder already says of `ns` (an S3 key
    /// or prefix, a file or folder): the HEAD or LIST it would cost is answered from memory.
    fn known_from_enclosing(&self, ns: &Namespace) -> Option<Resolved> {
        for (parent, rel) in ns.ancestors() {
            let k = (parent, locus_core::LATEST.to_string());
            let Some(rev) = self
                .revisions
                .get(&k)
                .filter(|e| e.1.elapsed() < self.cfg.metadata_ttl)
                .map(|e| e.0.clone())
            else {
                continue;
            };
            let Some(all) = self.listings.get(&(k.0, rev.clone())) else {
                continue;
            };
            if let Some(f) = all.iter().find(|f| f.path == rel) {
                let name = rel.rsplit('/').next().unwrap_or(&rel).to_string();
                return Some(Resolved {
                    revision: rev,
                    files: vec![RemoteFile {
                        path: name,
                        ..f.clone()
                    }],
                    is_file: true,
                });
            }
            let inside = format!("{rel}/");
            let files: Vec<_> = all
                .iter()
                .filter_map(|f| {
                    let p = f.path.strip_prefix(&inside)?;
                    Some(RemoteFile {
                        path: p.to_string(),
                        ..f.clone()
                    })
                })
                .collect();
            // An empty answer may just be an object created since: ask the origin.
            if !files.is_empty() {
                return Some(Resolved {
                    revision: rev,
                    files,
                    is_file: false,
                });
            }
        }
        None
    }

    /// Resolves `uri` to the files it names at an immutable revision.
    pub async fn resolve(&self, uri: &LocusUri) -> Result<Resolved, NodeError> {
        if let Some(r) = self.known_from_enclosing(&uri.namespace) {
            return Ok(r);
        }
        // A prefix listed before, whose TTL ran out: list it again (one call for all its keys,
        // at its owner) rather than ask for this key alone.
        let parent = uri
            .namespace
            .ancestors()
            .into_iter()
            .map(|(p, _)| p)
            .find(|p| self.prefixes.contains_key(p));
        if let Some(parent) = parent {
            if let Ok(rev) = self.revision(&parent, locus_core::LATEST).await {
                if self.listing(&parent, &rev, false).await.is_ok() {
                    if let Some(r) = self.known_from_enclosing(&uri.namespace) {
                        return Ok(r);
                    }
                }
            }
        }
        let revision = self
            .revision(&uri.namespace, uri.revision_or_default())
            .await?;
        let all = self.listing(&uri.namespace, &revision, false).await?;
        if uri.path.is_empty() {
            // A name without revisions that lists as itself is one object or file.
            let is_file = !uri.namespace.has_revisions()
                && all.len() == 1
                && all[0].uri == uri.namespace.to_string();
            return Ok(Resolved {
                revision,
                files: all.to_vec(),
                is_file,
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

    /// How long `r` (what `uri` resolved to) stays current, `None` when never (a full commit
    /// id), and how old it already is: the age of the revision it was resolved to, taken from
    /// the namespace or the enclosing listing that answered.
    pub fn freshness(&self, uri: &LocusUri, r: &Resolved) -> (Option<Duration>, Duration) {
        let rev = uri.revision_or_default();
        if uri.namespace.has_revisions() && is_commit_id(rev) {
            return (None, Duration::ZERO);
        }
        let ttl = self.cfg.metadata_ttl;
        let age = std::iter::once(uri.namespace.clone())
            .chain(uri.namespace.ancestors().into_iter().map(|(p, _)| p))
            .find_map(|ns| {
                self.revisions
                    .get(&(ns, rev.to_string()))
                    .filter(|e| e.0 == r.revision)
                    .map(|e| e.1.elapsed())
            })
            .unwrap_or_default();
        (Some(ttl), age.min(ttl))
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

/// A full commit id: 40 lowercase hex digits.
fn is_commit_id(rev: &str) -> bool {
    rev.len() == 40 && rev.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests;
