//! One file served over plain HTTP(S).
//!
//! - Listing: one `HEAD` gives the size, `ETag`, `Last-Modified` and `Accept-Ranges`; identity is
//!   (URL, ETag or Last-Modified, size).
//! - Bytes: `GET` with `Range`, guarded by `If-Match` (a strong ETag) or `If-Unmodified-Since`,
//!   so that a file replaced during a read fails the read instead of mixing versions.
//! - A file without validators (no strong ETag, no Last-Modified) is fetched whole in one GET,
//!   under an identity of its own per listing: read again once per metadata TTL.
//! - A server without `Range` support (no `Accept-Ranges: bytes`, or a 200 answer to a ranged
//!   request) is fetched whole, once, into a spool file that serves every chunk of it; a log line
//!   says so. The spool goes once every byte has been served, or at the latest after an hour.
//! - No server-side request forgery: a peer may name any URL, and its bytes go back to that
//!   peer. So loopback, private (RFC 1918, ULA), shared (CGNAT), unspecified and other
//!   non-unicast addresses are refused unless the operator allows their network
//!   (`--http-allow-private CIDR,…`), and link-local ones (the cloud metadata services that
//!   hand out instance credentials) always are. The check applies to addresses named, resolved
//!   (the client connects only to the addresses the filtering resolver returned, so a name that
//!   resolves differently the second time cannot slip past) and redirected to. The Hub's and
//!   S3's endpoints are configured by the operator and use clients of their own.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;
use futures::{StreamExt, TryStreamExt};
use locus_core::{Listing, Namespace, RemoteFile};
use reqwest::header::{
    HeaderMap, ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, ETAG, IF_MATCH, IF_UNMODIFIED_SINCE,
    LAST_MODIFIED, RANGE,
};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use crate::retry::{build_client, cut_short, send_once, send_with_retry};
use crate::snapshot::{identity_key, Snapshots};
use crate::{ByteStream, Origin, OriginError, RetryPolicy};

/// Largest file taken (as the peer protocol's bound).
const MAX_SIZE: u64 = 1 << 50;

/// Longest a spool of a server without `Range` support is kept.
const SPOOL_TTL: Duration = Duration::from_secs(3600);

#[derive(Serialize, Deserialize, Default, Clone)]
struct Validators {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_modified: Option<String>,
    ranges: bool,
}

/// A whole file fetched from a server without `Range` support.
struct Spool {
    file: std::fs::File,
    served: AtomicU64,
    made: Instant,
    /// The room it takes in the cache, given back with the spool.
    _space: Box<dyn std::any::Any + Send + Sync>,
}

/// Room on the cache disk for whole-file spools: they count against the cache's capacity.
pub trait SpoolSpace: Send + Sync {
    /// Reserves `bytes` until the returned guard is dropped, or says why not.
    fn reserve(&self, bytes: u64) -> Result<Box<dyn std::any::Any + Send + Sync>, String>;
}

/// The longest a whole-file fetch may take: a minute, and a second per MiB.
const SPOOL_BASE: Duration = Duration::from_secs(60);

fn spool_time_limit(base: Duration, size: u64) -> Duration {
    base + Duration::from_secs(size / (1 << 20))
}

type SpoolCell = Arc<OnceCell<Arc<Spool>>>;

/// Where cloud metadata services answer: link-local addresses, AWS's IPv6 endpoint
/// (`fd00:ec2::254`, and `fd00:ec2::23` for its DNS), GCP's (`fd20:ce::254`), Alibaba's
/// `100.100.100.200` and Oracle Cloud Classic's `192.0.0.192`.
fn link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_link_local() || [[100, 100, 100, 200], [192, 0, 0, 192]].contains(&v4.octets())
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0xfd00 && s[1] == 0x0ec2)
                || (s[0] == 0xfd20 && s[1] == 0x00ce)
        }
    }
}

/// The IPv4 address an IPv6 one stands for or carries: IPv4-mapped, IPv4-compatible
/// (`::a.b.c.d`), NAT64 (`64:ff9b::/96` and the local-use `64:ff9b:1::/48`), 6to4
/// (`2002:AABB:CCDD::/48`).
fn embedded_v4(v6: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    let low = || std::net::Ipv4Addr::from(((s[6] as u32) << 16) | s[7] as u32);
    if s[..6] == [0, 0, 0, 0, 0, 0] && (s[6] != 0 || s[7] > 1) {
        return Some(low());
    }
    if s[0] == 0x64 && s[1] == 0xff9b && (s[2..6] == [0, 0, 0, 0] || s[2] == 1) {
        return Some(low());
    }
    (s[0] == 0x2002).then(|| std::net::Ipv4Addr::from(((s[1] as u32) << 16) | s[2] as u32))
}

/// Why an address is not fetched from unless its network is allowed; `None`: a public one.
fn private_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                Some("a loopback address")
            } else if v4.is_private() {
                Some("a private address")
            } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
                Some("a shared (CGNAT) address")
            } else if (o[0], o[1], o[2]) == (192, 0, 0) || (o[0] == 198 && (o[1] & 0xfe) == 18) {
                Some("a special-purpose address")
            } else if o[0] == 0 || v4.is_broadcast() || v4.is_multicast() || o[0] >= 240 {
                Some("not a unicast address")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return private_kind(IpAddr::V4(v4));
            }
            let s = v6.segments();
            if v6.is_loopback() {
                Some("a loopback address")
            } else if (s[0] & 0xfe00) == 0xfc00 || (s[0] & 0xffc0) == 0xfec0 {
                Some("a private address")
            } else if s[0] == 0x2001 && s[1] == 0 {
                Some("a tunnel (Teredo) address")
            } else if v6.is_unspecified() || v6.is_multicast() {
                Some("not a unicast address")
            } else {
                None
            }
        }
    }
}

const LINK_LOCAL: &str = "link-local addresses (cloud metadata services) are never fetched from";
const PRIVATE: &str = "loopback, private, CGNAT and non-unicast addresses are fetched from only \
                       where the daemon allows their network (--http-allow-private CIDR,...)";

/// Which addresses the HTTP origin may connect to.
#[derive(Clone, Debug, Default)]
pub struct AddressPolicy {
    /// Networks allowed although private (never link-local ones).
    pub allow: Vec<ipnet::IpNet>,
}

/// An address the policy refuses, as the error the client's resolver or redirect policy gives.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{host}: {why}")]
pub(crate) struct Refused {
    host: String,
    why: &'static str,
    hint: &'static str,
}

impl AddressPolicy {
    /// Why `ip` may not be fetched from, or `None`.
    fn refusal(&self, ip: IpAddr) -> Option<(&'static str, &'static str)> {
        let v4 = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
            v4 => Some(v4),
        };
        if link_local(ip) || v4.is_some_and(link_local) {
            return Some(("a link-local address", LINK_LOCAL));
        }
        let kind = private_kind(ip)?;
        let allowed = self
            .allow
            .iter()
            .any(|n| n.contains(&ip) || v4.is_some_and(|v4| n.contains(&v4)));
        (!allowed).then_some((kind, PRIVATE))
    }

    /// This policy, also allowing the private network `ip` belongs to (loopback, an RFC 1918
    /// block, CGNAT, ULA): for the network of an endpoint the operator named (a Hub mirror, a
    /// test Hub), whose redirects stay in it. Link-local addresses stay refused.
    pub fn and_network_of(mut self, ip: IpAddr) -> Self {
        let block = match ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                match o {
                    [127, ..] => Some("127.0.0.0/8"),
                    [10, ..] => Some("10.0.0.0/8"),
                    [172, b, ..] if (16..32).contains(&b) => Some("172.16.0.0/12"),
                    [192, 168, ..] => Some("192.168.0.0/16"),
                    [100, b, ..] if (b & 0xc0) == 64 => Some("100.64.0.0/10"),
                    _ => None,
                }
            }
            IpAddr::V6(v6) if v6.is_loopback() => Some("::1/128"),
            IpAddr::V6(v6) if (v6.segments()[0] & 0xfe00) == 0xfc00 => Some("fc00::/7"),
            IpAddr::V6(_) => None,
        };
        if let Some(net) = block.and_then(|b| b.parse().ok()) {
            self.allow.push(net);
        }
        self
    }

    /// The refusal of a URL that names an address literally.
    pub(crate) fn refuse_literal(&self, url: &reqwest::Url) -> Option<Refused> {
        let ip = match url.host()? {
            url::Host::Ipv4(ip) => IpAddr::V4(ip),
            url::Host::Ipv6(ip) => IpAddr::V6(ip),
            url::Host::Domain(_) => return None,
        };
        self.refusal(ip).map(|(why, hint)| Refused {
            host: ip.to_string(),
            why,
            hint,
        })
    }
}

/// The name lookup the HTTP origin's resolver filters (the system's in production).
pub type Lookup = Arc<
    dyn Fn(String) -> futures::future::BoxFuture<'static, std::io::Result<Vec<IpAddr>>>
        + Send
        + Sync,
>;

fn system_lookup() -> Lookup {
    Arc::new(|name: String| {
        Box::pin(async move {
            Ok(tokio::net::lookup_host((name.as_str(), 0))
                .await?
                .map(|a| a.ip())
                .collect())
        })
    })
}

/// A resolver that answers only addresses the policy allows: the client connects to what it
/// returns and nothing else.
pub(crate) struct Filtered {
    policy: Arc<AddressPolicy>,
    lookup: Lookup,
    /// Names resolved unfiltered: the endpoint and proxies the operator configured.
    trusted: Vec<String>,
    /// What those names are judged by: every network allowed (never a link-local address).
    open: Arc<AddressPolicy>,
}

/// A policy that allows every network; link-local addresses stay refused.
fn open_policy() -> Arc<AddressPolicy> {
    Arc::new(AddressPolicy {
        allow: vec![
            "0.0.0.0/0".parse().expect("net"),
            "::/0".parse().expect("net"),
        ],
    })
}

impl Filtered {
    /// A resolver with the system's lookup; `trusted` (host names) are not filtered.
    pub(crate) fn system(policy: Arc<AddressPolicy>, trusted: Vec<String>) -> Self {
        Self {
            policy,
            lookup: system_lookup(),
            trusted,
            open: open_policy(),
        }
    }
}

impl reqwest::dns::Resolve for Filtered {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = match self.trusted.iter().any(|t| t == name.as_str()) {
            true => self.open.clone(),
            false => self.policy.clone(),
        };
        let lookup = (self.lookup)(name.as_str().to_string());
        let host = name.as_str().to_string();
        Box::pin(async move {
            let mut refused = None;
            let addrs: Vec<SocketAddr> = lookup
                .await?
                .into_iter()
                .filter(|ip| match policy.refusal(*ip) {
                    Some(r) => {
                        refused.get_or_insert(r);
                        false
                    }
                    None => true,
                })
                .map(|ip| SocketAddr::new(ip, 0))
                .collect();
            if addrs.is_empty() {
                let (why, hint) = refused.unwrap_or(("no address", "the name did not resolve"));
                return Err(Box::new(Refused { host, why, hint }) as _);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The refusal behind a failed request, if that is what failed it.
pub(crate) fn refused_in(e: &reqwest::Error) -> Option<&Refused> {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = src {
        if let Some(r) = err.downcast_ref::<Refused>() {
            return Some(r);
        }
        src = err.source();
    }
    None
}

impl Refused {
    pub(crate) fn into_error(self, what: &str) -> OriginError {
        OriginError::AccessDenied {
            what: what.to_string(),
            detail: format!("{} is {}", self.host, self.why),
            hint: self.hint,
        }
    }
}

/// The HTTP(S) origin.
pub struct HttpOrigin {
    client: reqwest::Client,
    policy: Arc<AddressPolicy>,
    retry: RetryPolicy,
    spool_dir: PathBuf,
    spools: DashMap<String, SpoolCell>,
    space: Option<Arc<dyn SpoolSpace>>,
    snapshots: Snapshots,
    /// [`SPOOL_BASE`] (shorter in tests).
    spool_base: Duration,
}

fn header(h: &HeaderMap, name: reqwest::header::HeaderName) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn status_error(status: StatusCode, what: &str) -> OriginError {
    let what = what.to_string();
    match status.as_u16() {
        404 | 410 => OriginError::NotFound { what, kind: "file" },
        // A range past the end: the file shrank since it was listed.
        416 => OriginError::Changed { what },
        401 | 403 => OriginError::AccessDenied {
            what,
            detail: format!("HTTP {status}"),
            hint: "the server refuses locus; URLs with credentials are not supported",
        },
        412 => OriginError::Changed { what },
        _ => OriginError::Protocol {
            what,
            detail: format!("HTTP {status}"),
        },
    }
}

/// The file name a URL shows: its last path segment, else `index`.
fn file_name(url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, r)| r);
    let path = after_scheme
        .split(['?', '#'])
        .next()
        .unwrap_or_default()
        .split_once('/')
        .map_or("", |(_, p)| p);
    match path.rsplit('/').find(|s| !s.is_empty()) {
        Some(s) if s != "." && s != ".." => s.to_string(),
        _ => "index".to_string(),
    }
}

impl HttpOrigin {
    /// An HTTP origin spooling whole files (from servers without `Range`) under `spool_dir`,
    /// in room reserved from `space` (the cache's capacity), connecting only where `policy`
    /// allows.
    pub fn new(
        spool_dir: PathBuf,
        retry: RetryPolicy,
        space: Option<Arc<dyn SpoolSpace>>,
        policy: AddressPolicy,
    ) -> Result<Self, OriginError> {
        Self::with_lookup(spool_dir, retry, space, policy, system_lookup())
    }

    /// The same, with names resolved by `lookup` (tests resolve names to any address).
    pub fn with_lookup(
        spool_dir: PathBuf,
        retry: RetryPolicy,
        space: Option<Arc<dyn SpoolSpace>>,
        policy: AddressPolicy,
        lookup: Lookup,
    ) -> Result<Self, OriginError> {
        let policy = Arc::new(policy);
        let p = policy.clone();
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if let Some(r) = p.refuse_literal(attempt.url()) {
                attempt.error(r)
            } else if attempt.previous().len() >= 10 {
                attempt.error("more than 10 redirects")
            } else {
                attempt.follow()
            }
        });
        let resolver = Arc::new(Filtered {
            policy: policy.clone(),
            lookup,
            trusted: Vec::new(),
            open: open_policy(),
        });
        let client = build_client(Duration::from_secs(10), Duration::from_secs(60), |b| {
            // A proxy would resolve names itself, past the filter below.
            b.no_proxy().dns_resolver(resolver).redirect(redirects)
        })?;
        // Spools of an earlier run are never reused.
        let _ = std::fs::remove_dir_all(&spool_dir);
        Ok(Self {
            client,
            policy,
            retry,
            spool_dir,
            spools: DashMap::new(),
            space,
            snapshots: Snapshots::default(),
            spool_base: SPOOL_BASE,
        })
    }

    /// The URL of an `http(s)://` name: well-formed, and not naming a refused address.
    fn url<'a>(&self, ns: &'a Namespace) -> Result<&'a str, OriginError> {
        let Namespace::Http { url } = ns else {
            return Err(OriginError::Protocol {
                what: ns.to_string(),
                detail: "not an http(s):// name".into(),
            });
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| OriginError::Invalid {
            what: url.to_string(),
            detail: format!("not a valid URL: {e}"),
        })?;
        match self.policy.refuse_literal(&parsed) {
            Some(r) => Err(r.into_error(url)),
            None => Ok(url),
        }
    }

    async fn head(&self, ns: &Namespace) -> Result<Listing, OriginError> {
        let url = self.url(ns)?;
        let resp = send_with_retry(self.retry, url, "head", || self.client.head(url)).await?;
        if !resp.status().is_success() {
            return Err(status_error(resp.status(), url));
        }
        let h = resp.headers();
        let size = header(h, CONTENT_LENGTH)
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|n| *n <= MAX_SIZE)
            .ok_or_else(|| OriginError::Protocol {
                what: url.to_string(),
                detail: "the server gives no usable Content-Length; locus needs the size".into(),
            })?;
        let v = Validators {
            etag: header(h, ETAG),
            last_modified: header(h, LAST_MODIFIED),
            ranges: header(h, ACCEPT_RANGES).is_some_and(|r| r.contains("bytes")),
        };
        let validated =
            v.etag.as_ref().is_some_and(|e| !e.starts_with("W/")) || v.last_modified.is_some();
        let (v, tag) = match (&v.etag, &v.last_modified) {
            (Some(e), _) if validated => (v.clone(), e.clone()),
            (_, Some(lm)) => (v.clone(), lm.clone()),
            // Nothing tells one version from the next: each listing is its own identity (read
            // again once per TTL), fetched in one GET (a spool), so a read never mixes versions.
            _ => (
                Validators { ranges: false, ..v },
                format!("seen-{}", locus_core::unix_ms()),
            ),
        };
        Ok(Listing::new([RemoteFile {
            uri: url.to_string(),
            path: file_name(url),
            size,
            key: identity_key(ns.scheme(), &[url, &tag], size),
            locator: serde_json::to_string(&v).unwrap_or_default(),
            digest: None,
            listed: None,
        }]))
    }

    /// A GET of `file` guarded by its validators.
    fn get(&self, file: &RemoteFile, v: &Validators) -> reqwest::RequestBuilder {
        // Literal addresses skip the resolver: `head` checked this URL when it was listed.
        let req = self.client.get(&file.uri);
        match (&v.etag, &v.last_modified) {
            (Some(e), _) if !e.starts_with("W/") => req.header(IF_MATCH, e),
            (_, Some(lm)) => req.header(IF_UNMODIFIED_SINCE, lm),
            _ => req,
        }
    }

    /// Fetches `file` whole into a spool (once, however many chunks ask at the same time).
    async fn spool(&self, file: &RemoteFile, v: &Validators) -> Result<Arc<Spool>, OriginError> {
        // Spools whose readers stopped early go after their TTL.
        self.spools
            .retain(|_, c| c.get().is_none_or(|s| s.made.elapsed() < SPOOL_TTL));
        let cell = self
            .spools
            .entry(file.key.clone())
            .or_insert_with(|| Arc::new(OnceCell::new()))
            .clone();
        let spool = cell
            .get_or_try_init(|| async {
                tracing::warn!(
                    url = %file.uri,
                    size = file.size,
                    "the server does not support Range requests: fetching the file whole, once"
                );
                let what = file.uri.as_str();
                let space = match &self.space {
                    Some(s) => s
                        .reserve(file.size)
                        .map_err(|detail| OriginError::NoSpace {
                            what: what.to_string(),
                            detail: format!("no room to fetch it whole: {detail}"),
                        })?,
                    None => Box::new(()),
                };
                let limit = spool_time_limit(self.spool_base, file.size);
                let fetch = self.fetch_whole(file, v);
                let tmp = tokio::time::timeout(limit, fetch).await.map_err(|_| {
                    OriginError::Unavailable {
                        what: what.to_string(),
                        attempts: 1,
                        detail: format!("a whole-file fetch took longer than {limit:?}"),
                    }
                })??;
                Ok(Arc::new(Spool {
                    file: tmp,
                    served: AtomicU64::new(0),
                    made: Instant::now(),
                    _space: space,
                }))
            })
            .await;
        if spool.is_err() {
            self.spools.remove(&file.key);
        }
        spool.cloned()
    }

    /// Fetches `file` whole into a new spool file (removed when dropped).
    async fn fetch_whole(
        &self,
        file: &RemoteFile,
        v: &Validators,
    ) -> Result<std::fs::File, OriginError> {
        let what = file.uri.as_str();
        let resp = send_with_retry(self.retry, what, "get", || self.get(file, v)).await?;
        if !resp.status().is_success() {
            return Err(status_error(resp.status(), what));
        }
        std::fs::create_dir_all(&self.spool_dir).map_err(|e| OriginError::Protocol {
            what: what.to_string(),
            detail: format!("spool folder {}: {e}", self.spool_dir.display()),
        })?;
        let mut tmp =
            tempfile::tempfile_in(&self.spool_dir).map_err(|e| OriginError::Protocol {
                what: what.to_string(),
                detail: format!("spool file: {e}"),
            })?;
        let mut body = resp.bytes_stream();
        let mut got = 0u64;
        while let Some(piece) = body.next().await {
            let piece = piece.map_err(|e| cut_short(what, &e))?;
            got += piece.len() as u64;
            if got > file.size {
                break;
            }
            tmp.write_all(&piece).map_err(|e| OriginError::Protocol {
                what: what.to_string(),
                detail: format!("spool file: {e}"),
            })?;
        }
        if got != file.size {
            return Err(OriginError::Changed {
                what: what.to_string(),
            });
        }
        Ok(tmp)
    }

    async fn read_spooled(
        &self,
        file: &RemoteFile,
        v: &Validators,
        range: Range<u64>,
    ) -> Result<ByteStream, OriginError> {
        let spool = self.spool(file, v).await?;
        let len = (range.end - range.start) as usize;
        let s = spool.clone();
        let data = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len];
            std::os::unix::fs::FileExt::read_exact_at(&s.file, &mut buf, range.start).map(|_| buf)
        })
        .await
        .map_err(|e| OriginError::Protocol {
            what: file.uri.clone(),
            detail: e.to_string(),
        })?
        .map_err(|e| OriginError::Protocol {
            what: file.uri.clone(),
            detail: format!("spool file: {e}"),
        })?;
        let served = spool.served.fetch_add(len as u64, Ordering::Relaxed) + len as u64;
        if served >= file.size || spool.made.elapsed() > SPOOL_TTL {
            self.spools.remove(&file.key);
        }
        Ok(futures::stream::once(async move { Ok(Bytes::from(data)) }).boxed())
    }
}

#[async_trait]
impl Origin for HttpOrigin {
    async fn resolve(&self, ns: &Namespace, revision: &str) -> Result<String, OriginError> {
        self.snapshots.resolve(ns, revision, self.head(ns)).await
    }

    async fn list(&self, ns: &Namespace, rev_id: &str) -> Result<Listing, OriginError> {
        self.snapshots.list(ns, rev_id, self.head(ns)).await
    }

    async fn read(&self, file: &RemoteFile, range: Range<u64>) -> Result<ByteStream, OriginError> {
        let what = file.uri.as_str();
        if range.start >= range.end || range.end > file.size {
            return Err(OriginError::Protocol {
                what: what.to_string(),
                detail: format!("bad range {range:?} of a {}-byte file", file.size),
            });
        }
        self.url(&Namespace::Http {
            url: what.to_string(),
        })?;
        let v: Validators =
            serde_json::from_str(&file.locator).map_err(|e| OriginError::Protocol {
                what: what.to_string(),
                detail: format!("bad locator: {e}"),
            })?;
        if !v.ranges || self.spools.contains_key(&file.key) {
            return self.read_spooled(file, &v, range).await;
        }
        let range_header = format!("bytes={}-{}", range.start, range.end - 1);
        // One attempt: the reader of the chunk owns its retries.
        let resp = send_once(what, "get", self.get(file, &v).header(RANGE, &range_header)).await?;
        match resp.status() {
            StatusCode::PARTIAL_CONTENT => {
                // `bytes START-END/TOTAL`: the range asked for, of a file of the listed size.
                let cr = header(resp.headers(), CONTENT_RANGE).unwrap_or_default();
                let (span, total) = cr
                    .strip_prefix("bytes ")
                    .and_then(|c| c.split_once('/'))
                    .unwrap_or(("", ""));
                let start = span.split('-').next().and_then(|n| n.parse::<u64>().ok());
                if start != Some(range.start) {
                    return Err(OriginError::Protocol {
                        what: what.to_string(),
                        detail: "206 answer for another range".into(),
                    });
                }
                // A server that ignores the precondition still names what it sends.
                let moved = (total != "*" && total.parse::<u64>().ok() != Some(file.size))
                    || v.etag
                        .as_ref()
                        .is_some_and(|e| header(resp.headers(), ETAG).is_some_and(|got| &got != e));
                if moved {
                    return Err(OriginError::Changed {
                        what: what.to_string(),
                    });
                }
                let w = what.to_string();
                Ok(resp
                    .bytes_stream()
                    .map_err(move |e| cut_short(&w, &e))
                    .boxed())
            }
            // A server that ignores Range: this read and the rest come from one whole fetch.
            StatusCode::OK => {
                drop(resp);
                self.read_spooled(file, &v, range).await
            }
            s => Err(status_error(s, what)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An origin whose names resolve as `names` says, counting the lookups in `lookups`.
    fn origin_counting(
        allow: &[&str],
        names: &[(&str, &str)],
        lookups: Arc<AtomicU64>,
    ) -> HttpOrigin {
        let names: std::collections::HashMap<String, IpAddr> = names
            .iter()
            .map(|(n, ip)| (n.to_string(), ip.parse().unwrap()))
            .collect();
        let lookup: Lookup = Arc::new(move |name: String| {
            lookups.fetch_add(1, Ordering::SeqCst);
            let r = names
                .get(&name)
                .map(|ip| vec![*ip])
                .ok_or_else(|| std::io::Error::other(format!("{name}: unknown")));
            Box::pin(async move { r })
        });
        let dir = std::env::temp_dir().join(format!("locus-http-test-{}", rand::random::<u64>()));
        HttpOrigin::with_lookup(
            dir,
            RetryPolicy {
                attempts: 3,
                base: Duration::from_millis(1),
                cap: Duration::from_millis(2),
            },
            None,
            AddressPolicy {
                allow: allow.iter().map(|n| n.parse().unwrap()).collect(),
            },
            lookup,
        )
        .unwrap()
    }

    fn origin(allow: &[&str], names: &[(&str, &str)]) -> HttpOrigin {
        origin_counting(allow, names, Arc::default())
    }

    fn http(url: &str) -> Namespace {
        Namespace::Http { url: url.into() }
    }

    #[tokio::test]
    async fn a_whole_file_spool_stops_at_its_time_limit_and_is_not_retried() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A minute, plus a second per whole MiB.
        assert_eq!(spool_time_limit(SPOOL_BASE, 0), Duration::from_secs(60));
        assert_eq!(
            spool_time_limit(SPOOL_BASE, (5 << 20) + 1),
            Duration::from_secs(65)
        );
        // No Range; each GET sends 100 of 1,000 bytes, then stalls.
        let gets = Arc::new(AtomicU64::new(0));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/m.bin", l.local_addr().unwrap());
        let g = gets.clone();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let g = g.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let n = c.read(&mut buf).await.unwrap_or(0);
                    let head = "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nETag: \"v1\"\r\nConnection: close\r\n\r\n";
                    let _ = c.write_all(head.as_bytes()).await;
                    if buf[..n].starts_with(b"GET") {
                        g.fetch_add(1, Ordering::SeqCst);
                        let _ = c.write_all(&[7u8; 100]).await;
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                });
            }
        });
        let mut o = origin(&["127.0.0.1/32"], &[]);
        o.spool_base = Duration::from_millis(500);
        let ns = http(&url);
        let id = o.resolve(&ns, locus_core::LATEST).await.unwrap();
        let file = o.list(&ns, &id).await.unwrap().get(0).unwrap();
        let started = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(10), o.read(&file, 0..1000))
            .await
            .expect("the spool's time limit ends the read");
        match r {
            Err(OriginError::Unavailable { detail, .. }) => {
                assert!(detail.contains("took longer than"), "{detail}")
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a stalled spool was read"),
        }
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(500), "{took:?}");
        assert_eq!(
            gets.load(Ordering::SeqCst),
            1,
            "a spool past its limit is not retried"
        );
    }

    #[test]
    fn refuses_metadata_loopback_private_cgnat_and_unspecified_addresses_named_literally() {
        let o = origin(&[], &[]);
        for u in [
            "http://169.254.169.254/latest/meta-data/",
            "http://[fe80::1]/x",
            "http://[::ffff:169.254.1.1]/",
            "http://[fd00:ec2::254]/latest/",
            "http://100.100.100.200/latest/meta-data/",
            "http://127.0.0.1:8/x",
            "http://[::1]/x",
            "http://10.1.2.3/x",
            "http://172.16.0.1/x",
            "http://192.168.1.1/x",
            "http://[fd12::1]/x",
            "http://100.64.0.1/x",
            "http://0.0.0.0/x",
            "http://[::]/x",
            "http://[::ffff:10.0.0.1]/x",
            "http://[64:ff9b::a00:1]/x",
            "http://[64:ff9b:1::a00:1]/x",
            "http://[::10.0.0.1]/x",
            "http://[2002:a00:1::1]/x",
            "http://[2001:0:4136:e378::1]/x",
            "http://[fec0::1]/x",
            "http://[fd20:ce::254]/computeMetadata/",
            "http://192.0.0.192/latest/",
            "http://198.18.0.1/x",
            "http://224.0.0.1/x",
        ] {
            assert!(
                matches!(o.url(&http(u)), Err(OriginError::AccessDenied { .. })),
                "{u}"
            );
        }
        assert!(o.url(&http("http://93.184.215.14/x")).is_ok());
        assert!(o
            .url(&http("http://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/x"))
            .is_ok());
        assert!(
            o.url(&http("http://[2002:5db8:d70e::1]/x")).is_ok(),
            "6to4 of a public address"
        );
        assert!(o.url(&http("http://example.org/x")).is_ok());
        // An allowed network opens its addresses, but never the metadata services.
        let o = origin(
            &["127.0.0.0/8", "10.0.0.0/8", "169.254.0.0/16", "fd00::/8"],
            &[],
        );
        assert!(o.url(&http("http://127.0.0.1:8/x")).is_ok());
        assert!(o.url(&http("http://[::ffff:10.0.0.1]/x")).is_ok());
        assert!(o.url(&http("http://192.168.1.1/x")).is_err());
        assert!(o.url(&http("http://169.254.169.254/x")).is_err());
        assert!(
            o.url(&http("http://[fd20:ce::254]/x")).is_err(),
            "GCP metadata in an allowed ULA"
        );
        assert!(o.url(&http("http://[fd12::1]/x")).is_ok());
    }

    /// A server on loopback that answers every request with a redirect to `location`.
    async fn redirector(location: String) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let location = location.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = c.read(&mut buf).await;
                    let answer = format!(
                        "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                    let _ = c.write_all(answer.as_bytes()).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn names_that_resolve_or_redirect_to_refused_addresses_fail_at_once() {
        let r = redirector("http://inside.test/secret".into()).await;
        let lookups = Arc::new(AtomicU64::new(0));
        let o = origin_counting(
            &["127.0.0.1/32"],
            &[
                ("inside.test", "10.0.0.7"),
                ("rebind.test", "169.254.169.254"),
                ("loop.test", "127.0.0.1"),
                ("loop6.test", "::1"),
            ],
            lookups.clone(),
        );
        for (url, why) in [
            ("http://inside.test/x".to_string(), "a private address"),
            (
                "http://rebind.test/latest/".to_string(),
                "a link-local address",
            ),
            ("http://loop6.test/x".to_string(), "a loopback address"),
            // An allowed server that redirects to a name resolving to a private address.
            (
                format!("http://loop.test:{}/x", r.port()),
                "a private address",
            ),
            (
                format!("http://127.0.0.1:{}/x", r.port()),
                "a private address",
            ),
        ] {
            match o.list(&http(&url), "latest").await {
                Err(OriginError::AccessDenied { detail, .. }) => {
                    assert!(detail.contains(why), "{url}: {detail}")
                }
                other => panic!("{url}: {:?}", other.map(|_| ())),
            }
        }
        // Refusals are final: each name looked up once (loop.test, then inside.test for its
        // redirect), no retries.
        assert_eq!(lookups.load(Ordering::SeqCst), 6);
        // A literal private address in a redirect is refused the same way.
        let r2 = redirector("http://192.168.0.9/x".into()).await;
        match o
            .list(
                &http(&format!("http://127.0.0.1:{}/x", r2.port())),
                "latest",
            )
            .await
        {
            Err(OriginError::AccessDenied { detail, .. }) => {
                assert!(detail.contains("a private address"), "{detail}")
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn names_files() {
        assert_eq!(file_name("http://h/a/b/model.bin?x=1"), "model.bin");
        assert_eq!(file_name("https://h:80/"), "index");
        assert_eq!(file_name("https://h"), "index");
        assert_eq!(file_name("http://h/a/../"), "index");
        assert_eq!(file_name("http://h/dir/"), "dir");
    }
}
