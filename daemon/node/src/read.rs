//! Chunk fetches (single-flight, retried, streamed to disk) and whole-file verification.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use locus_core::{Digest, RemoteFile};
use locus_store::{ChunkCheck, FileHandle, StoreError, SINCE_START};
use sha1::Digest as _;

use crate::fetches::{Joined, Underway};
use crate::peer::{PeerError, PeerTransport, PieceStream, IDLE_TIMEOUT, MAX_PIECE};
use crate::sha_chain;
use crate::{Node, NodeError};
use locus_cluster::Plan;
use locus_grpc::v1 as pb;

/// Bytes gathered from the network before one write to the cache file.
const WRITE_BATCH: usize = 1 << 20;

/// Progress of a warm or a read, shared with whoever reports it.
#[derive(Default, Debug)]
pub struct WarmProgress {
    /// Bytes of every selected file.
    pub total_bytes: AtomicU64,
    /// Bytes stored and ready.
    pub done_bytes: AtomicU64,
    /// Files selected.
    pub total_files: AtomicU64,
    /// Files fully cached and verified.
    pub done_files: AtomicU64,
    /// Bytes that came from the origin for this request.
    pub origin_bytes: AtomicU64,
    /// Bytes that came from peers for this request.
    pub peer_bytes: AtomicU64,
    /// Bytes that were already on this node.
    pub local_bytes: AtomicU64,
    /// Cache keys of the selected files: fetches under way of these count in reports.
    pub keys: std::collections::HashSet<String>,
    /// An all-nodes warm: each member's part, and why it failed if it did.
    pub nodes: std::sync::Mutex<Vec<crate::warm::NodePart>>,
}

/// Where a chunk came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Already on this node's disk.
    Local,
    /// Fetched from the origin by this node.
    Origin,
    /// Received from a peer.
    Peer,
}

/// Peer hops a local reader's request may take: to the chosen peer, and from it to the primary.
pub(crate) const READER_HOPS: u32 = 2;

/// Where a fetch of a chunk may go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// Peers first, with at most this many more peer hops ([`READER_HOPS`] for a local
    /// reader; 0 for a peer's request to the primary, which then goes to its origin).
    Peers(u32),
    /// The origin alone, trusting no peer: the refetch after a file failed its digest.
    OriginOnly,
}
/// Peers tried for one chunk before going to the origin.
const PEER_TRIES: usize = 3;

/// A chunk's place on the ring.
pub fn chunk_hash(key: &str, chunk_size: u64, idx: u32) -> u64 {
    locus_cluster::key_hash(format!("{key}#{chunk_size}#{idx}").as_bytes())
}

enum Checked {
    Good,
    /// A chunk failed its CRC and was dropped.
    ChunkDropped,
    /// Not every chunk landed.
    Incomplete,
    Mismatch,
}

/// Ends a fetch's record in [`Fetches`](crate::fetches::Fetches) when dropped.
struct Finish(Arc<Node>, (String, u32));

impl Drop for Finish {
    fn drop(&mut self) {
        self.0.fetches.finished(&self.1);
    }
}

/// What a chunk's peers did for a reader ([`Node::fetch_via_peers`]).
enum Via {
    /// The chunk, from a peer.
    Got(Source),
    /// The primary answered that the origin was unavailable: it spent its attempts.
    OriginUnavailable,
    /// No peer could help (none up, or one that failed otherwise).
    NoHelp,
}

impl Node {
    /// Registers `file` in the store (or finds it). A file in memory is found at once; one
    /// that is not is looked up off the runtime's threads, its disk reads (index, inode) done
    /// before the store's lock: the runtime has a thread per core for every request.
    pub(crate) async fn register(&self, file: &RemoteFile) -> Result<Arc<FileHandle>, NodeError> {
        let chunk_size = self.cfg.chunk_size;
        if self.store.in_memory(&file.key) {
            return Ok(Arc::new(self.store.register(file, chunk_size)?));
        }
        let (store, file) = (self.store.clone(), file.clone());
        tokio::task::spawn_blocking(move || {
            store.read_ahead(&file.key);
            store.register(&file, chunk_size)
        })
        .await
        .map_err(|e| StoreError::Index(format!("the cache lookup stopped: {e}")))?
        .map(Arc::new)
        .map_err(NodeError::from)
    }

    /// Makes `file` fully cached and verified on this node; returns a handle that keeps it from
    /// eviction while held.
    pub async fn ensure_file(
        self: &Arc<Self>,
        file: &RemoteFile,
        progress: &WarmProgress,
    ) -> Result<Arc<FileHandle>, NodeError> {
        let h = self.register(file).await?;
        h.touch();
        let layout = h.layout();
        let mut mismatches = 0;
        // After a digest mismatch the file is fetched again from the origin alone: a peer's
        // chunk can pass its CRC and still be wrong.
        let mut route = Route::Peers(READER_HOPS);
        // Bytes this call reported done, taken back if a round must fetch again.
        let done_here = AtomicU64::new(0);
        let mut first_round = true;
        loop {
            if h.verified() {
                // Checked once against its digest, perhaps before this start: chunks not found
                // right since then are read again first (a power loss, or rot on disk).
                self.check_unchecked(&h).await?;
            }
            let missing = h.missing();
            let missing_set: std::collections::HashSet<u32> = missing.iter().copied().collect();
            let present: u64 = (0..layout.count())
                .filter(|i| !missing_set.contains(i))
                .map(|i| layout.len(i))
                .sum();
            if present > 0 {
                self.counters
                    .hits(layout.count() as u64 - missing.len() as u64);
            }
            if std::mem::take(&mut first_round) {
                // Served from this node's cache (a later round only finds its own fetches).
                self.counters.local(present);
            }
            progress.local_bytes.fetch_add(present, Ordering::Relaxed);
            progress.done_bytes.fetch_add(present, Ordering::Relaxed);
            done_here.fetch_add(present, Ordering::Relaxed);
            let done_here = &done_here;
            // Nothing to hash and nothing stored before (an object store's file, fetched
            // whole): each chunk's CRC is computed from the bytes as they are written, so the
            // file is checked once every chunk has landed, with no read back and no task.
            let fresh_unhashed =
                !h.verified() && h.digest().is_none() && missing.len() == layout.count() as usize;
            // The whole-file check runs beside the fetches, in chunk order, as chunks land.
            let (landed, hasher) = if h.verified() || fresh_unhashed {
                (None, None)
            } else {
                let (tx, rx) = std::sync::mpsc::channel::<(u32, bool)>();
                for i in (0..layout.count()).filter(|i| !missing_set.contains(i)) {
                    let _ = tx.send((i, false));
                }
                let hv = h.clone();
                let digest = h.digest();
                let task = tokio::task::spawn_blocking(move || verify(&hv, digest.as_ref(), rx));
                (Some(tx), Some(task))
            };
            let landed = &landed;
            futures::stream::iter(missing)
                .map(|idx| {
                    let h = h.clone();
                    async move {
                        let src = self.ensure_chunk_via(file, &h, idx, route).await?;
                        let len = layout.len(idx);
                        match src {
                            Source::Local => progress.local_bytes.fetch_add(len, Ordering::Relaxed),
                            Source::Origin => {
                                progress.origin_bytes.fetch_add(len, Ordering::Relaxed)
                            }
                            Source::Peer => progress.peer_bytes.fetch_add(len, Ordering::Relaxed),
                        };
                        progress.done_bytes.fetch_add(len, Ordering::Relaxed);
                        done_here.fetch_add(len, Ordering::Relaxed);
                        if let Some(tx) = landed {
                            // Fresh bytes: their CRC was computed as they were written.
                            let _ = tx.send((idx, true));
                        }
                        Ok::<_, NodeError>(())
                    }
                })
                .buffer_unordered(self.cfg.concurrency.max(1))
                .try_collect::<()>()
                .await?;
            let checked = match hasher {
                Some(task) => task
                    .await
                    .map_err(|e| NodeError::Internal(e.to_string()))??,
                None if !fresh_unhashed => return Ok(h),
                None if h.missing().is_empty() => {
                    all_checked(&h);
                    Checked::Good
                }
                // A chunk was dropped since it landed.
                None => Checked::ChunkDropped,
            };
            match checked {
                Checked::Good => {
                    h.mark_verified();
                    return Ok(h);
                }
                // Chunks dropped: the next round fetches them again. Count every round
                // from zero.
                Checked::ChunkDropped | Checked::Incomplete => {}
                Checked::Mismatch => {
                    mismatches += 1;
                    tracing::error!(
                        uri = file.uri,
                        "file does not match its published digest; fetching it again"
                    );
                    metrics::counter!(locus_core::metric::DIGEST_MISMATCHES).increment(1);
                    for idx in 0..layout.count() {
                        h.drop_chunk(idx);
                    }
                    route = Route::OriginOnly;
                    if mismatches >= 2 {
                        return Err(NodeError::DigestMismatch(file.uri.clone()));
                    }
                }
            }
            progress
                .done_bytes
                .fetch_sub(done_here.swap(0, Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    /// CRC-checks every stored chunk of `h` not found right since this process started, in
    /// parallel. One that fails is dropped, which leaves the file unverified: the caller's
    /// round fetches it again and checks the whole file.
    async fn check_unchecked(&self, h: &Arc<FileHandle>) -> Result<(), NodeError> {
        // Changed on disk since it was last found right (a write or truncation by anyone
        // else): every chunk is read again.
        let trust = match h.unchanged_since_checked() {
            true => SINCE_START,
            false => Duration::ZERO,
        };
        let todo = h.unchecked(trust);
        if todo.is_empty() {
            return Ok(());
        }
        let par = std::thread::available_parallelism().map_or(2, |n| n.get());
        let checks = todo.len() as u64;
        let all_good = futures::stream::iter(todo)
            .map(|idx| {
                let h = h.clone();
                tokio::task::spawn_blocking(move || h.check_chunk(idx, trust))
            })
            .buffer_unordered(par)
            .map(|r| match r {
                Ok(Ok(c)) => Ok(matches!(c, ChunkCheck::Checked(_) | ChunkCheck::Trusted)),
                Ok(Err(e)) => Err(NodeError::from(e)),
                Err(e) => Err(NodeError::Internal(e.to_string())),
            })
            .try_fold(true, |all, ok| async move { Ok(all && ok) })
            .await?;
        metrics::counter!(crate::metrics_defs::CHUNKS_RECHECKED).increment(checks);
        if all_good {
            h.note_all_checked();
        }
        Ok(())
    }

    /// Makes chunks `range` of `file` present, without the whole-file check; when that leaves
    /// the file complete, the check runs in the background. For readers that go chunk by chunk.
    pub async fn ensure_chunks(
        self: &Arc<Self>,
        file: &RemoteFile,
        range: Range<u32>,
    ) -> Result<Arc<FileHandle>, NodeError> {
        self.ensure_chunks_seen(file, range).await.map(|(h, _)| h)
    }

    /// [`Node::ensure_chunks`], and whether every chunk of `range` (at least one) was
    /// already stored: nothing fetched or joined.
    pub async fn ensure_chunks_seen(
        self: &Arc<Self>,
        file: &RemoteFile,
        range: Range<u32>,
    ) -> Result<(Arc<FileHandle>, bool), NodeError> {
        let h = self.register(file).await?;
        h.touch();
        let end = range.end.min(h.layout().count());
        let layout = h.layout();
        let hits = futures::stream::iter(range.start..end)
            .map(|idx| {
                let h = h.clone();
                async move {
                    let local = self.ensure_chunk(file, &h, idx).await? == Source::Local;
                    if local {
                        self.counters.local(layout.len(idx));
                    }
                    Ok::<_, NodeError>(local as u32)
                }
            })
            .buffer_unordered(self.cfg.concurrency.max(1))
            .try_fold(0u32, |n, hit| async move { Ok(n + hit) })
            .await?;
        let all_hit = range.start < end && hits == end - range.start;
        if !h.verified() && h.missing().is_empty() {
            let node = self.clone();
            let file = file.clone();
            tokio::spawn(async move {
                if let Err(e) = node.ensure_file(&file, &WarmProgress::default()).await {
                    tracing::error!(uri = file.uri, error = %e, "background check of a complete file failed");
                }
            });
        }
        Ok((h, all_hit))
    }

    /// Makes chunk `idx` present: a hit, a fetch, or joining a fetch already under way.
    pub(crate) async fn ensure_chunk(
        self: &Arc<Self>,
        file: &RemoteFile,
        h: &Arc<FileHandle>,
        idx: u32,
    ) -> Result<Source, NodeError> {
        self.ensure_chunk_via(file, h, idx, Route::Peers(READER_HOPS))
            .await
    }

    /// [`Node::ensure_chunk`] along `route`.
    pub(crate) async fn ensure_chunk_via(
        self: &Arc<Self>,
        file: &RemoteFile,
        h: &Arc<FileHandle>,
        idx: u32,
        route: Route,
    ) -> Result<Source, NodeError> {
        let key = (h.key().to_string(), idx);
        let joined = self.fetches.join(
            key.clone(),
            || h.crc(idx).is_some(),
            |underway| {
                self.counters.miss();
                let node = self.clone();
                let file = file.clone();
                let h = h.clone();
                async move {
                    // Ends the record even if the fetch panics: later readers start anew.
                    let _finish = Finish(node.clone(), key);
                    node.fetch_chunk(&file, &h, idx, route, &underway).await
                }
            },
        );
        let fut = match joined {
            Joined::Hit => {
                self.counters.hits(1);
                return Ok(Source::Local);
            }
            Joined::Fetch(f) => f,
        };
        fut.await
    }

    /// Fetches chunk `idx` into the cache: from a peer when another member is its primary
    /// owner (and `route` allows), else (or when no peer could help) from the origin.
    async fn fetch_chunk(
        self: &Arc<Self>,
        file: &RemoteFile,
        h: &Arc<FileHandle>,
        idx: u32,
        route: Route,
        underway: &Underway,
    ) -> Result<Source, NodeError> {
        let range = h.layout().range(idx);
        let len = range.end - range.start;
        h.reserve(len)?;
        let r = self
            .fetch_reserved(file, h, idx, route, range, underway)
            .await;
        if r.is_err() {
            h.release(len);
        }
        r
    }

    async fn fetch_reserved(
        self: &Arc<Self>,
        file: &RemoteFile,
        h: &Arc<FileHandle>,
        idx: u32,
        route: Route,
        range: Range<u64>,
        underway: &Underway,
    ) -> Result<Source, NodeError> {
        let mut attempts = self.fetches.attempts();
        let plan = match route {
            Route::Peers(hops) => self
                .peers
                .as_ref()
                // A URL that may carry a signature stays on this node (never named to a peer).
                .filter(|_| !locus_core::redact::private(&file.uri))
                .map(|p| {
                    let hash = chunk_hash(&file.key, self.cfg.chunk_size, idx);
                    (p, self.cluster.plan(hash), hops)
                }),
            Route::OriginOnly => None,
        };
        match plan {
            Some((peers, plan, hops)) if plan.is_primary(self.cluster.me()) || hops == 0 => {
                // After a membership change the chunk may sit at the previous primary, which
                // is now most often the next candidate: ask it before the origin.
                if let Some(next) = plan.order.first() {
                    match self
                        .fetch_from_peer(peers, next, file, h, idx, range.clone(), 0, true)
                        .await
                    {
                        Ok(crc) => {
                            h.commit_chunk(idx, crc);
                            return Ok(Source::Peer);
                        }
                        Err(NodeError::Peer(e)) => self.peer_failed(next, &e),
                        Err(e) => return Err(e),
                    }
                }
            }
            Some((peers, plan, hops)) => {
                match self
                    .fetch_via_peers(peers, plan, file, h, idx, range.clone(), hops)
                    .await?
                {
                    Via::Got(r) => return Ok(r),
                    // The primary spent its attempts on the origin: one more from here, in
                    // case the fault is the primary's own (its egress, a limit on its
                    // address), not an outage's share of requests again.
                    Via::OriginUnavailable => attempts = 1,
                    Via::NoHelp => {}
                }
            }
            None => {}
        }
        let started = Instant::now();
        // The one owner of a chunk's origin retries (the origin sends each request once): at
        // most `attempts` requests per chunk, and no origin connection held while waiting.
        let fetched = self
            .fetches
            .origin(
                attempts,
                || {
                    underway.attempt();
                    self.fetch_once(file, h, range.clone(), underway)
                },
            |attempt, e, wait| {
                metrics::counter!(crate::metrics_defs::ORIGIN_RETRIES, "kind" => "get")
                    .increment(1);
                underway.retrying(format!("origin: retry {attempt}/{attempts}, {e}"));
                tracing::warn!(uri = file.uri, chunk = idx, attempt, error = %e, ?wait, "chunk fetch failed; retrying");
            },
        )
        .await;
        match fetched {
            Ok(crc) => {
                h.commit_chunk(idx, crc);
                metrics::histogram!(locus_core::metric::FETCH_SECONDS, "source" => "origin")
                    .record(started.elapsed().as_secs_f64());
                Ok(Source::Origin)
            }
            Err((e, attempt)) => {
                tracing::error!(uri = file.uri, chunk = idx, attempt, error = %e, "chunk fetch failed");
                Err(match e {
                    NodeError::Origin(e) => NodeError::Origin(e.exhausted(attempt)),
                    e => e,
                })
            }
        }
    }

    /// Gets a chunk whose primary is another member: first from a less loaded candidate that
    /// already holds it (bounded loads spread hot chunks; a candidate that misses copies the
    /// chunk in the background for next time), then from the primary, which alone fetches from
    /// the origin. Only the primary is ever waited on, so requests never wait in a cycle.
    #[allow(clippy::too_many_arguments)]
    async fn fetch_via_peers(
        self: &Arc<Self>,
        peers: &Arc<dyn PeerTransport>,
        plan: Plan,
        file: &RemoteFile,
        h: &Arc<FileHandle>,
        idx: u32,
        range: Range<u64>,
        hops: u32,
    ) -> Result<Via, NodeError> {
        let hash = chunk_hash(&file.key, self.cfg.chunk_size, idx);
        let mut first = Some(plan);
        for attempt in 0..PEER_TRIES {
            // The caller's plan first; again after a failure marked a member down.
            let plan = first.take().unwrap_or_else(|| self.cluster.plan(hash));
            if plan.is_primary(self.cluster.me()) {
                return Ok(Via::NoHelp);
            }
            let mut targets = Vec::with_capacity(2);
            if attempt == 0 && hops >= READER_HOPS {
                if let Some(c) = plan.order.first().filter(|c| **c != plan.primary) {
                    targets.push((c.clone(), true));
                }
            }
            targets.push((plan.primary.clone(), false));
            for (addr, local_only) in targets {
                let started = Instant::now();
                // A secondary is asked for what it holds (hops 1: and to copy it on a miss).
                let sent_hops = u32::from(local_only);
                match self
                    .fetch_from_peer(
                        peers,
                        &addr,
                        file,
                        h,
                        idx,
                        range.clone(),
                        sent_hops,
                        local_only,
                    )
                    .await
                {
                    Ok(crc) => {
                        h.commit_chunk(idx, crc);
                        metrics::histogram!(locus_core::metric::FETCH_SECONDS, "source" => "peer")
                            .record(started.elapsed().as_secs_f64());
                        return Ok(Via::Got(Source::Peer));
                    }
                    Err(NodeError::Peer(e)) => {
                        self.peer_failed(&addr, &e);
                        if local_only {
                            continue;
                        }
                        if e.settles() {
                            return Err(e.into());
                        }
                        tracing::warn!(uri = file.uri, chunk = idx, error = %e, "chunk from a peer failed; trying the next source");
                        if !e.marks_down() {
                            // The primary answers but cannot get the chunk: try the origin.
                            return Ok(match e {
                                PeerError::Status {
                                    code: tonic::Code::Unavailable,
                                    ..
                                } => Via::OriginUnavailable,
                                _ => Via::NoHelp,
                            });
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(Via::NoHelp)
    }

    /// Streams one chunk from `addr` into the cache file; returns its CRC once the bytes match
    /// the CRC the peer sent. Errors that are the peer's come back as [`NodeError::Peer`].
    #[allow(clippy::too_many_arguments)]
    async fn fetch_from_peer(
        self: &Arc<Self>,
        peers: &Arc<dyn PeerTransport>,
        addr: &str,
        file: &RemoteFile,
        h: &Arc<FileHandle>,
        idx: u32,
        range: Range<u64>,
        hops: u32,
        local_only: bool,
    ) -> Result<u32, NodeError> {
        let _load = self.cluster.begin(addr);
        let want = range.end - range.start;
        let garbled = |detail: String| NodeError::Peer(PeerError::garbled(addr, detail));
        let target = crate::peer::wire::ChunkTarget {
            h: h.clone(),
            idx,
            offset: range.start,
            len: want,
            count: {
                let node = self.clone();
                Arc::new(move |n| node.count_received(n))
            },
        };
        // Counts the request by transport and result; the CRC of the bytes written must be
        // the header's.
        let tally = |transport: &'static str, r: Result<u32, NodeError>, want_crc: u32| {
            let r = match r {
                Ok(crc) if crc != want_crc => {
                    Err(garbled("chunk bytes do not match their CRC".into()))
                }
                r => r,
            };
            let result = if r.is_ok() { "ok" } else { "error" };
            metrics::counter!(crate::metrics_defs::PEER_REQUESTS, "result" => result, "transport" => transport)
                .increment(1);
            r
        };
        let req = self.chunk_request(file, idx, hops, false, local_only);
        if let Some(f) = peers.fetch_chunk_into(addr, req, target).await? {
            self.cluster.mark_up(addr, f.header.load as f64);
            let crc = tally("wire", Ok(f.crc), f.header.crc32c)?;
            if let Some(step) = f.step {
                // Checked on the bytes written: the whole-file check takes it without hashing.
                h.set_step(idx, step);
            }
            return Ok(crc);
        }
        let (header, s) = self
            .request_chunk(peers, addr, file, idx, hops, false, local_only)
            .await?;
        if header.length != want || !header.data.is_empty() {
            return Err(garbled(format!(
                "header says {} bytes for a {want}-byte chunk",
                header.length
            )));
        }
        let a = addr.to_string();
        let data = futures::stream::unfold(s, move |mut s| {
            let a = a.clone();
            async move {
                let item = match tokio::time::timeout(IDLE_TIMEOUT, s.next()).await {
                    Err(_) => Err(NodeError::Peer(PeerError::unreachable(
                        &a,
                        "silent for too long",
                    ))),
                    Ok(None) => return None,
                    Ok(Some(Err(e))) => Err(NodeError::Peer(e)),
                    Ok(Some(Ok(p))) if p.header || p.data.len() > MAX_PIECE => {
                        Err(NodeError::Peer(PeerError::garbled(
                            &a,
                            "a second header or an oversized piece",
                        )))
                    }
                    Ok(Some(Ok(p))) => Ok(p.data),
                };
                Some((item, s))
            }
        });
        let count = |n: u64| self.count_received(n);
        let written = match self.write_stream(file, h, range, data, &count).await {
            Err(NodeError::WrongLength { got, want, .. }) => {
                Err(garbled(format!("{got} bytes for a {want}-byte chunk")))
            }
            r => r,
        };
        tally("grpc", written, header.crc32c)
    }

    /// Asks `addr` for chunk `idx` and waits for the header (heartbeats skipped, at most
    /// [`IDLE_TIMEOUT`] of silence); returns it with the rest of the stream. The caller counts
    /// the request in the peer's load.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn request_chunk(
        &self,
        peers: &Arc<dyn PeerTransport>,
        addr: &str,
        file: &RemoteFile,
        idx: u32,
        hops: u32,
        header_only: bool,
        local_only: bool,
    ) -> Result<(pb::ChunkPiece, PieceStream), NodeError> {
        let unreachable = |detail: &str| NodeError::Peer(PeerError::unreachable(addr, detail));
        let garbled = |detail: &str| NodeError::Peer(PeerError::garbled(addr, detail));
        let req = self.chunk_request(file, idx, hops, header_only, local_only);
        let mut s = tokio::time::timeout(IDLE_TIMEOUT, peers.get_chunk(addr, req))
            .await
            .map_err(|_| unreachable("no answer"))??;
        loop {
            let piece = tokio::time::timeout(IDLE_TIMEOUT, s.next())
                .await
                .map_err(|_| unreachable("silent for too long"))?
                .ok_or_else(|| garbled("the stream ended before the header"))??;
            if piece.header {
                self.cluster.mark_up(addr, piece.load as f64);
                return Ok((piece, s));
            }
            if !piece.data.is_empty() {
                return Err(garbled("data before the header"));
            }
        }
    }

    /// The request for chunk `idx` of `file`.
    fn chunk_request(
        &self,
        file: &RemoteFile,
        idx: u32,
        hops: u32,
        header_only: bool,
        local_only: bool,
    ) -> pb::ChunkRequest {
        pb::ChunkRequest {
            file: Some(pb::FileRef {
                uri: file.uri.clone(),
                key: file.key.clone(),
                size: file.size,
                namespace: file
                    .listed
                    .as_ref()
                    .map(|l| l.namespace.clone())
                    .unwrap_or_default(),
                revision: file
                    .listed
                    .as_ref()
                    .map(|l| l.revision.clone())
                    .unwrap_or_default(),
            }),
            chunk_size: self.cfg.chunk_size,
            index: idx,
            hops,
            header_only,
            local_only,
        }
    }

    /// One attempt: streams `range` into the cache file and returns its CRC32C.
    async fn fetch_once(
        &self,
        file: &RemoteFile,
        h: &Arc<FileHandle>,
        range: Range<u64>,
        underway: &Underway,
    ) -> Result<u32, NodeError> {
        self.counters
            .origin_requests
            .fetch_add(1, Ordering::Relaxed);
        let stream = match self.origin.read(file, range.clone()).await {
            Ok(s) => s.map_err(NodeError::from),
            Err(e) => {
                if matches!(e, locus_origin::OriginError::Changed { .. }) {
                    // Overwritten since it was listed: list again on the next request rather
                    // than fail until the metadata TTL runs out.
                    self.listing_changed(file);
                }
                return Err(e.into());
            }
        };
        let count = |n: u64| {
            self.counters.origin_bytes(n);
            underway.add(n);
        };
        self.write_stream(file, h, range, stream, &count).await
    }

    /// Writes a stream of bytes into `range` of the cache file in [`WRITE_BATCH`] writes and
    /// returns their CRC32C; fails if the stream holds more or fewer bytes than the range.
    async fn write_stream(
        &self,
        file: &RemoteFile,
        h: &Arc<FileHandle>,
        range: Range<u64>,
        stream: impl futures::Stream<Item = Result<bytes::Bytes, NodeError>>,
        count: &(dyn Fn(u64) + Sync),
    ) -> Result<u32, NodeError> {
        let mut stream = std::pin::pin!(stream);
        let want = range.end - range.start;
        let mut crc = 0u32;
        let mut written = 0u64;
        // Pieces as received, written together once they add up to a batch: no copy.
        let mut batch: Vec<bytes::Bytes> = Vec::new();
        let mut batched = 0usize;
        while let Some(piece) = stream.next().await {
            let piece = piece?;
            let n = piece.len() as u64;
            count(n);
            if written + batched as u64 + n > want {
                return Err(NodeError::WrongLength {
                    what: file.uri.clone(),
                    got: written + batched as u64 + n,
                    want,
                });
            }
            crc = crc32c::crc32c_append(crc, &piece);
            batched += piece.len();
            batch.push(piece);
            if batched >= WRITE_BATCH {
                write(h, std::mem::take(&mut batch), range.start + written).await?;
                written += std::mem::take(&mut batched) as u64;
            }
        }
        if batched > 0 {
            write(h, batch, range.start + written).await?;
            written += batched as u64;
        }
        if written != want {
            return Err(NodeError::WrongLength {
                what: file.uri.clone(),
                got: written,
                want,
            });
        }
        Ok(crc)
    }
}

async fn write(
    h: &Arc<FileHandle>,
    pieces: Vec<bytes::Bytes>,
    offset: u64,
) -> Result<(), NodeError> {
    let h = h.clone();
    tokio::task::spawn_blocking(move || {
        let slices: Vec<&[u8]> = pieces.iter().map(|p| p.as_ref()).collect();
        h.write_vectored_at(&slices, offset)
    })
    .await
    .map_err(|e| NodeError::Internal(e.to_string()))?
    .map_err(NodeError::from)
}

enum Hasher {
    Sha256(sha_chain::Chain),
    Sha1(sha1::Sha1),
    None,
}

/// Reads the whole file back in chunk order, each chunk once `landed` names it, checking the
/// file's digest, and the CRC of each chunk that was already stored (a fresh chunk's CRC was
/// computed as it was written). A fresh chunk whose SHA-256 step was checked as it arrived (see
/// [`sha_chain`]) is not read: the step is taken if it starts where the hash stands. Once the
/// file matches, the step of every chunk is recorded for peers. Returns `Incomplete` if
/// `landed` closes before every chunk was named (the fetch failed; its error is what the caller
/// reports).
fn verify(
    h: &FileHandle,
    digest: Option<&Digest>,
    landed: std::sync::mpsc::Receiver<(u32, bool)>,
) -> Result<Checked, NodeError> {
    let layout = h.layout();
    let mut hasher = match digest {
        Some(Digest::Sha256(_)) => Hasher::Sha256(sha_chain::Chain::default()),
        Some(Digest::GitBlobSha1(_)) => {
            let mut s = sha1::Sha1::new();
            s.update(format!("blob {}\0", layout.size).as_bytes());
            Hasher::Sha1(s)
        }
        None => Hasher::None,
    };
    // The SHA-256 state at each chunk boundary, while the chunks are whole blocks.
    let mut bounds: Vec<sha_chain::State> = Vec::new();
    // None: not landed yet; Some(fresh).
    let mut ready: Vec<Option<bool>> = vec![None; layout.count() as usize];
    for idx in 0..layout.count() {
        while ready[idx as usize].is_none() {
            match landed.recv() {
                Ok((i, fresh)) => {
                    if let Some(r) = ready.get_mut(i as usize) {
                        *r = Some(fresh);
                    }
                }
                Err(_) => return Ok(Checked::Incomplete),
            }
        }
        let fresh = ready[idx as usize] == Some(true);
        if let Hasher::Sha256(c) = &mut hasher {
            if let Some(s) = c.state() {
                bounds.push(s);
            }
            let stepped = fresh
                && h.step(idx)
                    .is_some_and(|step| c.take_step(&step, layout.len(idx)));
            if stepped {
                continue;
            }
        }
        // Hashed straight from the page cache through a map: no copy. A fresh chunk's CRC
        // was computed from the bytes written; any other is checked here.
        let stored = if fresh {
            h.map_chunk(idx)?
        } else {
            match h.check_chunk(idx, std::time::Duration::ZERO)? {
                ChunkCheck::Checked(b) => Some(b),
                _ => None,
            }
        };
        let Some(bytes) = stored else {
            return Ok(Checked::ChunkDropped);
        };
        match &mut hasher {
            Hasher::Sha256(s) => s.update(&bytes),
            Hasher::Sha1(s) => s.update(&bytes),
            Hasher::None => {}
        }
    }
    let got = match hasher {
        Hasher::Sha256(s) => hex::encode(s.finish()),
        Hasher::Sha1(s) => hex::encode(s.finalize()),
        Hasher::None => return Ok(Checked::Good),
    };
    let good = matches!(digest, Some(d) if d.hex().eq_ignore_ascii_case(&got));
    if !good {
        return Ok(Checked::Mismatch);
    }
    // Every chunk but the last, when each started at a block boundary.
    if bounds.len() == layout.count() as usize {
        for (k, w) in bounds.windows(2).enumerate() {
            h.set_step(k as u32, [w[0], w[1]]);
        }
    }
    // Each chunk was hashed here, or its step checked on the bytes as they were written.
    all_checked(h);
    Ok(Checked::Good)
}

/// Notes every chunk of `h` as found right now.
fn all_checked(h: &FileHandle) {
    for idx in 0..h.layout().count() {
        h.mark_checked(idx);
    }
    h.note_all_checked();
}

#[cfg(test)]
mod tests {
    use super::*;
    use locus_store::Store;

    /// A complete cache file of 4 chunks of 64 KiB and a tail, committed with its CRCs.
    fn cached(dir: &std::path::Path, data: &[u8]) -> (Arc<Store>, FileHandle) {
        let store = Store::open(dir, 1 << 30).unwrap();
        let hex = hex::encode(sha2::Sha256::digest(data));
        let digest = Digest::Sha256(hex);
        let file = RemoteFile {
            uri: "hf://o/n@abc/f.bin".into(),
            path: "f.bin".into(),
            size: data.len() as u64,
            key: RemoteFile::key_for_digest(&digest, data.len() as u64),
            locator: "f.bin".into(),
            digest: Some(digest),
            listed: None,
        };
        let h = store.register(&file, 64 << 10).unwrap();
        for idx in 0..h.layout().count() {
            let r = h.layout().range(idx);
            let bytes = &data[r.start as usize..r.end as usize];
            h.reserve(bytes.len() as u64).unwrap();
            h.write_vectored_at(&[bytes], r.start).unwrap();
            h.commit_chunk(idx, crc32c::crc32c(bytes));
        }
        (store, h)
    }

    fn check(h: &FileHandle) -> Checked {
        let (tx, rx) = std::sync::mpsc::channel();
        for idx in 0..h.layout().count() {
            tx.send((idx, true)).unwrap();
        }
        drop(tx);
        verify(h, h.digest().as_ref(), rx).unwrap()
    }

    #[test]
    fn steps_replace_hashing_only_where_they_chain_to_the_digest() {
        let data: Vec<u8> = (0..(4 << 16) + 777u32)
            .map(|i| (i * 31 % 253) as u8)
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let (_store, h) = cached(dir.path(), &data);
        // Hashed in one pass: good, and the steps of every chunk but the last are recorded.
        assert!(matches!(check(&h), Checked::Good));
        let steps: Vec<_> = (0..4).map(|i| h.step(i).unwrap()).collect();
        assert!(h.step(4).is_none());
        for (k, s) in steps.iter().enumerate() {
            let mut st = s[0];
            sha_chain::advance(&mut st, &data[k << 16..(k + 1) << 16]);
            assert_eq!(st, s[1]);
        }
        // Steps that chain are taken (the bytes are not read: a changed byte under a good
        // step goes unseen here, which is why steps are only ever recorded once checked on
        // the bytes written).
        assert!(matches!(check(&h), Checked::Good));
        // A step that does not start where the hash stands is ignored: the bytes are hashed.
        h.set_step(1, [[1; 8], steps[1][1]]);
        assert!(matches!(check(&h), Checked::Good));
        // A step from the right state to a wrong one (a peer lying about its bytes) makes the
        // file fail its digest.
        h.set_step(1, [steps[1][0], [2; 8]]);
        assert!(matches!(check(&h), Checked::Mismatch));
    }
}
