//! Daemon settings from flags, `LOCUS_*` variables and a TOML file, in that order of precedence.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};

use locus_core::Secret;
use locus_node::peer::{PeerSecurity, PeerTls, TlsFiles};

use crate::Failure;

pub use locus_grpc::DEFAULT_SOCKET;

/// The daemon's settings, each written once: its flag, its `LOCUS_*` variable, its `--config`
/// file key (the flag's name) and its default. Precedence: flag, variable, file, default
/// ([`DaemonArgs::with_file`]).
#[derive(Args, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DaemonArgs {
    /// Where cached data and the index live (created if missing).
    #[arg(long, env = "LOCUS_CACHE_DIR", default_value = "/var/cache/locus")]
    cache_dir: PathBuf,
    /// Capacity, e.g. 50GiB; least recently used unpinned files are evicted above it.
    #[arg(long, env = "LOCUS_CACHE_SIZE", default_value_t = Size(10 << 30))]
    cache_size: Size,
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
    /// Serve the Hugging Face Hub's download API from the cache at http://ADDR (point clients'
    /// HF_ENDPOINT there). Gated and private repos are served only to clients whose own
    /// token the Hub accepts for them.
    #[arg(long, env = "LOCUS_HUB_GATEWAY")]
    hub_gateway: Option<SocketAddr>,
    /// Serve S3's read API (GetObject, HeadObject, ListObjectsV2; path style) from the cache
    /// at http://ADDR, for the --s3-gateway-buckets, read with this node's S3 credentials.
    #[arg(long, env = "LOCUS_S3_GATEWAY")]
    s3_gateway: Option<SocketAddr>,
    /// The buckets the S3 gateway serves: B1,B2.
    #[arg(long, env = "LOCUS_S3_GATEWAY_BUCKETS", value_delimiter = ',')]
    s3_gateway_buckets: Option<Vec<String>>,
    /// File holding the one key pair S3 gateway requests are signed with (SigV4), one line:
    /// ACCESS_KEY_ID:SECRET_ACCESS_KEY.
    #[arg(long, env = "LOCUS_S3_GATEWAY_KEY_FILE")]
    s3_gateway_key_file: Option<PathBuf>,
    /// Serve unsigned S3 gateway requests instead: whoever reaches the port reads the buckets
    /// with this node's credentials.
    #[arg(long, env = "LOCUS_S3_GATEWAY_ANONYMOUS")]
    s3_gateway_anonymous: bool,
    /// Serve the CSI node plugin (csi.locus.dev) for kubelet on this Unix socket, e.g.
    /// /var/lib/kubelet/plugins/csi.locus.dev/csi.sock: pods then ask for a repo or prefix
    /// as a read-only volume.
    #[arg(long, env = "LOCUS_CSI_SOCKET")]
    csi_socket: Option<PathBuf>,
    /// Mount CSI volumes through the `locus mounter` listening on this socket (its mount
    /// processes outlive this daemon's container); without it, the daemon runs them itself.
    #[arg(long, env = "LOCUS_CSI_MOUNTER")]
    csi_mounter: Option<PathBuf>,
    /// The node id the CSI plugin reports (kubelet's node name); default: the host name.
    #[arg(long, env = "LOCUS_NODE_ID")]
    node_id: Option<String>,
    /// Chunk size of files entering the cache (64KiB to 256MiB).
    #[arg(long, env = "LOCUS_CHUNK_SIZE", default_value_t = Size(locus_node::DEFAULT_CHUNK_SIZE))]
    chunk_size: Size,
    /// Also serve the read-only namespace view at DIR.
    #[arg(long, env = "LOCUS_MOUNT")]
    mount: Option<PathBuf>,
    /// Names the namespace view keeps reachable (inodes, and listed files not looked up yet; at
    /// least 100); past it, the repos and buckets used least recently are dropped, and listed
    /// again when named again.
    #[arg(long, env = "LOCUS_MOUNT_MAX_INODES", default_value_t = 1_000_000)]
    mount_max_inodes: usize,
    /// Let other users (and other containers' processes) read the namespace view; without
    /// it only the daemon's user can. Pods that read the view need it.
    #[arg(long, env = "LOCUS_MOUNT_ALLOW_OTHER")]
    mount_allow_other: bool,
    /// Origin connections at once (1 to 1024).
    #[arg(long, env = "LOCUS_CONCURRENCY", default_value_t = 16)]
    concurrency: usize,
    /// Seconds a branch or tag stays resolved to one commit.
    #[arg(long, env = "LOCUS_METADATA_TTL", default_value_t = 60)]
    metadata_ttl: u64,
    /// Owners that hold each chunk after a cluster-scope warm (1 to 16).
    #[arg(long, env = "LOCUS_REPLICAS", default_value_t = 1)]
    replicas: usize,
    /// Bounded-load slack ε (0 to 10): a member above (1+ε) times the mean load passes reads on.
    #[arg(long, env = "LOCUS_LOAD_EPSILON", default_value_t = 0.25)]
    load_epsilon: f64,
    /// Seconds an etcd lease lives (2 to 3600): a node that dies leaves the ring after this.
    #[arg(long, env = "LOCUS_MEMBERSHIP_TTL", default_value_t = 10)]
    membership_ttl: u64,
    /// Seconds between reads of the --peer-tls-* files: a renewed certificate or CA is used
    /// from then on, without a restart.
    #[arg(long, env = "LOCUS_PEER_TLS_RELOAD", default_value_t = 30)]
    peer_tls_reload: u64,
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
    /// The name every member's certificate carries.
    #[arg(long, env = "LOCUS_PEER_TLS_NAME", default_value = "locus-peer")]
    peer_tls_name: String,
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
    #[serde(skip)]
    pub check_config: bool,
}

impl DaemonArgs {
    /// These settings with the `--config` file's keys under them: a file key takes the place of
    /// a setting that neither a flag nor a variable gave. `m`: what clap matched, to tell a
    /// default from a value given.
    pub fn with_file(self, m: &clap::ArgMatches, file: &ConfigFile) -> Result<Self, Failure> {
        use clap::parser::ValueSource;
        // No file (the common case): the settings are clap's as they are.
        if file.table.is_empty() {
            return Ok(self);
        }
        let check_config = self.check_config;
        // The flags and variables, with the file's keys laid under them, read as one table.
        let mut merged = toml::Table::try_from(&self).map_err(|e| {
            Failure::usage(format!(
                "with --config, every setting must be expressible in TOML (paths in UTF-8, numbers below 2^63): {e}"
            ))
        })?;
        let known = known_keys();
        for (key, value) in &file.table {
            if key == "socket" {
                continue;
            }
            let id = key.replace('-', "_");
            let given = known.contains(key)
                && matches!(
                    m.value_source(&id),
                    Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                );
            if !given {
                // An unknown key is refused below, by name.
                merged.insert(key.clone(), value.clone());
            }
        }
        let mut merged: Self = merged.try_into().map_err(|e: toml::de::Error| {
            Failure::usage(format!("--config {}: {}", file.shown(), e.message()))
        })?;
        merged.check_config = check_config;
        Ok(merged)
    }
}

/// The keys a `--config` file may hold: the daemon's flags (as written on the command line)
/// and `socket`.
fn known_keys() -> Vec<String> {
    <DaemonArgs as Args>::augment_args(clap::Command::new("daemon"))
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_string))
        .filter(|k| k != "check-config")
        .chain(std::iter::once("socket".to_string()))
        .collect()
}

/// A byte size, as a flag, a variable or a file value: `50GiB`, `512KiB`, `1048576`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

impl std::str::FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        locus_core::parse_size(s)
            .map(Size)
            .map_err(|e| e.to_string())
    }
}

impl std::fmt::Display for Size {
    /// The largest unit that divides it, as a person would write it (`8MiB`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let units = [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")];
        match units
            .iter()
            .find(|(shift, _)| self.0 != 0 && self.0.is_multiple_of(1u64 << shift))
        {
            Some((shift, unit)) => write!(f, "{}{unit}", self.0 >> shift),
            None => write!(f, "{}", self.0),
        }
    }
}

impl Serialize for Size {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(n) => Ok(Size(n)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// The `--config` file: a TOML table with the same keys as the flags (and `socket`).
#[derive(Default)]
pub struct ConfigFile {
    path: Option<PathBuf>,
    table: toml::Table,
}

impl ConfigFile {
    pub fn load(path: Option<&Path>) -> Result<ConfigFile, Failure> {
        let Some(p) = path else {
            return Ok(ConfigFile::default());
        };
        let text = std::fs::read_to_string(p)
            .map_err(|e| Failure::usage(format!("--config {}: {e}", p.display())))?;
        let table: toml::Table = toml::from_str(&text).map_err(|e: toml::de::Error| {
            // Where: the line of the error's first byte.
            let line = e
                .span()
                .map(|r| {
                    let before = &text.as_bytes()[..r.start.min(text.len())];
                    before.iter().filter(|&&b| b == b'\n').count() + 1
                })
                .map(|n| format!(" line {n}:"))
                .unwrap_or_default();
            Failure::usage(format!("--config {}:{line} {}", p.display(), e.message()))
        })?;
        // Checked for every command, not only the daemon: a misspelled key is never ignored.
        let known = known_keys();
        if let Some(k) = table.keys().find(|k| !known.contains(k)) {
            let hint = match locus_core::suggest::nearest(k, known.iter().map(String::as_str), 1)[..]
            {
                [near] => format!("did you mean `{near}`?"),
                _ => "keys are the daemon's flags, e.g. cache-size, and socket".to_string(),
            };
            return Err(Failure::usage(format!(
                "--config {}: unknown key `{k}` ({hint})",
                p.display()
            )));
        }
        Ok(ConfigFile {
            path: Some(p.to_path_buf()),
            table,
        })
    }

    /// The file's `socket` key.
    pub fn socket(&self) -> Result<Option<PathBuf>, Failure> {
        match self.table.get("socket") {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(PathBuf::from(s))),
            Some(_) => Err(Failure::usage(format!(
                "--config {}: socket must be a path",
                self.shown()
            ))),
        }
    }

    fn shown(&self) -> String {
        self.path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
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
    pub hub_gateway: Option<SocketAddr>,
    /// The S3 gateway: its address, buckets and who may call it.
    pub s3_gateway: Option<(SocketAddr, Vec<String>, locus_gateway::S3Auth)>,
    /// The CSI plugin's socket and node id.
    pub csi: Option<(PathBuf, String)>,
    /// The mounter the CSI plugin mounts through, if any.
    pub csi_mounter: Option<PathBuf>,
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
            format!(
                "hub-gateway = {}",
                opt(self.hub_gateway.map(|a| a.to_string()))
            ),
            format!(
                "s3-gateway = {}",
                opt(self.s3_gateway.as_ref().map(|(a, b, auth)| format!(
                    "{a} buckets {} ({})",
                    b.join(","),
                    match auth {
                        locus_gateway::S3Auth::Key(_) => "signed",
                        locus_gateway::S3Auth::Anonymous => "anonymous",
                    }
                )))
            ),
            format!(
                "csi = {}",
                opt(self
                    .csi
                    .as_ref()
                    .map(|(p, id)| format!("{} node {id}", p.display())))
            ),
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

impl DaemonConfig {
    /// Checks the settings and gives them their types.
    pub fn check(a: DaemonArgs, socket: PathBuf) -> Result<DaemonConfig, Failure> {
        let chunk_size = a.chunk_size.0;
        within(
            chunk_size,
            locus_core::MIN_CHUNK_SIZE..=256 << 20,
            "--chunk-size must be between 64KiB and 256MiB",
        )?;
        within(a.replicas, 1..=16, "--replicas must be between 1 and 16")?;
        within(
            a.load_epsilon,
            0.0..=10.0,
            "--load-epsilon must be between 0 and 10",
        )?;
        within(
            a.concurrency,
            1..=1024,
            "--concurrency must be between 1 and 1024",
        )?;
        if a.cache_size.0 < chunk_size {
            return Err(Failure::usage(format!(
                "--cache-size {} is smaller than one chunk ({}): nothing could be cached",
                a.cache_size, a.chunk_size
            )));
        }
        let peers = a.peers.unwrap_or_default();
        let membership = match (a.membership, peers.is_empty()) {
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
        let (listen, advertise) = (a.listen, a.advertise);
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
        if !(2..=3600).contains(&a.membership_ttl) {
            return Err(Failure::usage(
                "--membership-ttl must be between 2 and 3600 seconds",
            ));
        }
        let etcd = etcd_security(
            a.etcd_ca,
            a.etcd_cert,
            a.etcd_key,
            a.etcd_user,
            a.etcd_password_file,
        )?;
        if let Some(m @ locus_cluster::Membership::Etcd { .. }) = &membership {
            if !m.etcd_is_local() && !etcd.authenticated() && !a.insecure_etcd {
                return Err(Failure::usage(
                    "--membership etcd://…: an etcd others can reach decides whom this node sends peer requests and its peer token to; give --etcd-ca with --etcd-cert/--etcd-key or --etcd-user/--etcd-password-file, or --insecure-etcd if no one else can reach it",
                ));
            }
        }
        let mut security = peer_security(
            a.peer_token_file,
            a.peer_tls_cert,
            a.peer_tls_key,
            a.peer_tls_ca,
            a.peer_tls_name,
        )?;
        security.wire = !a.no_peer_wire;
        if let Some(addr) = listen {
            let open = security.token.is_none() && security.tls.is_none();
            if open && !addr.ip().is_loopback() && !a.insecure_peers {
                return Err(Failure::usage(format!(
                    "--listen {addr}: peers that can reach this address could have this node fetch with its credentials and read the bytes back; give --peer-token-file FILE (the same token on every node) or mutual TLS (--peer-tls-cert, --peer-tls-key, --peer-tls-ca), or --insecure-peers if no one else can reach it"
                )));
            }
        }
        if let Some(e) = &a.s3_endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(Failure::usage(format!(
                    "--s3-endpoint {e:?}: expected http://HOST[:PORT] or https://HOST[:PORT]"
                )));
            }
        }
        for r in &a.file_root {
            if !r.is_absolute() || !r.is_dir() {
                return Err(Failure::usage(format!(
                    "--file-root {}: not an absolute path to a folder",
                    r.display()
                )));
            }
        }
        let http_allow_private = a
            .http_allow_private
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
        let s3_gateway = s3_gateway(
            a.s3_gateway,
            a.s3_gateway_buckets.unwrap_or_default(),
            a.s3_gateway_key_file,
            a.s3_gateway_anonymous,
        )?;
        let csi = match (a.csi_socket, a.node_id) {
            (Some(p), id) => {
                if !p.is_absolute() {
                    return Err(Failure::usage(format!(
                        "--csi-socket {}: not an absolute path",
                        p.display()
                    )));
                }
                let id = id.unwrap_or_else(crate::csi::hostname);
                if id.is_empty() || id.len() > 128 {
                    return Err(Failure::usage("--node-id must be 1 to 128 bytes"));
                }
                Some((p, id))
            }
            (None, Some(_)) => return Err(Failure::usage("--node-id needs --csi-socket")),
            (None, None) if a.csi_mounter.is_some() => {
                return Err(Failure::usage("--csi-mounter needs --csi-socket"))
            }
            (None, None) => None,
        };
        Ok(DaemonConfig {
            socket,
            cache_dir: a.cache_dir,
            cache_size: a.cache_size.0,
            listen,
            advertise,
            membership,
            metrics: a.metrics,
            hub_gateway: a.hub_gateway,
            s3_gateway,
            csi,
            csi_mounter: a.csi_mounter,
            chunk_size,
            concurrency: a.concurrency,
            metadata_ttl: Duration::from_secs(a.metadata_ttl),
            mount: a.mount,
            mount_allow_other: a.mount_allow_other,
            mount_max_inodes: a.mount_max_inodes.max(100),
            replicas: a.replicas,
            load_epsilon: a.load_epsilon,
            membership_ttl: Duration::from_secs(a.membership_ttl),
            etcd,
            peer_tls_reload: Duration::from_secs(a.peer_tls_reload.max(1)),
            security,
            s3_endpoint: a.s3_endpoint,
            s3_virtual_hosted: a.s3_virtual_hosted,
            file_roots: a.file_root,
            http_allow_private,
            insecure_peers: a.insecure_peers,
            accept_peer_pins: a.accept_peer_pins,
            socket_group: a
                .socket_group
                .map(|g| group("socket-group", &g))
                .transpose()?,
            data_group: a.data_group.map(|g| group("data-group", &g)).transpose()?,
        })
    }
}

/// `v` in `range`, else a usage error saying `msg`.
fn within<T: PartialOrd>(
    v: T,
    range: std::ops::RangeInclusive<T>,
    msg: &str,
) -> Result<(), Failure> {
    match range.contains(&v) {
        true => Ok(()),
        false => Err(Failure::usage(msg)),
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

/// The S3 gateway's settings: buckets that are bucket names, and signed requests with the key
/// pair from a file, or anonymous ones only when asked (never both, never neither).
fn s3_gateway(
    addr: Option<SocketAddr>,
    buckets: Vec<String>,
    key_file: Option<PathBuf>,
    anonymous: bool,
) -> Result<Option<(SocketAddr, Vec<String>, locus_gateway::S3Auth)>, Failure> {
    let Some(addr) = addr else {
        if !buckets.is_empty() || key_file.is_some() || anonymous {
            return Err(Failure::usage(
                "--s3-gateway-buckets, --s3-gateway-key-file and --s3-gateway-anonymous need --s3-gateway ADDR",
            ));
        }
        return Ok(None);
    };
    let buckets: Vec<String> = buckets.into_iter().map(|b| b.trim().to_string()).collect();
    if buckets.is_empty() {
        return Err(Failure::usage(
            "--s3-gateway needs --s3-gateway-buckets B1,B2: the buckets it serves",
        ));
    }
    for b in &buckets {
        match locus_core::LocusUri::parse(&format!("s3://{b}")) {
            Ok(u) if !b.contains('/') && u.to_string() == format!("s3://{b}") => {}
            _ => {
                return Err(Failure::usage(format!(
                    "--s3-gateway-buckets: {b:?} is not a bucket name"
                )))
            }
        }
    }
    let auth = match (key_file, anonymous) {
        (Some(_), true) => {
            return Err(Failure::usage(
                "--s3-gateway-key-file and --s3-gateway-anonymous: choose one",
            ))
        }
        (None, false) => {
            return Err(Failure::usage(
                "--s3-gateway needs --s3-gateway-key-file FILE (ACCESS_KEY_ID:SECRET_ACCESS_KEY, the pair clients sign with), or --s3-gateway-anonymous to serve unsigned requests",
            ))
        }
        (None, true) => locus_gateway::S3Auth::Anonymous,
        (Some(p), false) => {
            let text = String::from_utf8(read_flag("s3-gateway-key-file", &p)?).map_err(|_| {
                Failure::usage(format!("--s3-gateway-key-file {}: not UTF-8", p.display()))
            })?;
            let creds = locus_gateway::sigv4::Credentials::parse(&text).map_err(|e| {
                Failure::usage(format!("--s3-gateway-key-file {}: {e}", p.display()))
            })?;
            locus_gateway::S3Auth::Key(creds)
        }
    };
    Ok(Some((addr, buckets, auth)))
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
    name: String,
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
    if !locus_node::peer::valid_tls_name(&name) {
        return Err(Failure::usage(format!(
            "--peer-tls-name {name:?}: not a DNS name or an IP address"
        )));
    }
    let tls = match (cert, key, ca) {
        (None, None, None) => None,
        (Some(c), Some(k), Some(a)) => Some(PeerTls {
            cert_pem: read_flag("peer-tls-cert", &c)?,
            key_pem: read_flag("peer-tls-key", &k)?,
            ca_pem: read_flag("peer-tls-ca", &a)?,
            server_name: name,
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::FromArgMatches;

    /// The daemon's settings from `flags` over the TOML `file`.
    fn settings(flags: &[&str], file: &str) -> Result<DaemonArgs, Failure> {
        let cmd = <DaemonArgs as Args>::augment_args(clap::Command::new("daemon"));
        let m = cmd
            .try_get_matches_from(std::iter::once("daemon").chain(flags.iter().copied()))
            .unwrap();
        let args = DaemonArgs::from_arg_matches(&m).unwrap();
        let file = ConfigFile {
            path: None,
            table: toml::from_str(file).unwrap(),
        };
        args.with_file(&m, &file)
    }

    #[test]
    fn a_flag_beats_the_file_and_the_file_beats_the_default() {
        let s = settings(&[], "").unwrap();
        assert_eq!((s.cache_size, s.concurrency), (Size(10 << 30), 16));
        assert!(!s.insecure_peers);
        let file = "cache-size = \"3GiB\"\nconcurrency = 4\ninsecure-peers = true\nfile-root = [\"/tmp\"]\nchunk-size = 1048576\n";
        let s = settings(&[], file).unwrap();
        assert_eq!((s.cache_size, s.concurrency), (Size(3 << 30), 4));
        assert_eq!(s.chunk_size, Size(1 << 20), "a size in bytes");
        assert!(s.insecure_peers, "a switch from the file");
        assert_eq!(s.file_root, vec![PathBuf::from("/tmp")]);
        let s = settings(&["--concurrency", "8", "--file-root", "/var"], file).unwrap();
        assert_eq!((s.cache_size, s.concurrency), (Size(3 << 30), 8));
        assert_eq!(s.file_root, vec![PathBuf::from("/var")]);
        assert!(
            settings(&[], "bogus = 1").is_err(),
            "unknown keys are refused"
        );
        assert!(
            settings(&[], "check-config = true").is_err(),
            "not a file key"
        );
        assert!(settings(&[], "concurrency = \"many\"").is_err());
        assert!(
            settings(&["--cache-dir", "/x"], "cache_dir = \"/y\"").is_err(),
            "keys are written as the flags"
        );
    }

    #[test]
    fn a_config_file_with_an_unknown_key_is_refused_for_every_command() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("locus.toml");
        std::fs::write(&p, "socket = \"/run/x.sock\"\ncache-size = \"1GiB\"\n").unwrap();
        let f = ConfigFile::load(Some(&p)).unwrap();
        assert_eq!(f.socket().unwrap(), Some(PathBuf::from("/run/x.sock")));
        std::fs::write(&p, "sockets = \"/run/x.sock\"\n").unwrap();
        assert!(ConfigFile::load(Some(&p)).is_err());
        std::fs::write(&p, "cache-sise = \"1GiB\"\n").unwrap();
        let e = ConfigFile::load(Some(&p)).err().unwrap();
        assert!(e.msg.contains("did you mean `cache-size`?"), "{}", e.msg);
        std::fs::write(&p, "listen = \"127.0.0.1:1\"\n\ncache-size = 1GiB\n").unwrap();
        let e = ConfigFile::load(Some(&p)).err().unwrap();
        assert!(e.msg.contains(" line 3:"), "{}", e.msg);
        // An error at the start of a line is on that line, not the one before.
        std::fs::write(
            &p,
            "listen = \"127.0.0.1:1\"\nreplicas = 2\nlisten = \"x\"\n",
        )
        .unwrap();
        let e = ConfigFile::load(Some(&p)).err().unwrap();
        assert!(e.msg.contains(" line 3:"), "{}", e.msg);
    }

    #[test]
    fn a_cache_smaller_than_one_chunk_is_refused() {
        let check = |flags: &[&str]| DaemonConfig::check(settings(flags, "").unwrap(), "/s".into());
        assert!(check(&["--cache-size", "0"]).is_err());
        let e = check(&["--cache-size", "4MiB"]).err().unwrap();
        assert!(e.msg.contains("smaller than one chunk (8MiB)"), "{}", e.msg);
        assert!(check(&["--cache-size", "4MiB", "--chunk-size", "1MiB"]).is_ok());
    }

    #[test]
    fn an_s3_gateway_needs_buckets_and_signed_requests_unless_anonymous_is_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "AKIDGATEWAY:gateway-secret\n").unwrap();
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "no colon here").unwrap();
        let check = |flags: &[&str]| DaemonConfig::check(settings(flags, "").unwrap(), "/s".into());
        let k = key.to_str().unwrap();
        let gw = ["--s3-gateway", "127.0.0.1:9000"];
        let with = |rest: &[&'static str]| [&gw[..], rest].concat();
        for (flags, want) in [
            (
                with(&["--s3-gateway-buckets", "bkt"]),
                "--s3-gateway-key-file",
            ),
            (with(&[]), "--s3-gateway-buckets"),
            (
                with(&[
                    "--s3-gateway-buckets",
                    "Not_A_Bucket!",
                    "--s3-gateway-anonymous",
                ]),
                "not a bucket",
            ),
            (
                with(&[
                    "--s3-gateway-buckets",
                    "bkt/prefix",
                    "--s3-gateway-anonymous",
                ]),
                "not a bucket",
            ),
            (vec!["--s3-gateway-anonymous"], "need --s3-gateway"),
        ] {
            let e = check(&flags).err().expect("refused").msg;
            assert!(e.contains(want), "{flags:?}: {e}");
        }
        let e = check(
            &[
                &gw[..],
                &[
                    "--s3-gateway-buckets",
                    "bkt",
                    "--s3-gateway-key-file",
                    bad.to_str().unwrap(),
                ],
            ]
            .concat(),
        )
        .err()
        .expect("refused")
        .msg;
        assert!(
            e.contains("ACCESS_KEY_ID:SECRET_ACCESS_KEY") && !e.contains("no colon"),
            "{e}"
        );
        let mut both = with(&["--s3-gateway-buckets", "bkt", "--s3-gateway-anonymous"]);
        both.extend(["--s3-gateway-key-file", k]);
        assert!(check(&both).is_err());
        let ok = check(
            &[
                &gw[..],
                &[
                    "--s3-gateway-buckets",
                    "bkt1,bkt2",
                    "--s3-gateway-key-file",
                    k,
                ],
            ]
            .concat(),
        )
        .unwrap();
        let summary = ok.summary();
        assert!(
            summary.contains("s3-gateway = 127.0.0.1:9000 buckets bkt1,bkt2 (signed)"),
            "{summary}"
        );
        assert!(!summary.contains("gateway-secret"));
    }

    #[test]
    fn sizes_read_and_print_as_people_write_them() {
        assert_eq!("8MiB".parse::<Size>(), Ok(Size(8 << 20)));
        assert_eq!(Size(8 << 20).to_string(), "8MiB");
        assert_eq!(Size(1536).to_string(), "1536");
        assert_eq!(Size(0).to_string(), "0");
        assert!("12x".parse::<Size>().is_err());
    }
}
