//! The redb index and its single writer thread (group commit).
//!
//! The index, not memory, is the record of what the cache holds: memory keeps only the files in
//! use or used lately (see the store's `State`). Everything that must be known without reading
//! every record is kept in tables of its own and updated in the same transaction as the records
//! it is derived from, so that after any crash the two agree:
//! - the eviction order (`LRU`, unpinned files by last access) and the pinned files (`PINNED`);
//! - the totals (`HEADER`: bytes of stored chunks, files, pins, pinned bytes);
//! - the repos and buckets held (`NAMESPACES`, with their file counts);
//! - what a crash can have left on disk: the highest id whose record was committed and the mark
//!   below which ids may have been handed out (`HEADER`), and the data files whose removal is
//!   committed but that may not be unlinked yet (`GARBAGE`).
//!
//! So a start reads a handful of rows, not the index, and repairs what the index says a crash
//! can have left, without walking the data files.

use std::collections::HashMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use locus_core::{ChunkLayout, Digest};
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::{MetaValue, StoreError};

/// Key → [`FileRecord`] (binary; JSON in records an older layout wrote).
const FILES: TableDefinition<&str, &[u8]> = TableDefinition::new("files");
/// (file id, chunk index) → CRC32C.
const CHUNKS: TableDefinition<(u64, u32), u32> = TableDefinition::new("chunks");
/// (last access, file id) → key of every unpinned file: eviction walks it from the front.
const LRU: TableDefinition<(u64, u64), &str> = TableDefinition::new("lru");
/// Ids of pinned files.
const PINNED: TableDefinition<u64, ()> = TableDefinition::new("pinned");
/// Repo or bucket (`hf://ORG/NAME`, `s3://BUCKET`) → files cached from it.
const NAMESPACES: TableDefinition<&str, u64> = TableDefinition::new("namespaces");
/// A file's URI ([`place_key`]: its folder's hash, then its name) → [`Place`]: the record of the
/// file cached from it, found by a range scan over a folder's files (the records by key are
/// scattered: a folder listing's look was a random page read per file on a cold disk).
const PLACES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("places_v2");
/// Layout 3's places, by the whole URI with the key as text (163 bytes a Hub file, twice what
/// [`PLACES`] keeps): converted once at open, then dropped.
const PLACES_V1: TableDefinition<&str, &[u8]> = TableDefinition::new("places");
/// Ids of data files whose removal is committed, until they are unlinked.
const GARBAGE: TableDefinition<u64, ()> = TableDefinition::new("garbage");
/// Named numbers: the totals, the id marks, the layout and access the cache was left with.
const HEADER: TableDefinition<&str, u64> = TableDefinition::new("header");
/// Cached metadata (listings at immutable revisions, resolved branches): key → the entry's
/// sequence number (8 bytes, big-endian), then its value.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta_v2");
/// The pieces of a metadata value longer than [`META_PIECE`]: (key, index) → bytes. redb gives a
/// value one page, its size rounded up to a power of two and held whole in memory until the
/// commit: a 10M-file listing (600 MB) took a 1 GiB page and the daemon peaked at 3.3 GiB. In
/// pieces it takes its own size, written out as redb's write cache fills.
const META_PIECES: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("meta_pieces");
/// Bytes a piece, at most: a page of 4 MiB with room for the key.
const META_PIECE: usize = (4 << 20) - 4096;
/// Set in a [`META`] entry's sequence number when its value is in [`META_PIECES`] (the entry then
/// holds the value's length, 8 bytes big-endian). Sequence numbers never reach it.
const PIECED: u64 = 1 << 63;
/// Sequence number → metadata key, oldest first: what goes when there are too many.
const META_ORDER: TableDefinition<u64, &str> = TableDefinition::new("meta_order");
/// The table of an older layout (values without sequence numbers), dropped at open.
const META_V1: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Metadata entries kept at most; the oldest written go first (they are fetched again).
const MAX_META: u64 = if cfg!(test) { 100 } else { 20_000 };

/// The layout this version writes: data files in folders by id, the tables above. Caches of
/// layout 1 (every data file in `data/`, no derived tables) are converted once at open; those
/// of layout 2 (no places) get their places once at open; those of layout 3 (`PLACES_V1`) have
/// their places made compact once at open; those of layout 4 (every record in JSON) keep their
/// records, each written in the binary form the next time it is written (no walk at open);
/// those of layout 5 (no CRC in a place) keep their places, each given its CRC the next time
/// it is written. Layout 6 is refused by versions before it: they would not remove a place
/// with a CRC (they cannot read its key), and it would outlive its file.
const LAYOUT: u64 = 6;

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
    /// The CRC of a one-chunk file's chunk, as `CHUNKS` holds it: a read of a small file then
    /// looks up one table, not two. Written by the index alone ([`Tables::encode`]), whatever
    /// the op carried; absent in records of older versions (their chunk is in `CHUNKS` too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc: Option<u32>,
}

impl FileRecord {
    fn layout(&self) -> ChunkLayout {
        ChunkLayout::new(self.size, self.chunk_size.max(1))
    }
}

/// The first byte of a record in its binary form (layout 5); one in JSON (layouts 1 to 4,
/// read until the record is written again) starts with `{`.
const RECORD_BINARY: u8 = 1;

impl FileRecord {
    /// The binary form, with the record's own CRC (tests write records by hand).
    #[cfg(test)]
    pub(crate) fn encode(&self) -> Vec<u8> {
        self.encode_with(self.crc)
    }

    /// The binary form: [`RECORD_BINARY`]; `id`, `size`, `chunk_size`, `last_access`
    /// (LEB128); a flags byte (pinned, verified, CRC follows, digest kind in bits 3-4); the CRC
    /// (4 bytes, little-endian); the digest's hex and the URI (each its length, then its bytes,
    /// and nothing after). About half
    /// the bytes of the JSON, so that more of a large index stays in the page cache.
    /// The index writes each record with `crc` as `CHUNKS` has it ([`Tables::encode`]),
    /// whatever the record in hand says.
    fn encode_with(&self, crc: Option<u32>) -> Vec<u8> {
        let digest = self.digest.as_ref().map(|d| match d {
            Digest::Sha256(h) => (1u8, h),
            Digest::GitBlobSha1(h) => (2, h),
        });
        let mut v = Vec::with_capacity(40 + self.uri.len() + digest.map_or(0, |d| d.1.len()));
        v.push(RECORD_BINARY);
        for n in [self.id, self.size, self.chunk_size, self.last_access] {
            put_varint(&mut v, n);
        }
        v.push(
            self.pinned as u8
                | (self.verified as u8) << 1
                | (crc.is_some() as u8) << 2
                | digest.map_or(0, |d| d.0) << 3,
        );
        if let Some(crc) = crc {
            v.extend_from_slice(&crc.to_le_bytes());
        }
        for text in digest.map(|d| d.1).into_iter().chain([&self.uri]) {
            put_varint(&mut v, text.len() as u64);
            v.extend_from_slice(text.as_bytes());
        }
        v
    }

    fn decode_binary(v: &[u8]) -> Option<FileRecord> {
        let mut at = 1;
        let mut n = [0u64; 4];
        for x in &mut n {
            *x = get_varint(v, &mut at)?;
        }
        let flags = *v.get(at)?;
        at += 1;
        let crc = match flags & 4 {
            0 => None,
            _ => Some(get_u32_le(v, &mut at)?),
        };
        fn text(v: &[u8], at: &mut usize, len: usize) -> Option<String> {
            let b = v.get(*at..at.checked_add(len)?)?;
            *at += len;
            String::from_utf8(b.to_vec()).ok()
        }
        let digest = match flags >> 3 {
            0 => None,
            kind @ (1 | 2) => {
                let len = usize::try_from(get_varint(v, &mut at)?).ok()?;
                let hex = text(v, &mut at, len)?;
                Some(match kind {
                    1 => Digest::Sha256(hex),
                    _ => Digest::GitBlobSha1(hex),
                })
            }
            _ => return None,
        };
        let len = usize::try_from(get_varint(v, &mut at)?).ok()?;
        let uri = text(v, &mut at, len)?;
        // A record is whole: bytes after its URI mean it is not one.
        if at != v.len() {
            return None;
        }
        Some(FileRecord {
            id: n[0],
            size: n[1],
            chunk_size: n[2],
            uri,
            digest,
            pinned: flags & 1 != 0,
            verified: flags & 2 != 0,
            last_access: n[3],
            crc,
        })
    }
}

/// A record in either form (`None`: unreadable).
pub(crate) fn decode(v: &[u8]) -> Option<FileRecord> {
    match *v.first()? {
        RECORD_BINARY => FileRecord::decode_binary(v),
        b'{' => serde_json::from_slice(v).ok(),
        _ => None,
    }
}

/// What a listing's look needs of a file's record, kept by its URI in `PLACES`: the fields
/// that change only when the record is written again (not at a read's LRU move).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Place {
    pub id: u64,
    pub size: u64,
    pub chunk_size: u64,
    pub verified: bool,
}

impl Place {
    pub fn of(rec: &FileRecord) -> Place {
        Place {
            id: rec.id,
            size: rec.size,
            chunk_size: rec.chunk_size,
            verified: rec.verified,
        }
    }

    /// `id`, `size`, `chunk_size` (LEB128), a flags byte (verified; a CRC follows), a one-chunk
    /// file's CRC as `CHUNKS` had it when the place was written (4 bytes, little-endian), then
    /// the key ([`encode_key`]). With the CRC, a listing's look at a folder of small files reads
    /// no `CHUNKS` rows. Versions before it read the flags as `verified` and the CRC as part of
    /// the key, which then names no file: they look the file up by key, never misread it.
    fn encode(&self, key: &str, crc: Option<u32>) -> Vec<u8> {
        let mut v = Vec::with_capacity(28 + key.len());
        put_varint(&mut v, self.id);
        put_varint(&mut v, self.size);
        put_varint(&mut v, self.chunk_size);
        v.push(self.verified as u8 | (crc.is_some() as u8) << 1);
        if let Some(crc) = crc {
            v.extend_from_slice(&crc.to_le_bytes());
        }
        encode_key(&mut v, key);
        v
    }

    /// The place, its one chunk's CRC if it has one, and its key as [`encode_key`] wrote it.
    fn decode(v: &[u8]) -> Option<(Place, Option<u32>, &[u8])> {
        let mut at = 0;
        let id = get_varint(v, &mut at)?;
        let size = get_varint(v, &mut at)?;
        let chunk_size = get_varint(v, &mut at)?;
        let flags = *v.get(at)?;
        at += 1;
        if flags > 3 {
            return None;
        }
        let crc = match flags & 2 {
            0 => None,
            _ => Some(get_u32_le(v, &mut at)?),
        };
        let place = Place {
            id,
            size,
            chunk_size,
            verified: flags & 1 != 0,
        };
        Some((place, crc, v.get(at..)?))
    }

    /// A place as layout 3 kept it: `id`, `size`, `chunk_size` (little-endian u64s),
    /// `verified` (a byte), then the key as text.
    fn decode_v1(v: &[u8]) -> Option<(Place, &str)> {
        let u = |i: usize| Some(u64::from_le_bytes(v.get(i..i + 8)?.try_into().ok()?));
        let place = Place {
            id: u(0)?,
            size: u(8)?,
            chunk_size: u(16)?,
            verified: *v.get(24)? != 0,
        };
        Some((place, std::str::from_utf8(v.get(25..)?).ok()?))
    }
}

/// Where a URI's place is kept: the 64-bit hash of its folder (all but its last segment), then
/// its name. A folder's files are neighbours, and its long URI (a Hub URI carries the commit) is
/// not kept once a file. Two folders whose hashes meet can share a slot; a place counts only
/// when it names the key a listing has, and a key names the bytes, so a shared slot costs a
/// lookup by key, never a wrong file.
fn place_key(uri: &str) -> Vec<u8> {
    let (folder, name) = split_uri(uri);
    key_in(&folder_hash(folder), name)
}

/// The place key of `name` in the folder whose hash is `hash`.
fn key_in(hash: &[u8; 8], name: &str) -> Vec<u8> {
    [&hash[..], name.as_bytes()].concat()
}

/// A URI's folder and name.
fn split_uri(uri: &str) -> (&str, &str) {
    uri.rsplit_once('/').unwrap_or(("", uri))
}

fn folder_hash(folder: &str) -> [u8; 8] {
    xxhash_rust::xxh3::xxh3_64(folder.as_bytes()).to_be_bytes()
}

/// Writes a cache key compactly where it is `SCHEME:HEX:SIZE` (every digest and identity key:
/// the hex as bytes, the size as LEB128), as its text otherwise. A key always encodes the same
/// way, and the two forms are told apart by their first byte, so keys compare as encodings.
fn encode_key(out: &mut Vec<u8>, key: &str) {
    match split_key(key) {
        Some((scheme, hex, size)) => {
            out.push(1);
            out.push(scheme.len() as u8);
            out.extend_from_slice(scheme.as_bytes());
            out.push((hex.len() / 2) as u8);
            let nibble = |b: u8| match b {
                b'0'..=b'9' => b - b'0',
                _ => b - b'a' + 10,
            };
            out.extend(
                hex.as_bytes()
                    .chunks(2)
                    .map(|p| nibble(p[0]) << 4 | nibble(p[1])),
            );
            put_varint(out, size);
        }
        None => {
            out.push(0);
            out.extend_from_slice(key.as_bytes());
        }
    }
}

/// The key [`encode_key`] wrote.
#[cfg(test)]
fn decode_key(b: &[u8]) -> Option<String> {
    match *b.first()? {
        0 => Some(std::str::from_utf8(&b[1..]).ok()?.to_string()),
        1 => {
            let n = *b.get(1)? as usize;
            let scheme = std::str::from_utf8(b.get(2..2 + n)?).ok()?;
            let m = *b.get(2 + n)? as usize;
            let bytes = b.get(3 + n..3 + n + m)?;
            let mut at = 3 + n + m;
            let size = get_varint(b, &mut at)?;
            let hex: String = bytes.iter().map(|x| format!("{x:02x}")).collect();
            Some(format!("{scheme}:{hex}:{size}"))
        }
        _ => None,
    }
}

/// `SCHEME:HEX:SIZE` where the compact form gives back the same text: a short alphanumeric
/// scheme, lowercase hex of whole bytes (at most 255 of them), a size without leading zeros.
fn split_key(key: &str) -> Option<(&str, &str, u64)> {
    let (scheme, rest) = key.split_once(':')?;
    let (hex, size) = rest.split_once(':')?;
    let scheme_ok = !scheme.is_empty()
        && scheme.len() <= 32
        && scheme.bytes().all(|b| b.is_ascii_alphanumeric());
    let hex_ok = !hex.is_empty()
        && hex.len() % 2 == 0
        && hex.len() <= 510
        && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    // Digits only, no leading zero (but "0"), and no overflow: the number prints as `size`.
    let canonical =
        size.bytes().all(|b| b.is_ascii_digit()) && (size == "0" || !size.starts_with('0'));
    let n: u64 = size.parse().ok()?;
    (scheme_ok && hex_ok && canonical).then_some((scheme, hex, n))
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A little-endian u32 at `at` (then past it).
fn get_u32_le(v: &[u8], at: &mut usize) -> Option<u32> {
    let b = v.get(*at..at.checked_add(4)?)?;
    *at += 4;
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

fn get_varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        n |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(n);
        }
    }
    None
}

/// The counts kept in `HEADER`, always those of the committed tables.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Totals {
    /// Bytes of stored chunks.
    pub used: u64,
    pub files: u64,
    pub pinned: u64,
    pub pinned_bytes: u64,
    /// The highest id whose record was committed (records are committed in id order).
    pub max_id: u64,
    /// Ids below it may have been handed out: data files of ids above `max_id` and below it are
    /// a crash's leftovers.
    pub id_mark: u64,
}

const TOTAL_NAMES: [&str; 6] = [
    "used",
    "files",
    "pinned",
    "pinned_bytes",
    "max_id",
    "id_mark",
];

impl Totals {
    fn read(h: &impl ReadableTable<&'static str, u64>) -> Result<Totals, redb::StorageError> {
        let mut v = [0u64; 6];
        for (slot, name) in v.iter_mut().zip(TOTAL_NAMES) {
            *slot = h.get(name)?.map_or(0, |g| g.value());
        }
        Ok(Totals {
            used: v[0],
            files: v[1],
            pinned: v[2],
            pinned_bytes: v[3],
            max_id: v[4],
            id_mark: v[5],
        })
    }

    fn write(&self, h: &mut redb::Table<&'static str, u64>) -> Result<(), redb::StorageError> {
        let v = [
            self.used,
            self.files,
            self.pinned,
            self.pinned_bytes,
            self.max_id,
            self.id_mark,
        ];
        for (val, name) in v.into_iter().zip(TOTAL_NAMES) {
            h.insert(name, val)?;
        }
        Ok(())
    }
}

/// The folder of the namespace view a file's URI puts it in: its Hub repo, or its bucket.
pub(crate) fn namespace_of(uri: &str) -> Option<String> {
    match locus_core::LocusUri::parse(uri).map(|u| u.namespace) {
        Ok(ns @ locus_core::Namespace::Hf { .. }) => Some(ns.to_string()),
        Ok(locus_core::Namespace::S3 { bucket, .. }) => Some(format!("s3://{bucket}")),
        _ => None,
    }
}

/// Where file `id`'s bytes live: `data/<id / 4096 in hex>/<id>`. No folder holds more than
/// 4,096 files, and files made one after the other share a folder: ext4 places a new file's
/// inode near its folder's, and spreading consecutive files over thousands of folders made each
/// creation search a new block group (measured: 0.5 ms a file against 40 µs).
pub(crate) fn data_path(data_dir: &Path, id: u64) -> PathBuf {
    data_dir
        .join(format!("{:x}", id / 4096))
        .join(id.to_string())
}

pub(crate) enum Op {
    PutFile {
        key: String,
        rec: FileRecord,
    },
    /// A `PutFile` that only moves the file in the eviction order (a read): it waits up to
    /// [`TOUCH_DELAY`] for other ops rather than cost a commit of its own.
    Touch {
        key: String,
        rec: FileRecord,
    },
    RemoveFile {
        key: String,
        id: u64,
        /// Its layout, for the bytes its chunks held.
        size: u64,
        chunk_size: u64,
        /// Data file to unlink once the removal is durable.
        unlink: Option<PathBuf>,
    },
    SetChunk {
        id: u64,
        idx: u32,
        crc: u32,
        len: u64,
    },
    DropChunk {
        /// The file's key: its record drops the chunk's CRC in the same op.
        key: String,
        id: u64,
        idx: u32,
        len: u64,
    },
    PutMeta {
        key: String,
        value: Arc<dyn MetaValue>,
    },
    /// Ids up to this one may be handed out.
    IdMark(u64),
    /// Sets a header value.
    Header(&'static str, u64),
    /// These data files were unlinked at start.
    Unlinked(Vec<u64>),
    /// Answered once everything sent before is committed (`true`) or failed to (`false`).
    Flush(mpsc::Sender<bool>),
}

/// How long reads' eviction-order updates wait for other ops: a scan of cached files costs a
/// commit (an fsync and redb's allocator state, which grows with the index) per this time,
/// not one per file read. A crash loses at most this much of the order, never a record.
const TOUCH_DELAY: std::time::Duration = std::time::Duration::from_secs(1);
/// How long other ops wait for company before their commit (a flush does not wait).
const GATHER: std::time::Duration = std::time::Duration::from_millis(20);
/// The longest ops wait for company, however long commits take: what a crash can lose of
/// the records not flushed (a start repairs their data files).
const MAX_GATHER: std::time::Duration = std::time::Duration::from_millis(200);
/// How often a writer holding only touches looks for company (any other op).
const POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// A file's committed record and its stored chunks (index, CRC).
pub(crate) type Stored = (FileRecord, Vec<(u32, u32)>);
/// A file's place and its stored chunks' (index, CRC32C).
pub(crate) type Placed = (Place, Vec<(u32, u32)>);

/// Counts: (used, files, pinned, pinned bytes).
#[cfg(test)]
pub(crate) type Four = (u64, u64, u64, u64);

/// The database, `None` while it cannot be opened again after an I/O error.
type Slot = Arc<std::sync::RwLock<Option<Arc<Database>>>>;

/// The sender and the sequence number of the last op sent through it.
type Sender = Mutex<Option<(mpsc::Sender<(u64, Op)>, u64)>>;

pub(crate) struct Index {
    db: Slot,
    tx: Sender,
    /// The sequence number of the last op the writer is done with (committed, or lost to a
    /// failed commit): memory may forget a file once its ops are done.
    done: Arc<AtomicU64>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Test hooks: stop committing (a crash), or commit without unlinking.
    #[cfg_attr(not(test), allow(dead_code))]
    halted: Arc<AtomicBool>,
    #[cfg_attr(not(test), allow(dead_code))]
    keep_garbage: Arc<AtomicBool>,
    /// Test hook: commits to fail (as on a full disk).
    #[cfg_attr(not(test), allow(dead_code))]
    fail_commits: Arc<AtomicU64>,
}

/// What a start needs to know, read from the header and the garbage list.
pub(crate) struct Opened {
    pub totals: Totals,
    /// The access the data files were last given (see `Store::open_with`), if any.
    pub access: Option<u64>,
    /// Data files whose removal was committed but that may still be on disk.
    pub garbage: Vec<u64>,
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

/// The tables a write transaction changes.
struct Tables<'t> {
    files: redb::Table<'t, &'static str, &'static [u8]>,
    chunks: redb::Table<'t, (u64, u32), u32>,
    lru: redb::Table<'t, (u64, u64), &'static str>,
    pinned: redb::Table<'t, u64, ()>,
    namespaces: redb::Table<'t, &'static str, u64>,
    places: redb::Table<'t, &'static [u8], &'static [u8]>,
    garbage: redb::Table<'t, u64, ()>,
    header: redb::Table<'t, &'static str, u64>,
    meta: redb::Table<'t, &'static str, &'static [u8]>,
    pieces: redb::Table<'t, (&'static str, u32), &'static [u8]>,
    order: redb::Table<'t, u64, &'static str>,
}

impl<'t> Tables<'t> {
    fn open(w: &'t redb::WriteTransaction) -> Result<Tables<'t>, redb::TableError> {
        Ok(Tables {
            files: w.open_table(FILES)?,
            chunks: w.open_table(CHUNKS)?,
            lru: w.open_table(LRU)?,
            pinned: w.open_table(PINNED)?,
            namespaces: w.open_table(NAMESPACES)?,
            places: w.open_table(PLACES)?,
            garbage: w.open_table(GARBAGE)?,
            header: w.open_table(HEADER)?,
            meta: w.open_table(META)?,
            pieces: w.open_table(META_PIECES)?,
            order: w.open_table(META_ORDER)?,
        })
    }

    /// Bytes of the chunks stored for `rec`.
    fn bytes_of(&self, rec: &FileRecord) -> Result<u64, redb::StorageError> {
        let layout = rec.layout();
        let mut n = 0;
        for c in self.chunks.range((rec.id, 0)..=(rec.id, u32::MAX))? {
            let idx = c?.0.value().1;
            if idx < layout.count() {
                n += layout.len(idx);
            }
        }
        Ok(n)
    }

    /// Counts `rec` (stored under `key`) in or out of the derived tables and totals.
    fn account(
        &mut self,
        tot: &mut Totals,
        key: &str,
        rec: &FileRecord,
        add: bool,
        place: bool,
    ) -> Result<(), redb::StorageError> {
        let step = |v: u64, by: u64| if add { v + by } else { v.saturating_sub(by) };
        tot.files = step(tot.files, 1);
        if place {
            self.place(key, rec, add)?;
        }
        if let Some(ns) = namespace_of(&rec.uri) {
            let n = step(
                self.namespaces.get(ns.as_str())?.map_or(0, |g| g.value()),
                1,
            );
            if n == 0 {
                self.namespaces.remove(ns.as_str())?;
            } else {
                self.namespaces.insert(ns.as_str(), n)?;
            }
        }
        if rec.pinned {
            let bytes = self.bytes_of(rec)?;
            tot.pinned = step(tot.pinned, 1);
            tot.pinned_bytes = step(tot.pinned_bytes, bytes);
            if add {
                self.pinned.insert(rec.id, ())?;
            } else {
                self.pinned.remove(rec.id)?;
            }
        } else if add {
            self.lru.insert((rec.last_access, rec.id), key)?;
        } else {
            self.lru.remove((rec.last_access, rec.id))?;
        }
        Ok(())
    }

    /// Puts `rec`'s place (`add`), or removes it where it still names `rec`'s file.
    fn place(&mut self, key: &str, rec: &FileRecord, add: bool) -> Result<(), redb::StorageError> {
        if rec.uri.is_empty() {
            return Ok(());
        }
        if add {
            let crc = self.one_crc(rec)?;
            return self.put_place(key, rec, crc);
        }
        let at = place_key(&rec.uri);
        if self.names(&at, key, rec.id)? {
            self.places.remove(at.as_slice())?;
        }
        Ok(())
    }

    /// Puts `rec`'s place with `crc`, its one chunk's CRC as `CHUNKS` has it now.
    fn put_place(
        &mut self,
        key: &str,
        rec: &FileRecord,
        crc: Option<u32>,
    ) -> Result<(), redb::StorageError> {
        if rec.uri.is_empty() {
            return Ok(());
        }
        let v = Place::of(rec).encode(key, crc);
        self.places
            .insert(place_key(&rec.uri).as_slice(), v.as_slice())?;
        Ok(())
    }

    /// Writes `rec`'s place again with the CRC `CHUNKS` has now, where it still names `rec`'s
    /// file (a chunk dropped: the place must not keep its CRC).
    fn replace(&mut self, key: &str, rec: &FileRecord) -> Result<(), redb::StorageError> {
        if !rec.uri.is_empty() && self.names(&place_key(&rec.uri), key, rec.id)? {
            self.place(key, rec, true)?;
        }
        Ok(())
    }

    /// Whether the place at `at` names file `id` under `key`.
    fn names(&self, at: &[u8], key: &str, id: u64) -> Result<bool, redb::StorageError> {
        let mut want = Vec::new();
        encode_key(&mut want, key);
        Ok(self.places.get(at)?.is_some_and(|v| {
            Place::decode(v.value()).is_some_and(|(p, _, k)| p.id == id && k == want)
        }))
    }

    /// A one-chunk file's CRC if `CHUNKS` has it now.
    fn one_crc(&self, rec: &FileRecord) -> Result<Option<u32>, redb::StorageError> {
        Ok(match rec.layout().count() {
            1 => self.chunks.get((rec.id, 0))?.map(|g| g.value()),
            _ => None,
        })
    }

    fn record(&self, key: &str) -> Result<Option<FileRecord>, redb::StorageError> {
        Ok(self.files.get(key)?.and_then(|v| decode(v.value())))
    }

    /// `rec` as the index stores it: a one-chunk file's record carries its chunk's CRC if
    /// `CHUNKS` has it now (so the two never disagree at a commit).
    fn encode(&self, rec: &FileRecord) -> Result<Vec<u8>, redb::StorageError> {
        Ok(rec.encode_with(self.one_crc(rec)?))
    }

    /// Applies one op.
    #[allow(clippy::result_large_err)]
    fn apply(&mut self, tot: &mut Totals, op: &Op) -> Result<(), redb::Error> {
        match op {
            Op::PutFile { key, rec } | Op::Touch { key, rec } => {
                let old = self.record(key)?;
                if let Some(old) = &old {
                    self.account(tot, key, old, false, false)?;
                }
                let crc = self.one_crc(rec)?;
                self.files
                    .insert(key.as_str(), rec.encode_with(crc).as_slice())?;
                self.account(tot, key, rec, true, false)?;
                match &old {
                    // A read's LRU move: no write to `PLACES`, unless the record just took its
                    // one chunk's CRC (a file recorded verified before its chunk).
                    Some(o) if o.uri == rec.uri && Place::of(o) == Place::of(rec) => {
                        if o.crc.is_none() && crc.is_some() {
                            self.replace(key, rec)?;
                        }
                    }
                    Some(o) if o.uri != rec.uri => {
                        self.place(key, o, false)?;
                        self.put_place(key, rec, crc)?;
                    }
                    // New, or changed in place (verified): one write, over the old.
                    _ => self.put_place(key, rec, crc)?,
                }
                tot.max_id = tot.max_id.max(rec.id);
                tot.id_mark = tot.id_mark.max(rec.id + 1);
            }
            Op::RemoveFile {
                key,
                id,
                size,
                chunk_size,
                unlink,
            } => {
                let (id, size, chunk_size) = (*id, *size, *chunk_size);
                // Only remove the record if it still names this id (the key may have been
                // registered again since).
                if let Some(old) = self.record(key)?.filter(|r| r.id == id) {
                    self.account(tot, key, &old, false, true)?;
                    self.files.remove(key.as_str())?;
                }
                // The chunks it holds, not every chunk its size allows.
                let layout = ChunkLayout::new(size, chunk_size.max(1));
                let mut freed = 0;
                self.chunks
                    .retain_in((id, 0)..=(id, u32::MAX), |(_, idx), _| {
                        if idx < layout.count() {
                            freed += layout.len(idx);
                        }
                        false
                    })?;
                tot.used = tot.used.saturating_sub(freed);
                if unlink.is_some() {
                    self.garbage.insert(id, ())?;
                }
            }
            &Op::SetChunk { id, idx, crc, len } => {
                let old = self.chunks.insert((id, idx), crc)?.map(|g| g.value());
                // Other bytes over a recorded chunk come after its `DropChunk`: no record or
                // place keeps the old CRC.
                debug_assert!(
                    old.is_none_or(|o| o == crc),
                    "chunk {idx} of {id} rewritten"
                );
                if old.is_none() {
                    tot.used += len;
                    if self.pinned.get(id)?.is_some() {
                        tot.pinned_bytes += len;
                    }
                }
            }
            Op::DropChunk { key, id, idx, len } => {
                let (id, idx, len) = (*id, *idx, *len);
                if self.chunks.remove((id, idx))?.is_some() {
                    tot.used = tot.used.saturating_sub(len);
                    if self.pinned.get(id)?.is_some() {
                        tot.pinned_bytes = tot.pinned_bytes.saturating_sub(len);
                    }
                }
                // In the same op: a record or place never names a chunk that is gone.
                if let Some(rec) = self.record(key)?.filter(|r| r.id == id) {
                    if rec.crc.is_some() {
                        let v = self.encode(&rec)?;
                        self.files.insert(key.as_str(), v.as_slice())?;
                    }
                    if rec.layout().count() == 1 {
                        self.replace(key, &rec)?;
                    }
                }
            }
            Op::PutMeta { key, value } => put_meta(self, key, &**value)?,
            &Op::IdMark(m) => tot.id_mark = tot.id_mark.max(m),
            &Op::Header(name, v) => {
                self.header.insert(name, v)?;
            }
            Op::Unlinked(ids) => {
                for id in ids {
                    self.garbage.remove(*id)?;
                }
            }
            Op::Flush(_) => {}
        }
        Ok(())
    }
}

impl Index {
    /// Opens the index at `path` for the data files under `data_dir`, converting a cache of an
    /// older layout once.
    pub fn open(path: &Path, data_dir: &Path) -> Result<(Index, Opened), StoreError> {
        let db = match create_db(path) {
            Ok(db) => db,
            Err(e) if proven_corrupt(&e) => {
                // Only an index whose bytes are proven wrong is moved aside; the data files it
                // described are then unknown and removed (refetched as needed): nothing is
                // ever served unchecked from a cache whose records were lost.
                tracing::error!(path = %path.display(), error = %e, "cache index corrupt; setting it aside and starting an empty one");
                let aside = path.with_extension("redb.broken");
                std::fs::rename(path, &aside).map_err(idx_err)?;
                let db = create_db(path).map_err(idx_err)?;
                remove_data(data_dir);
                db
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
        // A newer version's index is refused before anything is written to it (not even this
        // version's empty tables): it is that version's to use.
        if let Some(newer) = read_layout(&db)?.filter(|&l| l > LAYOUT) {
            return Err(StoreError::IndexUnusable {
                path: path.display().to_string(),
                detail: format!("cache layout {newer} is newer than this version's ({LAYOUT})"),
            });
        }
        let layout = {
            let w = begin_write(&db).map_err(idx_err)?;
            let layout = {
                let t = Tables::open(&w).map_err(idx_err)?;
                let _ = w.delete_table(META_V1);
                let l = t.header.get("layout").map_err(idx_err)?.map(|g| g.value());
                if l == Some(LAYOUT) {
                    // An older version that opened this cache (and refused its layout) may
                    // have made an empty table of its own places.
                    let _ = w.delete_table(PLACES_V1);
                }
                l
            };
            w.commit().map_err(idx_err)?;
            layout
        };
        match layout {
            Some(LAYOUT) => {}
            Some(4 | 5) => set_layout(&db)?,
            Some(3) => compact_places(&db)?,
            Some(2) => add_places(&db)?,
            None => convert(&db, data_dir)?,
            // A newer one was refused above, before any write; this is none any version wrote.
            Some(other) => {
                return Err(StoreError::IndexUnusable {
                    path: path.display().to_string(),
                    detail: format!("cache layout {other} is unknown to this version ({LAYOUT})"),
                })
            }
        }
        let opened = {
            let r = db.begin_read().map_err(idx_err)?;
            let header = r.open_table(HEADER).map_err(idx_err)?;
            let garbage = r.open_table(GARBAGE).map_err(idx_err)?;
            let mut ids = Vec::new();
            for g in garbage.iter().map_err(idx_err)? {
                ids.push(g.map_err(idx_err)?.0.value());
            }
            Opened {
                totals: Totals::read(&header).map_err(idx_err)?,
                access: header.get("access").map_err(idx_err)?.map(|g| g.value()),
                garbage: ids,
            }
        };
        let db: Slot = Arc::new(std::sync::RwLock::new(Some(Arc::new(db))));
        let (tx, rx) = mpsc::channel();
        let done = Arc::new(AtomicU64::new(0));
        let halted = Arc::new(AtomicBool::new(false));
        let keep_garbage = Arc::new(AtomicBool::new(false));
        let fail_commits = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            fail_commits: fail_commits.clone(),
            slot: db.clone(),
            path: path.to_path_buf(),
            done: done.clone(),
            halted: halted.clone(),
            keep_garbage: keep_garbage.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("locus-index".into())
            .spawn(move || writer.run(rx))
            .map_err(idx_err)?;
        Ok((
            Index {
                db,
                tx: Mutex::new(Some((tx, 0))),
                done,
                thread: Mutex::new(Some(thread)),
                halted,
                keep_garbage,
                fail_commits,
            },
            opened,
        ))
    }

    /// Queues `op` for the writer; returns its sequence number.
    pub fn send(&self, op: Op) -> u64 {
        let mut guard = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_mut() {
            Some((tx, seq)) => {
                *seq += 1;
                let _ = tx.send((*seq, op));
                *seq
            }
            None => 0,
        }
    }

    /// The sequence number of the last op the writer is done with.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Acquire)
    }

    /// Waits until everything sent before is committed; `false` if the commit failed (the ops
    /// are tried again with the next commit) or the writer is gone.
    pub fn flush(&self) -> bool {
        let (tx, rx) = mpsc::channel();
        self.send(Op::Flush(tx));
        self.wake_writer();
        rx.recv().unwrap_or(false)
    }

    /// Ends the writer's gathering now (it sleeps rather than wake for every op sent).
    fn wake_writer(&self) {
        if let Some(t) = self
            .thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            t.thread().unpark();
        }
    }

    /// Whether ops were sent that the writer has not committed yet.
    pub fn pending(&self) -> bool {
        let sent = self
            .tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, |(_, seq)| *seq);
        sent > self.done()
    }

    fn db(&self) -> Option<Arc<Database>> {
        self.db.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Each table's pages (leaf and branch) and the bytes its entries hold, for the scale
    /// bench: where an index's bytes per file go.
    pub fn table_sizes(&self) -> Vec<(String, u64, u64)> {
        use redb::TableHandle;
        let Some(r) = self.db().and_then(|db| db.begin_read().ok()) else {
            return Vec::new();
        };
        let Ok(tables) = r.list_tables() else {
            return Vec::new();
        };
        tables
            .filter_map(|h| {
                let name = h.name().to_string();
                let st = r.open_untyped_table(h).ok()?.stats().ok()?;
                Some((name, st.leaf_pages() + st.branch_pages(), st.stored_bytes()))
            })
            .collect()
    }

    pub fn meta_get(&self, key: &str) -> Option<Vec<u8>> {
        let db = self.db()?;
        let r = db.begin_read().ok()?;
        let t = r.open_table(META).ok()?;
        let v = t.get(key).ok()??;
        let v = v.value();
        if meta_seq(v)? & PIECED == 0 {
            return v.get(8..).map(|b| b.to_vec());
        }
        // One allocation of the value's length, filled piece by piece: a read of a listing of
        // millions of files holds it once.
        let len = usize::try_from(meta_seq(&v[8..])?).ok()?;
        let mut out = Vec::new();
        out.try_reserve_exact(len).ok()?;
        let p = r.open_table(META_PIECES).ok()?;
        for piece in p.range((key, 0)..=(key, u32::MAX)).ok()? {
            let piece = piece.ok()?.1;
            if out.len() + piece.value().len() > len {
                return None;
            }
            out.extend_from_slice(piece.value());
        }
        (out.len() == len).then_some(out)
    }

    /// The committed record of `key` and its stored chunks (index, CRC).
    pub fn load(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        Ok(self.load_many(&[key])?.pop().flatten())
    }

    /// The committed records (and chunks) of `keys`, in one read transaction.
    pub fn load_many(&self, keys: &[&str]) -> Result<Vec<Option<Stored>>, StoreError> {
        // After a failed commit (a full disk, say) redb refuses reads too until the writer has
        // opened it again; a commit round (which reopens it) comes before giving up, so that a
        // reader sees an error only where the index itself cannot be read.
        let mut tries = 0;
        loop {
            match self.load_many_once(keys) {
                Err(e) if tries < 2 => {
                    tries += 1;
                    tracing::debug!(error = %e, "cache index read failed; reading again after a commit");
                    self.flush();
                }
                r => return r,
            }
        }
    }

    /// [`Index::load_many`] without waiting for a reopen: for reads that may miss (a listing's
    /// look, a read-ahead), which must not force commit rounds on a failing disk.
    pub fn load_many_once(&self, keys: &[&str]) -> Result<Vec<Option<Stored>>, StoreError> {
        let Some(db) = self.db() else {
            return Err(StoreError::Index("the index is being reopened".into()));
        };
        let r = db.begin_read().map_err(idx_err)?;
        let files = r.open_table(FILES).map_err(idx_err)?;
        let chunks = r.open_table(CHUNKS).map_err(idx_err)?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let rec = files.get(*key).map_err(idx_err)?.map(|v| decode(v.value()));
            let found = rec.is_some();
            let Some(rec) = rec.flatten() else {
                if found {
                    tracing::warn!(key, "unreadable cache record: taken as not cached");
                }
                out.push(None);
                continue;
            };
            let mut crcs = Vec::new();
            match rec.crc {
                // A one-chunk file's record holds its CRC: no second lookup.
                Some(crc) if rec.layout().count() == 1 => crcs.push((0, crc)),
                _ => {
                    for c in chunks
                        .range((rec.id, 0)..=(rec.id, u32::MAX))
                        .map_err(idx_err)?
                    {
                        let (k, v) = c.map_err(idx_err)?;
                        crcs.push((k.value().1, v.value()));
                    }
                }
            }
            out.push(Some((rec, crcs)));
        }
        Ok(out)
    }

    /// The committed records of files by where they were cached from: for each `(uri, key)`,
    /// the place and chunk CRCs of the file cached from `uri` if it is `key`'s, else `None`
    /// (not cached from there; it may be from elsewhere). One range scan over the URIs asked
    /// (a folder listing's are neighbours), bounded: URIs far apart are not all found.
    pub fn load_places(&self, wanted: &[(&str, &str)]) -> Result<Vec<Option<Placed>>, StoreError> {
        let mut out = vec![None; wanted.len()];
        if wanted.is_empty() {
            return Ok(out);
        }
        let Some(db) = self.db() else {
            return Err(StoreError::Index("the index is being reopened".into()));
        };
        // A page's files are most often one folder's: its hash is taken once.
        let mut last: Option<(&str, [u8; 8])> = None;
        let keys: Vec<Vec<u8>> = wanted
            .iter()
            .map(|w| {
                let (folder, name) = split_uri(w.0);
                let hash = match last {
                    Some((f, h)) if f == folder => h,
                    _ => folder_hash(folder),
                };
                last = Some((folder, hash));
                key_in(&hash, name)
            })
            .collect();
        let at: HashMap<&[u8], usize> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.as_slice(), i))
            .collect();
        // One range a folder (a page of a listing is most often one folder's files), each with
        // its own bound on other files' places read past (the rest are looked up by key).
        // Folder hash → (first key, last key, rows that may be read).
        type Span<'a> = (&'a [u8], &'a [u8], usize);
        let mut folders: std::collections::BTreeMap<&[u8], Span> = Default::default();
        for k in keys.iter().map(Vec::as_slice) {
            let span = folders.entry(&k[..8]).or_insert((k, k, 64));
            span.0 = span.0.min(k);
            span.1 = span.1.max(k);
            span.2 += 4;
        }
        let r = db.begin_read().map_err(idx_err)?;
        let places = r.open_table(PLACES).map_err(idx_err)?;
        let chunks = r.open_table(CHUNKS).map_err(idx_err)?;
        let budget = wanted.len() * 4 + 64;
        let mut found: Vec<(usize, Place)> = Vec::new();
        let mut want = Vec::new();
        for (lo, hi, bound) in folders.into_values() {
            for row in places.range(lo..=hi).map_err(idx_err)?.take(bound) {
                let (k, v) = row.map_err(idx_err)?;
                let Some(&i) = at.get(k.value()) else {
                    continue;
                };
                let Some((place, crc, key)) = Place::decode(v.value()) else {
                    continue;
                };
                want.clear();
                encode_key(&mut want, wanted[i].1);
                if key != want.as_slice() {
                    continue;
                }
                match crc {
                    // A small file's place has its CRC: no `CHUNKS` row to read.
                    Some(crc)
                        if ChunkLayout::new(place.size, place.chunk_size.max(1)).count() == 1 =>
                    {
                        out[i] = Some((place, vec![(0, crc)]))
                    }
                    _ => found.push((i, place)),
                }
            }
        }
        // The CRCs: files cached together have neighbouring ids, so one scan over their ids'
        // chunks where they are dense, one lookup a file where they are not.
        let (Some(first), Some(last)) = (
            found.iter().map(|(_, p)| p.id).min(),
            found.iter().map(|(_, p)| p.id).max(),
        ) else {
            return Ok(out);
        };
        let mut crcs: HashMap<u64, Vec<(u32, u32)>> =
            found.iter().map(|(_, p)| (p.id, Vec::new())).collect();
        let mut dense = last - first <= budget as u64;
        if dense {
            // Other files' rows between them (a large file's, say) are read past up to a bound;
            // past it, one lookup a file.
            let wanted_rows: u64 = found
                .iter()
                .map(|(_, p)| ChunkLayout::new(p.size, p.chunk_size.max(1)).count() as u64)
                .sum();
            let cap = wanted_rows + budget as u64 * 64;
            for (n, row) in chunks
                .range((first, 0)..=(last, u32::MAX))
                .map_err(idx_err)?
                .enumerate()
            {
                if n as u64 >= cap {
                    dense = false;
                    crcs.values_mut().for_each(Vec::clear);
                    break;
                }
                let (k, v) = row.map_err(idx_err)?;
                let (id, idx) = k.value();
                if let Some(c) = crcs.get_mut(&id) {
                    c.push((idx, v.value()));
                }
            }
        }
        if !dense {
            for (_, p) in &found {
                let c = crcs.entry(p.id).or_default();
                for row in chunks
                    .range((p.id, 0)..=(p.id, u32::MAX))
                    .map_err(idx_err)?
                {
                    let (k, v) = row.map_err(idx_err)?;
                    c.push((k.value().1, v.value()));
                }
            }
        }
        for (i, place) in found {
            let c = crcs.remove(&place.id).unwrap_or_default();
            out[i] = Some((place, c));
        }
        Ok(out)
    }

    /// Up to `n` committed (last access, id, key) of unpinned files, least recently used first,
    /// after `after`.
    pub fn lru_page(&self, after: Option<(u64, u64)>, n: usize) -> Vec<(u64, u64, String)> {
        let Some(db) = self.db() else {
            return Vec::new();
        };
        #[allow(clippy::result_large_err)]
        let page = || -> Result<Vec<(u64, u64, String)>, redb::Error> {
            let r = db.begin_read()?;
            let lru = r.open_table(LRU)?;
            let from = after.map_or(Bound::Unbounded, Bound::Excluded);
            let mut out = Vec::with_capacity(n);
            for row in lru.range::<(u64, u64)>((from, Bound::Unbounded))?.take(n) {
                let (k, v) = row?;
                let (at, id) = k.value();
                out.push((at, id, v.value().to_string()));
            }
            Ok(out)
        };
        page().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cache index: eviction order unreadable");
            Vec::new()
        })
    }

    /// The repos and buckets files are cached from, sorted.
    pub fn namespaces(&self) -> Result<Vec<String>, StoreError> {
        let Some(db) = self.db() else {
            return Ok(Vec::new());
        };
        let r = db.begin_read().map_err(idx_err)?;
        let t = r.open_table(NAMESPACES).map_err(idx_err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(idx_err)? {
            out.push(row.map_err(idx_err)?.0.value().to_string());
        }
        Ok(out)
    }

    /// Keys of the committed files whose (key, URI) `pred` accepts: a scan of every record,
    /// for an operator's command, holding only the matches.
    pub fn keys_where(&self, pred: &dyn Fn(&str, &str) -> bool) -> Result<Vec<String>, StoreError> {
        let Some(db) = self.db() else {
            return Ok(Vec::new());
        };
        let r = db.begin_read().map_err(idx_err)?;
        let t = r.open_table(FILES).map_err(idx_err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(idx_err)? {
            let (k, v) = row.map_err(idx_err)?;
            if let Some(rec) = decode(v.value()) {
                if pred(k.value(), &rec.uri) {
                    out.push(k.value().to_string());
                }
            }
        }
        Ok(out)
    }

    /// Test hook: every place written again without its CRC, as layout 5 kept places.
    #[cfg(test)]
    pub fn places_as_layout_5(&self) {
        let db = self.db().expect("open");
        let w = begin_write(&db).unwrap();
        {
            let mut t = w.open_table(PLACES).unwrap();
            let rows: Vec<(Vec<u8>, Vec<u8>)> = t
                .iter()
                .unwrap()
                .map(|row| {
                    let (at, v) = row.unwrap();
                    let (place, _, key) = Place::decode(v.value()).unwrap();
                    let key = decode_key(key).unwrap();
                    (at.value().to_vec(), place.encode(&key, None))
                })
                .collect();
            for (at, v) in rows {
                t.insert(at.as_slice(), v.as_slice()).unwrap();
            }
        }
        w.commit().unwrap();
    }

    /// Test hook: the CRC the place of `uri` keeps, if the place is `key`'s and keeps one.
    #[cfg(test)]
    pub fn place_crc(&self, uri: &str, key: &str) -> Option<u32> {
        let db = self.db().expect("open");
        let r = db.begin_read().unwrap();
        let places = r.open_table(PLACES).unwrap();
        let v = places.get(place_key(uri).as_slice()).unwrap()?;
        let (_, crc, k) = Place::decode(v.value()).expect("a readable place");
        (decode_key(k).as_deref() == Some(key))
            .then_some(crc)
            .flatten()
    }

    /// Test hook: the totals in the header, and the same counted from the records, the chunks
    /// and the derived tables ((used, files, pinned, pinned bytes), rows of LRU + PINNED, and
    /// the sum of NAMESPACES).
    #[cfg(test)]
    pub fn recount(&self) -> (Four, Four, u64, u64) {
        let db = self.db().expect("open");
        let r = db.begin_read().unwrap();
        let files = r.open_table(FILES).unwrap();
        let chunks = r.open_table(CHUNKS).unwrap();
        let t = Totals::read(&r.open_table(HEADER).unwrap()).unwrap();
        let mut c = (0, 0, 0, 0);
        let mut with_ns = 0;
        for row in files.iter().unwrap() {
            let rec = decode(row.unwrap().1.value()).unwrap();
            let layout = rec.layout();
            let bytes: u64 = chunks
                .range((rec.id, 0)..=(rec.id, u32::MAX))
                .unwrap()
                .map(|c| layout.len(c.unwrap().0.value().1))
                .sum();
            // A record's CRC is its one chunk's, as `CHUNKS` holds it.
            if let Some(crc) = rec.crc {
                let row = chunks.get((rec.id, 0)).unwrap().map(|g| g.value());
                assert_eq!(
                    (layout.count(), row),
                    (1, Some(crc)),
                    "the CRC in {}'s record",
                    rec.uri
                );
            }
            c.0 += bytes;
            c.1 += 1;
            if rec.pinned {
                c.2 += 1;
                c.3 += bytes;
            }
            with_ns += namespace_of(&rec.uri).is_some() as u64;
        }
        let rows = r.open_table(LRU).unwrap().len().unwrap()
            + r.open_table(PINNED).unwrap().len().unwrap();
        let ns: u64 = r
            .open_table(NAMESPACES)
            .unwrap()
            .iter()
            .unwrap()
            .map(|r| r.unwrap().1.value())
            .sum();
        assert_eq!(ns, with_ns, "namespace counts");
        // Every place names the live record of a file cached from its URI, as it is now.
        for row in r.open_table(PLACES).unwrap().iter().unwrap() {
            let (at, v) = row.unwrap();
            let (place, crc, key) = Place::decode(v.value()).expect("a readable place");
            let key = decode_key(key).expect("a readable key");
            let rec = files
                .get(key.as_str())
                .unwrap()
                .and_then(|v| decode(v.value()))
                .unwrap_or_else(|| panic!("the place of {:?} names no record", at.value()));
            assert_eq!(
                (place_key(&rec.uri), Place::of(&rec)),
                (at.value().to_vec(), place)
            );
            // A CRC in a place is its one chunk's, as `CHUNKS` has it now.
            if let Some(crc) = crc {
                let stored = r.open_table(CHUNKS).unwrap().get((rec.id, 0)).unwrap();
                assert_eq!(
                    (rec.layout().count(), stored.map(|g| g.value())),
                    (1, Some(crc)),
                    "the CRC in the place of {key}"
                );
            }
        }
        assert!(
            r.open_table(PLACES_V1).is_err(),
            "layout 3's places are gone"
        );
        ((t.used, t.files, t.pinned, t.pinned_bytes), c, rows, ns)
    }

    /// Test hook: the stored bytes of `key`'s record.
    #[cfg(test)]
    pub fn raw_record(&self, key: &str) -> Option<Vec<u8>> {
        let db = self.db()?;
        let r = db.begin_read().ok()?;
        let t = r.open_table(FILES).ok()?;
        let v = t.get(key).ok()??;
        Some(v.value().to_vec())
    }

    /// Test hook: the writer stops committing, as if the process had died.
    #[cfg(test)]
    pub fn halt(&self) {
        self.halted.store(true, Ordering::Release);
    }

    /// Test hook: the next `n` commits fail, as on a full disk.
    #[cfg(test)]
    pub fn fail_commits(&self, n: u64) {
        self.fail_commits.store(n, Ordering::Release);
    }

    /// Test hook: the database is closed, as after a failed commit whose reopen found a reader
    /// still holding it; the writer opens it again at its next round.
    #[cfg(test)]
    pub fn close(&self) {
        self.db.write().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Test hook: removals commit, but their data files are left (a crash before the unlink).
    #[cfg(test)]
    pub fn keep_garbage(&self) {
        self.keep_garbage.store(true, Ordering::Release);
    }
}

impl Drop for Index {
    fn drop(&mut self) {
        // Closing the channel ends the writer after it commits what is queued.
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// redb's own page cache: the index's hot pages. More is left to the kernel's page cache, which
/// does not count against the daemon's memory.
const DB_CACHE: usize = 128 << 20;

/// The layout the index's header records, read without writing (`None`: no header yet).
fn read_layout(db: &Database) -> Result<Option<u64>, StoreError> {
    let r = db.begin_read().map_err(idx_err)?;
    let header = match r.open_table(HEADER) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(idx_err(e)),
    };
    let layout = header.get("layout").map_err(idx_err)?.map(|g| g.value());
    Ok(layout)
}

/// A write transaction whose commit also saves redb's allocator state ("quick repair"): after a
/// crash, the next open does not walk the whole index to rebuild it (12.7 s at 10M files and
/// 8.6 GB of index without it; see docs/benchmarks.md).
// redb's own error type, as `begin_write` returns it.
#[allow(clippy::result_large_err)]
fn begin_write(db: &Database) -> Result<redb::WriteTransaction, redb::TransactionError> {
    let mut w = db.begin_write()?;
    w.set_quick_repair(true);
    Ok(w)
}

/// Full repairs of an index this process has opened: a walk of the whole index, which quick
/// repair ([`begin_write`]) leaves to an index last written by an older version.
static FULL_REPAIRS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many indexes this process had to repair in full (a crash test's check).
pub fn full_repairs() -> u64 {
    FULL_REPAIRS.load(Ordering::Relaxed)
}

fn create_db(path: &Path) -> Result<Database, redb::DatabaseError> {
    let shown = std::sync::atomic::AtomicU64::new(u64::MAX);
    Database::builder()
        .set_cache_size(DB_CACHE)
        .set_repair_callback(move |r| {
            // Called first at 0 (once per repair), then as it goes: a line per tenth.
            let tenth = (r.progress() * 10.0) as u64;
            if shown.swap(tenth, Ordering::Relaxed) != tenth {
                if tenth == 0 {
                    FULL_REPAIRS.fetch_add(1, Ordering::Relaxed);
                }
                tracing::warn!(
                    done = format!("{:.0}%", r.progress() * 100.0),
                    "the cache index was not closed cleanly by a version without quick repair: \
                     repairing it (a walk of the whole index)"
                );
            }
        })
        .create_file(open_random(path).map_err(redb::DatabaseError::from)?)
}

/// Opens (or creates) the index file with the kernel's read-ahead off: lookups and range scans
/// read B-tree pages scattered over the file, and read-ahead around each one read 37% more
/// from disk than was asked for (a folder listing over a million cached files, cold: 550 MB
/// read for 400 MB asked), each extra page a page-cache insert.
fn open_random(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    // SAFETY: a valid descriptor; the call only sets advice on it.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    if rc != 0 {
        tracing::debug!(error = rc, "posix_fadvise(RANDOM) on the cache index");
    }
    Ok(f)
}

/// Removes every data file (after the index that described them was found corrupt).
fn remove_data(data_dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(data_dir) {
        for ent in rd.flatten() {
            let p = ent.path();
            let r = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            if let Err(e) = r {
                tracing::warn!(file = %p.display(), error = %e, "could not remove a data file of a corrupt index");
            }
        }
    }
}

/// Converts a cache of layout 1 (every data file in `data/`, only the records and chunks in the
/// index): moves each data file into its folder, drops records whose data file is gone, removes
/// data files no record names, and derives the tables. Once, at the first start of this version;
/// safe to run again if a crash cuts it short (a moved file is found in its new place).
fn convert(db: &Database, data_dir: &Path) -> Result<(), StoreError> {
    let w = begin_write(db).map_err(idx_err)?;
    {
        let mut t = Tables::open(&w).map_err(idx_err)?;
        let mut records = Vec::new();
        for row in t.files.iter().map_err(idx_err)? {
            let (k, v) = row.map_err(idx_err)?;
            records.push((k.value().to_string(), decode(v.value())));
        }
        if !records.is_empty() {
            tracing::info!(
                files = records.len(),
                "converting the cache to layout {LAYOUT}"
            );
        }
        let mut tot = Totals::default();
        let mut known = std::collections::HashSet::new();
        for (key, rec) in records {
            let keep = rec.as_ref().is_some_and(|rec| {
                let old = data_dir.join(rec.id.to_string());
                let new = data_path(data_dir, rec.id);
                if old.is_file() {
                    let _ = std::fs::create_dir_all(new.parent().unwrap_or(data_dir));
                    if let Err(e) = std::fs::rename(&old, &new) {
                        tracing::warn!(file = %old.display(), error = %e, "could not move a data file");
                    }
                }
                rec.chunk_size > 0 && new.is_file()
            });
            match rec {
                Some(rec) if keep => {
                    known.insert(rec.id.to_string());
                    tot.used += t.bytes_of(&rec).map_err(idx_err)?;
                    t.account(&mut tot, &key, &rec, true, true)
                        .map_err(idx_err)?;
                    tot.max_id = tot.max_id.max(rec.id);
                }
                rec => {
                    tracing::warn!(key, "cache entry without data file dropped");
                    t.files.remove(key.as_str()).map_err(idx_err)?;
                    if let Some(rec) = rec {
                        t.chunks
                            .retain_in((rec.id, 0)..=(rec.id, u32::MAX), |_, _| false)
                            .map_err(idx_err)?;
                    }
                }
            }
        }
        tot.id_mark = tot.max_id + 1;
        // Data files at the top that no record names (a crash between creating and recording).
        if let Ok(rd) = std::fs::read_dir(data_dir) {
            for ent in rd.flatten() {
                let name = ent.file_name().to_string_lossy().to_string();
                if ent.path().is_file() && !known.contains(&name) {
                    tracing::info!(file = %ent.path().display(), "removing data file unknown to the index");
                    let _ = std::fs::remove_file(ent.path());
                }
            }
        }
        tot.write(&mut t.header).map_err(idx_err)?;
        t.header.insert("layout", LAYOUT).map_err(idx_err)?;
    }
    w.commit().map_err(idx_err)
}

/// Gives a cache of layout 2 its places (one walk of the records, once, at the first start of
/// this version; in one transaction, so a crash cuts nothing short).
fn add_places(db: &Database) -> Result<(), StoreError> {
    let w = begin_write(db).map_err(idx_err)?;
    {
        let mut t = Tables::open(&w).map_err(idx_err)?;
        t.places.retain(|_, _| false).map_err(idx_err)?;
        tracing::info!(
            files = t.files.len().map_err(idx_err)?,
            "converting the cache to layout {LAYOUT}"
        );
        for row in t.files.iter().map_err(idx_err)? {
            let (k, v) = row.map_err(idx_err)?;
            let Some(rec) = decode(v.value()) else {
                continue;
            };
            if !rec.uri.is_empty() {
                let crc = t.one_crc(&rec).map_err(idx_err)?;
                t.places
                    .insert(
                        place_key(&rec.uri).as_slice(),
                        Place::of(&rec).encode(k.value(), crc).as_slice(),
                    )
                    .map_err(idx_err)?;
            }
        }
        t.header.insert("layout", LAYOUT).map_err(idx_err)?;
    }
    w.commit().map_err(idx_err)
}

/// Marks the index as of this layout (an older version then refuses it rather than read
/// records it cannot decode).
fn set_layout(db: &Database) -> Result<(), StoreError> {
    let w = begin_write(db).map_err(idx_err)?;
    w.open_table(HEADER)
        .map_err(idx_err)?
        .insert("layout", LAYOUT)
        .map_err(idx_err)?;
    w.commit().map_err(idx_err)
}

/// Makes a cache of layout 3's places compact (one walk of them, once, at the first start of
/// this version; in one transaction, so a crash cuts nothing short), and drops the old table.
fn compact_places(db: &Database) -> Result<(), StoreError> {
    let w = begin_write(db).map_err(idx_err)?;
    {
        let mut t = Tables::open(&w).map_err(idx_err)?;
        t.places.retain(|_, _| false).map_err(idx_err)?;
        let old = w.open_table(PLACES_V1).map_err(idx_err)?;
        tracing::info!(
            files = old.len().map_err(idx_err)?,
            "converting the cache to layout {LAYOUT}"
        );
        for row in old.iter().map_err(idx_err)? {
            let (uri, v) = row.map_err(idx_err)?;
            let Some((place, key)) = Place::decode_v1(v.value()) else {
                continue;
            };
            t.places
                .insert(
                    place_key(uri.value()).as_slice(),
                    place.encode(key, None).as_slice(),
                )
                .map_err(idx_err)?;
        }
        t.header.insert("layout", LAYOUT).map_err(idx_err)?;
    }
    w.delete_table(PLACES_V1).map_err(idx_err)?;
    w.commit().map_err(idx_err)
}

/// Takes more ops from `rx` into `ops` while `wait(ops)` holds, until `until` (or the senders
/// are gone).
fn gather(
    rx: &mpsc::Receiver<(u64, Op)>,
    ops: &mut Vec<(u64, Op)>,
    until: std::time::Instant,
    poll: Option<std::time::Duration>,
    wait: impl Fn(&[(u64, Op)]) -> bool,
) {
    while wait(ops) {
        let Some(left) = until.checked_duration_since(std::time::Instant::now()) else {
            return;
        };
        // Sleeps rather than waits on the channel: a waiting receiver is woken by every op
        // sent, and a warm of small files sends thousands a second (a context switch for the
        // writer and a futex wake for the sender each time). A flush and the channel's end
        // unpark it (`Index::wake_writer`); other ops are looked for every `poll`, if given.
        std::thread::park_timeout(poll.map_or(left, |p| left.min(p)));
        loop {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return,
            }
        }
    }
}

/// Opens the database again: redb refuses every transaction after an I/O error (a full disk,
/// say) until it is reopened. While a reader still holds the old one the file stays locked and
/// this fails; the next commit tries again.
fn reopen(slot: &Slot, path: &Path) {
    let mut g = slot.write().unwrap_or_else(|p| p.into_inner());
    g.take();
    match create_db(path) {
        Ok(db) => {
            tracing::info!(path = %path.display(), "cache index reopened");
            *g = Some(Arc::new(db));
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cache index cannot be reopened yet")
        }
    }
}

/// Stores a metadata entry as the newest, and drops the oldest while there are too many. A
/// value is pieced when it fills a piece, whatever it said of its length. Pieces of a key go
/// whenever the key is written or dropped, flagged or not: an older version (which does not
/// know the pieces) may have written over a pieced entry, and its pieces stay until then.
#[allow(clippy::result_large_err)]
fn put_meta(t: &mut Tables, key: &str, value: &dyn MetaValue) -> Result<(), redb::Error> {
    if let Some(old) = t.meta.get(key)?.and_then(|v| meta_seq(v.value())) {
        t.order.remove(old & !PIECED)?;
    }
    remove_pieces(&mut t.pieces, key)?;
    let seq = t.order.last()?.map_or(0, |(k, _)| k.value() + 1);
    // One piece's buffer at a time, however long the value.
    let (mut piece, mut n, mut len, mut failed) = (Vec::new(), 0u32, 0u64, None);
    value.write_to(&mut |mut b: &[u8]| {
        len += b.len() as u64;
        while !b.is_empty() {
            let take = (META_PIECE - piece.len()).min(b.len());
            piece.extend_from_slice(&b[..take]);
            b = &b[take..];
            if piece.len() == META_PIECE {
                if failed.is_none() {
                    failed = t.pieces.insert((key, n), piece.as_slice()).err();
                }
                n += 1;
                piece.clear();
            }
        }
    });
    let mut v = Vec::with_capacity(16);
    if n == 0 {
        v.extend_from_slice(&seq.to_be_bytes());
        v.extend_from_slice(&piece);
    } else {
        if !piece.is_empty() && failed.is_none() {
            failed = t.pieces.insert((key, n), piece.as_slice()).err();
        }
        if let Some(e) = failed {
            return Err(e.into());
        }
        v.extend_from_slice(&(seq | PIECED).to_be_bytes());
        v.extend_from_slice(&len.to_be_bytes());
    }
    t.meta.insert(key, v.as_slice())?;
    t.order.insert(seq, key)?;
    while t.order.len()? > MAX_META {
        let Some((_, k)) = t.order.pop_first()? else {
            break;
        };
        t.meta.remove(k.value())?;
        remove_pieces(&mut t.pieces, k.value())?;
    }
    Ok(())
}

/// The first 8 bytes of a [`META`] entry, big-endian: its sequence number (and [`PIECED`]).
fn meta_seq(v: &[u8]) -> Option<u64> {
    v.get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
}

fn remove_pieces(
    pieces: &mut redb::Table<(&str, u32), &[u8]>,
    key: &str,
) -> Result<(), redb::StorageError> {
    pieces.retain_in((key, 0)..=(key, u32::MAX), |_, _| false)
}

/// The writer thread: commits what was sent in groups, in the order sent.
struct Writer {
    slot: Slot,
    path: PathBuf,
    done: Arc<AtomicU64>,
    halted: Arc<AtomicBool>,
    keep_garbage: Arc<AtomicBool>,
    fail_commits: Arc<AtomicU64>,
}

impl Writer {
    fn run(self, rx: mpsc::Receiver<(u64, Op)>) {
        // Data files unlinked after the last commit: taken off the garbage list in the next.
        let mut unlinked: Vec<u64> = Vec::new();
        // The ops of a commit that failed: first in the next one, so that the index never
        // misses an op that memory relied on (`done` stays behind them until they commit).
        let mut retry: Vec<(u64, Op)> = Vec::new();
        // Tries left for ops that failed to commit once the store is closed: a disk that
        // stays full must not keep the process from exiting (a start repairs what is lost).
        let mut last_tries = 3u32;
        let mut last_commit = std::time::Instant::now();
        let mut gather_for = GATHER;
        loop {
            let first = if retry.is_empty() {
                rx.recv().ok()
            } else {
                match rx.recv_timeout(std::time::Duration::from_secs(1)) {
                    Ok(op) => Some(op),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        if last_tries == 0 {
                            tracing::error!(
                                ops = retry.len(),
                                "cache index: closing with ops that could not commit; the next start repairs"
                            );
                            return;
                        }
                        last_tries -= 1;
                        std::thread::sleep(std::time::Duration::from_millis(200));
                        None
                    }
                }
            };
            if first.is_none() && retry.is_empty() {
                return;
            }
            let touches_only =
                |ops: &[(u64, Op)]| ops.iter().all(|(_, op)| matches!(op, Op::Touch { .. }));
            let mut ops = std::mem::take(&mut retry);
            let delay = ops.is_empty();
            ops.extend(first);
            while let Ok(op) = rx.try_recv() {
                ops.push(op);
            }
            // Only touches: they wait for company (a flush, a write) or the delay.
            if delay {
                gather(
                    &rx,
                    &mut ops,
                    last_commit + TOUCH_DELAY,
                    Some(POLL),
                    |ops| !ops.is_empty() && touches_only(ops),
                );
            }
            // Other writes gather for a moment: a commit costs an fsync and a copy of redb's
            // allocator state whatever its size, so a warm of small files (four ops a file)
            // committed as fast as the disk allows spent a core on commits. The wait grows
            // with what the last commit took, so that commits take at most about a sixth of
            // the writer's time (10 ms each on tmpfs in a warm of small files: a third of a
            // core at 20 ms). A flush does not wait.
            let until = std::time::Instant::now() + gather_for;
            gather(&rx, &mut ops, until, None, |ops| {
                !ops.iter().any(|(_, op)| matches!(op, Op::Flush(_)))
            });
            last_commit = std::time::Instant::now();
            if self.halted.load(Ordering::Acquire) {
                // As if the process had died here: nothing more is committed or unlinked.
                return;
            }
            let last = ops.last().map_or(0, |(s, _)| *s);
            // Taken out first: waiters must wake even when the transaction cannot begin (redb
            // refuses every transaction after an I/O error).
            let mut waiters = Vec::new();
            let mut ops: Vec<(u64, Op)> = ops
                .into_iter()
                .filter_map(|(seq, op)| match op {
                    Op::Flush(tx) => {
                        waiters.push(tx);
                        None
                    }
                    op => Some((seq, op)),
                })
                .collect();
            if !unlinked.is_empty() {
                ops.push((0, Op::Unlinked(std::mem::take(&mut unlinked))));
            }
            if self
                .slot
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .is_none()
            {
                reopen(&self.slot, &self.path);
            }
            let db = self.slot.read().unwrap_or_else(|p| p.into_inner()).clone();
            // Unlinked after the commit, or even if it fails: a full disk must still get its
            // room back (the removal is committed with the next commit that succeeds).
            let unlinks: Vec<(u64, PathBuf)> = ops
                .iter()
                .filter_map(|(_, op)| match op {
                    Op::RemoveFile {
                        id,
                        unlink: Some(p),
                        ..
                    } => Some((*id, p.clone())),
                    _ => None,
                })
                .collect();
            // redb's error is large; it is built at most once per commit, off the hot path.
            #[allow(clippy::result_large_err)]
            let result = (|| -> Result<(), redb::Error> {
                let Some(db) = db.as_ref() else {
                    return Err(redb::Error::PreviousIo);
                };
                let fail = self
                    .fail_commits
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                    .is_ok();
                if fail {
                    return Err(redb::Error::PreviousIo);
                }
                let w = begin_write(db)?;
                {
                    let mut t = Tables::open(&w)?;
                    let mut tot = Totals::read(&t.header)?;
                    for (_, op) in &ops {
                        t.apply(&mut tot, op)?;
                    }
                    tot.write(&mut t.header)?;
                }
                w.commit()?;
                Ok(())
            })();
            let took = last_commit.elapsed();
            gather_for = (took * 5).clamp(GATHER, MAX_GATHER);
            let ok = result.is_ok();
            if let Err(e) = result {
                tracing::error!(error = %e, ops = ops.len(), "cache index commit failed; trying again with the next one");
                drop(db);
                reopen(&self.slot, &self.path);
                // The garbage ids go again at the next start if need be.
                retry = ops
                    .into_iter()
                    .filter(|(_, op)| !matches!(op, Op::Unlinked(_)))
                    .collect();
            }
            if !self.keep_garbage.load(Ordering::Acquire) {
                for (id, p) in unlinks {
                    match std::fs::remove_file(&p) {
                        Ok(()) => unlinked.push(id),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => unlinked.push(id),
                        Err(e) => {
                            tracing::warn!(file = %p.display(), error = %e, "could not unlink evicted data file")
                        }
                    }
                }
            }
            if ok {
                self.done.store(last, Ordering::Release);
                metrics::histogram!(locus_core::metric::INDEX_COMMIT_SECONDS)
                    .record(took.as_secs_f64());
            }
            for w in waiters {
                let _ = w.send(ok);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys_and_places_are_kept_compactly_and_come_back_the_same() {
        let git = format!(
            "gitblob:{}:10000",
            "0748b3db880f05271396261fc8ba69fd2469cfaa"
        );
        let sha = format!("sha256:{}:5368709120", "ab".repeat(32));
        let s3 = format!("s3:{}:42", "0f".repeat(16));
        for (key, compact) in [
            (git.as_str(), true),
            (sha.as_str(), true),
            (s3.as_str(), true),
            // Text that the compact form could not give back the same: kept as text.
            ("gitblob:0748B3:1", false),
            ("gitblob:abc:1", false),
            ("gitblob:ab:01", false),
            ("hf:datasets/acme/big@c/a/b.bin:7", false),
            ("mem:x", false),
            ("", false),
        ] {
            let mut b = Vec::new();
            encode_key(&mut b, key);
            assert_eq!(b[0] == 1, compact, "{key}");
            assert_eq!(decode_key(&b).as_deref(), Some(key));
            let p = Place {
                id: 748_892,
                size: 10_000,
                chunk_size: 8 << 20,
                verified: true,
            };
            for crc in [None, Some(0xdead_beef)] {
                let v = p.encode(key, crc);
                let (back, c, k) = Place::decode(&v).unwrap();
                assert_eq!((back, c, k), (p.clone(), crc, b.as_slice()));
            }
        }
        // A Hub file's place: 79 bytes of value in layout 3, 42 now.
        let v = Place {
            id: 748_892,
            size: 10_000,
            chunk_size: 8 << 20,
            verified: true,
        }
        .encode(&git, None);
        assert_eq!(v.len(), 42);
        // With its CRC (a small file's), four bytes more. A version before it reads the flags
        // as `verified` and the CRC as the start of the key, which then names no file.
        let with = Place {
            id: 748_892,
            size: 10_000,
            chunk_size: 8 << 20,
            verified: false,
        }
        .encode(&git, Some(7));
        assert_eq!(with.len(), 46);
        let mut k = Vec::new();
        encode_key(&mut k, &git);
        let flags_at = v.len() - k.len() - 1;
        assert_eq!((v[flags_at], with[flags_at]), (1, 2));
        assert_ne!(&with[flags_at + 1..], k.as_slice());
        let mut bad = v.clone();
        bad[flags_at] = 4;
        assert!(Place::decode(&bad).is_none(), "unknown flags");
        // The key of a place: its folder's hash and its name; a folder's files share the hash.
        let a = place_key("hf://o/n@x/d/a.bin");
        let b = place_key("hf://o/n@x/d/b.bin");
        assert_eq!((a[..8] == b[..8], &a[8..]), (true, &b"a.bin"[..]));
        assert_ne!(place_key("hf://o/n@x/e/a.bin")[..8], a[..8]);
        assert!(Place::decode(&[0x80]).is_none(), "a cut value is no place");
    }

    #[test]
    fn records_come_back_the_same_and_damaged_ones_are_refused() {
        let base = FileRecord {
            id: 748_892,
            size: 10_000,
            chunk_size: 8 << 20,
            uri: "hf://datasets/acme/set@0748b3db880f05271396261fc8ba69fd2469cfaa/0001/a.bin"
                .into(),
            digest: None,
            pinned: false,
            verified: true,
            last_access: 1_764_650_000_000,
            crc: Some(0xdead_beef),
        };
        let all = [
            base.clone(),
            FileRecord {
                digest: Some(Digest::Sha256("ab".repeat(32))),
                pinned: true,
                crc: None,
                ..base.clone()
            },
            FileRecord {
                digest: Some(Digest::GitBlobSha1("0f".repeat(20))),
                verified: false,
                uri: String::new(),
                ..base.clone()
            },
        ];
        for rec in &all {
            let v = rec.encode();
            let back = decode(&v).expect("readable");
            assert_eq!(format!("{back:?}"), format!("{rec:?}"));
            // Cut anywhere, or with bytes after it: refused, never misread.
            for cut in 0..v.len() {
                assert!(decode(&v[..cut]).is_none(), "cut at {cut}");
            }
            assert!(decode(&[&v[..], b"x"].concat()).is_none());
            // JSON, as layouts 1 to 4 wrote it, still reads.
            let json = serde_json::to_vec(rec).unwrap();
            assert_eq!(format!("{:?}", decode(&json).unwrap()), format!("{rec:?}"));
            assert!(
                v.len() * 4 < json.len() * 3,
                "{} vs {} bytes",
                v.len(),
                json.len()
            );
        }
        // An unknown digest kind, bytes that are not UTF-8, an unknown form.
        let mut v = base.encode();
        // The flags byte: after the tag and four numbers of 3, 2, 4 and 6 bytes.
        v[1 + 3 + 2 + 4 + 6] |= 3 << 3;
        assert!(decode(&v).is_none());
        let mut v = base.encode();
        let last = v.len() - 1;
        v[last] = 0xff;
        assert!(decode(&v).is_none());
        assert!(decode(&[7, 1, 2]).is_none() && decode(&[]).is_none());
    }

    proptest! {
        #[test]
        fn any_key_comes_back_the_same_and_distinct_keys_stay_distinct(
            a in "[a-z0-9]{0,6}(:[0-9a-fA-F]{0,12})?(:[0-9]{0,4})?",
            b in "[a-z0-9]{0,6}(:[0-9a-f]{0,12})?(:[0-9]{0,4})?",
        ) {
            let (mut x, mut y) = (Vec::new(), Vec::new());
            encode_key(&mut x, &a);
            encode_key(&mut y, &b);
            prop_assert_eq!(decode_key(&x), Some(a.clone()));
            prop_assert_eq!(decode_key(&y), Some(b.clone()));
            prop_assert_eq!(x == y, a == b);
        }
    }
}
