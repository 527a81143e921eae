//! The name of every metric a locus daemon exports, in one place for every crate that counts
//! (the store, the cluster view, the origins, the node). Names follow Prometheus conventions:
//! base units, counters end in `_total`. Descriptions are registered by the node
//! (`locus_node::metrics_defs::describe`); the FUSE view's own metrics are `locus_fuse::metrics`.

/// Origin requests, by `kind` (`revision`, `list`, `head`, `get`).
pub const ORIGIN_REQUESTS: &str = "locus_origin_requests_total";
/// Origin request retries, by `kind`.
pub const ORIGIN_RETRIES: &str = "locus_origin_retries_total";
/// Bytes received from origins.
pub const ORIGIN_BYTES: &str = "locus_origin_bytes_total";
/// Bytes exchanged with peers, by `direction` (`sent`, `received`).
pub const PEER_BYTES: &str = "locus_peer_bytes_total";
/// Chunk lookups found on local disk.
pub const CACHE_HITS: &str = "locus_cache_hits_total";
/// Chunk lookups that needed a fetch.
pub const CACHE_MISSES: &str = "locus_cache_misses_total";
/// Bytes held by the local cache.
pub const CACHE_BYTES: &str = "locus_cache_bytes";
/// The local cache's capacity.
pub const CACHE_CAPACITY: &str = "locus_cache_capacity_bytes";
/// Files known to the local cache.
pub const CACHE_FILES: &str = "locus_cache_files";
/// Gauge: pinned files, and their bytes here (published before each scrape).
pub const PINNED_FILES: &str = "locus_cache_pinned_files";
/// Gauge: bytes of pinned files.
pub const PINNED_BYTES: &str = "locus_cache_pinned_bytes";
/// Gauge, always 1: the build's `version` and `commit` as labels.
pub const BUILD_INFO: &str = "locus_build_info";
/// Files evicted.
pub const EVICTIONS: &str = "locus_evictions_total";
/// Bytes evicted.
pub const EVICTED_BYTES: &str = "locus_evicted_bytes_total";
/// Chunk fetch latency, by `source`.
pub const FETCH_SECONDS: &str = "locus_fetch_seconds";
/// Members of the ring.
pub const RING_MEMBERS: &str = "locus_ring_members";
/// Chunks that failed their checksum on read.
pub const CHUNK_CORRUPTIONS: &str = "locus_chunk_corruptions_total";
/// Stored chunks read again and CRC-checked before a file was handed out (chunks not found
/// right since the daemon started, or of a file changed on disk since).
pub const CHUNKS_RECHECKED: &str = "locus_chunks_rechecked_total";
/// Files whose bytes did not match the origin's digest.
pub const DIGEST_MISMATCHES: &str = "locus_digest_mismatches_total";

/// Peers marked down by a reader or a health check.
pub const PEER_DOWN: &str = "locus_peer_down_total";
/// Peer requests refused for a missing or wrong token.
pub const PEER_AUTH_FAILURES: &str = "locus_peer_auth_failures_total";
/// Peer TLS certificates or CAs taken up again from their files (renewals).
pub const PEER_TLS_RELOADS: &str = "locus_peer_tls_reloads_total";
/// Peer requests refused as malformed.
pub const PEER_INVALID_REQUESTS: &str = "locus_peer_invalid_requests_total";
/// Peer chunk requests, by `result` (`ok`, `error`) as seen by the reader and `transport`
/// (`wire`: the plain-TCP chunk wire; `grpc`: a gRPC stream).
pub const PEER_REQUESTS: &str = "locus_peer_requests_total";
/// Revisions (a branch, an S3 prefix's listing) in use asked for again in the background
/// before their metadata TTL ran out, so that no reader waits for them.
pub const METADATA_REFRESHES: &str = "locus_metadata_refreshes_total";
/// Time of one commit of the cache index (its ops gathered, written and made durable).
pub const INDEX_COMMIT_SECONDS: &str = "locus_index_commit_seconds";
/// Times the membership source (etcd, DNS) could not be reached.
pub const MEMBERSHIP_ERRORS: &str = "locus_membership_errors_total";
