//! Chunk fetches (single-flight, retried, streamed to disk) and whole-file verification.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use dashmap::mapref::entry::Entry;
use futures::{FutureExt, StreamExt, TryStreamExt};
use locus_core::{Digest, RemoteFile};
use locus_store::FileHandle;
use sha1::Digest as _;

use crate::{Node, NodeError};

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
}

enum Source {
    Local,
    Origin,
}

enum Checked {
    Good,
    /// A chunk failed its CRC and was dropped.
    ChunkDropped,
    Mismatch,
}

impl Node {
    /// Makes `file` fully cached and verified on this node; returns a handle that keeps it from
    /// eviction while held.
    pub async fn ensure_file(
        self: &Arc<Self>,
        file: &RemoteFile,
        progress: &WarmProgress,
    ) -> Result<Arc<FileHandle>, NodeError> {
        let h = Arc::new(self.store.register(file, self.cfg.chunk_size)?);
        h.touch();
        let layout = h.layout();
        let mut mismatches = 0;
        // Bytes this call reported done, taken back if a round must fetch again.
        let done_here = AtomicU64::new(0);
        loop {
            let missing = h.missing();
            let missing_set: std::collections::HashSet<u32> = missing.iter().copied().collect();
            let present: u64 = (0..layout.count())
                .filter(|i| !missing_set.contains(i))
                .map(|i| layout.len(i))
                .sum();
            if present > 0 {
                self.counters.hits.fetch_add(
                    layout.count() as u64 - missing.len() as u64,
                    Ordering::Relaxed,
                );
                metrics::counter!("locus_cache_hits_total")
                    .increment(layout.count() as u64 - missing.len() as u64);
            }
            progress.local_bytes.fetch_add(present, Ordering::Relaxed);
            progress.done_bytes.fetch_add(present, Ordering::Relaxed);
            done_here.fetch_add(present, Ordering::Relaxed);
            let done_here = &done_here;
            futures::stream::iter(missing)
                .map(|idx| {
                    let h = h.clone();
                    async move {
                        let src = self.ensure_chunk(file, &h, idx).await?;
                        let len = layout.len(idx);
                        match src {
                            Source::Local => progress.local_bytes.fetch_add(len, Ordering::Relaxed),
                            Source::Origin => {
                                progress.origin_bytes.fetch_add(len, Ordering::Relaxed)
                            }
                        };
                        progress.done_bytes.fetch_add(len, Ordering::Relaxed);
                        done_here.fetch_add(len, Ordering::Relaxed);
                        Ok::<_, NodeError>(())
                    }
                })
                .buffer_unordered(self.cfg.concurrency.max(1))
                .try_collect::<()>()
                .await?;
            if h.verified() {
                self.counters
                    .local_bytes
                    .fetch_add(present, Ordering::Relaxed);
                return Ok(h);
            }
            let hv = h.clone();
            let digest = h.digest();
            let checked = tokio::task::spawn_blocking(move || verify(&hv, digest.as_ref()))
                .await
                .map_err(|e| NodeError::Internal(e.to_string()))??;
            match checked {
                Checked::Good => {
                    h.mark_verified();
                    return Ok(h);
                }
                // Chunks dropped: the next round fetches them again. Count every round
                // from zero.
                Checked::ChunkDropped => {}
                Checked::Mismatch => {
                    mismatches += 1;
                    tracing::error!(
                        uri = file.uri,
                        "file does not match its published digest; fetching it again"
                    );
                    metrics::counter!("locus_digest_mismatches_total").increment(1);
                    for idx in 0..layout.count() {
                        h.drop_chunk(idx);
                    }
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

    /// Makes chunks `range` of `file` present, without the whole-file check; when that leaves
    /// the file complete, the check runs in the background. For readers that go chunk by chunk.
    pub async fn ensure_chunks(
        self: &Arc<Self>,
        file: &RemoteFile,
        range: Range<u32>,
    ) -> Result<Arc<FileHandle>, NodeError> {
        let h = Arc::new(self.store.register(file, self.cfg.chunk_size)?);
        h.touch();
        let end = range.end.min(h.layout().count());
        futures::stream::iter(range.start..end)
            .map(|idx| {
                let h = h.clone();
                async move { self.ensure_chunk(file, &h, idx).await.map(|_| ()) }
            })
            .buffer_unordered(self.cfg.concurrency.max(1))
            .try_collect::<()>()
            .await?;
        if !h.verified() && h.missing().is_empty() {
            let node = self.clone();
            let file = file.clone();
            tokio::spawn(async move {
                if let Err(e) = node.ensure_file(&file, &WarmProgress::default()).await {
                    tracing::error!(uri = file.uri, error = %e, "background check of a complete file failed");
                }
            });
        }
        Ok(h)
    }

    /// Makes chunk `idx` present: a hit, a fetch, or joining a fetch already under way.
    async fn ensure_chunk(
        self: &Arc<Self>,
        file: &RemoteFile,
        h: &Arc<FileHandle>,
        idx: u32,
    ) -> Result<Source, NodeError> {
        let key = (h.key().to_string(), idx);
        let fut = match self.inflight.entry(key.clone()) {
            Entry::Occupied(o) => o.get().clone(),
            Entry::Vacant(v) => {
                if h.crc(idx).is_some() {
                    self.counters.hits.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("locus_cache_hits_total").increment(1);
                    return Ok(Source::Local);
                }
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("locus_cache_misses_total").increment(1);
                let node = self.clone();
                let file = file.clone();
                let h = h.clone();
                // A task, so that a reader that goes away does not cancel the fetch others wait on.
                let task = tokio::spawn(async move {
                    let r = node.fetch_chunk(&file, &h, idx).await;
                    node.inflight.remove(&key);
                    r
                });
                let fut =
                    async move { task.await.map_err(|e| NodeError::Internal(e.to_string()))? }
                        .boxed()
                        .shared();
                v.insert(fut.clone());
                fut
            }
        };
        fut.await.map(|()| Source::Origin)
    }

    async fn fetch_chunk(
        &self,
        file: &RemoteFile,
        h: &Arc<FileHandle>,
        idx: u32,
    ) -> Result<(), NodeError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| NodeError::Internal(e.to_string()))?;
        let range = h.layout().range(idx);
        let len = range.end - range.start;
        h.reserve(len)?;
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.fetch_once(file, h, range.clone()).await {
                Ok(crc) => {
                    h.commit_chunk(idx, crc);
                    metrics::histogram!("locus_fetch_seconds", "source" => "origin")
                        .record(started.elapsed().as_secs_f64());
                    return Ok(());
                }
                Err(e) if e.is_transient() && attempt < self.cfg.retry.attempts => {
                    let wait = self.cfg.retry.backoff(attempt, None);
                    tracing::warn!(uri = file.uri, chunk = idx, attempt, error = %e, ?wait, "chunk fetch failed; retrying");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    h.release(len);
                    tracing::error!(uri = file.uri, chunk = idx, error = %e, "chunk fetch failed");
                    return Err(e);
                }
            }
        }
    }

    /// One attempt: streams `range` into the cache file and returns its CRC32C.
    async fn fetch_once(
        &self,
        file: &RemoteFile,
        h: &Arc<FileHandle>,
        range: Range<u64>,
    ) -> Result<u32, NodeError> {
        self.counters
            .origin_requests
            .fetch_add(1, Ordering::Relaxed);
        let mut stream = self.origin.read(file, range.clone()).await?;
        let want = range.end - range.start;
        let mut crc = 0u32;
        let mut written = 0u64;
        let mut buf: Vec<u8> = Vec::with_capacity(WRITE_BATCH);
        let short = |got| NodeError::ShortBody {
            what: file.uri.clone(),
            got,
            want,
        };
        while let Some(piece) = stream.next().await {
            let piece = piece?;
            let n = piece.len() as u64;
            self.counters.origin_bytes.fetch_add(n, Ordering::Relaxed);
            metrics::counter!("locus_origin_bytes_total").increment(n);
            if written + buf.len() as u64 + n > want {
                return Err(NodeError::Origin(locus_origin::OriginError::Protocol {
                    what: file.uri.clone(),
                    detail: format!("more than the {want} bytes asked for"),
                }));
            }
            crc = crc32c::crc32c_append(crc, &piece);
            buf.extend_from_slice(&piece);
            if buf.len() >= WRITE_BATCH {
                let data = std::mem::replace(&mut buf, Vec::with_capacity(WRITE_BATCH));
                let n = data.len() as u64;
                write(h, data, range.start + written).await?;
                written += n;
            }
        }
        let tail = buf.len() as u64;
        if tail > 0 {
            write(h, buf, range.start + written).await?;
            written += tail;
        }
        if written != want {
            return Err(short(written));
        }
        Ok(crc)
    }
}

async fn write(h: &Arc<FileHandle>, data: Vec<u8>, offset: u64) -> Result<(), NodeError> {
    let h = h.clone();
    tokio::task::spawn_blocking(move || h.write_at(&data, offset))
        .await
        .map_err(|e| NodeError::Internal(e.to_string()))?
        .map_err(NodeError::from)
}

enum Hasher {
    Sha256(sha2::Sha256),
    Sha1(sha1::Sha1),
    None,
}

/// Reads the whole file back, checking each chunk's CRC and the file's digest.
fn verify(h: &FileHandle, digest: Option<&Digest>) -> Result<Checked, NodeError> {
    let layout = h.layout();
    let mut hasher = match digest {
        Some(Digest::Sha256(_)) => Hasher::Sha256(sha2::Sha256::new()),
        Some(Digest::GitBlobSha1(_)) => {
            let mut s = sha1::Sha1::new();
            s.update(format!("blob {}\0", layout.size).as_bytes());
            Hasher::Sha1(s)
        }
        None => Hasher::None,
    };
    let mut buf = Vec::new();
    for idx in 0..layout.count() {
        if !h.read_chunk_verified(idx, &mut buf)? {
            return Ok(Checked::ChunkDropped);
        }
        match &mut hasher {
            Hasher::Sha256(s) => s.update(&buf),
            Hasher::Sha1(s) => s.update(&buf),
            Hasher::None => {}
        }
    }
    let got = match hasher {
        Hasher::Sha256(s) => hex::encode(s.finalize()),
        Hasher::Sha1(s) => hex::encode(s.finalize()),
        Hasher::None => return Ok(Checked::Good),
    };
    Ok(match digest {
        Some(d) if d.hex().eq_ignore_ascii_case(&got) => Checked::Good,
        _ => Checked::Mismatch,
    })
}
