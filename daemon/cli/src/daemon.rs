//! `locus daemon`: wires the store, the origin and the node to the local API and the metrics
//! endpoint, logs `ready`, and stops cleanly on SIGTERM/SIGINT.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use locus_cluster::{Cluster, ClusterConfig, Membership, MembershipOptions};
use locus_grpc::v1::local_server::LocalServer;
use locus_grpc::v1::peer_server::PeerServer;
use locus_node::peer::server::{check_peer, PeerService};
use locus_node::peer::{GrpcPeers, PeerTls, PeerTransport};
use locus_node::{metrics_defs, service::LocalService, Node, NodeConfig};
use locus_origin::{
    FileOrigin, HfConfig, HfOrigin, HttpOrigin, Origin, Origins, RetryPolicy, S3Config, S3Origin,
};
use locus_store::{Access, Store};
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::config::DaemonConfig;

/// Whole-file spools take their room from the cache's capacity.
struct SpoolInCache(Arc<Store>);

impl locus_origin::SpoolSpace for SpoolInCache {
    fn reserve(&self, bytes: u64) -> Result<Box<dyn std::any::Any + Send + Sync>, String> {
        self.0
            .reserve_space(bytes)
            .map(|g| Box::new(g) as Box<dyn std::any::Any + Send + Sync>)
            .map_err(|e| e.to_string())
    }
}

/// Longest wait for requests in flight at shutdown.
const DRAIN: Duration = Duration::from_secs(20);

pub async fn run(cfg: DaemonConfig) -> anyhow::Result<()> {
    crate::telemetry::init_logging();
    let prom = crate::telemetry::install_metrics().context("installing the metrics recorder")?;
    metrics::gauge!(
        metrics_defs::BUILD_INFO,
        "version" => env!("CARGO_PKG_VERSION"),
        "commit" => env!("LOCUS_COMMIT"),
    )
    .set(1.0);
    metrics_defs::describe();
    if cfg.mount.is_some() {
        locus_fuse::metrics::describe();
    }

    let access = match cfg.data_group {
        Some(g) => Access::Group(g.as_raw()),
        None => Access::Owner,
    };
    let store = Store::open_with(&cfg.cache_dir, cfg.cache_size, access)
        .with_context(|| format!("opening the cache at {}", cfg.cache_dir.display()))?;
    for note in locus_store::fs_check::notes(&cfg.cache_dir) {
        tracing::warn!(dir = %cfg.cache_dir.display(), "{note}");
    }
    let hf = HfConfig {
        redirects: locus_origin::http::AddressPolicy {
            allow: cfg.http_allow_private.clone(),
        },
        ..HfConfig::from_env()
    };
    tracing::info!(
        endpoint = hf.endpoint,
        token = hf.token.is_some(),
        "Hugging Face origin"
    );
    let s3 = S3Config {
        endpoint: cfg.s3_endpoint.clone(),
        virtual_hosted: cfg.s3_virtual_hosted,
        ..S3Config::default()
    };
    tracing::info!(
        endpoint = s3.endpoint.as_deref().unwrap_or("(AWS_ENDPOINT_URL or AWS)"),
        file_roots = ?cfg.file_roots,
        "S3, HTTP and file origins"
    );
    let file = match cfg.file_roots.is_empty() {
        true => None,
        false => Some(Arc::new(FileOrigin::new(&cfg.file_roots)?) as Arc<dyn Origin>),
    };
    let hub = Arc::new(HfOrigin::new(hf)?);
    let origin = Arc::new(Origins {
        hf: Some(hub.clone()),
        s3: Some(Arc::new(S3Origin::new(s3))),
        http: Some(Arc::new(HttpOrigin::new(
            cfg.cache_dir.join("http-spool"),
            RetryPolicy::default(),
            Some(Arc::new(SpoolInCache(store.clone()))),
            locus_origin::http::AddressPolicy {
                allow: cfg.http_allow_private.clone(),
            },
        )?)),
        file,
    });
    // Bound before anything else starts, so that a taken port fails fast.
    let peer_listener = match cfg.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--listen {addr}: cannot listen"))?,
        ),
        None => None,
    };
    let advertise = match (&cfg.advertise, &peer_listener) {
        (Some(a), _) => a.clone(),
        (None, Some(l)) => l.local_addr()?.to_string(),
        (None, None) => "local".into(),
    };
    let cluster = Cluster::new(ClusterConfig {
        me: advertise.clone(),
        epsilon: cfg.load_epsilon,
        replicas: cfg.replicas,
    });
    let grpc_peers = match &peer_listener {
        Some(_) => Some(GrpcPeers::new(&cfg.security).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let transport = grpc_peers.clone().map(|p| p as Arc<dyn PeerTransport>);
    let node = Node::with_cluster(
        origin,
        store.clone(),
        NodeConfig {
            chunk_size: cfg.chunk_size,
            concurrency: cfg.concurrency,
            metadata_ttl: cfg.metadata_ttl,
            accept_peer_pins: cfg.accept_peer_pins,
            ..NodeConfig::default()
        },
        cluster.clone(),
        transport,
    );

    let listener = bind_socket("--socket", &cfg.socket, cfg.socket_group, 0o660).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait_stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };

    let mut peer_server = match peer_listener {
        Some(l) => {
            let svc = tonic::service::interceptor::InterceptedService::new(
                PeerServer::new(PeerService::new(node.clone())).max_decoding_message_size(1 << 20),
                check_peer(
                    cfg.security.token.clone(),
                    cfg.security.tls.as_ref().map(|t| t.server_name.clone()),
                ),
            );
            if let Some(tls) = &cfg.security.tls {
                // Checked here, so that bad files stop the start with one line.
                peer_server_builder()
                    .tls_config(server_tls(tls))
                    .context("peer TLS settings")?;
            }
            let serve = match (&cfg.security.tls, &grpc_peers) {
                (Some(tls), Some(peers)) => tokio::spawn(serve_tls_peers(
                    l,
                    move |mut b| b.add_service(svc.clone()),
                    tls.clone(),
                    peers.clone(),
                    cfg.peer_tls_reload,
                    stop_rx.clone(),
                )),
                _ => {
                    type Incoming = std::pin::Pin<
                        Box<
                            dyn tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>>
                                + Send,
                        >,
                    >;
                    let incoming: Incoming = if cfg.security.wire_enabled() {
                        // Chunk bodies on the plain-TCP wire, everything else gRPC, on one port.
                        Box::pin(locus_node::peer::wire::split(
                            l,
                            node.clone(),
                            cfg.security.token.clone(),
                            stop_rx.clone(),
                        ))
                    } else {
                        Box::pin(tokio_stream::wrappers::TcpListenerStream::new(l))
                    };
                    tokio::spawn(
                        peer_server_builder()
                            .add_service(svc)
                            .serve_with_incoming_shutdown(incoming, wait_stop(stop_rx.clone())),
                    )
                }
            };
            let membership = tokio::spawn(locus_cluster::membership::run(
                cfg.membership
                    .clone()
                    .unwrap_or(Membership::Static(Vec::new())),
                cluster.clone(),
                MembershipOptions {
                    lease_ttl: cfg.membership_ttl,
                    etcd: cfg.etcd.clone(),
                    ..MembershipOptions::default()
                },
                stop_rx.clone(),
            ));
            node.spawn_health_checks();
            Some((serve, membership))
        }
        None => None,
    };

    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                LocalServer::new(LocalService::new(node.clone(), crate::VERSION))
                    .max_decoding_message_size(16 << 20),
            )
            .serve_with_incoming_shutdown(
                UnixListenerStream::new(listener),
                wait_stop(stop_rx.clone()),
            ),
    );
    let metrics_addr = match cfg.metrics {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--metrics {addr}: cannot listen"))?;
            let local = l.local_addr()?;
            let counted = node.clone();
            tokio::spawn(crate::telemetry::serve_metrics(
                l,
                prom,
                move || counted.publish_metrics(),
                wait_stop(stop_rx.clone()),
            ));
            Some(local.to_string())
        }
        None => None,
    };
    let hub_gateway = match cfg.hub_gateway {
        Some(addr) => Some(
            start_gateway(
                "--hub-gateway",
                addr,
                locus_gateway::HubGateway::new(
                    node.clone(),
                    locus_gateway::AccessCache::new(hub.clone(), cfg.metadata_ttl),
                )
                .router(),
                wait_stop(stop_rx.clone()),
            )
            .await?,
        ),
        None => None,
    };
    let s3_gateway = match &cfg.s3_gateway {
        Some((addr, buckets, auth)) => Some(
            start_gateway(
                "--s3-gateway",
                *addr,
                locus_gateway::S3Gateway::new(node.clone(), buckets.clone(), auth.clone()).router(),
                wait_stop(stop_rx.clone()),
            )
            .await?,
        ),
        None => None,
    };
    let csi = match &cfg.csi {
        Some((path, node_id)) => {
            let plugin = locus_csi::Plugin::start(
                node.clone(),
                node_id.clone(),
                crate::VERSION,
                match &cfg.csi_mounter {
                    Some(m) => Arc::new(crate::csi::RemoteMounter { socket: m.clone() })
                        as Arc<dyn locus_csi::Mounter>,
                    None => Arc::new(crate::csi::ProcessMounter {
                        exe: std::env::current_exe()
                            .context("finding this binary for CSI mounts")?,
                        socket: cfg.socket.clone(),
                        logs: cfg.cache_dir.join("csi-logs"),
                    }),
                },
                cfg.cache_dir.join("csi-volumes.json"),
            )
            .await
            .map_err(anyhow::Error::msg)?;
            // Bound as the local socket is (0660, a live plugin there is not taken over):
            // kubelet and the registrar run as root.
            let listener = bind_socket("--csi-socket", path, None, 0o660).await?;
            plugin.serve(listener, wait_stop(stop_rx.clone()));
            Some(path.display().to_string())
        }
        None => None,
    };
    let namespace = match &cfg.mount {
        Some(dir) => Some(mount_namespace(dir, &cfg, node.clone()).await?),
        None => None,
    };
    tracing::info!(
        socket = %cfg.socket.display(),
        mount = cfg.mount.as_ref().map(|m| m.display().to_string()).unwrap_or_else(|| "off".into()),
        metrics = metrics_addr.as_deref().unwrap_or("off"),
        hub_gateway = hub_gateway.as_deref().unwrap_or("off"),
        s3_gateway = s3_gateway.as_deref().unwrap_or("off"),
        csi = csi.as_deref().unwrap_or("off"),
        cache_dir = %cfg.cache_dir.display(),
        capacity = cfg.cache_size,
        chunk_size = cfg.chunk_size,
        peer = cfg.listen.map(|l| l.to_string()).unwrap_or_else(|| "off".into()),
        advertise,
        membership = ?cfg.membership,
        peer_auth = match (&cfg.security.token, &cfg.security.tls) {
            (_, Some(_)) => "mtls",
            (Some(_), None) => "token",
            (None, None) => "none",
        },
        "ready"
    );

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // A peer server that ends on its own (it should not) ends the daemon: a node that no
    // longer answers its peers must not stay in the membership as if it did.
    let peer_server_ended = async {
        match peer_server.as_mut() {
            Some((server, _)) => match server.await {
                Ok(Ok(())) => "ended".to_string(),
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            },
            None => std::future::pending().await,
        }
    };
    let mut failure = None;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        why = peer_server_ended => {
            tracing::error!(error = why, "the peer server stopped; shutting down");
            failure = Some(why);
        }
    }
    if let Some(session) = namespace {
        let _ = tokio::task::spawn_blocking(move || session.umount_and_join()).await;
    }
    let _ = stop_tx.send(true);
    if let Some((server, membership)) = peer_server {
        // Leave the membership first (an etcd member revokes its lease), then drain.
        let _ = tokio::time::timeout(Duration::from_secs(3), membership).await;
        if failure.is_none() {
            let _ = tokio::time::timeout(DRAIN, server).await;
        }
    }
    match tokio::time::timeout(DRAIN, grpc).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "local API ended with an error"),
        Err(_) => tracing::warn!("requests still running after {DRAIN:?}; stopping anyway"),
        _ => {}
    }
    let _ = std::fs::remove_file(&cfg.socket);
    tokio::task::spawn_blocking(move || store.flush()).await?;
    tracing::info!("stopped");
    match failure {
        Some(why) => bail!("the peer server stopped: {why}"),
        None => Ok(()),
    }
}

/// Binds `addr` for a gateway (named by its `flag`) and serves `router` there until `stop`;
/// returns the address bound. A gateway that stops on its own says so in the log.
async fn start_gateway(
    flag: &'static str,
    addr: std::net::SocketAddr,
    router: axum::Router,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<String> {
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("{flag} {addr}: cannot listen"))?;
    let local = l.local_addr()?.to_string();
    locus_gateway::describe();
    tokio::spawn(async move {
        if let Err(e) = locus_gateway::serve(l, router, stop).await {
            tracing::error!(error = %e, flag, "a gateway stopped");
        }
    });
    Ok(local)
}

/// `locus mounter`: serves mounts for a daemon's CSI plugin on `listen` until SIGTERM/SIGINT;
/// its mounts stay (they are the pods' volumes).
pub async fn run_mounter(
    listen: &std::path::Path,
    daemon_socket: &std::path::Path,
    targets_under: std::path::PathBuf,
    log_dir: std::path::PathBuf,
) -> anyhow::Result<()> {
    crate::telemetry::init_logging();
    if !targets_under.is_absolute() {
        bail!(
            "--targets-under {}: not an absolute path",
            targets_under.display()
        );
    }
    // Root only: whoever may ask mounts any URI the daemon reads.
    let listener = bind_socket("--listen", listen, None, 0o600).await?;
    let mounter = Arc::new(crate::csi::ProcessMounter {
        exe: std::env::current_exe().context("finding this binary")?,
        socket: daemon_socket.to_path_buf(),
        logs: log_dir,
    });
    tracing::info!(listen = %listen.display(), targets_under = %targets_under.display(), "ready");
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = crate::csi::serve_mounter(listener, mounter, targets_under) => {}
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let _ = std::fs::remove_file(listen);
    Ok(())
}

/// The peer server's transport settings (TLS aside).
fn peer_server_builder() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(32 << 20))
        .max_frame_size(Some(locus_node::peer::PEER_FRAME))
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
}

fn server_tls(tls: &PeerTls) -> ServerTlsConfig {
    ServerTlsConfig::new()
        .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem))
        .client_ca_root(Certificate::from_pem(&tls.ca_pem))
}

/// Serves peers over mutual TLS, reading the certificate files again every `every`: when they
/// change (a renewed certificate, a new CA), a server with the new ones takes the new
/// connections, the previous one finishes its requests and closes, and this node's own
/// connections to peers are made again with them. No restart, no request cut short.
async fn serve_tls_peers(
    listener: tokio::net::TcpListener,
    routes: impl Fn(tonic::transport::Server) -> tonic::transport::server::Router + Send + 'static,
    mut tls: PeerTls,
    peers: Arc<GrpcPeers>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), tonic::transport::Error> {
    use tokio_stream::StreamExt;
    let mut incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    let mut servers = Vec::new();
    loop {
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<tokio::net::TcpStream>>(16);
        let (quit_tx, quit_rx) = tokio::sync::oneshot::channel::<()>();
        let server = routes(peer_server_builder().tls_config(server_tls(&tls))?)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::ReceiverStream::new(rx),
                async move {
                    let _ = quit_rx.await;
                },
            );
        servers.push((tokio::spawn(server), Some(quit_tx)));
        let stopping = loop {
            tokio::select! {
                conn = incoming.next() => match conn {
                    Some(c) => {
                        let _ = tx.send(c).await;
                    }
                    None => break true,
                },
                _ = tick.tick() => match tls.reread() {
                    None => {}
                    Some(Ok(new)) if peer_server_builder().tls_config(server_tls(&new)).is_err() => {
                        // A half-written renewal, or a wrong file: the next read may be whole.
                        tracing::warn!("peer TLS files changed but cannot be used; keeping the ones in use")
                    }
                    Some(Ok(new)) => {
                        peers.set_tls(&new);
                        tls = new;
                        metrics::counter!(metrics_defs::PEER_TLS_RELOADS).increment(1);
                        tracing::info!("peer TLS files changed: new connections use them");
                        break false;
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "peer TLS files cannot be read; keeping the ones in use")
                    }
                },
                _ = async { let _ = stop.wait_for(|v| *v).await; } => break true,
            }
        };
        // The servers before the newest stop taking connections and close once their
        // requests end; all of them when the daemon stops.
        let keep = usize::from(!stopping);
        let n = servers.len();
        for (_, quit) in servers.iter_mut().take(n - keep) {
            if let Some(q) = quit.take() {
                let _ = q.send(());
            }
        }
        if stopping {
            for (h, _) in servers {
                if let Ok(Err(e)) = h.await {
                    return Err(e);
                }
            }
            return Ok(());
        }
        servers.retain(|(h, _)| !h.is_finished());
    }
}

/// Binds the local API socket (or another of ours: `flag` names it in errors), replacing a
/// stale socket file but never a live daemon's. The socket has `mode` (0660 for the local
/// API: its group `group`, else the daemon's) from the moment anyone can connect, in a folder
/// made 0750 if it is made here: the local API warms, pins, evicts and reads anything, so only
/// its owner and group may use it.
async fn bind_socket(
    flag: &str,
    path: &std::path::Path,
    group: Option<nix::unistd::Gid>,
    mode: u32,
) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    if !parent.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(parent)
            .with_context(|| format!("{flag}: cannot create {}", parent.display()))?;
        if let Some(g) = group {
            nix::unistd::chown(parent, None, Some(g))
                .with_context(|| format!("--socket-group: cannot chown {}", parent.display()))?;
        }
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            bail!(
                "{flag} {}: another locus daemon is already serving it",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("{flag}: cannot remove stale {}", path.display()))?;
    }
    // Bound in a private folder, given its owner and mode there, then moved into place: no
    // one can connect while it still has the umask's mode.
    let private = parent.join(format!(".locus-socket-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .with_context(|| format!("{flag}: cannot create {}", private.display()))?;
    let staged = private.join("s");
    let bound = (|| -> anyhow::Result<UnixListener> {
        let listener = UnixListener::bind(&staged)
            .with_context(|| format!("{flag} {}: cannot listen", path.display()))?;
        if let Some(g) = group {
            nix::unistd::chown(&staged, None, Some(g))
                .with_context(|| format!("--socket-group: cannot chown {}", path.display()))?;
        }
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("{flag} {}: cannot set its mode", path.display()))?;
        std::fs::rename(&staged, path)
            .with_context(|| format!("{flag} {}: cannot move it into place", path.display()))?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    bound
}

/// Serves the namespace view (`DIR/hf/ORG/NAME[@REV]/…`) from this daemon, through its own
/// local API called in process. A mount left behind by a daemon that died is cleared first.
async fn mount_namespace(
    dir: &std::path::Path,
    cfg: &DaemonConfig,
    node: Arc<Node>,
) -> anyhow::Result<fuser::BackgroundSession> {
    let (ttl, max_inodes, allow_other) = (
        cfg.metadata_ttl,
        cfg.mount_max_inodes,
        cfg.mount_allow_other,
    );
    if crate::mount::is_mounted(dir) {
        tracing::warn!(dir = %dir.display(), "clearing a stale mount");
        let _ = nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("--mount {}", dir.display()))?;
    let dir = dir.to_path_buf();
    let service = Arc::new(LocalService::new(node, crate::VERSION));
    let rt = tokio::runtime::Handle::current();
    // The file system's threads block on this runtime: mount from a plain thread, outside
    // its context.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send((move || -> anyhow::Result<fuser::BackgroundSession> {
            let backend = Arc::new(locus_fuse::daemon::DaemonBackend::in_process(service, rt));
            let fs = locus_fuse::LocusFs::namespace(
                backend,
                locus_fuse::MountOptions {
                    ttl,
                    max_inodes,
                    // Every repo and bucket shares it: no one kind of file settles it.
                    opens: locus_fuse::Opens::Always,
                    ..locus_fuse::MountOptions::default()
                },
            )?;
            let config = crate::mount::fuse_config(
                "locus".into(),
                allow_other,
                crate::mount::default_threads(),
            );
            let session = crate::mount::spawn_session(fs, &dir, &config).with_context(|| {
                format!(
                    "--mount {}: cannot mount (needs root and /dev/fuse)",
                    dir.display()
                )
            })?;
            crate::mount::raise_readahead(&dir);
            Ok(session)
        })());
    });
    rx.await?
}
