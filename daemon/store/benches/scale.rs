//! The store at scale: what an index of N cached files costs, for N up to tens of millions.
//!
//! For each N, a store is filled with N cached 10 KB files (their data files hard links to 200
//! real ones at every N, so that ten million files need neither 100 GB nor ten million inodes;
//! the index is written as for real files). Then a fresh process opens it and measures:
//! - index bytes on disk per file;
//! - start (open) time and resident memory after the start and after the reads;
//! - p50 / p99 latency of reading one cached file through the store's API (register, read and
//!   CRC-check its chunk, release) over random files;
//! - the time of a put that evicts one file when the cache is full (eviction per file).
//!
//! With `--real`, the fill writes every file through the store's API (register, write, commit)
//! instead: slower and N real data files, but it uses nothing newer than the first layout's
//! API, so the same file benchmarks an older build side by side (less the line of each
//! table's bytes, which needs `Store::index_tables`, and `LOCUS_BENCH_SEED`).
//!
//! `cargo bench -p locus-store --bench scale -- [--dir DIR] [--real] [--keep] [N ...]` (default 10000
//! 100000 1000000); `--keep` leaves each filled store for `--probe DIR N` to measure again
//! (`LOCUS_BENCH_SEED=K` reads another sample of files).
//!
//! `--listed FILE CACHE [SOURCES]` fills a daemon's cache folder CACHE the same way with the
//! files a listing named (FILE: one `uri<TAB>path<TAB>size<TAB>key` line a file, as a daemon
//! lists them), their data files linked to SOURCES real files (default 100,000), so that a
//! daemon started on CACHE finds a dataset of millions of files cached: what
//! `benches/fuse_scale.py --linked` measures a mount over.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use locus_core::RemoteFile;
use locus_store::{Store, SINCE_START};

const SIZE: u64 = 10 * 1024;
/// One chunk a file, as for small files at the default chunk size.
const CHUNK: u64 = 16 << 20;
/// Real data files the fill's files are hard links to: the same number at every N (at most
/// 50,000 links each at 10M, under ext4's 65,000), so that reads at 10k files touch as many
/// distinct inodes' pages as at 10M, as real caches' files (each its own inode) do.
const SOURCES: usize = 200;
const READS: usize = 20_000;
const EVICTIONS: usize = 500;

fn file(i: usize) -> RemoteFile {
    RemoteFile {
        uri: format!(
            "hf://datasets/bench/scale@{:040x}/{:04}/{:08}.bin",
            7,
            i / 1000,
            i
        ),
        path: format!("{:04}/{:08}.bin", i / 1000, i),
        size: SIZE,
        key: format!("rev:{:040x}:{:04}/{:08}.bin:{SIZE}", 7, i / 1000, i),
        locator: String::new(),
        digest: None,
        listed: None,
    }
}

fn bytes() -> Vec<u8> {
    (0..SIZE).map(|i| (i % 251) as u8).collect()
}

fn rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn put(store: &Arc<Store>, f: &RemoteFile, data: &[u8]) {
    let h = store.register(f, CHUNK).expect("register");
    h.reserve(SIZE).expect("reserve");
    h.write_vectored_at(&[data], 0).expect("write");
    h.commit_chunk(0, crc32c::crc32c(data));
}

fn fill(dir: &Path, n: usize, real: bool) {
    let data = bytes();
    let crc = crc32c::crc32c(&data);
    let sources = dir.join("sources");
    std::fs::create_dir_all(&sources).expect("sources");
    let store = Store::open(&dir.join("cache"), u64::MAX / 2).expect("open");
    let t = Instant::now();
    for i in 0..n {
        if real {
            put(&store, &file(i), &data);
        } else {
            let src = sources.join((i % SOURCES).to_string());
            if i < SOURCES {
                std::fs::write(&src, &data).expect("source");
            }
            fill_linked(&store, &file(i), &src, crc);
        }
        if i > 0 && i % 1_000_000 == 0 {
            eprintln!("  filled {i} files in {:.0} s", t.elapsed().as_secs_f64());
        }
    }
    store.flush();
    eprintln!(
        "  filled {n} files in {:.1} s ({:.1} us a file)",
        t.elapsed().as_secs_f64(),
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p) as usize]
}

/// In a fresh process: open, read, evict; prints one line of figures.
fn probe(dir: &Path, n: usize) {
    let data = bytes();
    let t = Instant::now();
    // Exactly full: every new file evicts one.
    let store: Arc<Store> = Store::open(&dir.join("cache"), n as u64 * SIZE).expect("open");
    let open_ms = t.elapsed().as_secs_f64() * 1e3;
    let rss_open = rss_mib();
    // `LOCUS_BENCH_SEED`: another sample of files (a kept store probed again reads files no
    // earlier probe moved in the eviction order or wrote again).
    let mut x: u64 = std::env::var("LOCUS_BENCH_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(0x9e3779b97f4a7c15, |s| {
            s.wrapping_mul(0x9e3779b97f4a7c15) | 1
        });
    let mut lat = Vec::with_capacity(READS);
    // The two halves of a read: the index (register: the record and its chunk table) and the
    // data file (open, read, CRC-check).
    let (mut index_part, mut data_part) = (Vec::with_capacity(READS), Vec::with_capacity(READS));
    let mut missed = 0;
    for _ in 0..READS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let i = (x % n as u64) as usize;
        let t = Instant::now();
        let h = store.register(&file(i), CHUNK).expect("register");
        let registered = t.elapsed().as_secs_f64() * 1e6;
        let Some(b) = h.checked_bytes(0, SINCE_START).expect("read") else {
            // Evicted by an earlier probe's puts (a store kept with `--keep`): not a read.
            missed += 1;
            continue;
        };
        assert_eq!(b.len() as u64, SIZE);
        drop(h);
        let all = t.elapsed().as_secs_f64() * 1e6;
        lat.push(all);
        index_part.push(registered);
        data_part.push(all - registered);
    }
    let rss_reads = rss_mib();
    let mut ev = Vec::with_capacity(EVICTIONS);
    let before = store.stats().files;
    // Files never put before, also when a kept store is probed again.
    let base = n + EVICTIONS * (std::process::id() as usize % 100_000);
    for i in base..base + EVICTIONS {
        let t = Instant::now();
        put(&store, &file(i), &data);
        ev.push(t.elapsed().as_secs_f64() * 1e6);
    }
    if std::env::var_os("LOCUS_BENCH_CRASH").is_some() {
        // A crash with commits just made: what the next open must repair.
        store.flush();
        std::process::abort();
    }
    store.flush();
    assert_eq!(store.stats().files, before, "each put evicted one file");
    let tables: Vec<String> = store
        .index_tables()
        .into_iter()
        .filter(|(_, pages, _)| *pages > 0)
        .map(|(name, pages, stored)| {
            format!(
                "{name} {:.0}/{:.0}",
                (pages * 4096) as f64 / n as f64,
                stored as f64 / n as f64
            )
        })
        .collect();
    assert!(missed <= EVICTIONS, "{missed} files not cached");
    let index = std::fs::metadata(dir.join("cache/index.redb")).map_or(0, |m| m.len());
    println!(
        "files {n:>9}: index {:>6.0} B/file  open {:>7.1} ms  RSS {:>6.1} MiB at start, {:>6.1} MiB after reads  read p50 {:>6.1} us p99 {:>6.1} us  put+evict p50 {:>6.1} us p99 {:>6.1} us",
        index as f64 / n as f64,
        open_ms,
        rss_open,
        rss_reads,
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        pct(&mut ev, 0.5),
        pct(&mut ev, 0.99),
    );
    println!(
        "{:>16}  of a read: index p50 {:>6.1} us p99 {:>6.1} us; data file p50 {:>6.1} us p99 {:>6.1} us",
        "",
        pct(&mut index_part, 0.5),
        pct(&mut index_part, 0.99),
        pct(&mut data_part, 0.5),
        pct(&mut data_part, 0.99),
    );
    println!(
        "{:>16}  index tables, bytes a file in pages/in entries: {}",
        "",
        tables.join(", ")
    );
}

/// The synthetic fill (an older build's bench is run with `--real`).
fn fill_linked(store: &Store, f: &RemoteFile, src: &Path, crc: u32) {
    store.fill_linked(f, CHUNK, src, &[crc]).expect("fill");
}

/// Fills cache folder `cache` with the files listed in `list` (see the module's comment),
/// linked to `sources` real files of each listed size.
fn fill_listed(list: &Path, cache: &Path, sources: usize) {
    use std::io::BufRead;
    let store = Store::open(cache, u64::MAX / 2).expect("open");
    let src_dir = cache.with_extension("sources");
    std::fs::create_dir_all(&src_dir).expect("sources");
    let mut made: std::collections::HashMap<u64, (Vec<u8>, u32)> = Default::default();
    let mut written = std::collections::HashSet::new();
    let t = Instant::now();
    let mut n = 0usize;
    for line in std::io::BufReader::new(std::fs::File::open(list).expect("listing")).lines() {
        let line = line.expect("line");
        let mut f = line.split('\t');
        let (Some(uri), Some(path), Some(size), Some(key)) =
            (f.next(), f.next(), f.next(), f.next())
        else {
            panic!("not uri, path, size, key: {line:?}");
        };
        let size: u64 = size.parse().expect("size");
        let (data, crc) = made.entry(size).or_insert_with(|| {
            let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let crc = crc32c::crc32c(&data);
            (data, crc)
        });
        let src = src_dir.join(format!("{size}-{}", n % sources));
        if written.insert((size, n % sources)) {
            std::fs::write(&src, &data).expect("source");
        }
        let file = RemoteFile {
            uri: uri.to_string(),
            path: path.to_string(),
            size,
            key: key.to_string(),
            locator: String::new(),
            digest: None,
            listed: None,
        };
        store
            .fill_linked(&file, CHUNK, &src, &[*crc])
            .expect("fill");
        n += 1;
        if n.is_multiple_of(1_000_000) {
            eprintln!("  filled {n} files in {:.0} s", t.elapsed().as_secs_f64());
        }
    }
    store.flush();
    eprintln!(
        "  filled {n} listed files in {:.1} s, linked to {} sources",
        t.elapsed().as_secs_f64(),
        sources.min(n)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--probe") {
        probe(Path::new(&args[1]), args[2].parse().expect("n"));
        return;
    }
    if let Some(at) = args.iter().position(|a| a == "--listed") {
        let sources = args
            .get(at + 3)
            .and_then(|s| s.parse().ok())
            .unwrap_or(100_000);
        fill_listed(Path::new(&args[at + 1]), Path::new(&args[at + 2]), sources);
        return;
    }
    let mut base: Option<PathBuf> = None;
    let mut real = false;
    let mut keep = false;
    let mut sizes = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dir" => base = it.next().map(PathBuf::from),
            "--bench" => {}
            "--real" => real = true,
            "--keep" => keep = true,
            s => {
                if let Ok(n) = s.replace('_', "").parse() {
                    sizes.push(n)
                }
            }
        }
    }
    if sizes.is_empty() {
        sizes = vec![10_000, 100_000, 1_000_000];
    }
    let exe = std::env::current_exe().expect("exe");
    for n in sizes {
        let tmp = match &base {
            Some(b) => tempfile::tempdir_in(b),
            None => tempfile::tempdir(),
        }
        .expect("tempdir");
        eprintln!("{n} files:");
        fill(tmp.path(), n, real);
        let st = std::process::Command::new(&exe)
            .args(["--probe", &tmp.path().display().to_string(), &n.to_string()])
            .status()
            .expect("probe");
        assert!(st.success());
        if keep {
            // Probed again with `--probe DIR N` (by another build, say), deleted by hand.
            eprintln!("kept: {}", tmp.keep().display());
        }
    }
}
