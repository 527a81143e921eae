//! The HTTP side of the simulated Hub.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::body::{Body, HttpBody as _};
use axum::extract::{Query, State as AxState};
use axum::http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};
use axum::Router;
use bytes::Bytes;
use serde_json::json;

use crate::{Faults, SimFile, SimOptions, State, Stats, Tree};

/// A running simulated Hub. Dropping it stops the server.
pub struct HubSim {
    state: Arc<State>,
    addr: SocketAddr,
    s3_addr: SocketAddr,
    stop: Option<tokio::sync::watch::Sender<bool>>,
}

impl Drop for HubSim {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
    }
}

impl HubSim {
    /// Starts a Hub on `opts.listen` and its CDN on another loopback address.
    pub async fn start(opts: SimOptions) -> std::io::Result<HubSim> {
        let hub = tokio::net::TcpListener::bind(opts.listen).await?;
        // A second host name for the CDN, so that clients treat the redirect as cross-origin
        // (and must not forward the token), as with the real Hub.
        let cdn = match tokio::net::TcpListener::bind("127.0.0.2:0").await {
            Ok(l) => l,
            Err(_) => tokio::net::TcpListener::bind("127.0.0.1:0").await?,
        };
        let s3 = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = hub.local_addr()?;
        let cdn_addr = cdn.local_addr()?;
        let s3_addr = s3.local_addr()?;
        let state = Arc::new(State {
            repos: RwLock::new(Default::default()),
            faults: Mutex::new(opts.faults),
            stats: Arc::new(Mutex::new(Stats::default())),
            lfs_threshold: opts.lfs_threshold,
            page_size: opts.page_size.max(1),
            hub_url: format!("http://{addr}"),
            cdn_url: format!("http://{cdn_addr}"),
        });
        let app = Router::new().fallback(handle).with_state(state.clone());
        let s3_app = Router::new()
            .fallback(crate::s3::handle)
            .with_state(state.clone());
        let (stop, rx) = tokio::sync::watch::channel(false);
        for (l, app) in [(hub, app.clone()), (cdn, app), (s3, s3_app)] {
            let mut rx = rx.clone();
            tokio::spawn(async move {
                let _ = axum::serve(l, app)
                    .with_graceful_shutdown(async move {
                        let _ = rx.wait_for(|v| *v).await;
                    })
                    .await;
            });
        }
        Ok(HubSim {
            state,
            addr,
            s3_addr,
            stop: Some(stop),
        })
    }

    pub(crate) fn state(&self) -> &State {
        &self.state
    }

    /// The S3 endpoint (path-style) that serves the repos' main branches as buckets: bucket
    /// `ORG`, keys `NAME/PATH` (see the `s3` module).
    pub fn s3_url(&self) -> String {
        format!("http://{}", self.s3_addr)
    }

    /// The Hub's base URL (what `HF_ENDPOINT` is set to).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

pub(crate) fn count(st: &State, kind: &str) {
    let mut s = st.stats.lock().unwrap_or_else(|p| p.into_inner());
    *s.requests.entry(kind.to_string()).or_default() += 1;
}

fn error(status: StatusCode, code: &str, msg: &str) -> Response<Body> {
    let mut r = Response::new(Body::from(json!({ "error": msg }).to_string()));
    *r.status_mut() = status;
    if !code.is_empty() {
        r.headers_mut().insert(
            "x-error-code",
            HeaderValue::from_str(code).unwrap_or(HeaderValue::from_static("Error")),
        );
    }
    r.headers_mut().insert(
        "x-error-message",
        HeaderValue::from_str(msg).unwrap_or(HeaderValue::from_static("error")),
    );
    r
}

fn json_response(v: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Body::from(v.to_string()));
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    r
}

pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Applies armed failures; returns a response when this request must fail.
pub(crate) fn injected_failure(st: &State, kind: &str) -> Option<Response<Body>> {
    let mut f = st.faults.lock().unwrap_or_else(|p| p.into_inner());
    let group = if kind.starts_with("api") {
        "api"
    } else if kind.starts_with("s3") {
        "s3"
    } else if kind.starts_with("cdn") {
        "cdn"
    } else {
        "resolve"
    };
    let rule = f
        .fail
        .iter_mut()
        .find(|r| r.count > 0 && (r.kind == "any" || r.kind == group))?;
    rule.count -= 1;
    let status = StatusCode::from_u16(rule.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let ra = rule.retry_after;
    drop(f);
    count(st, "failed");
    let mut r = error(status, "", "injected failure");
    if let Some(s) = ra {
        r.headers_mut().insert("retry-after", HeaderValue::from(s));
    }
    Some(r)
}

/// Whether `repo` (`ORG/NAME`, `datasets/ORG/NAME`) is one of the gated ones, and whether any
/// is (then the others are public).
fn gating(st: &State, kind: &str, repo_id: &str) -> (bool, bool) {
    let f = st.faults.lock().unwrap_or_else(|p| p.into_inner());
    let name = match kind {
        "dataset" => format!("datasets/{repo_id}"),
        _ => repo_id.to_string(),
    };
    (f.gated.contains(&name), !f.gated.is_empty())
}

/// Whether a request for `repo_id`'s files (`files`) or its info and tree may go on: a repo
/// not gated when some are is public; a gated one's info and tree are public too.
fn allowed(st: &State, headers: &HeaderMap, kind: &str, repo_id: &str, files: bool) -> bool {
    match gating(st, kind, repo_id) {
        (false, true) => true,
        (true, true) if !files => true,
        _ => authorized(st, headers),
    }
}

fn authorized(st: &State, headers: &HeaderMap) -> bool {
    let f = st.faults.lock().unwrap_or_else(|p| p.into_inner());
    if f.token.is_none() && f.tokens.is_empty() {
        return true;
    }
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let ok = presented.is_some_and(|p| f.token.iter().chain(&f.tokens).any(|t| t == p));
    drop(f);
    if ok {
        st.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .authorized += 1;
    }
    ok
}

async fn handle(
    AxState(st): AxState<Arc<State>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
    body: Bytes,
) -> Response<Body> {
    // `expand` may be repeated (`expand=sha&expand=siblings`, as huggingface_hub sends a list).
    let expand: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "expand" || k == "expand[]")
        .map(|(_, v)| v.as_str())
        .collect();
    let query: BTreeMap<String, String> = pairs.iter().cloned().collect();
    let delay = st.faults.lock().unwrap_or_else(|p| p.into_inner()).delay_ms;
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let segs: Vec<String> = uri
        .path()
        .trim_start_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let s: Vec<&str> = segs.iter().map(|s| s.as_str()).collect();
    match s.as_slice() {
        ["_sim", "stats"] => json_response(
            serde_json::to_value(st.stats.lock().unwrap_or_else(|p| p.into_inner()).clone())
                .unwrap_or_default(),
        ),
        ["_sim", "reset"] => {
            *st.stats.lock().unwrap_or_else(|p| p.into_inner()) = Stats::default();
            json_response(json!({}))
        }
        ["_sim", "faults"] if method == Method::POST => {
            match serde_json::from_slice::<Faults>(&body) {
                Ok(f) => {
                    *st.faults.lock().unwrap_or_else(|p| p.into_inner()) = f;
                    json_response(json!({}))
                }
                Err(e) => error(StatusCode::BAD_REQUEST, "", &e.to_string()),
            }
        }
        ["cdn", sha] => {
            let kind = if method == Method::HEAD {
                "cdn_head"
            } else {
                "cdn"
            };
            count(&st, kind);
            if headers.contains_key("authorization") {
                st.stats
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .cdn_authorized += 1;
            }
            if let Some(r) = injected_failure(&st, kind) {
                return r;
            }
            let file = find_blob(&st, sha);
            match file {
                Some(f) => serve_bytes(&st, &method, &headers, &f, HeaderMap::new()),
                None => error(StatusCode::NOT_FOUND, "", "no such blob"),
            }
        }
        ["api", plural @ ("models" | "datasets"), org, name, rest @ ..] => {
            let kind = if *plural == "models" {
                "model"
            } else {
                "dataset"
            };
            let repo_id = format!("{org}/{name}");
            let what = match rest {
                [] => "api_info",
                ["revision", ..] => "api_revision",
                ["tree", ..] => "api_tree",
                ["auth-check"] => "api_auth_check",
                _ => "api_other",
            };
            count(&st, what);
            if let Some(r) = injected_failure(&st, what) {
                return r;
            }
            if !allowed(&st, &headers, kind, &repo_id, what == "api_auth_check") {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "GatedRepo",
                    "Access to this repo is restricted; you must be authenticated",
                );
            }
            let r = match rest {
                ["auth-check"] => match lookup(&st, kind, &repo_id, "main") {
                    Ok(_) => json_response(json!({})),
                    Err(r) => r,
                },
                [] => repo_info(&st, kind, &repo_id, "main", &expand),
                ["revision", rev @ ..] => repo_info(&st, kind, &repo_id, &rev.join("/"), &expand),
                ["tree", rev, path @ ..] => tree(&st, kind, &repo_id, rev, &path.join("/"), &query),
                _ => error(StatusCode::NOT_FOUND, "", "unknown API path"),
            };
            if let Some(n) = r.body().size_hint().exact() {
                let mut s = st.stats.lock().unwrap_or_else(|p| p.into_inner());
                *s.api_bytes.entry(what.to_string()).or_default() += n;
            }
            r
        }
        ["datasets", org, name, "resolve", rev, path @ ..] => resolve(
            &st,
            &method,
            &headers,
            "dataset",
            &format!("{org}/{name}"),
            rev,
            &path.join("/"),
        ),
        [org, name, "resolve", rev, path @ ..] => resolve(
            &st,
            &method,
            &headers,
            "model",
            &format!("{org}/{name}"),
            rev,
            &path.join("/"),
        ),
        _ => error(StatusCode::NOT_FOUND, "", "not found"),
    }
}

fn find_blob(st: &State, sha: &str) -> Option<Arc<SimFile>> {
    let repos = st.repos.read().unwrap_or_else(|p| p.into_inner());
    repos
        .values()
        .flat_map(|r| r.commits.values())
        .flat_map(|t| t.values())
        .find(|f| f.sha256 == sha)
        .cloned()
}

/// Looks up a repo and revision: the commit and its tree, or the Hub's error.
#[allow(clippy::result_large_err)]
fn lookup(
    st: &State,
    kind: &str,
    repo_id: &str,
    rev: &str,
) -> Result<(String, Tree), Response<Body>> {
    let repos = st.repos.read().unwrap_or_else(|p| p.into_inner());
    let Some(repo) = repos.get(&(kind.to_string(), repo_id.to_string())) else {
        return Err(error(
            StatusCode::NOT_FOUND,
            "RepoNotFound",
            "Repository not found",
        ));
    };
    let sha = repo.branches.get(rev).cloned().unwrap_or(rev.to_string());
    match repo.commits.get(&sha) {
        Some(t) => Ok((sha, t.clone())),
        None => Err(error(
            StatusCode::NOT_FOUND,
            "RevisionNotFound",
            &format!("Invalid rev id: {rev}"),
        )),
    }
}

/// A repo's info at `rev`. With `expand`, as the Hub: `_id`, `id` and the properties named only
/// (`expand=sha` is a revision's commit without the list of every file).
fn repo_info(st: &State, kind: &str, repo_id: &str, rev: &str, expand: &[&str]) -> Response<Body> {
    let (sha, tree) = match lookup(st, kind, repo_id, rev) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let mut v = json!({
        "_id": format!("{:x}", repo_id.len()),
        "id": repo_id,
        "sha": sha,
        "private": false,
        "gated": match gating(st, kind, repo_id).0 {
            true => json!("auto"),
            false => json!(false),
        },
        "disabled": false,
        "downloads": 0,
        "likes": 0,
        "tags": [],
        "lastModified": "2026-01-01T00:00:00.000Z",
        "createdAt": "2026-01-01T00:00:00.000Z",
    });
    if kind == "model" {
        v["modelId"] = json!(repo_id);
    }
    if expand.is_empty() || expand.contains(&"siblings") {
        let siblings: Vec<_> = tree.keys().map(|p| json!({ "rfilename": p })).collect();
        v["siblings"] = json!(siblings);
    }
    if let (false, Some(all)) = (expand.is_empty(), v.as_object_mut()) {
        if let Some(p) = expand.iter().find(|p| !all.contains_key(**p)) {
            return error(
                StatusCode::BAD_REQUEST,
                "",
                &format!("\"expand\" does not accept {p:?}"),
            );
        }
        all.retain(|k, _| k == "_id" || k == "id" || expand.contains(&k.as_str()));
    }
    json_response(v)
}

fn tree(
    st: &State,
    kind: &str,
    repo_id: &str,
    rev: &str,
    path: &str,
    query: &BTreeMap<String, String>,
) -> Response<Body> {
    let (_, tree) = match lookup(st, kind, repo_id, rev) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let recursive = query
        .get("recursive")
        .is_some_and(|v| v == "true" || v == "1" || v == "True");
    let prefix = if path.is_empty() {
        String::new()
    } else {
        format!("{path}/")
    };
    // Paths in order: the folder holds a file if the first path from it on starts with it.
    let held = tree
        .range::<str, _>((
            std::ops::Bound::Included(prefix.as_str()),
            std::ops::Bound::Unbounded,
        ))
        .next()
        .is_some_and(|(p, _)| p.starts_with(&prefix));
    if !path.is_empty() && !held {
        return error(
            StatusCode::NOT_FOUND,
            "EntryNotFound",
            &format!("{path} does not exist"),
        );
    }
    // Pages start after the last file of the one before (a path, hex-encoded in the cursor):
    // a page costs its own entries, not the whole tree's, so million-file repos page fast.
    let after = query
        .get("cursor")
        .and_then(|c| hex::decode(c).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let from = match &after {
        Some(a) => std::ops::Bound::Excluded(a.clone()),
        None => std::ops::Bound::Included(prefix.clone()),
    };
    // A folder is listed before its first file; its files are contiguous in path order, so
    // it is new where the file before was not in it.
    let folders = |p: &str| locus_core::listing::tree_folders(&prefix, p, recursive);
    let mut prev: Vec<String> = after.as_deref().map(folders).unwrap_or_default();
    let mut entries = Vec::new();
    let mut last = None;
    let mut more = false;
    for (p, f) in tree.range((from, std::ops::Bound::Unbounded)) {
        if !p.starts_with(&prefix) {
            break;
        }
        if entries.len() >= st.page_size {
            more = true;
            break;
        }
        let dirs = folders(p);
        for d in &dirs {
            if !prev.contains(d) {
                entries.push(
                    json!({ "type": "directory", "oid": "0".repeat(40), "size": 0, "path": d }),
                );
            }
        }
        let deep = !recursive && p[prefix.len()..].contains('/');
        prev = dirs;
        last = Some(p.clone());
        if deep {
            continue;
        }
        let size = f.size();
        let (oid, pointer) = f.tree_oid();
        let mut e = json!({ "type": "file", "oid": oid, "size": size, "path": p });
        if let Some(pointer) = pointer {
            e["lfs"] = json!({ "oid": f.sha256, "size": size, "pointerSize": pointer });
        }
        entries.push(e);
    }
    let mut r = json_response(serde_json::Value::Array(entries));
    if let (true, Some(last)) = (more, last) {
        let plural = if kind == "model" {
            "models"
        } else {
            "datasets"
        };
        let path_part = if path.is_empty() {
            String::new()
        } else {
            format!("/{path}")
        };
        let link = format!(
            "<{}/api/{plural}/{repo_id}/tree/{rev}{path_part}?recursive={recursive}&cursor={}>; rel=\"next\"",
            st.hub_url,
            hex::encode(last)
        );
        if let Ok(v) = HeaderValue::from_str(&link) {
            r.headers_mut().insert("link", v);
        }
    }
    r
}

fn resolve(
    st: &State,
    method: &Method,
    headers: &HeaderMap,
    kind: &str,
    repo_id: &str,
    rev: &str,
    path: &str,
) -> Response<Body> {
    let what = if *method == Method::HEAD {
        "resolve_head"
    } else {
        "resolve"
    };
    count(st, what);
    if let Some(r) = injected_failure(st, what) {
        return r;
    }
    if !allowed(st, headers, kind, repo_id, true) {
        return error(
            StatusCode::UNAUTHORIZED,
            "GatedRepo",
            "Access to this repo is restricted; you must be authenticated",
        );
    }
    let (sha, tree) = match lookup(st, kind, repo_id, rev) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(f) = tree.get(path).cloned() else {
        return error(
            StatusCode::NOT_FOUND,
            "EntryNotFound",
            &format!("{path} does not exist"),
        );
    };
    let mut extra = HeaderMap::new();
    extra.insert(
        "x-repo-commit",
        HeaderValue::from_str(&sha).unwrap_or(HeaderValue::from_static("")),
    );
    if f.lfs {
        if *method != Method::HEAD {
            // A GET answered with the redirect sends no file bytes: not a data request.
            let mut s = st.stats.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = s.requests.get_mut("resolve") {
                *n = n.saturating_sub(1);
            }
            *s.requests.entry("resolve_redirect".into()).or_default() += 1;
        }
        let loc = format!("{}/cdn/{}", st.cdn_url, f.sha256);
        let etag = format!("\"{}\"", f.sha256);
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::FOUND;
        let h = r.headers_mut();
        h.extend(extra);
        h.insert(
            "location",
            HeaderValue::from_str(&loc).unwrap_or(HeaderValue::from_static("/")),
        );
        h.insert(
            "x-linked-etag",
            HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("")),
        );
        h.insert(
            "etag",
            HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("")),
        );
        h.insert("x-linked-size", HeaderValue::from(f.size()));
        return r;
    }
    extra.insert(
        "etag",
        HeaderValue::from_str(&format!("\"{}\"", f.git_oid))
            .unwrap_or(HeaderValue::from_static("")),
    );
    serve_bytes(st, method, headers, &f, extra)
}

/// Parses a single `bytes=` range against `size`: `Ok(None)` for no header, `Err` if unsatisfiable.
fn parse_range(h: Option<&str>, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(v) = h else { return Ok(None) };
    let spec = v.strip_prefix("bytes=").ok_or(())?;
    if spec.contains(',') {
        return Err(());
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| ())?;
            (size.saturating_sub(n), size)
        }
        (s, "") => (s.parse().map_err(|_| ())?, size),
        (s, e) => (
            s.parse().map_err(|_| ())?,
            e.parse::<u64>()
                .map_err(|_| ())?
                .saturating_add(1)
                .min(size),
        ),
    };
    if start >= end || start >= size {
        return Err(());
    }
    Ok(Some((start, end)))
}

pub(crate) fn serve_bytes(
    st: &State,
    method: &Method,
    headers: &HeaderMap,
    f: &SimFile,
    extra: HeaderMap,
) -> Response<Body> {
    let size = f.size();
    let range = match parse_range(headers.get("range").and_then(|v| v.to_str().ok()), size) {
        Ok(r) => r,
        Err(()) => {
            let mut r = error(StatusCode::RANGE_NOT_SATISFIABLE, "", "bad range");
            r.headers_mut().insert(
                "content-range",
                HeaderValue::from_str(&format!("bytes */{size}"))
                    .unwrap_or(HeaderValue::from_static("")),
            );
            return r;
        }
    };
    let (start, end) = range.unwrap_or((0, size));
    let data = f.slice(start..end);
    let (throttle, cut, corrupt) = {
        let mut fl = st.faults.lock().unwrap_or_else(|p| p.into_inner());
        let mut cut = None;
        let mut corrupt = false;
        if *method == Method::GET {
            if let Some(c) = fl.cut.as_mut().filter(|c| c.count > 0) {
                c.count -= 1;
                cut = Some(c.after_bytes);
            }
            if fl.corrupt > 0 && !data.is_empty() {
                fl.corrupt -= 1;
                corrupt = true;
            }
        }
        (fl.throttle_bps, cut, corrupt)
    };
    let data = if corrupt {
        let mut v = data.to_vec();
        let mid = v.len() / 2;
        v[mid] ^= 0x55;
        Bytes::from(v)
    } else {
        data
    };
    let mut r = Response::new(Body::empty());
    *r.status_mut() = if range.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let h = r.headers_mut();
    h.extend(extra);
    h.insert("accept-ranges", HeaderValue::from_static("bytes"));
    h.insert("content-length", HeaderValue::from(end - start));
    h.insert(
        "content-type",
        HeaderValue::from_static("application/octet-stream"),
    );
    if range.is_some() {
        h.insert(
            "content-range",
            HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1))
                .unwrap_or(HeaderValue::from_static("")),
        );
    }
    if !h.contains_key("etag") {
        h.insert(
            "etag",
            HeaderValue::from_str(&format!("\"{}\"", f.sha256))
                .unwrap_or(HeaderValue::from_static("")),
        );
    }
    if *method == Method::HEAD {
        return r;
    }
    *r.body_mut() = Body::from_stream(body_stream(st.stats.clone(), data, throttle, cut));
    r
}

/// The body of a data response: pieces of 64 KiB, paced to `throttle_bps`, cut after `cut`
/// bytes (ending the connection mid-body), counting bytes sent.
fn body_stream(
    stats: Arc<Mutex<Stats>>,
    data: Bytes,
    throttle_bps: u64,
    cut: Option<u64>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    const PIECE: usize = 64 << 10;
    let start = Instant::now();
    futures::stream::unfold((data, 0usize), move |(data, pos)| {
        let stats = stats.clone();
        async move {
            if pos >= data.len() {
                return None;
            }
            if let Some(c) = cut {
                if pos as u64 >= c {
                    return Some((
                        Err(std::io::Error::other("injected cut")),
                        (data, usize::MAX),
                    ));
                }
            }
            let mut end = (pos + PIECE).min(data.len());
            if let Some(c) = cut {
                end = end.min(c.max(pos as u64 + 1) as usize);
            }
            if throttle_bps > 0 {
                let due = start + Duration::from_secs_f64(end as f64 / throttle_bps as f64);
                tokio::time::sleep_until(due.into()).await;
            }
            stats.lock().unwrap_or_else(|p| p.into_inner()).data_bytes += (end - pos) as u64;
            Some((Ok(data.slice(pos..end)), (data, end)))
        }
    })
}
