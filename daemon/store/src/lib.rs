//! The node-local cache store.
//!
//! Each cached origin file is one sparse file `data/<id / 4096>/<id>` whose chunks sit at their
//! own offsets, so a complete file can be mapped or handed to the kernel as it is. An embedded
//! index (redb, `index.redb`) records for every file its identity and for every stored chunk its
//! CRC32C, and is the record of the cache: memory holds only the files in use, the
//! 16,384 used last (`RESIDENT`) and those with index updates not committed yet.
//!
//! # Invariants
//! - A chunk is recorded only after all its bytes were written; a chunk that is recorded but whose
//!   bytes fail their CRC on read is dropped and never served.
//! - The index is updated by one writer thread in group commits, in the order the updates were
//!   sent; a commit that fails is tried again with the next one, and a file stays in memory until
//!   every update about it is committed, so a file read back from the index is as memory left
//!   it. A crash loses at most chunks that were not yet recorded, which are fetched again.
//! - Nothing needs a manual clean-up, and a start reads no file record: data files of ids handed
//!   out but never recorded (above the last recorded id, below the durable id mark) and of
//!   removals committed but not unlinked (the garbage list) are deleted at start; a record whose
//!   data file is gone is dropped when it is next looked up.
//! - An evicted file's data file is unlinked after its removal from the index was committed (or
//!   failed: a full disk must get its room back; the removal commits later), and data files are
//!   never truncated or rewritten with other bytes, so a reader that mapped one keeps valid pages.
//! - Cached bytes are private: `data/` is 0700 and its files 0600, or 0750 and 0640 for the one
//!   group given as [`Access::Group`] (readers that map data files by path). The index and the
//!   lock file are 0600. A changed setting is applied to the files already cached at the open
//!   that sees it.
//! - `used` counts the bytes of recorded and reserved chunks; above the capacity the least
//!   recently used unpinned files that no one is using are evicted, in the index's order.
//!   The index's totals are updated in the same transactions as its records.

pub mod fs_check;
mod index;
pub use index::full_repairs;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use locus_core::{ChunkLayout, Digest, RemoteFile};

use index::{data_path, FileRecord, Index, Op};

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The cache directory or index could not be used.
    #[error("cache at {path}: {detail}")]
    Io {
        /// Where.
        path: String,
        /// What.
        detail: String,
    },
    /// The index database failed.
    #[error("cache index: {0}")]
    Index(String),
    /// Another process holds the cache directory.
    #[error("cache at {path} is in use by another locus daemon ({holder}); stop it or choose another --cache-dir")]
    Locked {
        /// The cache directory.
        path: String,
        /// Who holds it ("pid N", as its lock file says).
        holder: String,
    },
    /// The index exists but cannot be opened for a reason other than proven corruption: it is
    /// left as it is (no repair, nothing deleted).
    #[error("cache index {path} cannot be opened: {detail}; nothing in the cache was changed")]
    IndexUnusable {
        /// The index file.
        path: String,
        /// Why.
        detail: String,
    },
    /// No room even after evicting everything evictable.
    #[error("cache full: {needed} more bytes needed, {used} of {capacity} bytes used by files that are pinned or in use; raise --cache-size, unpin, or free disk space")]
    Full {
        /// Bytes asked for.
        needed: u64,
        /// Bytes in use.
        used: u64,
        /// Capacity.
        capacity: u64,
    },
    /// A file larger than the whole cache (a size an origin or a peer claimed).
    #[error("{uri}: {size} bytes do not fit in a cache of {capacity} bytes; raise --cache-size")]
    TooLarge {
        /// The file.
        uri: String,
        /// Its claimed size.
        size: u64,
        /// The cache's capacity.
        capacity: u64,
    },
    /// The disk has no space left even after evicting what could be evicted.
    #[error("no space left on the cache disk at {path}; free disk space or lower --cache-size")]
    DiskFull {
        /// The cache directory.
        path: String,
    },
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        detail: e.to_string(),
    }
}

/// A file's entry. Its per-chunk tables are sparse (ordered maps of the chunks they hold): a
/// size claimed by an origin or a peer costs nothing until chunks are stored.
struct Entry {
    rec: FileRecord,
    /// Stored chunks and their CRC32C.
    chunks: BTreeMap<u32, u32>,
    /// Bytes of recorded chunks.
    bytes: u64,
    users: u32,
    file: Option<Arc<File>>,
    /// Checked whole-file hash steps of chunks (opaque here; see locus-node's `sha_chain`),
    /// kept in memory only: empty until the first is set. They live beside the chunks, not in
    /// the node, because a step may be used only for the bytes it was checked on: dropping or
    /// evicting a chunk drops its step under the same lock, so no path can pair new bytes with
    /// an old step (the whole-file check takes a step instead of hashing the chunk).
    steps: BTreeMap<u32, Step>,
    /// When this process last found each chunk's bytes right: read and CRC-checked, or
    /// written with the CRC computed from the bytes received (memory only, so every chunk is
    /// unchecked after a start, power loss or not). The store's own: `check_chunk` answers
    /// `Trusted` from it, and it goes with the chunk.
    checked: BTreeMap<u32, std::time::Instant>,
    /// The data file's change time and length when every chunk was last found right: a file
    /// changed on disk since then (by anyone: ctime cannot be set back) is checked again.
    seen: Option<FileStamp>,
    /// The sequence number of the last index update sent about this file: it stays in memory
    /// until the index has it.
    seq: u64,
}

/// What `fstat` says of a data file that changes with any write or truncation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct FileStamp {
    ctime: (i64, i64),
    len: u64,
}

fn stamp(f: &File) -> std::io::Result<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = f.metadata()?;
    Ok(FileStamp {
        ctime: (m.ctime(), m.ctime_nsec()),
        len: m.len(),
    })
}

/// A hash step of a chunk: the SHA-256 state before its bytes and after them.
pub type Step = [[u32; 8]; 2];

impl Entry {
    fn layout(&self) -> ChunkLayout {
        ChunkLayout::new(self.rec.size, self.rec.chunk_size.max(1))
    }

    fn checked_within(&self, idx: u32, age: std::time::Duration) -> bool {
        self.checked.get(&idx).is_some_and(|t| t.elapsed() < age)
    }

    fn complete(&self) -> bool {
        self.chunks.len() as u64 == self.layout().count() as u64
    }

    /// A new entry with no chunk stored.
    fn new(rec: FileRecord) -> Entry {
        Entry {
            rec,
            chunks: BTreeMap::new(),
            bytes: 0,
            users: 0,
            file: None,
            steps: BTreeMap::new(),
            checked: BTreeMap::new(),
            seen: None,
            seq: 0,
        }
    }
}

/// Files kept in memory beyond those in use: the most recently used, so that a file read again
/// soon needs no index lookup. The rest are in the index only.
const RESIDENT: usize = if cfg!(test) { 4 } else { 16_384 };

/// The counts `locus status` shows, kept as files change (the index keeps the same ones).
#[derive(Default)]
struct Counts {
    /// Bytes of recorded chunks and reservations.
    used: u64,
    files: u64,
    pinned: u64,
    pinned_bytes: u64,
}

struct State {
    /// Files in memory: in use, used lately, or with index updates not yet committed (so that
    /// a file read back from the index is always as memory left it).
    files: HashMap<String, Entry>,
    /// Files that are candidates to leave memory, oldest first (may repeat, or name files in
    /// use or gone: checked when taken).
    idle: VecDeque<String>,
    /// Removed files whose removal is not committed yet (their records are still in the index),
    /// by the sequence number of the removal, and in that order.
    gone: HashMap<String, u64>,
    gone_order: VecDeque<(u64, String)>,
    counts: Counts,
    next_id: u64,
    /// Ids up to here may be handed out without telling the index.
    id_mark: u64,
    /// Where the last eviction stopped in the index's order: the next starts there, so that
    /// removals not yet committed (still at the front of the order) are not walked again.
    evict_after: Option<(u64, u64)>,
}

/// Counts for `locus status`.
#[derive(Clone, Copy, Debug, Default)]
pub struct StoreStats {
    /// Bytes of cached (and reserved) chunks.
    pub used: u64,
    /// Capacity.
    pub capacity: u64,
    /// Files with at least one entry.
    pub files: u64,
    /// Pinned files.
    pub pinned: u64,
    /// Bytes of pinned files held here.
    pub pinned_bytes: u64,
}

/// What the cache holds of one file ([`Store::holdings`]).
#[derive(Clone, Debug, Default)]
pub struct Holding {
    /// The share of its bytes stored here (0 when not cached).
    pub fraction: f64,
    /// For a file fully cached and verified: its data file, chunk size and chunk CRCs.
    pub complete: Option<(PathBuf, u64, Vec<u32>)>,
}

/// What [`FileHandle::check_chunk`] found.
pub enum ChunkCheck {
    /// Found right within the age asked for: not read again.
    Trusted,
    /// Read now and found right: its bytes.
    Checked(bytes::Bytes),
    /// Not stored (never, or dropped meanwhile).
    Missing,
    /// Its bytes were wrong or short: dropped (fetched again next time), never served.
    Dropped,
}

/// Trust a chunk found right at any time since this process started (or wrote it).
pub const SINCE_START: std::time::Duration = std::time::Duration::MAX;

/// A metadata value ([`Store::meta_put_shared`]): its bytes, handed over in order.
pub trait MetaValue: Send + Sync {
    /// Hands its bytes to `out`, in order.
    fn write_to(&self, out: &mut dyn FnMut(&[u8]));
}

impl MetaValue for Vec<u8> {
    fn write_to(&self, out: &mut dyn FnMut(&[u8])) {
        out(self);
    }
}

/// The node-local cache.
pub struct Store {
    /// Held (`flock`, exclusive) for the store's lifetime: one daemon per cache directory.
    _lock: File,
    dir: PathBuf,
    data_dir: PathBuf,
    capacity: u64,
    state: Mutex<State>,
    index: Index,
    /// Who may read data files besides the daemon's user.
    access: Access,
    /// Writers of one data file take turns here: the kernel serializes buffered writes to an
    /// inode anyway, and its waiters spin on the inode lock (a core lost per waiter on a busy
    /// machine) where these sleep. Striped by file id.
    write_locks: [Mutex<()>; WRITE_LOCKS],
}

const WRITE_LOCKS: usize = 64;

/// Room reserved with [`Store::reserve_space`]; given back when dropped.
pub struct SpaceGuard {
    store: Arc<Store>,
    bytes: u64,
}

impl Drop for SpaceGuard {
    fn drop(&mut self) {
        self.store.unreserve(self.bytes);
    }
}

/// A file registered in the store. While a handle lives, the file is not evicted.
pub struct FileHandle {
    store: Arc<Store>,
    key: String,
    id: u64,
    layout: ChunkLayout,
    path: PathBuf,
}

/// Who may read the data files directly (by the paths the daemon hands out), besides the
/// daemon's own user.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Access {
    /// No one else: `data/` 0700, files 0600.
    #[default]
    Owner,
    /// Members of this group (a GID) too: `data/` 0750, files 0640, both owned by the group.
    Group(u32),
}

impl Access {
    fn dir_mode(self) -> u32 {
        match self {
            Access::Owner => 0o700,
            Access::Group(_) => 0o750,
        }
    }

    fn file_mode(self) -> u32 {
        match self {
            Access::Owner => 0o600,
            Access::Group(_) => 0o640,
        }
    }

    /// How the index remembers it: 0 for the owner only, the group's id plus one.
    fn code(self) -> u64 {
        match self {
            Access::Owner => 0,
            Access::Group(gid) => gid as u64 + 1,
        }
    }

    /// Gives the data files' folders and files under `data_dir` this access.
    fn apply_tree(self, data_dir: &Path) -> Result<(), StoreError> {
        let Ok(rd) = std::fs::read_dir(data_dir) else {
            return Ok(());
        };
        for ent in rd.flatten() {
            let p = ent.path();
            if p.is_dir() {
                self.apply(&p, self.dir_mode()).map_err(|e| io_err(&p, e))?;
                self.apply_tree(&p)?;
            } else {
                self.apply(&p, self.file_mode())
                    .map_err(|e| io_err(&p, e))?;
            }
        }
        Ok(())
    }

    /// Gives `path` this access's mode and group.
    fn apply(self, path: &Path, mode: u32) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        if let Access::Group(gid) = self {
            std::os::unix::fs::chown(path, None, Some(gid))?;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }

    /// The same for an open file: whole, whatever the umask cut from the mode it was made with.
    fn apply_open(self, f: &File, mode: u32) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        if let Access::Group(gid) = self {
            std::os::unix::fs::fchown(f, None, Some(gid))?;
        }
        f.set_permissions(std::fs::Permissions::from_mode(mode))
    }
}

impl Store {
    /// Opens (or creates) the cache at `dir` with `capacity` bytes and private data files
    /// ([`Access::Owner`]); see [`Store::open_with`].
    pub fn open(dir: &Path, capacity: u64) -> Result<Arc<Store>, StoreError> {
        Self::open_with(dir, capacity, Access::Owner)
    }

    /// Opens (or creates) the cache at `dir` with `capacity` bytes, repairing what the index
    /// says a crash can have left (data files created but never recorded, data files whose
    /// removal was committed but not done) without reading every record or data file.
    /// `access` says who besides the daemon's user may read the data files.
    pub fn open_with(dir: &Path, capacity: u64, access: Access) -> Result<Arc<Store>, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        // Absolute, because clients open the data files by the paths the daemon hands out.
        let dir = &std::fs::canonicalize(dir).map_err(|e| io_err(dir, e))?;
        // Before anything in the directory is read or changed: a second daemon on a live cache
        // would take the live index for a broken one and delete its data.
        let lock = lock_dir(dir)?;
        let data_dir = dir.join("data");
        std::fs::create_dir_all(&data_dir).map_err(|e| io_err(&data_dir, e))?;
        // The folder first: while files inside still carry an older (wider) mode, no one
        // else can reach them.
        access
            .apply(&data_dir, access.dir_mode())
            .map_err(|e| io_err(&data_dir, e))?;
        let index_path = dir.join("index.redb");
        let (index, opened) = Index::open(&index_path, &data_dir)?;
        Access::Owner
            .apply(&index_path, 0o600)
            .map_err(|e| io_err(&index_path, e))?;
        // A changed access setting applies to the files already cached: the one walk of the
        // data files, and only when the setting changes.
        if opened.access != Some(access.code()) {
            access.apply_tree(&data_dir)?;
            index.send(Op::Header("access", access.code()));
        }
        let t = opened.totals;
        // What a crash can have left: data files of ids handed out but never recorded, and of
        // removals committed but not unlinked.
        let mut unlinked = Vec::new();
        for id in opened.garbage {
            remove_if_there(&data_path(&data_dir, id));
            unlinked.push(id);
        }
        if !unlinked.is_empty() {
            index.send(Op::Unlinked(unlinked));
        }
        for id in t.max_id + 1..t.id_mark {
            remove_if_there(&data_path(&data_dir, id));
        }
        let next_id = t.id_mark.max(t.max_id + 1);
        let store = Arc::new(Store {
            _lock: lock,
            dir: dir.to_path_buf(),
            data_dir,
            access,
            capacity,
            state: Mutex::new(State {
                files: HashMap::new(),
                idle: VecDeque::new(),
                gone: HashMap::new(),
                gone_order: VecDeque::new(),
                counts: Counts {
                    used: t.used,
                    files: t.files,
                    pinned: t.pinned,
                    pinned_bytes: t.pinned_bytes,
                },
                next_id,
                id_mark: next_id,
                evict_after: None,
            }),
            index,
            write_locks: std::array::from_fn(|_| Mutex::new(())),
        });
        store.publish_gauges(&store.lock());
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map half-updated in a way that serves
        // wrong bytes (chunks are recorded last), so the poison flag is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish_gauges(&self, st: &State) {
        metrics::gauge!(locus_core::metric::CACHE_BYTES).set(st.counts.used as f64);
        metrics::gauge!(locus_core::metric::CACHE_CAPACITY).set(self.capacity as f64);
        metrics::gauge!(locus_core::metric::CACHE_FILES).set(st.counts.files as f64);
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn data_path(&self, id: u64) -> PathBuf {
        data_path(&self.data_dir, id)
    }

    /// For the scale bench: each index table's name, pages and the bytes its entries hold.
    #[doc(hidden)]
    pub fn index_tables(&self) -> Vec<(String, u64, u64)> {
        self.index.table_sizes()
    }

    /// Files held in memory now (in use, used lately, or with updates not yet committed): the
    /// rest are in the index only.
    pub fn resident_files(&self) -> usize {
        self.lock().files.len()
    }

    /// The entry of `key`, read from the index into memory if it is not there. A record whose
    /// data file is gone (removed by hand: a crash cannot do it) is dropped.
    fn resident<'a>(
        &self,
        st: &'a mut State,
        key: &str,
    ) -> Result<Option<&'a mut Entry>, StoreError> {
        if st.files.contains_key(key) {
            return Ok(st.files.get_mut(key));
        }
        if st.gone.contains_key(key) {
            return Ok(None);
        }
        let Some((rec, crcs)) = self.index.load(key)? else {
            return Ok(None);
        };
        let mut e = Entry::new(rec);
        let layout = e.layout();
        for (idx, crc) in crcs.into_iter().filter(|(i, _)| *i < layout.count()) {
            e.chunks.insert(idx, crc);
            e.bytes += layout.len(idx);
        }
        self.trim(st);
        let present = e.rec.chunk_size > 0 && self.data_path(e.rec.id).is_file();
        st.files.insert(key.to_string(), e);
        if !present {
            tracing::warn!(key, "cache entry without data file dropped");
            self.remove_locked(st, key, false);
            self.publish_gauges(st);
            return Ok(None);
        }
        st.idle.push_back(key.to_string());
        Ok(st.files.get_mut(key))
    }

    /// Whether `key` is in memory now: a lookup of it reads nothing from disk.
    pub fn in_memory(&self, key: &str) -> bool {
        self.lock().files.contains_key(key)
    }

    /// Reads what a lookup of `key` (not in memory) reads from disk, its index pages and its
    /// data file's inode, without the lock: the lookup under the lock that follows finds them
    /// cached, so readers of cold files do not queue behind each other's disk reads. It only
    /// warms caches: what it reads may be stale by then, and is not kept.
    pub fn read_ahead(&self, key: &str) {
        if let Ok(Some((rec, _))) = self
            .index
            .load_many_once(&[key])
            .map(|mut v| v.pop().flatten())
        {
            let _ = self.data_path(rec.id).is_file();
        }
    }

    /// Looks `key` up for a question (not a registration): an index that cannot be read
    /// answers "not cached".
    fn peek<'a>(&self, st: &'a mut State, key: &str) -> Option<&'a mut Entry> {
        self.resident(st, key).unwrap_or_else(|e| {
            tracing::warn!(key, error = %e, "cache index lookup failed");
            None
        })
    }

    /// Lets files leave memory while more than [`RESIDENT`] are there: those not in use whose
    /// index updates are all committed, least recently used first. Forgets removals that are
    /// committed.
    fn trim(&self, st: &mut State) {
        let done = self.index.done();
        while st.gone_order.front().is_some_and(|(seq, _)| *seq <= done) {
            if let Some((seq, key)) = st.gone_order.pop_front() {
                if st.gone.get(&key) == Some(&seq) {
                    st.gone.remove(&key);
                }
            }
        }
        // A bounded number of looks per call keeps every call O(1) amortized.
        let mut looks = 64;
        while st.files.len() >= RESIDENT && looks > 0 {
            looks -= 1;
            let Some(key) = st.idle.pop_front() else {
                break;
            };
            match st.files.get(&key) {
                Some(e) if e.users == 0 && e.seq <= done => {
                    st.files.remove(&key);
                }
                Some(e) if e.users == 0 => st.idle.push_back(key),
                _ => {}
            }
        }
        // The queue repeats keys each time a file goes idle: rebuilt when it outgrows memory.
        if st.idle.len() > 4 * RESIDENT.max(st.files.len()) {
            st.idle = st
                .files
                .iter()
                .filter(|(_, e)| e.users == 0)
                .map(|(k, _)| k.clone())
                .collect();
        }
    }

    /// Sends `op` about `e` to the index; `e` stays in memory until it is committed.
    fn send_for(&self, e: &mut Entry, op: Op) {
        e.seq = self.index.send(op);
    }

    /// Registers `file` (or finds it) and returns a handle that keeps it from eviction.
    /// A new file takes `chunk_size`; a known one keeps the chunk size it was stored with.
    pub fn register(
        self: &Arc<Self>,
        file: &RemoteFile,
        chunk_size: u64,
    ) -> Result<FileHandle, StoreError> {
        // Sizes come from origins and peers; the per-chunk tables are sized by them.
        let chunks = file.size.div_ceil(chunk_size.max(1));
        if file.size > self.capacity || chunks > u32::MAX as u64 {
            return Err(StoreError::TooLarge {
                uri: file.uri.clone(),
                size: file.size,
                capacity: self.capacity,
            });
        }
        let mut guard = self.lock();
        let st = &mut *guard;
        if self.resident(st, &file.key)?.is_none() {
            let id = self.new_id(st)?;
            let rec = FileRecord {
                id,
                size: file.size,
                chunk_size,
                uri: file.uri.clone(),
                digest: file.digest.clone(),
                pinned: false,
                verified: false,
                last_access: locus_core::unix_ms(),
                crc: None,
            };
            // The (sparse, empty) data file exists from the start, so readers can open it
            // before any chunk arrives.
            let path = self.data_path(id);
            self.create_data_file(&path)?;
            self.trim(st);
            let mut e = Entry::new(rec.clone());
            self.send_for(
                &mut e,
                Op::PutFile {
                    key: file.key.clone(),
                    rec,
                },
            );
            st.files.insert(file.key.clone(), e);
            st.counts.files += 1;
            self.publish_gauges(st);
        }
        let e = st
            .files
            .get_mut(&file.key)
            .ok_or_else(|| StoreError::Index("entry vanished while registering".into()))?;
        e.users += 1;
        Ok(FileHandle {
            store: self.clone(),
            key: file.key.clone(),
            id: e.rec.id,
            layout: e.layout(),
            path: self.data_path(e.rec.id),
        })
    }

    /// For benchmarks of the index at scale: records `file` as cached whole, with `crcs` as its
    /// chunks' CRCs, its data file a hard link to `source` (which holds its bytes), so that
    /// millions of cached files need neither the disk nor the inodes of real ones. Not for
    /// real caches: the bytes of a linked file change with its source.
    #[doc(hidden)]
    pub fn fill_linked(
        &self,
        file: &RemoteFile,
        chunk_size: u64,
        source: &Path,
        crcs: &[u32],
    ) -> Result<(), StoreError> {
        let layout = ChunkLayout::new(file.size, chunk_size.max(1));
        let mut guard = self.lock();
        let st = &mut *guard;
        if self.resident(st, &file.key)?.is_some() {
            return Ok(());
        }
        let id = self.new_id(st)?;
        let path = self.data_path(id);
        if let Err(e) = std::fs::hard_link(source, &path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(io_err(&path, e));
            }
            let folder = path.parent().unwrap_or(&self.data_dir);
            std::fs::create_dir_all(folder).map_err(|e| io_err(folder, e))?;
            std::fs::hard_link(source, &path).map_err(|e| io_err(&path, e))?;
        }
        let rec = FileRecord {
            id,
            size: file.size,
            chunk_size,
            uri: file.uri.clone(),
            digest: file.digest.clone(),
            pinned: false,
            verified: true,
            last_access: locus_core::unix_ms(),
            crc: None,
        };
        self.trim(st);
        let mut e = Entry::new(rec.clone());
        // As a fetch records it: the record, its chunks, then the record again (its
        // `mark_verified`), which takes a one-chunk file's CRC.
        let put = |rec: &FileRecord| Op::PutFile {
            key: file.key.clone(),
            rec: rec.clone(),
        };
        self.send_for(&mut e, put(&rec));
        for (idx, crc) in (0..layout.count()).zip(crcs.iter().copied()) {
            let len = layout.len(idx);
            e.chunks.insert(idx, crc);
            e.bytes += len;
            self.send_for(&mut e, Op::SetChunk { id, idx, crc, len });
        }
        self.send_for(&mut e, put(&rec));
        st.counts.files += 1;
        st.counts.used += e.bytes;
        st.files.insert(file.key.clone(), e);
        st.idle.push_back(file.key.clone());
        Ok(())
    }

    /// A new file id, under a mark the index has recorded: a start removes the data files of
    /// ids under the mark that were never recorded, so the mark is durable before any of them
    /// is used.
    fn new_id(&self, st: &mut State) -> Result<u64, StoreError> {
        if st.next_id >= st.id_mark {
            let mark = st.next_id + ID_BLOCK;
            self.index.send(Op::IdMark(mark));
            if !self.index.flush() {
                return Err(StoreError::Index(
                    "the index cannot record new files now (see the log)".into(),
                ));
            }
            st.id_mark = mark;
        }
        st.next_id += 1;
        Ok(st.next_id - 1)
    }

    /// Creates an empty data file (and its folder, the first time), with this store's access.
    fn create_data_file(&self, path: &Path) -> Result<(), StoreError> {
        let open = || {
            OpenOptions::new()
                .write(true)
                .create(true)
                // A new id: bytes a crash left under it are never anyone's.
                .truncate(true)
                .mode(self.access.file_mode())
                .open(path)
        };
        let f = match open() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let folder = path.parent().unwrap_or(&self.data_dir);
                std::fs::create_dir_all(folder).map_err(|e| io_err(folder, e))?;
                self.access
                    .apply(folder, self.access.dir_mode())
                    .map_err(|e| io_err(folder, e))?;
                open()
            }
            r => r,
        }
        .map_err(|e| io_err(path, e))?;
        self.access
            .apply_open(&f, self.access.file_mode())
            .map_err(|e| {
                // Never recorded: no start would find it.
                let _ = std::fs::remove_file(path);
                io_err(path, e)
            })
    }

    /// Fraction of `key` cached here (0 when unknown).
    pub fn cached_fraction(&self, key: &str) -> f64 {
        let mut st = self.lock();
        match self.peek(&mut st, key) {
            Some(e) if e.rec.size == 0 => 1.0,
            Some(e) => e.bytes as f64 / e.rec.size as f64,
            None => 0.0,
        }
    }

    /// For a file fully cached and verified: its data file, size, chunk size and chunk CRCs.
    pub fn complete_file(&self, key: &str) -> Option<(PathBuf, u64, u64, Vec<u32>)> {
        let mut st = self.lock();
        let e = self.peek(&mut st, key)?;
        if !e.rec.verified || !e.complete() {
            return None;
        }
        let crcs = e.chunks.values().copied().collect();
        let (id, size, chunk_size) = (e.rec.id, e.rec.size, e.rec.chunk_size);
        Some((self.data_path(id), size, chunk_size, crcs))
    }

    /// What the cache holds of each of `files` (`(uri, key)`, a page of a listing): one look
    /// under the lock for the files in memory, one range scan of the index's places for the
    /// rest (a folder's files are neighbours there), and a lookup by key for those not cached
    /// from that URI (the same bytes cached from elsewhere). No file is brought into memory (a
    /// listing of millions of files must not churn the files in use).
    pub fn holdings(&self, files: &[(&str, &str)]) -> Vec<Holding> {
        let mut out = vec![Holding::default(); files.len()];
        let mut rest = Vec::new();
        {
            let st = self.lock();
            for (i, (_, key)) in files.iter().enumerate() {
                match st.files.get(*key) {
                    Some(e) => {
                        out[i] = self.holding(
                            &index::Place::of(&e.rec),
                            e.chunks.values().copied(),
                            e.bytes,
                        )
                    }
                    None if st.gone.contains_key(*key) => {}
                    None => rest.push(i),
                }
            }
        }
        if rest.is_empty() {
            return out;
        }
        let fill =
            |out: &mut Vec<Holding>, i: usize, place: &index::Place, crcs: Vec<(u32, u32)>| {
                let layout = ChunkLayout::new(place.size, place.chunk_size.max(1));
                let crcs: Vec<(u32, u32)> = crcs
                    .into_iter()
                    .filter(|(i, _)| *i < layout.count())
                    .collect();
                let bytes = crcs.iter().map(|(i, _)| layout.len(*i)).sum();
                out[i] = self.holding(place, crcs.into_iter().map(|(_, c)| c), bytes);
            };
        let ask: Vec<(&str, &str)> = rest.iter().map(|&i| files[i]).collect();
        let mut unplaced = Vec::new();
        match self.index.load_places(&ask) {
            Ok(found) => {
                for (i, placed) in rest.into_iter().zip(found) {
                    match placed {
                        Some((place, crcs)) => fill(&mut out, i, &place, crcs),
                        None => unplaced.push(i),
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cache index lookup failed");
                return out;
            }
        }
        if unplaced.is_empty() {
            return out;
        }
        let ask: Vec<&str> = unplaced.iter().map(|&i| files[i].1).collect();
        match self.index.load_many_once(&ask) {
            Ok(found) => {
                for (i, stored) in unplaced.into_iter().zip(found) {
                    if let Some((rec, crcs)) = stored {
                        fill(&mut out, i, &index::Place::of(&rec), crcs);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cache index lookup failed"),
        }
        out
    }

    fn holding(
        &self,
        place: &index::Place,
        crcs: impl ExactSizeIterator<Item = u32>,
        bytes: u64,
    ) -> Holding {
        let count = ChunkLayout::new(place.size, place.chunk_size.max(1)).count() as usize;
        let complete = crcs.len() == count;
        Holding {
            fraction: if place.size == 0 {
                1.0
            } else {
                bytes as f64 / place.size as f64
            },
            complete: (complete && place.verified)
                .then(|| (self.data_path(place.id), place.chunk_size, crcs.collect())),
        }
    }

    /// Counts for status: kept as files change, not counted.
    pub fn stats(&self) -> StoreStats {
        let st = self.lock();
        StoreStats {
            used: st.counts.used,
            capacity: self.capacity,
            files: st.counts.files,
            pinned: st.counts.pinned,
            pinned_bytes: st.counts.pinned_bytes,
        }
    }

    /// Cached metadata (listings, revisions) by key.
    pub fn meta_get(&self, key: &str) -> Option<Vec<u8>> {
        self.index.meta_get(key)
    }

    /// Stores metadata by key (asynchronously durable).
    pub fn meta_put(&self, key: &str, value: Vec<u8>) {
        self.meta_put_shared(key, Arc::new(value));
    }

    /// Stores metadata by key from a value the index writer reads where it lies (a listing of
    /// millions of files is hundreds of MB: written in pieces, never copied whole).
    pub fn meta_put_shared(&self, key: &str, value: Arc<dyn MetaValue>) {
        self.index.send(Op::PutMeta {
            key: key.to_string(),
            value,
        });
    }

    /// Waits until every index update sent so far is durable.
    pub fn flush(&self) {
        self.index.flush();
    }

    /// Evicts least recently used files that are unpinned and unused until `needed` more bytes
    /// fit under `limit`. Returns whether they fit. Walks the index's eviction order from its
    /// oldest end: O(log n) a file, whatever the number of files.
    fn evict_locked(&self, st: &mut State, needed: u64, limit: u64) -> bool {
        let fits = |st: &State| st.counts.used + needed <= limit;
        if fits(st) {
            return true;
        }
        // From where the last eviction stopped, then from the front (files passed over as in
        // use may be free now), then again after a commit (files registered since the last
        // one are not in the order yet).
        let starts = [st.evict_after, None, None];
        let mut commit_failed = false;
        for (pass, start) in starts.into_iter().enumerate() {
            if pass == 1 && start == starts[0] {
                continue;
            }
            if pass == 2 {
                if !self.index.pending() {
                    break;
                }
                commit_failed = !self.index.flush();
            }
            let mut after = start;
            loop {
                let page = self.index.lru_page(after, 256);
                if page.is_empty() {
                    break;
                }
                for (at, id, key) in page {
                    if fits(st) {
                        self.publish_gauges(st);
                        return true;
                    }
                    after = Some((at, id));
                    // Files with no recorded chunk go too (a failed write may have left bytes).
                    let victim = self
                        .peek(st, &key)
                        .is_some_and(|e| e.rec.id == id && !e.rec.pinned && e.users == 0);
                    if victim {
                        self.remove_locked(st, &key, true);
                        st.evict_after = after;
                    }
                }
            }
            if fits(st) {
                break;
            }
        }
        if !fits(st) && commit_failed {
            // The commit that would put the newest files in the order failed (a full disk
            // fails it too): they are all in memory, so they go from there, oldest first.
            // Their unlinks give the disk its room back, and the next commit records it all.
            let mut idle: Vec<(u64, String)> = st
                .files
                .iter()
                .filter(|(_, e)| !e.rec.pinned && e.users == 0)
                .map(|(k, e)| (e.rec.last_access, k.clone()))
                .collect();
            idle.sort_unstable();
            for (_, key) in idle {
                if fits(st) {
                    break;
                }
                self.remove_locked(st, &key, true);
            }
        }
        self.publish_gauges(st);
        fits(st)
    }

    /// Takes `key` out of the cache: its record, its bytes, and its data file if `unlink`.
    /// Returns its bytes.
    fn remove_locked(&self, st: &mut State, key: &str, unlink: bool) -> Option<u64> {
        let e = st.files.remove(key)?;
        let c = &mut st.counts;
        c.used = c.used.saturating_sub(e.bytes);
        c.files = c.files.saturating_sub(1);
        if e.rec.pinned {
            c.pinned = c.pinned.saturating_sub(1);
            c.pinned_bytes = c.pinned_bytes.saturating_sub(e.bytes);
        }
        if unlink {
            tracing::info!(uri = e.rec.uri, bytes = e.bytes, "evicting");
            metrics::counter!(locus_core::metric::EVICTIONS).increment(1);
            metrics::counter!(locus_core::metric::EVICTED_BYTES).increment(e.bytes);
        }
        let seq = self.index.send(Op::RemoveFile {
            key: key.to_string(),
            id: e.rec.id,
            size: e.rec.size,
            chunk_size: e.rec.chunk_size,
            unlink: unlink.then(|| self.data_path(e.rec.id)),
        });
        st.gone.insert(key.to_string(), seq);
        st.gone_order.push_back((seq, key.to_string()));
        Some(e.bytes)
    }

    /// Removes `key` from the cache now, pinned or not: `Ok(Some(bytes))` freed, `Ok(None)`
    /// when it is not cached, [`Evicted::InUse`] when a reader has it open (left as it is:
    /// a cache file is never taken from under a reader).
    pub fn evict(&self, key: &str) -> Evicted {
        let mut st = self.lock();
        let Some(e) = self.peek(&mut st, key) else {
            return Evicted::NotCached;
        };
        if e.users > 0 {
            return Evicted::InUse;
        }
        let bytes = self.remove_locked(&mut st, key, true).unwrap_or(0);
        self.publish_gauges(&st);
        Evicted::Freed(bytes)
    }

    /// Bytes `key` takes here and whether it is pinned, if it is cached.
    pub fn held(&self, key: &str) -> Option<(u64, bool)> {
        let mut st = self.lock();
        self.peek(&mut st, key).map(|e| (e.bytes, e.rec.pinned))
    }

    /// Keys of the files stored here whose (key, URI) `pred` accepts: one pass over the index
    /// (for an operator's command), holding only the matches.
    pub fn keys_where(&self, pred: &dyn Fn(&str, &str) -> bool) -> Vec<String> {
        self.index.flush();
        // Removals not yet committed, but not a key registered again since.
        let gone: std::collections::HashSet<String> = {
            let st = self.lock();
            st.gone
                .keys()
                .filter(|k| !st.files.contains_key(*k))
                .cloned()
                .collect()
        };
        self.index
            .keys_where(&|k, u| !gone.contains(k) && pred(k, u))
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cache index scan failed");
                Vec::new()
            })
    }

    /// The repos (`hf://ORG/NAME`, `hf://datasets/ORG/NAME`) and buckets (`s3://BUCKET`) this
    /// cache holds files of, sorted, each once: read from a table of their own, not from the
    /// files' records.
    pub fn namespaces(&self) -> Vec<String> {
        self.index.flush();
        self.index.namespaces().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cache index: namespaces unreadable");
            Vec::new()
        })
    }

    /// Whether chunk `idx` of `key` is stored here, without registering the file (a peer's
    /// question must not add entries).
    pub fn has_chunk(&self, key: &str, idx: u32) -> bool {
        let mut st = self.lock();
        self.peek(&mut st, key)
            .is_some_and(|e| e.chunks.contains_key(&idx))
    }

    /// The chunks of `key` stored here as a bitmap (bit i of byte i / 8, least significant
    /// first); empty when none is.
    pub fn chunk_bitmap(&self, key: &str) -> Vec<u8> {
        let mut st = self.lock();
        let Some(e) = self.peek(&mut st, key) else {
            return Vec::new();
        };
        let Some(last) = e.chunks.keys().next_back() else {
            return Vec::new();
        };
        let mut bits = vec![0u8; *last as usize / 8 + 1];
        for idx in e.chunks.keys() {
            bits[*idx as usize / 8] |= 1 << (idx % 8);
        }
        bits
    }

    /// Frees room after the disk said ENOSPC: evicts unused files worth `needed` bytes.
    fn evict_for_disk(&self, needed: u64) {
        {
            let mut st = self.lock();
            let target = st.counts.used.saturating_sub(needed);
            self.evict_locked(&mut st, 0, target);
        }
        // Unlinks happen after the index commit: wait for them before writing again.
        self.index.flush();
    }

    /// Reserves `bytes` of the capacity for something other than a chunk (a whole-file spool
    /// of a server without Range), evicting LRU files if needed, until the guard is dropped.
    pub fn reserve_space(self: &Arc<Self>, bytes: u64) -> Result<SpaceGuard, StoreError> {
        self.reserve_bytes(bytes)?;
        Ok(SpaceGuard {
            store: self.clone(),
            bytes,
        })
    }

    /// Counts `bytes` as used, evicting LRU files first if they do not fit.
    fn reserve_bytes(&self, bytes: u64) -> Result<(), StoreError> {
        let mut st = self.lock();
        if !self.evict_locked(&mut st, bytes, self.capacity) {
            return Err(StoreError::Full {
                needed: bytes,
                used: st.counts.used,
                capacity: self.capacity,
            });
        }
        st.counts.used += bytes;
        self.publish_gauges(&st);
        Ok(())
    }

    /// Gives back `bytes` of a reservation.
    fn unreserve(&self, bytes: u64) {
        let mut st = self.lock();
        st.counts.used = st.counts.used.saturating_sub(bytes);
        self.publish_gauges(&st);
    }

    /// Sets or clears the pin of `key`.
    pub fn set_pinned(&self, key: &str, pinned: bool) {
        let mut guard = self.lock();
        let st = &mut *guard;
        let Some(e) = self.peek(st, key) else { return };
        if e.rec.pinned == pinned {
            return;
        }
        e.rec.pinned = pinned;
        let (bytes, rec) = (e.bytes, e.rec.clone());
        self.send_for(
            e,
            Op::PutFile {
                key: key.to_string(),
                rec,
            },
        );
        let c = &mut st.counts;
        if pinned {
            c.pinned += 1;
            c.pinned_bytes += bytes;
        } else {
            c.pinned = c.pinned.saturating_sub(1);
            c.pinned_bytes = c.pinned_bytes.saturating_sub(bytes);
        }
    }

    /// Test hook: checks that the index's totals and derived tables agree with its records,
    /// and memory's counts with both (when no bytes are reserved).
    #[cfg(test)]
    fn check_counts(&self) {
        self.index.flush();
        let (header, counted, rows, _) = self.index.recount();
        assert_eq!(
            header, counted,
            "the index's totals (used, files, pinned, pinned bytes)"
        );
        assert_eq!(
            rows, counted.1,
            "every file is in the eviction order or pinned"
        );
        let st = self.lock();
        let c = &st.counts;
        assert_eq!(
            (c.used, c.files, c.pinned, c.pinned_bytes),
            counted,
            "memory's counts"
        );
    }

    /// Test hook: the index stops committing, as if the process died now.
    #[cfg(test)]
    fn halt_index(&self) {
        self.index.flush();
        self.index.halt();
    }
}

/// Ids handed out between two durable marks.
const ID_BLOCK: u64 = if cfg!(test) { 4 } else { 4096 };

fn remove_if_there(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!(file = %path.display(), "removed a data file a crash left"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "could not remove a data file a crash left")
        }
    }
}

/// What [`Store::evict`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evicted {
    /// Removed; its bytes.
    Freed(u64),
    /// Not in the cache.
    NotCached,
    /// A reader has it open: left.
    InUse,
}

impl Drop for FileHandle {
    fn drop(&mut self) {
        let mut st = self.store.lock();
        let idle = match st.files.get_mut(&self.key) {
            Some(e) if e.rec.id == self.id => {
                e.users = e.users.saturating_sub(1);
                if e.users == 0 {
                    e.file = None;
                }
                e.users == 0
            }
            _ => false,
        };
        if idle {
            st.idle.push_back(self.key.clone());
            self.store.trim(&mut st);
        }
    }
}

/// Takes the cache directory's lock file (`lock`, exclusive `flock`, held while the returned
/// file is open) and writes this process's pid into it; fails with [`StoreError::Locked`],
/// naming the holder, when another process has it. The kernel drops the lock when its holder
/// dies, however it dies, so a crash never leaves a stale lock.
fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    use std::io::{Read, Seek, Write};
    let path = dir.join("lock");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| io_err(&path, e))?;
    // A lock file an older version left keeps its mode otherwise.
    Access::Owner
        .apply_open(&f, 0o600)
        .map_err(|e| io_err(&path, e))?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = f.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(StoreError::Locked {
                path: dir.display().to_string(),
                holder: match pid.parse::<u32>() {
                    Ok(p) => format!("pid {p}"),
                    Err(_) => "pid unknown".into(),
                },
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&path, e)),
    }
    let write = |f: &mut File| -> std::io::Result<()> {
        f.set_len(0)?;
        f.rewind()?;
        writeln!(f, "{}", std::process::id())
    };
    write(&mut f).map_err(|e| io_err(&path, e))?;
    Ok(f)
}

/// `pwritev` until every byte of `bufs` is written at `offset`.
fn pwritev_all(f: &File, bufs: &[&[u8]], mut offset: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut slices: Vec<&[u8]> = bufs.iter().copied().filter(|b| !b.is_empty()).collect();
    let mut first = 0;
    while first < slices.len() {
        let iov: Vec<libc::iovec> = slices[first..]
            .iter()
            .take(64)
            .map(|b| libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect();
        // SAFETY: every iovec points into a slice borrowed for this call, and the fd is open.
        let n = unsafe {
            libc::pwritev(
                f.as_raw_fd(),
                iov.as_ptr(),
                iov.len() as libc::c_int,
                offset as libc::off_t,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let mut n = n as usize;
        offset += n as u64;
        while n > 0 {
            let l = slices[first].len();
            if n >= l {
                n -= l;
                first += 1;
            } else {
                slices[first] = &slices[first][n..];
                n = 0;
            }
        }
    }
    Ok(())
}

impl FileHandle {
    /// The file's cache key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Its chunk layout.
    pub fn layout(&self) -> ChunkLayout {
        self.layout
    }

    /// The sparse data file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with_entry<T>(&self, f: impl FnOnce(&mut Entry) -> T) -> Option<T> {
        self.with_state(|e, _| f(e))
    }

    /// Runs `f` on this file's entry (in memory while a handle lives) and the store's counts.
    fn with_state<T>(&self, f: impl FnOnce(&mut Entry, &mut Counts) -> T) -> Option<T> {
        let mut guard = self.store.lock();
        let st = &mut *guard;
        st.files
            .get_mut(&self.key)
            .filter(|e| e.rec.id == self.id)
            .map(|e| f(e, &mut st.counts))
    }

    /// CRC of chunk `idx` if it is stored.
    pub fn crc(&self, idx: u32) -> Option<u32> {
        self.with_entry(|e| e.chunks.get(&idx).copied()).flatten()
    }

    /// Every chunk's CRC, or `None` if some are missing.
    pub fn all_crcs(&self) -> Option<Vec<u32>> {
        self.with_entry(|e| e.complete().then(|| e.chunks.values().copied().collect()))
            .flatten()
    }

    /// Every chunk's CRC, `None` where the chunk is not stored.
    pub fn crcs(&self) -> Vec<Option<u32>> {
        self.with_entry(|e| {
            (0..self.layout.count())
                .map(|i| e.chunks.get(&i).copied())
                .collect()
        })
        .unwrap_or_default()
    }

    /// Chunks not stored yet.
    pub fn missing(&self) -> Vec<u32> {
        self.with_entry(|e| {
            (0..self.layout.count())
                .filter(|i| !e.chunks.contains_key(i))
                .collect()
        })
        .unwrap_or_else(|| (0..self.layout.count()).collect())
    }

    /// Whether the whole-file digest was checked.
    pub fn verified(&self) -> bool {
        self.with_entry(|e| e.rec.verified).unwrap_or(false)
    }

    /// The digest the origin published.
    pub fn digest(&self) -> Option<Digest> {
        self.with_entry(|e| e.rec.digest.clone()).flatten()
    }

    /// The data file, open for reading and writing (shared by every handle of the key): what a
    /// peer server hands to `sendfile` once it has checked a chunk.
    pub fn data_file(&self) -> Result<Arc<File>, StoreError> {
        if let Some(Some(f)) = self.with_entry(|e| e.file.clone()) {
            return Ok(f);
        }
        let f = Arc::new(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(self.store.access.file_mode())
                .open(&self.path)
                .map_err(|e| io_err(&self.path, e))?,
        );
        self.with_entry(|e| e.file = Some(f.clone()));
        Ok(f)
    }

    /// This file's stripe of the writers' locks: one writer per file at a time.
    fn write_lock(&self) -> &Mutex<()> {
        &self.store.write_locks[self.id as usize % WRITE_LOCKS]
    }

    /// Reserves room for `bytes` before they are written, evicting LRU files if needed.
    pub fn reserve(&self, bytes: u64) -> Result<(), StoreError> {
        self.store.reserve_bytes(bytes)
    }

    /// Gives back a reservation that was not used.
    pub fn release(&self, bytes: u64) {
        self.store.unreserve(bytes);
    }

    /// Writes `bufs`, one after the other, at `offset` (one `pwritev` where it can, so pieces
    /// received from the network need no copy into one buffer). On a full disk, evicts and
    /// tries once more.
    pub fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> Result<(), StoreError> {
        let f = self.data_file()?;
        let len: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        let lock = self.write_lock();
        let write = || {
            let _turn = lock.lock().unwrap_or_else(|p| p.into_inner());
            pwritev_all(&f, bufs, offset)
        };
        match write() {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                // Another writer may have freed room already; try again either way.
                self.store.evict_for_disk(len * 4);
                if write().is_ok() {
                    return Ok(());
                }
                Err(StoreError::DiskFull {
                    path: self.store.dir.display().to_string(),
                })
            }
            Err(e) => Err(io_err(&self.path, e)),
        }
    }

    /// Moves `len` bytes from the pipe `from` into the data file at `offset` with `splice`: the
    /// bytes go from the pipe's pages (a socket's, for a peer's chunk) into the page cache
    /// without passing through user space. On a full disk, evicts and tries once more. After
    /// an error the pipe may still hold bytes: the caller drops it.
    pub fn splice_at(
        &self,
        from: std::os::fd::BorrowedFd<'_>,
        len: usize,
        offset: u64,
    ) -> Result<(), StoreError> {
        use nix::errno::Errno;
        let f = self.data_file()?;
        let lock = self.write_lock();
        let mut turn = Some(lock.lock().unwrap_or_else(|p| p.into_inner()));
        let mut off = offset as i64;
        let mut left = len;
        let mut evicted = false;
        while left > 0 {
            if turn.is_none() {
                turn = Some(lock.lock().unwrap_or_else(|p| p.into_inner()));
            }
            match nix::fcntl::splice(
                from,
                None,
                f.as_ref(),
                Some(&mut off),
                left,
                nix::fcntl::SpliceFFlags::SPLICE_F_MOVE,
            ) {
                Ok(0) => return Err(io_err(&self.path, "the pipe ran dry")),
                Ok(n) => left -= n,
                Err(Errno::EINTR) => {}
                Err(Errno::ENOSPC) if !evicted => {
                    // Another writer may have freed room already; try again either way. Other
                    // writers of this stripe need not wait for the eviction.
                    evicted = true;
                    turn = None;
                    self.store.evict_for_disk(len as u64 * 4);
                }
                Err(Errno::ENOSPC) => {
                    return Err(StoreError::DiskFull {
                        path: self.store.dir.display().to_string(),
                    })
                }
                Err(e) => return Err(io_err(&self.path, e)),
            }
        }
        Ok(())
    }

    /// Records chunk `idx` (its bytes already written and reserved) with its CRC.
    pub fn commit_chunk(&self, idx: u32, crc: u32) {
        let id = self.id;
        let now = std::time::Instant::now();
        self.with_state(|e, c| {
            if idx >= e.layout().count() {
                return;
            }
            let len = e.layout().len(idx);
            match e.chunks.insert(idx, crc) {
                None => {
                    e.bytes += len;
                    if e.rec.pinned {
                        c.pinned_bytes += len;
                    }
                }
                // Other bytes over a recorded chunk: the old one goes first, in the index too,
                // so that no record keeps its CRC.
                Some(old) if old != crc => {
                    self.store.index.send(Op::DropChunk {
                        key: self.key.clone(),
                        id,
                        idx,
                        len,
                    });
                }
                Some(_) => {}
            }
            // The CRC was computed from the bytes written: they count as checked now.
            e.checked.insert(idx, now);
            self.store.send_for(e, Op::SetChunk { id, idx, crc, len });
        });
    }

    /// Records the checked hash step of chunk `idx`.
    pub fn set_step(&self, idx: u32, step: Step) {
        self.with_entry(|e| {
            if e.chunks.contains_key(&idx) {
                e.steps.insert(idx, step);
            }
        });
    }

    /// Records that every chunk was just found right, with the data file as it is now.
    pub fn note_all_checked(&self) {
        let Ok(f) = self.data_file() else { return };
        let Ok(now) = stamp(&f) else { return };
        self.with_entry(|e| e.seen = Some(now));
    }

    /// Whether the data file is as it was when every chunk was last found right (`false` when
    /// that never happened in this process, or it cannot be told).
    pub fn unchanged_since_checked(&self) -> bool {
        let Some(Some(seen)) = self.with_entry(|e| e.seen) else {
            return false;
        };
        self.data_file()
            .ok()
            .and_then(|f| stamp(&f).ok())
            .is_some_and(|now| now == seen)
    }

    /// Records that chunk `idx`'s bytes were just read and found right.
    pub fn mark_checked(&self, idx: u32) {
        let now = std::time::Instant::now();
        self.with_entry(|e| {
            if e.chunks.contains_key(&idx) {
                e.checked.insert(idx, now);
            }
        });
    }

    /// Chunks (stored or not) not found right less than `age` ago, in one look under the lock.
    pub fn unchecked(&self, age: std::time::Duration) -> Vec<u32> {
        self.with_entry(|e| {
            (0..self.layout.count())
                .filter(|&i| !e.checked_within(i, age))
                .collect()
        })
        .unwrap_or_else(|| (0..self.layout.count()).collect())
    }

    /// Whether chunk `idx`'s bytes were found right less than `age` ago.
    pub fn checked_within(&self, idx: u32, age: std::time::Duration) -> bool {
        self.with_entry(|e| e.checked_within(idx, age))
            .unwrap_or(false)
    }

    /// The hash step of chunk `idx`, if one was recorded since its bytes were written.
    pub fn step(&self, idx: u32) -> Option<Step> {
        self.with_entry(|e| e.steps.get(&idx).copied()).flatten()
    }

    /// Drops chunk `idx` (a failed check): it will be fetched again, never served.
    pub fn drop_chunk(&self, idx: u32) {
        let id = self.id;
        let dropped = self
            .with_state(|e, c| {
                e.steps.remove(&idx);
                e.checked.remove(&idx);
                let len = e.layout().len(idx);
                e.chunks.remove(&idx)?;
                e.rec.verified = false;
                e.bytes -= len;
                c.used = c.used.saturating_sub(len);
                if e.rec.pinned {
                    c.pinned_bytes = c.pinned_bytes.saturating_sub(len);
                }
                self.store.index.send(Op::DropChunk {
                    key: self.key.clone(),
                    id,
                    idx,
                    len,
                });
                let rec = e.rec.clone();
                self.store.send_for(
                    e,
                    Op::PutFile {
                        key: self.key.clone(),
                        rec,
                    },
                );
                Some(())
            })
            .flatten();
        if dropped.is_some() {
            self.store.publish_gauges(&self.store.lock());
        }
    }

    /// Chunk `idx`'s bytes, mapped from the data file (small chunks read), without a check of
    /// their CRC: for a caller that checks them itself or trusts them ([`ChunkCheck::Trusted`]).
    /// A data file too short to hold the chunk is never mapped: the chunk is dropped and
    /// `Ok(None)` returned.
    pub fn map_chunk(&self, idx: u32) -> Result<Option<bytes::Bytes>, StoreError> {
        let f = self.data_file()?;
        match locus_core::read_stored(&f, self.layout.range(idx))
            .map_err(|e| io_err(&self.path, e))?
        {
            Ok(b) => Ok(Some(bytes::Bytes::from_owner(b))),
            Err(fault) => {
                self.chunk_failed(idx, &fault);
                Ok(None)
            }
        }
    }

    /// Makes sure chunk `idx`'s stored bytes are right before they are served: trusted if
    /// found right less than `trust_for` ago (written by this process, or read and checked;
    /// [`SINCE_START`] trusts any check since the start), else read (the file's length first,
    /// then the CRC recorded when the bytes were written). A chunk that fails is dropped.
    pub fn check_chunk(
        &self,
        idx: u32,
        trust_for: std::time::Duration,
    ) -> Result<ChunkCheck, StoreError> {
        let Some(crc) = self.crc(idx) else {
            return Ok(ChunkCheck::Missing);
        };
        if self.checked_within(idx, trust_for) {
            return Ok(ChunkCheck::Trusted);
        }
        let f = self.data_file()?;
        match locus_core::check_stored(&f, self.layout.range(idx), crc)
            .map_err(|e| io_err(&self.path, e))?
        {
            Ok(b) => {
                self.mark_checked(idx);
                Ok(ChunkCheck::Checked(bytes::Bytes::from_owner(b)))
            }
            Err(fault) => {
                self.chunk_failed(idx, &fault);
                Ok(ChunkCheck::Dropped)
            }
        }
    }

    /// Chunk `idx`'s bytes once [`FileHandle::check_chunk`] found them right (mapped again when
    /// they were trusted); `None` if the chunk is missing or was dropped.
    pub fn checked_bytes(
        &self,
        idx: u32,
        trust_for: std::time::Duration,
    ) -> Result<Option<bytes::Bytes>, StoreError> {
        match self.check_chunk(idx, trust_for)? {
            ChunkCheck::Checked(b) => Ok(Some(b)),
            ChunkCheck::Trusted => self.map_chunk(idx),
            ChunkCheck::Missing | ChunkCheck::Dropped => Ok(None),
        }
    }

    /// Drops chunk `idx` after a reader found its stored bytes wrong or short.
    pub fn chunk_failed(&self, idx: u32, fault: &locus_core::ChunkFault) {
        tracing::error!(
            file = self.path.display().to_string(),
            chunk = idx,
            %fault,
            "chunk failed its checksum; dropping it"
        );
        metrics::counter!(locus_core::metric::CHUNK_CORRUPTIONS).increment(1);
        self.drop_chunk(idx);
    }

    /// Marks the whole file as checked against its digest.
    pub fn mark_verified(&self) {
        self.with_entry(|e| {
            e.rec.verified = true;
            let rec = e.rec.clone();
            self.store.send_for(
                e,
                Op::PutFile {
                    key: self.key.clone(),
                    rec,
                },
            );
        });
    }

    /// Records an access for LRU (persisted lazily).
    pub fn touch(&self) {
        let now = locus_core::unix_ms();
        self.with_entry(|e| {
            // The index's order moves at most every few seconds a file: eviction's order is
            // that coarse, and a hot file costs no commit per read.
            if now.saturating_sub(e.rec.last_access) > 5_000 {
                e.rec.last_access = now;
                let rec = e.rec.clone();
                self.store.send_for(
                    e,
                    Op::Touch {
                        key: self.key.clone(),
                        rec,
                    },
                );
            }
        });
    }

    /// Pins or unpins the file.
    pub fn set_pinned(&self, pinned: bool) {
        self.store.set_pinned(&self.key, pinned);
    }
}

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;
