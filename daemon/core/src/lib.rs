//! Core types shared by every locus crate: names (URIs), sizes, the chunk layout of a file,
//! content identity and secrets that never print.

#![deny(missing_docs)]

pub mod chunk;
pub mod identity;
pub mod secret;
pub mod size;
pub mod uri;

pub use chunk::{check_stored, read_stored, ChunkFault, ChunkLayout, FileBytes};
pub use identity::{Digest, Listed, RemoteFile};
pub use secret::Secret;
pub use size::{format_size, parse_size};
pub use uri::{LocusUri, Namespace, RepoType, UriError, LATEST};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
