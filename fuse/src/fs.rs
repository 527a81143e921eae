//! The file system: the tree's requests (names, attributes, listings), and the chunked read path.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEntry,
    ReplyOpen, Request,
};

use crate::file::{lock, try_lock, FileState, ReadError};
use crate::open::PASSTHROUGH_MIN;
use crate::tree::{Changes, Kind, Lazy, Prepared, Tree, ROOT};
use crate::{metrics, Backend, FsError};

/// How the mount behaves.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// How long the kernel may cache names and attributes at most: names of a listing that
    /// can change (not at a commit) are kept for its TTL if that is shorter.
    pub ttl: Duration,
    /// The namespace view keeps at most this many names reachable (inodes, and listed files
    /// not looked up yet); past it the repos and buckets used least recently are dropped (and
    /// listed again when named again).
    pub max_inodes: usize,
    /// Hand complete files to the kernel where it supports FUSE passthrough.
    pub passthrough: bool,
    /// How long a request reader waits for the next request before it sleeps (zero: never).
    pub linger: Duration,
    /// Whether the kernel asks this mount to open and close files (see [`Opens`]).
    pub opens: Opens,
}

/// Whether file opens reach the mount.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Opens {
    /// Opens are answered until the mount knows what it serves: the first opens of
    /// [`AUTO_SMALL_OPENS`] distinct files all under 1 MiB (a dataset of small files) turn
    /// them off as [`Opens::Never`] would; a large file opened first (a model, read by
    /// passthrough) keeps them as [`Opens::Always`] does.
    #[default]
    Auto,
    /// Every open and close reaches the mount: large complete files are read by passthrough.
    Always,
    /// The first OPEN is answered ENOSYS: the kernel then opens and closes files without
    /// asking (no OPEN or RELEASE round trip), for datasets of many small files. No file is
    /// then read by passthrough, and cache files are held by reads (see [`HELD_MAX`]), not
    /// opens.
    Never,
}

/// Distinct small files whose opens turn an [`Opens::Auto`] mount's opens off.
pub const AUTO_SMALL_OPENS: u32 = 64;

/// The mount's open mode, in [`Core::opens`]: still counting, or settled.
const OPENS_COUNTING: u8 = 0;
const OPENS_ALWAYS: u8 = 1;
const OPENS_NONE: u8 = 2;

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(3600),
            max_inodes: 1_000_000,
            passthrough: true,
            linger: Duration::from_micros(50),
            opens: Opens::Auto,
        }
    }
}

thread_local! {
    /// Each FUSE worker reuses one buffer: a fresh zeroed allocation per read costs page faults.
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The file system: a request that may wait (on the daemon, the origin or a whole-file check)
/// runs on a blocking pool; the rest is answered on the thread that read it from the kernel,
/// which then takes the next request without sleeping in between.
pub struct LocusFs<B: Backend> {
    core: Arc<Core<B>>,
    pool: tokio::runtime::Runtime,
}

/// A folder's entries in listing order: (inode, name).
type DirEntries = Arc<Vec<(u64, String)>>;

/// Blocking threads for requests that may wait.
const POOL_THREADS: usize = 64;

/// A listing that could not be refreshed is asked for again after this long.
const RELIST_RETRY: Duration = Duration::from_secs(5);

impl<B: Backend> LocusFs<B> {
    /// Lists `uri` through `backend` and builds the tree.
    pub fn new(backend: Arc<B>, uri: &str, opts: MountOptions) -> Result<Self, FsError> {
        let listing = Prepared::new(backend.list(uri)?);
        Self::wrap(Core::with_tree(backend, Tree::listed(uri, listing), opts))
    }

    /// The namespace view: `hf/ORG/NAME[@REV]/…`, `hf/datasets/ORG/NAME[@REV]/…` and
    /// `s3/BUCKET/…`, each repo or bucket listed when first named.
    pub fn namespace(backend: Arc<B>, opts: MountOptions) -> Result<Self, FsError> {
        let tree = Tree::namespace(opts.max_inodes);
        Self::wrap(Core::with_tree(backend, tree, opts))
    }

    fn wrap(core: Core<B>) -> Result<Self, FsError> {
        let pool = tokio::runtime::Builder::new_current_thread()
            .max_blocking_threads(POOL_THREADS)
            .thread_name("locus-fuse-io")
            .build()
            .map_err(|e| FsError::Io(format!("starting the FUSE worker pool: {e}")))?;
        Ok(Self {
            core: Arc::new(core),
            pool,
        })
    }

    /// Where a duplicate of the session's device descriptor goes.
    pub fn device_slot(&self) -> Arc<OnceLock<std::os::fd::OwnedFd>> {
        self.core.device.clone()
    }

    /// Where the session's notifier goes: names that change are dropped from the kernel's cache
    /// through it.
    pub fn notifier_slot(&self) -> Arc<OnceLock<fuser::Notifier>> {
        self.core.notifier.clone()
    }

    /// After an answer, waits a moment for the next request without sleeping, so that it is
    /// taken at once instead of after a wake-up (on a VM, waking an idle vCPU costs tens of
    /// microseconds). One reader thread at a time lingers, so a storm of requests keeps at most
    /// one core busy, and only while requests come faster than the linger.
    fn linger(&self) {
        use std::os::fd::AsRawFd;
        let core = &self.core;
        let Some(fd) = core.device.get() else {
            return;
        };
        if core.linger.is_zero() || core.lingering.swap(true, Ordering::Acquire) {
            return;
        }
        let start = std::time::Instant::now();
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        while start.elapsed() < core.linger {
            // SAFETY: one valid pollfd, zero timeout.
            if unsafe { libc::poll(&mut pfd, 1, 0) } != 0 {
                break;
            }
            std::hint::spin_loop();
        }
        core.lingering.store(false, Ordering::Release);
    }

    /// Runs request `op` on the blocking pool.
    fn offload(&self, op: &'static str, f: impl FnOnce(&Core<B>) + Send + 'static) {
        metrics::request(op, "pool");
        let core = self.core.clone();
        self.pool.spawn_blocking(move || f(&core));
    }
}

struct Core<B: Backend> {
    backend: Arc<B>,
    inodes: RwLock<Tree>,
    files: Mutex<HashMap<u64, Arc<FileState>>>,
    /// Open files: their state, and whether the kernel reads them by passthrough.
    handles: Mutex<HashMap<u64, (Arc<FileState>, bool)>>,
    next_fh: AtomicU64,
    opts: MountOptions,
    mtime: SystemTime,
    uid: u32,
    gid: u32,
    passthrough_on: AtomicBool,
    /// Whether opens are answered: `OPENS_COUNTING` (an [`Opens::Auto`] mount that has not
    /// settled), `OPENS_ALWAYS`, or `OPENS_NONE` (answered ENOSYS, where the kernel supports
    /// it).
    opens: AtomicU8,
    /// Distinct small files opened while counting.
    small_opens: AtomicU32,
    /// Listings of open folders, by handle.
    dir_handles: Mutex<HashMap<u64, DirEntries>>,
    /// Listings of listed folders, with the folder's version they show.
    listings: Mutex<HashMap<u64, (u64, DirEntries)>>,
    /// A duplicate of the session's /dev/fuse descriptor, to see requests waiting.
    device: Arc<OnceLock<std::os::fd::OwnedFd>>,
    /// Tells the kernel to drop names that changed.
    notifier: Arc<OnceLock<fuser::Notifier>>,
    /// Names for the kernel to drop, sent from a thread of its own: the kernel may hold the
    /// folder's lock until the request being answered here gets its reply.
    inval: Mutex<std::sync::mpsc::Sender<Vec<(u64, String)>>>,
    linger: Duration,
    lingering: AtomicBool,
    /// The node's cached repos and buckets, and when they were asked for.
    cached: Mutex<Option<(std::time::Instant, Arc<Vec<String>>)>>,
    /// Opens small cached files ahead of the kernel's open and read (none without threads).
    ahead: Option<crate::ahead::Ahead>,
    /// Without opens: files whose cache file a read left open (it did not reach the end),
    /// longest held first; past [`HELD_MAX`] the first is closed. The states themselves: one
    /// the mount has forgotten meanwhile is still closed here.
    held: Mutex<VecDeque<Arc<FileState>>>,
}

/// Cache files a mount without opens holds for reads that stopped short of a file's end.
pub const HELD_MAX: usize = 256;

/// `NAME` when `name` is `NAME@main` (the Hub's default revision spelled out).
fn default_revision_of(name: &str) -> Option<&str> {
    name.strip_suffix(&format!("@{}", locus_core::uri::DEFAULT_REVISION))
        .filter(|base| !base.is_empty() && !base.contains('@'))
}

/// Places taken in under one hold of the tree's write lock.
const LEARN_BATCH: usize = 4096;

/// How long the node's answer on what it caches is shown before it is asked again.
const CACHED_FOR: Duration = Duration::from_secs(1);

/// The child of lazy folder `lazy` through which cached repo or bucket `uri` is reached:
/// its name and what it is (an organisation's folder, or the repo's placeholder).
fn cached_child(lazy: &Lazy, uri: &str) -> Option<(String, Lazy)> {
    let repo = |name: &str| {
        Some((
            name.to_string(),
            Lazy::Repo {
                uri: uri.to_string(),
            },
        ))
    };
    let org = |datasets: bool, org: &str| {
        let lazy = Lazy::Org {
            datasets,
            org: org.to_string(),
        };
        Some((org.to_string(), lazy))
    };
    if let Some(bucket) = uri.strip_prefix("s3://") {
        return matches!(lazy, Lazy::S3).then(|| repo(bucket)).flatten();
    }
    let parts: Vec<&str> = uri.strip_prefix("hf://")?.split('/').collect();
    match (lazy, &parts[..]) {
        (Lazy::Hf, ["datasets", _, _]) => Some(("datasets".to_string(), Lazy::Datasets)),
        (Lazy::Hf, [o, _]) => org(false, o),
        (Lazy::Datasets, ["datasets", o, _]) => org(true, o),
        (
            Lazy::Org {
                datasets: true,
                org,
            },
            ["datasets", o, n],
        ) if org == o => repo(n),
        (
            Lazy::Org {
                datasets: false,
                org,
            },
            [o, n],
        ) if org == o => repo(n),
        _ => None,
    }
}

impl<B: Backend> Core<B> {
    fn with_tree(backend: Arc<B>, tree: Tree, opts: MountOptions) -> Self {
        let linger = opts.linger;
        let opens = match opts.opens {
            Opens::Auto => OPENS_COUNTING,
            Opens::Always => OPENS_ALWAYS,
            Opens::Never => OPENS_NONE,
        };
        let notifier = Arc::new(OnceLock::<fuser::Notifier>::new());
        let (tx, rx) = std::sync::mpsc::channel::<Vec<(u64, String)>>();
        let slot = notifier.clone();
        let started = std::thread::Builder::new()
            .name("locus-fuse-inval".into())
            .spawn(move || {
                for names in rx {
                    let Some(n) = slot.get() else { continue };
                    for (parent, name) in names {
                        // ENOENT: the kernel had not cached the name.
                        let _ = n.inval_entry(INodeNo(parent), OsStr::new(&name));
                    }
                }
            });
        if let Err(e) = started {
            tracing::warn!(error = %e, "no thread to drop changed names from the kernel's cache");
        }
        Self {
            backend,
            inodes: RwLock::new(tree),
            files: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            opts,
            mtime: SystemTime::now(),
            // SAFETY: getuid/getgid cannot fail and touch no memory.
            uid: unsafe { libc::getuid() },
            // SAFETY: as above.
            gid: unsafe { libc::getgid() },
            passthrough_on: AtomicBool::new(false),
            opens: AtomicU8::new(opens),
            small_opens: AtomicU32::new(0),
            dir_handles: Mutex::new(HashMap::new()),
            listings: Mutex::new(HashMap::new()),
            device: Arc::new(OnceLock::new()),
            notifier,
            inval: Mutex::new(tx),
            linger,
            lingering: AtomicBool::new(false),
            cached: Mutex::new(None),
            ahead: crate::ahead::Ahead::start(),
            held: Mutex::new(VecDeque::new()),
        }
    }

    /// The node's cached repos and buckets, asked again after [`CACHED_FOR`].
    fn cached_namespaces(&self) -> Result<Arc<Vec<String>>, FsError> {
        if let Some((at, c)) = &*lock(&self.cached) {
            if at.elapsed() < CACHED_FOR {
                return Ok(c.clone());
            }
        }
        let c = Arc::new(self.backend.cached()?);
        *lock(&self.cached) = Some((std::time::Instant::now(), c.clone()));
        Ok(c)
    }

    /// Adds to lazy folder `ino` what the node caches at its level: organisation folders, and
    /// placeholders of repos and buckets (listed when entered), while the view has room.
    fn fill(&self, ino: u64, lazy: &Lazy) {
        let cached = match self.cached_namespaces() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "could not ask the node what it caches");
                return;
            }
        };
        let children: Vec<(String, Lazy)> = cached
            .iter()
            .filter_map(|u| cached_child(lazy, u))
            .collect();
        if children.is_empty() {
            return;
        }
        let mut tree = self.tree_mut();
        if !tree.get(ino).is_some_and(|n| n.linked) {
            return;
        }
        for (name, child) in children {
            if tree.child(ino, &name).is_none() && tree.has_room() {
                tree.add_lazy(ino, &name, child);
            }
        }
    }

    /// Lists placeholder `ino` (a cached repo or bucket, [`Lazy::Repo`]) and makes it the root
    /// of that listing, once.
    fn promote(&self, ino: u64, uri: &str) -> Result<(), FsError> {
        let placeholder = |tree: &Tree| {
            matches!(
                tree.get(ino).map(|n| &n.kind),
                Some(Kind::Dir {
                    lazy: Some(Lazy::Repo { .. }),
                    ..
                })
            )
        };
        if !placeholder(&self.tree()) {
            return Ok(());
        }
        let listing = Prepared::new(self.backend.list(uri)?);
        let ch = {
            let mut tree = self.tree_mut();
            // Another thread may have listed it meanwhile.
            if !placeholder(&tree) {
                return Ok(());
            }
            let mut ch = tree.promote(ino, uri, listing);
            ch.merge(tree.evict(ino));
            ch
        };
        self.apply(ch);
        Ok(())
    }

    /// Where symbolic link `ino` points.
    fn link_target(&self, ino: u64) -> Option<String> {
        match &self.tree().get(ino)?.kind {
            Kind::Link { target } => Some(target.clone()),
            _ => None,
        }
    }

    fn tree(&self) -> std::sync::RwLockReadGuard<'_, Tree> {
        self.inodes.read().unwrap_or_else(|p| p.into_inner())
    }

    fn tree_mut(&self) -> std::sync::RwLockWriteGuard<'_, Tree> {
        self.inodes.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The child `name` of a lazy directory: created (and, for a repo, listed) on first lookup;
    /// its entry (`for_kernel`: counted under the lock that made it, see [`Core::entry_for`]).
    fn materialize(
        &self,
        parent: u64,
        lazy: &Lazy,
        name: &str,
        for_kernel: bool,
    ) -> Result<Option<(FileAttr, Duration)>, FsError> {
        enum Made {
            Lazy(Lazy),
            Root(String, Prepared),
            Link(String),
        }
        let made = match lazy {
            Lazy::Repo { uri } => {
                // A name inside a cached repo not entered yet: list it, then look.
                self.promote(parent, uri)?;
                let mut tree = self.tree_mut();
                return Ok(tree
                    .lookup_child(parent, name)
                    .and_then(|ino| self.entry_for(&tree, parent, ino, for_kernel)));
            }
            // `NAME@main` is `NAME`: a link to it, made once `NAME` is known to exist.
            Lazy::Org { .. } if default_revision_of(name).is_some() => {
                let base = default_revision_of(name).unwrap_or_default();
                let known = self.tree().child(parent, base).is_some();
                if !known && self.materialize(parent, lazy, base, false)?.is_none() {
                    return Ok(None);
                }
                Made::Link(base.to_string())
            }
            Lazy::Hf if name == "datasets" => Made::Lazy(Lazy::Datasets),
            Lazy::Hf | Lazy::Datasets => {
                if locus_core::LocusUri::parse(&format!("hf://{name}/x")).is_err() {
                    return Ok(None);
                }
                Made::Lazy(Lazy::Org {
                    datasets: matches!(lazy, Lazy::Datasets),
                    org: name.to_string(),
                })
            }
            Lazy::Org { .. } | Lazy::S3 => {
                let uri = match lazy {
                    Lazy::Org {
                        datasets: true,
                        org,
                    } => format!("hf://datasets/{org}/{name}"),
                    Lazy::Org { org, .. } => format!("hf://{org}/{name}"),
                    _ => format!("s3://{name}"),
                };
                if locus_core::LocusUri::parse(&uri).is_err() {
                    return Ok(None);
                }
                match self.backend.list(&uri) {
                    Ok(listing) => Made::Root(uri, Prepared::new(listing)),
                    Err(FsError::NotFound(_)) => return Ok(None),
                    Err(e) => return Err(e),
                }
            }
        };
        let mut tree = self.tree_mut();
        // A folder dropped from the view meanwhile (the kernel still held it): nothing new
        // goes under it.
        if !tree.get(parent).is_some_and(|n| n.linked) {
            return Ok(None);
        }
        // Another thread may have made it meanwhile.
        if let Some(ino) = tree.lookup_child(parent, name) {
            return Ok(self.entry_for(&tree, parent, ino, for_kernel));
        }
        let ino = match made {
            Made::Lazy(lazy) => tree.add_lazy(parent, name, lazy),
            Made::Root(uri, listing) => tree.add_root(parent, name, &uri, listing),
            Made::Link(target) => tree.add_link(parent, name, &target),
        };
        let ch = tree.evict(ino);
        let answer = self.entry_for(&tree, parent, ino, for_kernel);
        drop(tree);
        self.apply(ch);
        Ok(answer)
    }

    /// Lists root `root` again if its TTL has passed (one thread at a time lists it; the rest
    /// wait for that answer).
    fn refresh(&self, root: u64) {
        self.relist(root, false)
    }

    /// Lists root `root` again: once its TTL has passed, or with `ahead` (on the pool, found
    /// [`Tree::due_root`] by a reader that did not wait) before, from an answer younger than
    /// the margin, unless a refresh is under way.
    fn relist(&self, root: u64, ahead: bool) {
        let gate = self.tree().roots.get(&root).map(|r| r.refreshing.clone());
        let Some(gate) = gate else {
            return;
        };
        let _one = match ahead {
            true => match try_lock(&gate) {
                Some(g) => g,
                None => return,
            },
            false => lock(&gate),
        };
        let asked = {
            let tree = self.tree();
            let root = match ahead {
                true => Some(root),
                false => tree.stale_root(root),
            };
            root.and_then(|r| tree.roots.get(&r))
                .and_then(|r| Some((r.uri.clone(), r.ttl?)))
        };
        let Some((uri, ttl)) = asked else {
            return;
        };
        let answer = match ahead {
            true => self
                .backend
                .list_within(&uri, crate::tree::ahead_margin(ttl)),
            false => self.backend.list(&uri),
        };
        let listing = match answer {
            Ok(l) => l,
            // The whole prefix or folder is gone: so are its names.
            Err(FsError::NotFound(_)) => {
                let ttl = self.tree().roots.get(&root).and_then(|r| r.ttl);
                crate::Listing {
                    ttl,
                    ..crate::Listing::default()
                }
            }
            Err(e) => {
                tracing::warn!(uri, ahead, error = %e, "listing again failed; the names listed before stay");
                metrics::failure("relist");
                // Ahead of the TTL: the listing is still current; the first reader past the
                // TTL asks again.
                if !ahead {
                    self.tree_mut().retry_after(root, RELIST_RETRY);
                }
                return;
            }
        };
        ::metrics::counter!(metrics::RELISTS).increment(1);
        if ahead {
            ::metrics::counter!(metrics::RELISTS_AHEAD).increment(1);
        }
        // Made ready before the tree is locked: a big listing stalls no other request.
        let listing = Prepared::new(listing);
        // The same names (the common case): only where the node holds them may be news.
        if self.tree().shows(root, &listing) {
            self.learn_places(root, &listing);
        }
        let ch = {
            let mut tree = self.tree_mut();
            let mut ch = tree.sync_root(root, listing);
            // As old as its TTL already (the node kept an old answer, its origin being down):
            // ask again a little later, not at every lookup.
            if tree.stale_root(root).is_some() {
                tree.retry_after(root, RELIST_RETRY);
            }
            // A repo that grew counts against the namespace view's bound too.
            ch.merge(tree.evict(root));
            ch
        };
        if ch.replaced > 0 {
            tracing::info!(
                uri,
                names = ch.replaced,
                "names moved to new versions or went away"
            );
        }
        self.apply(ch);
    }

    /// Drops what a change left behind: the states of freed inodes, stale folder listings, and
    /// (on a thread of its own: the kernel may hold locks this request's reply releases) the
    /// kernel's cached names.
    fn apply(&self, ch: Changes) {
        ::metrics::counter!(metrics::VERSIONS_REPLACED).increment(ch.replaced);
        if !ch.freed.is_empty() {
            let mut files = lock(&self.files);
            for ino in &ch.freed {
                files.remove(ino);
            }
        }
        {
            let mut listings = lock(&self.listings);
            for ino in ch.dirs.iter().chain(&ch.freed) {
                listings.remove(ino);
            }
        }
        Self::count_inodes(&self.tree());
        if ch.names.is_empty() {
            return;
        }
        // No thread to take them (it could not start): the kernel drops the names after their
        // TTL anyway.
        let _ = lock(&self.inval).send(ch.names);
    }

    fn count_inodes(tree: &Tree) {
        ::metrics::gauge!(metrics::INODES, "state" => "linked").set(tree.linked() as f64);
        ::metrics::gauge!(metrics::INODES, "state" => "held").set(tree.held() as f64);
    }

    /// The kernel forgets `n` lookups of `ino`.
    fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT || !self.tree().forget_frees(ino, n) {
            return;
        }
        let mut ch = Changes::default();
        self.tree_mut().forget(ino, &mut ch);
        self.apply(ch);
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let tree = self.tree();
        let node = tree.get(ino)?;
        Some(self.attr_of(ino, node))
    }

    /// The entries of folder `ino` in order (".", ".." and its children) and, where the kernel
    /// may keep them, the folder's version they show: a listed folder's are made once per
    /// version; a lazy folder's at each open, as it grows.
    fn listing(&self, ino: u64) -> Result<(DirEntries, Option<u64>), Errno> {
        // Every name read needs its inode; a refresh may leave new pending names between the
        // write guard and the read guard, so look again.
        let tree = loop {
            let tree = self.tree();
            if !tree.has_pending(ino) {
                break tree;
            }
            drop(tree);
            let mut tree = self.tree_mut();
            tree.fill_pending(ino);
            Self::count_inodes(&tree);
        };
        let Some(node) = tree.get(ino) else {
            return Err(Errno::ENOENT);
        };
        let Kind::Dir {
            children,
            lazy,
            version,
            ..
        } = &node.kind
        else {
            return Err(Errno::ENOTDIR);
        };
        if let Some((v, l)) = lock(&self.listings).get(&ino) {
            if v == version {
                return Ok((l.clone(), Some(*v)));
            }
        }
        let mut entries = Vec::with_capacity(children.len() + 2);
        entries.push((ino, ".".to_string()));
        entries.push((node.parent, "..".to_string()));
        entries.extend(children.iter().map(|(name, &child)| (child, name.clone())));
        let entries: DirEntries = Arc::new(entries);
        if lazy.is_some() {
            return Ok((entries, None));
        }
        lock(&self.listings).insert(ino, (*version, entries.clone()));
        Ok((entries, Some(*version)))
    }

    /// Calls `add(ino, next offset, name, attributes)` for the entries of the open folder `fh`
    /// (folder `ino`) from `offset` on, until it says the reply is full; `add` is given
    /// whether the entry is "." or "..". The offset indexes the listing taken at open, so each
    /// call costs only the entries it returns.
    fn each_entry(
        &self,
        fh: u64,
        ino: u64,
        offset: u64,
        mut add: impl FnMut(&Tree, u64, u64, &str, &FileAttr) -> bool,
    ) -> Result<(), Errno> {
        let open = lock(&self.dir_handles).get(&fh).cloned();
        let listing = match open {
            Some(l) => l,
            None => self.listing(ino)?.0,
        };
        let tree = self.tree();
        let from = (offset as usize).min(listing.len());
        for (i, (child, name)) in listing[from..].iter().enumerate() {
            let Some(child_node) = tree.get(*child) else {
                continue;
            };
            let next = (from + i + 1) as u64;
            if add(&tree, *child, next, name, &self.attr_of(*child, child_node)) {
                break;
            }
        }
        Ok(())
    }

    fn attr_of(&self, ino: u64, node: &crate::tree::Inode) -> FileAttr {
        let (kind, size, perm, nlink) = match &node.kind {
            Kind::Dir {
                children, pending, ..
            } => (
                FileType::Directory,
                0,
                0o555,
                2 + (children.len() + pending.len()) as u32,
            ),
            Kind::File { size, .. } => (FileType::RegularFile, *size, 0o444, 1),
            Kind::Link { target } => (FileType::Symlink, target.len() as u64, 0o777, 1),
        };
        let mtime = node.changed.max(self.mtime);
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 1 << 20,
            flags: 0,
        }
    }

    fn state(&self, ino: u64) -> Option<Arc<FileState>> {
        let tree = self.tree();
        let Kind::File {
            uri,
            key,
            size,
            cached,
        } = &tree.get(ino)?.kind
        else {
            return None;
        };
        tree.touch(ino);
        let mut files = lock(&self.files);
        Some(
            files
                .entry(ino)
                .or_insert_with(|| {
                    // The cache file is opened here: whether that read the disk says whether
                    // it is cold.
                    let before = crate::ahead::disk_reads();
                    let mut st = FileState::new(uri.clone(), key.clone(), *size, cached.clone());
                    // Read under the map's lock: a switch to no opens, which walks the map
                    // after it, cannot miss this state.
                    st.unopened = AtomicBool::new(self.opens.load(Ordering::SeqCst) == OPENS_NONE);
                    // (Not an open that failed: an evicted file tells nothing of the disk.)
                    if let Some(a) = &self.ahead {
                        if lock(&st.inner).file.is_some() {
                            a.opened(crate::ahead::disk_reads() - before);
                        }
                    }
                    Arc::new(st)
                })
                .clone(),
        )
    }

    /// Answers a lookup of `name` in `parent`. With `may_wait`, it first lists the folder's
    /// root again if its TTL has passed and makes a lazy folder's child (which may list a repo
    /// through the daemon); without it, it hands the reply back where either is needed.
    fn lookup(
        &self,
        parent: u64,
        name: &str,
        reply: ReplyEntry,
        may_wait: bool,
    ) -> Option<ReplyEntry> {
        if may_wait {
            // Bound first: the read guard must be gone before the refresh writes.
            let stale = self.tree().stale_root(parent);
            if let Some(root) = stale {
                self.refresh(root);
            }
        }
        let lazy = {
            let tree = self.tree();
            if !may_wait && tree.stale_root(parent).is_some() {
                return Some(reply);
            }
            match tree.get(parent).map(|n| &n.kind) {
                Some(Kind::Dir {
                    children,
                    pending,
                    lazy,
                    ..
                }) => match children.get(name) {
                    // Counted under the guard that found it: a refresh cannot free it between.
                    Some(&ino) => {
                        let answer = self.entry(&tree, parent, ino);
                        drop(tree);
                        Self::reply_entry(answer, reply);
                        return None;
                    }
                    // A listed file looked up for the first time: its inode is made now.
                    None if pending.contains_key(name) => {
                        drop(tree);
                        let mut tree = self.tree_mut();
                        match tree.lookup_child(parent, name) {
                            Some(ino) => {
                                let answer = self.entry(&tree, parent, ino);
                                Self::count_inodes(&tree);
                                drop(tree);
                                Self::reply_entry(answer, reply);
                                return None;
                            }
                            // Gone between the guards: listed again without it, or emptied
                            // back into a placeholder (then listed again below).
                            None => match tree.get(parent).map(|n| &n.kind) {
                                Some(Kind::Dir { lazy, .. }) => lazy.clone(),
                                _ => None,
                            },
                        }
                    }
                    None => lazy.clone(),
                },
                _ => {
                    reply.error(Errno::ENOTDIR);
                    return None;
                }
            }
        };
        let Some(lazy) = lazy else {
            reply.error(Errno::ENOENT);
            return None;
        };
        if !may_wait {
            return Some(reply);
        }
        match self.materialize(parent, &lazy, name, true) {
            Ok(answer) => Self::reply_entry(answer, reply),
            Err(e) => {
                tracing::error!(name, error = %e, "lookup failed");
                metrics::failure("lookup");
                reply.error(errno(&e));
            }
        }
        None
    }

    /// Has the cache file of `ino`, which the kernel has just looked up and did not hold,
    /// opened ahead if it is a small file the node holds whole (a large one is read by
    /// passthrough, or in chunks with read-ahead of its own). A lookup most often comes right
    /// before an open; a folder read with its entries' attributes (READDIRPLUS) asks nothing.
    fn open_ahead(&self, tree: &Tree, ino: u64) {
        let (Some(ahead), Some(node)) = (&self.ahead, tree.get(ino)) else {
            return;
        };
        if let Kind::File {
            size,
            cached: Some(info),
            ..
        } = &node.kind
        {
            if info.complete && *size < crate::open::PASSTHROUGH_MIN {
                ahead.ask(info.path.clone(), *size);
            }
        }
    }

    /// Entry `ino` of folder `parent`: with `for_kernel`, counted as a lookup the kernel
    /// holds ([`Core::entry`]); without, only its attributes (a name looked at for ourselves).
    fn entry_for(
        &self,
        tree: &Tree,
        parent: u64,
        ino: u64,
        for_kernel: bool,
    ) -> Option<(FileAttr, Duration)> {
        match for_kernel {
            true => self.entry(tree, parent, ino),
            false => tree
                .get(ino)
                .map(|n| (self.attr_of(ino, n), Duration::ZERO)),
        }
    }

    /// Entry `ino` of folder `parent` for the kernel, counted as a lookup it holds until it
    /// forgets it. An inode no longer in the tree (a version that moved on) is handed over
    /// for this one call only (entry TTL 0), so the kernel asks again next time.
    fn entry(&self, tree: &Tree, parent: u64, ino: u64) -> Option<(FileAttr, Duration)> {
        let node = tree.get(ino)?;
        if tree.looked_up(ino) == 0 {
            self.open_ahead(tree, ino);
        }
        tree.touch(ino);
        let ttl = match node.linked {
            true => tree.ttl_in(parent, self.opts.ttl),
            false => Duration::ZERO,
        };
        Some((self.attr_of(ino, node), ttl))
    }

    fn reply_entry(answer: Option<(FileAttr, Duration)>, reply: ReplyEntry) {
        match answer {
            Some((attr, ttl)) => reply.entry(&ttl, &attr, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    /// Answers an open of folder `ino`; without `may_wait`, hands the reply back where its
    /// root must be listed again first.
    fn open_dir(&self, ino: u64, reply: ReplyOpen, may_wait: bool) -> Option<ReplyOpen> {
        let stale = self.tree().stale_root(ino);
        if let Some(root) = stale {
            if !may_wait {
                return Some(reply);
            }
            self.refresh(root);
        }
        // The namespace view's folders show what the node caches; a cached repo is listed
        // when first entered.
        let lazy = match self.tree().get(ino).map(|n| &n.kind) {
            Some(Kind::Dir { lazy: Some(l), .. }) => Some(l.clone()),
            _ => None,
        };
        if let Some(lazy) = lazy {
            if !may_wait {
                return Some(reply);
            }
            match &lazy {
                Lazy::Repo { uri } => {
                    if let Err(e) = self.promote(ino, uri) {
                        tracing::error!(uri, error = %e, "listing a cached repo failed");
                        metrics::failure("lookup");
                        reply.error(errno(&e));
                        return None;
                    }
                }
                other => self.fill(ino, other),
            }
        }
        let (listing, shown) = match self.listing(ino) {
            Ok(l) => l,
            Err(e) => {
                reply.error(e);
                return None;
            }
        };
        // A listed folder changes only when listed again: the kernel may keep its listing
        // across opens until then (told to drop it at the first open after a change). A lazy
        // one (the namespace view) grows as names are looked up.
        let fixed = shown.is_some();
        let keep = shown.is_some_and(|v| match self.tree().get(ino).map(|n| &n.kind) {
            Some(Kind::Dir { kernel_version, .. }) => kernel_version.swap(v, Ordering::AcqRel) == v,
            _ => false,
        });
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.dir_handles).insert(fh, listing);
        let flags = match (fixed, keep) {
            (true, true) => FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            (true, false) => FopenFlags::FOPEN_CACHE_DIR,
            _ => FopenFlags::empty(),
        };
        reply.opened(FileHandle(fh), flags);
        None
    }

    /// Whether an open of `st` is answered ENOSYS (no opens), settling an [`Opens::Auto`]
    /// mount's mode: a large file opened first keeps opens (where passthrough reads it); the
    /// [`AUTO_SMALL_OPENS`]th distinct small file turns them off. `Some(true)`: this call
    /// turned them off, and [`Core::stop_opens`] is to run.
    fn settle_opens(&self, st: &FileState) -> Option<bool> {
        match self.opens.load(Ordering::Relaxed) {
            OPENS_NONE => return Some(false),
            OPENS_ALWAYS => return None,
            _ => {}
        }
        if st.size >= PASSTHROUGH_MIN {
            if self.passthrough_on.load(Ordering::Relaxed)
                && self
                    .opens
                    .compare_exchange(
                        OPENS_COUNTING,
                        OPENS_ALWAYS,
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    )
                    .is_ok()
            {
                ::metrics::counter!(metrics::OPENS_SETTLED, "to" => "always").increment(1);
                tracing::info!(uri = st.uri, "a large file opened first: opens stay on");
            }
            return (self.opens.load(Ordering::Relaxed) == OPENS_NONE).then_some(false);
        }
        if st.counted.swap(true, Ordering::Relaxed)
            || self.small_opens.fetch_add(1, Ordering::Relaxed) + 1 < AUTO_SMALL_OPENS
        {
            return None;
        }
        let switched = self
            .opens
            .compare_exchange(
                OPENS_COUNTING,
                OPENS_NONE,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok();
        if switched {
            ::metrics::counter!(metrics::OPENS_SETTLED, "to" => "none").increment(1);
            tracing::info!(
                files = AUTO_SMALL_OPENS,
                "only small files opened: opens off (the kernel opens and closes files itself)"
            );
            // Before the reply: from the kernel's next read on, a read to a file's end
            // closes its cache file (states made from now on are made unopened).
            for st in lock(&self.files).values() {
                st.unopened.store(true, Ordering::SeqCst);
            }
        }
        (self.opens.load(Ordering::Relaxed) == OPENS_NONE).then_some(switched)
    }

    /// After a switch to no opens (on the pool: it takes each file's lock): every cache file
    /// open now is held under [`HELD_MAX`], and the handles are dropped (reads come by inode
    /// from now on). Whether the kernel still sends RELEASE for a handle open at the switch
    /// depends on its version; either way nothing is left open past the bound.
    fn stop_opens(&self) {
        lock(&self.handles).retain(|_, (_, passthrough)| *passthrough);
        let known: Vec<Arc<FileState>> = lock(&self.files).values().cloned().collect();
        for st in known {
            self.hold_if_open(&st);
        }
    }

    /// Holds `st`'s cache file under [`HELD_MAX`] if it is open, its opens no longer counted
    /// (no RELEASE need come for them).
    fn hold_if_open(&self, st: &Arc<FileState>) {
        let open = {
            let mut inner = lock(&st.inner);
            inner.cached_opens = 0;
            inner.file.is_some()
        };
        if open {
            self.hold(st);
        }
    }

    /// Whether an open is answered at once: no passthrough to set up (which may ask the daemon
    /// and checks the whole file).
    fn open_is_inline(&self, st: &FileState) -> bool {
        !self.passthrough_on.load(Ordering::Relaxed) || st.size < PASSTHROUGH_MIN
    }

    /// Answers an open; without `may_wait`, hands the reply back where the file's state is
    /// busy (a check or a fetch on the pool holds it).
    fn open_file(&self, st: Arc<FileState>, reply: ReplyOpen, may_wait: bool) -> Option<ReplyOpen> {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let mut inner = if may_wait {
            lock(&st.inner)
        } else {
            match try_lock(&st.inner) {
                Some(g) => g,
                None => return Some(reply),
            }
        };
        if self.passthrough_on.load(Ordering::Relaxed) {
            if st.ready_to_pass_through(&*self.backend, &mut inner) {
                if let Some((_, f)) = &inner.file {
                    match reply.open_backing(f.as_ref()) {
                        Ok(id) => inner.backing = Some(Arc::new(id)),
                        Err(e) => tracing::debug!(error = %e, "no passthrough"),
                    }
                }
            }
            if let Some(id) = inner.backing.clone() {
                inner.opened(true);
                drop(inner);
                ::metrics::counter!(metrics::PASSTHROUGH_OPENS).increment(1);
                lock(&self.handles).insert(fh, (st, true));
                // FOPEN_KEEP_CACHE is not allowed with passthrough: the kernel caches the
                // backing file's pages itself.
                reply.opened_passthrough(FileHandle(fh), FopenFlags::FOPEN_NOFLUSH, &id);
                return None;
            }
        }
        inner.opened(false);
        drop(inner);
        lock(&self.handles).insert(fh, (st, false));
        // The identity behind an inode never changes: keep the kernel's pages across opens.
        // Nothing is ever written, so a close needs no FLUSH round trip.
        reply.opened(
            FileHandle(fh),
            FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH,
        );
        None
    }

    /// Answers a read of file `ino`; without `may_wait`, hands the reply back where the read
    /// must wait.
    fn read_reply(
        &self,
        ino: u64,
        st: &Arc<FileState>,
        offset: u64,
        size: u32,
        reply: ReplyData,
        may_wait: bool,
    ) -> Option<ReplyData> {
        let (mut stale, mut hold) = (false, false);
        let rest = READ_BUF.with_borrow_mut(|buf| {
            match st.read_range(&*self.backend, offset, size, buf, may_wait) {
                Ok(s) => {
                    stale = s;
                    if s {
                        ::metrics::counter!(metrics::STALE_READS).increment(1);
                    }
                    hold =
                        st.unopened.load(Ordering::Relaxed) && offset + u64::from(size) < st.size;
                    ::metrics::counter!(metrics::READ_BYTES).increment(buf.len() as u64);
                    reply.data(buf);
                    None
                }
                Err(ReadError::MustWait) => Some(reply),
                Err(ReadError::Fs(e)) => {
                    tracing::error!(uri = st.uri, offset, size, error = %e, "read failed");
                    metrics::failure("read");
                    reply.error(errno(&e));
                    None
                }
            }
        });
        // After the reply: the reader does not wait for them.
        if hold {
            self.hold(st);
        }
        if stale {
            self.stale_read(ino);
        }
        rest
    }

    /// Counts file `ino`'s cache file as held by a read (without opens no close says when it
    /// is done with); past [`HELD_MAX`], closes the one held longest unless a read holds its
    /// state right now (it goes to the back).
    fn hold(&self, st: &Arc<FileState>) {
        if st.held.swap(true, Ordering::Relaxed) {
            return;
        }
        let mut held = lock(&self.held);
        held.push_back(st.clone());
        for _ in HELD_MAX..held.len() {
            let Some(old) = held.pop_front() else { break };
            // The flag is cleared under the state's lock: a read that reopens the file after
            // this sees it cleared and queues the file again.
            let closed = try_lock(&old.inner).map(|mut inner| {
                inner.close_file();
                old.held.store(false, Ordering::Relaxed);
            });
            if closed.is_none() {
                held.push_back(old);
            }
        }
    }

    /// A first read of file `ino` found the node holding it though its listing did not say
    /// so. After enough of them in one root, the root is listed again for where the node
    /// holds its files now: their first reads are then answered here, with no call to the
    /// node (each costs both processes a round trip and a hand-over to the pool).
    fn stale_read(&self, ino: u64) {
        let Some(mut learn) = self.tree().stale_read(ino) else {
            return;
        };
        let gate = learn.gate.clone();
        let Some(_one) = try_lock(&gate) else {
            return;
        };
        ::metrics::counter!(metrics::LEARNS).increment(1);
        let listing = match self.backend.list(&learn.uri) {
            Ok(l) => Prepared::new(l),
            Err(e) => {
                tracing::debug!(uri = learn.uri, error = %e, "could not ask what the node holds");
                return;
            }
        };
        let n = self.learn_places(learn.root, &listing);
        learn.learned(n);
        tracing::debug!(
            uri = learn.uri,
            files = n,
            "learned files cached since listed"
        );
    }

    /// Takes in where `listing` (of root `root`) says the node holds files whose place this
    /// mount does not know: found under the read lock, given under the write lock in
    /// batches (it holds up every request). How many learned.
    fn learn_places(&self, root: u64, listing: &Prepared) -> usize {
        let places: Vec<_> = {
            let tree = self.tree();
            let files = lock(&self.files);
            // A file with read state never looks at its inode's place again.
            tree.places_to_learn(root, listing)
                .into_iter()
                .filter(|p| p.ino.is_none_or(|i| !files.contains_key(&i)))
                .collect()
        };
        let mut learned = 0;
        for batch in places.chunks(LEARN_BATCH) {
            learned += self.tree_mut().learn(batch);
        }
        ::metrics::counter!(metrics::LEARNED_FILES).increment(learned as u64);
        learned
    }
}

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

/// Lingers when the handler is done (its reply sent).
struct Linger<'a, B: Backend>(&'a LocusFs<B>);

impl<B: Backend> Drop for Linger<'_, B> {
    fn drop(&mut self) {
        self.0.linger();
    }
}

impl<B: Backend> fuser::Filesystem for LocusFs<B> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config
            .set_max_readahead(u32::MAX)
            .or_else(|max| config.set_max_readahead(max));
        // Lookups in one folder need not wait on each other (without this the kernel takes a
        // per-folder lock around each LOOKUP round trip): the tree is shared behind a lock and
        // a lazy folder is made once however many threads ask.
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        // Listings carry attributes (READDIRPLUS): a walk (`ls -l`, `find`, `du`) needs no
        // LOOKUP per name.
        let _ = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS);
        // Read-ahead READs are background requests: the kernel holds back every other file's
        // reads once this many are in flight, so leave room for a slow file's whole window.
        let _ = config
            .set_max_background(128)
            .or_else(|max| config.set_max_background(max));
        let _ = config
            .set_congestion_threshold(96)
            .or_else(|max| config.set_congestion_threshold(max));
        if self.core.opts.opens != Opens::Always
            && !config
                .capabilities()
                .contains(InitFlags::FUSE_NO_OPEN_SUPPORT)
        {
            // An older kernel would fail every open answered ENOSYS: opens are answered.
            if self.core.opts.opens == Opens::Never {
                tracing::warn!(
                    "this kernel cannot open files without asking the mount: --no-open is off"
                );
            }
            self.core.opens.store(OPENS_ALWAYS, Ordering::Relaxed);
        }
        if self.core.opts.passthrough
            && self.core.opens.load(Ordering::Relaxed) != OPENS_NONE
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
        {
            let _ = config.set_max_stack_depth(2);
            self.core.passthrough_on.store(true, Ordering::Relaxed);
        }
        let passthrough = self.core.passthrough_on.load(Ordering::Relaxed);
        let opens = match self.core.opens.load(Ordering::Relaxed) {
            OPENS_COUNTING => "auto",
            OPENS_ALWAYS => "always",
            _ => "never",
        };
        tracing::info!(passthrough, opens, "mounted");
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _linger = Linger(self);
        let Some(name) = name.to_str() else {
            return reply.error(Errno::ENOENT);
        };
        match self.core.lookup(parent.0, name, reply, false) {
            None => metrics::request("lookup", "reader"),
            Some(reply) => {
                let name = name.to_string();
                self.offload("lookup", move |core| {
                    core.lookup(parent.0, &name, reply, true);
                });
            }
        }
        // A listing in use near its TTL is asked for again now, in the background, so that
        // the readers at the TTL do not all wait for it.
        let due = self.core.tree().due_root(parent.0);
        if let Some(root) = due {
            let core = self.core.clone();
            self.pool.spawn_blocking(move || core.relist(root, true));
        }
    }

    // BATCH_FORGET comes here too (fuser's default; its `ForgetOne` is not public).
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        metrics::request("forget", "reader");
        self.core.forget(ino.0, nlookup);
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _linger = Linger(self);
        metrics::request("readlink", "reader");
        match self.core.link_target(ino.0) {
            Some(t) => reply.data(t.as_bytes()),
            None => reply.error(Errno::EINVAL),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _linger = Linger(self);
        metrics::request("getattr", "reader");
        match self.core.attr(ino.0) {
            Some(a) => reply.attr(&self.core.opts.ttl, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _linger = Linger(self);
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        // ENOSYS: the kernel takes every open and close of a file as done without asking
        // again (its first open goes on with no handle); reads come by inode.
        let mode = self.core.opens.load(Ordering::Relaxed);
        if mode == OPENS_NONE {
            metrics::request("open", "reader");
            return reply.error(Errno::ENOSYS);
        }
        let Some(st) = self.core.state(ino.0) else {
            return reply.error(Errno::EISDIR);
        };
        if mode == OPENS_COUNTING {
            if let Some(switched) = self.core.settle_opens(&st) {
                if switched {
                    self.offload("open", |core| core.stop_opens());
                } else {
                    // Made by an open that raced the switch: no read need come to close it.
                    self.offload("open", move |core| core.hold_if_open(&st));
                }
                return reply.error(Errno::ENOSYS);
            }
        }
        let reply = if self.core.open_is_inline(&st) {
            self.core.open_file(st.clone(), reply, false)
        } else {
            Some(reply)
        };
        match reply {
            None => metrics::request("open", "reader"),
            Some(reply) => self.offload("open", move |core| {
                core.open_file(st, reply, true);
            }),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let _linger = Linger(self);
        // No handle: opened by the kernel alone (no opens), or opens turned off since (the
        // handles are dropped then).
        let handle = match fh.0 {
            0 => None,
            fh => lock(&self.core.handles).get(&fh).map(|(st, _)| st.clone()),
        };
        let st = match handle {
            None if self.core.opens.load(Ordering::Relaxed) == OPENS_NONE => self.core.state(ino.0),
            st => st,
        };
        let Some(st) = st else {
            return reply.error(Errno::EBADF);
        };
        tracing::trace!(offset, size, "read");
        match self.core.read_reply(ino.0, &st, offset, size, reply, false) {
            None => metrics::request("read", "reader"),
            Some(reply) => self.offload("read", move |core| {
                core.read_reply(ino.0, &st, offset, size, reply, true);
            }),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: fuser::ReplyEmpty,
    ) {
        let _linger = Linger(self);
        metrics::request("flush", "reader");
        // Nothing is ever written: ENOSYS tells the kernel to send no more FLUSH (opens say
        // so too, FOPEN_NOFLUSH, where there are opens).
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: fuser::ReplyEmpty,
    ) {
        let _linger = Linger(self);
        metrics::request("release", "reader");
        let open = lock(&self.core.handles).remove(&fh.0);
        if let Some((st, passthrough)) = open {
            let counted = try_lock(&st.inner)
                .map(|mut inner| inner.closed(passthrough))
                .is_some();
            if !counted {
                self.pool
                    .spawn_blocking(move || lock(&st.inner).closed(passthrough));
            }
        }
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _linger = Linger(self);
        match self.core.open_dir(ino.0, reply, false) {
            None => metrics::request("opendir", "reader"),
            Some(reply) => self.offload("opendir", move |core| {
                core.open_dir(ino.0, reply, true);
            }),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: fuser::ReplyEmpty,
    ) {
        let _linger = Linger(self);
        metrics::request("releasedir", "reader");
        lock(&self.core.dir_handles).remove(&fh.0);
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _linger = Linger(self);
        metrics::request("readdir", "reader");
        match self
            .core
            .each_entry(fh.0, ino.0, offset, |_, child, next, name, attr| {
                reply.add(INodeNo(child), next, attr.kind, name)
            }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _linger = Linger(self);
        metrics::request("readdirplus", "reader");
        // The kernel takes each entry's name and attributes: a walk of the tree then needs no
        // LOOKUP per file. Each entry but "." and ".." is a lookup the kernel holds.
        let ttl = self.core.tree().ttl_in(ino.0, self.core.opts.ttl);
        match self
            .core
            .each_entry(fh.0, ino.0, offset, |tree, child, next, name, attr| {
                // A version that moved on since the folder was opened: for this call only.
                let linked = tree.get(child).is_some_and(|n| n.linked);
                let ttl = if linked { ttl } else { Duration::ZERO };
                let full = reply.add(INodeNo(child), next, name, &ttl, attr, Generation(0));
                if !full && name != "." && name != ".." {
                    tree.looked_up(child);
                }
                full
            }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        let _linger = Linger(self);
        metrics::request("ioctl", "reader");
        // Programs probe files with ioctls (isatty's TCGETS): none apply here.
        reply.error(Errno::ENOTTY);
    }

    /// No file has extended attributes: answered here, so that tools that ask (ls -l,
    /// SELinux, backup tools) get "none" rather than "not implemented" and a log line each.
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        reply.error(Errno::NO_XATTR);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: fuser::ReplyXattr) {
        match size {
            0 => reply.size(0),
            _ => reply.data(&[]),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: fuser::ReplyStatfs) {
        let _linger = Linger(self);
        metrics::request("statfs", "reader");
        let files = self.core.tree().linked() as u64;
        reply.statfs(0, 0, 0, files, 0, 1 << 20, 255, 1 << 20);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChunkInfo, Entry, Listing};
    use std::sync::atomic::AtomicUsize;

    /// A backend whose listing is as old as `age_ms` (its TTL, 60 s, by default: a node whose
    /// origin is down answers with the last listing it had), counting the calls; asked for
    /// one within an age, it answers a fresh one (as the daemon does) unless `fail`.
    struct OldListing {
        calls: AtomicUsize,
        age_ms: AtomicU64,
        within: Mutex<Vec<Duration>>,
        fail: AtomicBool,
    }

    impl OldListing {
        fn new(age_s: u64) -> Self {
            OldListing {
                calls: AtomicUsize::new(0),
                age_ms: AtomicU64::new(age_s * 1000),
                within: Mutex::new(Vec::new()),
                fail: AtomicBool::new(false),
            }
        }
    }

    impl Backend for OldListing {
        fn list_within(&self, uri: &str, max_age: Duration) -> Result<Listing, FsError> {
            lock(&self.within).push(max_age);
            if self.fail.load(Ordering::SeqCst) {
                return Err(FsError::Io("origin down".into()));
            }
            let mut l = self.list(uri)?;
            l.age = Duration::ZERO;
            Ok(l)
        }

        fn list(&self, _uri: &str) -> Result<Listing, FsError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(Listing {
                entries: vec![Entry {
                    uri: "s3://b/k".into(),
                    key: "k1".into(),
                    path: "k".into(),
                    size: 1,
                    cached: None,
                }],
                folders: Vec::new(),
                ttl: Some(Duration::from_secs(60)),
                age: Duration::from_millis(self.age_ms.load(Ordering::SeqCst)),
            })
        }
        fn chunks(
            &self,
            _: &str,
            _: &str,
            _: u32,
            _: u32,
            _: bool,
        ) -> Result<(ChunkInfo, bool), FsError> {
            Err(FsError::Io("no chunks here".into()))
        }
        fn prefetch(&self, _: &str, _: &str, _: u32, _: u32) {}
        fn cached(&self) -> Result<Vec<String>, FsError> {
            Ok([
                "hf://acme/m",
                "hf://datasets/acme/ds",
                "hf://other/x",
                "s3://b",
            ]
            .map(String::from)
            .to_vec())
        }
    }

    #[test]
    fn the_namespace_view_shows_what_the_node_caches_and_a_repo_once() {
        let backend = Arc::new(OldListing::new(60));
        let core = Core::with_tree(
            backend.clone(),
            Tree::namespace(1000),
            MountOptions::default(),
        );
        let names = |ino: u64| match &core.tree().get(ino).unwrap().kind {
            Kind::Dir { children, .. } => children.keys().cloned().collect::<Vec<_>>(),
            _ => panic!("not a folder"),
        };
        let child = |dir: u64, name: &str| core.tree().child(dir, name).unwrap();
        let (hf, s3) = (child(ROOT, "hf"), child(ROOT, "s3"));
        core.fill(hf, &Lazy::Hf);
        assert_eq!(names(hf), ["acme", "datasets", "other"]);
        core.fill(s3, &Lazy::S3);
        assert_eq!(names(s3), ["b"]);
        let acme = child(hf, "acme");
        core.fill(
            acme,
            &Lazy::Org {
                datasets: false,
                org: "acme".into(),
            },
        );
        assert_eq!(names(acme), ["m"]);
        core.fill(child(hf, "datasets"), &Lazy::Datasets);
        assert_eq!(names(child(hf, "datasets")), ["acme"]);
        // Shown without listing anything.
        assert_eq!(backend.calls.load(Ordering::SeqCst), 0);
        // A name inside a cached repo lists it, once, in place: the folder keeps its inode.
        let m = child(acme, "m");
        let uri = "hf://acme/m".to_string();
        let e = core
            .materialize(m, &Lazy::Repo { uri: uri.clone() }, "k", true)
            .unwrap();
        assert_eq!(e.unwrap().0.kind, FileType::RegularFile);
        assert_eq!(child(acme, "m"), m);
        assert!(core.tree().roots.contains_key(&m));
        core.promote(m, &uri).unwrap();
        assert_eq!(backend.calls.load(Ordering::SeqCst), 1);
        // NAME@main is a link to NAME, not a second tree.
        let org = Lazy::Org {
            datasets: false,
            org: "acme".into(),
        };
        let (attr, _) = core
            .materialize(acme, &org, "m@main", true)
            .unwrap()
            .unwrap();
        assert_eq!(attr.kind, FileType::Symlink);
        assert_eq!(core.link_target(attr.ino.0).as_deref(), Some("m"));
        assert_eq!(names(acme), ["m", "m@main"]);
        assert_eq!(backend.calls.load(Ordering::SeqCst), 1);
        // Another revision is a tree of its own.
        let (attr, _) = core.materialize(acme, &org, "m@v2", true).unwrap().unwrap();
        assert_eq!(attr.kind, FileType::Directory);
    }

    #[test]
    fn a_listing_that_comes_back_old_is_asked_for_again_later_not_at_every_lookup() {
        let backend = Arc::new(OldListing::new(60));
        let listing = Prepared::new(backend.list("s3://b").unwrap());
        let core = Core::with_tree(
            backend.clone(),
            Tree::listed("s3://b", listing),
            MountOptions::default(),
        );
        assert!(core.tree().stale_root(ROOT).is_some());
        for _ in 0..5 {
            let stale = core.tree().stale_root(ROOT);
            if let Some(root) = stale {
                core.refresh(root);
            }
        }
        // The mount's own listing, and one more: then not before RELIST_RETRY.
        assert_eq!(backend.calls.load(Ordering::SeqCst), 2);
        assert!(core.tree().stale_root(ROOT).is_none());
    }
    #[test]
    fn a_listing_in_use_is_asked_for_again_ahead_of_its_ttl_once() {
        let backend = Arc::new(OldListing::new(40));
        let listed_as_old_as = |age_s: u64| {
            backend.age_ms.store(age_s * 1000, Ordering::SeqCst);
            let listing = Prepared::new(backend.list("s3://b").unwrap());
            Core::with_tree(
                backend.clone(),
                Tree::listed("s3://b", listing),
                MountOptions::default(),
            )
        };
        // 40 s of 60: not yet within the margin (15 s).
        assert_eq!(
            crate::tree::ahead_margin(Duration::from_secs(60)).as_secs(),
            15
        );
        assert_eq!(listed_as_old_as(40).tree().due_root(ROOT), None);
        // 50 s of 60: due, once.
        let core = listed_as_old_as(50);
        assert!(core.tree().stale_root(ROOT).is_none());
        assert_eq!(core.tree().due_root(ROOT), Some(ROOT));
        assert_eq!(
            core.tree().due_root(ROOT),
            None,
            "one refresh ahead at a time"
        );
        // A failed one leaves the listing as it was (still current) and is not tried again
        // before the TTL.
        backend.fail.store(true, Ordering::SeqCst);
        core.relist(ROOT, true);
        assert_eq!(lock(&backend.within).len(), 1);
        assert!(core.tree().stale_root(ROOT).is_none());
        assert_eq!(core.tree().due_root(ROOT), None);
        // One that comes back: asked within the margin, and current for a whole TTL again.
        backend.fail.store(false, Ordering::SeqCst);
        core.relist(ROOT, true);
        assert_eq!(*lock(&backend.within), [Duration::from_secs(15); 2]);
        let listed_at = core.tree().roots[&ROOT].listed_at;
        assert!(listed_at.elapsed() < Duration::from_secs(5));
        assert_eq!(core.tree().due_root(ROOT), None);
        assert!(core.tree().stale_root(ROOT).is_none());
        // An answer as old as the one it replaces (a node that did not ask again): not asked
        // for ahead again; the first reader past the TTL asks.
        let core = listed_as_old_as(50);
        assert_eq!(core.tree().due_root(ROOT), Some(ROOT));
        let old = Prepared::new(backend.list("s3://b").unwrap());
        let _ = core.tree_mut().sync_root(ROOT, old);
        assert_eq!(core.tree().due_root(ROOT), None);
    }
}
