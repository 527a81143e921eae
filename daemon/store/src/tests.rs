use super::*;

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
    h.write_at(&data, h.layout().range(idx).start).unwrap();
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
    let mut buf = Vec::new();
    assert!(h.read_chunk_verified(2, &mut buf).unwrap());
    assert_eq!(buf, vec![3, 3]);
    // Corrupt chunk 0 on disk: it fails its check and is dropped, never served.
    std::fs::OpenOptions::new()
        .write(true)
        .open(h.path())
        .unwrap()
        .write_all_at(&[9], 1)
        .unwrap();
    assert!(!h.read_chunk_verified(0, &mut buf).unwrap());
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
