//! A listing held compactly: millions of files in tens of bytes each.
//!
//! A [`RemoteFile`] is five strings (uri, path, key, locator, digest), about 600 bytes in
//! memory; a listing of 2M files as a `Vec<RemoteFile>` is over a gigabyte. Most of those
//! bytes repeat: a file's URI and locator are the listing's prefix plus its path, its key is
//! its digest and size, or a prefix plus its path and size. A [`Listing`] learns each field's
//! form from the first file ([`Template`]) and keeps, per file, only its size, path and digest
//! in one byte arena; a file whose fields do not fit the learnt forms keeps them whole, so the
//! compaction never changes what a file reads back as.
//!
//! Records are sorted by path: a file is found by binary search and a folder's files are one
//! range. The same bytes are what the index stores ([`Listing::to_bytes`]).

use std::ops::Range;
use std::sync::Arc;

use crate::{Digest, Listed, RemoteFile};

/// How one string field of a file is made from its path and size: `pre + path + post`, with
/// the size's decimal digits after `post` when `sized`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Template {
    pre: String,
    post: String,
    sized: bool,
}

impl Template {
    /// The form of `v`, when it holds `path`.
    fn learn(v: &str, path: &str, size: u64) -> Option<Template> {
        let i = v.rfind(path)?;
        let pre = v[..i].to_string();
        let post = &v[i + path.len()..];
        let digits = size.to_string();
        Some(match post.strip_suffix(digits.as_str()) {
            Some(p) if !post.is_empty() => Template {
                pre,
                post: p.to_string(),
                sized: true,
            },
            _ => Template {
                pre,
                post: post.to_string(),
                sized: false,
            },
        })
    }

    /// Whether this form makes `v` from `path` and `size`.
    fn fits(&self, v: &str, path: &str, size: u64) -> bool {
        let Some(rest) = v.strip_prefix(self.pre.as_str()) else {
            return false;
        };
        let Some(rest) = rest.strip_prefix(path) else {
            return false;
        };
        let Some(rest) = rest.strip_prefix(self.post.as_str()) else {
            return false;
        };
        match self.sized {
            true => rest == size.to_string(),
            false => rest.is_empty(),
        }
    }

    /// One allocation of the right size: a listing page makes one of these per file.
    fn make(&self, path: &str, size: u64) -> String {
        let mut v = String::with_capacity(self.pre.len() + path.len() + self.post.len() + 20);
        v.push_str(&self.pre);
        v.push_str(path);
        v.push_str(&self.post);
        if self.sized {
            use std::fmt::Write;
            let _ = write!(v, "{size}");
        }
        v
    }
}

// Flags of a record.
const DIGEST_SHA256: u8 = 1;
const DIGEST_GITBLOB: u8 = 2;
const URI_WHOLE: u8 = 4;
const KEY_WHOLE: u8 = 8;
const KEY_DIGEST: u8 = 16;
const LOCATOR_WHOLE: u8 = 32;
const LISTED_WHOLE: u8 = 64;
const LISTED_NONE: u8 = 128;

/// What a listing's reader is shown of a file ([`Listing::brief`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Brief {
    /// As [`RemoteFile::uri`].
    pub uri: String,
    /// As [`RemoteFile::path`].
    pub path: String,
    /// As [`RemoteFile::size`].
    pub size: u64,
    /// As [`RemoteFile::key`].
    pub key: String,
}

/// The digest a record names.
fn digest_of(r: &Record<'_>) -> Option<Digest> {
    match r.flags & (DIGEST_SHA256 | DIGEST_GITBLOB) {
        DIGEST_SHA256 => Some(Digest::Sha256(r.digest.to_string())),
        DIGEST_GITBLOB => Some(Digest::GitBlobSha1(r.digest.to_string())),
        _ => None,
    }
}

/// A string field of record `r`: made by its template, or kept whole (`flag`).
fn field(r: &Record<'_>, flag: u8, whole: &str, t: &Option<Template>) -> String {
    match (r.flags & flag, t) {
        (0, Some(t)) => t.make(r.path, r.size),
        _ => whole.to_string(),
    }
}

/// Why stored listing bytes were not taken.
#[derive(Debug, thiserror::Error)]
#[error("stored listing is malformed: {0}")]
pub struct BadListing(&'static str);

/// The files of one listing, sorted by path, in about 30 bytes plus their paths and digests
/// each. See the module's documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    uri: Option<Template>,
    key: Option<Template>,
    locator: Option<Template>,
    /// Where the files were listed (names without revisions); a file may say otherwise.
    listed: Option<Listed>,
    /// The records, one after another.
    arena: Vec<u8>,
    /// Where each record starts, in path order.
    starts: Vec<u64>,
}

/// A record read back: borrowed from the arena.
struct Record<'a> {
    size: u64,
    flags: u8,
    path: &'a str,
    digest: &'a str,
    uri: &'a str,
    key: &'a str,
    locator: &'a str,
    listed: Option<(&'a str, &'a str)>,
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// A reader over stored bytes that never panics on malformed input.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, BadListing> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.at).ok_or(BadListing("truncated number"))?;
            self.at += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(BadListing("number too long"))
    }

    fn byte(&mut self) -> Result<u8, BadListing> {
        let b = *self.b.get(self.at).ok_or(BadListing("truncated"))?;
        self.at += 1;
        Ok(b)
    }

    fn str(&mut self) -> Result<&'a str, BadListing> {
        let n = usize::try_from(self.varint()?).map_err(|_| BadListing("length"))?;
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or(BadListing("truncated text"))?;
        let s = std::str::from_utf8(&self.b[self.at..end]).map_err(|_| BadListing("not UTF-8"))?;
        self.at = end;
        Ok(s)
    }

    fn record(&mut self) -> Result<Record<'a>, BadListing> {
        let size = self.varint()?;
        let flags = self.byte()?;
        let path = self.str()?;
        let digest = match flags & (DIGEST_SHA256 | DIGEST_GITBLOB) {
            0 => "",
            DIGEST_SHA256 => self.str()?,
            DIGEST_GITBLOB => self.str()?,
            _ => return Err(BadListing("two digests")),
        };
        let mut whole = |flag: u8| -> Result<&'a str, BadListing> {
            match flags & flag {
                0 => Ok(""),
                _ => self.str(),
            }
        };
        let uri = whole(URI_WHOLE)?;
        let key = whole(KEY_WHOLE)?;
        let locator = whole(LOCATOR_WHOLE)?;
        let listed = match flags & LISTED_WHOLE {
            0 => None,
            _ => Some((self.str()?, self.str()?)),
        };
        Ok(Record {
            size,
            flags,
            path,
            digest,
            uri,
            key,
            locator,
            listed,
        })
    }
}

impl Listing {
    /// A listing of `files`, in any order.
    pub fn new(files: impl IntoIterator<Item = RemoteFile>) -> Listing {
        let mut b = ListingBuilder::default();
        for f in files {
            b.push(&f);
        }
        b.finish()
    }

    /// How many files.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// Whether it has no file.
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// Bytes held in memory, about.
    pub fn weight(&self) -> u64 {
        (self.arena.capacity() + self.starts.capacity() * 8) as u64
    }

    /// Marks every file as listed at `listed` (a name without revisions: a peer asked for a
    /// file's bytes looks it up in that listing).
    pub fn set_listed(&mut self, listed: Listed) {
        self.listed = Some(listed.clone());
        // Files that said otherwise say this now: built again, only if any did.
        if (0..self.len()).any(|i| self.rec(i).flags & (LISTED_WHOLE | LISTED_NONE) != 0) {
            let files: Vec<RemoteFile> = self.iter().collect();
            *self = Listing::new(files.into_iter().map(|f| RemoteFile {
                listed: Some(listed.clone()),
                ..f
            }));
        }
    }

    fn rec(&self, i: usize) -> Record<'_> {
        let start = self.starts[i] as usize;
        let mut r = Reader {
            b: &self.arena,
            at: start,
        };
        // Records are written here and checked when read from the index: cannot fail.
        r.record().unwrap_or(Record {
            size: 0,
            flags: 0,
            path: "",
            digest: "",
            uri: "",
            key: "",
            locator: "",
            listed: None,
        })
    }

    /// The path of file `i`.
    pub fn path(&self, i: usize) -> &str {
        self.rec(i).path
    }

    /// The size of file `i`.
    pub fn size(&self, i: usize) -> u64 {
        self.rec(i).size
    }

    /// File `i`, whole.
    pub fn get(&self, i: usize) -> Option<RemoteFile> {
        (i < self.len()).then(|| self.file(&self.rec(i)))
    }

    /// File `i`'s URI, path, size and key only: what a listing's reader is shown, without
    /// making the fields it is not.
    pub fn brief(&self, i: usize) -> Option<Brief> {
        (i < self.len()).then(|| {
            let r = self.rec(i);
            let digest = digest_of(&r);
            self.brief_of(&r, &digest)
        })
    }

    fn brief_of(&self, r: &Record<'_>, digest: &Option<Digest>) -> Brief {
        let key = match (r.flags & KEY_DIGEST, digest) {
            (0, _) | (_, None) => field(r, KEY_WHOLE, r.key, &self.key),
            (_, Some(d)) => RemoteFile::key_for_digest(d, r.size),
        };
        Brief {
            uri: field(r, URI_WHOLE, r.uri, &self.uri),
            path: r.path.to_string(),
            size: r.size,
            key,
        }
    }

    fn file(&self, r: &Record<'_>) -> RemoteFile {
        let digest = digest_of(r);
        let Brief {
            uri,
            path,
            size,
            key,
        } = self.brief_of(r, &digest);
        RemoteFile {
            uri,
            path,
            size,
            key,
            locator: field(r, LOCATOR_WHOLE, r.locator, &self.locator),
            digest,
            listed: match (r.listed, r.flags & LISTED_NONE) {
                (Some((namespace, revision)), _) => Some(Listed {
                    namespace: namespace.to_string(),
                    revision: revision.to_string(),
                }),
                (None, 0) => self.listed.clone(),
                (None, _) => None,
            },
        }
    }

    /// Every file, in path order.
    pub fn iter(&self) -> impl Iterator<Item = RemoteFile> + '_ {
        (0..self.len()).map(|i| self.file(&self.rec(i)))
    }

    /// Every file, as `RemoteFile`s (small listings; tests).
    pub fn to_vec(&self) -> Vec<RemoteFile> {
        self.iter().collect()
    }

    /// The index of the file at `path`.
    pub fn find(&self, path: &str) -> Option<usize> {
        let i = self.count_while(0, |p| p < path);
        (i < self.len() && self.path(i) == path).then_some(i)
    }

    /// The files whose paths start with `prefix`: one range, as records are in path order.
    pub fn under(&self, prefix: &str) -> Range<usize> {
        let start = self.count_while(0, |p| p < prefix);
        start..start + self.count_while(start, |p| p.starts_with(prefix))
    }

    /// How many records from `start` on satisfy `pred`, which holds for a run of them from
    /// `start` and for none after (a binary search).
    fn count_while(&self, start: usize, pred: impl Fn(&str) -> bool) -> usize {
        let (mut lo, mut hi) = (start, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match pred(self.path(mid)) {
                true => lo = mid + 1,
                false => hi = mid,
            }
        }
        lo - start
    }

    /// The bytes the index keeps: the forms, then the records in path order.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.head();
        out.extend_from_slice(&self.arena);
        out
    }

    /// The bytes of [`Listing::to_bytes`], handed to `out` without copying the records:
    /// the head, then the arena as it lies.
    pub fn write_bytes(&self, out: &mut dyn FnMut(&[u8])) {
        out(&self.head());
        out(&self.arena);
    }

    /// What [`Listing::to_bytes`] puts before the records.
    fn head(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"LST1");
        for t in [&self.uri, &self.key, &self.locator] {
            match t {
                None => out.push(0),
                Some(t) => {
                    out.push(1 + u8::from(t.sized));
                    put_str(&mut out, &t.pre);
                    put_str(&mut out, &t.post);
                }
            }
        }
        match &self.listed {
            None => out.push(0),
            Some(l) => {
                out.push(1);
                put_str(&mut out, &l.namespace);
                put_str(&mut out, &l.revision);
            }
        }
        put_varint(&mut out, self.len() as u64);
        out
    }

    /// Where the record that starts at `start` ends.
    fn record_end(&self, start: usize) -> usize {
        let mut r = Reader {
            b: &self.arena,
            at: start,
        };
        let _ = r.record();
        r.at
    }

    /// A listing from [`Listing::to_bytes`]; every record is checked, and their order. The
    /// records stay where they are in `b` (a listing of millions of files is hundreds of MB).
    pub fn from_bytes(mut b: Vec<u8>) -> Result<Listing, BadListing> {
        let body = b
            .strip_prefix(b"LST1")
            .ok_or(BadListing("unknown format"))?;
        let mut r = Reader { b: body, at: 0 };
        let mut forms = [None, None, None];
        for f in &mut forms {
            *f = match r.byte()? {
                0 => None,
                k @ (1 | 2) => Some(Template {
                    pre: r.str()?.to_string(),
                    post: r.str()?.to_string(),
                    sized: k == 2,
                }),
                _ => return Err(BadListing("unknown form")),
            };
        }
        let listed = match r.byte()? {
            0 => None,
            1 => Some(Listed {
                namespace: r.str()?.to_string(),
                revision: r.str()?.to_string(),
            }),
            _ => return Err(BadListing("unknown listed")),
        };
        let n = r.varint()?;
        let head = b"LST1".len() + r.at;
        b.drain(..head);
        let arena = b;
        let mut starts = Vec::with_capacity(usize::try_from(n.min(1 << 26)).unwrap_or(0));
        let mut a = Reader { b: &arena, at: 0 };
        let mut last: Option<&str> = None;
        for _ in 0..n {
            starts.push(a.at as u64);
            let rec = a.record()?;
            if last.is_some_and(|l| l > rec.path) {
                return Err(BadListing("records out of order"));
            }
            last = Some(rec.path);
        }
        if a.at != arena.len() {
            return Err(BadListing("trailing bytes"));
        }
        let [uri, key, locator] = forms;
        Ok(Listing {
            uri,
            key,
            locator,
            listed,
            arena,
            starts,
        })
    }
}

impl FromIterator<RemoteFile> for Listing {
    fn from_iter<I: IntoIterator<Item = RemoteFile>>(files: I) -> Listing {
        Listing::new(files)
    }
}

/// Builds a [`Listing`] a file (or a page of files) at a time: what an origin's pages are
/// pushed into, so that a listing is never held as `RemoteFile`s.
#[derive(Default)]
pub struct ListingBuilder {
    l: Listing,
    sorted: bool,
    last_path: String,
}

impl ListingBuilder {
    /// Adds `f`.
    pub fn push(&mut self, f: &RemoteFile) {
        let l = &mut self.l;
        if l.is_empty() {
            l.uri = Template::learn(&f.uri, &f.path, f.size);
            l.locator = Template::learn(&f.locator, &f.path, f.size);
            if f.digest.is_none() {
                l.key = Template::learn(&f.key, &f.path, f.size);
            }
            l.listed = f.listed.clone();
            self.sorted = true;
        } else if l.key.is_none() && f.digest.is_none() {
            l.key = Template::learn(&f.key, &f.path, f.size);
        }
        if self.sorted && f.path.as_str() < self.last_path.as_str() {
            self.sorted = false;
        }
        self.last_path.clear();
        self.last_path.push_str(&f.path);
        let fits =
            |t: &Option<Template>, v: &str| t.as_ref().is_some_and(|t| t.fits(v, &f.path, f.size));
        let mut flags = 0;
        match &f.digest {
            Some(Digest::Sha256(_)) => flags |= DIGEST_SHA256,
            Some(Digest::GitBlobSha1(_)) => flags |= DIGEST_GITBLOB,
            None => {}
        }
        if !fits(&l.uri, &f.uri) {
            flags |= URI_WHOLE;
        }
        match &f.digest {
            Some(d) if RemoteFile::key_for_digest(d, f.size) == f.key => flags |= KEY_DIGEST,
            _ if fits(&l.key, &f.key) => {}
            _ => flags |= KEY_WHOLE,
        }
        if !fits(&l.locator, &f.locator) {
            flags |= LOCATOR_WHOLE;
        }
        match (&f.listed, &l.listed) {
            (a, b) if a == b => {}
            (None, _) => flags |= LISTED_NONE,
            (Some(_), _) => flags |= LISTED_WHOLE,
        }
        l.starts.push(l.arena.len() as u64);
        let out = &mut l.arena;
        put_varint(out, f.size);
        out.push(flags);
        put_str(out, &f.path);
        if let Some(d) = &f.digest {
            put_str(out, d.hex());
        }
        if flags & URI_WHOLE != 0 {
            put_str(out, &f.uri);
        }
        if flags & KEY_WHOLE != 0 {
            put_str(out, &f.key);
        }
        if flags & LOCATOR_WHOLE != 0 {
            put_str(out, &f.locator);
        }
        if let (true, Some(listed)) = (flags & LISTED_WHOLE != 0, &f.listed) {
            put_str(out, &listed.namespace);
            put_str(out, &listed.revision);
        }
    }

    /// Files pushed so far.
    pub fn len(&self) -> usize {
        self.l.len()
    }

    /// Whether none was pushed.
    pub fn is_empty(&self) -> bool {
        self.l.is_empty()
    }

    /// The listing, in path order.
    pub fn finish(self) -> Listing {
        let mut l = self.l;
        if !self.sorted {
            let mut order: Vec<usize> = (0..l.len()).collect();
            order.sort_by(|a, b| l.path(*a).cmp(l.path(*b)));
            let mut arena = Vec::with_capacity(l.arena.len());
            let mut starts = Vec::with_capacity(l.len());
            for i in order {
                let s = l.starts[i] as usize;
                let e = l.record_end(s);
                starts.push(arena.len() as u64);
                arena.extend_from_slice(&l.arena[s..e]);
            }
            l.arena = arena;
            l.starts = starts;
        }
        l.arena.shrink_to_fit();
        l.starts.shrink_to_fit();
        l
    }
}

/// Some files of a listing: all, a folder's (one range), or one; with a path prefix taken off
/// (`strip` bytes), as when a folder or file is named inside an enclosing listing.
#[derive(Clone, Debug)]
pub struct Files {
    listing: Arc<Listing>,
    range: Range<usize>,
    strip: usize,
}

impl Files {
    /// Every file of `listing`.
    pub fn all(listing: Arc<Listing>) -> Files {
        let range = 0..listing.len();
        Files {
            listing,
            range,
            strip: 0,
        }
    }

    /// Files `range` of `listing`, their paths without their first `strip` bytes.
    pub fn part(listing: Arc<Listing>, range: Range<usize>, strip: usize) -> Files {
        let range = range.start.min(listing.len())..range.end.min(listing.len());
        Files {
            listing,
            range,
            strip,
        }
    }

    /// One file.
    pub fn one(f: RemoteFile) -> Files {
        Files::all(Arc::new(Listing::new([f])))
    }

    /// The listing these files are of.
    pub fn listing(&self) -> &Arc<Listing> {
        &self.listing
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.range.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    /// Where the `i`th is in the listing.
    fn at(&self, i: usize) -> Option<usize> {
        self.range
            .start
            .checked_add(i)
            .filter(|j| *j < self.range.end)
    }

    /// The `i`th.
    pub fn get(&self, i: usize) -> Option<RemoteFile> {
        let mut f = self.listing.get(self.at(i)?)?;
        if self.strip > 0 {
            f.path = f.path.get(self.strip..).unwrap_or_default().to_string();
        }
        Some(f)
    }

    /// The `i`th's URI, path, size and key ([`Listing::brief`]).
    pub fn brief(&self, i: usize) -> Option<Brief> {
        let mut b = self.listing.brief(self.at(i)?)?;
        if self.strip > 0 {
            b.path = b.path.get(self.strip..).unwrap_or_default().to_string();
        }
        Some(b)
    }

    /// How many of these files' paths (as [`Files::get`] shows them) sort before `path`: where
    /// `path` is or would be (a binary search; paths are in order).
    pub fn lower_bound(&self, path: &str) -> usize {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let p = self.listing.path(self.range.start + mid);
            match p.get(self.strip..).unwrap_or_default() < path {
                true => lo = mid + 1,
                false => hi = mid,
            }
        }
        lo
    }

    /// The first.
    pub fn first(&self) -> Option<RemoteFile> {
        self.get(0)
    }

    /// All of them, in path order.
    pub fn iter(&self) -> impl Iterator<Item = RemoteFile> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }

    /// One level of folder `prefix` (empty, or ending in `/`, as these files' paths read):
    /// the files directly in it, and the names of the folders in it, each once. A folder of
    /// any size costs a binary search, not a walk: one folder of a 2M-file dataset is read as
    /// quickly as a small one. Files that follow each other in the listing (a folder without
    /// subfolders between its files, the usual case) are a view of it, not a copy (so the
    /// result's [`Files::listing`] may be the whole listing).
    pub fn children(&self, prefix: &str) -> (Files, Vec<String>) {
        let mut runs: Vec<Range<usize>> = Vec::new();
        let mut folders = Vec::new();
        if self.is_empty() {
            return (Files::all(Arc::new(Listing::default())), folders);
        }
        // The prefix as the listing's own paths read (these files' paths lack `strip` bytes).
        let taken = self
            .listing
            .path(self.range.start)
            .get(..self.strip)
            .unwrap_or_default();
        let full = format!("{taken}{prefix}");
        let l = &*self.listing;
        let mut i = self.range.start + l.count_while(self.range.start, |p| p < full.as_str());
        let end = self.range.end;
        while i < end {
            let path = l.path(i);
            let Some(rest) = path.strip_prefix(full.as_str()) else {
                break;
            };
            match rest.split_once('/') {
                Some((name, _)) => {
                    let inside = format!("{full}{name}/");
                    folders.push(name.to_string());
                    i += l.count_while(i, |p| p.starts_with(inside.as_str())).max(1);
                }
                None => {
                    match runs.last_mut() {
                        Some(r) if r.end == i => r.end = i + 1,
                        _ => runs.push(i..i + 1),
                    }
                    i += 1;
                }
            }
        }
        let files = match runs.as_slice() {
            [] => Files::all(Arc::new(Listing::default())),
            [one] => Files::part(self.listing.clone(), one.clone(), self.strip),
            _ => {
                let mut b = ListingBuilder::default();
                for f in runs
                    .into_iter()
                    .flatten()
                    .filter_map(|i| self.get(i - self.range.start))
                {
                    b.push(&f);
                }
                Files::all(Arc::new(b.finish()))
            }
        };
        (files, folders)
    }
}

/// The folders a tree entry at `path` (under folder `prefix`, empty or ending in `/`) lies in,
/// as the Hub's tree lists them before the entry: all of them when `recursive`, else the
/// first only (and only for a path deeper than one level).
pub fn tree_folders(prefix: &str, path: &str, recursive: bool) -> Vec<String> {
    let rest = path.strip_prefix(prefix).unwrap_or(path);
    let parts: Vec<&str> = rest.split('/').collect();
    let depth = match recursive {
        true => parts.len() - 1,
        false => parts.len().min(2) - 1,
    };
    (0..depth)
        .map(|i| format!("{prefix}{}", parts[..=i].join("/")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(i: usize) -> RemoteFile {
        let rev = "c".repeat(40);
        let path = format!("{:04}/{i:08}.bin", i / 1000);
        RemoteFile {
            uri: format!("hf://datasets/acme/big@{rev}/{path}"),
            locator: format!("datasets/acme/big/resolve/{rev}/{path}"),
            key: format!("gitblob:{:040x}:{}", i, 100 + i % 7),
            digest: Some(Digest::GitBlobSha1(format!("{i:040x}"))),
            size: 100 + (i % 7) as u64,
            path,
            listed: None,
        }
    }

    #[test]
    fn files_read_back_as_they_were_pushed_whatever_their_form() {
        let mut files: Vec<RemoteFile> = (0..500).map(hub).collect();
        // Files that fit no form: kept whole.
        files[3].uri = "hf://elsewhere/x".into();
        files[4].key = "sha256:odd:1".into();
        files[5].locator = "moved/0000/00000005.bin?x".into();
        files[6].digest = None;
        files[6].key = format!("hf:datasets/acme/big@c/{}:{}", files[6].path, files[6].size);
        files[7].digest = Some(Digest::Sha256("d".repeat(64)));
        files[8].listed = Some(Listed {
            namespace: "s3://b/p".into(),
            revision: "ls-1".into(),
        });
        files[9].path = "0000/0000009.bin".into();
        files.reverse();
        let l = Listing::new(files.clone());
        let mut want = files;
        want.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(l.iter().collect::<Vec<_>>(), want);
        // The brief form says the same as the whole file, whatever its form.
        for (i, f) in want.iter().enumerate() {
            let b = l.brief(i).unwrap();
            assert_eq!(
                (&b.uri, &b.path, b.size, &b.key),
                (&f.uri, &f.path, f.size, &f.key)
            );
        }
        assert!(l.brief(want.len()).is_none());
        let back = Listing::from_bytes(l.to_bytes()).unwrap();
        assert_eq!(back.iter().collect::<Vec<_>>(), want);
        // Handed over in parts (the index writes them in pieces), the same bytes.
        let mut parts = Vec::new();
        l.write_bytes(&mut |b| parts.extend_from_slice(b));
        assert_eq!(parts, l.to_bytes());
        assert_eq!(back, l);
        // Compact: well under a tenth of the strings' bytes.
        let strings: usize = want
            .iter()
            .map(|f| f.uri.len() + f.key.len() + f.locator.len() + f.path.len() + 40)
            .sum();
        assert!(
            l.weight() * 2 < strings as u64,
            "{} of {strings}",
            l.weight()
        );
    }

    #[test]
    fn a_part_finds_where_a_path_goes_by_its_own_paths() {
        let l = Arc::new(Listing::new((0..3000).map(hub)));
        let part = Files::part(l.clone(), l.under("0001/"), "0001/".len());
        assert_eq!(part.len(), 1000);
        assert_eq!(part.lower_bound(""), 0);
        assert_eq!(part.lower_bound("00001000.bin"), 0);
        assert_eq!(part.lower_bound("00001500.bin"), 500);
        assert_eq!(part.lower_bound("00001500.bin0"), 501);
        assert_eq!(part.lower_bound("z"), 1000);
        let all = Files::all(l);
        assert_eq!(all.lower_bound("0002/"), 2000);
    }

    #[test]
    fn keys_made_of_path_and_size_are_not_stored() {
        let files: Vec<RemoteFile> = (0..100)
            .map(|i| {
                let path = format!("d/{i}");
                RemoteFile {
                    uri: format!("s3://b/p/{path}"),
                    key: format!("hf:acme@r/{path}:{i}"),
                    locator: format!("p/{path}"),
                    digest: None,
                    size: i,
                    path,
                    listed: None,
                }
            })
            .collect();
        let l = Listing::new(files.clone());
        let mut want = files;
        want.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(l.iter().collect::<Vec<_>>(), want);
        // Only size, flags and path per record.
        assert!(l.arena.len() < 100 * 8, "{}", l.arena.len());
    }

    #[test]
    fn a_file_and_a_folder_are_found_by_search() {
        let l = Listing::new((0..3000).map(hub));
        assert_eq!(l.find("0001/00001500.bin"), Some(1500));
        assert_eq!(l.find("0001/0000150.bin"), None);
        assert_eq!(l.under("0002/"), 2000..3000);
        assert_eq!(l.under("0001/0000100"), 1000..1010);
        assert_eq!(l.under("0009/"), 3000..3000);
        let f = Files::part(Arc::new(l), 1000..2000, 5);
        assert_eq!(f.len(), 1000);
        assert_eq!(f.first().unwrap().path, "00001000.bin");
        assert_eq!(f.get(1000), None);
        let (b, g) = (f.brief(7).unwrap(), f.get(7).unwrap());
        assert_eq!(
            (b.uri, b.path, b.size, b.key),
            (g.uri, g.path, g.size, g.key)
        );
        assert_eq!(f.brief(1000), None);
    }

    #[test]
    fn one_level_of_a_folder_is_its_files_and_its_folders_names() {
        let mut files: Vec<RemoteFile> = (0..3000).map(hub).collect();
        let mut top = hub(5000);
        top.path = "top.bin".into();
        top.uri = format!("hf://datasets/acme/big@{}/top.bin", "c".repeat(40));
        files.push(top);
        let mut deep = hub(5001);
        deep.path = "0001/sub/deep.bin".into();
        files.push(deep);
        let all = Arc::new(Listing::new(files));
        let (f, d) = Files::all(all.clone()).children("");
        assert_eq!(f.iter().map(|f| f.path).collect::<Vec<_>>(), ["top.bin"]);
        assert_eq!(d, ["0000", "0001", "0002"]);
        let (f, d) = Files::all(all.clone()).children("0001/");
        assert_eq!(f.len(), 1000);
        assert_eq!(f.get(0).unwrap().path, "0001/00001000.bin");
        assert_eq!(d, ["sub"]);
        // A part with its prefix taken off reads the same folder by its own paths.
        let part = Files::part(all.clone(), all.under("0001/"), 5);
        let (f, d) = part.children("");
        assert_eq!(f.len(), 1000);
        assert_eq!(f.get(0).unwrap().path, "00001000.bin");
        assert_eq!(d, ["sub"]);
        let (f, d) = part.children("sub/");
        assert_eq!(f.get(0).unwrap().path, "sub/deep.bin");
        assert!(d.is_empty());
        assert_eq!(Files::all(all).children("nothing/").0.len(), 0);
        // Files with a folder between them: both, in order, the folder once.
        let mut split: Vec<RemoteFile> = (0..3).map(hub).collect();
        for (f, p) in split.iter_mut().zip(["a.bin", "m/x.bin", "z.bin"]) {
            f.path = p.into();
        }
        let (f, d) = Files::all(Arc::new(Listing::new(split))).children("");
        assert_eq!(
            f.iter().map(|f| f.path).collect::<Vec<_>>(),
            ["a.bin", "z.bin"]
        );
        assert_eq!(d, ["m"]);
    }

    #[test]
    fn marking_where_files_were_listed_marks_every_file() {
        let listed = Listed {
            namespace: "s3://b/p".into(),
            revision: "ls-2".into(),
        };
        let mut files: Vec<RemoteFile> = (0..10).map(hub).collect();
        files[2].listed = Some(Listed {
            namespace: "s3://b/q".into(),
            revision: "ls-1".into(),
        });
        let mut l = Listing::new(files);
        l.set_listed(listed.clone());
        assert!(l.iter().all(|f| f.listed.as_ref() == Some(&listed)));
    }

    #[test]
    fn malformed_bytes_are_refused_without_a_panic() {
        let good = Listing::new((0..50).map(hub)).to_bytes();
        assert!(Listing::from_bytes(Vec::new()).is_err());
        assert!(Listing::from_bytes(b"LST1".to_vec()).is_err());
        for cut in [5, 20, good.len() / 2, good.len() - 1] {
            assert!(
                Listing::from_bytes(good[..cut].to_vec()).is_err(),
                "cut at {cut}"
            );
        }
        let mut extra = good.clone();
        extra.push(0);
        assert!(Listing::from_bytes(extra).is_err());
        // Every single-byte change: refused or read as some listing, never a panic.
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0x5a;
            let _ = Listing::from_bytes(b).map(|l| l.iter().count());
        }
    }
}
