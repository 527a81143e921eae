//! The store against a reference model: random sequences of register, write chunk, pin,
//! evict (by capacity), read, restart and power loss. Every read must return the model's bytes
//! or a clean miss; a pinned file's chunks survive anything but a power loss; the bytes used
//! never exceed the capacity.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::time::Duration;

use proptest::prelude::*;

use super::*;

const CHUNK: u64 = 8;
const CAPACITY: u64 = 96;
const KEYS: u8 = 6;

#[derive(Clone, Debug)]
enum Op {
    /// Write chunk `idx` of file `key` (registered first).
    Write {
        key: u8,
        idx: u8,
    },
    Pin {
        key: u8,
        pinned: bool,
    },
    /// Read chunk `idx` of `key`, trusting checks since the start, or checking now.
    Read {
        key: u8,
        idx: u8,
        recheck: bool,
    },
    /// A clean stop and a start.
    Restart,
    /// A stop, then damage that a power loss can leave (zeros over a recorded chunk, or the
    /// file cut short), then a start.
    PowerLoss {
        key: u8,
        idx: u8,
        cut: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..KEYS, 0..5u8).prop_map(|(key, idx)| Op::Write { key, idx }),
        1 => (0..KEYS, any::<bool>()).prop_map(|(key, pinned)| Op::Pin { key, pinned }),
        5 => (0..KEYS, 0..5u8, any::<bool>()).prop_map(|(key, idx, recheck)| Op::Read { key, idx, recheck }),
        1 => Just(Op::Restart),
        1 => (0..KEYS, 0..5u8, any::<bool>()).prop_map(|(key, idx, cut)| Op::PowerLoss { key, idx, cut }),
    ]
}

/// File `key`: 20 to 40 bytes, so 3 to 5 chunks of 8; keys 0 and 1 one chunk (their records
/// hold its CRC).
fn file_of(key: u8) -> RemoteFile {
    let size = match key {
        0 | 1 => 5 + 3 * key as u64,
        _ => 20 + 5 * key as u64 % 21,
    };
    RemoteFile {
        uri: format!("hf://o/n@x/f{key}"),
        path: format!("f{key}"),
        size,
        key: format!("k{key}"),
        locator: String::new(),
        digest: None,
        listed: None,
    }
}

/// The origin's bytes of chunk `idx` of `key` (never zero, so a hole is always wrong).
fn bytes_of(key: u8, idx: u32, len: u64) -> Vec<u8> {
    (0..len)
        .map(|j| ((key as u64 * 31 + idx as u64 * 7 + j) % 251 + 1) as u8)
        .collect()
}

struct Model {
    /// Chunks written and not lost to a power loss, by file.
    written: HashMap<u8, HashSet<u32>>,
    pinned: HashSet<u8>,
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Some(Store::open(dir.path(), CAPACITY).unwrap());
    let mut model = Model {
        written: HashMap::new(),
        pinned: HashSet::new(),
    };
    for op in ops {
        let s = store.as_ref().unwrap().clone();
        match op {
            Op::Write { key, idx } => {
                let f = file_of(key);
                let h = s.register(&f, CHUNK).unwrap();
                let idx = idx as u32 % h.layout().count();
                if h.crc(idx).is_some() {
                    continue;
                }
                let len = h.layout().len(idx);
                if h.reserve(len).is_err() {
                    // Full of pinned files and files in use: a clean refusal.
                    continue;
                }
                let data = bytes_of(key, idx, len);
                h.write_vectored_at(&[&data], h.layout().range(idx).start)
                    .unwrap();
                h.commit_chunk(idx, crc32c::crc32c(&data));
                // As a fetch does once a file is whole (its record written again).
                if h.missing().is_empty() {
                    h.mark_verified();
                }
                if model.pinned.contains(&key) {
                    h.set_pinned(true);
                }
                model.written.entry(key).or_default().insert(idx);
            }
            Op::Pin { key, pinned } => {
                let h = s.register(&file_of(key), CHUNK).unwrap();
                h.set_pinned(pinned);
                if pinned {
                    // What was evicted before the pin is gone; what is there now stays.
                    if let Some(w) = model.written.get_mut(&key) {
                        w.retain(|&i| h.crc(i).is_some());
                    }
                    model.pinned.insert(key);
                } else {
                    model.pinned.remove(&key);
                }
            }
            Op::Read { key, idx, recheck } => {
                let h = s.register(&file_of(key), CHUNK).unwrap();
                let idx = idx as u32 % h.layout().count();
                let trust = if recheck { Duration::ZERO } else { SINCE_START };
                let want = bytes_of(key, idx, h.layout().len(idx));
                match h.checked_bytes(idx, trust).unwrap() {
                    Some(b) => prop_assert_eq!(&b[..], &want[..], "chunk {} of {}", idx, key),
                    None => {
                        // A clean miss: never of a pinned file's chunk that no power loss hit.
                        let kept = model.pinned.contains(&key)
                            && model.written.get(&key).is_some_and(|w| w.contains(&idx));
                        prop_assert!(!kept, "pinned chunk {} of {} lost", idx, key);
                        if let Some(w) = model.written.get_mut(&key) {
                            w.remove(&idx);
                        }
                    }
                }
            }
            Op::Restart => {
                drop(s);
                store.take();
                store = Some(Store::open(dir.path(), CAPACITY).unwrap());
            }
            Op::PowerLoss { key, idx, cut } => {
                let path = {
                    let h = s.register(&file_of(key), CHUNK).unwrap();
                    let idx = idx as u32 % h.layout().count();
                    let r = h.layout().range(idx);
                    (h.path().to_path_buf(), r, idx)
                };
                drop(s);
                store.take();
                let (path, r, idx) = path;
                if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&path) {
                    if cut {
                        f.set_len(r.start).unwrap();
                    } else {
                        f.write_all_at(&vec![0; (r.end - r.start) as usize], r.start)
                            .unwrap();
                    }
                }
                // What the damage touched may be gone (never served wrong).
                if let Some(w) = model.written.get_mut(&key) {
                    w.retain(|&i| if cut { i < idx } else { i != idx });
                }
                store = Some(Store::open(dir.path(), CAPACITY).unwrap());
            }
        }
        // Reservations are all given back or turned into chunks by now.
        store.as_ref().unwrap().check_counts();
        let st = store.as_ref().unwrap().stats();
        prop_assert!(
            st.used <= CAPACITY,
            "{} bytes used of {}",
            st.used,
            CAPACITY
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn every_read_returns_the_origins_bytes_or_a_clean_miss(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops)?;
    }
}
