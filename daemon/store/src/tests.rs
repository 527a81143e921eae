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
    std::fs::OpenOptions::new()
        .write(true)
        .open(h.path())
        .unwrap()
        .write_all_at(&[9], 1)
        .unwrap();
    assert!(matches!(
        h.check_chunk(0, std::time::Duration::ZERO).unwrap(),
        ChunkCheck::Dropped
    ));
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
fn unknown_data_files_and_dangling_entries_are_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let path;
    {
        let s = Store::open(dir.path(), 100).unwrap();
        let h = s.register(&file("a", 4), 4).unwrap();
        put(&h, 0, 1);
        path = h.path().to_path_buf();
        s.flush();
    }
    std::fs::write(dir.path().join("data").join("999"), b"junk").unwrap();
    std::fs::remove_file(&path).unwrap();
    let s = Store::open(dir.path(), 100).unwrap();
    assert!(!dir.path().join("data").join("999").exists());
    assert_eq!(s.cached_fraction("a"), 0.0);
    assert_eq!(s.stats().used, 0);
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
