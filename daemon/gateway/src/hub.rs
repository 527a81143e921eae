//! The Hub gateway: the part of the Hugging Face Hub's HTTP API that downloads use, answered
//! from the node's cache.
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /api/{models,datasets}/ORG/NAME[/revision/REV]` | `id`, `sha` (the commit), `siblings` (with `?blobs=true`: sizes, blob ids, LFS; with `?expand=P`: those properties only) |
//! | `GET /api/{..}/ORG/NAME/tree/REV[/PATH]?recursive=&cursor=` | the Hub's tree entries, 1,000 a page, `Link: rel="next"` naming the commit |
//! | `GET /api/{..}/ORG/NAME/auth-check` | 200 when the client may read the repo |
//! | `HEAD`/`GET /[datasets/]ORG/NAME/resolve/REV/PATH` | the bytes (with `Range`), `ETag`, `X-Repo-Commit`, `X-Linked-Etag`, `X-Linked-Size` |
//!
//! Listings and revisions come from the node's metadata cache (a branch resolves at the
//! namespace's owner once per TTL for the cluster), bytes from [`crate::body`]. LFS files are
//! served directly, not redirected: the gateway is the CDN. Errors carry the Hub's
//! `X-Error-Code` (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`, `GatedRepo`), which
//! clients turn into their own exceptions.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};
use axum::Router;
use bytes::Bytes;
use futures::StreamExt;
use locus_core::listing::tree_folders;
use locus_core::uri::encode_path;
use locus_core::uri::RepoType;
use locus_core::{Digest, Listing, LocusUri, Namespace, RemoteFile, Secret};
use locus_node::{Node, NodeError};
use locus_origin::OriginError;
use serde_json::json;

use crate::access::{AccessCache, Answer};
use crate::{parse_range, ByteRange};

/// Tree entries per page, as the Hub pages them.
pub const TREE_PAGE: usize = 1_000;
/// Sibling entries per piece of a repo info body (it is streamed).
const SIBLINGS_PIECE: usize = 1_000;

/// The Hub gateway of one node.
pub struct HubGateway {
    node: Arc<Node>,
    access: AccessCache,
}

impl HubGateway {
    /// A gateway that serves `node`'s cache, asking `access` who may read what.
    pub fn new(node: Arc<Node>, access: AccessCache) -> Arc<Self> {
        Arc::new(HubGateway { node, access })
    }

    /// The axum router: every path goes through one handler (Hub paths have any depth).
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new().fallback(handle).with_state(self.clone())
    }
}

/// An answer that is not a body: the Hub's error form.
#[derive(Debug)]
struct HubError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl HubError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        HubError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        HubError::new(StatusCode::BAD_REQUEST, "", message)
    }

    fn response(&self) -> Response<Body> {
        let mut r = Response::new(Body::from(json!({ "error": self.message }).to_string()));
        *r.status_mut() = self.status;
        let h = r.headers_mut();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        if !self.code.is_empty() {
            h.insert("x-error-code", HeaderValue::from_static(self.code));
        }
        // Header values cannot hold every character a message may: those are replaced.
        let clean: String = self
            .message
            .chars()
            .map(|c| match c {
                ' '..='~' => c,
                _ => '?',
            })
            .collect();
        if let Ok(v) = HeaderValue::from_str(&clean) {
            h.insert("x-error-message", v);
        }
        r
    }
}

impl From<NodeError> for HubError {
    fn from(e: NodeError) -> Self {
        let msg = e.to_string();
        match &e {
            NodeError::Uri(_) => HubError::bad_request(msg),
            NodeError::NotFound(_) | NodeError::IsFolder(_) => {
                HubError::new(StatusCode::NOT_FOUND, "EntryNotFound", msg)
            }
            NodeError::Origin(OriginError::NotFound { kind, .. }) => {
                let code = match *kind {
                    "repository" => "RepoNotFound",
                    "revision" => "RevisionNotFound",
                    _ => "EntryNotFound",
                };
                HubError::new(StatusCode::NOT_FOUND, code, msg)
            }
            // The node's own token cannot read the repo: the client is not to blame.
            NodeError::Origin(OriginError::AccessDenied { .. }) => {
                HubError::new(StatusCode::BAD_GATEWAY, "", msg)
            }
            NodeError::Origin(OriginError::Invalid { .. }) => HubError::bad_request(msg),
            NodeError::DigestMismatch(_) => HubError::new(StatusCode::BAD_GATEWAY, "", msg),
            NodeError::Origin(OriginError::NotConfigured { .. }) | NodeError::Internal(_) => {
                HubError::new(StatusCode::INTERNAL_SERVER_ERROR, "", msg)
            }
            _ => HubError::new(StatusCode::SERVICE_UNAVAILABLE, "", msg),
        }
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Call {
    Info {
        repo: Repo,
        rev: Option<String>,
    },
    Tree {
        repo: Repo,
        rev: String,
        path: String,
    },
    AuthCheck {
        repo: Repo,
    },
    Resolve {
        repo: Repo,
        rev: String,
        path: String,
    },
}

impl Call {
    /// The `api` label of its metrics.
    fn label(&self) -> &'static str {
        match self {
            Call::Info { .. } => "hub.info",
            Call::Tree { .. } => "hub.tree",
            Call::AuthCheck { .. } => "hub.auth_check",
            Call::Resolve { .. } => "hub.resolve",
        }
    }

    fn repo(&self) -> &Repo {
        match self {
            Call::Info { repo, .. }
            | Call::Tree { repo, .. }
            | Call::AuthCheck { repo }
            | Call::Resolve { repo, .. } => repo,
        }
    }
}

/// A repo as a request names it.
#[derive(Debug, PartialEq, Eq, Clone)]
struct Repo {
    kind: RepoType,
    org: String,
    name: String,
}

impl Repo {
    fn id(&self) -> String {
        format!("{}/{}", self.org, self.name)
    }

    /// Its locus URI at `rev` (default branch when `None`), for `path`: parsed by the same
    /// rules as every URI (no `..`, valid names).
    fn uri(&self, rev: Option<&str>, path: &str) -> Result<LocusUri, HubError> {
        let kind = match self.kind {
            RepoType::Dataset => "datasets/",
            RepoType::Model => "",
        };
        let rev = rev
            .map(|r| format!("@{}", r.replace('/', "%2F")))
            .unwrap_or_default();
        LocusUri::parse(&format!(
            "hf://{kind}{}/{}{rev}/{path}",
            self.org, self.name
        ))
        .map_err(|e| HubError::bad_request(e.to_string()))
    }

    fn namespace(&self) -> Result<Namespace, HubError> {
        Ok(self.uri(None, "")?.namespace)
    }
}

/// Parses a request path into a [`Call`]. Segments are percent-decoded; only a revision may
/// hold a `/` (`refs%2Fpr%2F1`), and no segment may be empty, `.` or `..`.
fn parse_call(path: &str) -> Result<Call, HubError> {
    let segs: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| HubError::bad_request("a path segment is not UTF-8"))
        })
        .collect::<Result<_, _>>()?;
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let plain = |seg: &str| !seg.is_empty() && seg != "." && seg != ".." && !seg.contains('/');
    let repo = |plural: &str, org: &str, name: &str| -> Result<Repo, HubError> {
        if !plain(org) || !plain(name) {
            return Err(HubError::bad_request("bad repo name"));
        }
        Ok(Repo {
            kind: match plural {
                "datasets" => RepoType::Dataset,
                _ => RepoType::Model,
            },
            org: org.to_string(),
            name: name.to_string(),
        })
    };
    let file_path = |parts: &[&str]| -> Result<String, HubError> {
        if parts.iter().any(|p| !plain(p)) {
            return Err(HubError::bad_request("bad file path"));
        }
        Ok(parts.join("/"))
    };
    let not_found = || HubError::new(StatusCode::NOT_FOUND, "", "no such API path");
    match s.as_slice() {
        ["api", plural @ ("models" | "datasets"), org, name, rest @ ..] => {
            let repo = repo(plural, org, name)?;
            match rest {
                [] => Ok(Call::Info { repo, rev: None }),
                ["revision", rev @ ..] if !rev.is_empty() => Ok(Call::Info {
                    repo,
                    rev: Some(rev.join("/")),
                }),
                ["auth-check"] => Ok(Call::AuthCheck { repo }),
                ["tree", rev, path @ ..] => Ok(Call::Tree {
                    repo,
                    rev: rev.to_string(),
                    path: file_path(path.strip_suffix(&[""]).unwrap_or(path))?,
                }),
                _ => Err(not_found()),
            }
        }
        ["datasets", org, name, "resolve", rev, path @ ..] if !path.is_empty() => {
            Ok(Call::Resolve {
                repo: repo("datasets", org, name)?,
                rev: rev.to_string(),
                path: file_path(path)?,
            })
        }
        [org, name, "resolve", rev, path @ ..] if !path.is_empty() && *org != "api" => {
            Ok(Call::Resolve {
                repo: repo("models", org, name)?,
                rev: rev.to_string(),
                path: file_path(path)?,
            })
        }
        _ => Err(not_found()),
    }
}

/// The client's token: `Authorization: Bearer T`. Another scheme is refused, not ignored.
fn client_token(headers: &HeaderMap) -> Result<Option<Secret>, HubError> {
    let Some(v) = headers.get("authorization") else {
        return Ok(None);
    };
    let unauthorized = || {
        HubError::new(
            StatusCode::UNAUTHORIZED,
            "",
            "expected Authorization: Bearer TOKEN",
        )
    };
    let v = v.to_str().map_err(|_| unauthorized())?;
    match v.strip_prefix("Bearer ").map(str::trim) {
        Some(t) if !t.is_empty() => Ok(Some(Secret::new(t))),
        _ => Err(unauthorized()),
    }
}

async fn handle(
    State(gw): State<Arc<HubGateway>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response<Body> {
    let (label, resp) = match parse_call(uri.path()) {
        Ok(call) => {
            let label = call.label();
            let resp = match answer(&gw, &method, &uri, &headers, call).await {
                Ok(r) => r,
                Err(e) => e.response(),
            };
            (label, resp)
        }
        Err(e) => ("hub.other", e.response()),
    };
    crate::counted(label, resp)
}

async fn answer(
    gw: &Arc<HubGateway>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    call: Call,
) -> Result<Response<Body>, HubError> {
    let allowed = match &call {
        Call::Resolve { .. } => *method == Method::GET || *method == Method::HEAD,
        _ => *method == Method::GET,
    };
    if !allowed {
        return Err(HubError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "",
            "this gateway serves downloads only",
        ));
    }
    let token = client_token(headers)?;
    let ns = call.repo().namespace()?;
    match gw.access.check(&ns, token.as_ref()).await {
        Ok(Answer::Yes) => {}
        Ok(Answer::Denied(why)) => {
            return Err(HubError::new(
                StatusCode::UNAUTHORIZED,
                "GatedRepo",
                format!(
                    "Access to {ns} is restricted: the Hub does not let this client read it ({why}); send a token that has access"
                ),
            ))
        }
        Ok(Answer::Missing(_)) => {
            return Err(HubError::new(
                StatusCode::NOT_FOUND,
                "RepoNotFound",
                format!("Repository not found: {ns}"),
            ))
        }
        Err(e) => {
            return Err(HubError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "",
                format!("could not check access with the Hub: {e}"),
            ))
        }
    }
    let query = uri.query().unwrap_or("");
    match call {
        Call::AuthCheck { .. } => Ok(json_response(Bytes::from_static(b"{}"))),
        Call::Info { repo, rev } => info(gw, &repo, rev.as_deref(), query).await,
        Call::Tree { repo, rev, path } => tree(gw, &repo, &rev, &path, query, headers).await,
        Call::Resolve { repo, rev, path } => resolve(gw, method, &repo, &rev, &path, headers).await,
    }
}

fn json_response(body: impl Into<Body>) -> Response<Body> {
    let mut r = Response::new(body.into());
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    r
}

/// A query parameter's value (the first), percent-decoded.
fn param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

fn truthy(v: Option<String>) -> bool {
    v.is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
}

/// The listing of `repo` at `rev` and the commit it is at.
async fn listing(
    gw: &HubGateway,
    repo: &Repo,
    rev: Option<&str>,
) -> Result<(String, Arc<Listing>), HubError> {
    let r = gw.node.resolve(&repo.uri(rev, "")?).await?;
    Ok((r.revision, r.files.listing().clone()))
}

/// A file's git blob id as the Hub lists it (an LFS file's is its pointer's), and for an LFS
/// file its SHA-256 and pointer length.
fn blob_fields(f: &RemoteFile) -> (String, Option<(&str, usize)>) {
    match &f.digest {
        Some(Digest::Sha256(sha)) => {
            let pointer = locus_core::lfs_pointer(sha, f.size);
            (
                locus_core::git_blob_id(pointer.as_bytes()),
                Some((sha.as_str(), pointer.len())),
            )
        }
        Some(Digest::GitBlobSha1(oid)) => (oid.clone(), None),
        None => (String::new(), None),
    }
}

async fn info(
    gw: &HubGateway,
    repo: &Repo,
    rev: Option<&str>,
    query: &str,
) -> Result<Response<Body>, HubError> {
    let (sha, all) = listing(gw, repo, rev).await?;
    let blobs = truthy(param(query, "blobs"));
    let id = repo.id();
    let mut head = json!({ "_id": id, "id": id, "sha": sha });
    if repo.kind == RepoType::Model {
        head["modelId"] = json!(id);
    }
    // `expand=sha` (repeated for more): as the Hub, `_id`, `id` and the properties named only;
    // without `siblings` no file is named (a client resolving a branch of millions of files).
    let expand: Vec<String> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| matches!(*k, "expand" | "expand[]" | "expand%5B%5D"))
        .map(|(_, v)| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    if !expand.is_empty() {
        if let Some(all) = head.as_object_mut() {
            all.retain(|k, _| k == "_id" || k == "id" || expand.contains(k));
        }
        if !expand.iter().any(|e| e == "siblings") {
            return Ok(json_response(Body::from(head.to_string())));
        }
    }
    // `{…head…, "siblings": [` … `]}`, the siblings streamed a thousand at a time.
    let mut open = head.to_string();
    open.pop();
    open.push_str(",\"siblings\":[");
    let pieces = all.len().div_ceil(SIBLINGS_PIECE);
    let body = futures::stream::iter(
        std::iter::once(Bytes::from(open))
            .chain((0..pieces).map(move |p| {
                let mut out = String::new();
                for i in p * SIBLINGS_PIECE..((p + 1) * SIBLINGS_PIECE).min(all.len()) {
                    if i > 0 {
                        out.push(',');
                    }
                    let mut e = json!({ "rfilename": all.path(i) });
                    if blobs {
                        if let Some(f) = all.get(i) {
                            let (oid, lfs) = blob_fields(&f);
                            e["size"] = json!(f.size);
                            e["blobId"] = json!(oid);
                            if let Some((sha, pointer)) = lfs {
                                e["lfs"] = json!({ "sha256": sha, "size": f.size, "pointerSize": pointer });
                            }
                        }
                    }
                    out.push_str(&e.to_string());
                }
                Bytes::from(out)
            }))
            .chain(std::iter::once(Bytes::from_static(b"]}"))),
    )
    .map(Ok::<_, std::convert::Infallible>);
    Ok(json_response(Body::from_stream(body)))
}

async fn tree(
    gw: &HubGateway,
    repo: &Repo,
    rev: &str,
    path: &str,
    query: &str,
    headers: &HeaderMap,
) -> Result<Response<Body>, HubError> {
    let (sha, all) = listing(gw, repo, Some(rev)).await?;
    let recursive = truthy(param(query, "recursive"));
    let prefix = match path.is_empty() {
        true => String::new(),
        false => format!("{path}/"),
    };
    let range = all.under(&prefix);
    if range.is_empty() && !path.is_empty() {
        return Err(HubError::new(
            StatusCode::NOT_FOUND,
            "EntryNotFound",
            format!("{path} does not exist at {sha}"),
        ));
    }
    // The cursor is the index of the next file in the listing at the commit (the next page's
    // link names the commit, so every page reads one listing).
    let start = match param(query, "cursor") {
        None => range.start,
        Some(c) => match c.parse::<usize>() {
            Ok(i) if range.contains(&i) => i,
            _ => return Err(HubError::bad_request("bad cursor")),
        },
    };
    let mut prev = match start > range.start {
        true => tree_folders(&prefix, all.path(start - 1), recursive),
        false => Vec::new(),
    };
    let mut entries = Vec::new();
    let mut i = start;
    while i < range.end && entries.len() < TREE_PAGE {
        let p = all.path(i);
        let dirs = tree_folders(&prefix, p, recursive);
        for d in &dirs {
            if !prev.contains(d) {
                entries.push(
                    json!({ "type": "directory", "oid": "0".repeat(40), "size": 0, "path": d }),
                );
            }
        }
        let deep = !recursive && p[prefix.len()..].contains('/');
        if deep {
            // Past the rest of that folder at once: one level costs its entries, not the tree's.
            let inside = all.under(&format!("{}/", dirs[0]));
            i = inside.end.max(i + 1);
            prev = tree_folders(&prefix, all.path(i - 1), recursive);
            continue;
        }
        prev = dirs;
        if let Some(f) = all.get(i) {
            let (oid, lfs) = blob_fields(&f);
            let mut e = json!({ "type": "file", "oid": oid, "size": f.size, "path": f.path });
            if let Some((sha, pointer)) = lfs {
                e["lfs"] = json!({ "oid": sha, "size": f.size, "pointerSize": pointer });
            }
            entries.push(e);
        }
        i += 1;
    }
    let mut r = json_response(serde_json::Value::Array(entries).to_string());
    if i < range.end {
        let plural = repo.kind.api_plural();
        let at = match path.is_empty() {
            true => String::new(),
            false => format!("/{}", encode_path(path)),
        };
        let base = headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .filter(|h| {
                h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
            })
            .map(|h| format!("http://{h}"))
            .unwrap_or_default();
        let link = format!(
            "<{base}/api/{plural}/{}/tree/{sha}{at}?recursive={recursive}&cursor={i}>; rel=\"next\"",
            repo.id()
        );
        if let Ok(v) = HeaderValue::from_str(&link) {
            r.headers_mut().insert("link", v);
        }
    }
    Ok(r)
}

async fn resolve(
    gw: &HubGateway,
    method: &Method,
    repo: &Repo,
    rev: &str,
    path: &str,
    headers: &HeaderMap,
) -> Result<Response<Body>, HubError> {
    let uri = repo.uri(Some(rev), path)?;
    let r = gw.node.resolve(&uri).await?;
    let file = match (r.is_file, r.files.first()) {
        (true, Some(f)) => f,
        _ => {
            return Err(HubError::new(
                StatusCode::NOT_FOUND,
                "EntryNotFound",
                format!("{path} does not exist at {}", r.revision),
            ))
        }
    };
    let size = file.size;
    let range = parse_range(headers.get("range").and_then(|v| v.to_str().ok()), size);
    let mut resp = Response::new(Body::empty());
    let h = resp.headers_mut();
    let value = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""));
    h.insert("x-repo-commit", value(&r.revision));
    h.insert("accept-ranges", HeaderValue::from_static("bytes"));
    h.insert(
        "content-type",
        HeaderValue::from_static("application/octet-stream"),
    );
    match &file.digest {
        Some(Digest::Sha256(sha)) => {
            let etag = value(&format!("\"{sha}\""));
            h.insert("x-linked-etag", etag.clone());
            h.insert("etag", etag);
            h.insert("x-linked-size", HeaderValue::from(size));
        }
        Some(Digest::GitBlobSha1(oid)) => {
            h.insert("etag", value(&format!("\"{oid}\"")));
        }
        None => {}
    }
    let bytes = match range {
        ByteRange::Unsatisfiable => {
            let mut e = HubError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "",
                format!("range not satisfiable: {path} has {size} bytes"),
            )
            .response();
            e.headers_mut()
                .insert("content-range", value(&format!("bytes */{size}")));
            return Ok(e);
        }
        ByteRange::Whole => 0..size,
        ByteRange::Part(r) => {
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            resp.headers_mut().insert(
                "content-range",
                value(&format!("bytes {}-{}/{size}", r.start, r.end - 1)),
            );
            r
        }
    };
    resp.headers_mut()
        .insert("content-length", HeaderValue::from(bytes.end - bytes.start));
    if *method == Method::GET {
        let h = crate::body::register(&gw.node, &file).await?;
        *resp.body_mut() = crate::body::verified(gw.node.clone(), h, file, bytes, "hub.resolve");
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(kind: RepoType) -> Repo {
        Repo {
            kind,
            org: "acme".into(),
            name: "m".into(),
        }
    }

    #[test]
    fn requests_parse_into_calls_and_bad_paths_are_refused() {
        let m = repo(RepoType::Model);
        let d = repo(RepoType::Dataset);
        assert_eq!(
            parse_call("/api/models/acme/m").unwrap(),
            Call::Info {
                repo: m.clone(),
                rev: None
            }
        );
        assert_eq!(
            parse_call("/api/models/acme/m/revision/refs%2Fpr%2F1").unwrap(),
            Call::Info {
                repo: m.clone(),
                rev: Some("refs/pr/1".into())
            }
        );
        assert_eq!(
            parse_call("/api/datasets/acme/m/tree/main/a/b").unwrap(),
            Call::Tree {
                repo: d.clone(),
                rev: "main".into(),
                path: "a/b".into()
            }
        );
        assert_eq!(
            parse_call("/api/models/acme/m/tree/main").unwrap(),
            Call::Tree {
                repo: m.clone(),
                rev: "main".into(),
                path: "".into()
            }
        );
        assert_eq!(
            parse_call("/acme/m/resolve/main/sub/w%20x.bin").unwrap(),
            Call::Resolve {
                repo: m.clone(),
                rev: "main".into(),
                path: "sub/w x.bin".into()
            }
        );
        assert_eq!(
            parse_call("/datasets/acme/m/resolve/abc/f").unwrap(),
            Call::Resolve {
                repo: d,
                rev: "abc".into(),
                path: "f".into()
            }
        );
        assert_eq!(
            parse_call("/api/models/acme/m/auth-check").unwrap(),
            Call::AuthCheck { repo: m }
        );
        for bad in [
            "/acme/m/resolve/main/../../etc/passwd",
            "/acme/m/resolve/main/a/%2E%2E/b",
            "/acme/m/resolve/main/a%2Fb",
            "/acme/m/resolve/main/a//b",
            "/api/models/ac%2Fme/m",
            "/acme/m/resolve/main/%FF",
        ] {
            let e = parse_call(bad).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}: {e:?}");
        }
        for missing in [
            "/",
            "/api/spaces/a/b",
            "/acme/m/resolve/main",
            "/api/models/a/b/other",
        ] {
            assert_eq!(
                parse_call(missing).unwrap_err().status,
                StatusCode::NOT_FOUND,
                "{missing}"
            );
        }
        // Names the URI rules refuse are refused here too.
        assert!(repo(RepoType::Model).uri(Some("a b"), "x").is_err());
        assert!(Repo {
            kind: RepoType::Model,
            org: "datasets".into(),
            name: "x".into()
        }
        .namespace()
        .is_err());
    }

    #[test]
    fn tokens_are_bearer_tokens() {
        let mut h = HeaderMap::new();
        assert!(client_token(&h).unwrap().is_none());
        h.insert("authorization", HeaderValue::from_static("Bearer hf_x"));
        assert_eq!(client_token(&h).unwrap().unwrap().expose(), "hf_x");
        for bad in ["Basic abc", "Bearer ", "hf_x"] {
            h.insert("authorization", HeaderValue::from_static(bad));
            assert_eq!(
                client_token(&h).unwrap_err().status,
                StatusCode::UNAUTHORIZED,
                "{bad}"
            );
        }
    }

    #[test]
    fn folders_are_listed_as_the_hub_lists_them() {
        assert_eq!(tree_folders("", "a/b/c.txt", true), vec!["a", "a/b"]);
        assert_eq!(tree_folders("", "a/b/c.txt", false), vec!["a"]);
        assert_eq!(tree_folders("", "c.txt", false), Vec::<String>::new());
        assert_eq!(tree_folders("a/", "a/b/c.txt", true), vec!["a/b"]);
        assert_eq!(encode_path("a b/c%d"), "a%20b/c%25d");
    }
}
