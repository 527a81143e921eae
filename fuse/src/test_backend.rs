//! A [`Backend`] for unit tests: one file whose cache file lies in a temporary folder, with
//! every call recorded, and a switch for whether a refetch mends a corrupt chunk.

use std::path::PathBuf;
use std::sync::Mutex;

use crate::{Backend, ChunkInfo, FsError, Listing};

/// A call the file system made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Call {
    Chunks {
        first: u32,
        count: u32,
        recheck: bool,
    },
    Prefetch {
        first: u32,
        count: u32,
    },
}

pub(crate) struct TestBackend {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
    /// The origin's bytes.
    pub data: Vec<u8>,
    pub chunk_size: u64,
    pub complete: bool,
    /// A refetch (`recheck`) writes the chunk's right bytes back.
    pub mends: bool,
    /// Chunks are stored only once a call asks for them (a file being fetched), rather
    /// than all from the start.
    pub lazy: bool,
    asked: Mutex<Vec<u32>>,
    pub calls: Mutex<Vec<Call>>,
}

impl TestBackend {
    /// A stored file of `data` in chunks of `chunk_size`.
    pub fn new(data: Vec<u8>, chunk_size: u64, complete: bool) -> Self {
        let dir = tempfile::tempdir().expect("temporary folder");
        let path = dir.path().join("cache-file");
        std::fs::write(&path, &data).expect("cache file");
        Self {
            _dir: dir,
            path,
            data,
            chunk_size,
            complete,
            mends: true,
            lazy: false,
            asked: Mutex::new(Vec::new()),
            calls: Mutex::new(Vec::new()),
        }
    }

    /// Chunk `c`'s range in the file.
    pub fn range(&self, c: u32) -> std::ops::Range<usize> {
        let start = c as usize * self.chunk_size as usize;
        start..(start + self.chunk_size as usize).min(self.data.len())
    }

    /// Flips a byte of chunk `c` in the cache file (rot on disk).
    pub fn corrupt(&self, c: u32) {
        let mut bytes = std::fs::read(&self.path).expect("cache file");
        bytes[self.range(c).start] ^= 0xff;
        std::fs::write(&self.path, bytes).expect("cache file");
    }

    pub fn info(&self) -> ChunkInfo {
        let count = self.data.len().div_ceil(self.chunk_size as usize) as u32;
        ChunkInfo {
            path: self.path.clone(),
            size: self.data.len() as u64,
            chunk_size: self.chunk_size,
            crcs: (0..count)
                .map(|c| Some(crc32c::crc32c(&self.data[self.range(c)])))
                .collect(),
            complete: self.complete,
        }
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls").clone()
    }
}

impl Backend for TestBackend {
    fn list_within(&self, uri: &str, _: std::time::Duration) -> Result<Listing, FsError> {
        self.list(uri)
    }

    fn list(&self, _uri: &str) -> Result<Listing, FsError> {
        Err(FsError::Io("not listed here".into()))
    }

    fn chunks(
        &self,
        _uri: &str,
        _key: &str,
        first: u32,
        count: u32,
        recheck: bool,
    ) -> Result<(ChunkInfo, bool), FsError> {
        self.calls.lock().expect("calls").push(Call::Chunks {
            first,
            count,
            recheck,
        });
        let n = self.data.len().div_ceil(self.chunk_size as usize) as u32;
        let asked_now = first..(first + count).min(n);
        let hit = !asked_now.is_empty() && {
            let asked = self.asked.lock().expect("asked");
            !self.lazy || asked_now.clone().all(|c| asked.contains(&c))
        };
        self.asked.lock().expect("asked").extend(asked_now);
        if recheck && self.mends {
            let mut bytes = std::fs::read(&self.path).map_err(|e| FsError::Io(e.to_string()))?;
            for c in first..first + count {
                let r = self.range(c);
                bytes[r.clone()].copy_from_slice(&self.data[r]);
            }
            std::fs::write(&self.path, bytes).map_err(|e| FsError::Io(e.to_string()))?;
        }
        let mut info = self.info();
        if self.lazy {
            let asked = self.asked.lock().expect("asked");
            for (c, crc) in info.crcs.iter_mut().enumerate() {
                if !asked.contains(&(c as u32)) {
                    *crc = None;
                    info.complete = false;
                }
            }
        }
        Ok((info, hit))
    }

    fn cached(&self) -> Result<Vec<String>, FsError> {
        Ok(Vec::new())
    }

    fn prefetch(&self, _uri: &str, _key: &str, first: u32, count: u32) {
        self.calls
            .lock()
            .expect("calls")
            .push(Call::Prefetch { first, count });
    }
}
