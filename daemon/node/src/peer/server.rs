//! The peer API served to other nodes (see `grpc/proto/locus/v1/peer.proto`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use locus_core::{Listing, LocusUri, Namespace, RemoteFile, Secret};
use locus_grpc::v1 as pb;
use locus_grpc::v1::peer_server::Peer;
use locus_store::FileHandle;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{check_field, file_to_pb, MAX_HOLDS_KEYS};
use crate::read::Source;
use crate::service::{pages, warm_stream, BoxStream};
use crate::{sha_chain, Node, NodeError};

/// Bytes per data piece of a chunk stream.
const PIECE: usize = 1 << 20;
/// How long a chunk found right stays trusted for sending with its hash step (the reader checks
/// the step; this bounds how long a copy that went bad keeps being sent).
const RECHECK: Duration = Duration::from_secs(600);
/// How often a server waiting on a fetch tells the reader it is alive.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(1);

/// The peer API over a node.
pub struct PeerService {
    node: Arc<Node>,
}

impl PeerService {
    /// Serves `node` to its peers.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    /// The listing a `List` or `ListPages` request asks for, its fields checked first.
    async fn listing(&self, r: pb::PeerListRequest) -> Result<Arc<Listing>, Status> {
        let ns = namespace(&r.namespace)?;
        revision("revision_id", &r.revision_id)?;
        Ok(self.node.listing(&ns, &r.revision_id, true).await?)
    }
}

/// Rejects callers that do not present `token` (when one is set; compared in constant time) or,
/// under mutual TLS, whose certificate does not carry `tls_name`. The TLS layer has already
/// checked the certificate against the cluster's CA; this is the check that a certificate the
/// same CA issued for something else (another service, another cluster) is not a member's.
pub fn check_peer(
    token: Option<Secret>,
    tls_name: Option<String>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    let want = token.map(|t| format!("Bearer {}", t.expose()).into_bytes());
    // A name that cannot be one (checked at start, too) lets no certificate pass.
    let name = tls_name.map(|n| rustls_pki_types::ServerName::try_from(n).ok());
    move |req: Request<()>| {
        if let Some(name) = &name {
            let certs = req.peer_certs();
            let leaf = certs.as_ref().and_then(|c| c.first());
            let ok = name
                .as_ref()
                .is_some_and(|name| leaf.is_some_and(|c| carries_name(c, name)));
            if !ok {
                metrics::counter!(crate::metrics_defs::PEER_AUTH_FAILURES).increment(1);
                return Err(Status::unauthenticated(
                    "peer certificate does not carry this cluster's --peer-tls-name",
                ));
            }
        }
        let Some(want) = &want else {
            return Ok(req);
        };
        let got = req
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if same_secret(got, want) {
            Ok(req)
        } else {
            metrics::counter!(crate::metrics_defs::PEER_AUTH_FAILURES).increment(1);
            Err(Status::unauthenticated(
                "peer token missing or wrong (set the same --peer-token on every node)",
            ))
        }
    }
}

/// Whether a (CA-verified) end-entity certificate is valid for `name` (its DNS or IP SANs).
fn carries_name(
    cert: &rustls_pki_types::CertificateDer<'_>,
    name: &rustls_pki_types::ServerName<'_>,
) -> bool {
    webpki::EndEntityCert::try_from(cert)
        .and_then(|c| c.verify_is_valid_for_subject_name(name))
        .is_ok()
}

/// Compares a presented secret in constant time (for its length).
pub(crate) fn same_secret(got: &[u8], want: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    got.ct_eq(want).into()
}

pub(crate) fn invalid(what: impl std::fmt::Display) -> Status {
    metrics::counter!(crate::metrics_defs::PEER_INVALID_REQUESTS).increment(1);
    Status::invalid_argument(what.to_string())
}

pub(crate) fn namespace(s: &str) -> Result<Namespace, Status> {
    check_field("namespace", s, false).map_err(invalid)?;
    let u = LocusUri::parse(s).map_err(invalid)?;
    if u.revision.is_some() || !u.path.is_empty() {
        return Err(invalid(format!("{s:?} is not a bare namespace")));
    }
    Ok(u.namespace)
}

pub(crate) fn revision(name: &str, s: &str) -> Result<(), Status> {
    check_field(name, s, false).map_err(invalid)?;
    if s.len() > 256 {
        return Err(invalid(format!("{name} too long")));
    }
    Ok(())
}

/// The path of `uri` inside the listing of `ns` (a file's URI is its namespace's plus its
/// path), or `None` for a namespace that is one file (an HTTP URL, which may end in any
/// character: nothing is cut from it by bytes).
pub(crate) fn path_in<'a>(ns: &Namespace, uri: &'a str) -> Option<&'a str> {
    if let Namespace::Http { .. } = ns {
        return None;
    }
    let probe = ns.file_uri(locus_core::LATEST, "x");
    uri.strip_prefix(probe.strip_suffix('x')?)
}

/// A peer's file reference, checked without this node's state: its URI, and for a namespace
/// without revisions the namespace its listing came from (fuzzed: `peer_messages`).
pub(crate) fn parse_ref(r: &pb::FileRef) -> Result<(LocusUri, Option<Namespace>), Status> {
    check_field("file.uri", &r.uri, false).map_err(invalid)?;
    check_field("file.key", &r.key, false).map_err(invalid)?;
    let uri = LocusUri::parse(&r.uri).map_err(invalid)?;
    if uri.namespace.has_revisions() {
        return Ok((uri, None));
    }
    let ns = namespace(&r.namespace)?;
    check_field("file.revision", &r.revision, false).map_err(invalid)?;
    Ok((uri, Some(ns)))
}

impl Node {
    /// The file a peer names, checked against this node's own listing: its URI must resolve to
    /// a file with the same key and size.
    async fn file_by_ref(&self, r: &pb::FileRef) -> Result<RemoteFile, Status> {
        let (uri, listed_in) = parse_ref(r)?;
        if let Some(ns) = listed_in {
            // No immutable name to resolve: the file must be in the listing it came from.
            let files = self.listing(&ns, &r.revision, false).await?;
            // Listings are sorted by path, and a file's URI is its namespace's plus its path:
            // a lookup, not a scan per chunk request (listings may hold 100,000s of files).
            let rel = path_in(&ns, &r.uri);
            let found = match rel {
                Some(rel) => files.find(rel).and_then(|i| files.get(i)),
                None => files.get(0).filter(|_| files.len() == 1),
            };
            return found
                .filter(|f| f.key == r.key && f.uri == r.uri && f.size == r.size)
                // The object moved on since that listing: not the peer's fault (no mark-down),
                // and the asker's own origin read will say what changed.
                .ok_or_else(|| {
                    Status::aborted(format!(
                        "{}: not in listing {} of {ns} here",
                        r.uri, r.revision
                    ))
                });
        }
        let f = self.resolve_file(&uri).await?;
        if f.key != r.key || f.size != r.size {
            return Err(Status::failed_precondition(format!(
                "{}: identity differs here ({} bytes, key {})",
                r.uri, f.size, f.key
            )));
        }
        Ok(f)
    }
}

fn source(s: Source) -> i32 {
    match s {
        Source::Local => pb::ChunkSource::Local as i32,
        Source::Origin => pb::ChunkSource::Origin as i32,
        Source::Peer => pb::ChunkSource::Peer as i32,
    }
}

/// Counts a chunk being served in this node's load while it lives.
pub(crate) struct Serving(Arc<Node>);

impl Serving {
    fn new(node: &Arc<Node>) -> Serving {
        node.serving.fetch_add(1, Ordering::Relaxed);
        Serving(node.clone())
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.serving.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A chunk request checked against this node: the file, its handle and the chunk.
pub(crate) struct Prepared {
    file: RemoteFile,
    h: Arc<FileHandle>,
    idx: u32,
    hops: u32,
    header_only: bool,
}

/// A chunk ready to send: its header and, unless only the header was asked for, its bytes
/// (mapped from the cache file and checked against the CRC in the header; empty when the
/// caller sends them from the file itself).
pub(crate) struct Ready {
    pub header: pb::ChunkPiece,
    pub data: Option<bytes::Bytes>,
    pub h: Arc<FileHandle>,
    pub idx: u32,
    _serving: Serving,
}

impl Node {
    /// Checks a chunk request (the gRPC and the wire one alike): fields, chunk size, the file
    /// against this node's listing, the index. A `local_only` request for a chunk not held
    /// here ends here (and, asked as a less loaded candidate, copies it for the next reader).
    pub(crate) async fn prepare_chunk(
        self: &Arc<Self>,
        req: pb::ChunkRequest,
        from: Option<std::net::IpAddr>,
    ) -> Result<Prepared, Status> {
        let fref = req.file.ok_or_else(|| invalid("file missing"))?;
        if req.chunk_size != self.cfg.chunk_size {
            return Err(Status::failed_precondition(format!(
                "chunk size {} differs from this node's {} (every node needs the same --chunk-size)",
                req.chunk_size, self.cfg.chunk_size
            )));
        }
        let file = self.file_by_ref(&fref).await?;
        let idx = req.index;
        if req.local_only && !self.store.has_chunk(&file.key, idx) {
            // Asked as a less loaded candidate (hops > 0): copy the chunk for the next reader,
            // if this peer has fewer than MAX_BACKGROUND_COPIES_PER_PEER and the node fewer
            // than MAX_BACKGROUND_COPIES copies under way. Otherwise nothing is started and the
            // file is not even registered: a peer's questions cannot queue work or add entries.
            let copy = (req.hops > 0)
                .then(|| self.background.start(from))
                .flatten();
            if let Some(copy) = copy {
                let h = self.register(&file).await?;
                if idx < h.layout().count() {
                    let node = self.clone();
                    tokio::spawn(async move {
                        let _ = node.ensure_chunk(&file, &h, idx).await;
                        drop(copy);
                    });
                }
            }
            return Err(Status::not_found("chunk not cached here"));
        }
        let h = self.register(&file).await?;
        if idx >= h.layout().count() {
            return Err(Status::out_of_range(format!(
                "chunk {idx} of {}: the file has {} chunks",
                file.uri,
                h.layout().count()
            )));
        }
        if req.local_only && h.crc(idx).is_none() {
            // Evicted since it was looked at.
            return Err(Status::not_found("chunk not cached here"));
        }
        Ok(Prepared {
            file,
            h,
            idx,
            hops: req.hops.min(crate::read::READER_HOPS - 1),
            header_only: req.header_only,
        })
    }
}

/// The chunk copies peers started on this node in the background: at most
/// [`crate::MAX_BACKGROUND_COPIES`], and [`crate::MAX_BACKGROUND_COPIES_PER_PEER`] of them for
/// one peer (by address), so that peers cannot queue work and no peer takes them all.
pub(crate) struct BackgroundCopies {
    all: Arc<tokio::sync::Semaphore>,
    by_peer: Arc<dashmap::DashMap<std::net::IpAddr, usize>>,
}

impl Default for BackgroundCopies {
    fn default() -> Self {
        Self {
            all: Arc::new(tokio::sync::Semaphore::new(crate::MAX_BACKGROUND_COPIES)),
            by_peer: Arc::default(),
        }
    }
}

impl BackgroundCopies {
    /// A place for one more copy asked for by `peer`, if there is one; held until the copy ends.
    fn start(
        &self,
        peer: Option<std::net::IpAddr>,
    ) -> Option<(PeerSlot, tokio::sync::OwnedSemaphorePermit)> {
        let slot = PeerSlot::take(&self.by_peer, peer)?;
        let permit = self.all.clone().try_acquire_owned().ok()?;
        Some((slot, permit))
    }
}

/// One of a peer's [`crate::MAX_BACKGROUND_COPIES_PER_PEER`] background copies, given back
/// on drop (the peer's entry goes with its last copy).
struct PeerSlot {
    by_peer: Arc<dashmap::DashMap<std::net::IpAddr, usize>>,
    peer: Option<std::net::IpAddr>,
}

impl PeerSlot {
    fn take(
        by_peer: &Arc<dashmap::DashMap<std::net::IpAddr, usize>>,
        peer: Option<std::net::IpAddr>,
    ) -> Option<PeerSlot> {
        if let Some(ip) = peer {
            let mut n = by_peer.entry(ip).or_insert(0);
            if *n >= crate::MAX_BACKGROUND_COPIES_PER_PEER {
                return None;
            }
            *n += 1;
        }
        Some(PeerSlot {
            by_peer: by_peer.clone(),
            peer,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        if let Some(ip) = self.peer {
            self.by_peer.remove_if_mut(&ip, |_, n| {
                *n = n.saturating_sub(1);
                *n == 0
            });
        }
    }
}

impl Prepared {
    /// Makes the chunk present here (a hit, or a fetch from its owner or the origin) and
    /// checks its bytes against their CRC before anything is sent: a corrupt copy is dropped
    /// (fetched again next time) and the reader told to go elsewhere. Callers send heartbeats
    /// while this waits. `map`: the bytes are wanted mapped (else only checked: the caller
    /// sends them from the file).
    pub(crate) async fn ready(self, node: &Arc<Node>, map: bool) -> Result<Ready, Status> {
        let serving = Serving::new(node);
        let Prepared {
            file,
            h,
            idx,
            hops,
            header_only,
        } = self;
        h.touch();
        let src = node
            .ensure_chunk_via(&file, &h, idx, crate::read::Route::Peers(hops))
            .await?;
        let Some(crc) = h.crc(idx) else {
            return Err(Status::unavailable("chunk evicted while serving"));
        };
        let range = h.layout().range(idx);
        if src == crate::Source::Local && !header_only {
            node.counters.local(range.end - range.start);
        }
        // Steps are recorded for a file only once it matched its published digest.
        let step = h.step(idx).filter(|_| h.verified());
        let header = pb::ChunkPiece {
            header: true,
            length: range.end - range.start,
            crc32c: crc,
            source: source(src),
            load: node.serving(),
            data: Default::default(),
            sha256_before: step.map(|s| sha_chain::to_bytes(&s[0])).unwrap_or_default(),
            sha256_after: step.map(|s| sha_chain::to_bytes(&s[1])).unwrap_or_default(),
        };
        // A chunk found right here a moment ago and sent with its hash step, which the reader
        // checks on what it receives, is not read again: a node serving a hot file to many
        // readers reads each chunk once per RECHECK, not once per reader. A copy that went bad
        // meanwhile is caught by the reader's step check (which does not mark this node down)
        // and here at the next check. Anything else is checked before it is sent, so that a
        // node never knowingly sends its own corrupt copy.
        let trusted = step.is_some() && h.checked_within(idx, RECHECK);
        let data = if header_only {
            None
        } else if trusted && !map {
            // The caller sends the bytes from the file: nothing to read here.
            Some(bytes::Bytes::new())
        } else {
            let hb = h.clone();
            let data = tokio::task::spawn_blocking(move || {
                if trusted {
                    hb.map_chunk(idx)
                } else {
                    hb.checked_bytes(idx, Duration::ZERO)
                }
            })
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(NodeError::from)?
            .ok_or_else(|| Status::data_loss("chunk failed its checksum here"))?;
            Some(data)
        };
        Ok(Ready {
            header,
            data,
            h,
            idx,
            _serving: serving,
        })
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    type GetChunkStream = BoxStream<pb::ChunkPiece>;
    type WarmStream = BoxStream<pb::WarmProgress>;

    async fn get_chunk(
        &self,
        request: Request<pb::ChunkRequest>,
    ) -> Result<Response<Self::GetChunkStream>, Status> {
        let from = request.remote_addr().map(|a| a.ip());
        let prepared = self.node.prepare_chunk(request.into_inner(), from).await?;
        let node = self.node.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut ready = std::pin::pin!(prepared.ready(&node, true));
            let ready = loop {
                tokio::select! {
                    r = &mut ready => break r,
                    _ = tokio::time::sleep(HEARTBEAT) => {
                        if tx.send(Ok(pb::ChunkPiece::default())).await.is_err() {
                            return;
                        }
                    }
                }
            };
            let ready = match ready {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            if tx.send(Ok(ready.header.clone())).await.is_err() {
                return;
            }
            let Some(data) = &ready.data else {
                return;
            };
            for piece in data.chunks(PIECE) {
                node.count_sent(piece.len() as u64);
                let piece = pb::ChunkPiece {
                    data: data.slice_ref(piece),
                    ..Default::default()
                };
                if tx.send(Ok(piece)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx).boxed()))
    }

    async fn resolve(
        &self,
        request: Request<pb::ResolveRequest>,
    ) -> Result<Response<pb::ResolveResponse>, Status> {
        let r = request.into_inner();
        let ns = namespace(&r.namespace)?;
        revision("revision", &r.revision)?;
        // A peer may ask for a fresher answer than the TTL (a listing it found out of date),
        // but not fresher than RELIST_AGE: however many ask, the origin is asked for one
        // revision of a namespace at most once per RELIST_AGE.
        let max_age = match r.max_age_ms {
            0 => Duration::MAX,
            ms => Duration::from_millis(ms).max(crate::RELIST_AGE),
        };
        let (id, age) = self.node.revision_local(&ns, &r.revision, max_age).await?;
        Ok(Response::new(pb::ResolveResponse {
            id,
            age_ms: age.as_millis() as u64,
        }))
    }

    async fn list(
        &self,
        request: Request<pb::PeerListRequest>,
    ) -> Result<Response<pb::PeerListResponse>, Status> {
        let files = self.listing(request.into_inner()).await?;
        Ok(Response::new(pb::PeerListResponse {
            files: files.iter().map(|f| file_to_pb(&f)).collect(),
        }))
    }

    type ListPagesStream = BoxStream<pb::PeerListResponse>;

    async fn list_pages(
        &self,
        request: Request<pb::PeerListRequest>,
    ) -> Result<Response<Self::ListPagesStream>, Status> {
        let files = self.listing(request.into_inner()).await?;
        Ok(Response::new(pages(files.len(), move |r| {
            pb::PeerListResponse {
                files: r
                    .filter_map(|i| files.get(i))
                    .map(|f| file_to_pb(&f))
                    .collect(),
            }
        })))
    }

    async fn warm(
        &self,
        request: Request<pb::PeerWarmRequest>,
    ) -> Result<Response<Self::WarmStream>, Status> {
        let r = request.into_inner();
        if r.uris.is_empty() || r.uris.len() > 10_000 {
            return Err(invalid("between 1 and 10000 URIs"));
        }
        for s in r.uris.iter().chain(&r.include).chain(&r.exclude) {
            check_field("uri or glob", s, false).map_err(invalid)?;
        }
        let files = self.node.select(&r.uris, &r.include, &r.exclude).await?;
        // Pinning is this node's decision: a peer's pin is taken only where configured.
        let pin = r.pin && self.node.cfg.accept_peer_pins;
        if r.pin && !pin {
            tracing::info!(
                files = files.len(),
                "a peer's warm asked to pin; not pinned here (--accept-peer-pins is off)"
            );
        }
        // A peer that goes away (its own warm was cancelled) cancels this one.
        Ok(Response::new(warm_stream(
            self.node.clone(),
            files,
            pin,
            crate::Scope::Node,
            false,
        )))
    }

    async fn holds(
        &self,
        request: Request<pb::HoldsRequest>,
    ) -> Result<Response<pb::HoldsResponse>, Status> {
        let r = request.into_inner();
        if r.keys.len() > MAX_HOLDS_KEYS {
            return Err(invalid(format!("at most {MAX_HOLDS_KEYS} keys")));
        }
        if r.chunk_size != self.node.cfg.chunk_size {
            return Err(Status::failed_precondition(format!(
                "chunk size {} differs from this node's {} (every node needs the same --chunk-size)",
                r.chunk_size, self.node.cfg.chunk_size
            )));
        }
        for k in &r.keys {
            check_field("key", k, false).map_err(invalid)?;
        }
        let chunks = r
            .keys
            .iter()
            .map(|k| self.node.store.chunk_bitmap(k))
            .collect();
        Ok(Response::new(pb::HoldsResponse { chunks }))
    }

    async fn health(
        &self,
        _request: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        Ok(Response::new(pb::HealthResponse {
            addr: self.node.cluster.me().to_string(),
            load: self.node.serving(),
            chunk_size: self.node.cfg.chunk_size,
            version: env!("CARGO_PKG_VERSION").into(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_in_listings_are_cut_by_parsed_prefixes_never_by_bytes() {
        for (ns, uri, want) in [
            ("http://h/é", "http://h/é", None),
            ("http://h/a", "http://h/a", None),
            ("s3://bkt/p/é", "s3://bkt/p/é/x/ü.bin", Some("x/ü.bin")),
            ("s3://bkt/p", "s3://other/p/x", None),
            ("file:///srv/é", "file:///srv/é/ü", Some("ü")),
        ] {
            let ns = LocusUri::parse(ns).unwrap().namespace;
            assert_eq!(path_in(&ns, uri), want, "{ns} {uri}");
        }
    }
}
