//! The production backend: the node's local API, over its Unix socket (`locus mount`) or in
//! the daemon's own process (`locus daemon --mount`: the same service, called directly).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use locus_grpc::v1 as pb;
use locus_grpc::v1::local_server::Local;
use locus_grpc::LocalClient;

use crate::{Backend, ChunkInfo, Entry, FsError, Listing};

/// The calls of the local API the file system makes.
#[tonic::async_trait]
pub trait LocalApi: Send + Sync + 'static {
    /// `ListPages`, its pages joined into one answer.
    async fn list(&self, req: pb::ListRequest) -> Result<pb::ListResponse, tonic::Status>;
    /// `Chunks`.
    async fn chunks(&self, req: pb::ChunksRequest) -> Result<pb::ChunksResponse, tonic::Status>;
    /// `Cached`.
    async fn cached(&self) -> Result<pb::CachedResponse, tonic::Status>;
}

#[tonic::async_trait]
impl LocalApi for LocalClient {
    async fn list(&self, req: pb::ListRequest) -> Result<pb::ListResponse, tonic::Status> {
        let pages = LocalClient::list_pages(&mut self.clone(), req).await?;
        locus_grpc::join_pages(pages.into_inner()).await
    }
    async fn chunks(&self, req: pb::ChunksRequest) -> Result<pb::ChunksResponse, tonic::Status> {
        LocalClient::chunks(&mut self.clone(), req)
            .await
            .map(|r| r.into_inner())
    }
    async fn cached(&self) -> Result<pb::CachedResponse, tonic::Status> {
        LocalClient::cached(&mut self.clone(), pb::CachedRequest {})
            .await
            .map(|r| r.into_inner())
    }
}

/// The local API's service itself, called in its own process: no socket, no encoding. Each
/// call is a task of its own, as a request to the server would be: a handler that panics
/// fails that call (EIO), not the file system's thread.
pub struct InProcess<S>(pub Arc<S>);

/// Runs one call as a task, so that a handler's panic fails that call, not a FUSE thread.
async fn in_task<T: Send + 'static>(
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>> + Send + 'static,
) -> Result<T, tonic::Status> {
    match tokio::spawn(call).await {
        Ok(r) => r.map(|r| r.into_inner()),
        Err(e) => Err(tonic::Status::internal(format!(
            "the local API failed: {e}"
        ))),
    }
}

#[tonic::async_trait]
impl<S: Local> LocalApi for InProcess<S> {
    async fn list(&self, req: pb::ListRequest) -> Result<pb::ListResponse, tonic::Status> {
        let s = self.0.clone();
        let pages =
            in_task(async move { Local::list_pages(&*s, tonic::Request::new(req)).await }).await?;
        locus_grpc::join_pages(pages).await
    }
    async fn chunks(&self, req: pb::ChunksRequest) -> Result<pb::ChunksResponse, tonic::Status> {
        let s = self.0.clone();
        in_task(async move { Local::chunks(&*s, tonic::Request::new(req)).await }).await
    }
    async fn cached(&self) -> Result<pb::CachedResponse, tonic::Status> {
        let s = self.0.clone();
        in_task(async move { Local::cached(&*s, tonic::Request::new(pb::CachedRequest {})).await })
            .await
    }
}

/// Talks to the daemon; FUSE worker threads block on a runtime: one of its own (over the
/// socket), or the daemon's (in process).
pub struct DaemonBackend<A: LocalApi = LocalClient> {
    /// The runtime when it is this backend's own (kept alive here).
    _own: Option<tokio::runtime::Runtime>,
    rt: tokio::runtime::Handle,
    api: Arc<A>,
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
        Ok(DaemonBackend {
            rt: rt.handle().clone(),
            _own: Some(rt),
            api: Arc::new(client),
        })
    }
}

impl<S: Local> DaemonBackend<InProcess<S>> {
    /// Calls `service` in this process, on the runtime `rt` it runs on.
    pub fn in_process(service: Arc<S>, rt: tokio::runtime::Handle) -> Self {
        DaemonBackend {
            _own: None,
            rt,
            api: Arc::new(InProcess(service)),
        }
    }
}

/// How long a request waits for a daemon that stopped answering (a restart, an upgrade)
/// before it fails: meanwhile the reader's system call just takes longer.
pub const DAEMON_RESTART_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

impl<A: LocalApi> DaemonBackend<A> {
    /// Runs the call `f` makes, again every 200 ms while the daemon does not answer (it is
    /// restarting: the channel connects to the new one), for up to [`DAEMON_RESTART_WAIT`].
    /// Calls cut by the daemon's end are asked again too: listings and chunk requests may be.
    fn call<T, F, Fut>(&self, f: F) -> Result<T, tonic::Status>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let deadline = std::time::Instant::now() + DAEMON_RESTART_WAIT;
        let mut waited = false;
        loop {
            match self.rt.block_on(f()) {
                // Only the connection's failures, never an answer of the daemon's (an origin
                // that is down must fail the read now, not in two minutes).
                Err(s)
                    if locus_grpc::transport_failure(&s)
                        && std::time::Instant::now() < deadline =>
                {
                    if !waited {
                        tracing::warn!(error = %s.message(), "the daemon stopped answering; waiting for it");
                        waited = true;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                r => {
                    if waited && r.is_ok() {
                        tracing::info!("the daemon answers again");
                    }
                    return r;
                }
            }
        }
    }
}

impl<A: LocalApi> Backend for DaemonBackend<A> {
    fn list(&self, uri: &str) -> Result<Listing, FsError> {
        self.list_within(uri, std::time::Duration::ZERO)
    }

    fn list_within(&self, uri: &str, max_age: std::time::Duration) -> Result<Listing, FsError> {
        let r = self
            .call(|| {
                self.api.list(pb::ListRequest {
                    uri: uri.to_string(),
                    cluster: false,
                    one_level: true,
                    // Zero: the daemon's metadata TTL.
                    max_age_ms: max_age.as_millis() as u64,
                })
            })
            .map_err(status_error)?;
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
        let base = uri.trim_end_matches('/');
        let folders = r
            .folders
            .into_iter()
            .map(|name| {
                let uri = format!("{base}/{name}");
                (name, uri)
            })
            .collect();
        Ok(Listing {
            entries,
            folders,
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
    ) -> Result<(ChunkInfo, bool), FsError> {
        let r = self
            .call(|| {
                self.api.chunks(pb::ChunksRequest {
                    uri: uri.to_string(),
                    first,
                    count,
                    recheck,
                    key: key.to_string(),
                })
            })
            .map_err(status_error)?;
        let info = ChunkInfo {
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
        };
        Ok((info, r.hit))
    }

    fn cached(&self) -> Result<Vec<String>, FsError> {
        self.call(|| self.api.cached())
            .map(|r| r.namespaces)
            .map_err(status_error)
    }

    fn prefetch(&self, uri: &str, key: &str, first: u32, count: u32) {
        let api = self.api.clone();
        let req = pb::ChunksRequest {
            uri: uri.to_string(),
            first,
            count,
            recheck: false,
            key: key.to_string(),
        };
        let uri = uri.to_string();
        self.rt.spawn(async move {
            if let Err(e) = api.chunks(req).await {
                tracing::warn!(uri, error = %e.message(), "read-ahead failed");
            }
        });
    }
}
