//! Warming: the files a request selects, made present in one of three [`Scope`]s.
//!
//! - `node`: this node holds a full, verified copy ([`Node::warm`]); chunks come from their
//!   owners, so the origin is read once for the cluster.
//! - `cluster`: each chunk's owners (the first `replicas` answering candidates) hold it; the
//!   primary fetches it from the origin, other owners from the primary.
//! - `all-nodes`: `cluster` first, then every member makes its own full copy from the owners.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use locus_core::uri::LocusUri;
use locus_core::{ChunkLayout, Listing, ListingBuilder, RemoteFile};
use locus_grpc::v1 as pb;

use crate::read::{chunk_hash, Source};
use crate::{Node, NodeError, WarmProgress};

/// Attempts per chunk of a cluster warm (each after re-planning around a member that failed).
const CLUSTER_TRIES: usize = 3;
/// File URIs per all-nodes warm request.
const URIS_PER_REQUEST: usize = 5000;

/// Files warmed at once at least (their chunks share the node's origin connections). A warm
/// runs as many files at once as the node has origin connections, so that a data set of small
/// files (one request each) keeps every connection busy: at an origin's latency L, a warm of
/// small files runs at about `--concurrency` / L files a second.
const FILES_AT_ONCE: usize = 8;
/// Paths a warm's patterns dropped kept at most for a "did you mean" (of millions of files,
/// the first are as good a sample as any).
const MAX_SUGGEST_FROM: usize = 100_000;

/// Where a warm puts the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// A full verified copy on this node.
    Node,
    /// Every chunk at its owners.
    Cluster,
    /// A full copy on every member.
    AllNodes,
}

impl Scope {
    /// Parses `node`, `cluster` or `all-nodes` (empty: `node`).
    pub fn parse(s: &str) -> Result<Scope, NodeError> {
        match s {
            "" | "node" => Ok(Scope::Node),
            "cluster" => Ok(Scope::Cluster),
            "all-nodes" => Ok(Scope::AllNodes),
            s => Err(NodeError::BadScope(s.to_string())),
        }
    }
}

impl Node {
    /// Files named by `uris`, filtered by globs on their paths, without duplicates: a compact
    /// listing (a warm of millions of files holds no `RemoteFile` per file).
    pub async fn select(
        &self,
        uris: &[String],
        include: &[String],
        exclude: &[String],
    ) -> Result<Listing, NodeError> {
        let sel =
            locus_core::select::Selection::new(include, exclude).map_err(NodeError::BadGlob)?;
        // One URI's files are one listing's, each once: only several URIs can repeat a file.
        let mut seen = HashSet::new();
        let mut out = ListingBuilder::default();
        // Paths the patterns dropped (the first of them), to say which were near when they kept
        // none.
        let mut dropped = Vec::new();
        for s in uris {
            let uri = LocusUri::parse(s)?;
            for f in self.resolve(&uri).await?.files.iter() {
                let keep = sel.keep(&f.path);
                if !keep {
                    if dropped.len() < MAX_SUGGEST_FROM {
                        dropped.push(f.path);
                    }
                } else if uris.len() == 1 || seen.insert(f.uri.clone()) {
                    out.push(&f);
                }
            }
        }
        let out = out.finish();
        if out.is_empty() && !dropped.is_empty() {
            // A pattern that selects nothing is a mistake, not an empty warm.
            let typed = include
                .first()
                .or(exclude.first())
                .map_or("", String::as_str);
            let mut nearest: Vec<String> =
                locus_core::suggest::nearest(typed, dropped.iter().map(String::as_str), 5)
                    .into_iter()
                    .map(str::to_string)
                    .collect();
            if nearest.is_empty() {
                dropped.sort();
                nearest = dropped.into_iter().take(5).collect();
            }
            return Err(NodeError::NothingSelected {
                include: include.join(","),
                exclude: exclude.join(","),
                nearest,
            });
        }
        Ok(out)
    }

    /// Warms `files` in `scope`, reporting to `progress`.
    pub async fn warm_in(
        self: &Arc<Self>,
        scope: Scope,
        files: Listing,
        pin: bool,
        progress: Arc<WarmProgress>,
    ) -> Result<(), NodeError> {
        match scope {
            Scope::Node => self.warm(&files, pin, progress).await,
            Scope::Cluster => self.warm_cluster(files.to_vec(), progress).await,
            Scope::AllNodes => self.warm_all_nodes(files.to_vec(), pin, progress).await,
        }
    }

    /// Makes every file fully cached and verified here, `--concurrency` files at a time (at
    /// least `FILES_AT_ONCE`).
    pub async fn warm(
        self: &Arc<Self>,
        files: &Listing,
        pin: bool,
        progress: Arc<WarmProgress>,
    ) -> Result<(), NodeError> {
        futures::stream::iter(files.iter())
            .map(|f| {
                let progress = progress.clone();
                async move {
                    let h = self.ensure_file(&f, &progress).await?;
                    if pin {
                        h.set_pinned(true);
                    }
                    progress.done_files.fetch_add(1, Ordering::Relaxed);
                    Ok::<_, NodeError>(())
                }
            })
            .buffer_unordered(self.cfg.concurrency.max(FILES_AT_ONCE))
            .try_collect::<()>()
            .await?;
        // What a warm reports done survives a crash from then on: its records are committed
        // (the index commits in the background, and a commit may take milliseconds).
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.flush())
            .await
            .map_err(|e| NodeError::Internal(e.to_string()))
    }

    /// Makes each chunk of `files` present at its owners.
    pub async fn warm_cluster(
        self: &Arc<Self>,
        files: Vec<RemoteFile>,
        progress: Arc<WarmProgress>,
    ) -> Result<(), NodeError> {
        let mut jobs = Vec::new();
        for f in files {
            let f = Arc::new(f);
            let layout = ChunkLayout::new(f.size, self.cfg.chunk_size);
            jobs.extend((0..layout.count()).map(|i| (f.clone(), layout, i)));
        }
        let done_files = futures::stream::iter(jobs)
            .map(|(f, layout, idx)| {
                let progress = progress.clone();
                let node = self.clone();
                async move {
                    let src = node.warm_chunk_at_owners(&f, idx).await?;
                    let len = layout.len(idx);
                    let counter = match src {
                        Source::Local => &progress.local_bytes,
                        Source::Origin => &progress.origin_bytes,
                        Source::Peer => &progress.peer_bytes,
                    };
                    counter.fetch_add(len, Ordering::Relaxed);
                    progress.done_bytes.fetch_add(len, Ordering::Relaxed);
                    Ok::<_, NodeError>(idx + 1 == layout.count())
                }
            })
            .buffer_unordered(self.cfg.concurrency.max(1))
            .try_collect::<Vec<bool>>()
            .await?
            .into_iter()
            .filter(|last| *last)
            .count() as u64;
        progress.done_files.fetch_add(done_files, Ordering::Relaxed);
        Ok(())
    }

    /// Makes chunk `idx` present at each of its owners; returns where the primary got it.
    async fn warm_chunk_at_owners(
        self: &Arc<Self>,
        file: &RemoteFile,
        idx: u32,
    ) -> Result<Source, NodeError> {
        let hash = chunk_hash(&file.key, self.cfg.chunk_size, idx);
        let mut last = None;
        for _ in 0..CLUSTER_TRIES {
            let plan = self.cluster.plan(hash);
            let mut first = None;
            let mut failed = false;
            // The primary first: the other owners then copy from it.
            for owner in &plan.owners {
                let r = if owner == self.cluster.me() {
                    let h = self.register(file).await?;
                    // Straight to the primary (hops 1), not to a less loaded candidate: a
                    // placement must not leave copies on members that do not own the chunk.
                    self.ensure_chunk_via(file, &h, idx, crate::read::Route::Peers(1))
                        .await
                } else {
                    let hops = if *owner == plan.primary { 0 } else { 1 };
                    self.ensure_at_peer(owner, file, idx, hops).await
                };
                match r {
                    Ok(s) => {
                        first.get_or_insert(s);
                    }
                    Err(NodeError::Peer(e)) if !e.settles() => {
                        self.peer_failed(owner, &e);
                        last = Some(NodeError::Peer(e));
                        failed = true;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            if !failed {
                return Ok(first.unwrap_or(Source::Local));
            }
        }
        Err(last.unwrap_or_else(|| NodeError::Internal("no owner could take the chunk".into())))
    }

    /// Asks `addr` to make a chunk present (header only) and says where it got it.
    async fn ensure_at_peer(
        &self,
        addr: &str,
        file: &RemoteFile,
        idx: u32,
        hops: u32,
    ) -> Result<Source, NodeError> {
        let Some(peers) = &self.peers else {
            return Err(NodeError::Internal("no peer transport".into()));
        };
        let _load = self.cluster.begin(addr);
        let (header, _) = self
            .request_chunk(peers, addr, file, idx, hops, true, false)
            .await?;
        Ok(match pb::ChunkSource::try_from(header.source) {
            Ok(pb::ChunkSource::Origin) => Source::Origin,
            Ok(pb::ChunkSource::Peer) => Source::Peer,
            _ => Source::Local,
        })
    }

    /// The cluster warm, then a full copy on every answering member (this one included).
    /// Every member's copy runs to its end; the warm fails if any did, naming them.
    pub async fn warm_all_nodes(
        self: &Arc<Self>,
        files: Vec<RemoteFile>,
        pin: bool,
        progress: Arc<WarmProgress>,
    ) -> Result<(), NodeError> {
        // The cluster pass reports as the warm; its origin bytes are the warm's.
        self.warm_cluster(files.clone(), progress.clone()).await?;
        let members: Vec<String> = self
            .cluster
            .members()
            .into_iter()
            .filter(|m| m.state != locus_cluster::MemberState::Down)
            .map(|m| m.addr)
            .collect();
        let size = files.iter().fold(0u64, |a, f| a.saturating_add(f.size));
        progress
            .total_bytes
            .store(size.saturating_mul(members.len() as u64), Ordering::Relaxed);
        progress
            .total_files
            .store((files.len() * members.len()) as u64, Ordering::Relaxed);
        let parts: Vec<Arc<WarmProgress>> = members
            .iter()
            .map(|_| {
                let p = WarmProgress::default();
                p.total_bytes.store(size, Ordering::Relaxed);
                p.total_files.store(files.len() as u64, Ordering::Relaxed);
                Arc::new(p)
            })
            .collect();
        *lock(&progress.nodes) = members
            .iter()
            .zip(&parts)
            .map(|(addr, p)| NodePart {
                addr: addr.clone(),
                progress: p.clone(),
                error: None,
            })
            .collect();
        let uris: Arc<Vec<String>> = Arc::new(files.iter().map(|f| f.uri.clone()).collect());
        // The members' parts add up to the warm's progress (see `report`).
        let work = members.iter().zip(parts).map(|(m, part)| {
            let (files, uris, node) = (&files, uris.clone(), self.clone());
            async move { node.warm_member(m, files, &uris, pin, &part).await }
        });
        let results = futures::future::join_all(work).await;
        let mut failed = Vec::new();
        for (part, r) in lock(&progress.nodes).iter_mut().zip(results) {
            if let Err(e) = r {
                part.error = Some(e.to_string());
                failed.push((part.addr.clone(), e));
            }
        }
        match failed.is_empty() {
            true => Ok(()),
            false => Err(NodeError::MembersFailed(failed)),
        }
    }

    /// One member's full copy for an all-nodes warm, reported to `part`.
    async fn warm_member(
        self: &Arc<Self>,
        m: &str,
        files: &[RemoteFile],
        uris: &[String],
        pin: bool,
        part: &Arc<WarmProgress>,
    ) -> Result<(), NodeError> {
        if m == self.cluster.me() {
            return self
                .warm(&Listing::new(files.iter().cloned()), pin, part.clone())
                .await;
        }
        let peers = self
            .peers
            .as_ref()
            .ok_or_else(|| NodeError::Internal("no peer transport".into()))?;
        for batch in uris.chunks(URIS_PER_REQUEST) {
            let req = pb::PeerWarmRequest {
                uris: batch.to_vec(),
                include: vec![],
                exclude: vec![],
                pin,
            };
            let mut s = peers.warm(m, req).await?;
            let mut seen = pb::WarmProgress::default();
            while let Some(p) = s.next().await {
                add_remote(part, &p?, &mut seen);
            }
        }
        Ok(())
    }

    /// What a warm has done, as its report says it: with the bytes of chunks still arriving
    /// for its files, the retry a fetch waits on, and each member's part of an all-nodes warm.
    pub fn report(&self, p: &WarmProgress) -> pb::WarmProgress {
        let nodes = lock(&p.nodes);
        // An all-nodes warm is the sum of its members' parts (origin bytes: the cluster pass).
        let sum = WarmProgress::default();
        sum.origin_bytes
            .store(p.origin_bytes.load(Ordering::Relaxed), Ordering::Relaxed);
        for n in nodes.iter() {
            add_remote(&sum, &n.progress.snapshot(), &mut Default::default());
        }
        let mut m = match nodes.is_empty() {
            true => p.snapshot(),
            false => pb::WarmProgress {
                total_bytes: p.total_bytes.load(Ordering::Relaxed),
                total_files: p.total_files.load(Ordering::Relaxed) as u32,
                ..sum.snapshot()
            },
        };
        let (partial, note) = self.fetches.underway(|key| p.keys.contains(key));
        m.done_bytes = m.done_bytes.saturating_add(partial).min(m.total_bytes);
        m.note = note.unwrap_or_default();
        m.nodes = nodes
            .iter()
            .map(|n| {
                let s = n.progress.snapshot();
                pb::NodeWarm {
                    addr: n.addr.clone(),
                    total_bytes: s.total_bytes,
                    done_bytes: s.done_bytes,
                    total_files: s.total_files,
                    done_files: s.done_files,
                    transfer: s.transfer,
                    error: n.error.clone().unwrap_or_default(),
                }
            })
            .collect();
        m
    }
}

/// One member's part of an all-nodes warm.
#[derive(Debug)]
pub struct NodePart {
    pub addr: String,
    pub progress: Arc<WarmProgress>,
    pub error: Option<String>,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Adds what a member's progress message adds over the last one it sent.
fn add_remote(p: &WarmProgress, now: &pb::WarmProgress, seen: &mut pb::WarmProgress) {
    let d = |a: u64, b: u64| a.saturating_sub(b);
    p.done_bytes
        .fetch_add(d(now.done_bytes, seen.done_bytes), Ordering::Relaxed);
    p.done_files.fetch_add(
        d(now.done_files as u64, seen.done_files as u64),
        Ordering::Relaxed,
    );
    let t = now.transfer.unwrap_or_default();
    let s = seen.transfer.unwrap_or_default();
    p.peer_bytes
        .fetch_add(d(t.peer_bytes, s.peer_bytes), Ordering::Relaxed);
    p.local_bytes
        .fetch_add(d(t.local_bytes, s.local_bytes), Ordering::Relaxed);
    *seen = now.clone();
}

impl WarmProgress {
    /// The progress of a warm of `files`, nothing done yet.
    pub fn of(files: &Listing) -> Self {
        let p = WarmProgress {
            keys: files.iter().map(|f| f.key).collect(),
            ..Default::default()
        };
        // Sizes come from origins and peers: a sum that cannot overflow.
        let size = (0..files.len()).fold(0u64, |a, i| a.saturating_add(files.size(i)));
        p.total_bytes.store(size, Ordering::Relaxed);
        p.total_files.store(files.len() as u64, Ordering::Relaxed);
        p
    }

    /// Bytes by source, as a message.
    pub fn transfer(&self) -> pb::Transfer {
        pb::Transfer {
            origin_bytes: self.origin_bytes.load(Ordering::Relaxed),
            peer_bytes: self.peer_bytes.load(Ordering::Relaxed),
            local_bytes: self.local_bytes.load(Ordering::Relaxed),
        }
    }

    /// The progress as a message.
    pub fn snapshot(&self) -> pb::WarmProgress {
        pb::WarmProgress {
            total_bytes: self.total_bytes.load(Ordering::Relaxed),
            done_bytes: self.done_bytes.load(Ordering::Relaxed),
            total_files: self.total_files.load(Ordering::Relaxed) as u32,
            done_files: self.done_files.load(Ordering::Relaxed) as u32,
            transfer: Some(self.transfer()),
            finished: false,
            current_file: String::new(),
            note: String::new(),
            nodes: Vec::new(),
        }
    }
}
