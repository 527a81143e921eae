//! The redb index and its single writer thread (group commit).

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread::JoinHandle;

use locus_core::Digest;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::StoreError;

/// Key → JSON [`FileRecord`].
const FILES: TableDefinition<&str, &[u8]> = TableDefinition::new("files");
/// (file id, chunk index) → CRC32C.
const CHUNKS: TableDefinition<(u64, u32), u32> = TableDefinition::new("chunks");
/// Cached metadata (listings at immutable revisions, resolved branches): key → the entry's
/// sequence number (8 bytes, big-endian), then its value.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta_v2");
/// Sequence number → metadata key, oldest first: what goes when there are too many.
const META_ORDER: TableDefinition<u64, &str> = TableDefinition::new("meta_order");
/// The table of an older layout (values without sequence numbers), dropped at open.
const META_V1: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Metadata entries kept at most; the oldest written go first (they are fetched again).
const MAX_META: u64 = if cfg!(test) { 100 } else { 20_000 };

/// What the index keeps about a file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct FileRecord {
    pub id: u64,
    pub size: u64,
    pub chunk_size: u64,
    pub uri: String,
    pub digest: Option<Digest>,
    pub pinned: bool,
    pub verified: bool,
    pub last_access: u64,
}

pub(crate) enum Op {
    PutFile {
        key: String,
        rec: FileRecord,
    },
    RemoveFile {
        key: String,
        id: u64,
        /// Data file to unlink once the removal is durable.
        unlink: Option<PathBuf>,
    },
    SetChunk {
        id: u64,
        idx: u32,
        crc: u32,
    },
    DropChunk {
        id: u64,
        idx: u32,
    },
    PutMeta {
        key: String,
        value: Vec<u8>,
    },
    Flush(mpsc::Sender<()>),
}

pub(crate) type Loaded = Vec<(String, FileRecord, Vec<(u32, u32)>)>;

/// The database, `None` while it cannot be opened again after an I/O error.
type Slot = std::sync::Arc<std::sync::RwLock<Option<std::sync::Arc<Database>>>>;

pub(crate) struct Index {
    db: Slot,
    tx: Mutex<Option<mpsc::Sender<Op>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Whether redb's refusal to open proves the file's bytes wrong (as opposed to an index it
/// cannot use right now: permissions, I/O, a lock, a format upgrade).
fn proven_corrupt(e: &redb::DatabaseError) -> bool {
    match e {
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(_)) => true,
        // Not redb's magic number (InvalidData), or a file cut short inside its header or a
        // region the header names.
        redb::DatabaseError::Storage(redb::StorageError::Io(io)) => matches!(
            io.kind(),
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

fn idx_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Index(e.to_string())
}

impl Index {
    pub fn open(path: &Path) -> Result<(Index, Loaded), StoreError> {
        let db = match Database::create(path) {
            Ok(db) => db,
            Err(e) if proven_corrupt(&e) => {
                // Only an index whose bytes are proven wrong is moved aside; the data files it
                // described are then unknown and removed (refetched as needed): nothing is
                // ever served unchecked from a cache whose records were lost.
                tracing::error!(path = %path.display(), error = %e, "cache index corrupt; setting it aside and starting an empty one");
                let aside = path.with_extension("redb.broken");
                std::fs::rename(path, &aside).map_err(idx_err)?;
                Database::create(path).map_err(idx_err)?
            }
            // Permissions, a read-only or failing disk, a lock held, a newer format: the
            // index may be fine; changing anything could destroy a good cache.
            Err(e) => {
                return Err(StoreError::IndexUnusable {
                    path: path.display().to_string(),
                    detail: e.to_string(),
                })
            }
        };
        let w = db.begin_write().map_err(idx_err)?;
        {
            w.open_table(FILES).map_err(idx_err)?;
            w.open_table(CHUNKS).map_err(idx_err)?;
            w.open_table(META).map_err(idx_err)?;
            w.open_table(META_ORDER).map_err(idx_err)?;
            let _ = w.delete_table(META_V1);
        }
        w.commit().map_err(idx_err)?;

        let mut loaded = Vec::new();
        {
            let r = db.begin_read().map_err(idx_err)?;
            let files = r.open_table(FILES).map_err(idx_err)?;
            let chunks = r.open_table(CHUNKS).map_err(idx_err)?;
            for item in files.iter().map_err(idx_err)? {
                let (k, v) = item.map_err(idx_err)?;
                let Ok(rec) = serde_json::from_slice::<FileRecord>(v.value()) else {
                    tracing::warn!(key = k.value(), "unreadable cache record skipped");
                    continue;
                };
                let mut crcs = Vec::new();
                for c in chunks
                    .range((rec.id, 0)..=(rec.id, u32::MAX))
                    .map_err(idx_err)?
                {
                    let (ck, cv) = c.map_err(idx_err)?;
                    crcs.push((ck.value().1, cv.value()));
                }
                loaded.push((k.value().to_string(), rec, crcs));
            }
        }
        let db: Slot = std::sync::Arc::new(std::sync::RwLock::new(Some(std::sync::Arc::new(db))));
        let (tx, rx) = mpsc::channel();
        let wdb = db.clone();
        let wpath = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("locus-index".into())
            .spawn(move || writer(wdb, wpath, rx))
            .map_err(idx_err)?;
        Ok((
            Index {
                db,
                tx: Mutex::new(Some(tx)),
                thread: Mutex::new(Some(thread)),
            },
            loaded,
        ))
    }

    pub fn send(&self, op: Op) {
        let guard = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = guard.as_ref() {
            let _ = tx.send(op);
        }
    }

    /// Waits until everything sent before is committed.
    pub fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        self.send(Op::Flush(tx));
        let _ = rx.recv();
    }

    pub fn meta_get(&self, key: &str) -> Option<Vec<u8>> {
        let db = self.db.read().unwrap_or_else(|p| p.into_inner()).clone()?;
        let r = db.begin_read().ok()?;
        let t = r.open_table(META).ok()?;
        let v = t.get(key).ok()??;
        v.value().get(8..).map(|b| b.to_vec())
    }
}

impl Drop for Index {
    fn drop(&mut self) {
        // Closing the channel ends the writer after it commits what is queued.
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// Opens the database again: redb refuses every transaction after an I/O error (a full disk,
/// say) until it is reopened. While a reader still holds the old one the file stays locked and
/// this fails; the next commit tries again.
fn reopen(slot: &Slot, path: &Path) {
    let mut g = slot.write().unwrap_or_else(|p| p.into_inner());
    g.take();
    match Database::create(path) {
        Ok(db) => {
            tracing::info!(path = %path.display(), "cache index reopened");
            *g = Some(std::sync::Arc::new(db));
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cache index cannot be reopened yet")
        }
    }
}

/// Stores a metadata entry as the newest, and drops the oldest while there are too many.
#[allow(clippy::result_large_err)]
fn put_meta(
    meta: &mut redb::Table<&str, &[u8]>,
    order: &mut redb::Table<u64, &str>,
    key: &str,
    value: &[u8],
) -> Result<(), redb::Error> {
    let seq_of = |v: &[u8]| {
        v.get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
    };
    if let Some(old) = meta.get(key)?.and_then(|v| seq_of(v.value())) {
        order.remove(old)?;
    }
    let seq = order.last()?.map_or(0, |(k, _)| k.value() + 1);
    let mut v = Vec::with_capacity(8 + value.len());
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(value);
    meta.insert(key, v.as_slice())?;
    order.insert(seq, key)?;
    while order.len()? > MAX_META {
        let Some((_, k)) = order.pop_first()? else {
            break;
        };
        meta.remove(k.value())?;
    }
    Ok(())
}

fn writer(slot: Slot, path: PathBuf, rx: mpsc::Receiver<Op>) {
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        while let Ok(op) = rx.try_recv() {
            ops.push(op);
        }
        // Taken out first: a full disk must get its room back and waiters must wake even when
        // the transaction cannot begin (redb refuses every transaction after an I/O error).
        let mut unlinks = Vec::new();
        let mut waiters = Vec::new();
        let ops: Vec<Op> = ops
            .into_iter()
            .filter_map(|op| match op {
                Op::Flush(tx) => {
                    waiters.push(tx);
                    None
                }
                Op::RemoveFile { key, id, unlink } => {
                    unlinks.extend(unlink);
                    Some(Op::RemoveFile {
                        key,
                        id,
                        unlink: None,
                    })
                }
                op => Some(op),
            })
            .collect();
        if slot.read().unwrap_or_else(|p| p.into_inner()).is_none() {
            reopen(&slot, &path);
        }
        let db = slot.read().unwrap_or_else(|p| p.into_inner()).clone();
        // redb's error is large; it is built at most once per commit, off the hot path.
        #[allow(clippy::result_large_err)]
        let result = (|| -> Result<(), redb::Error> {
            let Some(db) = db.as_ref() else {
                return Err(redb::Error::PreviousIo);
            };
            let w = db.begin_write()?;
            {
                let mut files = w.open_table(FILES)?;
                let mut chunks = w.open_table(CHUNKS)?;
                let mut meta = w.open_table(META)?;
                let mut order = w.open_table(META_ORDER)?;
                for op in ops {
                    match op {
                        Op::PutFile { key, rec } => {
                            let v = serde_json::to_vec(&rec).unwrap_or_default();
                            files.insert(key.as_str(), v.as_slice())?;
                        }
                        Op::RemoveFile { key, id, .. } => {
                            // Only remove the record if it still names this id (the key may
                            // have been registered again since).
                            let same = files
                                .get(key.as_str())?
                                .and_then(|v| serde_json::from_slice::<FileRecord>(v.value()).ok())
                                .is_some_and(|r| r.id == id);
                            if same {
                                files.remove(key.as_str())?;
                            }
                            // The chunks it holds, not every chunk its size allows.
                            chunks.retain_in((id, 0)..=(id, u32::MAX), |_, _| false)?;
                        }
                        Op::SetChunk { id, idx, crc } => {
                            chunks.insert((id, idx), crc)?;
                        }
                        Op::DropChunk { id, idx } => {
                            chunks.remove((id, idx))?;
                        }
                        Op::PutMeta { key, value } => {
                            put_meta(&mut meta, &mut order, &key, &value)?
                        }
                        Op::Flush(_) => {}
                    }
                }
            }
            w.commit()?;
            Ok(())
        })();
        if let Err(e) = result {
            // Memory stays ahead of the index; a restart refetches what was not recorded.
            tracing::error!(error = %e, "cache index commit failed");
            drop(db);
            reopen(&slot, &path);
        }
        // Unlink even if the commit failed (a full disk must still get its room back): an
        // index entry whose data file is gone is dropped at the next start.
        for p in unlinks {
            if let Err(e) = std::fs::remove_file(&p) {
                tracing::warn!(file = %p.display(), error = %e, "could not unlink evicted data file");
            }
        }
        for w in waiters {
            let _ = w.send(());
        }
    }
}
