//! Per-file read state, shared by every open of a file: where its bytes are, which chunks
//! this mount checked against their CRC, and the read-ahead of a sequential reader.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use fuser::BackingId;

use crate::{Backend, ChunkInfo, FsError, MAX_READAHEAD_CHUNKS};

/// Reads up to this size of checked chunks are answered inline.
pub(crate) const INLINE_READ_MAX: u32 = 128 << 10;

/// Per-file read state, shared by every open of the file.
pub(crate) struct FileState {
    pub(crate) uri: String,
    /// The version (cache key) listed: every read stays on it.
    pub(crate) key: String,
    pub(crate) size: u64,
    pub(crate) inner: Mutex<Inner>,
    /// The kernel opens and closes the file without telling this mount (a mount without
    /// opens, or one whose opens were turned off since): a read that reaches the end closes
    /// the cache file, as a last close would.
    pub(crate) unopened: AtomicBool,
    /// Counted among the distinct small files an [`crate::Opens::Auto`] mount has opened.
    pub(crate) counted: AtomicBool,
    /// Among the cache files a mount without opens holds for reads that did not reach the end.
    pub(crate) held: AtomicBool,
}

#[derive(Default)]
pub(crate) struct Inner {
    /// The daemon's cache file, open while the file is: closed with its last open, so that a
    /// mount holds as many cache files as it has files open (not one per file ever read), and
    /// an evicted cache file's space comes back.
    pub(crate) file: Option<(PathBuf, Arc<File>)>,
    /// The cache file closed with the last open, and what `fstat` said of it then: opened
    /// again as it is if it is still that file (no daemon round trip), its checked chunks
    /// staying checked; else the daemon is asked where the file is.
    pub(crate) closed: Option<(PathBuf, FileStamp)>,
    pub(crate) chunk_size: u64,
    pub(crate) crcs: Vec<Option<u32>>,
    /// Chunks this mount has checked against their CRC.
    pub(crate) checked: Vec<bool>,
    pub(crate) complete: bool,
    /// End of the last read, to spot a sequential reader.
    pub(crate) last_end: u64,
    /// Read-ahead requested up to this chunk (exclusive), and the current window.
    pub(crate) ahead_until: u32,
    pub(crate) window: u32,
    pub(crate) backing: Option<Arc<BackingId>>,
    /// Opens served by passthrough, and by this process.
    pub(crate) passthrough_opens: u32,
    pub(crate) cached_opens: u32,
}

/// What `fstat` says of a cache file that changes if it is replaced or written.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct FileStamp {
    dev: u64,
    ino: u64,
    ctime: (i64, i64),
    len: u64,
}

pub(crate) fn stamp(f: &File) -> std::io::Result<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = f.metadata()?;
    Ok(FileStamp {
        dev: m.dev(),
        ino: m.ino(),
        ctime: (m.ctime(), m.ctime_nsec()),
        len: m.len(),
    })
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The lock if nobody holds it: a request reader never waits behind work on the pool.
pub(crate) fn try_lock<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(g) => Some(g),
        Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// Why a read stopped.
pub(crate) enum ReadError {
    Fs(FsError),
    /// It must ask the daemon: not on a request reader.
    MustWait,
}

impl From<FsError> for ReadError {
    fn from(e: FsError) -> Self {
        ReadError::Fs(e)
    }
}

impl FileState {
    /// The state of a file listed as `uri` (version `key`), `size` bytes; `cached`: where the
    /// listing said its bytes are (saves a round trip to the daemon; if the file has gone
    /// since, the first read asks again).
    pub(crate) fn new(uri: String, key: String, size: u64, cached: Option<ChunkInfo>) -> Self {
        let mut inner = Inner::default();
        if let Some(info) = cached {
            if inner.absorb(info).is_err() {
                inner = Inner::default();
            }
        }
        FileState {
            uri,
            key,
            size,
            inner: Mutex::new(inner),
            unopened: AtomicBool::new(false),
            counted: AtomicBool::new(false),
            held: AtomicBool::new(false),
        }
    }

    /// Reads `offset..offset + size` of a file into `out`, fetching and checking chunks as
    /// needed. Without `may_wait` (on a request reader) it stops with [`ReadError::MustWait`]
    /// where it would ask the daemon. `Ok(true)`: this mount knew nothing of the file's bytes,
    /// yet the node held every chunk it asked for (the listing the file came from is behind
    /// what the node stores).
    pub(crate) fn read_range<B: Backend>(
        &self,
        backend: &B,
        offset: u64,
        size: u32,
        out: &mut Vec<u8>,
        may_wait: bool,
    ) -> Result<bool, ReadError> {
        out.clear();
        if offset >= self.size || size == 0 {
            return Ok(false);
        }
        if !may_wait && size > INLINE_READ_MAX {
            return Err(ReadError::MustWait);
        }
        let end = (offset + size as u64).min(self.size);
        let mut inner = if may_wait {
            lock(&self.inner)
        } else {
            try_lock(&self.inner).ok_or(ReadError::MustWait)?
        };
        let mut stale = false;
        if inner.chunk_size == 0 {
            if !may_wait {
                return Err(ReadError::MustWait);
            }
            drop(inner);
            // A read of the whole file (a small file not cached when listed, the first read
            // of a training epoch) needs every chunk whatever their size: one call both learns
            // the layout and makes them present (the daemon takes no more chunks than the
            // file has). Any other read first learns the layout, so that read-ahead starts
            // before the read's own chunks are fetched.
            let count = if offset == 0 && end == self.size {
                u32::try_from(self.size.div_ceil(locus_core::MIN_CHUNK_SIZE)).unwrap_or(u32::MAX)
            } else {
                0
            };
            let (info, hit) = backend.chunks(&self.uri, &self.key, 0, count, false)?;
            // The node held it all before this read asked: the listing is behind.
            stale = match count {
                0 => info.complete,
                _ => hit,
            };
            inner = lock(&self.inner);
            inner.absorb(info)?;
        }
        let cs = inner.chunk_size;
        let first = (offset / cs) as u32;
        let last = ((end - 1) / cs) as u32;
        // Closed with its last open and not the same file any more: the daemon says again
        // where the cache file is.
        let reopened = inner.file.is_none() && inner.reopen();
        // Without opens, a file closed by a read to its end (or by the held bound) is closed
        // again after a read that reopened it: a read that arrives after the last (a
        // read-ahead READ finished late) must not leave it open.
        let close_after = self.unopened.load(Ordering::Relaxed) && (end == self.size || reopened);
        let missing = inner.file.is_none()
            || (first..=last).any(|c| inner.crcs.get(c as usize).copied().flatten().is_none());
        // A reader answers only from stored chunks, checked or small enough to check on the
        // way; it stops before the read-ahead state changes, so the retry on the pool sees the
        // same read.
        if !may_wait
            && (missing
                || (first..=last).any(|c| {
                    !inner.checked.get(c as usize).copied().unwrap_or(false)
                        && cs.min(self.size - c as u64 * cs) > 1 << 20
                }))
        {
            return Err(ReadError::MustWait);
        }
        // Read-ahead for a sequential reader, doubling its window.
        let sequential = offset == inner.last_end || offset == 0;
        inner.last_end = end;
        let count = inner.crcs.len() as u32;
        if sequential {
            inner.window = (inner.window.max(1) * 2).min(MAX_READAHEAD_CHUNKS);
            let from = inner.ahead_until.max(last + 1);
            let to = (last + 1 + inner.window).min(count);
            if from < to && !inner.complete {
                backend.prefetch(&self.uri, &self.key, from, to - from);
                inner.ahead_until = to;
            }
        } else {
            inner.window = 0;
        }
        if missing {
            // Not under the lock of other readers' progress: the daemon single-flights.
            drop(inner);
            let (info, _) = backend.chunks(&self.uri, &self.key, first, last - first + 1, false)?;
            inner = lock(&self.inner);
            inner.absorb(info)?;
        }
        // A small read of one unchecked small chunk (small files): read the chunk once, check
        // it, and answer from the same bytes.
        let chunk_start = first as u64 * cs;
        let chunk_len = cs.min(self.size - chunk_start);
        if first == last
            && chunk_len <= 1 << 20
            && !inner.checked.get(first as usize).copied().unwrap_or(false)
        {
            if let (Some(Some(crc)), Some((_, f))) =
                (inner.crcs.get(first as usize).copied(), inner.file.clone())
            {
                out.resize(chunk_len as usize, 0);
                // Read in place (this is the small-file path): a file cut short counts as a
                // failed check, and the check below asks the daemon to fetch it again.
                let read = match f.read_exact_at(out, chunk_start) {
                    Ok(()) => true,
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => false,
                    Err(e) => return Err(FsError::Io(format!("{}: {e}", self.uri)).into()),
                };
                if read && crc32c::crc32c(out) == crc {
                    if let Some(slot) = inner.checked.get_mut(first as usize) {
                        *slot = true;
                    }
                    if close_after {
                        inner.close_file();
                    }
                    out.truncate((end - chunk_start) as usize);
                    out.drain(..(offset - chunk_start) as usize);
                    return Ok(stale);
                }
                out.clear();
            }
        }
        for c in first..=last {
            if inner.checked.get(c as usize).copied().unwrap_or(false) {
                continue;
            }
            if !inner.check_chunk(self.size, c)? {
                if !may_wait {
                    return Err(ReadError::MustWait);
                }
                tracing::error!(
                    uri = self.uri,
                    chunk = c,
                    "chunk failed its checksum; asking the node to fetch it again"
                );
                drop(inner);
                let (info, _) = backend.chunks(&self.uri, &self.key, c, 1, true)?;
                inner = lock(&self.inner);
                inner.absorb(info)?;
                if !inner.check_chunk(self.size, c)? {
                    return Err(FsError::Io(format!("{}: chunk {c} is corrupt", self.uri)).into());
                }
            }
            if let Some(slot) = inner.checked.get_mut(c as usize) {
                *slot = true;
            }
        }
        let (_, f) = inner
            .file
            .clone()
            .ok_or_else(|| FsError::Io(format!("{}: no cache file", self.uri)))?;
        if close_after {
            inner.close_file();
        }
        drop(inner);
        out.resize((end - offset) as usize, 0);
        f.read_exact_at(out, offset)
            .map_err(|e| FsError::Io(format!("{}: {e}", self.uri)))?;
        Ok(stale)
    }

    /// Checks every chunk not yet checked by this mount, refetching any that fail, before the
    /// kernel is given the file: with passthrough, reads no longer pass through here.
    pub(crate) fn check_all<B: Backend>(
        &self,
        backend: &B,
        inner: &mut MutexGuard<'_, Inner>,
    ) -> bool {
        let todo: Vec<u32> = (0..inner.crcs.len() as u32)
            .filter(|c| !inner.checked.get(*c as usize).copied().unwrap_or(false))
            .collect();
        // The check is CPU-bound (CRC32C over the page cache): every core takes every n-th chunk.
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 8)
            .min(todo.len().max(1));
        let shared: &Inner = inner;
        let results: Vec<(u32, bool)> = if workers == 1 {
            // One chunk or one core: no thread to start (it would cost more than a small check).
            todo.iter()
                .map(|&c| (c, shared.check_chunk(self.size, c).unwrap_or(false)))
                .collect()
        } else {
            std::thread::scope(|s| {
                let todo = &todo;
                let handles: Vec<_> = (0..workers)
                    .map(|w| {
                        s.spawn(move || {
                            todo.iter()
                                .skip(w)
                                .step_by(workers)
                                .map(|&c| (c, shared.check_chunk(self.size, c).unwrap_or(false)))
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().unwrap_or_default())
                    .collect()
            })
        };
        for (c, ok) in results {
            if !ok {
                tracing::error!(
                    uri = self.uri,
                    chunk = c,
                    "chunk failed its checksum; asking the node to fetch it again"
                );
                let fixed = backend
                    .chunks(&self.uri, &self.key, c, 1, true)
                    .and_then(|(info, _)| inner.absorb(info))
                    .and_then(|()| inner.check_chunk(self.size, c));
                if !matches!(fixed, Ok(true)) {
                    return false;
                }
            }
            if let Some(slot) = inner.checked.get_mut(c as usize) {
                *slot = true;
            }
        }
        // A worker that panicked left its chunks unchecked: no passthrough then.
        inner.checked.iter().all(|c| *c)
    }
}

impl Inner {
    /// Opens again the cache file closed with the last open, if it is still the same file
    /// (device, inode, change time and length as at the close).
    pub(crate) fn reopen(&mut self) -> bool {
        let Some((path, was)) = self.closed.take() else {
            return false;
        };
        let Ok(f) = File::open(&path) else {
            return false;
        };
        if stamp(&f).ok() != Some(was) {
            return false;
        }
        self.file = Some((path, Arc::new(f)));
        true
    }

    /// Takes in what the daemon said about a file.
    pub(crate) fn absorb(&mut self, info: ChunkInfo) -> Result<(), FsError> {
        let reopen = !matches!(&self.file, Some((p, _)) if *p == info.path);
        if reopen {
            let f = File::open(&info.path).map_err(|e| {
                let hint = match e.kind() {
                    std::io::ErrorKind::PermissionDenied => locus_core::DATA_ACCESS_HINT,
                    _ => "",
                };
                FsError::Io(format!("{}: {e}; {hint}", info.path.display()))
            })?;
            // The file closed with the last open, named again with the same CRCs: its checked
            // chunks stay checked. Another cache file (the old one was evicted): check its
            // chunks afresh.
            let again = self.closed.take().is_some_and(|(p, _)| p == info.path);
            self.checked = (0..info.crcs.len())
                .map(|i| {
                    again
                        && self.checked.get(i) == Some(&true)
                        && self.crcs.get(i) == info.crcs.get(i)
                })
                .collect();
            self.file = Some((info.path.clone(), Arc::new(f)));
        }
        self.checked.resize(info.crcs.len(), false);
        self.chunk_size = info.chunk_size;
        self.crcs = info.crcs;
        self.complete = info.complete;
        Ok(())
    }

    /// Reads chunk `c` of the cache file whole and checks it against its CRC.
    pub(crate) fn check_chunk(&self, size: u64, c: u32) -> Result<bool, FsError> {
        let (Some(Some(crc)), Some((_, f))) = (self.crcs.get(c as usize).copied(), &self.file)
        else {
            return Ok(false);
        };
        let start = c as u64 * self.chunk_size;
        let end = (start + self.chunk_size).min(size);
        Ok(locus_core::check_stored(f, start..end, crc)
            .map_err(|e| FsError::Io(e.to_string()))?
            .is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_backend::{Call, TestBackend};

    const CS: u64 = 64 << 10;

    fn data(chunks: u64) -> Vec<u8> {
        (0..chunks * CS).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn read(st: &FileState, b: &TestBackend, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        let mut out = Vec::new();
        match st.read_range(b, offset, size, &mut out, true) {
            Ok(_) => Ok(out),
            Err(ReadError::Fs(e)) => Err(e),
            Err(ReadError::MustWait) => panic!("a read that may wait never stops to wait"),
        }
    }

    fn chunk_calls(b: &TestBackend) -> Vec<Call> {
        b.calls()
            .into_iter()
            .filter(|c| matches!(c, Call::Chunks { .. }))
            .collect()
    }

    fn prefetches(b: &TestBackend) -> Vec<(u32, u32)> {
        b.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Prefetch { first, count } => Some((first, count)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn without_opens_a_read_to_the_end_or_one_that_reopened_closes_the_cache_file() {
        let b = TestBackend::new(data(3), CS, true);
        let mut st = FileState::new("u".into(), "k".into(), 3 * CS, Some(b.info()));
        st.unopened = AtomicBool::new(true);
        let open = |st: &FileState| lock(&st.inner).file.is_some();
        assert!(read(&st, &b, 0, CS as u32).unwrap() == b.data[b.range(0)]);
        assert!(open(&st), "a read that stopped short holds it");
        assert!(read(&st, &b, 2 * CS, CS as u32).unwrap() == b.data[b.range(2)]);
        assert!(!open(&st), "a read to the end closed it");
        // A read-ahead READ that finished after the last: reopened, read, closed again.
        assert!(read(&st, &b, CS, CS as u32).unwrap() == b.data[b.range(1)]);
        assert!(!open(&st), "a read that reopened it closed it");
        assert_eq!(
            chunk_calls(&b),
            vec![],
            "reopened as it was: no daemon call"
        );
        // With opens, the cache file stays until the last close.
        let st = FileState::new("u".into(), "k".into(), 3 * CS, Some(b.info()));
        read(&st, &b, 2 * CS, CS as u32).unwrap();
        assert!(open(&st));
    }

    #[test]
    fn a_sequential_reader_reads_ahead_in_doubling_windows_a_random_one_does_not() {
        let b = TestBackend::new(data(40), CS, false);
        let st = FileState::new("u".into(), "k".into(), 40 * CS, Some(b.info()));
        for c in 0..5u64 {
            let got = read(&st, &b, c * CS, CS as u32).unwrap();
            assert!(got == b.data[b.range(c as u32)], "chunk {c}");
        }
        // Windows of 2, 4 and 8 chunks past the read, each asked from where the last ended;
        // then it stays 8 (MAX_READAHEAD_CHUNKS) ahead.
        assert_eq!(MAX_READAHEAD_CHUNKS, 8);
        assert_eq!(
            prefetches(&b),
            vec![(1, 2), (3, 3), (6, 5), (11, 1), (12, 1)]
        );
        let before = prefetches(&b).len();
        read(&st, &b, 30 * CS, 100).unwrap();
        read(&st, &b, 20 * CS, 100).unwrap();
        assert_eq!(
            prefetches(&b).len(),
            before,
            "random reads start no read-ahead"
        );
        // A file known complete needs none.
        let done = TestBackend::new(data(40), CS, true);
        let st = FileState::new("u".into(), "k".into(), 40 * CS, Some(done.info()));
        read(&st, &done, 0, CS as u32).unwrap();
        assert_eq!(prefetches(&done), vec![]);
    }

    #[test]
    fn a_chunk_that_fails_its_crc_is_fetched_again_and_refused_if_it_fails_again() {
        let b = TestBackend::new(data(4), CS, true);
        b.corrupt(2);
        let st = FileState::new("u".into(), "k".into(), 4 * CS, Some(b.info()));
        let got = read(&st, &b, CS, 3 * CS as u32).unwrap();
        assert!(
            got == b.data[CS as usize..],
            "the mended bytes, never the rotten ones"
        );
        assert_eq!(
            chunk_calls(&b),
            vec![Call::Chunks {
                first: 2,
                count: 1,
                recheck: true
            }]
        );
        // The small-chunk path (one chunk read whole and checked on the way) too, and a
        // refetch that does not mend it fails the read.
        let mut b = TestBackend::new(data(2), CS, true);
        b.mends = false;
        b.corrupt(1);
        let st = FileState::new("u".into(), "k".into(), 2 * CS, Some(b.info()));
        assert!(read(&st, &b, 0, 10).is_ok());
        let e = read(&st, &b, CS + 5, 10).unwrap_err();
        assert_eq!(e.errno(), libc::EIO, "{e}");
        assert!(b.calls().contains(&Call::Chunks {
            first: 1,
            count: 1,
            recheck: true
        }));
    }

    #[test]
    fn a_cache_file_cut_short_is_a_failed_check_not_a_crash() {
        let mut b = TestBackend::new(data(3), CS, true);
        b.mends = false;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&b.path)
            .unwrap();
        f.set_len(CS + 10).unwrap();
        let st = FileState::new("u".into(), "k".into(), 3 * CS, Some(b.info()));
        assert!(read(&st, &b, 0, 100).is_ok());
        assert_eq!(read(&st, &b, 2 * CS, 100).unwrap_err().errno(), libc::EIO);
    }

    #[test]
    fn a_first_read_says_whether_the_node_held_what_the_listing_did_not_show() {
        let small = data(1)[..50_000].to_vec();
        let mut out = Vec::new();
        // Stored on the node, not in the listing: stale.
        let b = TestBackend::new(small.clone(), CS, true);
        let st = FileState::new("u".into(), "k".into(), 50_000, None);
        assert!(matches!(
            st.read_range(&b, 0, 128 << 10, &mut out, true),
            Ok(true)
        ));
        assert!(out == b.data);
        // Its next read knows the file: nothing to say.
        assert!(matches!(
            st.read_range(&b, 0, 4096, &mut out, true),
            Ok(false)
        ));
        // Fetched by this very read: the listing was right.
        let mut lazy = TestBackend::new(small.clone(), CS, true);
        lazy.lazy = true;
        let st = FileState::new("u".into(), "k".into(), 50_000, None);
        assert!(matches!(
            st.read_range(&lazy, 0, 128 << 10, &mut out, true),
            Ok(false)
        ));
        assert!(out == lazy.data);
        // Listed as cached: nothing to say.
        let st = FileState::new("u".into(), "k".into(), 50_000, Some(b.info()));
        assert!(matches!(
            st.read_range(&b, 0, 128 << 10, &mut out, true),
            Ok(false)
        ));
        // A larger file first read elsewhere learns its layout alone: stale when complete.
        let b = TestBackend::new(data(4), CS, true);
        let st = FileState::new("u".into(), "k".into(), 4 * CS, None);
        assert!(matches!(
            st.read_range(&b, CS, 100, &mut out, true),
            Ok(true)
        ));
        let mut partial = TestBackend::new(data(4), CS, false);
        partial.lazy = true;
        let st = FileState::new("u".into(), "k".into(), 4 * CS, None);
        assert!(matches!(
            st.read_range(&partial, CS, 100, &mut out, true),
            Ok(false)
        ));
        assert!(out == partial.data[CS as usize..CS as usize + 100]);
    }

    #[test]
    fn a_first_read_of_a_file_not_cached_when_listed_asks_the_daemon_once() {
        // A small file (one chunk), fetched only when asked: the read from its start both
        // learns the layout and makes chunk 0 present in one call.
        let mut b = TestBackend::new(data(1)[..50_000].to_vec(), CS, false);
        b.lazy = true;
        let st = FileState::new("u".into(), "k".into(), 50_000, None);
        assert!(read(&st, &b, 0, 128 << 10).unwrap() == b.data);
        assert_eq!(
            chunk_calls(&b),
            vec![Call::Chunks {
                first: 0,
                count: 1,
                recheck: false
            }]
        );
        // A first read from the start of a larger file learns the layout first, so that
        // its read-ahead is asked for before its own chunk is fetched.
        let mut b = TestBackend::new(data(4), CS, false);
        b.lazy = true;
        let st = FileState::new("u".into(), "k".into(), 4 * CS, None);
        assert!(read(&st, &b, 0, 100).unwrap() == b.data[..100]);
        assert_eq!(
            b.calls(),
            vec![
                Call::Chunks {
                    first: 0,
                    count: 0,
                    recheck: false
                },
                Call::Prefetch { first: 1, count: 2 },
                Call::Chunks {
                    first: 0,
                    count: 1,
                    recheck: false
                }
            ]
        );
        // A first read elsewhere learns the layout, then asks for the chunks it covers.
        let mut b = TestBackend::new(data(4), CS, false);
        b.lazy = true;
        let st = FileState::new("u".into(), "k".into(), 4 * CS, None);
        let got = read(&st, &b, 2 * CS + 7, 100).unwrap();
        assert!(got == b.data[2 * CS as usize + 7..2 * CS as usize + 107]);
        assert_eq!(
            chunk_calls(&b),
            vec![
                Call::Chunks {
                    first: 0,
                    count: 0,
                    recheck: false
                },
                Call::Chunks {
                    first: 2,
                    count: 1,
                    recheck: false
                }
            ]
        );
    }
}
