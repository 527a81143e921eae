//! Metadata: what a URI names. Revisions and listings are cached in memory ([`MetaCache`]: the
//! TTL, the size bounds and single-flight in one place) and in the store's index (listings at
//! immutable revisions for good, revisions for use while the origin is down), asked of the
//! namespace's owner on the ring, else of the origin.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use locus_cluster::key_hash;
use locus_core::uri::LocusUri;
use locus_core::{Namespace, RemoteFile};
use locus_store::Store;
use quick_cache::sync::Cache;
use serde::{Deserialize, Serialize};

use crate::{peer, Node, NodeError};

/// After an object changed under a listing, answers older than this are not taken (a burst of
/// readers that hit the change still costs one listing).
pub(crate) const RELIST_AGE: Duration = Duration::from_secs(1);

/// Listings, prefixes and namespaces marked stale kept in memory at most.
const MAX_LISTINGS: usize = 4096;
/// Files of all the listings kept in memory at most.
const MAX_LISTED_FILES: u64 = 1 << 20;
/// Resolved revisions kept in memory at most.
const MAX_REVISIONS: usize = 65_536;

/// A URI resolved at an immutable revision.
pub struct Resolved {
    /// The commit.
    pub revision: String,
    /// The files it names (one for a file URI); a whole namespace shares the cached listing.
    pub files: Arc<Vec<RemoteFile>>,
    /// Whether the URI named a single file.
    pub is_file: bool,
}

/// A revision as the index keeps it.
#[derive(Serialize, Deserialize)]
struct CachedRevision {
    id: String,
    at_ms: u64,
}

/// A listing weighs its files.
#[derive(Clone)]
struct ListingWeight;

impl quick_cache::Weighter<(Namespace, String), Arc<Vec<RemoteFile>>> for ListingWeight {
    fn weight(&self, _: &(Namespace, String), v: &Arc<Vec<RemoteFile>>) -> u64 {
        v.len() as u64 + 1
    }
}

/// A node's metadata cache. Every map is bounded (names come from users and peers; what goes
/// is asked for again), and every key's index record is written here.
pub(crate) struct MetaCache {
    ttl: Duration,
    /// Resolved revisions, with when they were resolved.
    revisions: Cache<(Namespace, String), (String, Instant)>,
    /// One lock per metadata key being fetched.
    flights: DashMap<String, Arc<tokio::sync::Mutex<()>>>,
    /// S3 prefixes and folders listed here: a key under one is looked up in its listing.
    prefixes: Cache<Namespace, ()>,
    /// Namespaces whose listing an object changed under: listed again on their next use.
    stale: Cache<Namespace, ()>,
    /// Listings in memory, bounded by their files in all.
    listings: Cache<(Namespace, String), Arc<Vec<RemoteFile>>, ListingWeight>,
    /// The durable layer (the store's index).
    store: Arc<Store>,
}

/// The in-memory listings: one shard. quick_cache splits its weight among its shards and keeps
/// no item heavier than one shard's share, so with its default (4 per core) a listing above
/// `MAX_LISTED_FILES / shards` files (127k on 2 cores, 16k on 16) was never kept and every
/// resolution read it again. Listings are few and looked up under a read lock.
fn listings_cache() -> Cache<(Namespace, String), Arc<Vec<RemoteFile>>, ListingWeight> {
    let options = quick_cache::OptionsBuilder::new()
        .estimated_items_capacity(MAX_LISTINGS)
        .weight_capacity(MAX_LISTED_FILES)
        .shards(1)
        .build();
    match options {
        Ok(o) => Cache::with_options(o, ListingWeight, Default::default(), Default::default()),
        // Not reachable with the fields above; the default still bounds memory.
        Err(_) => Cache::with_weighter(MAX_LISTINGS, MAX_LISTED_FILES, ListingWeight),
    }
}

fn revision_key(ns: &Namespace, rev: &str) -> String {
    format!("rev:{ns}@{rev}")
}

fn listing_key(ns: &Namespace, rev_id: &str) -> String {
    format!("list:{ns}@{rev_id}")
}

impl MetaCache {
    pub(crate) fn new(ttl: Duration, store: Arc<Store>) -> Self {
        Self {
            ttl,
            revisions: Cache::new(MAX_REVISIONS),
            flights: DashMap::new(),
            prefixes: Cache::new(MAX_LISTINGS),
            stale: Cache::new(MAX_LISTINGS),
            listings: listings_cache(),
            store,
        }
    }

    /// Serializes fetches of one metadata key, so that concurrent misses make one request.
    async fn flight(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        if self.flights.len() > MAX_LISTINGS {
            self.flights.retain(|_, m| Arc::strong_count(m) > 1);
        }
        let m = self.flights.entry(key.to_string()).or_default().clone();
        m.lock_owned().await
    }

    /// The revision `rev` of `ns` resolved to less than `max_age` ago (and within the TTL),
    /// with its age.
    fn revision(&self, ns: &Namespace, rev: &str, max_age: Duration) -> Option<(String, Duration)> {
        let max_age = max_age.min(self.ttl);
        self.revisions
            .get(&(ns.clone(), rev.to_string()))
            .filter(|e| e.1.elapsed() < max_age)
            .map(|e| (e.0.clone(), e.1.elapsed()))
    }

    /// How long ago `rev` of `ns` was resolved to `id`, if that is what it is resolved to
    /// now (however old).
    fn age(&self, ns: &Namespace, rev: &str, id: &str) -> Option<Duration> {
        self.revisions
            .get(&(ns.clone(), rev.to_string()))
            .filter(|e| e.0 == id)
            .map(|e| e.1.elapsed())
    }

    /// The last revision known for `rev` of `ns`, however old: from memory, else the index.
    /// For when the origin cannot be reached.
    fn last_revision(&self, ns: &Namespace, rev: &str) -> Option<String> {
        self.revisions
            .get(&(ns.clone(), rev.to_string()))
            .map(|e| e.0)
            .or_else(|| {
                self.store
                    .meta_get(&revision_key(ns, rev))
                    .and_then(|b| serde_json::from_slice::<CachedRevision>(&b).ok())
                    .map(|c| c.id)
            })
    }

    /// Records a revision that was resolved `age` ago (by another node), in memory.
    fn put_revision(&self, ns: &Namespace, rev: &str, id: String, age: Duration) {
        let at = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        self.revisions
            .insert((ns.clone(), rev.to_string()), (id, at));
    }

    /// Records a revision the origin just gave, in memory and in the index.
    fn record_revision(&self, ns: &Namespace, rev: &str, id: &str) {
        self.put_revision(ns, rev, id.to_string(), Duration::ZERO);
        let v = CachedRevision {
            id: id.to_string(),
            at_ms: locus_core::unix_ms(),
        };
        if let Ok(b) = serde_json::to_vec(&v) {
            self.store.meta_put(&revision_key(ns, rev), b);
        }
    }

    /// Whether an object changed under `ns`'s listing since it was last resolved (asked once:
    /// the mark goes).
    fn take_stale(&self, ns: &Namespace) -> bool {
        self.stale.remove(ns).is_some()
    }

    /// Marks `ns`'s listing out of date.
    fn mark_stale(&self, ns: Namespace) {
        self.revisions
            .remove(&(ns.clone(), locus_core::LATEST.to_string()));
        self.stale.insert(ns, ());
    }

    /// A listing in memory.
    fn listing(&self, ns: &Namespace, rev_id: &str) -> Option<Arc<Vec<RemoteFile>>> {
        self.listings.get(&(ns.clone(), rev_id.to_string()))
    }

    /// A listing the index kept.
    fn stored_listing(&self, ns: &Namespace, rev_id: &str) -> Option<Vec<RemoteFile>> {
        self.store
            .meta_get(&listing_key(ns, rev_id))
            .and_then(|b| serde_json::from_slice::<Vec<RemoteFile>>(&b).ok())
    }

    /// Whether the index holds a listing.
    fn has_stored_listing(&self, ns: &Namespace, rev_id: &str) -> bool {
        self.store.meta_get(&listing_key(ns, rev_id)).is_some()
    }

    /// Keeps a listing in the index, when it is at an immutable revision (listings of names
    /// without revisions move on every TTL: kept in memory only).
    fn store_listing(&self, ns: &Namespace, rev_id: &str, files: &[RemoteFile]) {
        if ns.has_revisions() {
            if let Ok(b) = serde_json::to_vec(files) {
                self.store.meta_put(&listing_key(ns, rev_id), b);
            }
        }
    }

    /// Keeps a listing in memory. A namespace without revisions keeps only its latest, its
    /// files marked with where they were listed, and a small one is remembered as a prefix.
    fn put_listing(
        &self,
        ns: &Namespace,
        rev_id: &str,
        mut files: Vec<RemoteFile>,
    ) -> Arc<Vec<RemoteFile>> {
        if !ns.has_revisions() {
            self.listings.retain(|(n, _), _| n != ns);
            // Prefixes whose keys are worth a re-list instead of a HEAD each: not a whole
            // bucket or file system, and not more than a few LIST pages.
            let root = matches!(ns, Namespace::S3 { prefix, .. } if prefix.is_empty())
                || matches!(ns, Namespace::File { path } if path == "/");
            if files.len() > 1 && files.len() <= 5_000 && !root {
                self.prefixes.insert(ns.clone(), ());
            }
            let listed = locus_core::Listed {
                namespace: ns.to_string(),
                revision: rev_id.to_string(),
            };
            for f in &mut files {
                f.listed = Some(listed.clone());
            }
        }
        let files = Arc::new(files);
        self.listings
            .insert((ns.clone(), rev_id.to_string()), files.clone());
        files
    }

    /// Whether `ns` was listed here as a prefix (its keys are looked up in its listing).
    fn is_prefix(&self, ns: &Namespace) -> bool {
        self.prefixes.contains_key(ns)
    }
}

impl Node {
    /// The member that owns `ns`'s metadata, when it is another node that answers.
    fn metadata_owner(&self, ns: &Namespace) -> Option<(String, Arc<dyn peer::PeerTransport>)> {
        if matches!(ns, Namespace::Http { url } if locus_core::redact::private(url)) {
            return None;
        }
        let peers = self.peers.clone()?;
        let owner = self
            .cluster
            .primary(key_hash(format!("meta:{ns}").as_bytes()));
        (owner != self.cluster.me()).then_some((owner, peers))
    }

    /// Resolves a revision to an immutable id: cached for the metadata TTL; past it, a fresh
    /// answer is asked for, and an old one is used only if the origin cannot be reached.
    async fn revision(&self, ns: &Namespace, rev: &str) -> Result<String, NodeError> {
        // A full commit id is immutable: nothing to ask.
        if immutable(ns, rev) {
            return Ok(rev.to_string());
        }
        // After an object changed under this namespace's listing: a fresh one, also from its owner.
        let max_age = match self.meta.take_stale(ns) {
            true => RELIST_AGE,
            false => self.cfg.metadata_ttl,
        };
        if let Some((id, _)) = self.meta.revision(ns, rev, max_age) {
            return Ok(id);
        }
        if let Some((owner, peers)) = self.metadata_owner(ns) {
            let req = locus_grpc::v1::ResolveRequest {
                namespace: ns.to_string(),
                revision: rev.to_string(),
                max_age_ms: max_age.as_millis() as u64,
            };
            match peers.resolve(&owner, req).await {
                Ok(r) if r.id.len() <= peer::MAX_FIELD && !r.id.is_empty() => {
                    let age = Duration::from_millis(r.age_ms).min(self.cfg.metadata_ttl);
                    self.meta.put_revision(ns, rev, r.id.clone(), age);
                    return Ok(r.id);
                }
                Ok(_) => self.owner_unanswered(
                    &owner,
                    ns,
                    rev,
                    peer::PeerError::garbled(&owner, "an empty or oversized revision"),
                )?,
                Err(e) => self.owner_unanswered(&owner, ns, rev, e)?,
            }
        }
        self.revision_local(ns, rev, max_age)
            .await
            .map(|(id, _)| id)
    }

    /// Marks the listing `file` came from as out of date (an object changed under it): the next
    /// resolution of its namespace lists again, at its owner too.
    pub(crate) fn listing_changed(&self, file: &RemoteFile) {
        let Some(l) = &file.listed else { return };
        if let Ok(u) = LocusUri::parse(&l.namespace) {
            self.meta.mark_stale(u.namespace);
        }
    }

    /// Resolves a revision from this node's cache (answers younger than `max_age` and the TTL)
    /// or the origin (never a peer), with the age of the answer: what a metadata owner serves.
    pub async fn revision_local(
        &self,
        ns: &Namespace,
        rev: &str,
        max_age: Duration,
    ) -> Result<(String, Duration), NodeError> {
        if let Some(hit) = self.meta.revision(ns, rev, max_age) {
            return Ok(hit);
        }
        // Concurrent misses (a burst of peers asking the owner) make one origin call.
        let _flight = self.meta.flight(&revision_key(ns, rev)).await;
        if let Some(hit) = self.meta.revision(ns, rev, max_age) {
            return Ok(hit);
        }
        match self.origin.resolve(ns, rev).await {
            Ok(id) => {
                self.meta.record_revision(ns, rev, &id);
                Ok((id, Duration::ZERO))
            }
            Err(e) if e.is_outage() => match self.meta.last_revision(ns, rev) {
                Some(id) => {
                    tracing::warn!(%ns, rev, id, error = %e, "origin unreachable; using the last known revision");
                    Ok((id, Duration::ZERO))
                }
                None => Err(e.into()),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// Every file of `ns` at `rev_id`: from memory, the index, the namespace's owner (unless
    /// `local_only`), or the origin.
    pub async fn listing(
        &self,
        ns: &Namespace,
        rev_id: &str,
        local_only: bool,
    ) -> Result<Arc<Vec<RemoteFile>>, NodeError> {
        if let Some(l) = self.meta.listing(ns, rev_id) {
            return Ok(l);
        }
        // A metadata owner serving a peer (`local_only`) never waits behind this node's own
        // request to another owner: two nodes that disagree about the owner would wait on each
        // other.
        let key = listing_key(ns, rev_id);
        let flight = match local_only {
            true => format!("local:{key}"),
            false => key,
        };
        let _flight = self.meta.flight(&flight).await;
        if let Some(l) = self.meta.listing(ns, rev_id) {
            return Ok(l);
        }
        let from_owner = match self.metadata_owner(ns).filter(|_| !local_only) {
            Some((owner, peers)) if !self.meta.has_stored_listing(ns, rev_id) => {
                self.listing_from(ns, rev_id, &owner, &*peers).await?
            }
            _ => None,
        };
        let files = match from_owner.or_else(|| self.meta.stored_listing(ns, rev_id)) {
            Some(f) => f,
            None => {
                let f = self.origin.list(ns, rev_id).await?;
                self.meta.store_listing(ns, rev_id, &f);
                f
            }
        };
        Ok(self.meta.put_listing(ns, rev_id, files))
    }

    /// A listing from the namespace's owner, checked entry by entry; `None` (ask the origin)
    /// when the owner cannot answer, an error when its answer settles the matter.
    async fn listing_from(
        &self,
        ns: &Namespace,
        rev_id: &str,
        owner: &str,
        peers: &dyn peer::PeerTransport,
    ) -> Result<Option<Vec<RemoteFile>>, NodeError> {
        let req = locus_grpc::v1::PeerListRequest {
            namespace: ns.to_string(),
            revision_id: rev_id.to_string(),
        };
        let e = match peers.list(owner, req).await {
            Ok(r) if r.files.len() <= peer::MAX_FILES => {
                match r
                    .files
                    .into_iter()
                    .map(peer::file_from_pb)
                    .collect::<Result<Vec<_>, _>>()
                {
                    Ok(f) => {
                        self.meta.store_listing(ns, rev_id, &f);
                        return Ok(Some(f));
                    }
                    Err(why) => peer::PeerError::garbled(owner, why),
                }
            }
            Ok(_) => peer::too_many(owner),
            Err(e) => e,
        };
        self.owner_unanswered(owner, ns, rev_id, e)?;
        Ok(None)
    }

    /// Notes that the metadata owner `owner` gave no answer on `ns` at `rev`: an error that
    /// settles the matter is the answer; else the caller asks the origin.
    fn owner_unanswered(
        &self,
        owner: &str,
        ns: &Namespace,
        rev: &str,
        e: peer::PeerError,
    ) -> Result<(), NodeError> {
        self.peer_failed(owner, &e);
        if e.settles() {
            return Err(e.into());
        }
        tracing::warn!(%ns, rev, error = %e, "metadata owner did not answer; asking the origin");
        Ok(())
    }

    /// What a fresh listing of an enclosing prefix or folder already says of `ns` (an S3 key
    /// or prefix, a file or folder): the HEAD or LIST it would cost is answered from memory.
    fn known_from_enclosing(&self, ns: &Namespace) -> Option<Resolved> {
        for (parent, rel) in ns.ancestors() {
            let Some((rev, _)) =
                self.meta
                    .revision(&parent, locus_core::LATEST, self.cfg.metadata_ttl)
            else {
                continue;
            };
            let Some(all) = self.meta.listing(&parent, &rev) else {
                continue;
            };
            if let Some(f) = all.iter().find(|f| f.path == rel) {
                let name = rel.rsplit('/').next().unwrap_or(&rel).to_string();
                return Some(Resolved {
                    revision: rev,
                    files: Arc::new(vec![RemoteFile {
                        path: name,
                        ..f.clone()
                    }]),
                    is_file: true,
                });
            }
            let inside = format!("{rel}/");
            let files: Vec<_> = all
                .iter()
                .filter_map(|f| {
                    let p = f.path.strip_prefix(&inside)?;
                    Some(RemoteFile {
                        path: p.to_string(),
                        ..f.clone()
                    })
                })
                .collect();
            // An empty answer may just be an object created since: ask the origin.
            if !files.is_empty() {
                return Some(Resolved {
                    revision: rev,
                    files: Arc::new(files),
                    is_file: false,
                });
            }
        }
        None
    }

    /// Resolves `uri` to the files it names at an immutable revision.
    pub async fn resolve(&self, uri: &LocusUri) -> Result<Resolved, NodeError> {
        if let Some(r) = self.known_from_enclosing(&uri.namespace) {
            return Ok(r);
        }
        // A prefix listed before, whose TTL ran out: list it again (one call for all its keys,
        // at its owner) rather than ask for this key alone.
        let parent = uri
            .namespace
            .ancestors()
            .into_iter()
            .map(|(p, _)| p)
            .find(|p| self.meta.is_prefix(p));
        if let Some(parent) = parent {
            if let Ok(rev) = self.revision(&parent, locus_core::LATEST).await {
                if self.listing(&parent, &rev, false).await.is_ok() {
                    if let Some(r) = self.known_from_enclosing(&uri.namespace) {
                        return Ok(r);
                    }
                }
            }
        }
        let revision = self
            .revision(&uri.namespace, uri.revision_or_default())
            .await?;
        let all = self.listing(&uri.namespace, &revision, false).await?;
        if uri.path.is_empty() {
            // A name without revisions that lists as itself is one object or file.
            let is_file = !uri.namespace.has_revisions()
                && all.len() == 1
                && all[0].uri == uri.namespace.to_string();
            // The cached listing itself, not a copy of it.
            return Ok(Resolved {
                revision,
                files: all,
                is_file,
            });
        }
        if let Some(f) = find_path(&all, &uri.path) {
            return Ok(Resolved {
                revision,
                files: Arc::new(vec![f.clone()]),
                is_file: true,
            });
        }
        let prefix = format!("{}/", uri.path);
        let files: Vec<_> = all
            .iter()
            .filter(|f| f.path.starts_with(&prefix))
            .cloned()
            .collect();
        if files.is_empty() {
            return Err(NodeError::NotFound(uri.at_revision(&revision).to_string()));
        }
        Ok(Resolved {
            revision,
            files: Arc::new(files),
            is_file: false,
        })
    }

    /// How long `r` (what `uri` resolved to) stays current, `None` when never (a full commit
    /// id), and how old it already is: the age of the revision it was resolved to, taken from
    /// the namespace or the enclosing listing that answered.
    pub fn freshness(&self, uri: &LocusUri, r: &Resolved) -> (Option<Duration>, Duration) {
        let rev = uri.revision_or_default();
        if immutable(&uri.namespace, rev) {
            return (None, Duration::ZERO);
        }
        let ttl = self.cfg.metadata_ttl;
        let age = std::iter::once(uri.namespace.clone())
            .chain(uri.namespace.ancestors().into_iter().map(|(p, _)| p))
            .find_map(|ns| self.meta.age(&ns, rev, &r.revision))
            .unwrap_or_default();
        (Some(ttl), age.min(ttl))
    }

    /// Resolves a URI that must name one file.
    pub async fn resolve_file(&self, uri: &LocusUri) -> Result<RemoteFile, NodeError> {
        let r = self.resolve(uri).await?;
        match (r.is_file, r.files.first()) {
            (true, Some(f)) => Ok(f.clone()),
            _ => Err(NodeError::IsFolder(uri.to_string())),
        }
    }
}

/// The file at `path` of a listing: by binary search, as listings come sorted by path; by a
/// walk if that misses (a listing out of order still answers right, only slower).
fn find_path<'a>(all: &'a [RemoteFile], path: &str) -> Option<&'a RemoteFile> {
    match all.binary_search_by(|f| f.path.as_str().cmp(path)) {
        Ok(i) => all.get(i),
        Err(_) => all.iter().find(|f| f.path == path),
    }
}

/// A full commit id: 40 lowercase hex digits.
fn is_commit_id(rev: &str) -> bool {
    rev.len() == 40 && rev.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether `rev` of `ns` can never change (a full commit id of a namespace with revisions).
fn immutable(ns: &Namespace, rev: &str) -> bool {
    ns.has_revisions() && is_commit_id(rev)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(n: usize) -> Vec<RemoteFile> {
        (0..n)
            .map(|i| RemoteFile {
                uri: format!("hf://acme/big@{}/f/{i}", "c".repeat(40)),
                path: format!("f/{i}"),
                size: 1,
                key: format!("k{i}"),
                locator: String::new(),
                digest: None,
                listed: None,
            })
            .collect()
    }

    #[test]
    fn a_path_is_found_in_a_sorted_listing_and_in_one_out_of_order() {
        let sorted = files(1000);
        let mut sorted = sorted;
        sorted.sort_by(|a, b| a.path.cmp(&b.path));
        for p in ["f/0", "f/999", "f/500"] {
            assert_eq!(find_path(&sorted, p).map(|f| f.path.as_str()), Some(p));
        }
        assert!(find_path(&sorted, "f/1000").is_none());
        let mut shuffled = sorted.clone();
        shuffled.reverse();
        shuffled.swap(3, 700);
        for f in &sorted {
            assert_eq!(find_path(&shuffled, &f.path).map(|g| &g.key), Some(&f.key));
        }
    }

    #[test]
    fn a_listing_of_hundreds_of_thousands_of_files_stays_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 30).unwrap();
        let meta = MetaCache::new(Duration::from_secs(60), store);
        let ns = LocusUri::parse("hf://acme/big").unwrap().namespace;
        let rev = "c".repeat(40);
        // Whatever the machine's cores: a listing of 300k files (under the bound) is kept.
        meta.put_listing(&ns, &rev, files(300_000));
        let kept = meta.listing(&ns, &rev).expect("kept in memory");
        assert_eq!(kept.len(), 300_000);
        // The bound holds in all: two listings of 1.2M files together are not both kept.
        let other = LocusUri::parse("hf://acme/other").unwrap().namespace;
        meta.put_listing(&other, &rev, files(900_000));
        let both = meta.listing(&other, &rev).is_some() && meta.listing(&ns, &rev).is_some();
        assert!(!both, "over the bound");
    }
}
