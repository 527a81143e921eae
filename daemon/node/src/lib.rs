//! A locus node: everything a daemon does for its own machine.
//!
//! # The read path
//! A request names a URI. [`Node::resolve`] (`metadata.rs`) turns its revision into an immutable
//! commit (cached for the metadata TTL, and kept past it if the origin is unreachable) and lists
//! the files at that commit (immutable, so cached for good, in memory and in the store's index).
//! For each file, [`Node::ensure_file`] (`read.rs`) registers it in the
//! [`Store`](locus_store::Store) and asks for each missing chunk:
//!
//! 1. local disk: a stored chunk is a hit;
//! 2. otherwise one fetch per chunk on this node (single-flight, `fetches.rs`: concurrent readers
//!    of a missing chunk await the same task). The fetch streams the chunk into the sparse file at its offset
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

mod coverage;
mod fetches;
#[doc(hidden)]
pub mod fuzz;
mod health;
pub mod http;
mod metadata;
pub mod metrics_defs;
pub mod peer;
mod read;
pub mod service;
pub mod sha_chain;
mod warm;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use locus_cluster::{Cluster, ClusterConfig};
use locus_core::UriError;
use locus_origin::{Origin, OriginError, RetryPolicy};
use locus_store::{Store, StoreError};

pub use coverage::Coverage;
pub use health::{HEALTH_EVERY, HEALTH_FAILURES, UP_CHECKS};
pub use metadata::Resolved;
pub(crate) use metadata::RELIST_AGE;
pub use read::{chunk_hash, Source, WarmProgress};
pub use warm::Scope;

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

/// Entries per page of a listing (`ListPages`, on the local and the peer API).
pub(crate) const LIST_PAGE: usize = 10_000;

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
    /// `--include`/`--exclude` left none of the files the URIs name.
    #[error("--include {include:?} / --exclude {exclude:?} selected none of the files; nearest: {}", nearest.join(", "))]
    NothingSelected {
        /// The include patterns.
        include: String,
        /// The exclude patterns.
        exclude: String,
        /// Names nearest to the first pattern (or the first names, if none is near).
        nearest: Vec<String>,
    },
    /// A malformed include or exclude pattern.
    #[error("bad glob {0}")]
    BadGlob(String),
    /// A warm scope that does not exist.
    #[error("unknown scope {0:?} (use node, cluster or all-nodes)")]
    BadScope(String),
    /// Members' copies of an all-nodes warm failed: each member's address and error.
    #[error("the copies on {} members failed: {}", .0.len(), .0.iter().map(|(m, e)| format!("{m}: {e}")).collect::<Vec<_>>().join("; "))]
    MembersFailed(Vec<(String, NodeError)>),
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

/// Node-wide counters: the one record of these figures. `locus status` reads them, and
/// [`Counters::publish`] hands them to the metrics recorder before each scrape.
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

impl Counters {
    pub(crate) fn hits(&self, chunks: u64) {
        self.hits.fetch_add(chunks, Ordering::Relaxed);
    }

    pub(crate) fn miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn origin_bytes(&self, n: u64) {
        self.origin_bytes.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn peer_received(&self, n: u64) {
        self.peer_bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Bytes a consumer (a command, the loader, a mount, a peer) got from this node's cache.
    pub(crate) fn local(&self, n: u64) {
        self.local_bytes.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn peer_sent(&self, n: u64) {
        self.peer_bytes_sent.fetch_add(n, Ordering::Relaxed);
    }

    /// Sets the Prometheus counters to these figures (call before rendering them).
    pub fn publish(&self) {
        use locus_core::metric::{CACHE_HITS, CACHE_MISSES, ORIGIN_BYTES, PEER_BYTES};
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        metrics::counter!(CACHE_HITS).absolute(get(&self.hits));
        metrics::counter!(CACHE_MISSES).absolute(get(&self.misses));
        metrics::counter!(ORIGIN_BYTES).absolute(get(&self.origin_bytes));
        metrics::counter!(PEER_BYTES, "direction" => "received").absolute(get(&self.peer_bytes));
        metrics::counter!(PEER_BYTES, "direction" => "sent").absolute(get(&self.peer_bytes_sent));
    }
}

/// A node.
pub struct Node {
    /// This node, for work it starts in the background (a metadata refresh).
    me: std::sync::Weak<Node>,
    origin: Arc<dyn Origin>,
    store: Arc<Store>,
    cfg: NodeConfig,
    /// Chunk fetches under way, origin permits and retries.
    fetches: fetches::Fetches,
    /// Revisions and listings.
    meta: metadata::MetaCache,
    counters: Counters,
    cluster: Arc<Cluster>,
    peers: Option<Arc<dyn peer::PeerTransport>>,
    /// Peer requests being served now (the load this node reports).
    serving: AtomicU32,
    /// Chunk copies peers started here in the background (bounded: they cannot queue work).
    background: peer::server::BackgroundCopies,
}

/// Background chunk copies peers may have under way on a node at once.
pub(crate) const MAX_BACKGROUND_COPIES: usize = 64;
/// At most this many of them for one peer.
pub(crate) const MAX_BACKGROUND_COPIES_PER_PEER: usize = 16;

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
        Arc::new_cyclic(|me| Node {
            me: me.clone(),
            fetches: fetches::Fetches::new(cfg.concurrency, cfg.retry),
            meta: metadata::MetaCache::new(cfg.metadata_ttl, store.clone()),
            origin,
            store,
            cfg,
            counters: Counters::default(),
            cluster,
            peers,
            serving: AtomicU32::new(0),
            background: peer::server::BackgroundCopies::default(),
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

    /// Brings the figures that are read rather than counted up to date in the metrics
    /// recorder: the counters, and what is pinned (call before rendering the metrics).
    pub fn publish_metrics(&self) {
        self.counters.publish();
        let s = self.store.stats();
        metrics::gauge!(locus_core::metric::PINNED_FILES).set(s.pinned as f64);
        metrics::gauge!(locus_core::metric::PINNED_BYTES).set(s.pinned_bytes as f64);
    }
}

#[cfg(test)]
mod tests;
