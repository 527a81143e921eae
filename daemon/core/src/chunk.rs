//! How a file is cut into fixed-size chunks.

use std::ops::Range;

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

#[cfg(test)]
mod tests {
    use super::*;

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
