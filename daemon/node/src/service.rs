//! The local API (gRPC over the node's Unix socket), see `grpc/proto/locus/v1/local.proto`.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use locus_core::uri::LocusUri;
use locus_core::{Brief, Files};
use locus_grpc::v1 as pb;
use locus_grpc::v1::local_server::Local;
use locus_origin::OriginError;
use locus_store::StoreError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::peer::PeerError;
use crate::warm::Scope;
use crate::{Node, NodeError, WarmProgress};

/// Messages of `Read` carry at most this many bytes.
const READ_MESSAGE: usize = 1 << 20;

/// How often `Warm` reports progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Status {
        let msg = e.to_string();
        match &e {
            NodeError::Uri(_) | NodeError::BadGlob(_) | NodeError::BadScope(_) => {
                Status::invalid_argument(msg)
            }
            NodeError::IsFolder(_) => Status::failed_precondition(msg),
            NodeError::NotFound(_)
            | NodeError::NothingSelected { .. }
            | NodeError::Origin(OriginError::NotFound { .. }) => Status::not_found(msg),
            NodeError::Origin(OriginError::AccessDenied { .. }) => Status::permission_denied(msg),
            NodeError::Origin(OriginError::Changed { .. }) => Status::aborted(msg),
            NodeError::Origin(OriginError::Invalid { .. }) => Status::invalid_argument(msg),
            NodeError::Origin(OriginError::NoSpace { .. }) => Status::resource_exhausted(msg),
            NodeError::Origin(OriginError::NotConfigured { .. }) => {
                Status::failed_precondition(msg)
            }
            NodeError::Origin(OriginError::Unavailable { .. } | OriginError::Transient { .. })
            | NodeError::WrongLength { .. } => Status::unavailable(msg),
            NodeError::Origin(OriginError::Protocol { .. }) => Status::unavailable(msg),
            NodeError::Store(s)
                if matches!(
                    **s,
                    StoreError::Full { .. }
                        | StoreError::DiskFull { .. }
                        | StoreError::TooLarge { .. }
                ) =>
            {
                Status::resource_exhausted(msg)
            }
            NodeError::DigestMismatch(_) => Status::data_loss(msg),
            NodeError::Peer(PeerError::Status { code, .. }) => Status::new(*code, msg),
            NodeError::Peer(_) => Status::unavailable(msg),
            NodeError::Store(_) | NodeError::Internal(_) => Status::internal(msg),
            // The first member's failure says what kind of failure it was.
            NodeError::MembersFailed(v) => match v.first() {
                Some((_, e)) => Status::new(Status::from(e.clone()).code(), msg),
                None => Status::internal(msg),
            },
        }
    }
}

fn parse_uri(s: &str) -> Result<LocusUri, Status> {
    LocusUri::parse(s).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// Warms `files` in `scope` in a task, streaming progress every [`PROGRESS_EVERY`] and a last
/// message with `finished` set (or the error). A client that goes away stops the work.
pub(crate) fn warm_stream(
    node: Arc<Node>,
    files: locus_core::Listing,
    pin: bool,
    scope: Scope,
    detach: bool,
) -> BoxStream<pb::WarmProgress> {
    let progress = Arc::new(WarmProgress::of(&files));
    // A URL that may carry a signature is warmed here only: peers never see it.
    let scope = match files.iter().any(|f| locus_core::redact::private(&f.uri)) {
        true => Scope::Node,
        false => scope,
    };
    let (tx, rx) = mpsc::channel(8);
    let (p, n) = (progress.clone(), node.clone());
    let work = tokio::spawn(async move { n.warm_in(scope, files, pin, p).await });
    tokio::spawn(async move {
        let mut work = work;
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        let mut listening = true;
        let result = loop {
            tokio::select! {
                res = &mut work => break res,
                _ = tick.tick(), if listening => {
                    if tx.send(Ok(node.report(&progress))).await.is_err() {
                        if !detach {
                            // The client went away: stop warming on its behalf.
                            work.abort();
                            return;
                        }
                        listening = false;
                    }
                }
            }
        };
        if !listening {
            let files = progress.total_files.load(Ordering::Relaxed);
            match &result {
                Ok(Ok(())) => tracing::info!(files, "detached warm finished"),
                Ok(Err(e)) => tracing::error!(files, error = %e, "detached warm failed"),
                Err(e) => tracing::error!(files, error = %e, "detached warm failed"),
            }
            return;
        }
        let msg = match result {
            Ok(Ok(())) => {
                let mut last = node.report(&progress);
                last.finished = true;
                Ok(last)
            }
            Ok(Err(e)) => Err(Status::from(e)),
            Err(e) => Err(Status::internal(e.to_string())),
        };
        let _ = tx.send(msg).await;
    });
    ReceiverStream::new(rx).boxed()
}

/// What a `List` or `ListPages` call resolved, before its entries are made.
struct Listed {
    files: Files,
    /// With `one_level`: the folders directly in the one listed.
    folders: Vec<String>,
    revision: String,
    ttl_ms: u64,
    age_ms: u64,
    cluster: Option<crate::Coverage>,
}

impl Listed {
    /// The entries of files `range`: with where their bytes are when complete here (one look
    /// at the store for the whole range).
    fn entries(&self, node: &Node, range: std::ops::Range<usize>) -> Vec<pb::ListEntry> {
        let files: Vec<Brief> = range.clone().filter_map(|i| self.files.brief(i)).collect();
        let asked: Vec<(&str, &str)> = files
            .iter()
            .map(|f| (f.uri.as_str(), f.key.as_str()))
            .collect();
        let held = node.store.holdings(&asked);
        range
            .zip(files)
            .zip(held)
            .map(|((i, f), h)| self.entry(i, f, h))
            .collect()
    }

    /// The entry of file `i` (`f`), given what the store holds of it.
    fn entry(&self, i: usize, f: Brief, held: locus_store::Holding) -> pb::ListEntry {
        let (cache_path, chunk_size, chunk_crc32c) = held
            .complete
            .map(|(p, cs, crcs)| (p.display().to_string(), cs, crcs))
            .unwrap_or_default();
        pb::ListEntry {
            uri: f.uri,
            path: f.path,
            size: f.size,
            cached_fraction: held.fraction,
            cache_path,
            chunk_size,
            chunk_crc32c,
            key: f.key,
            cluster_fraction: self
                .cluster
                .as_ref()
                .and_then(|c| c.fractions.get(i).copied())
                .unwrap_or_default(),
        }
    }

    /// A response without entries: the revision, TTL and age, and (`first`) who did not answer.
    fn head(&self, first: bool) -> pb::ListResponse {
        pb::ListResponse {
            entries: Vec::new(),
            revision: self.revision.clone(),
            ttl_ms: self.ttl_ms,
            age_ms: self.age_ms,
            unanswered: match (first, &self.cluster) {
                (true, Some(c)) => c.unanswered.clone(),
                _ => Vec::new(),
            },
            folders: match first {
                true => self.folders.clone(),
                false => Vec::new(),
            },
        }
    }
}

/// A listing of `n` entries as a stream of pages of [`crate::LIST_PAGE`] (at least one page,
/// however short), each made by `make` from its range as the client takes it: one page at a
/// time in memory. The local and the peer `ListPages` both send this way.
pub(crate) fn pages<T: Send + 'static>(
    n: usize,
    mut make: impl FnMut(std::ops::Range<usize>) -> T + Send + 'static,
) -> BoxStream<T> {
    let (tx, rx) = mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        let mut start = 0;
        loop {
            let end = (start + crate::LIST_PAGE).min(n);
            if tx.blocking_send(Ok(make(start..end))).is_err() || end == n {
                return;
            }
            start = end;
        }
    });
    ReceiverStream::new(rx).boxed()
}

/// The local API over a node.
pub struct LocalService {
    node: Arc<Node>,
    /// The build, as `locus --version` says it.
    version: String,
}

impl LocalService {
    /// Resolves what a `List` request names (and, when asked, what the cluster holds of it).
    async fn listed(&self, req: pb::ListRequest) -> Result<Listed, Status> {
        let uri = parse_uri(&req.uri)?;
        let max_age = (req.max_age_ms > 0).then(|| Duration::from_millis(req.max_age_ms));
        let mut r = self.node.resolve_within(&uri, max_age).await?;
        let (ttl, age) = self.node.freshness(&uri, &r);
        let mut folders = Vec::new();
        if req.one_level && !r.is_file {
            // Paths read from the namespace's root unless the listing answered from an
            // enclosing one (then from the folder itself).
            let prefix = match r.files.first() {
                Some(f)
                    if !uri.path.is_empty() && f.path.starts_with(&format!("{}/", uri.path)) =>
                {
                    format!("{}/", uri.path)
                }
                _ => String::new(),
            };
            let (files, names) = r.files.children(&prefix);
            r.files = files;
            folders = names;
        }
        let cluster = match req.cluster {
            true => Some(self.node.coverage(&r.files).await),
            false => None,
        };
        Ok(Listed {
            files: r.files,
            folders,
            revision: r.revision,
            ttl_ms: ttl.map_or(0, |t| t.as_millis().max(1) as u64),
            age_ms: age.as_millis() as u64,
            cluster,
        })
    }

    /// Serves `node`, built as `version`.
    pub fn new(node: Arc<Node>, version: &str) -> Self {
        Self {
            node,
            version: version.to_string(),
        }
    }
}

/// What unpin or evict did with one selected file.
enum Outcome {
    /// Done; the bytes the file takes here.
    Done(u64),
    NotCached,
    /// Left: a reader has it open (evict).
    InUse,
    /// Cached but not pinned (unpin): nothing to undo.
    NotPinned,
}

pub(crate) type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

impl LocalService {
    /// Calls `act` on the key of every file `r` selects and counts the outcomes.
    async fn on_selected(
        &self,
        r: pb::SelectRequest,
        act: impl Fn(&str) -> Outcome,
    ) -> Result<Response<pb::SelectResponse>, Status> {
        let files = self.node.select(&r.uris, &r.include, &r.exclude).await?;
        let mut keys: Vec<String> = files.iter().map(|f| f.key.clone()).collect();
        // A URI without a revision names every version of its files: older ones cached here
        // (an overwritten object, a moved branch) are reached too.
        let unversioned = |uri: &str| {
            LocusUri::parse(uri).ok().map(|mut u| {
                u.revision = None;
                u.to_string()
            })
        };
        let any_version = r
            .uris
            .iter()
            .all(|u| LocusUri::parse(u).is_ok_and(|u| u.revision.is_none()));
        if any_version {
            let names: std::collections::HashSet<String> =
                files.iter().filter_map(|f| unversioned(&f.uri)).collect();
            let current: std::collections::HashSet<String> = keys.iter().cloned().collect();
            // One pass over the index, outside the store's lock.
            keys.extend(self.node.store().keys_where(&|k, u| {
                !current.contains(k) && unversioned(u).is_some_and(|n| names.contains(&n))
            }));
        }
        let mut out = pb::SelectResponse::default();
        for key in &keys {
            match act(key) {
                Outcome::Done(bytes) => {
                    out.files += 1;
                    out.bytes += bytes;
                }
                Outcome::NotCached => out.not_cached += 1,
                Outcome::InUse => out.in_use += 1,
                Outcome::NotPinned => out.not_pinned += 1,
            }
        }
        Ok(Response::new(out))
    }
}

#[tonic::async_trait]
impl Local for LocalService {
    type WarmStream = BoxStream<pb::WarmProgress>;
    type ReadStream = BoxStream<pb::DataChunk>;

    async fn warm(
        &self,
        request: Request<pb::WarmRequest>,
    ) -> Result<Response<Self::WarmStream>, Status> {
        let r = request.into_inner();
        let scope = Scope::parse(&r.scope)?;
        if r.uris.is_empty() {
            return Err(Status::invalid_argument("name at least one URI to warm"));
        }
        let files = self.node.select(&r.uris, &r.include, &r.exclude).await?;
        tracing::info!(uris = ?r.uris, files = files.len(), ?scope, "warm");
        Ok(Response::new(warm_stream(
            self.node.clone(),
            files,
            r.pin,
            scope,
            r.detach,
        )))
    }

    async fn open(
        &self,
        request: Request<pb::OpenRequest>,
    ) -> Result<Response<pb::OpenResponse>, Status> {
        let uri = parse_uri(&request.into_inner().uri)?;
        let file = self.node.resolve_file(&uri).await?;
        let progress = WarmProgress::default();
        let h = self.node.ensure_file(&file, &progress).await?;
        let crcs = h
            .all_crcs()
            .ok_or_else(|| Status::unavailable("file was evicted while opening; try again"))?;
        Ok(Response::new(pb::OpenResponse {
            path: h.path().display().to_string(),
            size: file.size,
            chunk_size: h.layout().chunk_size,
            chunk_crc32c: crcs,
            transfer: Some(progress.transfer()),
        }))
    }

    async fn chunks(
        &self,
        request: Request<pb::ChunksRequest>,
    ) -> Result<Response<pb::ChunksResponse>, Status> {
        let req = request.into_inner();
        let uri = parse_uri(&req.uri)?;
        let file = self.node.resolve_file(&uri).await?;
        if !req.key.is_empty() && file.key != req.key {
            // The name moved on since the reader listed it (an overwritten object, past the
            // TTL): answer about the version it holds open, from what is stored of it, or not
            // at all. Never the new version's bytes under the old one's size.
            let Some((path, size, chunk_size, crcs)) = self.node.store.complete_file(&req.key)
            else {
                return Err(Status::aborted(format!(
                    "{}: changed at the origin since it was opened, and the version opened is \
                     not all here; open it again",
                    file.uri
                )));
            };
            return Ok(Response::new(pb::ChunksResponse {
                path: path.display().to_string(),
                size,
                chunk_size,
                present: vec![true; crcs.len()],
                chunk_crc32c: crcs,
                complete: true,
                // Only a listing at the new version mends a reader's view of this name.
                hit: false,
            }));
        }
        let first = req.first;
        let end = first.saturating_add(req.count);
        if req.recheck {
            let h = self.node.register(&file).await?;
            tokio::task::spawn_blocking(move || {
                for idx in first..end.min(h.layout().count()) {
                    h.check_chunk(idx, Duration::ZERO)?;
                }
                Ok::<_, StoreError>(())
            })
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(NodeError::from)?;
        }
        let (h, hit) = self.node.ensure_chunks_seen(&file, first..end).await?;
        let crcs = h.crcs();
        Ok(Response::new(pb::ChunksResponse {
            path: h.path().display().to_string(),
            size: file.size,
            chunk_size: h.layout().chunk_size,
            chunk_crc32c: crcs.iter().map(|c| c.unwrap_or(0)).collect(),
            present: crcs.iter().map(|c| c.is_some()).collect(),
            complete: h.verified(),
            hit,
        }))
    }

    async fn read(
        &self,
        request: Request<pb::ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let req = request.into_inner();
        let uri = parse_uri(&req.uri)?;
        let file = self.node.resolve_file(&uri).await?;
        if req.offset > file.size {
            return Err(Status::out_of_range(format!(
                "offset {} is past the end of {} ({} bytes)",
                req.offset, file.uri, file.size
            )));
        }
        let node = self.node.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let progress = WarmProgress::default();
            let result: Result<(), Status> = async {
                let mut h = node.ensure_file(&file, &progress).await?;
                let layout = h.layout();
                let mut idx = (req.offset / layout.chunk_size) as u32;
                let mut skip = (req.offset % layout.chunk_size) as usize;
                while idx < layout.count() {
                    let hb = h.clone();
                    let checked =
                        tokio::task::spawn_blocking(move || hb.checked_bytes(idx, Duration::ZERO))
                            .await
                            .map_err(|e| Status::internal(e.to_string()))?
                            .map_err(NodeError::from)?;
                    let Some(buf) = checked else {
                        // Dropped on a failed check: fetch it again, then go on.
                        h = node.ensure_file(&file, &progress).await?;
                        continue;
                    };
                    let buf = buf.slice(skip.min(buf.len())..);
                    skip = 0;
                    for piece in buf.chunks(READ_MESSAGE) {
                        let data = buf.slice_ref(piece);
                        if tx.send(Ok(pb::DataChunk { data })).await.is_err() {
                            return Ok(());
                        }
                    }
                    idx += 1;
                }
                Ok(())
            }
            .await;
            if let Err(s) = result {
                let _ = tx.send(Err(s)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx).boxed()))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let listed = self.listed(request.into_inner()).await?;
        let entries = listed.entries(&self.node, 0..listed.files.len());
        Ok(Response::new(pb::ListResponse {
            entries,
            ..listed.head(true)
        }))
    }

    type ListPagesStream = BoxStream<pb::ListResponse>;

    async fn list_pages(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<Self::ListPagesStream>, Status> {
        let listed = self.listed(request.into_inner()).await?;
        let node = self.node.clone();
        Ok(Response::new(pages(listed.files.len(), move |r| {
            pb::ListResponse {
                entries: listed.entries(&node, r.clone()),
                ..listed.head(r.start == 0)
            }
        })))
    }

    async fn unpin(
        &self,
        request: Request<pb::SelectRequest>,
    ) -> Result<Response<pb::SelectResponse>, Status> {
        let store = &self.node.store;
        // Counted: the files that were pinned (cached but not pinned: nothing to do).
        self.on_selected(request.into_inner(), |key| match store.held(key) {
            Some((bytes, true)) => {
                store.set_pinned(key, false);
                Outcome::Done(bytes)
            }
            Some((_, false)) => Outcome::NotPinned,
            None => Outcome::NotCached,
        })
        .await
    }

    async fn evict(
        &self,
        request: Request<pb::SelectRequest>,
    ) -> Result<Response<pb::SelectResponse>, Status> {
        let out = self
            .on_selected(request.into_inner(), |key| {
                match self.node.store.evict(key) {
                    locus_store::Evicted::Freed(bytes) => Outcome::Done(bytes),
                    locus_store::Evicted::NotCached => Outcome::NotCached,
                    locus_store::Evicted::InUse => Outcome::InUse,
                }
            })
            .await;
        // Evicted files are gone from the index before the answer.
        let store = self.node.store.clone();
        let _ = tokio::task::spawn_blocking(move || store.flush()).await;
        out
    }

    async fn cached(
        &self,
        _request: Request<pb::CachedRequest>,
    ) -> Result<Response<pb::CachedResponse>, Status> {
        let node = self.node.clone();
        let namespaces = tokio::task::spawn_blocking(move || node.cached_namespaces())
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::CachedResponse { namespaces }))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let s = self.node.store.stats();
        let c = &self.node.counters;
        let local = c.local_bytes.load(Ordering::Relaxed);
        let fetched = c.origin_bytes.load(Ordering::Relaxed) + c.peer_bytes.load(Ordering::Relaxed);
        Ok(Response::new(pb::StatusResponse {
            cache_bytes: s.used,
            capacity_bytes: s.capacity,
            files: s.files,
            pinned: s.pinned,
            pinned_bytes: s.pinned_bytes,
            version: self.version.clone(),
            // By bytes: of the bytes served from here or fetched, the share the cache held.
            hit_ratio: if local + fetched == 0 {
                0.0
            } else {
                local as f64 / (local + fetched) as f64
            },
            origin_bytes: c.origin_bytes.load(Ordering::Relaxed),
            peer_bytes: c.peer_bytes.load(Ordering::Relaxed),
            local_bytes: c.local_bytes.load(Ordering::Relaxed),
            members: self
                .node
                .cluster
                .members()
                .into_iter()
                .map(|m| pb::Member {
                    addr: m.addr,
                    state: m.state.as_str().into(),
                    load: m.load,
                })
                .collect(),
            cache_hits: c.hits.load(Ordering::Relaxed),
            cache_misses: c.misses.load(Ordering::Relaxed),
            origin_requests: c.origin_requests.load(Ordering::Relaxed),
            chunk_size: self.node.cfg.chunk_size,
            node_addr: self.node.cluster.me().to_string(),
            peer_bytes_sent: c.peer_bytes_sent.load(Ordering::Relaxed),
            origin_calls: locus_origin::requests_by_kind()
                .into_iter()
                .map(|(k, n)| (k.to_string(), n))
                .collect(),
        }))
    }
}
