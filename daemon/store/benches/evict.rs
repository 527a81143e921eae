//! Eviction under a full cache with many files: the cost of making room for one more chunk.
//!
//! A store with capacity for N one-chunk files (4 KiB each) is filled, then M more files are
//! written; each one evicts the least recently used file. Prints the median time of a put that
//! evicts, for N = 10,000 and 100,000 files.
//!
//! `cargo bench -p locus-store --bench evict`

use std::time::Instant;

use locus_core::RemoteFile;
use locus_store::Store;

const CHUNK: u64 = 4096;

fn file(i: usize) -> RemoteFile {
    RemoteFile {
        uri: format!("s3://bench/f{i}"),
        path: format!("f{i}"),
        size: CHUNK,
        key: format!("k{i}"),
        locator: String::new(),
        digest: None,
        listed: None,
    }
}

fn put(store: &std::sync::Arc<Store>, i: usize, data: &[u8]) {
    let h = store.register(&file(i), CHUNK).expect("register");
    h.reserve(CHUNK).expect("reserve");
    h.write_vectored_at(&[data], 0).expect("write");
    h.commit_chunk(0, crc32c::crc32c(data));
}

fn main() {
    let data = vec![7u8; CHUNK as usize];
    for n in [10_000usize, 100_000] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), n as u64 * CHUNK).expect("open");
        for i in 0..n {
            put(&store, i, &data);
        }
        let mut times: Vec<f64> = (n..n + 200)
            .map(|i| {
                let t = Instant::now();
                put(&store, i, &data);
                t.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        times.sort_by(|a, b| a.total_cmp(b));
        println!(
            "files {n:>7}: median put with eviction {:>9.1} us (p90 {:.1} us)",
            times[times.len() / 2],
            times[times.len() * 9 / 10]
        );
    }
}
