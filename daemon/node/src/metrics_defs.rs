//! Every metric locus exports: the names (from `locus_core::metric`), their descriptions and
//! buckets.

pub use locus_core::metric::*;

/// Buckets of [`FETCH_SECONDS`].
pub const FETCH_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Buckets of [`INDEX_COMMIT_SECONDS`].
pub const INDEX_COMMIT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Describes every metric and sets the ones that must be visible from the start.
pub fn describe() {
    use metrics::Unit;
    metrics::describe_counter!(ORIGIN_REQUESTS, "Requests sent to origins, by kind");
    metrics::describe_counter!(
        ORIGIN_RETRIES,
        "Origin requests retried after a transient failure"
    );
    metrics::describe_counter!(ORIGIN_BYTES, Unit::Bytes, "Bytes received from origins");
    metrics::describe_counter!(
        PEER_BYTES,
        Unit::Bytes,
        "Bytes exchanged with peers, by direction"
    );
    metrics::describe_counter!(CACHE_HITS, "Chunk lookups served from local disk");
    metrics::describe_counter!(CACHE_MISSES, "Chunk lookups that needed a fetch");
    metrics::describe_gauge!(CACHE_BYTES, Unit::Bytes, "Bytes held by the local cache");
    metrics::describe_gauge!(CACHE_CAPACITY, Unit::Bytes, "Capacity of the local cache");
    metrics::describe_gauge!(CACHE_FILES, "Files known to the local cache");
    metrics::describe_gauge!(PINNED_FILES, "Pinned files in the local cache");
    metrics::describe_gauge!(
        PINNED_BYTES,
        Unit::Bytes,
        "Bytes of pinned files in the local cache"
    );
    metrics::describe_gauge!(
        BUILD_INFO,
        "1, labelled with the build's version and commit"
    );
    metrics::describe_counter!(EVICTIONS, "Files evicted from the local cache");
    metrics::describe_counter!(
        EVICTED_BYTES,
        Unit::Bytes,
        "Bytes evicted from the local cache"
    );
    metrics::describe_histogram!(FETCH_SECONDS, Unit::Seconds, "Time to fetch one chunk");
    metrics::describe_histogram!(
        INDEX_COMMIT_SECONDS,
        Unit::Seconds,
        "Time of one commit of the cache index"
    );
    metrics::describe_gauge!(RING_MEMBERS, "Members of the consistent-hash ring");
    metrics::describe_counter!(PEER_DOWN, "Peers marked down (failed, silent or garbled)");
    metrics::describe_counter!(
        PEER_AUTH_FAILURES,
        "Peer requests refused for a missing or wrong token"
    );
    metrics::describe_counter!(PEER_INVALID_REQUESTS, "Peer requests refused as malformed");
    metrics::describe_counter!(
        PEER_TLS_RELOADS,
        "Peer TLS certificates or CAs taken up again from their files"
    );
    metrics::describe_counter!(
        PEER_REQUESTS,
        "Chunk requests sent to peers, by result and transport"
    );
    metrics::describe_counter!(
        MEMBERSHIP_ERRORS,
        "Times the membership source could not be reached"
    );
    metrics::describe_counter!(
        METADATA_REFRESHES,
        "Revisions in use asked for again before their metadata TTL ran out"
    );
    metrics::describe_counter!(CHUNK_CORRUPTIONS, "Chunks that failed their checksum");
    metrics::describe_counter!(
        CHUNKS_RECHECKED,
        "Stored chunks CRC-checked again before a file was handed out"
    );
    metrics::describe_counter!(
        DIGEST_MISMATCHES,
        "Files whose bytes did not match the origin's digest"
    );
    for c in [
        ORIGIN_BYTES,
        CACHE_HITS,
        CACHE_MISSES,
        EVICTIONS,
        CHUNK_CORRUPTIONS,
        CHUNKS_RECHECKED,
        PEER_DOWN,
        PEER_AUTH_FAILURES,
        PEER_INVALID_REQUESTS,
        PEER_TLS_RELOADS,
        MEMBERSHIP_ERRORS,
        METADATA_REFRESHES,
    ] {
        metrics::counter!(c).absolute(0);
    }
    for d in ["sent", "received"] {
        metrics::counter!(PEER_BYTES, "direction" => d).absolute(0);
    }
    for r in ["ok", "error"] {
        for t in ["wire", "grpc"] {
            metrics::counter!(PEER_REQUESTS, "result" => r, "transport" => t).absolute(0);
        }
    }
    for k in locus_origin::REQUEST_KINDS {
        metrics::counter!(ORIGIN_REQUESTS, "kind" => k).absolute(0);
    }
}
