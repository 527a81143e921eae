//! Cache files opened ahead. The kernel looks a file up before it opens and reads it, and the
//! mount's request reader answers each request in turn: a cold cache file's open (its folder
//! block and inode) and read (its pages) then wait on the disk one file at a time while every
//! other reader waits behind them. When the kernel first looks up a small file the node holds
//! whole, helper threads open its cache file and ask for its pages, so that the disk serves
//! many files at once and the request reader's own open and read find them in memory.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use crate::metrics;

/// Helper threads: each spends its time waiting on the disk, not on a core.
const THREADS: usize = 4;
/// Files waiting for a helper; past it a file is left to the request reader.
const QUEUE: usize = 1024;

pub(crate) struct Ahead {
    tx: SyncSender<(PathBuf, u64)>,
}

impl Ahead {
    pub(crate) fn start() -> Option<Ahead> {
        let (tx, rx) = sync_channel::<(PathBuf, u64)>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..THREADS {
            let rx = rx.clone();
            let started = std::thread::Builder::new()
                .name(format!("locus-fuse-ahead-{i}"))
                .spawn(move || work(&rx));
            if let Err(e) = started {
                tracing::warn!(error = %e, "no thread to open cache files ahead");
                return None;
            }
        }
        Some(Ahead { tx })
    }

    /// Opens the cache file at `path` (`len` bytes) ahead, unless too many wait already (the
    /// request reader never waits here).
    pub(crate) fn ask(&self, path: PathBuf, len: u64) {
        let _ = self.tx.try_send((path, len));
    }
}

fn work(rx: &Mutex<Receiver<(PathBuf, u64)>>) {
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
    }
}
