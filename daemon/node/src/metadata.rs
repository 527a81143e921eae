//! Metadata: what a URI names. Revisions and listings are cached in memory ([`MetaCache`]: the
//! TTL, the size bounds and single-flight in one place) and in the store's index (listings at
//! immutable revisions for good, revisions for use while the origin is down), asked of the
//! namespace's owner on the ring, else of the origin.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use locus_cluster::key_hash;
use locus_core::uri::LocusUri;
use locus_core::{Files, Listing, Namespace, RemoteFile};
use locus_origin::OriginError;
use locus_store::Store;
use quick_cache::sync::Cache;
use quick_cache::Weighter as _;
use serde::{Deserialize, Serialize};

use crate::{peer, Node, NodeError};

/// After an object changed under a listing, answers older than this are not taken (a burst of
/// readers that hit the change still costs one listing).
pub(crate) const RELIST_AGE: Duration = Duration::from_secs(1);

/// Listings, prefixes and namespaces marked stale kept in memory at most.
const MAX_LISTINGS: usize = 4096;
/// Bytes of all the listings kept in memory at most (a compact listing takes 10-60 bytes a
/// file: 10-50M files), but for the one last used that is heavier than that alone.
const MAX_LISTED_BYTES: u64 = 512 << 20;

/// A listing's name: its namespace and revision id.
type ListingKey = (Namespace, String);

/// Resolved revisions kept in memory at most.
const MAX_REVISIONS: usize = 65_536;

/// A URI resolved at an immutable revision.
pub struct Resolved {
    /// The commit.
    pub revision: String,
    /// The files it names (one for a file URI): a part of the cached listing, never a copy.
    pub files: Files,
    /// Whether the URI named a single file.
    pub is_file: bool,
}

/// A revision as the index keeps it.
#[derive(Serialize, Deserialize)]
struct CachedRevision {
    id: String,
    at_ms: u64,
}

/// A listing weighs its bytes.
#[derive(Clone)]
struct ListingWeight;

impl quick_cache::Weighter<ListingKey, Arc<Listing>> for ListingWeight {
    fn weight(&self, _: &ListingKey, v: &Arc<Listing>) -> u64 {
        v.weight() + 64
    }
}

/// A listing as the index keeps it, written from where it lies (a 10M-file listing is 600 MB:
/// a copy of it for the index writer was half the daemon's peak while listing it).
struct Stored(Arc<Listing>);

impl locus_store::MetaValue for Stored {
    fn write_to(&self, out: &mut dyn FnMut(&[u8])) {
        self.0.write_bytes(out);
    }
}

/// A revision as resolved: what to, when, and how long the answer took to get.
#[derive(Clone)]
struct Answer {
    id: String,
    at: Instant,
    took: Duration,
}

/// How long before its TTL ends an answer in use is asked for again (in the background, so
/// that no reader waits for it): twice what the last answer took (an S3 prefix of 100,000 keys
/// is 100 LIST pages, seconds), at least a tenth of the TTL and at most half of it.
fn refresh_margin(ttl: Duration, took: Duration) -> Duration {
    took.saturating_mul(2).clamp(ttl / 10, ttl / 2)
}

/// A node's metadata cache. Every map is bounded (names come from users and peers; what goes
/// is asked for again), and every key's index record is written here.
pub(crate) struct MetaCache {
    ttl: Duration,
    /// Resolved revisions, with when they were resolved.
    revisions: Cache<(Namespace, String), Answer>,
    /// Revisions being asked for again ahead of their TTL (one refresh each at a time), or
    /// whose refresh failed: none again before the time kept (the answer's TTL end).
    refreshing: DashMap<(Namespace, String), Option<Instant>>,
    /// One lock per metadata key being fetched.
    flights: DashMap<String, Arc<tokio::sync::Mutex<Flight>>>,
    /// S3 prefixes and folders listed here: a key under one is looked up in its listing.
    prefixes: Cache<Namespace, ()>,
    /// Namespaces whose listing an object changed under: listed again on their next use.
    stale: Cache<Namespace, ()>,
    /// Listings in memory, bounded by their bytes in all.
    listings: Cache<ListingKey, Arc<Listing>, ListingWeight>,
    /// The last listing used that is heavier than the bound (a Hub dataset of 10M files, each
    /// with its own blob id: about 600 MB). The cache keeps no such item, and reading it from
    /// the index at every folder a mount opens costs seconds each.
    large: Mutex<Option<(ListingKey, Arc<Listing>)>>,
    /// The bound on `listings`' bytes.
    max_listed: u64,
    /// The durable layer (the store's index).
    store: Arc<Store>,
}

/// The in-memory listings: one shard. quick_cache splits its weight among its shards and keeps
/// no item heavier than one shard's share, so with its default (4 per core) a large listing
/// was never kept and every resolution read it again. Listings are few and looked up under a
/// read lock.
fn listings_cache(bound: u64) -> Cache<ListingKey, Arc<Listing>, ListingWeight> {
    let options = quick_cache::OptionsBuilder::new()
        .estimated_items_capacity(MAX_LISTINGS)
        .weight_capacity(bound)
        .shards(1)
        .build();
    match options {
        Ok(o) => Cache::with_options(o, ListingWeight, Default::default(), Default::default()),
        // Not reachable with the fields above; the default still bounds memory.
        Err(_) => Cache::with_weighter(MAX_LISTINGS, bound, ListingWeight),
    }
}

/// A metadata key's flight: the origin failure of its last request, and when it came.
#[derive(Default)]
struct Flight {
    failed: Option<(Instant, OriginError)>,
}

/// One caller's turn in a flight.
struct FlightGuard {
    guard: tokio::sync::OwnedMutexGuard<Flight>,
    /// When the caller began to wait for its turn.
    waited: Instant,
}

impl FlightGuard {
    /// The origin's answer to the request this caller waited behind, when it failed: waiters
    /// share a failure as they share a success (an outage costs one request's attempts, not
    /// one per waiter); a caller that came later asks again.
    fn shared_failure(&self) -> Option<OriginError> {
        self.guard
            .failed
            .as_ref()
            .filter(|(at, _)| *at >= self.waited)
            .map(|(_, e)| e.clone())
    }

    /// Records the origin's failure for those waiting behind this caller.
    fn failed(&mut self, e: &OriginError) {
        self.guard.failed = Some((Instant::now(), e.clone()));
    }

    /// Asks the origin with `ask`, unless the request this caller waited behind failed.
    async fn ask<T>(
        &mut self,
        ask: impl std::future::Future<Output = Result<T, OriginError>>,
    ) -> Result<T, OriginError> {
        if let Some(e) = self.shared_failure() {
            return Err(e);
        }
        let r = ask.await;
        if let Err(e) = &r {
            self.failed(e);
        }
        r
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
        Self::bounded(ttl, store, MAX_LISTED_BYTES)
    }

    /// With `max_listed` bytes of listings in memory (and one heavier one).
    fn bounded(ttl: Duration, store: Arc<Store>, max_listed: u64) -> Self {
        Self {
            ttl,
            revisions: Cache::new(MAX_REVISIONS),
            refreshing: DashMap::new(),
            flights: DashMap::new(),
            prefixes: Cache::new(MAX_LISTINGS),
            stale: Cache::new(MAX_LISTINGS),
            listings: listings_cache(max_listed),
            large: Mutex::new(None),
            max_listed,
            store,
        }
    }

    fn large(&self) -> std::sync::MutexGuard<'_, Option<(ListingKey, Arc<Listing>)>> {
        self.large.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serializes fetches of one metadata key, so that concurrent misses make one request.
    async fn flight(&self, key: &str) -> FlightGuard {
        if self.flights.len() > MAX_LISTINGS {
            self.flights.retain(|_, m| Arc::strong_count(m) > 1);
        }
        let m = self.flights.entry(key.to_string()).or_default().clone();
        let waited = Instant::now();
        FlightGuard {
            guard: m.lock_owned().await,
            waited,
        }
    }

    /// The revision `rev` of `ns` resolved to less than `max_age` ago (and within the TTL),
    /// with its age.
    fn revision(&self, ns: &Namespace, rev: &str, max_age: Duration) -> Option<(String, Duration)> {
        let max_age = max_age.min(self.ttl);
        self.revisions
            .get(&(ns.clone(), rev.to_string()))
            .filter(|e| e.at.elapsed() < max_age)
            .map(|e| (e.id, e.at.elapsed()))
    }

    /// When `rev` of `ns` is an answer within its TTL that is due to be asked for again (see
    /// [`refresh_margin`]), with no refresh of it under way or failed: marks it refreshing
    /// (until [`MetaCache::refreshed`]) and returns the age a new answer must be under and
    /// when the answer held expires.
    fn start_refresh(&self, ns: &Namespace, rev: &str) -> Option<(Duration, Instant)> {
        let key = (ns.clone(), rev.to_string());
        let e = self.revisions.get(&key)?;
        let due = self.ttl.saturating_sub(refresh_margin(self.ttl, e.took));
        let age = e.at.elapsed();
        if age < due || age >= self.ttl {
            return None;
        }
        let now = Instant::now();
        if self.refreshing.len() > MAX_REVISIONS {
            self.refreshing.retain(|_, v| v.is_none_or(|t| t > now));
        }
        match self.refreshing.entry(key) {
            Entry::Occupied(mut o) => match *o.get() {
                Some(t) if t <= now => {
                    o.insert(None);
                }
                _ => return None,
            },
            Entry::Vacant(v) => {
                v.insert(None);
            }
        }
        Some((due, e.at + self.ttl))
    }

    /// Ends a refresh started by [`MetaCache::start_refresh`]; a failed one is not started
    /// again before `retry_at`.
    fn refreshed(&self, ns: &Namespace, rev: &str, retry_at: Option<Instant>) {
        let key = (ns.clone(), rev.to_string());
        match retry_at {
            Some(t) => {
                self.refreshing.insert(key, Some(t));
            }
            None => {
                self.refreshing.remove(&key);
            }
        }
    }

    /// Records what a refresh asked for at `asked`, unless the answer held is newer or went
    /// meanwhile (an object changed under its listing: [`MetaCache::mark_stale`]); `origin`:
    /// it came from the origin, and is written to the index too.
    fn put_refreshed(&self, ns: &Namespace, rev: &str, answer: Answer, origin: bool) {
        let key = (ns.clone(), rev.to_string());
        if self.revisions.get(&key).is_none_or(|e| e.at > answer.at) {
            return;
        }
        if origin {
            self.keep_revision(ns, rev, &answer.id);
        }
        self.revisions.insert(key, answer);
    }

    /// How long ago `rev` of `ns` was resolved to `id`, if that is what it is resolved to
    /// now (however old).
    fn age(&self, ns: &Namespace, rev: &str, id: &str) -> Option<Duration> {
        self.revisions
            .get(&(ns.clone(), rev.to_string()))
            .filter(|e| e.id == id)
            .map(|e| e.at.elapsed())
    }

    /// The last revision known for `rev` of `ns`, however old: from memory, else the index.
    /// For when the origin cannot be reached.
    fn last_revision(&self, ns: &Namespace, rev: &str) -> Option<String> {
        self.revisions
            .get(&(ns.clone(), rev.to_string()))
            .map(|e| e.id)
            .or_else(|| {
                self.store
                    .meta_get(&revision_key(ns, rev))
                    .and_then(|b| serde_json::from_slice::<CachedRevision>(&b).ok())
                    .map(|c| c.id)
            })
    }

    /// Records a revision that was resolved `age` ago (by another node), in memory, with how
    /// long the answer took to get.
    fn put_revision(&self, ns: &Namespace, rev: &str, id: String, age: Duration, took: Duration) {
        let at = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        self.revisions
            .insert((ns.clone(), rev.to_string()), Answer { id, at, took });
    }

    /// Records a revision the origin just gave (in `took`), in memory and in the index.
    fn record_revision(&self, ns: &Namespace, rev: &str, id: &str, took: Duration) {
        self.put_revision(ns, rev, id.to_string(), Duration::ZERO, took);
        self.keep_revision(ns, rev, id);
    }

    /// Writes a revision the origin gave to the index (for use while the origin is down).
    fn keep_revision(&self, ns: &Namespace, rev: &str, id: &str) {
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
    fn listing(&self, ns: &Namespace, rev_id: &str) -> Option<Arc<Listing>> {
        let key = (ns.clone(), rev_id.to_string());
        self.listings.get(&key).or_else(|| {
            self.large()
                .as_ref()
                .filter(|(k, _)| *k == key)
                .map(|(_, l)| l.clone())
        })
    }

    /// A listing the index kept (one of an older format is listed again).
    fn stored_listing(&self, ns: &Namespace, rev_id: &str) -> Option<Listing> {
        let b = self.store.meta_get(&listing_key(ns, rev_id))?;
        Listing::from_bytes(b)
            .inspect_err(|e| tracing::debug!(%ns, rev_id, error = %e, "listing again"))
            .ok()
    }

    /// Keeps a listing in the index, when it is at an immutable revision (listings of names
    /// without revisions move on every TTL: kept in memory only).
    fn store_listing(&self, ns: &Namespace, rev_id: &str, files: &Arc<Listing>) {
        if ns.has_revisions() {
            self.store
                .meta_put_shared(&listing_key(ns, rev_id), Arc::new(Stored(files.clone())));
        }
    }

    /// Keeps a listing in memory. A namespace without revisions keeps only its latest, its
    /// files marked with where they were listed, and a small one is remembered as a prefix.
    fn put_listing(&self, ns: &Namespace, rev_id: &str, mut files: Listing) -> Arc<Listing> {
        if !ns.has_revisions() {
            self.listings.retain(|(n, _), _| n != ns);
            let mut large = self.large();
            if large.as_ref().is_some_and(|((n, _), _)| n == ns) {
                *large = None;
            }
            drop(large);
            // Prefixes whose keys are worth a re-list instead of a HEAD each: not a whole
            // bucket or file system, and not more than a few LIST pages.
            let root = matches!(ns, Namespace::S3 { prefix, .. } if prefix.is_empty())
                || matches!(ns, Namespace::File { path } if path == "/");
            if files.len() > 1 && files.len() <= 5_000 && !root {
                self.prefixes.insert(ns.clone(), ());
            }
            files.set_listed(locus_core::Listed {
                namespace: ns.to_string(),
                revision: rev_id.to_string(),
            });
        }
        let files = Arc::new(files);
        let key = (ns.clone(), rev_id.to_string());
        // The cache refuses what is heavier than its hot share (a little under the bound), so
        // what it did not take is kept here.
        if ListingWeight.weight(&key, &files) <= self.max_listed {
            self.listings.insert(key.clone(), files.clone());
        }
        if !self.listings.contains_key(&key) {
            *self.large() = Some((key, files.clone()));
        }
        files
    }

    /// Whether `ns` was listed here as a prefix (its keys are looked up in its listing).
    fn is_prefix(&self, ns: &Namespace) -> bool {
        // `get`, not `contains_key`: a prefix in use must count as used, or it goes first.
        self.prefixes.get(ns).is_some()
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
    /// `max_age`: an answer younger than this (at most the TTL).
    async fn revision_within(
        &self,
        ns: &Namespace,
        rev: &str,
        max_age: Duration,
    ) -> Result<String, NodeError> {
        // A full commit id is immutable: nothing to ask.
        if immutable(ns, rev) {
            return Ok(rev.to_string());
        }
        // After an object changed under this namespace's listing: a fresh one, also from its owner.
        let max_age = match self.meta.take_stale(ns) {
            true => RELIST_AGE.min(max_age),
            false => max_age,
        };
        if let Some((id, _)) = self.meta.revision(ns, rev, max_age) {
            self.refresh_ahead(ns, rev);
            return Ok(id);
        }
        if let Some(a) = self.revision_from_owner(ns, rev, max_age).await? {
            let id = a.id.clone();
            self.meta
                .put_revision(ns, rev, a.id, a.at.elapsed(), a.took);
            return Ok(id);
        }
        self.revision_local(ns, rev, max_age)
            .await
            .map(|(id, _)| id)
    }

    /// Asks the namespace's owner, when another node owns it, for `rev` of `ns` resolved less
    /// than `max_age` ago (not recorded here); `None`: ask the origin.
    async fn revision_from_owner(
        &self,
        ns: &Namespace,
        rev: &str,
        max_age: Duration,
    ) -> Result<Option<Answer>, NodeError> {
        let Some((owner, peers)) = self.metadata_owner(ns) else {
            return Ok(None);
        };
        let req = locus_grpc::v1::ResolveRequest {
            namespace: ns.to_string(),
            revision: rev.to_string(),
            max_age_ms: max_age.as_millis() as u64,
        };
        let asked = Instant::now();
        match peers.resolve(&owner, req).await {
            Ok(r) if r.id.len() <= peer::MAX_FIELD && !r.id.is_empty() => {
                let age = Duration::from_millis(r.age_ms).min(self.cfg.metadata_ttl);
                return Ok(Some(Answer {
                    id: r.id,
                    at: Instant::now().checked_sub(age).unwrap_or(asked),
                    took: asked.elapsed(),
                }));
            }
            Ok(_) => self.owner_unanswered(
                &owner,
                ns,
                rev,
                peer::PeerError::garbled(&owner, "an empty or oversized revision"),
            )?,
            Err(e) => self.owner_unanswered(&owner, ns, rev, e)?,
        }
        Ok(None)
    }

    /// A refresh: asks the owner, else the origin, for `rev` of `ns` younger than `max_age`,
    /// brings the listing it names into memory, and only then records it, so that a reader
    /// who takes the new answer finds its listing.
    async fn refresh(&self, ns: &Namespace, rev: &str, max_age: Duration) -> Result<(), NodeError> {
        let (answer, origin) = match self.revision_from_owner(ns, rev, max_age).await? {
            Some(a) => (a, false),
            None => {
                let asked = Instant::now();
                let id = self.origin.resolve(ns, rev).await?;
                let took = asked.elapsed();
                // Its age counts from the question: never taken for newer than it is.
                (
                    Answer {
                        id,
                        at: asked,
                        took,
                    },
                    true,
                )
            }
        };
        self.listing(ns, &answer.id, false).await?;
        self.meta.put_refreshed(ns, rev, answer, origin);
        Ok(())
    }

    /// Asks again, in the background, for a revision in use whose TTL is about to end, and
    /// brings the listing it names into memory: readers keep the answer they have until then,
    /// so none waits for a listing of many keys every TTL. A revision not used in the last
    /// part of its TTL is asked for by its next reader, as before.
    fn refresh_ahead(&self, ns: &Namespace, rev: &str) {
        let Some((max_age, expires)) = self.meta.start_refresh(ns, rev) else {
            return;
        };
        /// Ends the refresh however the task ends (`retry_at`: it failed).
        struct Refreshing {
            node: Arc<Node>,
            ns: Namespace,
            rev: String,
            retry_at: Option<Instant>,
        }
        impl Drop for Refreshing {
            fn drop(&mut self) {
                self.node.meta.refreshed(&self.ns, &self.rev, self.retry_at);
            }
        }
        let Some(node) = self.me.upgrade() else {
            self.meta.refreshed(ns, rev, None);
            return;
        };
        metrics::counter!(crate::metrics_defs::METADATA_REFRESHES).increment(1);
        let mut r = Refreshing {
            node,
            ns: ns.clone(),
            rev: rev.to_string(),
            retry_at: None,
        };
        tokio::spawn(async move {
            if let Err(e) = r.node.refresh(&r.ns, &r.rev, max_age).await {
                // Not asked again ahead of this answer's TTL: its next reader past the TTL asks,
                // and sees the error if it stays.
                tracing::debug!(ns = %r.ns, rev = r.rev, error = %e, "refresh ahead of the TTL failed");
                r.retry_at = Some(expires);
            }
            drop(r);
        });
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
        let mut flight = self.meta.flight(&revision_key(ns, rev)).await;
        if let Some(hit) = self.meta.revision(ns, rev, max_age) {
            return Ok(hit);
        }
        let asked = Instant::now();
        match flight.ask(self.origin.resolve(ns, rev)).await {
            Ok(id) => {
                self.meta.record_revision(ns, rev, &id, asked.elapsed());
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
    ) -> Result<Arc<Listing>, NodeError> {
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
        let mut flight = self.meta.flight(&flight).await;
        if let Some(l) = self.meta.listing(ns, rev_id) {
            return Ok(l);
        }
        // The index's copy is read once (a listing of millions of files is a 100 MB value).
        let stored = self.meta.stored_listing(ns, rev_id);
        let from_owner = match (&stored, self.metadata_owner(ns).filter(|_| !local_only)) {
            (None, Some((owner, peers))) => self.listing_from(ns, rev_id, &owner, &*peers).await?,
            _ => None,
        };
        let (files, fresh) = match (stored, from_owner) {
            (Some(f), _) => (f, false),
            (None, Some(f)) => (f, true),
            (None, None) => (flight.ask(self.origin.list(ns, rev_id)).await?, true),
        };
        let files = self.meta.put_listing(ns, rev_id, files);
        if fresh {
            self.meta.store_listing(ns, rev_id, &files);
        }
        Ok(files)
    }

    /// A listing from the namespace's owner, checked entry by entry; `None` (ask the origin)
    /// when the owner cannot answer, an error when its answer settles the matter.
    async fn listing_from(
        &self,
        ns: &Namespace,
        rev_id: &str,
        owner: &str,
        peers: &dyn peer::PeerTransport,
    ) -> Result<Option<Listing>, NodeError> {
        let req = locus_grpc::v1::PeerListRequest {
            namespace: ns.to_string(),
            revision_id: rev_id.to_string(),
        };
        match peers.list(owner, req).await {
            Ok(f) => Ok(Some(f)),
            Err(e) => {
                self.owner_unanswered(owner, ns, rev_id, e)?;
                Ok(None)
            }
        }
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
    fn known_from_enclosing(&self, ns: &Namespace, max_age: Duration) -> Option<Resolved> {
        for (parent, rel) in ns.ancestors() {
            let Some((rev, _)) = self.meta.revision(&parent, locus_core::LATEST, max_age) else {
                continue;
            };
            let Some(all) = self.meta.listing(&parent, &rev) else {
                continue;
            };
            let known = if let Some(i) = all.find(&rel) {
                // The file, named by its last segment.
                let dir = rel.rfind('/').map_or(0, |d| d + 1);
                Resolved {
                    revision: rev,
                    files: Files::part(all, i..i + 1, dir),
                    is_file: true,
                }
            } else {
                let inside = format!("{rel}/");
                let range = all.under(&inside);
                // An empty answer may just be an object created since: ask the origin.
                if range.is_empty() {
                    continue;
                }
                Resolved {
                    revision: rev,
                    files: Files::part(all, range, inside.len()),
                    is_file: false,
                }
            };
            self.refresh_ahead(&parent, locus_core::LATEST);
            return Some(known);
        }
        None
    }

    /// Resolves `uri` to the files it names at an immutable revision.
    pub async fn resolve(&self, uri: &LocusUri) -> Result<Resolved, NodeError> {
        self.resolve_within(uri, None).await
    }

    /// [`Node::resolve`] from a revision younger than `max_age` (between a second and the
    /// metadata TTL; `None`: the TTL): a mount lists again ahead of its listing's TTL with it.
    pub async fn resolve_within(
        &self,
        uri: &LocusUri,
        max_age: Option<Duration>,
    ) -> Result<Resolved, NodeError> {
        let ttl = self.cfg.metadata_ttl;
        let max_age = max_age.map_or(ttl, |a| a.clamp(RELIST_AGE.min(ttl), ttl));
        if let Some(r) = self.known_from_enclosing(&uri.namespace, max_age) {
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
            if let Ok(rev) = self
                .revision_within(&parent, locus_core::LATEST, max_age)
                .await
            {
                if self.listing(&parent, &rev, false).await.is_ok() {
                    if let Some(r) = self.known_from_enclosing(&uri.namespace, max_age) {
                        return Ok(r);
                    }
                }
            }
        }
        let revision = self
            .revision_within(&uri.namespace, uri.revision_or_default(), max_age)
            .await?;
        let all = self.listing(&uri.namespace, &revision, false).await?;
        if uri.path.is_empty() {
            // A name without revisions that lists as itself is one object or file.
            let is_file = !uri.namespace.has_revisions()
                && all.len() == 1
                && all
                    .get(0)
                    .is_some_and(|f| f.uri == uri.namespace.to_string());
            // The cached listing itself, not a copy of it.
            return Ok(Resolved {
                revision,
                files: Files::all(all),
                is_file,
            });
        }
        if let Some(i) = all.find(&uri.path) {
            return Ok(Resolved {
                revision,
                files: Files::part(all, i..i + 1, 0),
                is_file: true,
            });
        }
        let range = all.under(&format!("{}/", uri.path));
        if range.is_empty() {
            return Err(NodeError::NotFound(uri.at_revision(&revision).to_string()));
        }
        Ok(Resolved {
            revision,
            files: Files::part(all, range, 0),
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
            (true, Some(f)) => Ok(f),
            _ => Err(NodeError::IsFolder(uri.to_string())),
        }
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

    #[test]
    fn resolved_revisions_are_bounded_and_one_in_use_outlives_a_flood_of_names() {
        let dir = tempfile::tempdir().unwrap();
        let meta = MetaCache::new(
            Duration::from_secs(60),
            Store::open(dir.path(), 1 << 30).unwrap(),
        );
        let ns = |i: usize| {
            LocusUri::parse(&format!("hf://acme/m{i}"))
                .unwrap()
                .namespace
        };
        let put = |i: usize| {
            meta.put_revision(
                &ns(i),
                "main",
                "c".repeat(40),
                Duration::ZERO,
                Duration::ZERO,
            )
        };
        let held = |i: usize| {
            meta.revision(&ns(i), "main", Duration::from_secs(60))
                .is_some()
        };
        // A cache in its steady state first (quick_cache keeps the first entries of an empty
        // one in its hot part, whatever their use).
        for i in 0..2 * MAX_REVISIONS {
            put(10_000_000 + i);
        }
        put(0);
        put(1);
        for i in 2..2 * MAX_REVISIONS {
            if i % 10 == 0 {
                assert!(held(0), "dropped while in use ({i})");
            }
            put(i);
        }
        assert!(
            meta.revisions.len() <= MAX_REVISIONS,
            "{}",
            meta.revisions.len()
        );
        assert_eq!(
            (held(0), held(1), held(2 * MAX_REVISIONS - 1)),
            (true, false, true)
        );
    }

    #[test]
    fn s3_prefixes_are_bounded_and_one_in_use_outlives_a_flood_of_prefixes() {
        let dir = tempfile::tempdir().unwrap();
        let meta = MetaCache::new(
            Duration::from_secs(60),
            Store::open(dir.path(), 1 << 30).unwrap(),
        );
        let ns = |i: usize| {
            LocusUri::parse(&format!("s3://bucket/p{i}"))
                .unwrap()
                .namespace
        };
        let list = |i: usize| {
            let two: Listing = (0..2)
                .map(|j| RemoteFile {
                    uri: format!("s3://bucket/p{i}/k{j}"),
                    path: format!("k{j}"),
                    size: 1,
                    key: format!("s3:bucket/p{i}/k{j}:1"),
                    locator: format!("p{i}/k{j}"),
                    digest: None,
                    listed: None,
                })
                .collect();
            meta.put_listing(&ns(i), "v1", two);
        };
        // A cache in its steady state first (see above).
        for i in 0..2 * MAX_LISTINGS {
            list(10_000_000 + i);
        }
        list(0);
        list(1);
        for i in 2..2 * MAX_LISTINGS {
            if i % 10 == 0 {
                assert!(meta.is_prefix(&ns(0)), "dropped while in use ({i})");
            }
            list(i);
        }
        assert!(
            meta.prefixes.len() <= MAX_LISTINGS,
            "{}",
            meta.prefixes.len()
        );
        assert_eq!(
            (meta.is_prefix(&ns(0)), meta.is_prefix(&ns(1))),
            (true, false)
        );
    }

    /// `n` files of a Hub dataset, each URI `pad` bytes longer than it needs, in a form no other
    /// file shares (a listing that weighs more per file).
    fn files(n: usize, pad: usize) -> Listing {
        let rev = "c".repeat(40);
        let mut b = locus_core::ListingBuilder::default();
        for i in 0..n {
            let path = format!("f/{i:08}");
            b.push(&RemoteFile {
                uri: format!(
                    "hf://acme/big@{rev}/{path}{}",
                    (i % 10).to_string().repeat(pad)
                ),
                locator: format!("acme/big/resolve/{rev}/{path}"),
                key: format!("hf:acme/big@{rev}/{path}:1"),
                size: 1,
                path,
                digest: None,
                listed: None,
            });
        }
        b.finish()
    }

    #[test]
    fn a_listing_of_millions_of_files_stays_in_memory_within_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 30).unwrap();
        let meta = MetaCache::new(Duration::from_secs(60), store);
        let ns = LocusUri::parse("hf://acme/big").unwrap().namespace;
        let rev = "c".repeat(40);
        // Whatever the machine's cores: a listing of 2M files is kept, in under 32 bytes a file.
        let two_million = files(2_000_000, 0);
        assert!(
            two_million.weight() < 2_000_000 * 32,
            "{}",
            two_million.weight()
        );
        meta.put_listing(&ns, &rev, two_million);
        let kept = meta.listing(&ns, &rev).expect("kept in memory");
        assert_eq!(kept.len(), 2_000_000);
        assert_eq!(
            kept.get(1_234_567).map(|f| f.uri),
            Some(format!("hf://acme/big@{rev}/f/01234567"))
        );
        // The bound holds in all: two listings of 3/4 of the bound each are not both kept.
        let pad = 64 << 10;
        let n = (MAX_LISTED_BYTES / pad as u64 * 3 / 4) as usize;
        let (a, b) = (
            LocusUri::parse("hf://acme/a").unwrap().namespace,
            LocusUri::parse("hf://acme/b").unwrap().namespace,
        );
        meta.put_listing(&a, &rev, files(n, pad));
        meta.put_listing(&b, &rev, files(n, pad));
        let both = meta.listing(&a, &rev).is_some() && meta.listing(&b, &rev).is_some();
        assert!(!both, "over the bound");
    }

    /// A listing heavier than the whole bound (a 10M-file Hub dataset's) stays in memory while
    /// it is the last such one used, beside the listings within the bound; the next heavy one
    /// takes its place.
    #[test]
    fn the_last_listing_heavier_than_the_bound_stays_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 30).unwrap();
        let meta = MetaCache::bounded(Duration::from_secs(60), store, 1 << 20);
        let rev = "c".repeat(40);
        let ns = |n: &str| {
            LocusUri::parse(&format!("hf://acme/{n}"))
                .unwrap()
                .namespace
        };
        let heavy = files(100, 16 << 10);
        assert!(heavy.weight() > 1 << 20);
        meta.put_listing(&ns("big"), &rev, heavy);
        meta.put_listing(&ns("small"), &rev, files(10, 0));
        let kept = meta
            .listing(&ns("big"), &rev)
            .expect("the heavy listing is kept");
        assert_eq!(kept.len(), 100);
        assert!(meta.listing(&ns("small"), &rev).is_some());
        assert!(
            meta.listing(&ns("big"), &"d".repeat(40)).is_none(),
            "another revision"
        );
        meta.put_listing(&ns("bigger"), &rev, files(120, 16 << 10));
        assert_eq!(
            meta.listing(&ns("bigger"), &rev).map(|l| l.len()),
            Some(120)
        );
        assert!(
            meta.listing(&ns("big"), &rev).is_none(),
            "one heavy listing at a time"
        );
        assert!(meta.listing(&ns("small"), &rev).is_some());
        // Under the bound but over the cache's hot share of it (97%): the cache refuses it,
        // so it is kept here.
        let near = (1..100)
            .map(|n| files(n, 16 << 10))
            .find(|l| (((1 << 20) * 97 / 100)..=(1 << 20)).contains(&(l.weight() + 64)))
            .expect("a listing between the hot share and the bound");
        let n = near.len();
        meta.put_listing(&ns("near"), &rev, near);
        assert_eq!(meta.listing(&ns("near"), &rev).map(|l| l.len()), Some(n));
    }
}
