//! The production backend: the node's local API over its Unix socket.

use std::path::{Path, PathBuf};

use locus_grpc::v1 as pb;
use locus_grpc::LocalClient;

use crate::{Backend, ChunkInfo, Entry, FsError, Listing};

/// Talks to the daemon; FUSE worker threads block on a small runtime of its own.
pub struct DaemonBackend {
    rt: tokio::runtime::Runtime,
    client: LocalClient,
}

fn status_error(s: tonic::Status) -> FsError {
    let msg = locus_grpc::Refusal::message(&s);
    match locus_grpc::Refusal::of(&s) {
        locus_grpc::Refusal::NotFound => FsError::NotFound(msg),
        _ => FsError::Io(msg),
    }
}

impl DaemonBackend {
    /// Connects to the daemon at `socket`.
    pub fn connect(socket: &Path) -> Result<DaemonBackend, FsError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| FsError::Io(e.to_string()))?;
        let client = rt
            .block_on(locus_grpc::connect_local(socket))
            .map_err(|e| FsError::Io(e.0))?;
        Ok(DaemonBackend { rt, client })
    }
}

impl Backend for DaemonBackend {
    fn list(&self, uri: &str) -> Result<Listing, FsError> {
        let mut c = self.client.clone();
        let r = self
            .rt
            .block_on(c.list(pb::ListRequest {
                uri: uri.to_string(),
            }))
            .map_err(status_error)?
            .into_inner();
        let prefix = locus_core::LocusUri::parse(uri)
            .map(|u| {
                if u.path.is_empty() {
                    String::new()
                } else {
                    format!("{}/", u.path)
                }
            })
            .map_err(|e| FsError::Io(e.to_string()))?;
        let entries = r
            .entries
            .into_iter()
            .map(|e| Entry {
                path: e
                    .path
                    .strip_prefix(&prefix)
                    // A URI naming one file shows that file at the root.
                    .unwrap_or_else(|| e.path.rsplit('/').next().unwrap_or(&e.path))
                    .to_string(),
                cached: (!e.cache_path.is_empty()).then(|| ChunkInfo {
                    path: PathBuf::from(&e.cache_path),
                    size: e.size,
                    chunk_size: e.chunk_size.max(1),
                    crcs: e.chunk_crc32c.iter().map(|c| Some(*c)).collect(),
                    complete: true,
                }),
                uri: e.uri,
                key: e.key,
                size: e.size,
            })
            .collect();
        Ok(Listing {
            entries,
            ttl: (r.ttl_ms > 0).then(|| std::time::Duration::from_millis(r.ttl_ms)),
            age: std::time::Duration::from_millis(r.age_ms),
        })
    }

    fn chunks(
        &self,
        uri: &str,
        key: &str,
        first: u32,
        count: u32,
        recheck: bool,
    ) -> Result<ChunkInfo, FsError> {
        let mut c = self.client.clone();
        let r = self
            .rt
            .block_on(c.chunks(pb::ChunksRequest {
                uri: uri.to_string(),
                first,
                count,
                recheck,
                key: key.to_string(),
            }))
            .map_err(status_error)?
            .into_inner();
        Ok(ChunkInfo {
            path: PathBuf::from(r.path),
            size: r.size,
            chunk_size: r.chunk_size.max(1),
            crcs: r
                .chunk_crc32c
                .iter()
                .zip(&r.present)
                .map(|(c, p)| p.then_some(*c))
                .collect(),
            complete: r.complete,
        })
    }

    fn prefetch(&self, uri: &str, key: &str, first: u32, count: u32) {
        let mut c = self.client.clone();
        let req = pb::ChunksRequest {
            uri: uri.to_string(),
            first,
            count,
            recheck: false,
            key: key.to_string(),
        };
        let uri = uri.to_string();
        self.rt.spawn(async move {
            if let Err(e) = c.chunks(req).await {
                tracing::warn!(uri, error = %e.message(), "read-ahead failed");
            }
        });
    }
}
