//! How a file is cut into fixed-size chunks, and the one check of a stored chunk's bytes.

/// The smallest chunk a daemon may be set to (`--chunk-size`): a client that does not know a
/// file's chunk size yet knows that `size / MIN_CHUNK_SIZE` chunks, rounded up, cover it.
pub const MIN_CHUNK_SIZE: u64 = 64 << 10;

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;

/// The chunk layout of one file. The chunk size is fixed per file when it enters the cache, so
/// a later change of `--chunk-size` never reinterprets existing cache entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkLayout {
    /// File size in bytes.
    pub size: u64,
    /// Chunk size in bytes (> 0).
    pub chunk_size: u64,
}

impl ChunkLayout {
    /// A layout; `chunk_size` must be positive.
    pub fn new(size: u64, chunk_size: u64) -> Self {
        assert!(chunk_size > 0, "chunk size must be positive");
        Self { size, chunk_size }
    }

    /// Number of chunks (0 for an empty file).
    pub fn count(&self) -> u32 {
        self.size.div_ceil(self.chunk_size) as u32
    }

    /// Byte range of chunk `idx` within the file.
    pub fn range(&self, idx: u32) -> Range<u64> {
        let start = idx as u64 * self.chunk_size;
        start..(start + self.chunk_size).min(self.size)
    }

    /// Length of chunk `idx`.
    pub fn len(&self, idx: u32) -> u64 {
        let r = self.range(idx);
        r.end - r.start
    }

    /// Chunks that overlap the byte range `r` of the file.
    pub fn covering(&self, r: Range<u64>) -> Range<u32> {
        if r.start >= r.end || r.start >= self.size {
            return 0..0;
        }
        let first = (r.start / self.chunk_size) as u32;
        let last = ((r.end.min(self.size) - 1) / self.chunk_size) as u32;
        first..last + 1
    }
}

/// Chunks shorter than this are read into memory rather than mapped: a read costs less than
/// setting up a mapping.
const MAP_AT: u64 = 1 << 20;

/// Bytes of a file, mapped or read into memory: a stored chunk ([`read_stored`]), or a whole
/// safetensors file (the loader).
pub enum FileBytes {
    /// Mapped read-only.
    Mapped(memmap2::Mmap),
    /// Read into memory (small chunks or files, or where a mapping failed or cannot be made).
    Read(Vec<u8>),
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(m) => m,
            FileBytes::Read(v) => v,
        }
    }
}

impl AsRef<[u8]> for FileBytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

/// Why stored bytes are not a chunk's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkFault {
    /// The file ends before the chunk does (a power loss, or someone truncated it).
    #[error("the cache file is {len} bytes long; the chunk ends at byte {end}")]
    Short {
        /// The file's length.
        len: u64,
        /// Where the chunk ends.
        end: u64,
    },
    /// The bytes do not match the CRC32C recorded when they were written.
    #[error("the chunk's bytes do not match their CRC32C")]
    Crc,
    /// The range asked for is not a chunk (it ends before it starts: a size that changed).
    #[error("bytes {start}..{end} are not a chunk")]
    Range {
        /// Where it starts.
        start: u64,
        /// Where it ends.
        end: u64,
    },
}

/// Reads the bytes of `range` from a cache file, checking first that the file holds all of
/// them: a mapping of bytes past the end of a file faults (SIGBUS) on access, so nothing is
/// ever mapped past the length this returns against. The outer error is an I/O failure; the
/// inner one says the bytes are not there.
pub fn read_stored(f: &File, range: Range<u64>) -> std::io::Result<Result<FileBytes, ChunkFault>> {
    if range.end < range.start || range.end - range.start > usize::MAX as u64 {
        return Ok(Err(ChunkFault::Range {
            start: range.start,
            end: range.end,
        }));
    }
    let len = f.metadata()?.len();
    if len < range.end {
        return Ok(Err(ChunkFault::Short {
            len,
            end: range.end,
        }));
    }
    let n = (range.end - range.start) as usize;
    if n as u64 >= MAP_AT {
        // SAFETY: the range lies inside the file (checked just above), and cache files are
        // never truncated while in use (locus-store's invariants); a truncation by anyone else
        // is outside what locus promises. The bytes are checked, not trusted, by the callers.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .offset(range.start)
                .len(n)
                .populate()
                .map(f)
        };
        if let Ok(m) = map {
            return Ok(Ok(FileBytes::Mapped(m)));
        }
    }
    let mut buf = vec![0u8; n];
    match f.read_exact_at(&mut buf, range.start) {
        Ok(()) => Ok(Ok(FileBytes::Read(buf))),
        // Shortened between the length check and the read.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(Err(ChunkFault::Short {
            len: f.metadata()?.len(),
            end: range.end,
        })),
        Err(e) => Err(e),
    }
}

/// [`read_stored`], then the CRC32C: the bytes of `range` only if they are the chunk's.
/// Every reader of a cache file (the daemon, the mount, `locus cat`, the loader through the
/// daemon) checks stored bytes through this one function.
pub fn check_stored(
    f: &File,
    range: Range<u64>,
    crc: u32,
) -> std::io::Result<Result<FileBytes, ChunkFault>> {
    Ok(read_stored(f, range)?.and_then(|b| {
        if crc32c::crc32c(&b) == crc {
            Ok(b)
        } else {
            Err(ChunkFault::Crc)
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_chunks_are_checked_for_length_then_crc() {
        let dir = std::env::temp_dir().join(format!("locus-chunk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f");
        let data: Vec<u8> = (0..(3u32 << 20)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let f = File::open(&p).unwrap();
        let big = 0..(2u64 << 20);
        let small = (2u64 << 20)..(2u64 << 20) + 4096;
        for r in [big.clone(), small.clone()] {
            let crc = crc32c::crc32c(&data[r.start as usize..r.end as usize]);
            let b = check_stored(&f, r.clone(), crc).unwrap().unwrap();
            assert_eq!(&*b, &data[r.start as usize..r.end as usize]);
            assert_eq!(
                check_stored(&f, r.clone(), crc ^ 1).unwrap().err(),
                Some(ChunkFault::Crc)
            );
        }
        // A file cut short is never mapped past its end.
        let cut = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        cut.set_len(1 << 20).unwrap();
        assert_eq!(
            read_stored(&f, big).unwrap().err(),
            Some(ChunkFault::Short {
                len: 1 << 20,
                end: 2 << 20
            })
        );
        assert!(matches!(
            read_stored(&f, small).unwrap(),
            Err(ChunkFault::Short { .. })
        ));
        // A range from a size that changed under the caller is refused, not computed with.
        #[allow(clippy::reversed_empty_ranges)]
        let backwards = 16u64..10;
        assert!(matches!(
            read_stored(&f, backwards).unwrap(),
            Err(ChunkFault::Range { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn layout() {
        let l = ChunkLayout::new(10, 4);
        assert_eq!(l.count(), 3);
        assert_eq!(l.range(2), 8..10);
        assert_eq!(l.len(2), 2);
        assert_eq!(l.covering(3..9), 0..3);
        assert_eq!(l.covering(4..8), 1..2);
        assert_eq!(ChunkLayout::new(0, 4).count(), 0);
        assert_eq!(ChunkLayout::new(8, 4).count(), 2);
    }
}
