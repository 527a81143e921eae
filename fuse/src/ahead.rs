//! Cache files opened ahead. The kernel looks a file up before it opens and reads it, and the
//! mount's request reader answers each request in turn: a cold cache file's open (its folder
//! block and inode) and read (its pages) then wait on the disk one file at a time while every
//! other reader waits behind them. When the kernel first looks up a small file the node holds
//! whole, helper threads open its cache file and ask for its pages, so that the disk serves
//! many files at once and the request reader's own open and read find them in memory.
//!
//! Where cache files are in memory already, the helpers are only cost (a 2,000-file read of
//! files in the page cache ran 10–14% slower): files are asked for until the request reader's
//! first open reads nothing from the disk, then while opens (the reader's or the helpers' own)
//! do, and one file in 16 otherwise, so that the helpers find a disk gone cold again (the
//! reader opens a cache file once an inode, and its pages may be cold where its inode is not).
//! An open's reads are the thread's block reads (`ru_inblock`), not its time, which a busy
//! machine stretches.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics;

/// Helper threads: each spends its time waiting on the disk, not on a core.
const THREADS: usize = 4;
/// Files waiting for a helper; past it a file is left to the request reader.
const QUEUE: usize = 1024;
/// How long files are asked for after an open found the disk cold.
const COLD_FOR: Duration = Duration::from_secs(2);
/// While the disk is warm, one file in this many is asked for all the same.
const SAMPLE: u64 = 16;

pub(crate) struct Ahead {
    tx: SyncSender<(PathBuf, u64)>,
    cold: Arc<Cold>,
    /// Files not asked for while the disk was warm.
    skipped: AtomicU64,
}

/// Until when (ms after `since`) opens are taken to find the disk cold; `UNKNOWN` before the
/// request reader's first open.
struct Cold {
    since: Instant,
    until_ms: AtomicU64,
}

const UNKNOWN: u64 = u64::MAX;

impl Cold {
    fn now_ms(&self) -> u64 {
        self.since.elapsed().as_millis() as u64
    }

    fn is_cold(&self) -> bool {
        self.now_ms() < self.until_ms.load(Ordering::Relaxed)
    }

    /// An open read from the disk (`cold`) or not (`first_hand`: the request reader's, else a
    /// helper's).
    fn opened(&self, cold: bool, first_hand: bool) {
        let until = match cold {
            true => self.now_ms() + COLD_FOR.as_millis() as u64,
            false if first_hand => 0,
            false => return,
        };
        let _ = self
            .until_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |was| match was {
                UNKNOWN => Some(until),
                _ if cold => Some(was.max(until)),
                _ => None,
            });
    }
}

impl Ahead {
    pub(crate) fn start() -> Option<Ahead> {
        let (tx, rx) = sync_channel::<(PathBuf, u64)>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        // A new mount takes the disk as cold until its first open says otherwise.
        let cold = Arc::new(Cold {
            since: Instant::now(),
            until_ms: AtomicU64::new(UNKNOWN),
        });
        for i in 0..THREADS {
            let (rx, cold) = (rx.clone(), cold.clone());
            let started = std::thread::Builder::new()
                .name(format!("locus-fuse-ahead-{i}"))
                .spawn(move || work(&rx, &cold));
            if let Err(e) = started {
                tracing::warn!(error = %e, "no thread to open cache files ahead");
                return None;
            }
        }
        Some(Ahead {
            tx,
            cold,
            skipped: AtomicU64::new(0),
        })
    }

    /// Opens the cache file at `path` (`len` bytes) ahead while opens find the disk cold (one
    /// in [`SAMPLE`] otherwise), unless too many wait already (the request reader never waits
    /// here).
    pub(crate) fn ask(&self, path: PathBuf, len: u64) {
        let go = self.cold.is_cold()
            || self.skipped.fetch_add(1, Ordering::Relaxed) % SAMPLE == SAMPLE - 1;
        if go {
            let _ = self.tx.try_send((path, len));
        }
    }

    /// The request reader opened a cache file, reading `blocks` from the disk to do so.
    pub(crate) fn opened(&self, blocks: i64) {
        self.cold.opened(blocks > 0, true);
    }
}

/// Blocks the calling thread has read from the disk so far (0 where the kernel does not count
/// them: files are then asked for only until the first open).
pub(crate) fn disk_reads() -> i64 {
    // SAFETY: `rusage` is plain integers, for which all zeroes is a value.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a whole `rusage` for the call to fill.
    match unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) } {
        // (`c_long` is 32 bits on 32-bit targets.)
        #[allow(clippy::useless_conversion)]
        0 => i64::from(u.ru_inblock),
        _ => 0,
    }
}

fn work(rx: &Mutex<Receiver<(PathBuf, u64)>>, cold: &Cold) {
    loop {
        // One helper at a time waits for a file; the guard goes before the work.
        let Ok((path, len)) = rx
            .lock()
            .map_err(|_| ())
            .and_then(|r| r.recv().map_err(|_| ()))
        else {
            return;
        };
        // Gone (evicted) or unreadable: the request reader finds out and says so itself.
        let before = disk_reads();
        let Ok(f) = std::fs::File::open(&path) else {
            continue;
        };
        // SAFETY: a plain syscall on a descriptor `f` owns for the call; it touches no memory.
        let rc = unsafe {
            libc::posix_fadvise(
                f.as_raw_fd(),
                0,
                len as libc::off_t,
                libc::POSIX_FADV_WILLNEED,
            )
        };
        if rc == 0 {
            ::metrics::counter!(metrics::OPENED_AHEAD).increment(1);
        }
        cold.opened(disk_reads() > before, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Pages of `f` in the page cache.
    fn resident(f: &std::fs::File) -> usize {
        // SAFETY: the file is not written while mapped here.
        let map = unsafe { memmap2::Mmap::map(f) }.unwrap();
        let mut pages = vec![0u8; map.len().div_ceil(4096)];
        // SAFETY: `map` is a live mapping of `map.len()` bytes and `pages` has a byte for each
        // of its pages.
        let rc = unsafe { libc::mincore(map.as_ptr() as *mut _, map.len(), pages.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
        pages.iter().filter(|p| *p & 1 == 1).count()
    }

    #[test]
    fn files_are_asked_for_until_the_first_open_finds_the_disk_warm_then_while_opens_find_it_cold()
    {
        let cold = Cold {
            since: Instant::now(),
            until_ms: AtomicU64::new(UNKNOWN),
        };
        assert!(cold.is_cold(), "before any open");
        cold.opened(false, false);
        assert!(cold.is_cold(), "a helper's open from memory says nothing");
        cold.opened(false, true);
        assert!(!cold.is_cold(), "the reader's open from memory: warm");
        cold.opened(true, false);
        assert!(
            cold.is_cold(),
            "an open that read the disk, a helper's too: cold"
        );
        cold.opened(false, true);
        assert!(cold.is_cold(), "for a while after the last such open");
        cold.until_ms.store(cold.now_ms(), Ordering::Relaxed);
        assert!(!cold.is_cold(), "and no longer");
    }

    #[test]
    fn a_file_asked_for_comes_into_the_page_cache() {
        // On a real disk (the page cache of a tmpfs file cannot be dropped).
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 64 << 10]).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        f.sync_all().unwrap();
        // SAFETY: a plain syscall on a descriptor `f` owns; it touches no memory.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(
            resident(&f),
            0,
            "the test's file is still in the page cache"
        );
        let ahead = Ahead::start().unwrap();
        ahead.ask(path, 64 << 10);
        ahead.ask(dir.path().join("gone"), 10);
        let until = Instant::now() + Duration::from_secs(10);
        while resident(&f) < 16 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(resident(&f), 16);
        // A read of pages not in memory counts as the thread's reads from the disk.
        // SAFETY: as above.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        let before = disk_reads();
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut [0u8; 4096], 0).unwrap();
        assert!(disk_reads() > before);
    }
}
