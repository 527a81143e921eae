//! Response bodies of cached files: chunk by chunk, each checked before a byte of it leaves.
//!
//! Every chunk sent is read from the node's cache file and CRC-checked on the bytes that are
//! then sent (one mapping: nothing is read twice), or was found right by this process less
//! than [`TRUST`] ago in a cache file unchanged since. That proves the bytes are the ones the
//! node stored; that they are the origin's is proved by the whole-file digest:
//! - a file already checked against its digest is streamed as it is;
//! - a whole-file response of a file not checked yet is hashed as it is sent, and its last
//!   piece leaves only if the hash equals the digest the origin published; else the connection
//!   is cut, so no client ever holds a complete wrong body;
//! - a part of a file not checked yet waits for the whole file to be fetched and checked;
//! - a file that stops being checked whole during a response (a chunk failed and was fetched
//!   again) sends nothing more until it is checked whole again.
//!
//! Memory per response is bounded: one chunk waits in a channel of one while the next is
//! prepared, and chunks are mapped from the page cache, not copied.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures::StreamExt;
use locus_core::{Digest, RemoteFile};
use locus_node::{Node, NodeError, WarmProgress};
use locus_store::FileHandle;
use sha1::Digest as _;

/// Chunks made present ahead of the one being sent (fetched from peers or the origin in
/// parallel, on disk, not in memory).
const LOOKAHEAD: usize = 4;

/// A chunk this process found right less than this long ago, in a cache file unchanged since
/// (its change time and length), is sent without reading it twice: a hot file served to many
/// clients is CRC-checked once a minute, not once a client. Anything else is checked on the
/// very bytes sent.
pub const TRUST: Duration = Duration::from_secs(60);

/// Why a body was cut.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The node could not make a chunk present.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// A chunk failed its check twice.
    #[error("{uri}: chunk {idx} failed its check after a refetch")]
    BadChunk {
        /// The file.
        uri: String,
        /// The chunk.
        idx: u32,
    },
    /// The bytes sent do not hash to the origin's digest.
    #[error("{uri}: the bytes do not match the origin's digest; response cut")]
    Digest {
        /// The file.
        uri: String,
    },
    /// A blocking read stopped.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The body of bytes `range` of `file`, from `node`, whose registered handle `h` is held until
/// the body ends (so the file cannot be evicted and registered again under it); `api` labels
/// its metrics.
pub fn verified(
    node: Arc<Node>,
    h: Arc<FileHandle>,
    file: RemoteFile,
    range: Range<u64>,
    api: &'static str,
) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, BodyError>>(1);
    tokio::spawn(async move {
        if let Err(e) = send(&node, &h, &file, range, &tx, api).await {
            metrics::counter!(crate::GATEWAY_CUT, "api" => api).increment(1);
            tracing::warn!(uri = file.uri, error = %e, "gateway response cut short");
            let _ = tx.send(Err(e)).await;
        }
    });
    Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Registers `file` for a response (before its headers, so that a file the cache cannot take
/// is an error status, not a cut body).
pub async fn register(node: &Arc<Node>, file: &RemoteFile) -> Result<Arc<FileHandle>, NodeError> {
    node.ensure_chunks(file, 0..0).await
}

/// A running hash of a whole file, in the algorithm of its published digest.
enum Hasher {
    Sha256(sha2::Sha256, String),
    GitBlob(sha1::Sha1, String),
}

impl Hasher {
    fn of(d: &Digest, size: u64) -> Hasher {
        match d {
            Digest::Sha256(h) => Hasher::Sha256(sha2::Sha256::new(), h.to_ascii_lowercase()),
            Digest::GitBlobSha1(h) => {
                let mut s = sha1::Sha1::new();
                s.update(format!("blob {size}\0").as_bytes());
                Hasher::GitBlob(s, h.to_ascii_lowercase())
            }
        }
    }

    fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::Sha256(h, _) => h.update(b),
            Hasher::GitBlob(h, _) => h.update(b),
        }
    }

    fn matches(self) -> bool {
        match self {
            Hasher::Sha256(h, want) => hex::encode(h.finalize()) == want,
            Hasher::GitBlob(h, want) => hex::encode(h.finalize()) == want,
        }
    }
}

async fn send(
    node: &Arc<Node>,
    h: &Arc<FileHandle>,
    file: &RemoteFile,
    range: Range<u64>,
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, BodyError>>,
    api: &'static str,
) -> Result<(), BodyError> {
    if range.is_empty() {
        return Ok(());
    }
    // The layout the file was cached with (it may predate the node's chunk size).
    let layout = h.layout();
    let whole = range.start == 0 && range.end == file.size;
    let mut hasher = None;
    if !h.verified() {
        match (&file.digest, whole) {
            (Some(d), true) => hasher = Some(Hasher::of(d, file.size)),
            // A part: only from a file checked whole.
            (Some(_), false) => drop(node.ensure_file(file, &WarmProgress::default()).await?),
            // Nothing published to check against: the CRCs are all there is.
            (None, _) => {}
        }
    }
    // A file changed on disk since its chunks were last found right is read again in full.
    let trust = match h.unchanged_since_checked() {
        true => TRUST,
        false => Duration::ZERO,
    };
    let chunks = layout.covering(range.clone());
    let last = chunks.end.saturating_sub(1);
    let mut present = futures::stream::iter(chunks)
        .map(|idx| async move { (idx, node.ensure_chunks(file, idx..idx + 1).await) })
        .buffered(LOOKAHEAD);
    while let Some((idx, got)) = present.next().await {
        got?;
        let mut bytes = checked(node, h, file, idx, trust).await?;
        // Not hashing this response, and the file stopped being checked whole meanwhile (a
        // chunk failed and came again, perhaps from a peer): nothing more leaves until the
        // whole file is checked again (from the origin alone after a mismatch).
        if hasher.is_none() && file.digest.is_some() && !h.verified() {
            drop(node.ensure_file(file, &WarmProgress::default()).await?);
            bytes = checked(node, h, file, idx, Duration::ZERO).await?;
        }
        let r = layout.range(idx);
        let from = (range.start.max(r.start) - r.start) as usize;
        let to = (range.end.min(r.end) - r.start) as usize;
        let Some(piece) = (from <= to && to <= bytes.len()).then(|| bytes.slice(from..to)) else {
            return Err(BodyError::BadChunk {
                uri: file.uri.clone(),
                idx,
            });
        };
        if let Some(hs) = hasher.as_mut() {
            hs.update(&piece);
        }
        if idx == last {
            if let Some(hs) = hasher.take() {
                if !hs.matches() {
                    return Err(BodyError::Digest {
                        uri: file.uri.clone(),
                    });
                }
            }
        }
        metrics::counter!(crate::GATEWAY_BYTES, "api" => api).increment(piece.len() as u64);
        if tx.send(Ok(piece)).await.is_err() {
            // The client left.
            return Ok(());
        }
    }
    Ok(())
}

/// Chunk `idx`'s bytes, CRC-checked as read unless found right less than `trust` ago; a chunk
/// that fails is dropped by the store and fetched once more.
async fn checked(
    node: &Arc<Node>,
    h: &Arc<FileHandle>,
    file: &RemoteFile,
    idx: u32,
    trust: Duration,
) -> Result<Bytes, BodyError> {
    for round in 0..2 {
        if round == 1 {
            node.ensure_chunks(file, idx..idx + 1).await?;
        }
        let hh = h.clone();
        let got = tokio::task::spawn_blocking(move || hh.checked_bytes(idx, trust))
            .await
            .map_err(|e| BodyError::Internal(e.to_string()))?
            .map_err(NodeError::from)?;
        if let Some(b) = got {
            return Ok(b);
        }
    }
    Err(BodyError::BadChunk {
        uri: file.uri.clone(),
        idx,
    })
}
