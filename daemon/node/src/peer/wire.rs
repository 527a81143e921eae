//! The chunk wire: chunk bodies between peers over plain TCP, on the gRPC port.
//!
//! gRPC (HTTP/2) costs a bulk transfer copies it does not need: the sender encodes each piece
//! into a buffer, the reader reassembles frames into messages, and every piece lands in fresh
//! memory before it is written to the cache file. On the wire the server hands the checked
//! chunk to the kernel with `sendfile`, and the reader receives into one small, cache-hot
//! buffer, computes the CRC on the way and writes it to the cache file: the copies of a plain
//! TCP copy, no more. Dragonfly's client added a TCP piece protocol beside gRPC for the same
//! reason. Everything else (metadata, warm, health) stays on gRPC; with mutual TLS between
//! peers the wire is off and chunks stream over gRPC inside TLS.
//!
//! The server tells wire connections from HTTP/2 ones by their first eight bytes. A reader
//! whose peer does not answer the hello (a node without the wire, or TLS) uses gRPC for a while.
//!
//! Protocol (lengths and codes big-endian):
//! - reader → server, once per connection: [`MAGIC`], a u16 token length, the peer token;
//! - server → reader: [`HELLO`], or an error frame and the end of the connection;
//! - reader → server, per request: a u32 length, a `ChunkRequest` (protobuf);
//! - server → reader, per request: heartbeat frames (`.`) while the chunk is being fetched,
//!   then an error frame (`E`, u32 length, i32 gRPC code, message) or a header frame (`H`,
//!   u32 length, a `ChunkPiece` with `header` set) followed by exactly `length` chunk bytes.
//!
//! Every length is bounded before anything is allocated, and the reader checks the chunk's
//! bytes against the header's CRC before the chunk is committed, as on gRPC.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpStream as StdStream, ToSocketAddrs};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use locus_core::Secret;
use locus_grpc::v1 as pb;
use locus_store::FileHandle;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::server::{invalid, same_secret, HEARTBEAT};
use super::{PeerError, CONNECT_TIMEOUT, IDLE_TIMEOUT, MAX_FIELD};
use crate::sha_chain::{self, Step};
use crate::{Node, NodeError};

/// First bytes a reader sends (HTTP/2 clients send `PRI * HTTP/2.0…`).
pub const MAGIC: &[u8; 8] = b"LOCUSCW1";
/// The server's answer to a good hello.
pub const HELLO: &[u8; 8] = b"LOCUSOK1";
pub(crate) const BEAT: u8 = b'.';
pub(crate) const HEADER: u8 = b'H';
const ERROR: u8 = b'E';
/// Largest request, header and error frames.
const MAX_REQUEST: u32 = 64 << 10;
const MAX_HEADER: u32 = 1024;
const MAX_ERROR: u32 = 8 << 10;
/// How long a new connection may take to send its first eight bytes.
const SNIFF_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle wire connections are closed by the server after this long...
const SERVER_IDLE: Duration = Duration::from_secs(120);
/// ...and reused by readers only within this long.
const POOL_IDLE: Duration = Duration::from_secs(60);
/// Idle connections kept per peer.
const POOL_MAX: usize = 32;
/// How long a peer that did not answer the hello is read over gRPC before it is asked again.
const UNSUPPORTED_FOR: Duration = Duration::from_secs(60);
/// Bytes moved per `splice` (the pipe's size).
const PIPE_SIZE: usize = 1 << 20;

/// Accepts connections on the peer port: wire connections are served here, the others (gRPC)
/// come out of the returned stream, for tonic's `serve_with_incoming`.
pub fn split(
    listener: TcpListener,
    node: Arc<Node>,
    token: Option<Secret>,
    mut stop: watch::Receiver<bool>,
) -> ReceiverStream<std::io::Result<TcpStream>> {
    let (tx, rx) = mpsc::channel(64);
    let want: Option<Arc<[u8]>> = token.map(|t| Arc::from(t.expose().as_bytes()));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = stop.wait_for(|v| *v) => return,
            };
            let s = match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    tracing::warn!(error = %e, "peer port: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = s.set_nodelay(true);
            let (tx, node, want) = (tx.clone(), node.clone(), want.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(SNIFF_TIMEOUT, is_wire(&s)).await {
                    Ok(Ok(true)) => {
                        if let Err(e) = serve(&node, s, want.as_deref()).await {
                            tracing::debug!(error = %e, "wire connection ended");
                        }
                    }
                    Ok(Ok(false)) => {
                        let _ = tx.send(Ok(s)).await;
                    }
                    // Closed or silent before saying anything.
                    _ => {}
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Whether a new connection starts with [`MAGIC`] (decided as soon as a byte differs).
async fn is_wire(s: &TcpStream) -> std::io::Result<bool> {
    let mut head = [0u8; 8];
    loop {
        let n = s.peek(&mut head).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if head[..n] != MAGIC[..n] {
            return Ok(false);
        }
        if n == head.len() {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn timed_out(_: tokio::time::error::Elapsed) -> std::io::Error {
    std::io::ErrorKind::TimedOut.into()
}

async fn serve(node: &Arc<Node>, mut s: TcpStream, want: Option<&[u8]>) -> std::io::Result<()> {
    let mut magic = [0u8; 8];
    let mut len = [0u8; 2];
    tokio::time::timeout(IDLE_TIMEOUT, async {
        s.read_exact(&mut magic).await?;
        s.read_exact(&mut len).await
    })
    .await
    .map_err(timed_out)??;
    let len = u16::from_be_bytes(len) as usize;
    if len > MAX_FIELD {
        return send_error(&mut s, &invalid("peer token too long")).await;
    }
    let mut got = vec![0u8; len];
    tokio::time::timeout(IDLE_TIMEOUT, s.read_exact(&mut got))
        .await
        .map_err(timed_out)??;
    if let Some(want) = want {
        if !same_secret(&got, want) {
            metrics::counter!(crate::metrics_defs::PEER_AUTH_FAILURES).increment(1);
            let st = Status::unauthenticated(
                "peer token missing or wrong (set the same --peer-token on every node)",
            );
            return send_error(&mut s, &st).await;
        }
    }
    write_within(&mut s, HELLO).await?;
    loop {
        let len = match tokio::time::timeout(SERVER_IDLE, s.read_u32()).await {
            Ok(Ok(n)) => n,
            // Idle, or the reader closed its connection.
            _ => return Ok(()),
        };
        if len > MAX_REQUEST {
            return send_error(&mut s, &invalid(format!("request of {len} bytes"))).await;
        }
        let mut buf = vec![0u8; len as usize];
        tokio::time::timeout(IDLE_TIMEOUT, s.read_exact(&mut buf))
            .await
            .map_err(timed_out)??;
        let req = match pb::ChunkRequest::decode(buf.as_slice()) {
            Ok(r) => r,
            Err(e) => {
                return send_error(&mut s, &invalid(format!("malformed chunk request: {e}"))).await
            }
        };
        serve_one(node, &mut s, req).await?;
    }
}

/// Answers one request: heartbeats while the chunk is fetched, then its header and bytes (by
/// `sendfile` from the cache file), or an error frame. The connection stays usable after an
/// error frame.
async fn serve_one(
    node: &Arc<Node>,
    s: &mut TcpStream,
    req: pb::ChunkRequest,
) -> std::io::Result<()> {
    let from = s.peer_addr().ok().map(|a| a.ip());
    let prepared = match node.prepare_chunk(req, from).await {
        Ok(p) => p,
        Err(st) => return send_error(s, &st).await,
    };
    let mut ready = std::pin::pin!(prepared.ready(node, false));
    let ready = loop {
        tokio::select! {
            r = &mut ready => break r,
            _ = tokio::time::sleep(HEARTBEAT) => write_within(s, &[BEAT]).await?,
        }
    };
    let ready = match ready {
        Ok(r) => r,
        Err(st) => return send_error(s, &st).await,
    };
    write_within(s, &frame(HEADER, &[&ready.header.encode_to_vec()])).await?;
    if ready.data.is_none() {
        return Ok(());
    }
    let file = ready
        .h
        .data_file()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let range = ready.h.layout().range(ready.idx);
    let mut off = range.start as i64;
    let end = range.end as i64;
    while off < end {
        // The kernel sends the page cache's pages, which the check in `ready` just read.
        // A reader that stops reading must not hold the chunk (and this node's load) forever.
        let send = s.async_io(Interest::WRITABLE, || {
            let left = (end - off) as usize;
            nix::sys::sendfile::sendfile64(s.as_fd(), file.as_fd(), Some(&mut off), left)
                .map_err(std::io::Error::from)
        });
        let n = tokio::time::timeout(IDLE_TIMEOUT, send)
            .await
            .map_err(timed_out)??;
        if n == 0 {
            // The file is shorter than the chunk: cut the connection, the reader goes elsewhere.
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        node.count_sent(n as u64);
    }
    Ok(())
}

/// Writes `buf`, giving up after [`IDLE_TIMEOUT`] (a reader that stopped reading).
async fn write_within(s: &mut TcpStream, buf: &[u8]) -> std::io::Result<()> {
    tokio::time::timeout(IDLE_TIMEOUT, s.write_all(buf))
        .await
        .map_err(timed_out)?
}

async fn send_error(s: &mut TcpStream, st: &Status) -> std::io::Result<()> {
    let msg = st.message().as_bytes();
    let msg = &msg[..msg.len().min(MAX_ERROR as usize - 4)];
    write_within(s, &frame(ERROR, &[&(st.code() as i32).to_be_bytes(), msg])).await
}

/// A frame: its kind, the length of its body (u32, big-endian), then the body's parts.
fn frame(kind: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut f = Vec::with_capacity(5 + len);
    f.push(kind);
    f.extend_from_slice(&(len as u32).to_be_bytes());
    for p in parts {
        f.extend_from_slice(p);
    }
    f
}

/// Where a reader puts a chunk's bytes: its range of the cache file.
#[derive(Clone)]
pub struct ChunkTarget {
    /// The cache file.
    pub h: Arc<FileHandle>,
    /// The chunk's index.
    pub idx: u32,
    /// Where the chunk starts in it.
    pub offset: u64,
    /// The chunk's length.
    pub len: u64,
    /// Called with each run of bytes received.
    pub count: Arc<dyn Fn(u64) + Send + Sync>,
}

/// A chunk fetched into the cache file.
#[derive(Debug)]
pub struct Fetched {
    /// The server's header.
    pub header: pb::ChunkPiece,
    /// CRC32C of the bytes written (the caller compares it with the header's).
    pub crc: u32,
    /// The chunk's hash step, checked on the bytes written, when the server sent one.
    pub step: Option<Step>,
}

/// The reader's side: connections to each peer, kept for reuse.
pub struct WireClient {
    hello: Vec<u8>,
    pool: Mutex<HashMap<String, Vec<(StdStream, Instant)>>>,
    unsupported: DashMap<String, Instant>,
}

/// How one exchange on a connection ended badly.
enum Failure {
    /// The connection was closed before any answer (a pooled one the server has dropped).
    Stale,
    /// Anything else.
    Failed(NodeError),
}

impl From<NodeError> for Failure {
    fn from(e: NodeError) -> Self {
        Failure::Failed(e)
    }
}

thread_local! {
    /// Each receiving thread's pipe for `splice` (read end, write end).
    static PIPE: RefCell<Option<(OwnedFd, OwnedFd)>> = const { RefCell::new(None) };
}

fn unreachable(addr: &str, detail: impl std::fmt::Display) -> NodeError {
    NodeError::Peer(PeerError::unreachable(addr, detail))
}

fn garbled(addr: &str, detail: impl std::fmt::Display) -> NodeError {
    NodeError::Peer(PeerError::garbled(addr, detail))
}

fn io_detail(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            "silent for too long".into()
        }
        _ => e.to_string(),
    }
}

/// Reads a length-prefixed payload of at most `max` bytes.
fn read_payload(c: &mut impl Read, addr: &str, max: u32) -> Result<Vec<u8>, NodeError> {
    let mut len = [0u8; 4];
    c.read_exact(&mut len)
        .map_err(|e| unreachable(addr, io_detail(&e)))?;
    let len = u32::from_be_bytes(len);
    if len > max {
        return Err(garbled(addr, format!("a {len}-byte frame")));
    }
    let mut buf = vec![0u8; len as usize];
    c.read_exact(&mut buf)
        .map_err(|e| unreachable(addr, io_detail(&e)))?;
    Ok(buf)
}

/// An error frame's status.
fn error_frame(c: &mut impl Read, addr: &str) -> NodeError {
    match read_payload(c, addr, MAX_ERROR) {
        Ok(p) if p.len() >= 4 => NodeError::Peer(PeerError::Status {
            addr: addr.to_string(),
            code: tonic::Code::from_i32(i32::from_be_bytes([p[0], p[1], p[2], p[3]])),
            message: String::from_utf8_lossy(&p[4..]).into_owned(),
        }),
        Ok(_) => garbled(addr, "a short error frame"),
        Err(e) => e,
    }
}

impl WireClient {
    /// A reader that presents `token` to its peers.
    pub fn new(token: Option<&Secret>) -> WireClient {
        let token = token.map(|t| t.expose().as_bytes()).unwrap_or_default();
        let mut hello = MAGIC.to_vec();
        hello.extend_from_slice(&(token.len() as u16).to_be_bytes());
        hello.extend_from_slice(token);
        WireClient {
            hello,
            pool: Mutex::new(HashMap::new()),
            unsupported: DashMap::new(),
        }
    }

    /// Fetches a chunk from `addr` into `t` (blocking); returns its header and the CRC of the
    /// bytes written, which the caller compares with the header's. `Ok(None)`: the peer does
    /// not speak the wire; ask it over gRPC.
    pub fn fetch(
        &self,
        addr: &str,
        req: &pb::ChunkRequest,
        t: &ChunkTarget,
    ) -> Result<Option<Fetched>, NodeError> {
        if let Some(since) = self.unsupported.get(addr).map(|v| *v) {
            if since.elapsed() < UNSUPPORTED_FOR {
                return Ok(None);
            }
            self.unsupported.remove(addr);
        }
        // No pipe for `splice` (out of file descriptors): this chunk goes over gRPC.
        if let Err(e) = PIPE.with_borrow_mut(ensure_pipe) {
            tracing::warn!(error = %e, "no pipe for the chunk wire; using gRPC");
            return Ok(None);
        }
        let msg = req.encode_to_vec();
        let mut frame = Vec::with_capacity(4 + msg.len());
        frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        frame.extend_from_slice(&msg);
        if let Some(mut c) = self.pooled(addr) {
            match exchange(addr, &mut c, &frame, t) {
                Ok(r) => {
                    self.put_back(addr, c);
                    return Ok(Some(r));
                }
                // The server dropped it meanwhile: once more, on a new connection.
                Err(Failure::Stale) => {}
                Err(Failure::Failed(e)) => return Err(self.after_error(addr, c, e)),
            }
        }
        let Some(mut c) = self.connect(addr)? else {
            tracing::info!(
                peer = addr,
                "peer does not speak the chunk wire; using gRPC"
            );
            self.unsupported.insert(addr.to_string(), Instant::now());
            return Ok(None);
        };
        match exchange(addr, &mut c, &frame, t) {
            Ok(r) => {
                self.put_back(addr, c);
                Ok(Some(r))
            }
            Err(Failure::Stale) => Err(unreachable(addr, "connection closed before an answer")),
            Err(Failure::Failed(e)) => Err(self.after_error(addr, c, e)),
        }
    }

    /// After an error frame the connection is ready for the next request: keep it (a miss
    /// of a `local_only` request is common). After anything else it is dropped.
    fn after_error(&self, addr: &str, c: StdStream, e: NodeError) -> NodeError {
        if matches!(e, NodeError::Peer(PeerError::Status { .. })) {
            self.put_back(addr, c);
        }
        e
    }

    fn pooled(&self, addr: &str) -> Option<StdStream> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let conns = pool.get_mut(addr)?;
        while let Some((c, at)) = conns.pop() {
            if at.elapsed() < POOL_IDLE {
                return Some(c);
            }
        }
        None
    }

    fn put_back(&self, addr: &str, c: StdStream) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        // Connections to peers that are no longer asked (gone members) are closed here.
        pool.retain(|_, conns| {
            conns.retain(|(_, at)| at.elapsed() < POOL_IDLE);
            !conns.is_empty()
        });
        let conns = pool.entry(addr.to_string()).or_default();
        if conns.len() < POOL_MAX {
            conns.push((c, Instant::now()));
        }
    }

    /// A new connection past the hello; `None` if the peer does not answer it as a wire server.
    fn connect(&self, addr: &str) -> Result<Option<StdStream>, NodeError> {
        let sa = addr
            .to_socket_addrs()
            .map_err(|e| unreachable(addr, e))?
            .next()
            .ok_or_else(|| unreachable(addr, "no address"))?;
        let mut c =
            StdStream::connect_timeout(&sa, CONNECT_TIMEOUT).map_err(|e| unreachable(addr, e))?;
        let _ = c.set_nodelay(true);
        c.set_read_timeout(Some(IDLE_TIMEOUT))
            .and_then(|()| c.set_write_timeout(Some(IDLE_TIMEOUT)))
            .map_err(|e| unreachable(addr, e))?;
        c.write_all(&self.hello)
            .map_err(|e| unreachable(addr, io_detail(&e)))?;
        let mut first = [0u8; 1];
        match c.read(&mut first) {
            // Closed on the hello: not a wire server.
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
            Err(e) => return Err(unreachable(addr, io_detail(&e))),
        }
        if first[0] == ERROR {
            return Err(error_frame(&mut c, addr));
        }
        let mut rest = [0u8; 7];
        if first[0] != HELLO[0] || c.read_exact(&mut rest).is_err() || rest != HELLO[1..] {
            return Ok(None);
        }
        Ok(Some(c))
    }
}

/// Sends one request on `c` and receives its answer into `t`.
fn exchange(
    addr: &str,
    c: &mut StdStream,
    frame: &[u8],
    t: &ChunkTarget,
) -> Result<Fetched, Failure> {
    if c.write_all(frame).is_err() {
        return Err(Failure::Stale);
    }
    let mut answered = false;
    loop {
        let mut kind = [0u8; 1];
        match c.read(&mut kind) {
            Ok(0) if !answered => return Err(Failure::Stale),
            Ok(0) => return Err(unreachable(addr, "connection closed").into()),
            Ok(_) => {}
            Err(e) if !answered && e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Err(Failure::Stale)
            }
            Err(e) => return Err(unreachable(addr, io_detail(&e)).into()),
        }
        answered = true;
        match answer(kind[0], c, addr, t.len, t.offset)? {
            None => continue,
            Some((header, step)) => {
                let (crc, end) = receive(addr, c, t, step.map(|s| s[0]))?;
                if let (Some(step), Some(end)) = (step, end) {
                    if step[1] != end {
                        // The server sent a chunk without reading it again (it found it right
                        // a moment ago): its copy may have gone bad since, which is no reason
                        // to mark it down. The chunk comes from elsewhere.
                        return Err(NodeError::Peer(PeerError::Status {
                            addr: addr.to_string(),
                            code: tonic::Code::DataLoss,
                            message: "chunk bytes do not match their hash step".into(),
                        })
                        .into());
                    }
                }
                return Ok(Fetched { header, crc, step });
            }
        }
    }
}

/// The rest of a server's frame of `kind`, up to the chunk's bytes: `None` for a heartbeat,
/// the checked header (and its hash step, where the chunk of `len` bytes at `offset` is whole
/// blocks at a block boundary) before a chunk, or the error the frame carries or the stream
/// shows. Everything a peer sends before chunk bytes is parsed here (fuzzed: `wire_frames`).
pub(crate) fn answer(
    kind: u8,
    c: &mut impl Read,
    addr: &str,
    len: u64,
    offset: u64,
) -> Result<Option<(pb::ChunkPiece, Option<Step>)>, NodeError> {
    match kind {
        BEAT => Ok(None),
        ERROR => Err(error_frame(c, addr)),
        HEADER => {
            let p = read_payload(c, addr, MAX_HEADER)?;
            let header = pb::ChunkPiece::decode(p.as_slice())
                .map_err(|e| garbled(addr, format!("malformed header: {e}")))?;
            if !header.header || !header.data.is_empty() || header.length != len {
                return Err(garbled(
                    addr,
                    format!("header says {} bytes for a {len}-byte chunk", header.length),
                ));
            }
            let step = match (
                sha_chain::from_bytes(&header.sha256_before),
                sha_chain::from_bytes(&header.sha256_after),
            ) {
                (Some(b), Some(a)) if len.is_multiple_of(64) && offset.is_multiple_of(64) => {
                    Some([b, a])
                }
                _ => None,
            };
            Ok(Some((header, step)))
        }
        k => Err(garbled(addr, format!("unknown frame {k:#04x}"))),
    }
}

/// Receives `t.len` bytes into the cache file with `splice` (socket → pipe → page cache, no
/// copy through user space), then computes from the page cache their CRC32C and, from
/// `sha_from`, their hash step: what is checked is what was stored.
fn receive(
    addr: &str,
    c: &mut StdStream,
    t: &ChunkTarget,
    sha_from: Option<sha_chain::State>,
) -> Result<(u32, Option<sha_chain::State>), NodeError> {
    PIPE.with_borrow_mut(|pipe| {
        let r = receive_with(addr, c, t, pipe);
        if r.is_err() {
            // It may still hold bytes of this chunk.
            *pipe = None;
        }
        r
    })?;
    let Some(bytes) = t.h.map_chunk(t.idx)? else {
        return Err(garbled(addr, "the chunk was not stored whole"));
    };
    // One pass, each slice hashed while it is in the CPU's cache (a multiple of 64 bytes).
    let (mut crc, mut end) = (0, sha_from);
    for s in bytes.chunks(256 << 10) {
        crc = crc32c::crc32c_append(crc, s);
        if let Some(state) = end.as_mut() {
            sha_chain::advance(state, s);
        }
    }
    Ok((crc, end))
}

/// Makes this thread's pipe for `splice`.
fn ensure_pipe(pipe: &mut Option<(OwnedFd, OwnedFd)>) -> nix::Result<()> {
    if pipe.is_none() {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        // A larger pipe moves more per call; a user over its pipe quota keeps the default.
        if let Err(e) = nix::fcntl::fcntl(&w, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32))
        {
            tracing::debug!(error = %e, "pipe left at its default size");
        }
        *pipe = Some((r, w));
    }
    Ok(())
}

fn receive_with(
    addr: &str,
    c: &mut StdStream,
    t: &ChunkTarget,
    pipe: &mut Option<(OwnedFd, OwnedFd)>,
) -> Result<(), NodeError> {
    use nix::errno::Errno;
    ensure_pipe(pipe).map_err(|e| NodeError::Internal(format!("pipe: {e}")))?;
    let Some((r, w)) = pipe.as_ref() else {
        return Err(NodeError::Internal("no pipe".into()));
    };
    let mut got = 0u64;
    while got < t.len {
        let want = (t.len - got).min(PIPE_SIZE as u64) as usize;
        let n = match nix::fcntl::splice(
            &*c,
            None,
            w,
            None,
            want,
            nix::fcntl::SpliceFFlags::SPLICE_F_MOVE,
        ) {
            Ok(0) => {
                return Err(unreachable(
                    addr,
                    format!("connection closed after {got} bytes of the chunk"),
                ))
            }
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => {
                return Err(unreachable(
                    addr,
                    format!("silent for too long after {got} bytes of the chunk"),
                ))
            }
            Err(e) => return Err(unreachable(addr, e)),
        };
        t.h.splice_at(r.as_fd(), n, t.offset + got)?;
        (t.count)(n as u64);
        got += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use locus_core::RemoteFile;
    use locus_store::Store;
    use std::net::TcpListener as StdListener;

    const LEN: u64 = 300_000;

    /// A cache file of one `LEN`-byte chunk to fetch into.
    fn target(dir: &std::path::Path) -> ChunkTarget {
        target_of(dir, LEN)
    }

    fn target_of(dir: &std::path::Path, len: u64) -> ChunkTarget {
        let store = Store::open(dir, 1 << 30).unwrap();
        let file = RemoteFile {
            uri: "hf://o/n@abc/f.bin".into(),
            path: "f.bin".into(),
            size: len,
            key: "test:f".into(),
            locator: "f.bin".into(),
            digest: None,
            listed: None,
        };
        ChunkTarget {
            h: Arc::new(store.register(&file, len).unwrap()),
            idx: 0,
            offset: 0,
            len,
            count: Arc::new(|_| {}),
        }
    }

    /// A server that answers each connection with `script` after reading what it is sent
    /// (the hello, or the hello and a request).
    fn serve(script: impl Fn(&mut StdStream) + Send + 'static) -> String {
        let l = StdListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { return };
                let mut hello = [0u8; 10];
                if c.read_exact(&mut hello).is_err() {
                    continue;
                }
                script(&mut c);
            }
        });
        addr
    }

    fn hello_then(c: &mut StdStream, frames: &[&[u8]]) {
        c.write_all(HELLO).unwrap();
        let mut len = [0u8; 4];
        c.read_exact(&mut len).unwrap();
        let mut req = vec![0u8; u32::from_be_bytes(len) as usize];
        c.read_exact(&mut req).unwrap();
        for f in frames {
            let _ = c.write_all(f);
        }
    }

    fn header(length: u64, crc: u32) -> Vec<u8> {
        header_frame(pb::ChunkPiece {
            header: true,
            length,
            crc32c: crc,
            ..Default::default()
        })
    }

    fn header_frame(piece: pb::ChunkPiece) -> Vec<u8> {
        frame(HEADER, &[&piece.encode_to_vec()])
    }

    fn fetch(addr: &str, t: &ChunkTarget) -> Result<Option<Fetched>, NodeError> {
        WireClient::new(None).fetch(addr, &pb::ChunkRequest::default(), t)
    }

    #[test]
    fn good_bytes_land_in_the_cache_file_with_their_crc() {
        let dir = tempfile::tempdir().unwrap();
        let t = target(dir.path());
        let body: Vec<u8> = (0..LEN).map(|i| (i * 7 % 251) as u8).collect();
        let crc = crc32c::crc32c(&body);
        let b = body.clone();
        let addr = serve(move |c| hello_then(c, &[b".", b".", &header(LEN, crc), &b]));
        let f = fetch(&addr, &t).unwrap().unwrap();
        assert_eq!((f.header.crc32c, f.crc), (crc, crc));
        let back = std::fs::read(t.h.path()).unwrap();
        assert!(back == body);
    }

    fn header_with_step(length: u64, crc: u32, step: &Step) -> Vec<u8> {
        header_frame(pb::ChunkPiece {
            header: true,
            length,
            crc32c: crc,
            sha256_before: sha_chain::to_bytes(&step[0]),
            sha256_after: sha_chain::to_bytes(&step[1]),
            ..Default::default()
        })
    }

    #[test]
    fn hash_steps_are_checked_on_the_bytes_received() {
        let dir = tempfile::tempdir().unwrap();
        // A chunk of whole 64-byte blocks.
        let t = target_of(dir.path(), LEN / 64 * 64);
        let body: Vec<u8> = (0..t.len).map(|i| (i * 13 % 241) as u8).collect();
        let crc = crc32c::crc32c(&body);
        let before = [7u32; 8];
        let mut after = before;
        sha_chain::advance(&mut after, &body);
        let step = [before, after];
        let b = body.clone();
        let addr =
            serve(move |c| hello_then(c, &[&header_with_step(b.len() as u64, crc, &step), &b]));
        let f = fetch(&addr, &t).unwrap().unwrap();
        assert_eq!((f.step, f.crc), (Some(step), crc));
        // A server whose bytes do not take its step (a flipped byte, with a CRC to match).
        let mut bad = body.clone();
        bad[1000] ^= 1;
        let bad_crc = crc32c::crc32c(&bad);
        let addr = serve(move |c| {
            hello_then(
                c,
                &[&header_with_step(bad.len() as u64, bad_crc, &step), &bad],
            )
        });
        // Not counted against the server (its copy may have gone bad since it checked it): the
        // chunk comes from elsewhere.
        match fetch(&addr, &t).unwrap_err() {
            NodeError::Peer(e @ PeerError::Status { code, .. }) => {
                assert_eq!(code, tonic::Code::DataLoss);
                assert!(!e.marks_down());
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn hostile_servers_give_errors_never_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let t = target(dir.path());
        let body = vec![1u8; LEN as usize];
        // Bytes that do not match the header's CRC come back with their own CRC: the caller
        // refuses them.
        let b = body.clone();
        let addr = serve(move |c| hello_then(c, &[&header(LEN, 42), &b]));
        let f = fetch(&addr, &t).unwrap().unwrap();
        assert_ne!(f.header.crc32c, f.crc);

        type Script = Box<dyn Fn(&mut StdStream) + Send>;
        let garbled: Vec<(&str, Script)> = vec![
            (
                "wrong length",
                Box::new(|c| hello_then(c, &[&header(LEN + 1, 0)])),
            ),
            (
                "huge header",
                Box::new(|c| hello_then(c, &[&[HEADER, 0xff, 0xff, 0xff, 0xff]])),
            ),
            (
                "bad header",
                Box::new(|c| hello_then(c, &[&[HEADER, 0, 0, 0, 3, 0xff, 0xff, 0xff]])),
            ),
            ("unknown frame", Box::new(|c| hello_then(c, &[b"Z"]))),
            (
                "huge error",
                Box::new(|c| hello_then(c, &[&[ERROR, 0x7f, 0, 0, 0]])),
            ),
        ];
        for (what, script) in garbled {
            let addr = serve(script);
            let e = fetch(&addr, &t).unwrap_err();
            assert!(
                matches!(e, NodeError::Peer(PeerError::Garbled { .. })),
                "{what}: {e:?}"
            );
        }
        // Cut off mid-chunk.
        let addr = serve(|c| hello_then(c, &[&header(LEN, 0), &[0u8; 1000]]));
        let e = fetch(&addr, &t).unwrap_err();
        assert!(
            matches!(e, NodeError::Peer(PeerError::Unreachable { .. })),
            "{e:?}"
        );
        // An error frame is the peer's status.
        let mut err = vec![ERROR, 0, 0, 0, 8];
        err.extend_from_slice(&(tonic::Code::NotFound as i32).to_be_bytes());
        err.extend_from_slice(b"gone");
        let addr = serve(move |c| hello_then(c, &[&err]));
        match fetch(&addr, &t).unwrap_err() {
            NodeError::Peer(PeerError::Status { code, message, .. }) => {
                assert_eq!((code, message.as_str()), (tonic::Code::NotFound, "gone"))
            }
            e => panic!("{e:?}"),
        }
    }

    /// A full disk under the cache: the chunk fails with "no space", never a short write
    /// taken for a chunk. Needs root (a small tmpfs), as the FUSE tests do.
    #[test]
    #[ignore = "needs root (a mount, another user or a tmpfs): tests/run runs it"]
    fn a_full_disk_fails_the_chunk_clearly() {
        let dir = tempfile::tempdir().unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            // Room for the index (quick repair keeps its allocator state too), not the chunk.
            Some("size=8m"),
        )
        .expect("mounting a small tmpfs (run the tests as root)");
        struct Unmount<'a>(&'a std::path::Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = nix::mount::umount2(self.0, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        let _unmount = Unmount(dir.path());
        let len = 16 << 20;
        let t = target_of(dir.path(), len);
        let body = vec![3u8; len as usize];
        let crc = crc32c::crc32c(&body);
        let addr = serve(move |c| hello_then(c, &[&header(len, crc), &body]));
        match fetch(&addr, &t) {
            Err(NodeError::Store(e)) => {
                assert!(
                    matches!(*e, locus_store::StoreError::DiskFull { .. }),
                    "{e:?}"
                )
            }
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn a_server_that_does_not_speak_the_wire_means_grpc() {
        let dir = tempfile::tempdir().unwrap();
        let t = target(dir.path());
        // What an HTTP/2 server sends first: a SETTINGS frame.
        let addr = serve(|c| {
            let _ = c.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        });
        let w = WireClient::new(None);
        assert!(w
            .fetch(&addr, &pb::ChunkRequest::default(), &t)
            .unwrap()
            .is_none());
        // Remembered: no second connection.
        assert!(w.unsupported.contains_key(&addr));
        // A server that closes on the hello.
        let addr = serve(|_| {});
        assert!(fetch(&addr, &t).unwrap().is_none());
    }
}
