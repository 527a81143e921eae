//! Core types shared by every locus crate: names (URIs), sizes, the chunk layout of a file,
//! content identity and secrets that never print.

#![deny(missing_docs)]

pub mod chunk;
pub mod identity;
pub mod listing;
pub mod metric;
pub mod redact;
pub mod secret;
pub mod select;
pub mod size;
pub mod suggest;
pub mod uri;
pub mod xml;

pub use chunk::{check_stored, read_stored, ChunkFault, ChunkLayout, FileBytes, MIN_CHUNK_SIZE};
pub use identity::{git_blob_id, lfs_pointer, Digest, Listed, RemoteFile};
pub use listing::{Brief, Files, Listing, ListingBuilder};
pub use secret::Secret;
pub use size::{format_size, parse_size};
pub use uri::{LocusUri, Namespace, RepoType, UriError, LATEST};

/// Why a client that maps cache files by path (the loader, `locus mount`) may not open one,
/// and what to do: the daemon keeps its data files for its own user unless told otherwise.
pub const DATA_ACCESS_HINT: &str = "the daemon's cache files are readable only by its user and \
     the group it is given with --data-group: run this as that user or in that group";

/// Whether `s` is `len` hexadecimal digits (a commit id, a digest).
pub fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
