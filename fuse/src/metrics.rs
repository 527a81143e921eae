//! The mount's metrics (the daemon's are in `locus_node::metrics_defs`). A mount inside the
//! daemon (`locus daemon --mount`) is exported on the daemon's `--metrics` endpoint; a
//! `locus mount` process on its own `--metrics` endpoint.

/// FUSE requests answered, by `op` and `on` (`reader`: on the thread that read it from the
/// kernel; `pool`: on the blocking pool, for requests that may wait).
pub const REQUESTS: &str = "locus_fuse_requests_total";
/// Bytes returned by reads through the mount's own read path (not passthrough).
pub const READ_BYTES: &str = "locus_fuse_read_bytes_total";
/// Requests answered with an error other than a plain "no such name", by `op`.
pub const FAILURES: &str = "locus_fuse_failures_total";
/// Opens handed to the kernel (FUSE passthrough: its reads never reach the mount).
pub const PASSTHROUGH_OPENS: &str = "locus_fuse_passthrough_opens_total";

/// An auto mount that settled whether it answers opens, by `to`: `none` (only small files
/// were opened: the kernel opens and closes files itself from then on) or `always`.
pub const OPENS_SETTLED: &str = "locus_fuse_opens_settled_total";

/// Small cached files whose cache file a helper opened, and whose pages it asked for, when
/// the kernel looked them up (ahead of its open and read).
pub const OPENED_AHEAD: &str = "locus_fuse_opened_ahead_total";

/// Listings asked for again because their metadata TTL had passed.
pub const RELISTS: &str = "locus_fuse_relists_total";
/// Of those, the ones asked for ahead of the TTL (in the background, while the listing was in
/// use), so that no reader waited at the TTL.
pub const RELISTS_AHEAD: &str = "locus_fuse_relists_ahead_total";
/// First reads of files that the node already held though the listing they came from did
/// not show them cached (cached since: a warm running beside the readers).
pub const STALE_READS: &str = "locus_fuse_stale_reads_total";
/// Listings asked for again after such reads, to learn what the node holds now, and the
/// files learned from them (first reads of those then need no call to the node).
pub const LEARNS: &str = "locus_fuse_learns_total";
pub const LEARNED_FILES: &str = "locus_fuse_learned_files_total";
/// Names the kernel had looked up found pointing at a new version (or gone) when listed
/// again: each got a new inode. (A name never looked up changes without one.)
pub const VERSIONS_REPLACED: &str = "locus_fuse_versions_replaced_total";
/// By `state`: `linked`, the names reachable from the root (inodes, and listed files not looked
/// up yet, which have none), or `held`, the inodes (also those the kernel has not forgotten
/// yet).
pub const INODES: &str = "locus_fuse_inodes";

/// Describes the mount's metrics and makes the counters visible from the start.
pub fn describe() {
    use metrics::Unit;
    metrics::describe_counter!(REQUESTS, "FUSE requests answered, by op and thread kind");
    metrics::describe_counter!(
        READ_BYTES,
        Unit::Bytes,
        "Bytes read through the mount's own read path"
    );
    metrics::describe_counter!(FAILURES, "FUSE requests answered with an I/O error, by op");
    metrics::describe_counter!(
        PASSTHROUGH_OPENS,
        "Opens handed to the kernel (passthrough)"
    );
    metrics::describe_counter!(
        OPENS_SETTLED,
        "Auto mounts that settled whether they answer opens, by the mode they settled on"
    );
    metrics::describe_counter!(
        OPENED_AHEAD,
        "Small cached files opened ahead by a helper when the kernel looked them up"
    );
    metrics::describe_counter!(RELISTS, "Listings asked for again after their TTL");
    metrics::describe_counter!(
        RELISTS_AHEAD,
        "Listings asked for again ahead of their TTL, in the background, while in use"
    );
    metrics::describe_counter!(
        STALE_READS,
        "First reads of files the node held though their listing did not show them cached"
    );
    metrics::describe_counter!(
        LEARNS,
        "Listings asked for again to learn which of their files the node holds now"
    );
    metrics::describe_counter!(LEARNED_FILES, "Files learned cached from those listings");
    metrics::describe_counter!(
        VERSIONS_REPLACED,
        "Names that pointed at a new version or were gone when listed again"
    );
    metrics::describe_gauge!(
        INODES,
        "Names reachable (linked: inodes and listed files not looked up yet) or inodes held"
    );
    for c in [
        READ_BYTES,
        PASSTHROUGH_OPENS,
        OPENED_AHEAD,
        RELISTS,
        RELISTS_AHEAD,
        STALE_READS,
        LEARNS,
        LEARNED_FILES,
        VERSIONS_REPLACED,
    ] {
        metrics::counter!(c).absolute(0);
    }
    for to in ["none", "always"] {
        metrics::counter!(OPENS_SETTLED, "to" => to).absolute(0);
    }
}

pub(crate) fn request(op: &'static str, on: &'static str) {
    metrics::counter!(REQUESTS, "op" => op, "on" => on).increment(1);
}

pub(crate) fn failure(op: &'static str) {
    metrics::counter!(FAILURES, "op" => op).increment(1);
}
