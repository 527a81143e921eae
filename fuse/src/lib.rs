//! A read-only FUSE file system over locus.
//!
//! The file system ([`LocusFs`]) is generic over a [`Backend`]: the node's local API in
//! production ([`daemon::DaemonBackend`]), anything else in tests.
//!
//! # Names and versions
//! Each file inode is one version of one name (see `tree`): its size and bytes never change,
//! so the kernel caches its attributes and its pages across opens (`FOPEN_KEEP_CACHE`). A tree
//! listed at a commit never changes. One of an `s3://`, `http(s)://` or `file://` name (or a
//! branch) is listed again when its metadata TTL has passed and a name in it is looked up or
//! a folder of it opened: a name that lists as a new version gets a new inode, and the kernel
//! is told to drop the old name, so a later open reads the new version while a file already
//! open keeps reading the one it opened. The kernel keeps names for the TTL at most.
//!
//! # The read path
//! `read(offset, size)` → the chunks it covers are made present through the backend (the
//! daemon fetches what is missing, once for every reader on the node) → each chunk is checked
//! against its CRC32C the first time this mount reads it (a failure asks the daemon to drop and
//! refetch it, then fails with EIO if it fails again) → the bytes come from the daemon's cache
//! file with `pread`. A sequential reader triggers read-ahead of the next chunks in the
//! background, doubling up to [`MAX_READAHEAD_CHUNKS`], so the first bytes arrive before the file
//! is fetched and the rest keeps flowing. A file of 1 MiB or more that is complete and verified
//! when opened is handed to the kernel (FUSE passthrough, Linux 6.9+, root) where the kernel
//! offers it, once this mount has checked every chunk of it; reads then never reach this
//! process. The kernel keeps an inode in one mode while it is open, so a file already open
//! through this process is opened the same way again until every such open is closed.
//!
//! # Without opens
//! With [`Opens::Never`] the first OPEN is answered ENOSYS, and the kernel then opens and
//! closes files without asking: a small file costs a LOOKUP and a READ, not also an OPEN and a
//! RELEASE. Reads come by inode, nothing is read by passthrough, and with no close to go by a
//! read that reaches a file's end closes its cache file; at most [`HELD_MAX`] others stay open.
//! The default, [`Opens::Auto`], answers opens until it knows what it serves: once
//! [`AUTO_SMALL_OPENS`] distinct files under 1 MiB were opened and no larger one first (a
//! dataset of small files), it answers ENOSYS from then on; a large file opened first (a
//! model, read by passthrough) keeps opens on. The files open at that switch are read by inode
//! from then on and their cache files held under the same bound (some kernels send their
//! RELEASE still, others not).
//!
//! # Threads
//! One request reader per four cores (`locus mount --threads`) answers what needs nothing
//! but memory and the page cache (names, attributes, listings with attributes (READDIRPLUS),
//! opens of small files, small reads of stored chunks). Anything that may wait (a lazy
//! folder's listing, a read of missing chunks, a passthrough open that checks the whole file)
//! runs on a pool of up to 64 blocking threads, and a reader never waits for a file's state
//! while the pool holds it, so a read stuck on the origin holds up no other file.
//! After each answer a reader polls the device for up to [`MountOptions::linger`] (50 µs)
//! before it sleeps: each FUSE round trip otherwise costs a wake-up, which on a VM means a
//! halted vCPU woken by the host. One reader lingers at a time.

mod ahead;
pub mod daemon;
mod file;
pub mod filter;
mod fs;
pub mod metrics;
mod open;
#[cfg(test)]
mod test_backend;
mod tree;

pub use fs::{LocusFs, MountOptions, Opens, AUTO_SMALL_OPENS, HELD_MAX};

use std::path::PathBuf;
use std::time::Duration;

/// What a repo, folder or file lists as.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    /// Its files.
    pub entries: Vec<Entry>,
    /// Folders in it not listed yet (name, URI): each is listed when first opened or looked
    /// in, so a mount of millions of files loads only the folders it walks.
    pub folders: Vec<(String, String)>,
    /// How long the listing stays current; `None` when it never changes (a commit).
    pub ttl: Option<Duration>,
    /// How old it already was when it was answered.
    pub age: Duration,
}

/// Chunks read ahead of a sequential reader, at most.
pub const MAX_READAHEAD_CHUNKS: u32 = 8;

/// One file of the mounted tree.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The file's URI at an immutable revision.
    pub uri: String,
    /// Its identity (cache key) in that listing: a file's reads stay on this version (an
    /// `s3://`, `http(s)://` or `file://` name can move on while it is open).
    pub key: String,
    /// Path relative to the mount's root.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Where its bytes are, when the node already holds all of them.
    pub cached: Option<ChunkInfo>,
}

/// Where a file's bytes are, and which chunks are present.
#[derive(Clone, Debug)]
pub struct ChunkInfo {
    /// The cache file.
    pub path: PathBuf,
    /// File size.
    pub size: u64,
    /// Chunk size.
    pub chunk_size: u64,
    /// CRC32C of each chunk, `None` where it is not stored yet.
    pub crcs: Vec<Option<u32>>,
    /// The whole file is stored and was checked against the origin's digest.
    pub complete: bool,
}

/// Backend failures, each with the errno the kernel gets.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FsError {
    /// Nothing there (ENOENT).
    #[error("{0}")]
    NotFound(String),
    /// Anything else (EIO).
    #[error("{0}")]
    Io(String),
}

impl FsError {
    /// The errno for the kernel.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound(_) => libc::ENOENT,
            FsError::Io(_) => libc::EIO,
        }
    }
}

/// What the file system needs from the node.
pub trait Backend: Send + Sync + 'static {
    /// Files under `uri` (a repo, folder or file), each at an immutable version.
    fn list(&self, uri: &str) -> Result<Listing, FsError>;
    /// [`Backend::list`] from an answer younger than `max_age`: a listing asked for again
    /// ahead of its TTL must not come back as old as the one it replaces (no default: a
    /// wrapper that forgot it would pass the old answer on).
    fn list_within(&self, uri: &str, max_age: Duration) -> Result<Listing, FsError>;
    /// Makes chunks `first..first + count` of `uri`, the version with identity `key`, present
    /// and says where the file is, and whether every chunk asked for (at least one) was
    /// stored before the call; fails rather than answer about another version. With
    /// `recheck`, the node first checks those chunks on its disk and drops any that fail.
    fn chunks(
        &self,
        uri: &str,
        key: &str,
        first: u32,
        count: u32,
        recheck: bool,
    ) -> Result<(ChunkInfo, bool), FsError>;
    /// Starts fetching chunks without waiting for them.
    fn prefetch(&self, uri: &str, key: &str, first: u32, count: u32);
    /// The repos and buckets cached on the node (`hf://ORG/NAME`, `hf://datasets/ORG/NAME`,
    /// `s3://BUCKET`): what the namespace view's folders show before anything is looked up.
    fn cached(&self) -> Result<Vec<String>, FsError>;
}
