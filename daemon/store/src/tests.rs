use super::*;
use std::os::unix::fs::FileExt;

fn file(key: &str, size: u64) -> RemoteFile {
    RemoteFile {
        uri: format!("hf://o/n@x/{key}"),
        path: key.into(),
        size,
        key: key.into(),
        locator: String::new(),
        digest: None,
        listed: None,
    }
}

fn put(h: &FileHandle, idx: u32, byte: u8) {
    let len = h.layout().len(idx) as usize;
    let data = vec![byte; len];
    h.reserve(len as u64).unwrap();
    h.write_vectored_at(&[&data], h.layout().range(idx).start)
        .unwrap();
    h.commit_chunk(idx, crc32c::crc32c(&data));
}

/// Writes a 9 over byte `at` of `h`'s data file (in chunk 0), then checks chunk 0 now: it
/// must be dropped, never served.
fn rot_and_check(h: &FileHandle, at: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(h.path())
        .unwrap()
        .write_all_at(&[9], at)
        .unwrap();
    assert!(matches!(
        h.check_chunk(0, std::time::Duration::ZERO).unwrap(),
        ChunkCheck::Dropped
    ));
}

#[test]
fn chunks_survive_reopen_and_corruption_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        let h = s.register(&file("a", 10), 4).unwrap();
        put(&h, 0, 1);
        put(&h, 2, 3);
        assert_eq!(h.missing(), vec![1]);
        s.flush();
    }
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    let h = s.register(&file("a", 10), 8).unwrap();
    assert_eq!(
        h.layout().chunk_size,
        4,
        "chunk size kept from the first registration"
    );
    assert_eq!(h.missing(), vec![1]);
    assert_eq!(s.stats().used, 6);
    // Nothing is trusted across a start (a power loss may have lost the bytes): read and
    // checked once, then trusted.
    match h.check_chunk(2, SINCE_START).unwrap() {
        ChunkCheck::Checked(b) => assert_eq!(&b[..], &[3, 3]),
        _ => panic!("chunk 2 must be read and checked after a start"),
    }
    assert!(matches!(
        h.check_chunk(2, SINCE_START).unwrap(),
        ChunkCheck::Trusted
    ));
    // Corrupt chunk 0 on disk: it fails its check and is dropped, never served.
    rot_and_check(&h, 1);
    assert_eq!(h.missing(), vec![0, 1]);
    assert_eq!(s.stats().used, 2);
}

#[test]
fn lru_eviction_spares_pinned_and_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), 10).unwrap();
    let a = s.register(&file("a", 4), 4).unwrap();
    put(&a, 0, 1);
    a.set_pinned(true);
    drop(a);
    let b = s.register(&file("b", 4), 4).unwrap();
    put(&b, 0, 2);
    let b_path = b.path().to_path_buf();
    drop(b);
    let c = s.register(&file("c", 4), 4).unwrap();
    put(&c, 0, 3); // needs room: b (unpinned, unused) goes, a (pinned) stays
    s.flush();
    assert_eq!(s.cached_fraction("a"), 1.0);
    assert_eq!(s.cached_fraction("b"), 0.0);
    assert!(!b_path.exists(), "evicted data file is unlinked");
    // Nothing left to evict: a (pinned) and c (in use).
    let d = s.register(&file("d", 4), 4).unwrap();
    assert!(matches!(d.reserve(4), Err(StoreError::Full { .. })));
}

#[test]
fn an_open_cache_file_keeps_its_length_and_bytes_through_eviction_and_a_new_copy() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), 8).unwrap();
    let seen = |f: &std::fs::File| {
        let mut b = [0u8; 8];
        let n = f.read_at(&mut b, 0).unwrap();
        (f.metadata().unwrap().len(), b[..n].to_vec())
    };
    let h = s.register(&file("a", 4), 4).unwrap();
    put(&h, 0, 1);
    h.mark_verified();
    // A reader outside the daemon (a mount, the loader's mapping) holds the cache file.
    let held = std::fs::File::open(h.path()).unwrap();
    let first = h.path().to_path_buf();
    drop(h);
    // Pushed out by newer files, then cached again: another file; the held one never changes
    // (its space comes back when it is closed).
    for (k, byte) in [("b", 2), ("c", 3)] {
        let g = s.register(&file(k, 4), 4).unwrap();
        put(&g, 0, byte);
        g.mark_verified();
    }
    s.flush();
    assert_eq!(s.cached_fraction("a"), 0.0);
    assert!(!first.exists(), "the evicted file is unlinked");
    assert_eq!(seen(&held), (4, vec![1; 4]));
    // (Other bytes than the first copy's, so that a write into the held file would show.)
    let h = s.register(&file("a", 4), 4).unwrap();
    put(&h, 0, 9);
    assert_ne!(h.path(), first.as_path());
    drop(h);
    assert!(matches!(s.evict("a"), Evicted::Freed(_)));
    s.flush();
    assert_eq!(seen(&held), (4, vec![1; 4]));
}

#[test]
fn evict_leaves_a_file_in_use_and_takes_it_pinned_or_not_once_let_go() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    let h = s.register(&file("a", 4), 4).unwrap();
    put(&h, 0, 1);
    h.mark_verified();
    h.set_pinned(true);
    let path = h.path().to_path_buf();
    // The daemon is reading or writing it: left as it is, and said so.
    assert!(matches!(s.evict("a"), Evicted::InUse));
    s.flush();
    assert!(path.exists());
    assert_eq!(s.cached_fraction("a"), 1.0);
    drop(h);
    assert!(matches!(s.evict("a"), Evicted::Freed(4)));
    s.flush();
    assert!(!path.exists());
    assert!(matches!(s.evict("a"), Evicted::NotCached));
    s.check_counts();
}

#[test]
fn a_start_walks_no_data_file() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        let h = s.register(&file("a", 4), 4).unwrap();
        put(&h, 0, 1);
        h.mark_verified();
    }
    // A data file of an id far from any handed out, which the index does not name: only a walk
    // of the data files could find it (a crash leaves unrecorded files only in the ids the
    // index marks as handed out, which a start removes by name).
    let stray = index::data_path(&dir.path().join("data"), 1 << 40);
    std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
    std::fs::write(&stray, b"x").unwrap();
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    assert!(stray.exists(), "a start looked at the data files");
    assert_eq!(s.resident_files(), 0, "a start reads no record");
    assert_eq!(s.cached_fraction("a"), 1.0);
}

#[test]
fn what_a_crash_leaves_is_repaired_at_start_and_a_missing_data_file_when_looked_up() {
    let dir = tempfile::tempdir().unwrap();
    let (kept, evicted, unrecorded, removed);
    {
        let s = Store::open(dir.path(), 100).unwrap();
        let h = s.register(&file("kept", 4), 4).unwrap();
        put(&h, 0, 1);
        kept = h.path().to_path_buf();
        drop(h);
        let h = s.register(&file("evicted", 4), 4).unwrap();
        put(&h, 0, 2);
        evicted = h.path().to_path_buf();
        drop(h);
        let h = s.register(&file("removed", 4), 4).unwrap();
        put(&h, 0, 3);
        removed = h.path().to_path_buf();
        drop(h);
        // The removal commits, then the process dies before unlinking the data file.
        s.index.keep_garbage();
        assert_eq!(s.evict("evicted"), Evicted::Freed(4));
        s.flush();
        assert!(evicted.exists());
        // Then the index stops: a file registered now has a data file and no record.
        s.halt_index();
        let h = s.register(&file("unrecorded", 4), 4).unwrap();
        put(&h, 0, 4);
        unrecorded = h.path().to_path_buf();
        assert!(unrecorded.exists());
    }
    // An operator deletes a data file by hand (a crash cannot: the index goes first).
    std::fs::remove_file(&removed).unwrap();
    let s = Store::open(dir.path(), 100).unwrap();
    assert!(
        !evicted.exists(),
        "a committed removal's data file is unlinked at start"
    );
    assert!(
        !unrecorded.exists(),
        "an unrecorded data file is removed at start"
    );
    assert!(kept.exists());
    assert_eq!(s.cached_fraction("unrecorded"), 0.0);
    assert_eq!(s.cached_fraction("evicted"), 0.0);
    assert_eq!(s.cached_fraction("kept"), 1.0);
    assert_eq!((s.stats().files, s.stats().used), (2, 8));
    // The record whose data file is gone is dropped when it is looked up.
    assert_eq!(s.cached_fraction("removed"), 0.0);
    assert_eq!((s.stats().files, s.stats().used), (1, 4));
    s.flush();
    drop(s);
    let s = Store::open(dir.path(), 100).unwrap();
    assert_eq!(
        (s.stats().files, s.stats().used),
        (1, 4),
        "the totals agree with the records after a restart"
    );
    assert_eq!(s.namespaces(), vec!["hf://o/n".to_string()]);
}

#[test]
fn memory_holds_the_files_in_use_and_the_recent_ones_not_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let n = 200;
    {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        for i in 0..n {
            let h = s.register(&file(&format!("f{i}"), 4), 4).unwrap();
            put(&h, 0, i as u8);
        }
        s.flush();
        // One more registration lets the committed idle files go.
        drop(s.register(&file("last", 4), 4).unwrap());
        assert!(
            s.resident_files() <= RESIDENT + 1,
            "{} files in memory",
            s.resident_files()
        );
    }
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(s.resident_files(), 0, "a start reads no file record");
    assert_eq!(s.stats().files, n + 1);
    assert_eq!(s.stats().used, 4 * n);
    let held: Vec<FileHandle> = (0..10)
        .map(|i| s.register(&file(&format!("f{i}"), 4), 4).unwrap())
        .collect();
    for i in 0..n {
        let h = s.register(&file(&format!("f{i}"), 4), 4).unwrap();
        assert!(
            matches!(h.checked_bytes(0, SINCE_START).unwrap(), Some(b) if b[..] == [i as u8; 4][..])
        );
    }
    assert!(
        s.resident_files() <= RESIDENT + held.len(),
        "{} files in memory with {} in use",
        s.resident_files(),
        held.len()
    );
    // Files in use never leave memory: their chunks stay known.
    for (i, h) in held.iter().enumerate() {
        assert_eq!(h.crc(0), Some(crc32c::crc32c(&[i as u8; 4])));
    }
}

#[test]
fn eviction_follows_the_index_order_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path(), 40).unwrap();
        for i in 0..10 {
            let h = s.register(&file(&format!("f{i}"), 4), 4).unwrap();
            put(&h, 0, 1);
        }
        s.set_pinned("f0", true);
        s.flush();
    }
    // After a restart nothing is in memory; the oldest unpinned files go first.
    let s = Store::open(dir.path(), 40).unwrap();
    let h = s.register(&file("new", 8), 4).unwrap();
    put(&h, 0, 2);
    put(&h, 1, 2);
    s.flush();
    let left: Vec<usize> = (0..10)
        .filter(|i| s.cached_fraction(&format!("f{i}")) == 1.0)
        .collect();
    assert_eq!(left, vec![0, 3, 4, 5, 6, 7, 8, 9]);
    assert_eq!(s.stats().pinned, 1);
    assert_eq!(s.stats().pinned_bytes, 4);
    assert_eq!(s.stats().used, 40);
}

#[test]
fn one_store_per_directory() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), 100).unwrap();
    let h = s.register(&file("a", 4), 4).unwrap();
    put(&h, 0, 1);
    s.flush();
    let index = std::fs::read(dir.path().join("index.redb")).unwrap();
    match Store::open(dir.path(), 100) {
        Err(StoreError::Locked { holder, .. }) => {
            assert_eq!(holder, format!("pid {}", std::process::id()))
        }
        r => panic!("a second store opened: {:?}", r.err()),
    }
    assert_eq!(std::fs::read(dir.path().join("index.redb")).unwrap(), index);
    assert!(h.path().exists());
    drop(h);
    drop(s);
    let s = Store::open(dir.path(), 100).unwrap();
    assert_eq!(s.cached_fraction("a"), 1.0);
}

#[test]
fn an_unusable_index_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data").join("7"), b"cached bytes").unwrap();
    // There, but not a database redb can open (EISDIR): not proven corrupt.
    std::fs::create_dir(dir.path().join("index.redb")).unwrap();
    assert!(matches!(
        Store::open(dir.path(), 100).err(),
        Some(StoreError::IndexUnusable { .. })
    ));
    assert!(dir.path().join("data").join("7").exists());
    assert!(dir.path().join("index.redb").is_dir());
    assert!(!dir.path().join("index.redb.broken").exists());
}

#[test]
fn files_larger_than_the_cache_are_refused_before_any_table() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    // A size an origin or a peer may claim: no per-chunk table is made for it.
    assert!(matches!(
        s.register(&file("huge", 1 << 50), 4096).err(),
        Some(StoreError::TooLarge { .. })
    ));
    assert_eq!(s.stats().files, 0);
}

#[test]
fn a_short_data_file_is_never_mapped() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    let h = s.register(&file("a", 8), 4).unwrap();
    put(&h, 0, 1);
    put(&h, 1, 2);
    std::fs::OpenOptions::new()
        .write(true)
        .open(h.path())
        .unwrap()
        .set_len(6)
        .unwrap();
    assert!(h.map_chunk(1).unwrap().is_none());
    assert_eq!(h.missing(), vec![1], "the short chunk was dropped");
    assert!(h.map_chunk(0).unwrap().is_some());
    assert!(matches!(
        h.check_chunk(1, std::time::Duration::ZERO).unwrap(),
        ChunkCheck::Missing
    ));
}

#[test]
fn metadata_is_bounded_and_the_oldest_goes_first() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), 100).unwrap();
    // 150 entries against a bound of 100 (in tests); entry 0 is written again last, so it is
    // the newest.
    for i in 0..150 {
        s.meta_put(&format!("k{i}"), vec![i as u8; 3]);
    }
    s.meta_put("k0", b"again".to_vec());
    s.flush();
    let kept: Vec<usize> = (0..150)
        .filter(|i| s.meta_get(&format!("k{i}")).is_some())
        .collect();
    assert_eq!(kept.len(), 100, "{kept:?}");
    assert_eq!(s.meta_get("k0").as_deref(), Some(&b"again"[..]));
    assert_eq!(s.meta_get("k149"), Some(vec![149; 3]));
    assert!(s.meta_get("k1").is_none() && s.meta_get("k50").is_none());
    drop(s);
    // The order survives a restart.
    let s = Store::open(dir.path(), 100).unwrap();
    s.meta_put("new", vec![1]);
    s.flush();
    assert!(s.meta_get("k51").is_none());
    assert!(s.meta_get("k0").is_some() && s.meta_get("new").is_some());
}

#[test]
fn a_large_metadata_value_is_kept_in_pieces_and_they_go_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), 100).unwrap();
    // Over two pieces, each byte telling where it is: a piece lost, repeated or out of order
    // reads back differently.
    let big: Vec<u8> = (0..9u32 << 20).map(|i| (i % 251) as u8).collect();
    // Handed over in parts that do not line up with the pieces, as a listing hands its head
    // and then its records.
    struct Parts(Vec<u8>);
    impl crate::MetaValue for Parts {
        fn write_to(&self, out: &mut dyn FnMut(&[u8])) {
            self.0.chunks(777_777).for_each(out);
        }
    }
    s.meta_put_shared("big", std::sync::Arc::new(Parts(big.clone())));
    s.meta_put("small", vec![7; 3]);
    s.flush();
    let piece_bytes = |s: &Store| {
        s.index
            .table_sizes()
            .into_iter()
            .find(|(name, _, _)| name == "meta_pieces")
            .map_or(0, |(_, _, bytes)| bytes)
    };
    assert!(s.meta_get("big") == Some(big.clone()));
    assert!(piece_bytes(&s) >= big.len() as u64);
    drop(s);
    let s = Store::open(dir.path(), 100).unwrap();
    assert!(s.meta_get("big") == Some(big.clone()), "after a restart");
    // Written again small, its pieces go.
    s.meta_put("big", b"now small".to_vec());
    s.flush();
    assert_eq!(s.meta_get("big").as_deref(), Some(&b"now small"[..]));
    assert_eq!(piece_bytes(&s), 0);
    // Its place in the eviction order moved with it: 100 entries now, none dropped.
    for i in 0..98 {
        s.meta_put(&format!("f{i}"), vec![2]);
    }
    s.flush();
    assert!(s.meta_get("big").is_some() && s.meta_get("small").is_some());
    // Pushed out by newer entries, so do they.
    s.meta_put("big", big.clone());
    s.flush();
    assert!(piece_bytes(&s) > 0);
    for i in 0..100 {
        s.meta_put(&format!("k{i}"), vec![1]);
    }
    s.flush();
    assert!(s.meta_get("big").is_none());
    assert_eq!(piece_bytes(&s), 0);
    assert!(s.meta_get("small").is_none() && s.meta_get("k99").is_some());
}

#[test]
fn a_small_files_record_holds_its_crc_until_its_chunk_goes() {
    let dir = tempfile::tempdir().unwrap();
    let crc = crc32c::crc32c(&[5, 5, 5]);
    {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        let small = s.register(&file("small", 3), 4).unwrap();
        put(&small, 0, 5);
        small.mark_verified();
        let big = s.register(&file("big", 10), 4).unwrap();
        for i in 0..3 {
            put(&big, i, 6);
        }
        big.mark_verified();
        s.flush();
        let load = |k| s.index.load(k).unwrap().unwrap();
        assert_eq!(
            (load("small").0.crc, load("small").1),
            (Some(crc), vec![(0, crc)])
        );
        assert_eq!(
            (load("big").0.crc, load("big").1.len()),
            (None, 3),
            "several chunks: their CRCs in their own table only"
        );
        s.check_counts();
        // The drop op alone (a commit may end right after it, then a crash): the record
        // forgets the CRC in the same op, never naming a chunk that is gone.
        let lone = s.register(&file("lone", 2), 4).unwrap();
        put(&lone, 0, 8);
        lone.mark_verified();
        s.flush();
        assert!(load("lone").0.crc.is_some());
        s.index.send(Op::DropChunk {
            key: "lone".into(),
            id: lone.id,
            idx: 0,
            len: 2,
        });
        s.flush();
        assert_eq!((load("lone").0.crc, load("lone").1), (None, vec![]));
    }
    // Read after a start (from the index): the record's CRC is the chunk's.
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    let small = s.register(&file("small", 3), 4).unwrap();
    assert!(small.missing().is_empty());
    assert!(matches!(
        small.check_chunk(0, SINCE_START).unwrap(),
        ChunkCheck::Checked(b) if b[..] == [5u8; 3][..]
    ));
    // Rotted on disk: dropped, and the record forgets the CRC in the same commit.
    rot_and_check(&small, 0);
    s.flush();
    let lone = s.register(&file("lone", 2), 4).unwrap();
    assert_eq!(lone.missing(), vec![0]);
    drop(lone);
    let (rec, crcs) = s.index.load("small").unwrap().unwrap();
    assert_eq!((rec.crc, crcs), (None, vec![]));
    s.check_counts();
    drop(small);
    drop(s);
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    let small = s.register(&file("small", 3), 4).unwrap();
    assert_eq!(small.missing(), vec![0], "fetched again, never served");
}

#[test]
fn a_small_files_read_takes_its_crc_from_the_record_which_follows_a_rewritten_chunk() {
    use redb::{ReadableTable, TableDefinition};
    const FILES: TableDefinition<&str, &[u8]> = TableDefinition::new("files");
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        let h = s.register(&file("small", 3), 4).unwrap();
        put(&h, 0, 5);
        h.mark_verified();
        // Other bytes over the recorded chunk (no drop first; its room is already counted):
        // the record must not keep the old CRC, even with no write of the record after.
        h.write_vectored_at(&[&[6; 3]], 0).unwrap();
        h.commit_chunk(0, crc32c::crc32c(&[6; 3]));
        s.flush();
        let (rec, crcs) = s.index.load("small").unwrap().unwrap();
        let six = crc32c::crc32c(&[6; 3]);
        assert_ne!(rec.crc, Some(crc32c::crc32c(&[5; 3])));
        assert_eq!(crcs, vec![(0, six)]);
        s.check_counts();
        h.mark_verified();
        s.flush();
        assert_eq!(s.index.load("small").unwrap().unwrap().0.crc, Some(six));
    }
    // The read looks up the record alone: a CRC planted in it (the chunk table left as it
    // is) is the one a load gives.
    {
        let db = redb::Database::create(dir.path().join("index.redb")).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut t = w.open_table(FILES).unwrap();
            let v = t.get("small").unwrap().unwrap().value().to_vec();
            let rec = index::decode(&v).unwrap();
            let planted = FileRecord {
                crc: Some(7),
                ..rec
            }
            .encode();
            t.insert("small", planted.as_slice()).unwrap();
        }
        w.commit().unwrap();
    }
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(s.index.load("small").unwrap().unwrap().1, vec![(0, 7)]);
}

#[test]
fn per_chunk_tables_hold_only_stored_chunks() {
    let dir = tempfile::tempdir().unwrap();
    // A file of 2^18 chunks with one stored (its last): the tables hold one entry, not 2^18.
    let size = 1 << 30;
    {
        let s = Store::open(dir.path(), size).unwrap();
        let h = s.register(&file("huge", size), 4096).unwrap();
        let last = h.layout().count() - 1;
        put(&h, last, 7);
        assert_eq!(h.missing().len() as u32, last);
        assert_eq!(h.crcs().iter().flatten().count(), 1);
        assert!(h.all_crcs().is_none());
        assert_eq!(s.stats().used, 4096);
        s.flush();
    }
    let s = Store::open(dir.path(), size).unwrap();
    let h = s.register(&file("huge", size), 4096).unwrap();
    let last = h.layout().count() - 1;
    assert!(matches!(
        h.check_chunk(last, SINCE_START).unwrap(),
        ChunkCheck::Checked(b) if b[..] == [7u8; 4096][..]
    ));
    assert_eq!(h.missing().len() as u32, last);
}

#[test]
#[ignore = "needs root (a mount, another user or a tmpfs): tests/run runs it"]
fn cached_bytes_are_for_the_daemon_and_the_chosen_group_only() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let mode_gid = |p: &Path| {
        let m = std::fs::metadata(p).unwrap();
        (m.mode() & 0o777, m.gid())
    };
    // A cache an older version left: everything world-readable.
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::set_permissions(
        dir.path().join("data"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let data = {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        let h = s.register(&file("a", 10), 4).unwrap();
        put(&h, 0, 1);
        s.flush();
        let p = h.path().to_path_buf();
        assert_eq!(mode_gid(&p).0, 0o600, "a new data file");
        assert_eq!(mode_gid(&dir.path().join("data")).0, 0o700);
        assert_eq!(mode_gid(&dir.path().join("index.redb")).0, 0o600);
        assert_eq!(mode_gid(&dir.path().join("lock")).0, 0o600);
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        p
    };
    // Reopened for a group: the file already cached and a new one are the group's to read.
    let gid = 4242;
    {
        let s = Store::open_with(dir.path(), 1 << 20, Access::Group(gid)).unwrap();
        assert_eq!(mode_gid(&data), (0o640, gid), "a file cached before");
        assert_eq!(mode_gid(&dir.path().join("data")), (0o750, gid));
        let h = s.register(&file("b", 10), 4).unwrap();
        assert_eq!(mode_gid(h.path()), (0o640, gid), "a new data file");
        s.flush();
    }
    // And back to the owner only.
    let _s = Store::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(mode_gid(&data).0, 0o600);
    assert_eq!(mode_gid(&dir.path().join("data")).0, 0o700);
}

#[test]
fn a_cache_of_the_first_layout_is_converted_once() {
    use redb::TableDefinition;
    const FILES: TableDefinition<&str, &[u8]> = TableDefinition::new("files");
    const CHUNKS: TableDefinition<(u64, u32), u32> = TableDefinition::new("chunks");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // What the first layout left: every data file in data/, records and chunks only.
    {
        let db = redb::Database::create(dir.path().join("index.redb")).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut files = w.open_table(FILES).unwrap();
            let mut chunks = w.open_table(CHUNKS).unwrap();
            for (key, id, pinned) in [("a", 7u64, false), ("b", 9, true), ("lost", 11, false)] {
                let rec = FileRecord {
                    id,
                    size: 8,
                    chunk_size: 4,
                    uri: format!("hf://o/n@x/{key}"),
                    digest: None,
                    pinned,
                    verified: false,
                    last_access: id,
                    crc: None,
                };
                files
                    .insert(key, serde_json::to_vec(&rec).unwrap().as_slice())
                    .unwrap();
                chunks
                    .insert((id, 0), crc32c::crc32c(&[id as u8; 4]))
                    .unwrap();
                if id != 11 {
                    std::fs::write(data.join(id.to_string()), [id as u8; 4]).unwrap();
                }
            }
        }
        w.commit().unwrap();
    }
    std::fs::write(data.join("12"), b"unknown").unwrap();
    let s = Store::open(dir.path(), 100).unwrap();
    assert!(
        !data.join("12").exists(),
        "a data file no record names is removed"
    );
    assert!(!data.join("7").exists() && data.join("0").join("7").exists());
    assert_eq!(
        s.stats().files,
        2,
        "the record without a data file is dropped"
    );
    assert_eq!(
        (s.stats().used, s.stats().pinned, s.stats().pinned_bytes),
        (8, 1, 4)
    );
    s.check_counts();
    let h = s.register(&file("a", 8), 4).unwrap();
    assert!(matches!(h.checked_bytes(0, SINCE_START).unwrap(), Some(b) if b[..] == [7u8; 4][..]));
    drop(h);
    let h = s.register(&file("c", 8), 4).unwrap();
    assert!(h.id > 9, "new ids come after the converted ones");
    drop(h);
    drop(s);
    // Converted once: a second start keeps what is there.
    let s = Store::open(dir.path(), 100).unwrap();
    assert_eq!(s.cached_fraction("b"), 0.5);
    s.check_counts();
}

#[test]
fn a_listings_look_finds_files_by_where_they_were_cached_from() {
    let dir = tempfile::tempdir().unwrap();
    let f = |i: u32| file(&format!("k{i:03}"), 8);
    {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        for i in 0..40 {
            let h = s.register(&f(i), 4).unwrap();
            put(&h, 0, 1);
            put(&h, 1, 2);
            if i % 2 == 0 {
                h.mark_verified();
            }
        }
        assert!(matches!(s.evict("k005"), Evicted::Freed(_)));
        s.check_counts();
    }
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    let uris: Vec<String> = (0..40).map(|i| f(i).uri).collect();
    let asked: Vec<(&str, &str)> = (0..40)
        .map(|i| (uris[i].as_str(), &uris[i][11..]))
        .collect();
    // Found by one scan of the places, without a lookup by key.
    let placed = s.index.load_places(&asked).unwrap();
    for (i, p) in placed.iter().enumerate() {
        match (i, p) {
            (5, None) => {}
            (5, Some(_)) => panic!("the evicted file's place is gone"),
            (_, Some((place, crcs))) => {
                assert_eq!((place.size, place.verified, crcs.len()), (8, i % 2 == 0, 2))
            }
            (_, None) => panic!("file {i} has no place"),
        }
    }
    let elsewhere = "hf://o/other@y/copy";
    let held = s.holdings(&[
        asked[0],
        asked[1],
        asked[5],
        // Other bytes now at a URI something was cached from: not those.
        (asked[2].0, "k999"),
        // Bytes cached from another URI: found by key.
        (elsewhere, "k004"),
    ]);
    let seen: Vec<(f64, bool)> = held
        .iter()
        .map(|h| (h.fraction, h.complete.is_some()))
        .collect();
    assert_eq!(
        seen,
        [
            (1.0, true),
            (1.0, false),
            (0.0, false),
            (0.0, false),
            (1.0, true)
        ]
    );
    assert_eq!(
        s.resident_files(),
        0,
        "a listing's look brings no file into memory"
    );
    assert_eq!(
        held[0].complete.as_ref().map(|c| c.0.clone()),
        s.complete_file("k000").map(|c| c.0)
    );
    s.check_counts();
}

#[test]
fn places_stay_true_when_keys_share_a_uri_and_files_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    let a = file("a", 4);
    let b = RemoteFile {
        key: "b".into(),
        ..a.clone()
    };
    let place_of = |s: &Arc<Store>, key: &str| {
        s.index.flush();
        s.index.load_places(&[(a.uri.as_str(), key)]).unwrap()[0]
            .as_ref()
            .map(|p| p.0.id)
    };
    for f in [&a, &b] {
        let h = s.register(f, 4).unwrap();
        put(&h, 0, 1);
    }
    // The URI's bytes changed: the place is the newer key's, the older still found by key.
    assert!(place_of(&s, "a").is_none());
    let b_id = place_of(&s, "b").expect("b's place");
    assert_eq!(s.holdings(&[(a.uri.as_str(), "a")])[0].fraction, 1.0);
    s.check_counts();
    // Removing the key that lost the place leaves the other's.
    assert!(matches!(s.evict("a"), Evicted::Freed(_)));
    assert_eq!(place_of(&s, "b"), Some(b_id));
    s.check_counts();
    // Removed, then cached again under a new id: the place follows.
    assert!(matches!(s.evict("b"), Evicted::Freed(_)));
    assert_eq!(place_of(&s, "b"), None);
    let h = s.register(&b, 4).unwrap();
    put(&h, 0, 2);
    drop(h);
    let again = place_of(&s, "b").expect("b's new place");
    assert!(again > b_id);
    s.check_counts();
}

#[test]
fn a_cache_of_the_second_layout_gets_its_places_once() {
    use redb::TableDefinition;
    const PLACES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("places_v2");
    const HEADER: TableDefinition<&str, u64> = TableDefinition::new("header");
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        for k in ["a", "b"] {
            let h = s.register(&file(k, 4), 4).unwrap();
            put(&h, 0, 1);
        }
    }
    // What layout 2 left: no places.
    {
        let db = redb::Database::create(dir.path().join("index.redb")).unwrap();
        let w = db.begin_write().unwrap();
        assert!(w.delete_table(PLACES).unwrap());
        w.open_table(HEADER).unwrap().insert("layout", 2).unwrap();
        w.commit().unwrap();
    }
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    let (a, b) = (file("a", 4).uri, file("b", 4).uri);
    let placed = s.index.load_places(&[(&a, "a"), (&b, "b")]).unwrap();
    assert!(placed.iter().all(Option::is_some), "{placed:?}");
    s.check_counts();
    drop(s);
    // Once: the next start finds this version's layout.
    assert_eq!(layout_of(dir.path()), Some(6));
}

#[test]
fn a_cache_of_the_fourth_layout_keeps_its_json_records_until_they_are_written() {
    use redb::TableDefinition;
    const FILES: TableDefinition<&str, &[u8]> = TableDefinition::new("files");
    const HEADER: TableDefinition<&str, u64> = TableDefinition::new("header");
    let dir = tempfile::tempdir().unwrap();
    let json = {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        for (k, byte) in [("a", 1), ("b", 2)] {
            let h = s.register(&file(k, 4), 4).unwrap();
            put(&h, 0, byte);
            h.mark_verified();
        }
        s.flush();
        let (rec, _) = s.index.load("a").unwrap().unwrap();
        // As layout 4 wrote records: JSON, without the chunk's CRC.
        serde_json::to_vec(&FileRecord { crc: None, ..rec }).unwrap()
    };
    let stored = |key: &str| {
        let db = redb::Database::create(dir.path().join("index.redb")).unwrap();
        let r = db.begin_read().unwrap();
        let v = r.open_table(FILES).unwrap().get(key).unwrap().unwrap();
        v.value().to_vec()
    };
    let binary = stored("b");
    assert_eq!(binary[0], 1, "this layout writes records in binary");
    assert!(
        binary.len() * 2 < json.len(),
        "{} vs {} bytes",
        binary.len(),
        json.len()
    );
    {
        let db = redb::Database::create(dir.path().join("index.redb")).unwrap();
        let w = db.begin_write().unwrap();
        w.open_table(FILES)
            .unwrap()
            .insert("a", json.as_slice())
            .unwrap();
        w.open_table(HEADER).unwrap().insert("layout", 4).unwrap();
        w.commit().unwrap();
    }
    {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        s.check_counts();
        for (k, byte) in [("a", 1u8), ("b", 2)] {
            let h = s.register(&file(k, 4), 4).unwrap();
            assert!(matches!(
                h.check_chunk(0, SINCE_START).unwrap(),
                ChunkCheck::Checked(b) if b[..] == [byte; 4][..]
            ));
        }
        s.flush();
        assert_eq!(s.index.raw_record("a"), Some(json), "not rewritten at open");
        // Written again (a pin): now binary, with its CRC.
        s.register(&file("a", 4), 4).unwrap().set_pinned(true);
        s.flush();
        let (rec, crcs) = s.index.load("a").unwrap().unwrap();
        assert_eq!(
            (rec.pinned, rec.crc, crcs.len()),
            (true, Some(crc32c::crc32c(&[1; 4])), 1)
        );
        s.check_counts();
    }
    assert_eq!(stored("a")[0], 1);
    assert_eq!(layout_of(dir.path()), Some(6));
}

#[test]
fn a_cache_of_the_fifth_layout_keeps_its_places_and_a_new_one_has_its_crc() {
    const HEADER: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("header");
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (file("a", 4), file("b", 4));
    {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        let h = s.register(&a, 4).unwrap();
        put(&h, 0, 1);
        h.mark_verified();
        s.flush();
        // As layout 5 left it: places without CRCs.
        s.index.places_as_layout_5();
        assert_eq!(s.index.place_crc(&a.uri, "a"), None);
    }
    {
        let db = redb::Database::create(dir.path().join("index.redb")).unwrap();
        let w = db.begin_write().unwrap();
        w.open_table(HEADER).unwrap().insert("layout", 5).unwrap();
        w.commit().unwrap();
    }
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    // Taken as it is (no walk at open): the place still says where the file is, and its CRC
    // comes from the chunks.
    assert_eq!(s.index.place_crc(&a.uri, "a"), None);
    let held = s.holdings(&[(a.uri.as_str(), "a")]).remove(0);
    let crc = crc32c::crc32c(&[1; 4]);
    assert_eq!(held.complete.map(|c| c.2), Some(vec![crc]));
    // A file cached now has its CRC in its place.
    let h = s.register(&b, 4).unwrap();
    put(&h, 0, 2);
    h.mark_verified();
    s.flush();
    assert_eq!(
        s.index.place_crc(&b.uri, "b"),
        Some(crc32c::crc32c(&[2; 4]))
    );
    s.check_counts();
    drop((h, s));
    assert_eq!(layout_of(dir.path()), Some(6));
}

fn layout_of(dir: &std::path::Path) -> Option<u64> {
    const HEADER: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("header");
    let db = redb::Database::create(dir.join("index.redb")).unwrap();
    let r = db.begin_read().unwrap();
    let layout = r
        .open_table(HEADER)
        .unwrap()
        .get("layout")
        .unwrap()
        .map(|g| g.value());
    layout
}

#[test]
fn a_cache_of_the_third_layout_has_its_places_made_compact_once() {
    use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
    const FILES: TableDefinition<&str, &[u8]> = TableDefinition::new("files");
    const PLACES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("places_v2");
    const PLACES_V1: TableDefinition<&str, &[u8]> = TableDefinition::new("places");
    const HEADER: TableDefinition<&str, u64> = TableDefinition::new("header");
    let dir = tempfile::tempdir().unwrap();
    let names = ["a", "b", "c"];
    // A digest's key (kept compactly now) in another folder.
    let digest = RemoteFile {
        uri: "hf://o/n@x/sub/d.bin".into(),
        path: "sub/d.bin".into(),
        key: format!("sha256:{}:4", "5e".repeat(32)),
        ..file("d", 4)
    };
    {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        for (i, k) in names.iter().enumerate() {
            let h = s.register(&file(k, 4), 4).unwrap();
            put(&h, 0, 1);
            if i == 1 {
                h.mark_verified();
            }
        }
        put(&s.register(&digest, 4).unwrap(), 0, 2);
    }
    // What layout 3 left: places by the whole URI, little-endian numbers, the key as text.
    {
        let db = redb::Database::create(dir.path().join("index.redb")).unwrap();
        let w = db.begin_write().unwrap();
        {
            let files = w.open_table(FILES).unwrap();
            let mut old = w.open_table(PLACES_V1).unwrap();
            for row in files.iter().unwrap() {
                let (key, v) = row.unwrap();
                let rec = index::decode(v.value()).unwrap();
                let mut place = Vec::new();
                for n in [rec.id, rec.size, rec.chunk_size] {
                    place.extend_from_slice(&n.to_le_bytes());
                }
                place.push(rec.verified as u8);
                place.extend_from_slice(key.value().as_bytes());
                old.insert(rec.uri.as_str(), place.as_slice()).unwrap();
            }
            // A row that is no place (cut short): skipped, not carried over.
            old.insert("hf://o/n@x/cut", &[1u8, 2, 3][..]).unwrap();
            assert_eq!(old.len().unwrap(), 5);
        }
        assert!(w.delete_table(PLACES).unwrap());
        w.open_table(HEADER).unwrap().insert("layout", 3).unwrap();
        w.commit().unwrap();
    }
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    let uris: Vec<String> = names.iter().map(|n| file(n, 4).uri).collect();
    let mut asked: Vec<(&str, &str)> = uris
        .iter()
        .zip(names)
        .map(|(u, n)| (u.as_str(), n))
        .collect();
    asked.push((&digest.uri, &digest.key));
    let placed = s.index.load_places(&asked).unwrap();
    assert!(placed.iter().all(Option::is_some), "{placed:?}");
    let verified: Vec<bool> = placed
        .iter()
        .map(|p| p.as_ref().unwrap().0.verified)
        .collect();
    assert_eq!(
        verified,
        [false, true, false, false],
        "the places' fields came across"
    );
    // Asked with another key at the same URI: not taken.
    let other = format!("sha256:{}:4", "5f".repeat(32));
    let placed = s.index.load_places(&[(&digest.uri, &other)]).unwrap();
    assert!(placed[0].is_none(), "{placed:?}");
    // Checks too that every place names its record, and that the old table is gone.
    s.check_counts();
    drop(s);
    assert_eq!(layout_of(dir.path()), Some(6));
    // An older version opening the cache (and refusing its layout) leaves an empty table of
    // its own places: the next start drops it.
    {
        let db = redb::Database::create(dir.path().join("index.redb")).unwrap();
        let w = db.begin_write().unwrap();
        w.open_table(PLACES_V1).unwrap();
        w.commit().unwrap();
    }
    Store::open(dir.path(), 1 << 20).unwrap().check_counts();
}

#[test]
fn holdings_answer_from_memory_and_the_index_alike_without_loading_files() {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..12).map(|i| format!("f{i}")).collect();
    let asked: Vec<String> = names
        .iter()
        .map(String::as_str)
        .chain(["none"])
        .map(|n| file(n, 8).uri)
        .collect();
    let uris = &asked;
    let want = |s: &Arc<Store>| -> Vec<(f64, bool)> {
        let asked: Vec<(&str, &str)> = uris.iter().map(|u| (u.as_str(), &u[11..])).collect();
        s.holdings(&asked)
            .into_iter()
            .map(|h| (h.fraction, h.complete.is_some()))
            .collect()
    };
    let before;
    {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        for (i, n) in names.iter().enumerate() {
            let h = s.register(&file(n, 8), 4).unwrap();
            put(&h, 0, 1);
            if i % 3 == 0 {
                put(&h, 1, 2);
            }
            if i % 6 == 0 {
                h.mark_verified();
            }
        }
        s.flush();
        before = want(&s);
        let h = s.holdings(&[(uris[0].as_str(), "f0")]);
        let (path, chunk_size, crcs) = h[0].complete.clone().unwrap();
        assert_eq!((path, chunk_size, crcs), {
            let (p, _, cs, c) = s.complete_file("f0").unwrap();
            (p, cs, c)
        });
    }
    let expected: Vec<(f64, bool)> = (0..12)
        .map(|i| (if i % 3 == 0 { 1.0 } else { 0.5 }, i % 6 == 0))
        .chain([(0.0, false)])
        .collect();
    assert_eq!(before, expected, "answered from memory");
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(want(&s), expected, "answered from the index");
    assert_eq!(
        s.resident_files(),
        0,
        "a listing's look brings no file into memory"
    );
}

#[test]
fn a_small_files_place_keeps_its_crc_while_its_chunk_is_there_and_no_longer() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (file("a", 4), file("b", 4));
    let crc = |byte: u8| crc32c::crc32c(&[byte; 4]);
    let from_index = |key: &str| {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        let uri = file(key, 4).uri;
        let held = s.holdings(&[(uri.as_str(), key)]).remove(0);
        (s.index.place_crc(&uri, key), held.complete.map(|c| c.2))
    };
    {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        let h = s.register(&a, 4).unwrap();
        put(&h, 0, 1);
        h.mark_verified();
        // Recorded verified before its chunk came: the place takes the CRC when the record does.
        let g = s.register(&b, 4).unwrap();
        g.mark_verified();
        put(&g, 0, 5);
        g.mark_verified();
        s.flush();
        assert_eq!(s.index.place_crc(&a.uri, "a"), Some(crc(1)));
        assert_eq!(s.index.place_crc(&b.uri, "b"), Some(crc(5)));
        s.check_counts();
        // The chunk dropped (found rotten): its CRC leaves the place with it; fetched again
        // and verified, the new one comes.
        h.drop_chunk(0);
        s.flush();
        assert_eq!(s.index.place_crc(&a.uri, "a"), None);
        put(&h, 0, 2);
        h.mark_verified();
        s.flush();
        assert_eq!(s.index.place_crc(&a.uri, "a"), Some(crc(2)));
        // Other bytes written over the chunk (its reservation kept): the old CRC leaves the
        // place in the same commit as the chunk, with the record unchanged.
        h.write_vectored_at(&[&[3; 4]], 0).unwrap();
        h.commit_chunk(0, crc(3));
        s.flush();
        s.check_counts();
    }
    assert_eq!(from_index("a"), (None, Some(vec![crc(3)])));
    assert_eq!(from_index("b"), (Some(crc(5)), Some(vec![crc(5)])));
}

#[test]
fn a_failed_commit_is_tried_again_and_an_unrecorded_id_mark_refuses_new_files() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        // The first file needs an id mark: while the index cannot record it, new files are
        // refused (their data files could outlive a crash unnoticed).
        s.index.fail_commits(u64::MAX);
        assert!(matches!(
            s.register(&file("f0", 4), 4).err(),
            Some(StoreError::Index(_))
        ));
        s.index.fail_commits(0);
        let h = s.register(&file("f0", 4), 4).unwrap();
        put(&h, 0, 0);
        drop(h);
        assert!(s.index.flush());
        // Two commits fail (a full disk): the ops wait for the next commit.
        s.index.fail_commits(2);
        for i in 1..3 {
            let h = s.register(&file(&format!("f{i}"), 4), 4).unwrap();
            put(&h, 0, i as u8);
        }
        assert!(
            (0..5).any(|_| s.index.flush()),
            "a later commit records them"
        );
        s.check_counts();
    }
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    for i in 0..3 {
        assert_eq!(s.cached_fraction(&format!("f{i}")), 1.0, "f{i}");
    }
    assert_eq!(s.stats().files, 3);
    s.check_counts();
}

/// A full disk fails index commits too, so the files written since the last commit that
/// worked are not in the index's eviction order: they still go, from memory, so that their
/// room comes back (else nothing fits again: the commit needs room that only eviction frees).
#[test]
fn files_the_index_could_not_record_are_still_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), 12).unwrap();
    let h = s.register(&file("f0", 4), 4).unwrap();
    put(&h, 0, 0);
    drop(h);
    // Registered now: a new file needs an id mark, which a failing index cannot record.
    let f4 = s.register(&file("f4", 8), 4).unwrap();
    assert!(s.index.flush());
    s.index.fail_commits(u64::MAX);
    let mut paths = Vec::new();
    for i in 1..3 {
        let h = s.register(&file(&format!("f{i}"), 4), 4).unwrap();
        put(&h, 0, i as u8);
        paths.push(h.path().to_path_buf());
    }
    assert_eq!(s.stats().used, 12);
    // f4 needs room: f0 (in the order) is not enough for two chunks, f1 (only in memory) goes.
    put(&f4, 0, 4);
    put(&f4, 1, 4);
    assert_eq!(s.cached_fraction("f0"), 0.0);
    assert_eq!(s.cached_fraction("f1"), 0.0);
    assert_eq!(s.cached_fraction("f2"), 1.0);
    assert_eq!(s.cached_fraction("f4"), 1.0);
    // Unlinked although the commit failed: that is the room a full disk gets back.
    assert!(!s.index.flush());
    assert!(!paths[0].exists(), "f1's data file is unlinked");
    assert!(paths[1].exists());
    s.index.fail_commits(0);
    assert!((0..5).any(|_| s.index.flush()), "a later commit records it");
    s.check_counts();
    // A reader that finds the index closed for a reopen waits for it rather than failing.
    s.index.close();
    let (rec, crcs) = s.index.load("f2").unwrap().expect("f2 is recorded");
    assert_eq!((rec.size, crcs.len()), (4, 1));
}

/// A store closed while its disk fails every commit (full) still closes: the writer tries the
/// last ops a few times, then leaves them to the next start's repair, rather than spin.
#[test]
fn a_store_closes_even_when_no_commit_can_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    let h = s.register(&file("f0", 4), 4).unwrap();
    put(&h, 0, 1);
    drop(h);
    assert!(s.index.flush());
    s.index.fail_commits(u64::MAX);
    let h = s.register(&file("f1", 4), 4).unwrap();
    put(&h, 0, 2);
    drop(h);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(s);
        let _ = tx.send(());
    });
    assert!(
        rx.recv_timeout(std::time::Duration::from_secs(20)).is_ok(),
        "the store never closed"
    );
    // What was committed is there; the rest was never recorded.
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(s.cached_fraction("f0"), 1.0);
    s.check_counts();
}

/// Where `a_start_after_a_crash_does_not_walk_the_index` has its child process crash.
const CRASH_DIR: &str = "LOCUS_STORE_CRASH_DIR";

/// The child of `a_start_after_a_crash_does_not_walk_the_index`: records files, then dies
/// without closing the index (only with `CRASH_DIR` set; a no-op in a plain run).
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CRASH_DIR) else {
        return;
    };
    let s = Store::open(Path::new(&dir), 1 << 20).unwrap();
    for i in 0..20 {
        let h = s.register(&file(&format!("f{i}"), 4), 4).unwrap();
        put(&h, 0, i as u8);
    }
    s.flush();
    std::process::abort();
}

/// Every commit saves redb's allocator state (quick repair), so a start after a crash reads
/// no more of the index than a clean one: 55 ms instead of 11.2 s at 10M files (see
/// docs/benchmarks.md). A process that dies with the index open leaves it for this one.
#[test]
fn a_start_after_a_crash_does_not_walk_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "tests::crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_DIR, dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "the child was to crash");
    let before = full_repairs();
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(full_repairs(), before, "the index was walked in full");
    assert_eq!(
        s.stats().files,
        20,
        "what was recorded before the crash is there"
    );
    for i in 0..20 {
        assert_eq!(s.cached_fraction(&format!("f{i}")), 1.0);
    }
}

/// Every file under `dir` and its bytes.
fn files_and_bytes(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn an_index_of_a_newer_layout_stops_the_store_and_nothing_is_written() {
    use redb::TableDefinition;
    const HEADER: TableDefinition<&str, u64> = TableDefinition::new("header");
    const PLACES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("places_v2");
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        let h = s.register(&file("a", 4), 4).unwrap();
        put(&h, 0, 1);
    }
    // A newer version's index: a later layout, without a table this version would make.
    {
        let db = redb::Database::create(dir.path().join("index.redb")).unwrap();
        let w = db.begin_write().unwrap();
        assert!(w.delete_table(PLACES).unwrap());
        w.open_table(HEADER).unwrap().insert("layout", 99).unwrap();
        w.commit().unwrap();
    }
    let before = files_and_bytes(dir.path());
    match Store::open(dir.path(), 1 << 20) {
        Err(StoreError::IndexUnusable { detail, .. }) => {
            assert!(detail.contains("newer"), "{detail}")
        }
        Err(e) => panic!("a newer layout must be refused as such, got {e}"),
        Ok(_) => panic!("a newer layout must not be opened"),
    }
    assert_eq!(
        files_and_bytes(dir.path()),
        before,
        "nothing in the cache changed"
    );
    assert_eq!(layout_of(dir.path()), Some(99));
}

/// The eviction order is that of the last access, not of the writes: a file read again (past
/// the order's 5 s grain) outlives one written after it.
#[test]
fn eviction_follows_the_last_access_not_the_write_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), 10).unwrap();
    for (k, byte) in [("a", 1), ("b", 2)] {
        let h = s.register(&file(k, 4), 4).unwrap();
        put(&h, 0, byte);
    }
    std::thread::sleep(std::time::Duration::from_millis(5_200));
    s.register(&file("a", 4), 4).unwrap().touch();
    s.flush();
    let c = s.register(&file("c", 4), 4).unwrap();
    put(&c, 0, 3); // needs room: b (written after a, but not read since) goes
    assert_eq!(s.cached_fraction("a"), 1.0, "a was read last");
    assert_eq!(s.cached_fraction("b"), 0.0);
}
