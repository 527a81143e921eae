//! S3 (and S3-compatible stores) and local files, both through the `object_store` crate.
//!
//! - A namespace is a bucket prefix or a path. Listing it is one HEAD (is it a single object?)
//!   and, when it is not, one LIST of everything under it (one call per page of 1,000).
//! - Identity: (bucket or root, key, ETag, version, size) makes each file's cache key, so an
//!   overwritten object gets a new key once its namespace is listed again.
//! - Every ranged GET carries `If-Match` with the listed ETag (and the version where known): an
//!   object overwritten during a read fails the read ([`OriginError::Changed`]) instead of
//!   mixing old and new bytes.
//! - Retries of throttled (503 SlowDown, 429) and failed requests are `object_store`'s, with
//!   backoff; the calls counted are the logical ones (list, head, get).

use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use futures::{StreamExt, TryStreamExt};
use locus_core::{Listing, ListingBuilder, LocusUri, Namespace, RemoteFile, LATEST};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::RetryConfig;
use object_store::{BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectMeta, ObjectStore};
use serde::{Deserialize, Serialize};

use crate::snapshot::{identity_key, Snapshots};
use crate::{count_request, ByteStream, Origin, OriginError, RetryPolicy};

/// Entries per LIST page at S3.
const LIST_PAGE: usize = 1000;

/// S3 clients kept (one per bucket).
const MAX_BUCKETS: usize = 256;

/// Where an object's bytes are and which version of them a listing saw.
#[derive(Serialize, Deserialize, Default)]
struct Locator {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    /// When the object was last modified (ms since the epoch), as listed; shown, not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    modified: Option<i64>,
}

/// What the listing saw of an object: its ETag (as the store sent it) and when it was last
/// modified (ms since the epoch); `None` where not known (a file, or a listing from an older
/// version). For those who show objects again (the S3 gateway).
pub fn object_version(file: &RemoteFile) -> (Option<String>, Option<i64>) {
    match serde_json::from_str::<Locator>(&file.locator) {
        Ok(l) => (l.etag, l.modified),
        Err(_) => (None, None),
    }
}

/// What a listing or read needs of a namespace: its store, and where it sits in the store.
struct Place {
    store: Arc<dyn ObjectStore>,
    /// The object path of the namespace (a key or prefix; empty for a whole bucket).
    base: String,
    /// What makes keys of two stores differ (the bucket, or `""` for local files).
    root: String,
    /// The name a single object is listed under: the last segment of the name asked for (not
    /// of a symlink's target).
    name: String,
    /// List by walking the folder here, within these roots (local files).
    walk: Option<Arc<Vec<PathBuf>>>,
}

impl Place {
    /// The store path of the namespace: the key as it is (no percent-encoding of `~`, `[`, `%`
    /// and the like, which would name another object).
    fn path(&self, what: &str) -> Result<Path, OriginError> {
        Path::parse(&self.base).map_err(|e| OriginError::Protocol {
            what: what.to_string(),
            detail: format!("a key locus cannot name: {e}"),
        })
    }
}

/// An error on one line, without an S3 error body's request details (a signature mismatch
/// echoes the canonical request, which holds the session token): only its Code and Message.
fn one_line(e: &dyn std::fmt::Display) -> String {
    let mut s = e.to_string().replace('\n', " ");
    if let Some(at) = s.find("<?xml").or_else(|| s.find("<Error>")) {
        let tag = |t: &str| {
            let open = format!("<{t}>");
            let start = s.find(&open)? + open.len();
            let len = s[start..].find('<')?;
            Some(s[start..start + len].to_string())
        };
        let summary = match (tag("Code"), tag("Message")) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (Some(c), None) => c,
            _ => "S3 error".to_string(),
        };
        s.truncate(at);
        s.push_str(&summary);
    }
    match s.char_indices().nth(400) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

/// What the credential chain's last resort (the instance metadata service) says when there is
/// no instance role: an address the user never named. Said instead of the probe.
const NO_CREDENTIALS: &str = "the daemon found no AWS credentials: none in its environment or \
     AWS_PROFILE, and no instance role (the instance metadata service did not give one)";

/// Whether `detail` is the credential chain failing at the instance metadata service.
fn metadata_probe(detail: &str) -> bool {
    [
        "169.254.169.254",
        "fd00:ec2::254",
        "/latest/api/token",
        "/latest/meta-data",
    ]
    .iter()
    .any(|m| detail.contains(m))
}

fn map_err(e: object_store::Error, what: &str, denied_hint: &'static str) -> OriginError {
    use object_store::Error as E;
    let what = what.to_string();
    if metadata_probe(&e.to_string()) {
        return OriginError::AccessDenied {
            what,
            detail: NO_CREDENTIALS.into(),
            hint: denied_hint,
        };
    }
    match e {
        E::NotFound { .. } => OriginError::NotFound {
            what,
            kind: "object",
        },
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => OriginError::AccessDenied {
            what,
            detail: one_line(&e),
            hint: denied_hint,
        },
        E::Precondition { .. } | E::NotModified { .. } => OriginError::Changed { what },
        // Retrying these cannot help: say so instead of "unavailable".
        E::InvalidPath { .. } | E::NotSupported { .. } | E::NotImplemented => {
            OriginError::Protocol {
                what,
                detail: one_line(&e),
            }
        }
        other => {
            let detail = one_line(&other);
            if detail.contains("NoSuchBucket") {
                OriginError::NotFound {
                    what,
                    kind: "bucket",
                }
            } else if [
                "AccessDenied",
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
                "403 Forbidden",
            ]
            .iter()
            .any(|m| detail.contains(m))
            {
                OriginError::AccessDenied {
                    what,
                    detail,
                    hint: denied_hint,
                }
            } else {
                // `object_store` has already retried what was worth retrying.
                OriginError::Unavailable {
                    what,
                    attempts: 0,
                    detail,
                }
            }
        }
    }
}

fn remote(ns: &Namespace, place: &Place, rel: &str, name: &str, meta: &ObjectMeta) -> RemoteFile {
    remote_of(
        ns,
        place,
        rel,
        name,
        meta.location.as_ref(),
        meta.size,
        Locator {
            etag: meta.e_tag.clone(),
            version: None,
            modified: Some(meta.last_modified.timestamp_millis()),
        },
    )
}

fn remote_of(
    ns: &Namespace,
    place: &Place,
    rel: &str,
    name: &str,
    location: &str,
    size: u64,
    loc: Locator,
) -> RemoteFile {
    // No version id: a GET with one needs `s3:GetObjectVersion`, and `If-Match` on the ETag
    // already pins the bytes. (Keys then agree whether an object was listed alone or in a prefix.)
    RemoteFile {
        uri: ns.file_uri(LATEST, rel),
        path: name.to_string(),
        size,
        key: identity_key(
            ns.scheme(),
            &[
                &place.root,
                location,
                loc.etag.as_deref().unwrap_or(""),
                loc.version.as_deref().unwrap_or(""),
            ],
            size,
        ),
        locator: serde_json::to_string(&loc).unwrap_or_default(),
        digest: None,
        listed: None,
    }
}

/// Lists a namespace: the single object it names, else every object under it.
async fn list_place(
    ns: &Namespace,
    place: &Place,
    denied_hint: &'static str,
) -> Result<Listing, OriginError> {
    let what = ns.to_string();
    if !place.base.is_empty() {
        count_request("head");
        match place.store.head(&place.path(&what)?).await {
            Ok(meta) => return Ok(Listing::new([remote(ns, place, "", &place.name, &meta)])),
            // Not an object; a policy that grants `prefix/*` denies a HEAD of `prefix` itself.
            Err(
                object_store::Error::NotFound { .. } | object_store::Error::PermissionDenied { .. },
            ) => {}
            Err(e) => return Err(map_err(e, &what, denied_hint)),
        }
    }
    count_request("list");
    if let Some(roots) = &place.walk {
        return walk_place(ns, place, roots.clone()).await;
    }
    let prefix = match place.base.is_empty() {
        true => None,
        false => Some(place.path(&what)?),
    };
    let mut entries = place.store.list(prefix.as_ref());
    let mut files = ListingBuilder::default();
    let mut seen = 0usize;
    while let Some(meta) = entries
        .try_next()
        .await
        .map_err(|e| map_err(e, &what, denied_hint))?
    {
        seen += 1;
        // Each page after the first is one more LIST call.
        if seen > 1 && seen % LIST_PAGE == 1 {
            count_request("list");
        }
        let key = meta.location.as_ref();
        let rel = if place.base.is_empty() {
            Some(key)
        } else {
            key.strip_prefix(place.base.as_str())
                .and_then(|r| r.strip_prefix('/'))
        };
        match rel.map(locus_core::uri::normalize_path) {
            Some(Ok(rel)) if !rel.is_empty() => files.push(&remote(ns, place, &rel, &rel, &meta)),
            // `prefix/` itself: a folder marker.
            Some(Ok(_)) if meta.size == 0 => {}
            _ => tracing::warn!(%ns, key, "skipping an object whose key locus cannot name"),
        }
    }
    // Folder markers (`dir/`, an empty object listed as `dir`) would hide the folder's files.
    let files = files.finish();
    let markers: Vec<usize> = (0..files.len())
        .filter(|i| files.size(*i) == 0 && !files.under(&format!("{}/", files.path(*i))).is_empty())
        .collect();
    let files = match markers.is_empty() {
        true => files,
        false => Listing::new(
            files
                .iter()
                .enumerate()
                .filter(|(i, _)| markers.binary_search(i).is_err())
                .map(|(_, f)| f),
        ),
    };
    if files.is_empty() && !place.base.is_empty() && seen == 0 {
        return Err(OriginError::NotFound {
            what,
            kind: "object or prefix",
        });
    }
    Ok(files)
}

/// Files listed in one walk at most (the bound of a listing from a peer too); past it the
/// listing fails, naming the bound, rather than leave files out.
const MAX_WALK: usize = 10_000_000;

/// Lists a local folder by walking it here rather than through `object_store`, whose walk ends
/// at the first unreadable folder or non-UTF-8 name: those are skipped with a warning, and
/// symlinks are followed only where they resolve inside a root (once per folder: no cycles).
async fn walk_place(
    ns: &Namespace,
    place: &Place,
    roots: Arc<Vec<PathBuf>>,
) -> Result<Listing, OriginError> {
    let base = PathBuf::from(format!("/{}", place.base));
    let b = base.clone();
    let found = tokio::task::spawn_blocking(move || walk(&b, &roots, MAX_WALK))
        .await
        .map_err(|e| OriginError::Protocol {
            what: ns.to_string(),
            detail: e.to_string(),
        })?
        .map_err(|limit| OriginError::Invalid {
            what: ns.to_string(),
            detail: format!("more than {limit} files under it: name a folder inside it"),
        })?;
    let mut files = ListingBuilder::default();
    for (path, size, etag) in found {
        let Some(rel) = path.strip_prefix(&base).ok().and_then(|r| r.to_str()) else {
            continue;
        };
        let Ok(rel) = locus_core::uri::normalize_path(rel) else {
            tracing::warn!(%ns, path = %path.display(), "skipping a file locus cannot name");
            continue;
        };
        let location = path.to_string_lossy();
        let location = location.trim_start_matches('/');
        files.push(&remote_of(
            ns,
            place,
            &rel,
            &rel,
            location,
            size,
            Locator {
                etag: Some(etag),
                ..Locator::default()
            },
        ));
    }
    if files.is_empty() && !base.is_dir() {
        return Err(OriginError::NotFound {
            what: ns.to_string(),
            kind: "file or folder",
        });
    }
    Ok(files.finish())
}

/// The identity `object_store`'s `LocalFileSystem` gives a file (checked by its reads).
fn local_etag(m: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    let mtime = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .unwrap_or_default()
        .as_micros();
    format!("{:x}-{mtime:x}-{:x}", m.ino(), m.len())
}

/// Every file under `base`: (path, size, identity). A symlinked folder is walked unless it
/// points to one of its own ancestors (a cycle); folders deeper than 128 levels are skipped.
/// `Err(limit)` when there are more than `limit` files: never a listing with files left out.
fn walk(
    base: &FsPath,
    roots: &[PathBuf],
    limit: usize,
) -> Result<Vec<(PathBuf, u64, String)>, usize> {
    let mut out = Vec::new();
    let mut stack = vec![(base.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "skipping an unreadable folder");
                continue;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.to_str().is_none() {
                tracing::warn!(path = %path.display(), "skipping a name that is not UTF-8");
                continue;
            }
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_symlink() {
                let here = std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
                match std::fs::canonicalize(&path) {
                    Ok(real)
                        if roots.iter().any(|r| real.starts_with(r))
                            && !here.starts_with(&real) => {}
                    _ => continue,
                }
            }
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_dir() && depth < 128 {
                stack.push((path, depth + 1));
            } else if meta.is_file() {
                if out.len() >= limit {
                    return Err(limit);
                }
                out.push((path, meta.len(), local_etag(&meta)));
            }
        }
    }
    Ok(out)
}

/// Reads `range` of an object, only as the version its listing saw.
async fn read_place(
    place: &Place,
    file: &RemoteFile,
    range: Range<u64>,
    denied_hint: &'static str,
) -> Result<ByteStream, OriginError> {
    let what = file.uri.clone();
    if range.start >= range.end || range.end > file.size {
        return Err(OriginError::Protocol {
            what,
            detail: format!("bad range {range:?} of a {}-byte file", file.size),
        });
    }
    let loc: Locator = serde_json::from_str(&file.locator).map_err(|e| OriginError::Protocol {
        what: what.clone(),
        detail: format!("bad locator: {e}"),
    })?;
    if let Some(roots) = &place.walk {
        // A local file: opened beneath its root through no symlink, read through that open.
        let real = PathBuf::from(format!("/{}", place.base));
        let f = crate::beneath::open_beneath(roots, &real)
            .map_err(|e| crate::beneath::error(&what, e, denied_hint))?;
        count_request("get");
        return crate::beneath::read(f, loc.etag, local_etag, range, what);
    }
    let path = place.path(&what)?;
    let opts = GetOptions {
        range: Some(GetRange::Bounded(range)),
        if_match: loc.etag,
        version: loc.version,
        ..Default::default()
    };
    count_request("get");
    let got = place
        .store
        .get_opts(&path, opts)
        .await
        .map_err(|e| map_err(e, &what, denied_hint))?;
    let w = what.clone();
    let body = got
        .into_stream()
        .map_err(move |e| match map_err(e, &w, denied_hint) {
            OriginError::Unavailable { what, detail, .. } => OriginError::Transient {
                what,
                detail,
                retry_after: None,
            },
            e => e,
        });
    Ok(body.boxed())
}

/// An origin of objects in an `object_store`: where a namespace sits, and its listings.
trait Places: Send + Sync + 'static {
    /// What to do about a denied request.
    const DENIED: &'static str;
    fn place(&self, ns: &Namespace) -> Result<Place, OriginError>;
    fn snapshots(&self) -> &Snapshots;
}

#[async_trait]
impl<T: Places> Origin for T {
    async fn resolve(&self, ns: &Namespace, revision: &str) -> Result<String, OriginError> {
        let place = self.place(ns)?;
        self.snapshots()
            .resolve(ns, revision, list_place(ns, &place, T::DENIED))
            .await
    }

    async fn list(&self, ns: &Namespace, rev_id: &str) -> Result<Listing, OriginError> {
        let place = self.place(ns)?;
        self.snapshots()
            .list(ns, rev_id, list_place(ns, &place, T::DENIED))
            .await
    }

    async fn read(&self, file: &RemoteFile, range: Range<u64>) -> Result<ByteStream, OriginError> {
        let place = self.place(&file_namespace(file)?)?;
        read_place(&place, file, range, T::DENIED).await
    }
}

/// The namespace a file's URI names (its key or path).
fn file_namespace(file: &RemoteFile) -> Result<Namespace, OriginError> {
    LocusUri::parse(&file.uri)
        .map(|u| u.namespace)
        .map_err(|e| OriginError::Protocol {
            what: file.path.clone(),
            detail: e.to_string(),
        })
}

/// Settings of the S3 origin. Credentials, region and endpoint come from the standard `AWS_*`
/// variables (and `AWS_PROFILE` / `~/.aws/credentials`, web identity and instance credentials);
/// the fields here override them.
#[derive(Clone, Debug, Default)]
pub struct S3Config {
    /// An S3-compatible endpoint (`--s3-endpoint`, else `AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
    /// Bucket-in-host addressing (`bucket.endpoint`) instead of path-style (`endpoint/bucket`).
    pub virtual_hosted: bool,
    /// Retries of throttled and failed requests.
    pub retry: RetryPolicy,
}

const S3_DENIED: &str =
    "check the daemon's AWS credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the instance role; the daemon reads them, not this client) and the bucket policy";

/// S3 and S3-compatible stores.
pub struct S3Origin {
    cfg: S3Config,
    stores: DashMap<String, Arc<dyn ObjectStore>>,
    snapshots: Snapshots,
}

impl S3Origin {
    /// An S3 origin with `cfg`.
    pub fn new(cfg: S3Config) -> Self {
        Self {
            cfg,
            stores: DashMap::new(),
            snapshots: Snapshots::default(),
        }
    }

    fn store(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>, OriginError> {
        if let Some(s) = self.stores.get(bucket) {
            return Ok(s.clone());
        }
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_virtual_hosted_style_request(self.cfg.virtual_hosted)
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(10))
                    .with_timeout(Duration::from_secs(120))
                    .with_pool_max_idle_per_host(256),
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: self.cfg.retry.base,
                    max_backoff: self.cfg.retry.cap,
                    base: 2.0,
                },
                max_retries: self.cfg.retry.attempts.saturating_sub(1) as usize,
                retry_timeout: Duration::from_secs(120),
            });
        let endpoint = self
            .cfg
            .endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
        if let Some(ep) = endpoint.filter(|e| !e.is_empty()) {
            b = b
                .with_allow_http(ep.starts_with("http://"))
                .with_endpoint(ep);
        }
        let profile = profile_credentials();
        if std::env::var_os("AWS_REGION").is_none()
            && std::env::var_os("AWS_DEFAULT_REGION").is_none()
        {
            if let Some(r) = profile.as_ref().and_then(|p| p.region.clone()) {
                b = b.with_region(r);
            }
        }
        if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
            if let Some((id, secret)) = profile.as_ref().and_then(|p| p.keys.clone()) {
                b = b.with_access_key_id(id).with_secret_access_key(secret);
                if let Some(t) = profile.as_ref().and_then(|p| p.token.clone()) {
                    b = b.with_token(t);
                }
            } else if let Some(p) = &profile {
                if p.other_kind {
                    tracing::warn!(
                        "AWS_PROFILE uses role_arn, sso or credential_process, which locus does not read; using the environment's credential chain (web identity, instance role)"
                    );
                }
            }
        }
        let store: Arc<dyn ObjectStore> =
            Arc::new(b.build().map_err(|e| OriginError::Protocol {
                what: format!("s3://{bucket}"),
                detail: one_line(&e),
            })?);
        // Peers may name any bucket: keep the clients of a bounded number.
        if self.stores.len() >= MAX_BUCKETS {
            self.stores.clear();
        }
        self.stores.insert(bucket.to_string(), store.clone());
        Ok(store)
    }
}

impl Places for S3Origin {
    const DENIED: &'static str = S3_DENIED;

    fn place(&self, ns: &Namespace) -> Result<Place, OriginError> {
        match ns {
            Namespace::S3 { bucket, prefix } => Ok(Place {
                store: self.store(bucket)?,
                base: prefix.clone(),
                root: bucket.clone(),
                name: prefix.rsplit('/').next().unwrap_or(prefix).to_string(),
                walk: None,
            }),
            other => Err(OriginError::Protocol {
                what: other.to_string(),
                detail: "not an s3:// name".into(),
            }),
        }
    }

    fn snapshots(&self) -> &Snapshots {
        &self.snapshots
    }
}

/// Credentials of `AWS_PROFILE` (default `default`) from the shared credentials file.
struct ProfileCredentials {
    keys: Option<(String, String)>,
    token: Option<String>,
    region: Option<String>,
    /// The profile names credentials another way (a role, SSO, a process).
    other_kind: bool,
}

fn profile_credentials() -> Option<ProfileCredentials> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let file = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".aws/credentials")))?;
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let section = ini_section(&text, &profile);
    let config = std::env::var_os("AWS_CONFIG_FILE")
        .map(PathBuf::from)
        .or_else(|| home.map(|h| h.join(".aws/config")))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    let config_name = if profile == "default" {
        profile.clone()
    } else {
        format!("profile {profile}")
    };
    let get = |s: &[(String, String)], k: &str| {
        s.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone())
    };
    let config_section = ini_section(&config, &config_name);
    let keys = get(&section, "aws_access_key_id").zip(get(&section, "aws_secret_access_key"));
    let other_kind = [
        "role_arn",
        "sso_session",
        "sso_start_url",
        "credential_process",
    ]
    .iter()
    .any(|k| get(&section, k).is_some() || get(&config_section, k).is_some());
    Some(ProfileCredentials {
        keys,
        token: get(&section, "aws_session_token"),
        region: get(&config_section, "region"),
        other_kind,
    })
}

/// `key = value` pairs of `[name]` in an INI text.
fn ini_section(text: &str, name: &str) -> Vec<(String, String)> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(h) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = h.trim() == name;
        } else if inside {
            if let Some((k, v)) = line.split_once('=') {
                out.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
    }
    out
}

const FILE_DENIED: &str = "check the file's permissions for the daemon's user";

/// Files and folders on a (shared) file system, limited to the `--file-root` folders: a peer
/// may ask for any file, so the daemon never reads outside them.
pub struct FileOrigin {
    store: Arc<LocalFileSystem>,
    roots: Arc<Vec<PathBuf>>,
    snapshots: Snapshots,
}

impl FileOrigin {
    /// Files under `roots` (each made canonical; one that does not exist is an error).
    pub fn new(roots: &[PathBuf]) -> Result<Self, OriginError> {
        let roots = roots
            .iter()
            .map(|r| {
                std::fs::canonicalize(r).map_err(|e| OriginError::NotFound {
                    what: format!("--file-root {}: {e}", r.display()),
                    kind: "folder",
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            store: Arc::new(LocalFileSystem::new()),
            roots: Arc::new(roots),
            snapshots: Snapshots::default(),
        })
    }
}

fn rel_to_fs_root(p: &FsPath) -> String {
    p.to_string_lossy().trim_start_matches('/').to_string()
}

impl Places for FileOrigin {
    const DENIED: &'static str = FILE_DENIED;

    /// The place of `path` after checking, with symlinks resolved, that it is under a root.
    fn place(&self, ns: &Namespace) -> Result<Place, OriginError> {
        let Namespace::File { path } = ns else {
            return Err(OriginError::Protocol {
                what: ns.to_string(),
                detail: "not a file:// name".into(),
            });
        };
        let real = std::fs::canonicalize(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => OriginError::NotFound {
                what: ns.to_string(),
                kind: "file or folder",
            },
            _ => OriginError::AccessDenied {
                what: ns.to_string(),
                detail: e.to_string(),
                hint: FILE_DENIED,
            },
        })?;
        if !self.roots.iter().any(|r| real.starts_with(r)) {
            return Err(OriginError::AccessDenied {
                what: ns.to_string(),
                detail: "outside every --file-root".into(),
                hint: "start the daemon with --file-root naming a folder that holds it",
            });
        }
        Ok(Place {
            store: self.store.clone(),
            base: rel_to_fs_root(&real),
            root: String::new(),
            name: path.rsplit('/').next().unwrap_or(path).to_string(),
            walk: Some(self.roots.clone()),
        })
    }

    fn snapshots(&self) -> &Snapshots {
        &self.snapshots
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn reads_ini_sections() {
        let t = "[default]\naws_access_key_id = A\n[other]\naws_access_key_id=B\n";
        assert_eq!(
            ini_section(t, "other"),
            vec![("aws_access_key_id".into(), "B".into())]
        );
        assert_eq!(ini_section(t, "default")[0].1, "A");
        assert!(ini_section(t, "none").is_empty());
    }

    #[tokio::test]
    async fn a_symlink_swapped_in_after_the_check_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir_all(outside.join("b")).unwrap();
        std::fs::write(root.join("a/b/x.bin"), b"hello world").unwrap();
        // The same inode outside the root: same size, same identity, so only the way the
        // path is opened can tell the two apart.
        std::fs::hard_link(root.join("a/b/x.bin"), outside.join("b/x.bin")).unwrap();
        let o = FileOrigin::new(std::slice::from_ref(&root)).unwrap();
        let ns = LocusUri::parse(&format!("file://{}/a/b/x.bin", root.display()))
            .unwrap()
            .namespace;
        let id = o.resolve(&ns, LATEST).await.unwrap();
        let x = o.list(&ns, &id).await.unwrap().to_vec().remove(0);
        let checked = o.place(&ns).unwrap();
        let got: Vec<Bytes> = read_place(&checked, &x, 0..5, FILE_DENIED)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(got.concat(), b"hello");
        // After the check, a folder on the path becomes a symlink out of the root.
        std::fs::rename(root.join("a"), root.join("a.old")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("a")).unwrap();
        let e = read_place(&checked, &x, 0..5, FILE_DENIED).await.err();
        assert!(
            matches!(&e, Some(OriginError::AccessDenied { detail, .. }) if detail.contains("symlink")),
            "{e:?}"
        );
        // Checked now, the path is outside the root.
        assert!(matches!(
            o.read(&x, 0..5).await,
            Err(OriginError::AccessDenied { .. })
        ));
        // The file itself swapped for a symlink (to the same inode's other name).
        std::fs::remove_file(root.join("a")).unwrap();
        std::fs::rename(root.join("a.old"), root.join("a")).unwrap();
        std::fs::remove_file(root.join("a/b/x.bin")).unwrap();
        std::os::unix::fs::symlink(outside.join("b/x.bin"), root.join("a/b/x.bin")).unwrap();
        let e = read_place(&checked, &x, 0..5, FILE_DENIED).await.err();
        assert!(matches!(e, Some(OriginError::AccessDenied { .. })), "{e:?}");
        // A FIFO swapped in neither hangs the read nor is read.
        std::fs::remove_file(root.join("a/b/x.bin")).unwrap();
        nix::unistd::mkfifo(&root.join("a/b/x.bin"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let e = tokio::time::timeout(
            Duration::from_secs(5),
            read_place(&checked, &x, 0..5, FILE_DENIED),
        )
        .await
        .expect("no hang");
        assert!(e.is_err());
    }

    #[tokio::test]
    async fn files_under_roots_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/x.bin"), b"hello world").unwrap();
        std::fs::write(root.join("top.txt"), b"top").unwrap();
        std::fs::write(dir.path().join("secret"), b"no").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("link")).unwrap();
        let o = FileOrigin::new(std::slice::from_ref(&root)).unwrap();
        let ns = LocusUri::parse(&format!("file://{}", root.display()))
            .unwrap()
            .namespace;
        let id = o.resolve(&ns, LATEST).await.unwrap();
        let files = o.list(&ns, &id).await.unwrap().to_vec();
        let paths: Vec<_> = files.iter().map(|f| f.path.as_str()).collect();
        assert!(
            paths.contains(&"a/b/x.bin") && paths.contains(&"top.txt"),
            "{paths:?}"
        );
        let x = files.iter().find(|f| f.path == "a/b/x.bin").unwrap();
        let got: Vec<Bytes> = o.read(x, 6..11).await.unwrap().try_collect().await.unwrap();
        let got = got.concat();
        assert_eq!(got, b"world");
        // A symlink out of the root is not listed, a name that is not UTF-8 is skipped (not
        // the end of the listing), and a symlink to an ancestor folder is not followed.
        assert!(!paths.contains(&"link"), "{paths:?}");
        std::os::unix::fs::symlink(root.join("a"), root.join("again")).unwrap();
        std::os::unix::fs::symlink(&root, root.join("a/loop")).unwrap();
        let bad = std::ffi::OsStr::from_bytes(b"bad\xff.bin");
        std::fs::write(root.join(bad), b"x").unwrap();
        let walked = walk(&root, std::slice::from_ref(&root), 1000).unwrap();
        // More files than the bound: an error, not a listing with files left out.
        let count = walked.len();
        assert_eq!(
            walk(&root, std::slice::from_ref(&root), count),
            Ok(walked.clone())
        );
        assert_eq!(
            walk(&root, std::slice::from_ref(&root), count - 1),
            Err(count - 1)
        );
        let names: Vec<_> = walked
            .iter()
            .map(|(p, ..)| {
                p.strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert!(names.contains(&"a/b/x.bin".to_string()), "{names:?}");
        assert!(!names.iter().any(|n| n.contains("bad")), "{names:?}");
        // Both names of the symlinked folder, and no walk around the loop.
        let mut xs: Vec<_> = names.iter().filter(|n| n.ends_with("x.bin")).collect();
        xs.sort();
        assert_eq!(xs, ["a/b/x.bin", "again/b/x.bin"], "{names:?}");
        std::fs::remove_file(root.join(bad)).unwrap();
        std::fs::remove_file(root.join("again")).unwrap();
        std::fs::remove_file(root.join("a/loop")).unwrap();
        // A symlink out of the root is refused when read, too.
        let mut l = x.clone();
        l.uri = format!("file://{}/link", root.display());
        assert!(matches!(
            o.read(&l, 0..2).await,
            Err(OriginError::AccessDenied { .. })
        ));
        // Outside every root.
        let out = LocusUri::parse(&format!("file://{}/secret", dir.path().display()))
            .unwrap()
            .namespace;
        assert!(matches!(
            o.resolve(&out, LATEST).await,
            Err(OriginError::AccessDenied { .. })
        ));
        // A rewritten file changes its identity; a read of the old listing fails, never mixes.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(root.join("a/b/x.bin"), b"HELLO WORLD").unwrap();
        assert!(matches!(
            o.read(x, 0..5).await,
            Err(OriginError::Changed { .. })
        ));
        let id2 = o.resolve(&ns, LATEST).await.unwrap();
        assert_ne!(id, id2);
        let x2 = o
            .list(&ns, &id2)
            .await
            .unwrap()
            .to_vec()
            .into_iter()
            .find(|f| f.path == "a/b/x.bin")
            .unwrap();
        assert_ne!(x.key, x2.key);
        // A single file names itself by its base name.
        let one = LocusUri::parse(&format!("file://{}/top.txt", root.display()))
            .unwrap()
            .namespace;
        let id = o.resolve(&one, LATEST).await.unwrap();
        let files = o.list(&one, &id).await.unwrap().to_vec();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].path, "top.txt");
        assert!(LocusUri::parse(&files[0].uri)
            .unwrap()
            .names_file("top.txt"));
    }
}
