//! The mounted tree: inodes, the listings they come from, and how they change.
//!
//! **An inode's identity never changes.** A file inode is one version (URI and cache key) of
//! one name, so the kernel may keep its attributes and pages for as long as it likes
//! (`FOPEN_KEEP_CACHE`, passthrough). When a listing is refreshed (its TTL passed) and a name
//! now lists as another version, or is gone, the name gets a new inode (or none) and the old
//! one is *unlinked*: it lives on while the kernel holds it (its lookup count), so a file open
//! across the change keeps reading the version it opened, and is freed when the kernel forgets
//! it. Inode numbers are never reused.
//!
//! A *root* is a folder filled from one listing: the mount's root for `locus mount`, each repo
//! or bucket named in the namespace view. A listed file is a name without an inode until it
//! is looked up or its folder read (`Kind::Dir::pending`). The namespace view keeps at most
//! [`Tree::max_linked`] linked names (inodes and pending files): past that, the roots used least recently (and folders
//! of organisations left without repos) are unlinked, and listed again when named again.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::{ChunkInfo, Entry, Listing};

/// A directory whose children appear when looked up (the namespace view: the Hub cannot be
/// listed, but any repo can be named).
#[derive(Clone, Debug)]
pub(crate) enum Lazy {
    /// `hf/`: `datasets` and every ORG.
    Hf,
    /// `hf/datasets/`: every ORG of datasets.
    Datasets,
    /// `hf/[datasets/]ORG/`: `NAME` or `NAME@REV`, listed on first lookup.
    Org { datasets: bool, org: String },
    /// `s3/`: every BUCKET, listed on first lookup.
    S3,
    /// A repo or bucket shown because the node caches files of it (`uri`), or a folder of a
    /// listing (the listing said it is there, one level at a time), listed when first entered
    /// ([`Tree::promote`]): showing it costs no listing.
    Repo { uri: String },
}

pub(crate) enum Kind {
    Dir {
        children: BTreeMap<String, u64>,
        /// Files its listing named that nothing looked up yet: each becomes an inode when
        /// looked up ([`Tree::lookup_child`]), all of them when the folder is read
        /// ([`Tree::fill_pending`]). A walk that opens 50 files of a folder of 1,000 makes 50
        /// inodes, not 1,000; the kernel knows none of these names, so a new listing replaces
        /// them without telling it.
        pending: BTreeMap<String, Entry>,
        /// When `pending` was last set to other names or versions: their inodes' time.
        pending_at: SystemTime,
        lazy: Option<Lazy>,
        /// Changes with the folder's entries.
        version: u64,
        /// The version the kernel may have cached a listing of: an open after a change tells
        /// it to drop that listing.
        kernel_version: AtomicU64,
    },
    File {
        uri: String,
        key: String,
        size: u64,
        cached: Option<ChunkInfo>,
    },
    /// A symbolic link: `NAME@main` in the namespace view points at `NAME`, so that one repo
    /// is not two trees (twice the bytes to `du`, two copies in the page cache).
    Link { target: String },
}

pub(crate) struct Inode {
    pub parent: u64,
    pub kind: Kind,
    /// The root whose listing this inode came from (itself for a root); 0 for the namespace
    /// view's own folders.
    pub root: u64,
    /// Lookups the kernel holds (each entry handed to it counts one until it forgets them).
    pub lookups: AtomicU64,
    /// Reachable from the mount's root.
    pub linked: bool,
    /// When it was made (a file: when this version was listed, or for one made from a pending
    /// name, when its folder's pending names were last set) or, for a folder, last changed.
    pub changed: SystemTime,
}

/// A folder filled from one listing.
pub(crate) struct Root {
    pub uri: String,
    /// How long a listing stays current; `None`: never changes (a commit).
    pub ttl: Option<Duration>,
    /// When the listing was current at the origin (its answer's time less its age).
    pub listed_at: Instant,
    /// Last use, in milliseconds since the mount started: the least recent go first.
    pub used: AtomicU64,
    /// Held while the listing is refreshed: one refresh at a time.
    pub refreshing: Arc<Mutex<()>>,
    /// A refresh ahead of the TTL was started for the listing shown ([`Tree::due_root`]).
    ahead: AtomicBool,
    /// The digest of the listing shown.
    digest: Option<u64>,
    /// Files in the listing shown.
    files: usize,
    /// Stale first reads of its files, and its last learn ([`Tree::stale_read`]).
    learning: Arc<Mutex<Learning>>,
}

/// First reads of a root's files that found the node holding what its listing did not show
/// (cached since: a warm beside the readers), counted towards asking the root again.
#[derive(Default)]
pub(crate) struct Learning {
    /// Such reads since the last learn.
    stale: u32,
    /// When the last learn ended, and the wait before the next (longer after one that
    /// learned little).
    at: Option<Instant>,
    every: Duration,
    busy: bool,
}

/// A root is asked again for what the node holds after this many stale first reads, plus one
/// per [`LEARN_PER_FILES`] files listed (the answer costs as much as the listing) ...
const LEARN_AFTER: u32 = 8;
const LEARN_PER_FILES: usize = 128;
/// ... and at most this often, twice as long after each learn that learned less than one
/// file per `LEARN_PER_FILES` listed (what a new listing cannot mend: files present but not
/// yet checked, a name moved to a new version), up to `LEARN_EVERY_MAX`.
const LEARN_EVERY: Duration = Duration::from_secs(1);
const LEARN_EVERY_MAX: Duration = Duration::from_secs(64);

/// A learn under way ([`Tree::stale_read`]): ends when dropped, however it went.
pub(crate) struct Learn {
    pub root: u64,
    pub uri: String,
    /// The root's refresh gate: a refresh under way brings the same news.
    pub gate: Arc<Mutex<()>>,
    files: usize,
    learned: usize,
    state: Arc<Mutex<Learning>>,
}

impl Learn {
    /// How many files it taught.
    pub fn learned(&mut self, n: usize) {
        self.learned += n;
    }
}

impl Drop for Learn {
    fn drop(&mut self) {
        let mut l = crate::file::lock(&self.state);
        let useful = self.learned > 0 && self.learned * LEARN_PER_FILES >= self.files;
        l.every = match useful {
            true => LEARN_EVERY,
            false => (l.every * 2).clamp(LEARN_EVERY, LEARN_EVERY_MAX),
        };
        l.stale = 0;
        l.at = Some(Instant::now());
        l.busy = false;
    }
}

/// A file whose place (where the node holds its bytes) a listing tells anew: file `name` of
/// folder `dir` (an inode, `ino`, or a pending name), as `entry` lists it.
pub(crate) struct Place<'a> {
    pub dir: u64,
    pub name: &'a str,
    pub ino: Option<u64>,
    pub entry: &'a Entry,
}

/// Whether two places are the same bytes.
fn same_place(a: &ChunkInfo, b: &ChunkInfo) -> bool {
    a.path == b.path && a.chunk_size == b.chunk_size && a.crcs == b.crcs
}

/// What a change did, for the caller to tell the kernel and drop its own state.
#[derive(Default, Debug)]
pub(crate) struct Changes {
    /// Names (folder, name) that now point elsewhere or nowhere: the kernel should drop them.
    pub names: Vec<(u64, String)>,
    /// Folders whose entries changed.
    pub dirs: Vec<u64>,
    /// Inodes gone for good.
    pub freed: Vec<u64>,
    /// Files whose name now points at another version or nowhere.
    pub replaced: u64,
}

impl Changes {
    pub fn merge(&mut self, other: Changes) {
        self.names.extend(other.names);
        self.dirs.extend(other.dirs);
        self.freed.extend(other.freed);
        self.replaced += other.replaced;
    }
}

/// A folder of a root's listing, as names.
#[derive(Default)]
struct WantDir {
    files: BTreeMap<String, Entry>,
    /// Never a name in `files`: a folder wins over a file of the same name.
    dirs: BTreeMap<String, Want>,
}

/// A folder in a root's listing.
enum Want {
    Dir(WantDir),
    /// A folder listed when first entered, by its URI.
    Folder(String),
}

/// A listing made ready outside the tree's lock: its names as a tree, and a digest that tells
/// an unchanged listing (the common case, once per TTL) at once.
pub(crate) struct Prepared {
    want: WantDir,
    files: usize,
    ttl: Option<Duration>,
    age: Duration,
    digest: u64,
}

impl Prepared {
    pub fn new(listing: Listing) -> Prepared {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for e in &listing.entries {
            (&e.path, &e.key, e.size).hash(&mut h);
        }
        listing.folders.hash(&mut h);
        let files = listing.entries.len();
        let mut want = want_tree(listing.entries);
        // A folder wins over a file of the same name, as in `insert_want`.
        for (name, uri) in listing.folders {
            if !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0']) {
                want.files.remove(&name);
                want.dirs.insert(name, Want::Folder(uri));
            }
        }
        Prepared {
            digest: h.finish(),
            files,
            // A TTL of 0 would list the whole root again at every lookup.
            ttl: listing.ttl.map(|t| t.max(MIN_TTL)),
            age: listing.age,
            want,
        }
    }
}

/// The inode number of the mount's root.
pub(crate) const ROOT: u64 = 1;

/// A listing is not asked for again sooner than this.
const MIN_TTL: Duration = Duration::from_secs(1);

/// How long before its TTL a listing in use is asked for again, in the background: a quarter
/// of the TTL (an S3 prefix of 100,000 keys is 100 LIST pages, seconds), so that the readers
/// at the TTL find it current instead of waiting for it. The answer must be younger than this.
pub fn ahead_margin(ttl: Duration) -> Duration {
    ttl / 4
}

/// An organisation's folder is not dropped this soon after it was made: a path walk
/// (`hf/ORG/NAME`) looks up its repo right after it.
const ORG_GRACE: Duration = Duration::from_secs(1);

pub(crate) struct Tree {
    nodes: HashMap<u64, Inode>,
    next: u64,
    pub roots: HashMap<u64, Root>,
    /// Names reachable from the mount's root: inodes and pending files.
    linked: usize,
    /// The bound on linked names past which roots are evicted (the namespace view).
    pub max_linked: usize,
    /// The namespace view's organisation folders.
    orgs: std::collections::BTreeSet<u64>,
    started: Instant,
}

fn dir_kind(lazy: Option<Lazy>) -> Kind {
    Kind::Dir {
        children: BTreeMap::new(),
        pending: BTreeMap::new(),
        pending_at: SystemTime::now(),
        lazy,
        version: 0,
        kernel_version: AtomicU64::new(0),
    }
}

/// Adds `e` under `parts` of its path: a folder wins over a file of the same name, and of two
/// files of one name the first stays.
fn insert_want(m: &mut WantDir, parts: &[&str], e: Entry) {
    match parts {
        [] => {}
        [last] => {
            if !m.dirs.contains_key(*last) {
                m.files.entry(last.to_string()).or_insert(e);
            }
        }
        [d, rest @ ..] => {
            m.files.remove(*d);
            let w = m
                .dirs
                .entry(d.to_string())
                .or_insert_with(|| Want::Dir(WantDir::default()));
            if let Want::Dir(next) = w {
                insert_want(next, rest, e)
            }
        }
    }
}

fn want_tree(entries: Vec<Entry>) -> WantDir {
    let mut top = WantDir::default();
    for mut e in entries {
        // Kept as names in the tree: a pending entry does not hold its path twice.
        let path = std::mem::take(&mut e.path);
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        // A name the kernel could not show as it is: never one of these from a sane origin.
        if parts
            .iter()
            .any(|p| *p == "." || *p == ".." || p.contains('\0'))
        {
            tracing::warn!(path, "skipping a listed name that cannot be shown");
            continue;
        }
        insert_want(&mut top, &parts, e);
    }
    top
}

impl Tree {
    fn empty(max_linked: usize) -> Tree {
        let mut t = Tree {
            nodes: HashMap::new(),
            next: ROOT + 1,
            roots: HashMap::new(),
            linked: 1,
            max_linked,
            orgs: Default::default(),
            started: Instant::now(),
        };
        t.nodes.insert(
            ROOT,
            Inode {
                parent: ROOT,
                kind: dir_kind(None),
                root: 0,
                lookups: AtomicU64::new(0),
                linked: true,
                changed: SystemTime::now(),
            },
        );
        t
    }

    /// A tree of one listing of `uri` at the root.
    pub fn listed(uri: &str, listing: Prepared) -> Tree {
        let mut t = Tree::empty(usize::MAX);
        t.make_root(ROOT, uri);
        if let Some(n) = t.nodes.get_mut(&ROOT) {
            n.root = ROOT;
        }
        t.sync_root(ROOT, listing);
        t
    }

    /// The namespace view: `hf/` and `s3/`, filled as names are looked up.
    pub fn namespace(max_linked: usize) -> Tree {
        let mut t = Tree::empty(max_linked);
        t.add(ROOT, "hf", 0, dir_kind(Some(Lazy::Hf)));
        t.add(ROOT, "s3", 0, dir_kind(Some(Lazy::S3)));
        t
    }

    pub fn get(&self, ino: u64) -> Option<&Inode> {
        self.nodes.get(&ino)
    }

    /// Names reachable from the root: inodes, and files listed but not looked up yet.
    pub fn linked(&self) -> usize {
        self.linked
    }

    /// Inodes held, linked or waiting for the kernel to forget them.
    pub fn held(&self) -> usize {
        self.nodes.len()
    }

    /// The child `name` of folder `parent`, if it is an inode already (see
    /// [`Tree::lookup_child`]).
    pub fn child(&self, parent: u64, name: &str) -> Option<u64> {
        match &self.nodes.get(&parent)?.kind {
            Kind::Dir { children, .. } => children.get(name).copied(),
            Kind::File { .. } | Kind::Link { .. } => None,
        }
    }

    /// Whether folder `dir` has listed files without inodes.
    pub fn has_pending(&self, dir: u64) -> bool {
        matches!(
            self.nodes.get(&dir).map(|n| &n.kind),
            Some(Kind::Dir { pending, .. }) if !pending.is_empty()
        )
    }

    /// The child `name` of folder `parent`, made an inode now if it is a listed file nothing
    /// looked up before.
    pub fn lookup_child(&mut self, parent: u64, name: &str) -> Option<u64> {
        if let Some(ino) = self.child(parent, name) {
            return Some(ino);
        }
        self.make_pending(parent, Some(name))
    }

    /// Makes every listed file of folder `dir` an inode (its entries are about to be read).
    /// Its names are the same, so its version stays.
    pub fn fill_pending(&mut self, dir: u64) {
        self.make_pending(dir, None);
    }

    /// Makes folder `dir`'s pending file `name` (or all of them) inodes, with the time they
    /// were listed; the last one's number.
    fn make_pending(&mut self, dir: u64, name: Option<&str>) -> Option<u64> {
        let node = self.nodes.get_mut(&dir)?;
        let root = node.root;
        let Kind::Dir {
            pending,
            pending_at,
            ..
        } = &mut node.kind
        else {
            return None;
        };
        let at = *pending_at;
        let taken: Vec<(String, Entry)> = match name {
            Some(n) => pending.remove_entry(n).into_iter().collect(),
            None => std::mem::take(pending).into_iter().collect(),
        };
        // Counted while pending: each inode takes its name's place.
        self.linked -= taken.len();
        let made: Vec<(String, u64)> = taken
            .into_iter()
            .map(|(name, e)| (name, self.file_inode(dir, root, e, at)))
            .collect();
        let last = made.last().map(|(_, ino)| *ino);
        if let Some(Kind::Dir { children, .. }) = self.nodes.get_mut(&dir).map(|n| &mut n.kind) {
            children.extend(made);
        }
        last
    }

    /// The root whose listing `ino` came from, if that listing's TTL has passed.
    pub fn stale_root(&self, ino: u64) -> Option<u64> {
        let root = self.nodes.get(&ino)?.root;
        let r = self.roots.get(&root)?;
        let ttl = r.ttl?;
        (r.listed_at.elapsed() >= ttl).then_some(root)
    }

    /// The root whose listing `ino` came from, if that listing is within [`ahead_margin`] of
    /// its TTL and no refresh ahead of it was started since it was listed (marks one started).
    pub fn due_root(&self, ino: u64) -> Option<u64> {
        let root = self.nodes.get(&ino)?.root;
        let r = self.roots.get(&root)?;
        let ttl = r.ttl?;
        let age = r.listed_at.elapsed();
        (age >= ttl - ahead_margin(ttl) && age < ttl && !r.ahead.swap(true, Ordering::Relaxed))
            .then_some(root)
    }

    /// How long the kernel may keep names in folder `dir`: its listing's TTL, at most `max`.
    pub fn ttl_in(&self, dir: u64, max: Duration) -> Duration {
        self.nodes
            .get(&dir)
            .and_then(|n| self.roots.get(&n.root))
            .and_then(|r| r.ttl)
            .map_or(max, |t| t.min(max))
    }

    /// Counts a first read of file `ino` that found the node holding it though its root's
    /// listing did not say so. Enough of them, not too soon after the last learn and none
    /// under way: a learn of the root ([`Tree::places_to_learn`], [`Tree::learn`]).
    pub fn stale_read(&self, ino: u64) -> Option<Learn> {
        let root = self.nodes.get(&ino)?.root;
        let r = self.roots.get(&root)?;
        let mut l = crate::file::lock(&r.learning);
        l.stale = l.stale.saturating_add(1);
        let enough = LEARN_AFTER.saturating_add((r.files / LEARN_PER_FILES) as u32);
        let every = l.every.max(LEARN_EVERY);
        if l.busy || l.stale < enough || l.at.is_some_and(|t| t.elapsed() < every) {
            return None;
        }
        l.busy = true;
        Some(Learn {
            root,
            uri: r.uri.clone(),
            gate: r.refreshing.clone(),
            files: r.files,
            learned: 0,
            state: r.learning.clone(),
        })
    }

    /// Whether root `root` shows the names and versions of `listing` already.
    pub fn shows(&self, root: u64, listing: &Prepared) -> bool {
        self.roots
            .get(&root)
            .is_some_and(|r| r.digest == Some(listing.digest))
    }

    /// The files of root `root` whose place `listing` (of the root) tells anew: names at the
    /// version listed, in folders of the root's own listing. Names and versions do not
    /// change here (that is the TTL's refresh).
    pub fn places_to_learn<'a>(&self, root: u64, listing: &'a Prepared) -> Vec<Place<'a>> {
        let mut out = Vec::new();
        self.places_in(root, root, &listing.want, &mut out);
        out
    }

    fn places_in<'a>(&self, root: u64, dir: u64, want: &'a WantDir, out: &mut Vec<Place<'a>>) {
        for (name, e) in &want.files {
            let Some(info) = &e.cached else { continue };
            if let Some((ino, had)) = self.place_of(dir, name, e) {
                if !had.is_some_and(|h| same_place(h, info)) {
                    out.push(Place {
                        dir,
                        name,
                        ino,
                        entry: e,
                    });
                }
            }
        }
        for (name, w) in &want.dirs {
            let Want::Dir(inner) = w else { continue };
            let own = self.child(dir, name).filter(|d| {
                !self.roots.contains_key(d)
                    && self.nodes.get(d).is_some_and(|n| {
                        n.root == root && matches!(n.kind, Kind::Dir { lazy: None, .. })
                    })
            });
            if let Some(d) = own {
                self.places_in(root, d, inner, out);
            }
        }
    }

    /// File `name` of folder `dir` if it is the version `e` lists: its inode (none while
    /// pending) and its place.
    fn place_of(
        &self,
        dir: u64,
        name: &str,
        e: &Entry,
    ) -> Option<(Option<u64>, Option<&ChunkInfo>)> {
        let Kind::Dir {
            children, pending, ..
        } = &self.nodes.get(&dir)?.kind
        else {
            return None;
        };
        match children.get(name) {
            Some(&ino) => match &self.nodes.get(&ino)?.kind {
                Kind::File { cached, .. } if self.is_file_version(ino, e) => {
                    Some((Some(ino), cached.as_ref()))
                }
                _ => None,
            },
            None => pending
                .get(name)
                .filter(|p| p.key == e.key && p.size == e.size)
                .map(|p| (None, p.cached.as_ref())),
        }
    }

    /// Gives each of `places` its place, where it is still the version listed. How many
    /// changed.
    pub fn learn(&mut self, places: &[Place]) -> usize {
        let mut learned = 0;
        for p in places {
            let (Some(info), Some((ino, _))) =
                (&p.entry.cached, self.place_of(p.dir, p.name, p.entry))
            else {
                continue;
            };
            let slot = match ino {
                Some(ino) => match self.nodes.get_mut(&ino).map(|n| &mut n.kind) {
                    Some(Kind::File { cached, .. }) => cached,
                    _ => continue,
                },
                None => match self.nodes.get_mut(&p.dir).map(|n| &mut n.kind) {
                    Some(Kind::Dir { pending, .. }) => match pending.get_mut(p.name) {
                        Some(e) => &mut e.cached,
                        None => continue,
                    },
                    _ => continue,
                },
            };
            if !slot.as_ref().is_some_and(|had| same_place(had, info)) {
                *slot = Some(info.clone());
                learned += 1;
            }
        }
        learned
    }

    /// Notes a use of `ino`'s root (for eviction).
    pub fn touch(&self, ino: u64) {
        if let Some(r) = self.nodes.get(&ino).and_then(|n| self.roots.get(&n.root)) {
            r.used
                .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
    }

    /// Counts an entry handed to the kernel.
    pub fn looked_up(&self, ino: u64) -> u64 {
        self.nodes
            .get(&ino)
            .map_or(0, |n| n.lookups.fetch_add(1, Ordering::Relaxed))
    }

    /// Whether forgetting `n` lookups of `ino` leaves an unlinked inode nobody holds (then
    /// [`Tree::forget`] frees it; this needs only a read lock).
    pub fn forget_frees(&self, ino: u64, n: u64) -> bool {
        let Some(node) = self.nodes.get(&ino) else {
            return false;
        };
        let left = node
            .lookups
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| {
                Some(l.saturating_sub(n))
            })
            .map_or(0, |l| l.saturating_sub(n));
        left == 0 && !node.linked
    }

    /// Frees `ino` if it is unlinked and the kernel holds it no more.
    pub fn forget(&mut self, ino: u64, ch: &mut Changes) {
        let free = self
            .nodes
            .get(&ino)
            .is_some_and(|n| !n.linked && n.lookups.load(Ordering::Acquire) == 0);
        if free {
            self.nodes.remove(&ino);
            ch.freed.push(ino);
        }
    }

    /// A new linked inode, made at `changed`, in no folder yet.
    fn new_inode(&mut self, parent: u64, root: u64, kind: Kind, changed: SystemTime) -> u64 {
        let ino = self.next;
        self.next += 1;
        self.nodes.insert(
            ino,
            Inode {
                parent,
                kind,
                root,
                lookups: AtomicU64::new(0),
                linked: true,
                changed,
            },
        );
        self.linked += 1;
        ino
    }

    fn add(&mut self, parent: u64, name: &str, root: u64, kind: Kind) -> u64 {
        let ino = self.new_inode(parent, root, kind, SystemTime::now());
        if let Some(Kind::Dir { children, .. }) = self.nodes.get_mut(&parent).map(|n| &mut n.kind) {
            children.insert(name.to_string(), ino);
        }
        self.bump(parent);
        ino
    }

    /// Notes a change of folder `dir`'s entries.
    fn bump(&mut self, dir: u64) {
        if let Some(n) = self.nodes.get_mut(&dir) {
            if let Kind::Dir { version, .. } = &mut n.kind {
                *version += 1;
                n.changed = SystemTime::now();
            }
        }
    }

    /// Adds a lazy folder `name` under `parent` (the namespace view's own folders).
    pub fn add_lazy(&mut self, parent: u64, name: &str, lazy: Lazy) -> u64 {
        let org = matches!(lazy, Lazy::Org { .. });
        let ino = self.add(parent, name, 0, dir_kind(Some(lazy)));
        if org {
            self.orgs.insert(ino);
        }
        ino
    }

    /// Adds a symbolic link `name` to `target` under `parent` (the namespace view's own).
    pub fn add_link(&mut self, parent: u64, name: &str, target: &str) -> u64 {
        let kind = Kind::Link {
            target: target.to_string(),
        };
        self.add(parent, name, 0, kind)
    }

    /// Whether a child may be added to the namespace view's folders without passing the bound
    /// (what is cached is shown only while there is room).
    pub fn has_room(&self) -> bool {
        self.linked < self.max_linked
    }

    /// Makes the placeholder `ino` ([`Lazy::Repo`]) the root of `listing` of `uri`, in place:
    /// its inode stays the one the kernel knows.
    pub fn promote(&mut self, ino: u64, uri: &str, listing: Prepared) -> Changes {
        match self.nodes.get_mut(&ino) {
            Some(n) if n.linked => {
                if let Kind::Dir { lazy, .. } = &mut n.kind {
                    *lazy = None;
                }
                n.root = ino;
            }
            _ => return Changes::default(),
        }
        self.make_root(ino, uri);
        self.sync_root(ino, listing)
    }

    fn make_root(&mut self, ino: u64, uri: &str) {
        self.roots.insert(
            ino,
            Root {
                uri: uri.to_string(),
                ttl: None,
                listed_at: Instant::now(),
                used: AtomicU64::new(self.started.elapsed().as_millis() as u64),
                refreshing: Arc::new(Mutex::new(())),
                ahead: AtomicBool::new(false),
                digest: None,
                files: 0,
                learning: Arc::default(),
            },
        );
    }

    /// Adds folder `name` under `parent`, filled from `listing` of `uri`.
    pub fn add_root(&mut self, parent: u64, name: &str, uri: &str, listing: Prepared) -> u64 {
        let ino = self.add(parent, name, 0, dir_kind(None));
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.root = ino;
        }
        self.make_root(ino, uri);
        self.sync_root(ino, listing);
        ino
    }

    /// Makes root `root` show `listing`: names listed as before keep their inodes; the rest
    /// are unlinked or added. An unchanged listing changes nothing but the time it was listed.
    pub fn sync_root(&mut self, root: u64, listing: Prepared) -> Changes {
        let mut ch = Changes::default();
        let now = Instant::now();
        let Some(r) = self.roots.get_mut(&root) else {
            return ch;
        };
        r.ttl = listing.ttl;
        r.listed_at = now.checked_sub(listing.age).unwrap_or(now);
        // Cleared by a listing not due yet: one that came back as old (the node's answer, not
        // a fresh one) is not asked for ahead again; the first reader past the TTL asks.
        if r.ttl
            .is_none_or(|t| r.listed_at.elapsed() < t - ahead_margin(t))
        {
            r.ahead.store(false, Ordering::Relaxed);
        }
        r.files = listing.files;
        if r.digest.replace(listing.digest) == Some(listing.digest) {
            return ch;
        }
        self.sync_dir(root, root, listing.want, &mut ch);
        ch
    }

    /// Tries again after `after` when a listing could not be refreshed.
    pub fn retry_after(&mut self, root: u64, after: Duration) {
        if let Some(r) = self.roots.get_mut(&root) {
            if let Some(ttl) = r.ttl {
                let now = Instant::now();
                let at = (now + after).checked_sub(ttl).unwrap_or(now);
                r.listed_at = at.min(now);
            }
        }
    }

    fn is_version(&self, ino: u64, want: &Want) -> bool {
        match (self.nodes.get(&ino).map(|n| &n.kind), want) {
            (Some(Kind::Dir { lazy: None, .. }), Want::Dir(_)) => !self.roots.contains_key(&ino),
            (
                Some(Kind::Dir {
                    lazy: Some(Lazy::Repo { uri }),
                    ..
                }),
                Want::Folder(u),
            ) => uri == u,
            // A folder listed since: it is a root of its own, listed again on its own TTL.
            (Some(Kind::Dir { lazy: None, .. }), Want::Folder(u)) => {
                self.roots.get(&ino).is_some_and(|r| r.uri == *u)
            }
            _ => false,
        }
    }

    /// Whether file inode `ino` is the version `e` lists.
    fn is_file_version(&self, ino: u64, e: &Entry) -> bool {
        matches!(
            self.nodes.get(&ino).map(|n| &n.kind),
            Some(Kind::File { key, size, .. }) if *key == e.key && *size == e.size
        )
    }

    fn sync_dir(&mut self, dir: u64, root: u64, mut want: WantDir, ch: &mut Changes) {
        let (old, old_pending) = match self.nodes.get_mut(&dir).map(|n| &mut n.kind) {
            Some(Kind::Dir {
                children, pending, ..
            }) => (std::mem::take(children), std::mem::take(pending)),
            _ => return,
        };
        let mut kept = BTreeMap::new();
        let mut changed = false;
        for (name, ino) in old {
            let is_file = matches!(
                self.nodes.get(&ino).map(|n| &n.kind),
                Some(Kind::File { .. })
            );
            if is_file
                && want
                    .files
                    .get(&name)
                    .is_some_and(|e| self.is_file_version(ino, e))
            {
                want.files.remove(&name);
                kept.insert(name, ino);
                continue;
            }
            match want.dirs.remove(&name) {
                Some(w) if self.is_version(ino, &w) => {
                    if let Want::Dir(inner) = w {
                        self.sync_dir(ino, root, inner, ch);
                    }
                    kept.insert(name, ino);
                }
                other => {
                    if is_file {
                        ch.replaced += 1;
                    }
                    self.unlink(ino, ch);
                    ch.names.push((dir, name.clone()));
                    changed = true;
                    // A file of this name now is left pending: made when looked up again.
                    if let Some(w) = other {
                        kept.insert(name, self.create(dir, root, w, ch));
                    }
                }
            }
        }
        for (name, w) in std::mem::take(&mut want.dirs) {
            kept.insert(name, self.create(dir, root, w, ch));
            changed = true;
        }
        // The kernel never saw pending names: the new ones replace them, and the folder
        // changed only if they differ.
        let same = old_pending.len() == want.files.len()
            && old_pending
                .iter()
                .zip(&want.files)
                .all(|((a, x), (b, y))| a == b && x.key == y.key && x.size == y.size);
        changed |= !same;
        self.linked = self.linked - old_pending.len() + want.files.len();
        if let Some(Kind::Dir {
            children,
            pending,
            pending_at,
            ..
        }) = self.nodes.get_mut(&dir).map(|n| &mut n.kind)
        {
            *children = kept;
            *pending = want.files;
            if !same {
                *pending_at = SystemTime::now();
            }
        }
        if changed {
            self.bump(dir);
            ch.dirs.push(dir);
        }
    }

    /// A new inode for file `e`, listed at `at`; not yet in `parent`'s children.
    fn file_inode(&mut self, parent: u64, root: u64, e: Entry, at: SystemTime) -> u64 {
        let kind = Kind::File {
            uri: e.uri,
            key: e.key,
            size: e.size,
            cached: e.cached,
        };
        self.new_inode(parent, root, kind, at)
    }

    /// A new inode (and, for a folder, its contents) for `w`; not yet in `parent`'s children.
    fn create(&mut self, parent: u64, root: u64, w: Want, ch: &mut Changes) -> u64 {
        let (kind, inner) = match w {
            Want::Dir(m) => (dir_kind(None), Some(m)),
            Want::Folder(uri) => (dir_kind(Some(Lazy::Repo { uri })), None),
        };
        let ino = self.new_inode(parent, root, kind, SystemTime::now());
        if let Some(m) = inner {
            self.sync_dir(ino, root, m, ch);
        }
        ino
    }

    /// Unlinks `ino` and everything under it; frees what the kernel does not hold.
    fn unlink(&mut self, ino: u64, ch: &mut Changes) {
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        if !node.linked {
            return;
        }
        node.linked = false;
        self.linked -= 1;
        let (children, pending) = match &mut node.kind {
            Kind::Dir {
                children, pending, ..
            } => (std::mem::take(children), std::mem::take(pending)),
            Kind::File { .. } | Kind::Link { .. } => Default::default(),
        };
        self.linked -= pending.len();
        if !children.is_empty() || !pending.is_empty() {
            // A folder the kernel still holds lists empty from now on.
            self.bump(ino);
            ch.dirs.push(ino);
        }
        for (_, c) in children {
            self.unlink(c, ch);
        }
        self.roots.remove(&ino);
        self.orgs.remove(&ino);
        self.forget(ino, ch);
    }

    /// Unlinks roots used least recently (never `keep`), then folders of organisations left
    /// without repos, until at most [`Tree::max_linked`] names are linked.
    pub fn evict(&mut self, keep: u64) -> Changes {
        let mut ch = Changes::default();
        if self.linked <= self.max_linked {
            return ch;
        }
        let keep_parent = self.nodes.get(&keep).map_or(0, |n| n.parent);
        let mut roots: Vec<(u64, u64)> = self
            .roots
            .iter()
            .filter(|(ino, _)| **ino != keep && **ino != ROOT)
            .map(|(ino, r)| (r.used.load(Ordering::Relaxed), *ino))
            .collect();
        roots.sort_unstable();
        for (_, ino) in roots {
            if self.linked <= self.max_linked {
                break;
            }
            // A folder of a listing stays, as a placeholder listed again when entered; a repo
            // or bucket goes (its lazy parent shows it again when named).
            let in_listing = self
                .nodes
                .get(&ino)
                .and_then(|n| self.nodes.get(&n.parent))
                .is_some_and(|p| p.root != 0);
            match in_listing {
                true => self.demote(ino, &mut ch),
                false => self.detach(ino, &mut ch),
            }
        }
        if self.linked > self.max_linked {
            let orgs: Vec<u64> = self
                .orgs
                .iter()
                .copied()
                .filter(|ino| *ino != keep && *ino != keep_parent)
                .filter(|ino| {
                    self.nodes.get(ino).is_some_and(|n| {
                        n.changed.elapsed().map_or(true, |age| age >= ORG_GRACE)
                            && matches!(&n.kind, Kind::Dir { children, pending, .. }
                                if children.is_empty() && pending.is_empty())
                    })
                })
                .collect();
            for ino in orgs {
                if self.linked <= self.max_linked {
                    break;
                }
                self.detach(ino, &mut ch);
            }
        }
        ch
    }

    /// Makes root `ino`, a folder of its parent's listing, a placeholder again: what it held is
    /// unlinked, and it is listed again when next entered.
    fn demote(&mut self, ino: u64, ch: &mut Changes) {
        let Some(uri) = self.roots.remove(&ino).map(|r| r.uri) else {
            return;
        };
        let parent_root = self
            .nodes
            .get(&ino)
            .and_then(|n| self.nodes.get(&n.parent))
            .map_or(0, |p| p.root);
        let (children, pending) = match self.nodes.get_mut(&ino) {
            Some(n) => {
                n.root = parent_root;
                match &mut n.kind {
                    Kind::Dir {
                        children,
                        pending,
                        lazy,
                        ..
                    } => {
                        *lazy = Some(Lazy::Repo { uri });
                        (std::mem::take(children), std::mem::take(pending))
                    }
                    _ => return,
                }
            }
            None => return,
        };
        self.linked -= pending.len();
        if !children.is_empty() || !pending.is_empty() {
            self.bump(ino);
            ch.dirs.push(ino);
        }
        for (name, c) in children {
            ch.names.push((ino, name));
            self.unlink(c, ch);
        }
    }

    /// Takes `ino` out of its parent and unlinks it.
    fn detach(&mut self, ino: u64, ch: &mut Changes) {
        let Some(parent) = self.nodes.get(&ino).map(|n| n.parent) else {
            return;
        };
        let mut name = None;
        if let Some(Kind::Dir { children, .. }) = self.nodes.get_mut(&parent).map(|n| &mut n.kind) {
            name = children
                .iter()
                .find(|(_, c)| **c == ino)
                .map(|(n, _)| n.clone());
            if let Some(n) = &name {
                children.remove(n);
            }
        }
        if let Some(n) = name {
            self.bump(parent);
            ch.names.push((parent, n));
            ch.dirs.push(parent);
        }
        self.unlink(ino, ch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, key: &str, size: u64) -> Entry {
        Entry {
            uri: format!("s3://b/{path}"),
            key: key.to_string(),
            path: path.to_string(),
            size,
            cached: None,
        }
    }

    fn listing(entries: Vec<Entry>) -> Prepared {
        Prepared::new(Listing {
            entries,
            ttl: Some(Duration::from_secs(60)),
            age: Duration::ZERO,
            folders: Vec::new(),
        })
    }

    fn lookup(t: &mut Tree, path: &str) -> Option<u64> {
        path.split('/')
            .try_fold(ROOT, |dir, name| t.lookup_child(dir, name))
    }

    fn key_of(t: &Tree, ino: u64) -> String {
        match &t.get(ino).unwrap().kind {
            Kind::File { key, .. } => key.clone(),
            _ => panic!("not a file"),
        }
    }

    fn cached_of(t: &Tree, ino: u64) -> Option<ChunkInfo> {
        match &t.get(ino).unwrap().kind {
            Kind::File { cached, .. } => cached.clone(),
            _ => panic!("not a file"),
        }
    }

    #[test]
    fn a_root_learns_what_the_node_holds_after_enough_stale_reads() {
        let mut all: Vec<Entry> = (0..200)
            .map(|i| entry(&format!("a/f{i}"), "k", 1))
            .collect();
        all.push(entry("x", "k", 1));
        let mut t = Tree::listed("s3://b", listing(all.clone()));
        let f1 = lookup(&mut t, "a/f1").unwrap();
        let x = lookup(&mut t, "x").unwrap();
        // 201 files: 8 + 1 stale reads before the root is asked again, and not while it is.
        for _ in 0..8 {
            assert!(t.stale_read(f1).is_none());
        }
        let mut learn = t.stale_read(f1).expect("a learn");
        assert_eq!((learn.root, learn.uri.as_str()), (ROOT, "s3://b"));
        assert!(t.stale_read(x).is_none(), "one at a time");
        let at = |path: &str| ChunkInfo {
            path: std::path::PathBuf::from(format!("/cache/{path}")),
            size: 1,
            chunk_size: 1 << 20,
            crcs: vec![Some(7)],
            complete: true,
        };
        let held = |e: &Entry, place: &str| Entry {
            cached: Some(at(place)),
            ..e.clone()
        };
        let mut now: Vec<Entry> = all.clone();
        now[1] = held(&now[1], "a/f1"); // an inode
        now[2] = held(&now[2], "a/f2"); // a pending name
        now[3] = Entry {
            key: "newer".into(),
            ..held(&now[3], "a/f3")
        }; // another version: not this name's bytes
        now[200] = held(&now[200], "x"); // at the root
        now.push(held(&entry("a/gone", "k", 1), "a/gone")); // not listed here
        let now = listing(now);
        let places = t.places_to_learn(ROOT, &now);
        let names: Vec<&str> = places.iter().map(|p| p.name).collect();
        assert_eq!(names, ["x", "f1", "f2"]);
        assert_eq!(places.iter().filter(|p| p.ino.is_some()).count(), 2);
        assert_eq!(t.learn(&places), 3);
        learn.learned(3);
        drop(learn);
        assert!(cached_of(&t, f1).is_some() && cached_of(&t, x).is_some());
        let f2 = lookup(&mut t, "a/f2").unwrap();
        assert_eq!(
            cached_of(&t, f2).map(|c| c.path),
            Some("/cache/a/f2".into())
        );
        let f3 = lookup(&mut t, "a/f3").unwrap();
        assert!(cached_of(&t, f3).is_none() && key_of(&t, f3) == "k");
        let f4 = lookup(&mut t, "a/f4").unwrap();
        assert!(cached_of(&t, f4).is_none());
        assert!(
            lookup(&mut t, "a/gone").is_none(),
            "names do not change here"
        );
        assert!(t.places_to_learn(ROOT, &now).is_empty(), "learned once");
        // The same names listed again on their TTL: where the node holds them now is news
        // (f1 moved to another cache file, f4 arrived).
        let mut again: Vec<Entry> = all.clone();
        again[1] = held(&again[1], "a/f1-again");
        again[4] = held(&again[4], "a/f4");
        let again = listing(again);
        assert!(t.shows(ROOT, &again) && !t.shows(ROOT, &now));
        let places = t.places_to_learn(ROOT, &again);
        assert_eq!(t.learn(&places), 2);
        assert_eq!(
            cached_of(&t, f1).map(|c| c.path),
            Some("/cache/a/f1-again".into())
        );
        assert_eq!(
            cached_of(&t, f4).map(|c| c.path),
            Some("/cache/a/f4".into())
        );
        // Counting starts again after a learn, and the next one waits LEARN_EVERY ...
        let state = t.roots[&ROOT].learning.clone();
        for _ in 0..20 {
            assert!(t.stale_read(f1).is_none());
        }
        let ago = |d: Duration| crate::file::lock(&state).at = Instant::now().checked_sub(d);
        ago(LEARN_EVERY);
        let learn = t.stale_read(f1).expect("a learn");
        // ... twice as long after one that learned nothing.
        drop(learn);
        for _ in 0..9 {
            assert!(t.stale_read(f1).is_none());
        }
        ago(LEARN_EVERY + LEARN_EVERY / 2);
        assert!(t.stale_read(f1).is_none(), "backed off");
        ago(LEARN_EVERY * 2);
        assert!(t.stale_read(f1).is_some());
    }

    #[test]
    fn a_listed_file_is_an_inode_only_once_looked_up_or_its_folder_read() {
        let files =
            |keys: &[(&str, &str)]| listing(keys.iter().map(|(p, k)| entry(p, k, 1)).collect());
        let names: Vec<String> = (0..1000).map(|i| format!("a/f{i}")).collect();
        let all: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "k")).collect();
        let mut t = Tree::listed("s3://b", files(&all));
        let a = lookup(&mut t, "a").unwrap();
        assert_eq!(t.held(), 2, "the root and `a`: no file is an inode yet");
        assert_eq!(t.linked(), 1002, "the files count while pending");
        assert!(t.child(a, "f5").is_none() && t.has_pending(a));
        let f5 = lookup(&mut t, "a/f5").unwrap();
        assert_eq!(lookup(&mut t, "a/f5"), Some(f5), "one inode for a name");
        std::thread::sleep(Duration::from_millis(20));
        let f6 = lookup(&mut t, "a/f6").unwrap();
        let time = |ino: u64| t.get(ino).unwrap().changed;
        assert_eq!(
            time(f5),
            time(f6),
            "listed together: one time, whenever looked up"
        );
        assert_eq!((t.held(), t.linked()), (4, 1002));
        assert!(lookup(&mut t, "a/nothing").is_none());
        t.fill_pending(a);
        assert!(!t.has_pending(a));
        assert_eq!((t.held(), t.linked()), (1002, 1002));
        assert_eq!(t.child(a, "f5"), Some(f5), "made once");

        // A new listing: pending names are replaced without telling the kernel; a name it
        // holds that changed is replaced as before.
        let mut t = Tree::listed(
            "s3://b",
            files(&[("a/x", "k1"), ("a/y", "k2"), ("a/z", "k3"), ("b/w", "k4")]),
        );
        let x = lookup(&mut t, "a/x").unwrap();
        t.looked_up(x);
        let a = t.child(ROOT, "a").unwrap();
        let b = t.child(ROOT, "b").unwrap();
        let ch = t.sync_root(
            ROOT,
            files(&[("a/x", "k1b"), ("a/y", "k2b"), ("b/w", "k4"), ("b/v", "k5")]),
        );
        assert_eq!(ch.names, vec![(a, "x".to_string())], "only x was an inode");
        assert_eq!(ch.replaced, 1);
        assert!(ch.dirs.contains(&a) && ch.dirs.contains(&b));
        assert!(t.get(x).is_some_and(|n| !n.linked), "held by the kernel");
        let x2 = lookup(&mut t, "a/x").unwrap();
        assert_ne!(x2, x);
        assert_eq!(key_of(&t, x2), "k1b");
        let y = lookup(&mut t, "a/y").unwrap();
        assert_eq!(key_of(&t, y), "k2b", "a pending name lists its new version");
        assert!(lookup(&mut t, "a/z").is_none(), "gone");
        assert_eq!(t.linked(), 2 + 2 + 2 + 1);
        // Unchanged pending names leave their folder's version alone.
        let ch = t.sync_root(
            ROOT,
            files(&[("a/x", "k1b"), ("a/y", "k2c"), ("b/w", "k4"), ("b/v", "k5")]),
        );
        assert!(
            ch.dirs.contains(&a) && !ch.dirs.contains(&b),
            "{:?}",
            ch.dirs
        );
        // A folder unlinked takes its pending names with it.
        let ch = t.sync_root(ROOT, files(&[("a/x", "k1b")]));
        assert!(ch.dirs.contains(&b));
        assert!(t.get(b).is_none_or(|n| !n.linked));
        assert_eq!(t.linked(), 3);
    }

    #[test]
    fn a_new_version_gets_a_new_inode_and_the_old_one_lives_while_held() {
        let mut t = Tree::listed(
            "s3://b",
            listing(vec![entry("a/x", "k1", 1), entry("a/y", "k2", 2)]),
        );
        let x = lookup(&mut t, "a/x").unwrap();
        let y = lookup(&mut t, "a/y").unwrap();
        t.looked_up(x);
        let ch = t.sync_root(
            ROOT,
            listing(vec![entry("a/x", "k1b", 1), entry("a/y", "k2", 2)]),
        );
        let x2 = lookup(&mut t, "a/x").unwrap();
        assert_ne!(x, x2, "a new version must be a new inode");
        assert_eq!(
            lookup(&mut t, "a/y"),
            Some(y),
            "an unchanged name keeps its inode"
        );
        assert_eq!(ch.replaced, 1);
        assert_eq!(
            ch.names,
            vec![(lookup(&mut t, "a").unwrap(), "x".to_string())]
        );
        // The kernel still holds the old inode: it stays, unlinked, until forgotten.
        assert!(t.get(x).is_some_and(|n| !n.linked));
        assert!(t.forget_frees(x, 1));
        let mut ch = Changes::default();
        t.forget(x, &mut ch);
        assert_eq!(ch.freed, vec![x]);
        assert!(t.get(x).is_none());
        assert_eq!(t.linked(), t.held());
    }

    #[test]
    fn names_gone_from_the_listing_are_unlinked_and_freed_when_not_held() {
        let mut t = Tree::listed(
            "s3://b",
            listing(vec![entry("d/e/f", "k1", 1), entry("g", "k2", 2)]),
        );
        lookup(&mut t, "d/e/f").unwrap();
        lookup(&mut t, "g").unwrap();
        let before = t.linked();
        let ch = t.sync_root(ROOT, listing(vec![entry("g", "k2", 2)]));
        assert_eq!(t.linked(), before - 3);
        assert_eq!(
            ch.freed.len(),
            3,
            "d, d/e and d/e/f: none held by the kernel"
        );
        assert!(lookup(&mut t, "d").is_none());
        assert_eq!(t.held(), t.linked());
    }

    #[test]
    fn the_namespace_view_evicts_the_least_recently_used_roots() {
        let mut t = Tree::namespace(20);
        let org = t.add_lazy(
            3,
            "acme",
            Lazy::Org {
                datasets: false,
                org: "acme".into(),
            },
        );
        let files = |n: usize| {
            listing(
                (0..n)
                    .map(|i| entry(&format!("f{i}"), &format!("k{i}"), 1))
                    .collect(),
            )
        };
        let a = t.add_root(org, "a", "hf://acme/a", files(5));
        std::thread::sleep(Duration::from_millis(5));
        let b = t.add_root(org, "b", "hf://acme/b", files(5));
        std::thread::sleep(Duration::from_millis(5));
        t.touch(a);
        let c = t.add_root(org, "c", "hf://acme/c", files(5));
        let ch = t.evict(c);
        assert!(t.linked() <= 20, "{} linked", t.linked());
        assert!(t.child(org, "b").is_none(), "b was used least recently");
        assert_eq!(t.child(org, "a"), Some(a));
        assert_eq!(t.child(org, "c"), Some(c));
        assert!(ch.names.contains(&(org, "b".to_string())));
        assert!(t.get(b).is_none());
    }

    #[test]
    fn unused_organisation_folders_are_bounded_too() {
        let mut t = Tree::namespace(50);
        let mut recent = Vec::new();
        for i in 0..1000 {
            let o = t.add_lazy(
                2,
                &format!("org{i}"),
                Lazy::Org {
                    datasets: false,
                    org: format!("org{i}"),
                },
            );
            // The 10 made last are within their grace; the rest were made long ago.
            recent.push(o);
            if recent.len() > 10 {
                let old = recent.remove(0);
                if let Some(n) = t.nodes.get_mut(&old) {
                    n.changed = SystemTime::now() - ORG_GRACE * 2;
                }
            }
            t.evict(o);
            assert!(t.linked() <= 50 + 10, "{}", t.linked());
        }
        assert!(t.held() <= 60);
        for o in &recent {
            assert!(
                t.get(*o).is_some_and(|n| n.linked),
                "a folder just made stays"
            );
        }
    }
}
