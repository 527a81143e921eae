//! The S3 side of the simulated origin: the repos' main branches as buckets, path-style.
//!
//! Bucket `ORG` holds, for each repo `ORG/NAME` (datasets first, then models), the files of its
//! `main` branch under `NAME/`: so `s3://bench/images/0000/00000000.bin` is file
//! `0000/00000000.bin` of `datasets/bench/images`. It answers what S3 clients send for reading:
//! `ListObjectsV2` (pages of up to 1,000 keys, continuation tokens, `delimiter`), `HEAD` and
//! `GET` of an object with `Range` and `If-Match`. A listing page costs O(page) whatever the
//! bucket's size, and generated files' bytes are made as they are read, so a synthetic data set
//! of millions of objects needs no memory beyond its names. Faults apply as to the Hub (group
//! `s3`): delays, failures, throttling, cuts and corruption, and every request is counted
//! (`s3_list`, `s3_head`, `s3_get`).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State as AxState};
use axum::http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};

use crate::server::{count, injected_failure, percent_decode, serve_bytes};
use crate::{SimFile, State, Tree};

/// When every object was "last modified" (S3 requires the header; clients compare it).
const LAST_MODIFIED: &str = "Thu, 01 Jan 2026 00:00:00 GMT";
const LAST_MODIFIED_ISO: &str = "2026-01-01T00:00:00.000Z";
const MAX_KEYS: usize = 1000;

fn s3_error(status: StatusCode, code: &str, msg: &str) -> Response<Body> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{}</Message></Error>",
        locus_core::xml::escape(msg)
    );
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/xml"));
    r
}

/// The main-branch trees of bucket `org`'s repos: (repo name, tree), datasets first.
fn trees(st: &State, org: &str) -> Vec<(String, Tree)> {
    let repos = st.repos.read().unwrap_or_else(|p| p.into_inner());
    let mut out: Vec<(String, Tree)> = Vec::new();
    for kind in ["dataset", "model"] {
        let mut of_kind: Vec<(String, Tree)> = repos
            .iter()
            .filter(|((k, id), _)| k == kind && id.split_once('/').is_some_and(|(o, _)| o == org))
            .filter_map(|((_, id), repo)| {
                let sha = repo.branches.get("main")?;
                let tree = repo.commits.get(sha)?.clone();
                let name = id.split_once('/')?.1.to_string();
                Some((name, tree))
            })
            .collect();
        of_kind.sort_by(|a, b| a.0.cmp(&b.0));
        for t in of_kind {
            if !out.iter().any(|(n, _)| *n == t.0) {
                out.push(t);
            }
        }
    }
    out
}

fn object(st: &State, org: &str, key: &str) -> Option<Arc<SimFile>> {
    let (name, path) = key.split_once('/')?;
    trees(st, org)
        .into_iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, t)| t.get(path).cloned())
}

fn etag(f: &SimFile) -> String {
    // S3's ETag of a single-part upload is an MD5; clients only compare it.
    format!("\"{}\"", &f.sha256[..32])
}

/// Up to `max` (key, file) of bucket `org` after `after` whose keys start with `prefix`, in key
/// order: O(max) a repo whatever the bucket's size.
fn keys_after(
    st: &State,
    org: &str,
    prefix: &str,
    after: &str,
    max: usize,
) -> Vec<(String, Arc<SimFile>)> {
    let mut out = Vec::new();
    for (name, tree) in trees(st, org) {
        let base = format!("{name}/");
        // The part of the prefix and of `after` inside this repo's tree.
        if !(prefix.starts_with(&base) || base.starts_with(prefix)) {
            continue;
        }
        let inner_prefix = prefix.strip_prefix(&base).unwrap_or("");
        let from = match after.strip_prefix(&base) {
            Some(a) => Bound::Excluded(a.to_string()),
            None if after.as_bytes() >= base.as_bytes() && !after.is_empty() => continue,
            None => Bound::Unbounded,
        };
        let start = match from {
            Bound::Excluded(a) if a.as_str() >= inner_prefix => Bound::Excluded(a),
            _ => Bound::Included(inner_prefix.to_string()),
        };
        for (path, f) in tree
            .range::<String, _>((start, Bound::Unbounded))
            .take_while(|(p, _)| p.starts_with(inner_prefix))
            .take(max)
        {
            out.push((format!("{base}{path}"), f.clone()));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.truncate(max);
    out
}

fn list(st: &State, org: &str, q: &BTreeMap<String, String>) -> Response<Body> {
    let prefix = q.get("prefix").map(String::as_str).unwrap_or("");
    let delimiter = q.get("delimiter").map(String::as_str).unwrap_or("");
    let max = q
        .get("max-keys")
        .and_then(|m| m.parse::<usize>().ok())
        .unwrap_or(MAX_KEYS)
        .clamp(1, MAX_KEYS);
    let token = match q.get("continuation-token") {
        Some(t) => match hex::decode(t).ok().and_then(|b| String::from_utf8(b).ok()) {
            Some(k) => k,
            None => {
                return s3_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidArgument",
                    "bad continuation token",
                )
            }
        },
        None => q.get("start-after").cloned().unwrap_or_default(),
    };
    let mut contents = String::new();
    let mut prefixes: Vec<String> = Vec::new();
    let mut n = 0;
    let mut last = token.clone();
    let mut truncated = false;
    'pages: loop {
        let page = keys_after(st, org, prefix, &last, max + 1);
        if page.is_empty() {
            break;
        }
        for (key, f) in page {
            if n == max {
                truncated = true;
                break 'pages;
            }
            let rest = &key[prefix.len()..];
            match (!delimiter.is_empty())
                .then(|| rest.find(delimiter))
                .flatten()
            {
                Some(at) => {
                    let common = format!("{prefix}{}", &rest[..at + delimiter.len()]);
                    // Past every key under this common prefix.
                    last = format!("{common}\u{10FFFF}");
                    if prefixes.last() != Some(&common) {
                        prefixes.push(common);
                        n += 1;
                    }
                    continue 'pages;
                }
                None => {
                    contents.push_str(&format!(
                        "<Contents><Key>{}</Key><LastModified>{LAST_MODIFIED_ISO}</LastModified><ETag>{}</ETag><Size>{}</Size><StorageClass>STANDARD</StorageClass></Contents>",
                        locus_core::xml::escape(&key),
                        locus_core::xml::escape(&etag(&f)),
                        f.size()
                    ));
                    n += 1;
                    last = key;
                }
            }
        }
    }
    let mut body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>{}</Name><Prefix>{}</Prefix><KeyCount>{n}</KeyCount><MaxKeys>{max}</MaxKeys><IsTruncated>{truncated}</IsTruncated>",
        locus_core::xml::escape(org),
        locus_core::xml::escape(prefix)
    );
    if !delimiter.is_empty() {
        body.push_str(&format!(
            "<Delimiter>{}</Delimiter>",
            locus_core::xml::escape(delimiter)
        ));
    }
    body.push_str(&contents);
    for p in &prefixes {
        body.push_str(&format!(
            "<CommonPrefixes><Prefix>{}</Prefix></CommonPrefixes>",
            locus_core::xml::escape(p)
        ));
    }
    if truncated {
        body.push_str(&format!(
            "<NextContinuationToken>{}</NextContinuationToken>",
            hex::encode(last.as_bytes())
        ));
    }
    body.push_str("</ListBucketResult>");
    let mut r = Response::new(Body::from(body));
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/xml"));
    r
}

pub(crate) async fn handle(
    AxState(st): AxState<Arc<State>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response<Body> {
    let delay = st.faults.lock().unwrap_or_else(|p| p.into_inner()).delay_ms;
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    let path = uri.path().trim_start_matches('/');
    let (bucket, key) = match path.split_once('/') {
        Some((b, k)) => (percent_decode(b), percent_decode(k)),
        None => (percent_decode(path), String::new()),
    };
    let kind = match (&method, key.is_empty()) {
        (&Method::GET, true) => "s3_list",
        (&Method::HEAD, false) => "s3_head",
        (&Method::GET, false) => "s3_get",
        _ => "s3_other",
    };
    count(&st, kind);
    if let Some(r) = injected_failure(&st, kind) {
        return r;
    }
    if kind == "s3_list" {
        return list(&st, &bucket, &query);
    }
    if kind == "s3_other" {
        return s3_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "read-only",
        );
    }
    let Some(f) = object(&st, &bucket, &key) else {
        return s3_error(StatusCode::NOT_FOUND, "NoSuchKey", "no such key");
    };
    let tag = etag(&f);
    if let Some(want) = headers.get("if-match").and_then(|v| v.to_str().ok()) {
        if want != "*" && want.trim() != tag {
            return s3_error(
                StatusCode::PRECONDITION_FAILED,
                "PreconditionFailed",
                "If-Match",
            );
        }
    }
    let mut extra = HeaderMap::new();
    extra.insert(
        "etag",
        HeaderValue::from_str(&tag).unwrap_or(HeaderValue::from_static("")),
    );
    extra.insert("last-modified", HeaderValue::from_static(LAST_MODIFIED));
    serve_bytes(&st, &method, &headers, &f, extra)
}
