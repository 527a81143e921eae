//! Daemon settings from flags, `LOCUS_*` variables and a TOML file, in that order of precedence.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use crate::Failure;

pub use locus_grpc::DEFAULT_SOCKET;

#[derive(Args, Default)]
pub struct DaemonArgs {
    /// Where cached data and the index live (created if missing) [default: /var/cache/locus].
    #[arg(long, env = "LOCUS_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Capacity, e.g. 50GiB; least recently used unpinned files are evicted above it [default: 10GiB].
    #[arg(long, env = "LOCUS_CACHE_SIZE")]
    cache_size: Option<String>,
    /// Peer gRPC address, e.g. 127.0.0.1:7070.
    #[arg(long, env = "LOCUS_LISTEN")]
    listen: Option<SocketAddr>,
    /// The address peers dial (defaults to --listen).
    #[arg(long, env = "LOCUS_ADVERTISE")]
    advertise: Option<String>,
    /// Static membership: ADDR,ADDR,…
    #[arg(long, env = "LOCUS_PEERS", value_delimiter = ',')]
    peers: Option<Vec<String>>,
    /// Dynamic membership: dns://NAME:PORT or etcd://HOST:PORT[,HOST:PORT]/PREFIX.
    #[arg(long, env = "LOCUS_MEMBERSHIP")]
    membership: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (and /healthz).
    #[arg(long, env = "LOCUS_METRICS")]
    metrics: Option<SocketAddr>,
    /// Chunk size of files entering the cache [default: 8MiB].
    #[arg(long, env = "LOCUS_CHUNK_SIZE")]
    chunk_size: Option<String>,
    /// Also serve the read-only namespace view at DIR.
    #[arg(long, env = "LOCUS_MOUNT")]
    mount: Option<PathBuf>,
    /// Origin connections at once [default: 16].
    #[arg(long, env = "LOCUS_CONCURRENCY")]
    concurrency: Option<usize>,
    /// Seconds a branch or tag stays resolved to one commit [default: 60].
    #[arg(long, env = "LOCUS_METADATA_TTL")]
    metadata_ttl: Option<u64>,
}

/// The `--config` file: the same keys as the flags.
#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FileConfig {
    pub socket: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    cache_size: Option<String>,
    listen: Option<SocketAddr>,
    advertise: Option<String>,
    peers: Option<Vec<String>>,
    membership: Option<String>,
    metrics: Option<SocketAddr>,
    chunk_size: Option<String>,
    mount: Option<PathBuf>,
    concurrency: Option<usize>,
    metadata_ttl: Option<u64>,
}

impl FileConfig {
    pub fn load(path: Option<&Path>) -> Result<FileConfig, Failure> {
        let Some(p) = path else {
            return Ok(FileConfig::default());
        };
        let text = std::fs::read_to_string(p)
            .map_err(|e| Failure::usage(format!("--config {}: {e}", p.display())))?;
        toml::from_str(&text)
            .map_err(|e| Failure::usage(format!("--config {}: {}", p.display(), e.message())))
    }
}

/// Everything the daemon needs, merged and checked.
pub struct DaemonConfig {
    pub socket: PathBuf,
    pub cache_dir: PathBuf,
    pub cache_size: u64,
    pub listen: Option<SocketAddr>,
    pub advertise: Option<String>,
    pub peers: Vec<String>,
    pub membership: Option<String>,
    pub metrics: Option<SocketAddr>,
    pub chunk_size: u64,
    pub concurrency: usize,
    pub metadata_ttl: Duration,
    pub mount: Option<PathBuf>,
}

fn size_flag(name: &str, v: Option<String>, default: u64) -> Result<u64, Failure> {
    match v {
        None => Ok(default),
        Some(s) => locus_core::parse_size(&s).map_err(|e| Failure::usage(format!("--{name}: {e}"))),
    }
}

impl DaemonConfig {
    pub fn merge(a: DaemonArgs, f: FileConfig, socket: PathBuf) -> Result<DaemonConfig, Failure> {
        let chunk_size = size_flag(
            "chunk-size",
            a.chunk_size.or(f.chunk_size),
            locus_node::DEFAULT_CHUNK_SIZE,
        )?;
        if !(64 << 10..=256 << 20).contains(&chunk_size) {
            return Err(Failure::usage(
                "--chunk-size must be between 64KiB and 256MiB",
            ));
        }
        let membership = a.membership.or(f.membership);
        if let Some(m) = &membership {
            if !(m.starts_with("dns://") || m.starts_with("etcd://")) {
                return Err(Failure::usage(format!(
                    "--membership {m:?}: expected dns://NAME:PORT or etcd://HOST:PORT[,HOST:PORT]/PREFIX"
                )));
            }
        }
        let concurrency = a.concurrency.or(f.concurrency).unwrap_or(16);
        if concurrency == 0 || concurrency > 1024 {
            return Err(Failure::usage("--concurrency must be between 1 and 1024"));
        }
        Ok(DaemonConfig {
            socket,
            cache_dir: a
                .cache_dir
                .or(f.cache_dir)
                .unwrap_or_else(|| PathBuf::from("/var/cache/locus")),
            cache_size: size_flag("cache-size", a.cache_size.or(f.cache_size), 10 << 30)?,
            listen: a.listen.or(f.listen),
            advertise: a.advertise.or(f.advertise),
            peers: a.peers.or(f.peers).unwrap_or_default(),
            membership,
            metrics: a.metrics.or(f.metrics),
            chunk_size,
            concurrency,
            metadata_ttl: Duration::from_secs(a.metadata_ttl.or(f.metadata_ttl).unwrap_or(60)),
            mount: a.mount.or(f.mount),
        })
    }
}
