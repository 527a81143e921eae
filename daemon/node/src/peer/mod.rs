//! Talking to other nodes: the transport seam ([`PeerTransport`]), its gRPC implementation
//! ([`GrpcPeers`]), the server side ([`server::PeerService`]), and the checks that turn peer
//! messages into trusted values.
//!
//! Trust: peers may be made to authenticate each other with a shared token or mutual TLS
//! ([`PeerSecurity`]). Whatever a peer sends is validated (sizes bounded, names parsed, chunk
//! bytes checked against their CRC before they are stored, files against the origin's digest
//! before they are called complete). No message carries an origin credential: the node that
//! fetches from the origin uses its own.

pub mod server;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use locus_core::{Digest, Listing, ListingBuilder, RemoteFile, Secret};
use locus_grpc::v1 as pb;
use locus_grpc::v1::peer_client::PeerClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Largest peer message accepted (a listing of a very large repo; chunk pieces are 1 MiB).
pub const MAX_MESSAGE: usize = 64 << 20;
/// Largest chunk piece a reader accepts.
pub const MAX_PIECE: usize = 4 << 20;
/// Files in one listing from a peer (past it, the member lists the origin itself).
pub const MAX_FILES: usize = 10_000_000;
/// Longest string field (URI, path, key, locator).
pub const MAX_FIELD: usize = 4096;
/// Cache keys in one `Holds` request.
pub const MAX_HOLDS_KEYS: usize = 10_000;

/// Chunk fetches on the wire at once (each holds a blocking thread; tokio's pool has 512).
pub const WIRE_FETCHES: usize = 64;
/// HTTP/2 frame size between peers (both directions).
pub const PEER_FRAME: u32 = 1 << 20;
/// How long a peer may take to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a chunk stream may stay silent (servers send heartbeats every second).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of metadata calls (the owner may have to ask the origin).
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of health checks.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

/// A listing longer than [`MAX_FILES`]: an honest owner's answer too large to take, which
/// does not mark it down (the member lists the origin itself).
pub(crate) fn too_many(addr: &str) -> PeerError {
    PeerError::Status {
        addr: addr.to_string(),
        code: tonic::Code::OutOfRange,
        message: format!("a listing of more than {MAX_FILES} files"),
    }
}

/// What went wrong talking to a peer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    /// No connection, a reset, or silence past a deadline.
    #[error("peer {addr} unreachable: {detail}")]
    Unreachable {
        /// The peer.
        addr: String,
        /// What happened.
        detail: String,
    },
    /// The peer sent something invalid (bad sizes, wrong CRC, malformed fields).
    #[error("peer {addr} sent an invalid answer: {detail}")]
    Garbled {
        /// The peer.
        addr: String,
        /// What was wrong.
        detail: String,
    },
    /// The peer answered with an error status.
    #[error("peer {addr}: {message}")]
    Status {
        /// The peer.
        addr: String,
        /// The gRPC status code.
        code: tonic::Code,
        /// Its message.
        message: String,
    },
}

impl PeerError {
    /// The peer could not be reached or went silent.
    pub fn unreachable(addr: &str, detail: impl std::fmt::Display) -> Self {
        PeerError::Unreachable {
            addr: addr.to_string(),
            detail: detail.to_string(),
        }
    }

    /// The peer answered with something that breaks the protocol.
    pub fn garbled(addr: &str, detail: impl std::fmt::Display) -> Self {
        PeerError::Garbled {
            addr: addr.to_string(),
            detail: detail.to_string(),
        }
    }

    /// Whether the peer should be skipped until a health check succeeds: it is gone, it sent
    /// garbage, or it cannot serve this node at all (auth, chunk size, version).
    pub fn marks_down(&self) -> bool {
        match self {
            PeerError::Unreachable { .. } | PeerError::Garbled { .. } => true,
            PeerError::Status { code, .. } => matches!(
                code,
                tonic::Code::Unauthenticated
                    | tonic::Code::PermissionDenied
                    | tonic::Code::Unimplemented
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::Internal
                    | tonic::Code::Unknown
            ),
        }
    }

    /// Whether the error answers for the origin too (the file is missing there, access is
    /// denied): no point asking the origin ourselves.
    pub fn settles(&self) -> bool {
        matches!(
            self,
            PeerError::Status {
                code: tonic::Code::NotFound | tonic::Code::PermissionDenied,
                ..
            }
        )
    }

    fn from_status(addr: &str, s: tonic::Status) -> PeerError {
        use std::error::Error as _;
        // Transport failures surface as Unavailable/Unknown/Cancelled statuses with a source.
        let transport = s.source().is_some()
            || matches!(
                s.code(),
                tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
            )
            || (s.code() == tonic::Code::Unknown && s.message().contains("transport"));
        if transport {
            PeerError::Unreachable {
                addr: addr.to_string(),
                detail: s.message().to_string(),
            }
        } else {
            PeerError::Status {
                addr: addr.to_string(),
                code: s.code(),
                message: s.message().to_string(),
            }
        }
    }
}

/// A stream of chunk pieces.
pub type PieceStream = BoxStream<'static, Result<pb::ChunkPiece, PeerError>>;
/// A stream of warm progress.
pub type ProgressStream = BoxStream<'static, Result<pb::WarmProgress, PeerError>>;

/// How a node reaches its peers. The gRPC implementation is [`GrpcPeers`]; the node's unit
/// tests put a peer that lies behind it (`LyingPeer` in `tests.rs`).
#[async_trait]
pub trait PeerTransport: Send + Sync + 'static {
    /// Streams one chunk.
    async fn get_chunk(&self, addr: &str, req: pb::ChunkRequest) -> Result<PieceStream, PeerError>;
    /// Fetches one chunk straight into its range of the cache file; returns the header, the
    /// CRC32C of the bytes written (the caller compares them) and the chunk's checked hash
    /// step. `Ok(None)`: not possible this way for `addr`; the caller streams
    /// [`PeerTransport::get_chunk`] instead.
    async fn fetch_chunk_into(
        &self,
        addr: &str,
        req: pb::ChunkRequest,
        into: wire::ChunkTarget,
    ) -> Result<Option<wire::Fetched>, crate::NodeError> {
        let _ = (addr, req, into);
        Ok(None)
    }
    /// Resolves a revision at the metadata owner.
    async fn resolve(
        &self,
        addr: &str,
        req: pb::ResolveRequest,
    ) -> Result<pb::ResolveResponse, PeerError>;
    /// Lists a namespace at the metadata owner: every entry checked ([`file_from_pb`]).
    async fn list(&self, addr: &str, req: pb::PeerListRequest) -> Result<Listing, PeerError>;
    /// Asks a peer to cache files fully.
    async fn warm(&self, addr: &str, req: pb::PeerWarmRequest)
        -> Result<ProgressStream, PeerError>;
    /// Liveness and load.
    async fn health(&self, addr: &str) -> Result<pb::HealthResponse, PeerError>;
    /// Which chunks of files the peer holds.
    async fn holds(
        &self,
        addr: &str,
        req: pb::HoldsRequest,
    ) -> Result<pb::HoldsResponse, PeerError>;
}

/// Mutual TLS between peers: this node's certificate and key, and the CA that signs every
/// member's certificate.
#[derive(Clone)]
pub struct PeerTls {
    /// PEM certificate chain.
    pub cert_pem: Vec<u8>,
    /// PEM private key.
    pub key_pem: Vec<u8>,
    /// PEM CA certificate(s).
    pub ca_pem: Vec<u8>,
    /// The name every member's certificate carries (checked by clients).
    pub server_name: String,
    /// Where the three came from, to read again when they are renewed.
    pub files: Option<TlsFiles>,
}

/// The files of a [`PeerTls`].
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The certificate chain.
    pub cert: std::path::PathBuf,
    /// The private key.
    pub key: std::path::PathBuf,
    /// The CA certificate(s).
    pub ca: std::path::PathBuf,
}

/// Whether `name` can be a `--peer-tls-name`: a DNS name or an IP address.
pub fn valid_tls_name(name: &str) -> bool {
    rustls_pki_types::ServerName::try_from(name).is_ok()
}

impl PeerTls {
    /// The files as they are now, if they differ from what this holds (a renewed
    /// certificate, a new CA); `Err` if they cannot be read.
    pub fn reread(&self) -> Option<Result<PeerTls, String>> {
        let f = self.files.as_ref()?;
        let read =
            |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let all = || Ok::<_, String>((read(&f.cert)?, read(&f.key)?, read(&f.ca)?));
        // Read twice: a renewal landing between two reads (a new certificate with the old
        // key) is not taken; the next look finds it whole.
        let now = match (all(), all()) {
            (Ok(a), Ok(b)) if a != b => return None,
            (a, _) => a,
        };
        match now {
            Err(e) => Some(Err(e)),
            Ok((c, k, a)) if c == self.cert_pem && k == self.key_pem && a == self.ca_pem => None,
            Ok((cert_pem, key_pem, ca_pem)) => Some(Ok(PeerTls {
                cert_pem,
                key_pem,
                ca_pem,
                server_name: self.server_name.clone(),
                files: self.files.clone(),
            })),
        }
    }

    fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(self.server_name.clone())
    }
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// How peers authenticate each other, and whether chunk bodies may use the [`wire`].
#[derive(Clone, Debug)]
pub struct PeerSecurity {
    /// A shared token sent as `authorization: Bearer …` and required from callers.
    pub token: Option<Secret>,
    /// Mutual TLS (turns the wire off: chunks then stream over gRPC inside TLS).
    pub tls: Option<PeerTls>,
    /// Chunk bodies over the plain-TCP wire where the peer speaks it.
    pub wire: bool,
}

impl PeerSecurity {
    /// Whether chunk bodies go over the plain-TCP wire: asked for, and no TLS (the wire has
    /// none).
    pub fn wire_enabled(&self) -> bool {
        self.wire && self.tls.is_none()
    }
}

impl Default for PeerSecurity {
    fn default() -> Self {
        PeerSecurity {
            token: None,
            tls: None,
            wire: true,
        }
    }
}

/// Adds the peer token to every request.
#[derive(Clone)]
pub struct TokenInterceptor(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for TokenInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

type Client = PeerClient<InterceptedService<Channel, TokenInterceptor>>;

/// Peer channels kept at most.
const MAX_CHANNELS: usize = 4096;

/// Peers over gRPC on TCP, one multiplexed HTTP/2 connection per peer, with chunk bodies on
/// the [`wire`] where peers speak it (not with TLS).
pub struct GrpcPeers {
    /// One channel per peer address; bounded (addresses come and go with pods), a channel
    /// that goes is made again when needed.
    channels: quick_cache::sync::Cache<String, Channel>,
    /// Replaced when the certificate is renewed ([`GrpcPeers::set_tls`]).
    tls: std::sync::RwLock<Option<ClientTlsConfig>>,
    token: TokenInterceptor,
    wire: Option<Arc<wire::WireClient>>,
    wire_slots: tokio::sync::Semaphore,
    /// [`METADATA_TIMEOUT`] (shorter in tests).
    metadata_timeout: Duration,
}

/// An owner that gave no metadata answer within the deadline: it may still be asking an origin
/// that is slow or down (with its retries, longer than the deadline), so it is not marked down
/// for it (health checks find an owner that is gone); the member asks the origin itself.
fn no_answer_in_time(addr: &str) -> PeerError {
    PeerError::Status {
        addr: addr.to_string(),
        code: tonic::Code::DeadlineExceeded,
        message:
            "no metadata answer within the deadline (the owner may still be asking the origin)"
                .into(),
    }
}

/// A metadata call's failure: past its deadline (tonic says CANCELLED, "Timeout expired"; a
/// server says DEADLINE_EXCEEDED), [`no_answer_in_time`].
fn metadata_error(addr: &str, s: tonic::Status) -> PeerError {
    match s.code() {
        tonic::Code::Cancelled | tonic::Code::DeadlineExceeded => no_answer_in_time(addr),
        _ => PeerError::from_status(addr, s),
    }
}

impl GrpcPeers {
    /// A transport with the given security.
    pub fn new(security: &PeerSecurity) -> Result<Arc<GrpcPeers>, String> {
        let token = match &security.token {
            Some(t) => Some(
                format!("Bearer {}", t.expose())
                    .parse()
                    .map_err(|_| "the peer token must be printable ASCII".to_string())?,
            ),
            None => None,
        };
        let tls = std::sync::RwLock::new(security.tls.as_ref().map(PeerTls::client_config));
        let wire = security
            .wire_enabled()
            .then(|| Arc::new(wire::WireClient::new(security.token.as_ref())));
        Ok(Arc::new(GrpcPeers {
            channels: quick_cache::sync::Cache::new(MAX_CHANNELS),
            tls,
            token: TokenInterceptor(token),
            wire,
            wire_slots: tokio::sync::Semaphore::new(WIRE_FETCHES),
            metadata_timeout: METADATA_TIMEOUT,
        }))
    }

    /// A transport whose metadata calls give up after `d`.
    #[cfg(test)]
    pub(crate) fn with_metadata_timeout(d: Duration) -> Arc<GrpcPeers> {
        let mut p = Self::new(&PeerSecurity::default()).expect("no token");
        Arc::get_mut(&mut p).expect("just made").metadata_timeout = d;
        p
    }

    /// Uses `tls` for connections made from now on; the ones open finish their requests.
    pub fn set_tls(&self, tls: &PeerTls) {
        *self.tls.write().unwrap_or_else(|p| p.into_inner()) = Some(tls.client_config());
        self.channels.clear();
    }

    fn client(&self, addr: &str) -> Result<Client, PeerError> {
        let channel = match self.channels.get(addr) {
            Some(c) => c.clone(),
            None => {
                let unreachable = |detail: String| PeerError::unreachable(addr, detail);
                let tls = self.tls.read().unwrap_or_else(|p| p.into_inner()).clone();
                let scheme = if tls.is_some() { "https" } else { "http" };
                let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
                    .map_err(|e| unreachable(format!("bad address: {e}")))?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .keep_alive_timeout(Duration::from_secs(5))
                    .initial_stream_window_size(Some(8 << 20))
                    .initial_connection_window_size(Some(32 << 20))
                    // Chunk data comes in 1 MiB messages: 1 MiB frames instead of h2's 16 KiB
                    // default cut the syscalls of a transfer about 60-fold.
                    .max_frame_size(PEER_FRAME);
                if let Some(tls) = tls {
                    ep = ep
                        .tls_config(tls)
                        .map_err(|e| unreachable(format!("TLS settings: {e}")))?;
                }
                let ch = ep.connect_lazy();
                self.channels.insert(addr.to_string(), ch.clone());
                ch
            }
        };
        Ok(PeerClient::with_interceptor(channel, self.token.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }
}

fn deadline<T>(d: Duration, req: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(req);
    r.set_timeout(d);
    r
}

#[async_trait]
impl PeerTransport for GrpcPeers {
    async fn get_chunk(&self, addr: &str, req: pb::ChunkRequest) -> Result<PieceStream, PeerError> {
        let mut c = self.client(addr)?;
        let a = addr.to_string();
        let s = c
            .get_chunk(req)
            .await
            .map_err(|s| PeerError::from_status(addr, s))?
            .into_inner();
        Ok(s.map_err(move |e| PeerError::from_status(&a, e)).boxed())
    }

    async fn fetch_chunk_into(
        &self,
        addr: &str,
        req: pb::ChunkRequest,
        into: wire::ChunkTarget,
    ) -> Result<Option<wire::Fetched>, crate::NodeError> {
        let Some(w) = self.wire.clone() else {
            return Ok(None);
        };
        // Each wire fetch holds a blocking thread (waiting on heartbeats while the server
        // fetches): far fewer than the pool's threads, so that serving peers and writing to
        // the cache always find one and two nodes fetching from each other never wait on each
        // other's pools.
        let _slot = self
            .wire_slots
            .acquire()
            .await
            .map_err(|e| crate::NodeError::Internal(e.to_string()))?;
        let addr = addr.to_string();
        // Blocking sockets and writes: a thread receives, checks and writes one chunk.
        tokio::task::spawn_blocking(move || w.fetch(&addr, &req, &into))
            .await
            .map_err(|e| crate::NodeError::Internal(e.to_string()))?
    }

    async fn resolve(
        &self,
        addr: &str,
        req: pb::ResolveRequest,
    ) -> Result<pb::ResolveResponse, PeerError> {
        let mut c = self.client(addr)?;
        c.resolve(deadline(self.metadata_timeout, req))
            .await
            .map(|r| r.into_inner())
            .map_err(|s| metadata_error(addr, s))
    }

    /// The owner's listing in pages (`ListPages`), each checked and compacted as it comes; one
    /// message (`List`) from a member that has no pages. The owner may have to list the origin
    /// first: the first page, and each next one, within [`METADATA_TIMEOUT`].
    async fn list(&self, addr: &str, req: pb::PeerListRequest) -> Result<Listing, PeerError> {
        let mut c = self.client(addr)?;
        let late = || no_answer_in_time(addr);
        let mut files = ListingBuilder::default();
        let mut take = |page: Vec<pb::PeerFile>| -> Result<(), PeerError> {
            if files.len() + page.len() > MAX_FILES {
                return Err(too_many(addr));
            }
            for p in page {
                files.push(&file_from_pb(p).map_err(|why| PeerError::garbled(addr, why))?);
            }
            Ok(())
        };
        let mut pages =
            match tokio::time::timeout(self.metadata_timeout, c.list_pages(req.clone())).await {
                Err(_) => return Err(late()),
                Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => {
                    let r = c
                        .list(deadline(self.metadata_timeout, req))
                        .await
                        .map_err(|s| metadata_error(addr, s))?;
                    take(r.into_inner().files)?;
                    return Ok(files.finish());
                }
                Ok(Err(s)) => return Err(metadata_error(addr, s)),
                Ok(Ok(r)) => r.into_inner(),
            };
        loop {
            let page = match tokio::time::timeout(self.metadata_timeout, pages.message()).await {
                Err(_) => return Err(late()),
                Ok(Err(s)) => return Err(metadata_error(addr, s)),
                Ok(Ok(None)) => return Ok(files.finish()),
                Ok(Ok(Some(p))) => p,
            };
            if page.files.len() > crate::LIST_PAGE {
                return Err(PeerError::garbled(
                    addr,
                    "a listing page of more than 10,000 files",
                ));
            }
            take(page.files)?;
        }
    }

    async fn warm(
        &self,
        addr: &str,
        req: pb::PeerWarmRequest,
    ) -> Result<ProgressStream, PeerError> {
        let mut c = self.client(addr)?;
        let a = addr.to_string();
        let s = c
            .warm(req)
            .await
            .map_err(|s| PeerError::from_status(addr, s))?
            .into_inner();
        Ok(s.map_err(move |e| PeerError::from_status(&a, e)).boxed())
    }

    async fn health(&self, addr: &str) -> Result<pb::HealthResponse, PeerError> {
        let mut c = self.client(addr)?;
        c.health(deadline(HEALTH_TIMEOUT, pb::HealthRequest {}))
            .await
            .map(|r| r.into_inner())
            .map_err(|s| PeerError::from_status(addr, s))
    }

    async fn holds(
        &self,
        addr: &str,
        req: pb::HoldsRequest,
    ) -> Result<pb::HoldsResponse, PeerError> {
        let mut c = self.client(addr)?;
        c.holds(deadline(METADATA_TIMEOUT, req))
            .await
            .map(|r| r.into_inner())
            .map_err(|s| PeerError::from_status(addr, s))
    }
}

/// A field a peer sent, checked for length and control characters.
pub fn check_field<'a>(name: &str, v: &'a str, allow_empty: bool) -> Result<&'a str, String> {
    if v.len() > MAX_FIELD {
        return Err(format!("{name} longer than {MAX_FIELD} bytes"));
    }
    if !allow_empty && v.is_empty() {
        return Err(format!("{name} is empty"));
    }
    if v.chars().any(|c| c.is_control()) {
        return Err(format!("{name} holds control characters"));
    }
    Ok(v)
}

/// A listing entry for the wire.
pub fn file_to_pb(f: &RemoteFile) -> pb::PeerFile {
    let (kind, hex) = match &f.digest {
        Some(Digest::Sha256(h)) => ("sha256", h.clone()),
        Some(Digest::GitBlobSha1(h)) => ("gitblob", h.clone()),
        None => ("", String::new()),
    };
    pb::PeerFile {
        uri: f.uri.clone(),
        path: f.path.clone(),
        size: f.size,
        key: f.key.clone(),
        locator: f.locator.clone(),
        digest_kind: kind.into(),
        digest_hex: hex,
    }
}

/// A listing entry from the wire, checked: the URI parses and names the path, the path has no
/// `..`, the digest is well-formed hex of the right length and the key matches it.
pub fn file_from_pb(p: pb::PeerFile) -> Result<RemoteFile, String> {
    check_field("uri", &p.uri, false)?;
    check_field("path", &p.path, false)?;
    check_field("key", &p.key, false)?;
    check_field("locator", &p.locator, false)?;
    let uri = locus_core::LocusUri::parse(&p.uri).map_err(|e| e.to_string())?;
    if !uri.names_file(&p.path) {
        return Err(format!("uri {} does not name path {}", p.uri, p.path));
    }
    if p.path
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(format!("bad path {:?}", p.path));
    }
    let hex_ok = locus_core::is_hex;
    let digest = match p.digest_kind.as_str() {
        "" => None,
        "sha256" if hex_ok(&p.digest_hex, 64) => Some(Digest::Sha256(p.digest_hex)),
        "gitblob" if hex_ok(&p.digest_hex, 40) => Some(Digest::GitBlobSha1(p.digest_hex)),
        k => return Err(format!("bad digest {k:?}")),
    };
    if let Some(d) = &digest {
        if RemoteFile::key_for_digest(d, p.size) != p.key {
            return Err(format!("key {} does not match its digest and size", p.key));
        }
    }
    if p.size > 1 << 50 {
        return Err(format!("size {} out of range", p.size));
    }
    Ok(RemoteFile {
        uri: p.uri,
        path: p.path,
        size: p.size,
        key: p.key,
        locator: p.locator,
        digest,
        listed: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // `connect_lazy` needs a runtime; nothing connects.
    #[tokio::test]
    async fn peer_channels_are_bounded_and_one_in_use_outlives_a_stream_of_addresses() {
        let peers = GrpcPeers::new(&PeerSecurity {
            token: None,
            tls: None,
            wire: false,
        })
        .unwrap();
        let addr = |i: usize| format!("10.{}.{}.{}:7070", i >> 16, (i >> 8) & 255, i & 255);
        // A cache in its steady state first (quick_cache keeps the first entries of an empty
        // one in its hot part, whatever their use).
        for i in 0..2 * MAX_CHANNELS {
            peers.client(&addr(100_000 + i)).unwrap();
        }
        peers.client(&addr(0)).unwrap();
        peers.client(&addr(1)).unwrap();
        for i in 2..2 * MAX_CHANNELS {
            if i % 10 == 0 {
                // Present before it is used again (a use of a dropped one would make a new one).
                assert!(
                    peers.channels.contains_key(&addr(0)),
                    "dropped while in use ({i})"
                );
                peers.client(&addr(0)).unwrap();
            }
            peers.client(&addr(i)).unwrap();
        }
        assert!(
            peers.channels.len() <= MAX_CHANNELS,
            "{}",
            peers.channels.len()
        );
        assert_eq!(
            (
                peers.channels.contains_key(&addr(0)),
                peers.channels.contains_key(&addr(1))
            ),
            (true, false)
        );
    }

    fn good() -> pb::PeerFile {
        let hex = "ab".repeat(32);
        pb::PeerFile {
            uri: "hf://o/n@abc/w.bin".into(),
            path: "w.bin".into(),
            size: 10,
            key: format!("sha256:{hex}:10"),
            locator: "w.bin".into(),
            digest_kind: "sha256".into(),
            digest_hex: hex,
        }
    }

    #[test]
    fn listing_entries_are_checked() {
        assert!(file_from_pb(good()).is_ok());
        type Edit = Box<dyn Fn(&mut pb::PeerFile)>;
        let bad: Vec<Edit> = vec![
            Box::new(|f| f.uri = "hf://o/n@abc/../x".into()),
            Box::new(|f| f.path = "other".into()),
            Box::new(|f| f.size = 11),
            Box::new(|f| f.digest_hex = "zz".repeat(32)),
            Box::new(|f| f.digest_kind = "md5".into()),
            Box::new(|f| f.key = "x".repeat(MAX_FIELD + 1)),
            Box::new(|f| f.locator = "a\nb".into()),
            Box::new(|f| f.uri = "s3://b/k".into()),
        ];
        for (i, b) in bad.iter().enumerate() {
            let mut f = good();
            b(&mut f);
            assert!(file_from_pb(f).is_err(), "case {i} accepted");
        }
    }
}
