//! Daemon settings from flags, `LOCUS_*` variables and a TOML file, in that order of precedence.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use locus_core::Secret;
use locus_node::peer::{PeerSecurity, PeerTls, TlsFiles};

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
    /// Inodes the namespace view keeps reachable; past it, the repos and buckets used least
    /// recently are dropped, and listed again when named again [default: 1000000].
    #[arg(long, env = "LOCUS_MOUNT_MAX_INODES")]
    mount_max_inodes: Option<usize>,
    /// Let other users (and other containers' processes) read the namespace view; without
    /// it only the daemon's user can. Pods that read the view need it.
    #[arg(long, env = "LOCUS_MOUNT_ALLOW_OTHER")]
    mount_allow_other: bool,
    /// Origin connections at once [default: 16].
    #[arg(long, env = "LOCUS_CONCURRENCY")]
    concurrency: Option<usize>,
    /// Seconds a branch or tag stays resolved to one commit [default: 60].
    #[arg(long, env = "LOCUS_METADATA_TTL")]
    metadata_ttl: Option<u64>,
    /// Owners that hold each chunk after a cluster-scope warm [default: 1].
    #[arg(long, env = "LOCUS_REPLICAS")]
    replicas: Option<usize>,
    /// Bounded-load slack ε: a member above (1+ε) times the mean load passes reads on [default: 0.25].
    #[arg(long, env = "LOCUS_LOAD_EPSILON")]
    load_epsilon: Option<f64>,
    /// Seconds an etcd lease lives: a node that dies leaves the ring after this [default: 10].
    #[arg(long, env = "LOCUS_MEMBERSHIP_TTL")]
    membership_ttl: Option<u64>,
    /// Seconds between reads of the --peer-tls-* files: a renewed certificate or CA is used
    /// from then on, without a restart [default: 30].
    #[arg(long, env = "LOCUS_PEER_TLS_RELOAD")]
    peer_tls_reload: Option<u64>,
    /// etcd membership over TLS: the PEM CA of the etcd servers' certificates.
    #[arg(long, env = "LOCUS_ETCD_CA")]
    etcd_ca: Option<PathBuf>,
    /// etcd client certificate (PEM, with --etcd-key), for etcd's --client-cert-auth.
    #[arg(long, env = "LOCUS_ETCD_CERT")]
    etcd_cert: Option<PathBuf>,
    /// The key of --etcd-cert (PEM).
    #[arg(long, env = "LOCUS_ETCD_KEY")]
    etcd_key: Option<PathBuf>,
    /// etcd user (with --etcd-password-file), for an etcd with authentication enabled.
    #[arg(long, env = "LOCUS_ETCD_USER")]
    etcd_user: Option<String>,
    /// File holding the password of --etcd-user.
    #[arg(long, env = "LOCUS_ETCD_PASSWORD_FILE")]
    etcd_password_file: Option<PathBuf>,
    /// Use an etcd that is not on this host without TLS and credentials. Whoever can write
    /// under the prefix then decides which addresses this node sends peer requests (and its
    /// peer token) to: only for networks no one else reaches.
    #[arg(long, env = "LOCUS_INSECURE_ETCD")]
    insecure_etcd: bool,
    /// File holding a token that peers must present to each other (same on every node).
    #[arg(long, env = "LOCUS_PEER_TOKEN_FILE")]
    peer_token_file: Option<PathBuf>,
    /// Mutual TLS between peers: this node's PEM certificate (with --peer-tls-key, --peer-tls-ca).
    #[arg(long, env = "LOCUS_PEER_TLS_CERT")]
    peer_tls_cert: Option<PathBuf>,
    /// This node's PEM private key.
    #[arg(long, env = "LOCUS_PEER_TLS_KEY")]
    peer_tls_key: Option<PathBuf>,
    /// The PEM CA that signs every member's certificate.
    #[arg(long, env = "LOCUS_PEER_TLS_CA")]
    peer_tls_ca: Option<PathBuf>,
    /// The name every member's certificate carries [default: locus-peer].
    #[arg(long, env = "LOCUS_PEER_TLS_NAME")]
    peer_tls_name: Option<String>,
    /// Send chunk bodies between peers over gRPC only, not the plain-TCP chunk wire (which
    /// is off anyway with mutual TLS).
    #[arg(long, env = "LOCUS_NO_PEER_WIRE")]
    no_peer_wire: bool,
    /// The group that may use the local API socket (a name or a GID): the socket is made
    /// 0660 owner root (or the daemon's user) and this group; none: the daemon's own group.
    #[arg(long, env = "LOCUS_SOCKET_GROUP")]
    socket_group: Option<String>,
    /// The group that may read cached data files directly (a name or a GID): the zero-copy
    /// loader and `locus mount` map them by path, so give it when they run as another user.
    /// The files become 0640 in a 0750 folder, both this group's; none: 0600 in a 0700
    /// folder, for the daemon's user only.
    #[arg(long, env = "LOCUS_DATA_GROUP")]
    data_group: Option<String>,
    /// Accept any peer that can reach a non-loopback --listen address, without a token or
    /// mutual TLS. Any such peer can have this node fetch with its credentials and read
    /// the bytes back: only for networks no one else reaches.
    #[arg(long, env = "LOCUS_INSECURE_PEERS")]
    insecure_peers: bool,
    /// Pin what a peer's all-nodes warm asks to pin (`locus warm --pin --scope all-nodes` on
    /// another node). Off: pinning is this node's decision alone, and peers cannot fill its
    /// disk with files that are never evicted.
    #[arg(long, env = "LOCUS_ACCEPT_PEER_PINS")]
    accept_peer_pins: bool,
    /// An S3-compatible endpoint, e.g. http://minio:9000 (default: AWS_ENDPOINT_URL, else AWS).
    #[arg(long, env = "LOCUS_S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    /// Address buckets as BUCKET.ENDPOINT instead of ENDPOINT/BUCKET (path style).
    #[arg(long, env = "LOCUS_S3_VIRTUAL_HOSTED")]
    s3_virtual_hosted: bool,
    /// Folders that file:// URIs may name (repeat or separate with commas); none: file:// is off.
    #[arg(long, env = "LOCUS_FILE_ROOT", value_delimiter = ',')]
    file_root: Vec<PathBuf>,
    /// Networks (CIDR, comma-separated) that http(s):// URIs may reach although they are
    /// loopback, private, CGNAT or non-unicast; none by default, as any peer may name a URL and
    /// get its bytes. Link-local addresses (cloud metadata services) are never reached.
    #[arg(long, env = "LOCUS_HTTP_ALLOW_PRIVATE", value_delimiter = ',')]
    http_allow_private: Vec<String>,
    /// Parse and check every setting (files included), print them, and exit without starting.
    #[arg(long)]
    pub check_config: bool,
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
    mount_max_inodes: Option<usize>,
    mount_allow_other: Option<bool>,
    concurrency: Option<usize>,
    metadata_ttl: Option<u64>,
    replicas: Option<usize>,
    load_epsilon: Option<f64>,
    membership_ttl: Option<u64>,
    peer_tls_reload: Option<u64>,
    etcd_ca: Option<PathBuf>,
    etcd_cert: Option<PathBuf>,
    etcd_key: Option<PathBuf>,
    etcd_user: Option<String>,
    etcd_password_file: Option<PathBuf>,
    insecure_etcd: Option<bool>,
    peer_token_file: Option<PathBuf>,
    peer_tls_cert: Option<PathBuf>,
    peer_tls_key: Option<PathBuf>,
    peer_tls_ca: Option<PathBuf>,
    peer_tls_name: Option<String>,
    no_peer_wire: Option<bool>,
    insecure_peers: Option<bool>,
    accept_peer_pins: Option<bool>,
    socket_group: Option<String>,
    data_group: Option<String>,
    s3_endpoint: Option<String>,
    s3_virtual_hosted: Option<bool>,
    file_root: Option<Vec<PathBuf>>,
    http_allow_private: Option<Vec<String>>,
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
    pub membership: Option<locus_cluster::Membership>,
    pub metrics: Option<SocketAddr>,
    pub chunk_size: u64,
    pub concurrency: usize,
    pub metadata_ttl: Duration,
    pub mount: Option<PathBuf>,
    pub mount_max_inodes: usize,
    /// Whether other users may read the namespace view.
    pub mount_allow_other: bool,
    pub replicas: usize,
    pub load_epsilon: f64,
    pub membership_ttl: Duration,
    /// TLS and credentials for etcd membership.
    pub etcd: locus_cluster::EtcdSecurity,
    /// How often the peer TLS files are read again.
    pub peer_tls_reload: Duration,
    pub security: PeerSecurity,
    pub s3_endpoint: Option<String>,
    pub s3_virtual_hosted: bool,
    pub file_roots: Vec<PathBuf>,
    pub http_allow_private: Vec<ipnet::IpNet>,
    /// Peers on a non-loopback address accepted without authentication.
    pub insecure_peers: bool,
    /// Pins asked for by peers' warms are taken.
    pub accept_peer_pins: bool,
    /// The group the local API socket belongs to.
    pub socket_group: Option<nix::unistd::Gid>,
    /// The group that may read the cache's data files.
    pub data_group: Option<nix::unistd::Gid>,
}

impl DaemonConfig {
    /// The settings in effect, one `key = value` per line (no secrets: only whether they are set).
    pub fn summary(&self) -> String {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "(none)".into());
        [
            format!("socket = {}", self.socket.display()),
            format!("cache-dir = {}", self.cache_dir.display()),
            format!("cache-size = {}", locus_core::format_size(self.cache_size)),
            format!("listen = {}", opt(self.listen.map(|a| a.to_string()))),
            format!("advertise = {}", opt(self.advertise.clone())),
            format!(
                "membership = {}",
                opt(self.membership.as_ref().map(|m| format!("{m:?}")))
            ),
            format!("metrics = {}", opt(self.metrics.map(|a| a.to_string()))),
            format!("chunk-size = {}", locus_core::format_size(self.chunk_size)),
            format!("concurrency = {}", self.concurrency),
            format!("metadata-ttl = {}s", self.metadata_ttl.as_secs()),
            format!(
                "mount = {}",
                opt(self.mount.as_ref().map(|p| p.display().to_string()))
            ),
            format!("mount-max-inodes = {}", self.mount_max_inodes),
            format!("mount-allow-other = {}", self.mount_allow_other),
            format!("replicas = {}", self.replicas),
            format!("load-epsilon = {}", self.load_epsilon),
            format!("membership-ttl = {}s", self.membership_ttl.as_secs()),
            format!(
                "etcd-auth = {}",
                match (&self.etcd.ca_pem, &self.etcd.identity, &self.etcd.user) {
                    (Some(_), Some(_), _) => "tls+cert",
                    (Some(_), None, Some(_)) => "tls+user",
                    (Some(_), None, None) => "tls",
                    (None, _, Some(_)) => "user",
                    (None, _, None) => "none",
                }
            ),
            format!("peer-token = {}", self.security.token.is_some()),
            format!("peer-tls = {}", self.security.tls.is_some()),
            format!("insecure-peers = {}", self.insecure_peers),
            format!("accept-peer-pins = {}", self.accept_peer_pins),
            format!(
                "socket-group = {}",
                opt(self.socket_group.map(|g| g.to_string()))
            ),
            format!(
                "data-group = {}",
                opt(self.data_group.map(|g| g.to_string()))
            ),
            format!("peer-wire = {}", self.security.wire_enabled()),
            format!("s3-endpoint = {}", opt(self.s3_endpoint.clone())),
            format!("s3-virtual-hosted = {}", self.s3_virtual_hosted),
            format!(
                "file-root = {}",
                self.file_roots
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            format!(
                "http-allow-private = {}",
                self.http_allow_private
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            "config ok".to_string(),
        ]
        .join("\n")
    }
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
        let peers = a.peers.or(f.peers).unwrap_or_default();
        let membership = match (membership, peers.is_empty()) {
            (Some(m), true) => Some(
                locus_cluster::Membership::parse(&m).map_err(|e| Failure::usage(e.to_string()))?,
            ),
            (Some(_), false) => {
                return Err(Failure::usage(
                    "use either --peers or --membership, not both",
                ))
            }
            (None, false) => Some(locus_cluster::Membership::Static(peers)),
            (None, true) => None,
        };
        let listen = a.listen.or(f.listen);
        let advertise = a.advertise.or(f.advertise);
        if membership.is_some() && listen.is_none() {
            return Err(Failure::usage(
                "--peers and --membership need --listen ADDR (the peer port)",
            ));
        }
        if let Some(l) = listen {
            if l.ip().is_unspecified() && advertise.is_none() {
                return Err(Failure::usage(format!(
                    "--listen {l} binds every address: say which one peers dial with --advertise HOST:PORT"
                )));
            }
        }
        let replicas = a.replicas.or(f.replicas).unwrap_or(1);
        if !(1..=16).contains(&replicas) {
            return Err(Failure::usage("--replicas must be between 1 and 16"));
        }
        let load_epsilon = a.load_epsilon.or(f.load_epsilon).unwrap_or(0.25);
        if !(0.0..=10.0).contains(&load_epsilon) {
            return Err(Failure::usage("--load-epsilon must be between 0 and 10"));
        }
        let membership_ttl = a.membership_ttl.or(f.membership_ttl).unwrap_or(10);
        if !(2..=3600).contains(&membership_ttl) {
            return Err(Failure::usage(
                "--membership-ttl must be between 2 and 3600 seconds",
            ));
        }
        let peer_tls_reload =
            Duration::from_secs(a.peer_tls_reload.or(f.peer_tls_reload).unwrap_or(30).max(1));
        let etcd = etcd_security(
            a.etcd_ca.or(f.etcd_ca),
            a.etcd_cert.or(f.etcd_cert),
            a.etcd_key.or(f.etcd_key),
            a.etcd_user.or(f.etcd_user),
            a.etcd_password_file.or(f.etcd_password_file),
        )?;
        if let Some(m @ locus_cluster::Membership::Etcd { .. }) = &membership {
            let insecure = a.insecure_etcd || f.insecure_etcd.unwrap_or(false);
            if !m.etcd_is_local() && !etcd.authenticated() && !insecure {
                return Err(Failure::usage(
                    "--membership etcd://…: an etcd others can reach decides whom this node sends peer requests and its peer token to; give --etcd-ca with --etcd-cert/--etcd-key or --etcd-user/--etcd-password-file, or --insecure-etcd if no one else can reach it",
                ));
            }
        }
        let mut security = peer_security(
            a.peer_token_file.or(f.peer_token_file),
            a.peer_tls_cert.or(f.peer_tls_cert),
            a.peer_tls_key.or(f.peer_tls_key),
            a.peer_tls_ca.or(f.peer_tls_ca),
            a.peer_tls_name.or(f.peer_tls_name),
        )?;
        security.wire = !(a.no_peer_wire || f.no_peer_wire.unwrap_or(false));
        let insecure = a.insecure_peers || f.insecure_peers.unwrap_or(false);
        if let Some(addr) = listen {
            let open = security.token.is_none() && security.tls.is_none();
            if open && !addr.ip().is_loopback() && !insecure {
                return Err(Failure::usage(format!(
                    "--listen {addr}: peers that can reach this address could have this node fetch with its credentials and read the bytes back; give --peer-token-file FILE (the same token on every node) or mutual TLS (--peer-tls-cert, --peer-tls-key, --peer-tls-ca), or --insecure-peers if no one else can reach it"
                )));
            }
        }
        let s3_endpoint = a.s3_endpoint.or(f.s3_endpoint);
        if let Some(e) = &s3_endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(Failure::usage(format!(
                    "--s3-endpoint {e:?}: expected http://HOST[:PORT] or https://HOST[:PORT]"
                )));
            }
        }
        let file_roots = if a.file_root.is_empty() {
            f.file_root.unwrap_or_default()
        } else {
            a.file_root
        };
        for r in &file_roots {
            if !r.is_absolute() || !r.is_dir() {
                return Err(Failure::usage(format!(
                    "--file-root {}: not an absolute path to a folder",
                    r.display()
                )));
            }
        }
        let allow = if a.http_allow_private.is_empty() {
            f.http_allow_private.unwrap_or_default()
        } else {
            a.http_allow_private
        };
        let http_allow_private = allow
            .iter()
            .map(|n| {
                let n = n.trim();
                // A bare address is a network of one.
                n.parse::<ipnet::IpNet>()
                    .or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        Failure::usage(format!(
                            "--http-allow-private {n:?}: expected a network such as 10.0.0.0/8 or fd00::/8"
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
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
            listen,
            advertise,
            membership,
            metrics: a.metrics.or(f.metrics),
            chunk_size,
            concurrency,
            metadata_ttl: Duration::from_secs(a.metadata_ttl.or(f.metadata_ttl).unwrap_or(60)),
            mount: a.mount.or(f.mount),
            mount_allow_other: a.mount_allow_other || f.mount_allow_other.unwrap_or(false),
            mount_max_inodes: a
                .mount_max_inodes
                .or(f.mount_max_inodes)
                .unwrap_or(1_000_000)
                .max(100),
            replicas,
            load_epsilon,
            membership_ttl: Duration::from_secs(membership_ttl),
            etcd,
            peer_tls_reload,
            security,
            s3_endpoint,
            s3_virtual_hosted: a.s3_virtual_hosted || f.s3_virtual_hosted.unwrap_or(false),
            file_roots,
            http_allow_private,
            insecure_peers: insecure,
            accept_peer_pins: a.accept_peer_pins || f.accept_peer_pins.unwrap_or(false),
            socket_group: match a.socket_group.or(f.socket_group) {
                Some(g) => Some(group("socket-group", &g)?),
                None => None,
            },
            data_group: match a.data_group.or(f.data_group) {
                Some(g) => Some(group("data-group", &g)?),
                None => None,
            },
        })
    }
}

/// A group by name or number.
fn group(flag: &str, g: &str) -> Result<nix::unistd::Gid, Failure> {
    if let Ok(n) = g.parse::<u32>() {
        return Ok(nix::unistd::Gid::from_raw(n));
    }
    match nix::unistd::Group::from_name(g) {
        Ok(Some(grp)) => Ok(grp.gid),
        _ => Err(Failure::usage(format!(
            "--{flag} {g:?}: no such group (give a name or a GID)"
        ))),
    }
}

fn read_flag(name: &str, p: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(p).map_err(|e| Failure::usage(format!("--{name} {}: {e}", p.display())))
}

/// etcd TLS and credentials from files (no secret in a flag or the process list).
fn etcd_security(
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    user: Option<String>,
    password_file: Option<PathBuf>,
) -> Result<locus_cluster::EtcdSecurity, Failure> {
    let text = |name: &str, p: &Path| {
        String::from_utf8(read_flag(name, p)?)
            .map_err(|_| Failure::usage(format!("--{name} {}: not UTF-8", p.display())))
    };
    let identity = match (cert, key) {
        (None, None) => None,
        (Some(c), Some(k)) => Some((
            read_flag("etcd-cert", &c)?,
            Secret::new(text("etcd-key", &k)?),
        )),
        _ => return Err(Failure::usage("--etcd-cert and --etcd-key go together")),
    };
    let user = match (user, password_file) {
        (None, None) => None,
        (Some(u), Some(p)) => Some((
            u,
            Secret::new(text("etcd-password-file", &p)?.trim_end_matches(['\r', '\n'])),
        )),
        _ => {
            return Err(Failure::usage(
                "--etcd-user and --etcd-password-file go together",
            ))
        }
    };
    let ca_pem = ca.map(|p| read_flag("etcd-ca", &p)).transpose()?;
    if identity.is_some() && ca_pem.is_none() {
        return Err(Failure::usage("--etcd-cert needs --etcd-ca (TLS to etcd)"));
    }
    Ok(locus_cluster::EtcdSecurity {
        ca_pem,
        identity,
        user,
    })
}

/// Peer authentication from files, so that no secret sits in a flag or the process list.
fn peer_security(
    token_file: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    name: Option<String>,
) -> Result<PeerSecurity, Failure> {
    let token = match token_file {
        Some(p) => {
            let raw = read_flag("peer-token-file", &p)?;
            let t = String::from_utf8(raw)
                .map_err(|_| Failure::usage("--peer-token-file: not UTF-8"))?
                .trim()
                .to_string();
            if t.len() < 16 || !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(Failure::usage(
                    "--peer-token-file: the token must be at least 16 printable ASCII characters",
                ));
            }
            Some(Secret::new(t))
        }
        None => None,
    };
    if let Some(n) = &name {
        if !locus_node::peer::valid_tls_name(n) {
            return Err(Failure::usage(format!(
                "--peer-tls-name {n:?}: not a DNS name or an IP address"
            )));
        }
    }
    let tls = match (cert, key, ca) {
        (None, None, None) => None,
        (Some(c), Some(k), Some(a)) => Some(PeerTls {
            cert_pem: read_flag("peer-tls-cert", &c)?,
            key_pem: read_flag("peer-tls-key", &k)?,
            ca_pem: read_flag("peer-tls-ca", &a)?,
            server_name: name.unwrap_or_else(|| "locus-peer".into()),
            files: Some(TlsFiles {
                cert: c,
                key: k,
                ca: a,
            }),
        }),
        _ => {
            return Err(Failure::usage(
                "mutual TLS needs all of --peer-tls-cert, --peer-tls-key and --peer-tls-ca",
            ))
        }
    };
    Ok(PeerSecurity {
        token,
        tls,
        ..PeerSecurity::default()
    })
}
