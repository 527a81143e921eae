//! The S3 gateway: S3's read API, path style, answered from the node's cache for the buckets
//! the operator names.
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /` | ListBuckets: the buckets served |
//! | `HEAD /BUCKET`, `GET /BUCKET?location` | HeadBucket, GetBucketLocation |
//! | `GET /BUCKET?list-type=2&prefix=&delimiter=&max-keys=&continuation-token=&start-after=&encoding-type=` | ListObjectsV2 |
//! | `GET`/`HEAD /BUCKET/KEY` (with `Range`) | GetObject, HeadObject |
//!
//! Every request is signed (SigV4, [`crate::sigv4`]) with the configured key pair, unless the
//! operator allowed anonymous reads. A listing is the node's listing of the folder that holds
//! the prefix (one LIST at the namespace's owner per TTL for the cluster), searched by binary
//! search, so a page of a 2M-key prefix costs its own keys. Objects carry the ETag and
//! LastModified their listing saw; their bytes come from [`crate::body`]. Everything else is
//! an S3 error in XML (`NotImplemented` for other operations: the gateway is read-only).

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};
use axum::Router;
use locus_core::{Files, LocusUri};
use locus_node::{Node, NodeError};
use locus_origin::OriginError;

use crate::sigv4::{self, Credentials};
use crate::{parse_range, ByteRange};

/// Keys a ListObjectsV2 page holds at most (S3's bound too).
const MAX_KEYS: usize = 1000;

/// Who may call the S3 gateway.
#[derive(Clone)]
pub enum S3Auth {
    /// Requests signed with this key pair.
    Key(Credentials),
    /// Anyone (the operator asked for it).
    Anonymous,
}

/// The S3 gateway of one node.
pub struct S3Gateway {
    node: Arc<Node>,
    buckets: Vec<String>,
    auth: S3Auth,
}

impl S3Gateway {
    /// A gateway serving `buckets` from `node`'s cache to callers `auth` admits.
    pub fn new(node: Arc<Node>, buckets: Vec<String>, auth: S3Auth) -> Arc<Self> {
        Arc::new(S3Gateway {
            node,
            buckets,
            auth,
        })
    }

    /// The axum router.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new().fallback(handle).with_state(self.clone())
    }
}

/// An S3 error.
#[derive(Debug)]
pub(crate) struct S3Error {
    status: StatusCode,
    code: &'static str,
    message: String,
    resource: String,
}

impl S3Error {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        S3Error {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code,
            message: message.into(),
            resource: String::new(),
        }
    }

    fn on(mut self, resource: &str) -> Self {
        self.resource = resource.to_string();
        self
    }

    fn response(&self, head: bool) -> Response<Body> {
        let body = match head {
            // A HEAD answer has no body: clients read the status.
            true => String::new(),
            false => format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code><Message>{}</Message><Resource>{}</Resource><RequestId>locus</RequestId></Error>",
                self.code,
                locus_core::xml::escape(&self.message),
                locus_core::xml::escape(&self.resource)
            ),
        };
        let mut r = Response::new(Body::from(body));
        *r.status_mut() = self.status;
        r.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/xml"));
        r
    }

    fn from_node(e: NodeError, key: &str) -> Self {
        let msg = e.to_string();
        let err = match &e {
            NodeError::NotFound(_) | NodeError::IsFolder(_) => {
                S3Error::new(404, "NoSuchKey", "The specified key does not exist.")
            }
            NodeError::Origin(OriginError::NotFound { .. }) => {
                S3Error::new(404, "NoSuchKey", "The specified key does not exist.")
            }
            NodeError::Uri(_) => S3Error::new(400, "InvalidArgument", msg),
            NodeError::Origin(OriginError::AccessDenied { .. }) => S3Error::new(
                403,
                "AccessDenied",
                format!("the node cannot read it from its origin: {msg}"),
            ),
            NodeError::Origin(OriginError::Changed { .. }) => S3Error::new(503, "SlowDown", msg),
            NodeError::DigestMismatch(_) | NodeError::Internal(_) => {
                S3Error::new(500, "InternalError", msg)
            }
            _ => S3Error::new(503, "ServiceUnavailable", msg),
        };
        err.on(key)
    }
}

async fn handle(
    State(gw): State<Arc<S3Gateway>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response<Body> {
    let head = method == Method::HEAD;
    let (label, resp) = match answer(&gw, &method, &uri, &headers).await {
        Ok((label, r)) => (label, r),
        Err((label, e)) => (label, e.response(head)),
    };
    crate::counted(label, resp)
}

type Answer = Result<(&'static str, Response<Body>), (&'static str, S3Error)>;

async fn answer(gw: &Arc<S3Gateway>, method: &Method, uri: &Uri, headers: &HeaderMap) -> Answer {
    let path = uri.path();
    let query = uri.query().unwrap_or("");
    let req = sigv4::Request {
        method: method.as_str(),
        path,
        query,
        headers,
    };
    let checked = match &gw.auth {
        S3Auth::Key(c) => sigv4::verify(&req, c, SystemTime::now()),
        // Anonymous reads allowed: there is no secret to check a signature with.
        S3Auth::Anonymous => Ok(()),
    };
    if let Err(e) = checked {
        let (code, status) = e.code();
        return Err((
            "s3.auth",
            S3Error::new(status, code, e.to_string()).on(path),
        ));
    }
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .map_err(|_| {
            (
                "s3.other",
                S3Error::new(400, "InvalidURI", "the path is not UTF-8"),
            )
        })?;
    let rest = decoded.trim_start_matches('/');
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    let pairs = sigv4::query_pairs(query);
    let has = |k: &str| pairs.iter().any(|(n, _)| n == k);
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let read = *method == Method::GET || *method == Method::HEAD;
    if !read {
        return Err((
            "s3.other",
            S3Error::new(
                405,
                "MethodNotAllowed",
                "this gateway is read-only: GET and HEAD only",
            )
            .on(path),
        ));
    }
    if bucket.is_empty() {
        return Ok(("s3.list_buckets", list_buckets(gw)));
    }
    if !gw.buckets.iter().any(|b| b == bucket) {
        return Err((
            "s3.other",
            S3Error::new(
                404,
                "NoSuchBucket",
                "The specified bucket is not served here.",
            )
            .on(bucket),
        ));
    }
    // Sub-resources this gateway does not serve (ACLs, tags, versions, uploads…).
    const SERVED: [&str; 9] = [
        "list-type",
        "prefix",
        "delimiter",
        "max-keys",
        "continuation-token",
        "start-after",
        "encoding-type",
        "fetch-owner",
        "location",
    ];
    let unknown = pairs.iter().find(|(k, _)| {
        !SERVED.contains(&k.as_str())
            && !k.starts_with("X-Amz-")
            && !k.starts_with("x-amz-")
            && !k.starts_with("response-")
            && k != "x-id"
            && k != "partNumber"
    });
    if let Some((k, _)) = unknown {
        return Err((
            "s3.other",
            S3Error::new(
                501,
                "NotImplemented",
                format!("this gateway serves reads; ?{k} is not one"),
            )
            .on(path),
        ));
    }
    if key.is_empty() {
        if *method == Method::HEAD {
            return Ok(("s3.head_bucket", ok_xml(String::new())));
        }
        if has("location") {
            return Ok((
                "s3.get_bucket_location",
                ok_xml("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<LocationConstraint xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"></LocationConstraint>".into()),
            ));
        }
        if get("list-type") != Some("2") {
            return Err((
                "s3.list",
                S3Error::new(
                    501,
                    "NotImplemented",
                    "only ListObjectsV2 (list-type=2) lists here",
                )
                .on(bucket),
            ));
        }
        return list_objects(gw, bucket, &pairs)
            .await
            .map(|r| ("s3.list_objects_v2", r))
            .map_err(|e| ("s3.list_objects_v2", e));
    }
    let label = match *method == Method::HEAD {
        true => "s3.head_object",
        false => "s3.get_object",
    };
    get_object(gw, method, bucket, key, headers, &pairs)
        .await
        .map(|r| (label, r))
        .map_err(|e| (label, e))
}

fn ok_xml(body: String) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/xml"));
    r
}

fn list_buckets(gw: &S3Gateway) -> Response<Body> {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListAllMyBucketsResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Owner><ID>locus</ID><DisplayName>locus</DisplayName></Owner><Buckets>");
    for b in &gw.buckets {
        out.push_str(&format!(
            "<Bucket><Name>{}</Name><CreationDate>1970-01-01T00:00:00.000Z</CreationDate></Bucket>",
            locus_core::xml::escape(b)
        ));
    }
    out.push_str("</Buckets></ListAllMyBucketsResult>");
    ok_xml(out)
}

/// An object's ETag and LastModified (ISO 8601 and HTTP forms), as its listing saw them.
fn object_meta(f: &locus_core::RemoteFile) -> (String, String, String) {
    let (etag, modified) = locus_origin::object::object_version(f);
    let etag = match etag {
        Some(e) if e.starts_with('"') => e,
        Some(e) => format!("\"{e}\""),
        // No ETag from the store: one from the key, which names this version.
        None => format!("\"{}\"", f.key.rsplit(':').nth(1).unwrap_or(&f.key)),
    };
    let t = chrono::DateTime::from_timestamp_millis(modified.unwrap_or(0)).unwrap_or_default();
    (
        etag,
        t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        t.format("%a, %d %b %Y %H:%M:%S GMT").to_string(),
    )
}

/// The node's name for `key`; `None` for a key the node cannot name (`//`, `.` or `..`, a
/// backslash, control characters), which its origin listings leave out: it serves none.
fn node_uri(bucket: &str, key: &str) -> Option<LocusUri> {
    LocusUri::parse(&format!("s3://{bucket}/{key}")).ok()
}

async fn get_object(
    gw: &S3Gateway,
    method: &Method,
    bucket: &str,
    key: &str,
    headers: &HeaderMap,
    query: &[(String, String)],
) -> Result<Response<Body>, S3Error> {
    let part = query
        .iter()
        .find(|(k, _)| k == "partNumber")
        .map(|(_, v)| v.as_str());
    if key.ends_with('/') {
        // A folder marker's name: the gateway serves objects, which it names without one.
        return Err(S3Error::new(404, "NoSuchKey", "The specified key does not exist.").on(key));
    }
    // A key the node cannot name is not one it serves (its listings leave such keys out).
    let uri = node_uri(bucket, key).ok_or_else(|| {
        S3Error::new(404, "NoSuchKey", "The specified key does not exist.").on(key)
    })?;
    let r = gw
        .node
        .resolve(&uri)
        .await
        .map_err(|e| S3Error::from_node(e, key))?;
    let file = match (r.is_file, r.files.first()) {
        (true, Some(f)) => f,
        _ => {
            return Err(S3Error::new(404, "NoSuchKey", "The specified key does not exist.").on(key))
        }
    };
    let size = file.size;
    let (etag, _, http_date) = object_meta(&file);
    let value = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""));
    let mut resp = Response::new(Body::empty());
    let h = resp.headers_mut();
    h.insert("etag", value(&etag));
    h.insert("last-modified", value(&http_date));
    // A client that names the version it read before (s3transfer's and s3fs's ranged reads
    // send If-Match) never gets another version's bytes.
    match preconditions(headers, &etag, &http_date) {
        Precondition::Proceed => {}
        Precondition::NotModified => {
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            return Ok(resp);
        }
        Precondition::Failed(which) => {
            return Err(S3Error::new(
                412,
                "PreconditionFailed",
                format!("At least one of the pre-conditions you specified did not hold ({which})"),
            )
            .on(key))
        }
    }
    h.insert("accept-ranges", HeaderValue::from_static("bytes"));
    h.insert(
        "content-type",
        HeaderValue::from_static("binary/octet-stream"),
    );
    let asked = headers.get("range").and_then(|v| v.to_str().ok());
    let asked = match part {
        None => asked,
        Some(_) if asked.is_some() => {
            return Err(S3Error::new(
                400,
                "InvalidRequest",
                "Cannot specify both Range header and partNumber query parameter",
            )
            .on(key))
        }
        // Part 1 of an object uploaded whole is the object (its ETag says so: no `-N`); the
        // parts of one uploaded in parts are not known here. Never the wrong bytes.
        Some(n) => match (n.parse::<u32>(), etag.contains('-')) {
            (Ok(1), false) if size > 0 => Some("bytes=0-"),
            (Ok(1), false) => None,
            (Ok(2..=10_000), false) => {
                return Err(S3Error::new(
                    416,
                    "InvalidPartNumber",
                    "The requested partnumber is not satisfiable",
                )
                .on(key))
            }
            (Ok(1..=10_000), true) => {
                return Err(S3Error::new(
                    501,
                    "NotImplemented",
                    "the parts of an object uploaded in parts are not served here: read ranges",
                )
                .on(key))
            }
            _ => {
                return Err(S3Error::new(
                    400,
                    "InvalidArgument",
                    "Part number must be an integer between 1 and 10000, inclusive",
                )
                .on(key))
            }
        },
    };
    let range = match parse_range(asked, size) {
        ByteRange::Whole => 0..size,
        ByteRange::Part(r) => {
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            resp.headers_mut().insert(
                "content-range",
                value(&format!("bytes {}-{}/{size}", r.start, r.end - 1)),
            );
            r
        }
        ByteRange::Unsatisfiable => {
            return Err(S3Error::new(
                416,
                "InvalidRange",
                format!("The requested range is not satisfiable (the object has {size} bytes)"),
            )
            .on(key))
        }
    };
    resp.headers_mut()
        .insert("content-length", HeaderValue::from(range.end - range.start));
    // The response headers a (presigned) request names, as S3 sets them: a download link that
    // saves under a name of its own.
    for (k, v) in query {
        let Some(name) = k.strip_prefix("response-") else {
            continue;
        };
        let name: &'static str = match name {
            "content-type" => "content-type",
            "content-language" => "content-language",
            "expires" => "expires",
            "cache-control" => "cache-control",
            "content-disposition" => "content-disposition",
            "content-encoding" => "content-encoding",
            _ => continue,
        };
        let v = HeaderValue::from_str(v).map_err(|_| {
            S3Error::new(400, "InvalidArgument", format!("{k}: not a header value")).on(key)
        })?;
        resp.headers_mut().insert(name, v);
    }
    if *method == Method::GET {
        let h = crate::body::register(&gw.node, &file)
            .await
            .map_err(|e| S3Error::from_node(e, key))?;
        *resp.body_mut() = crate::body::verified(gw.node.clone(), h, file, range, "s3.get_object");
    }
    Ok(resp)
}

/// What a GET or HEAD's conditional headers ask for ([`preconditions`]).
#[derive(Debug, PartialEq, Eq)]
enum Precondition {
    Proceed,
    /// 304: the client's copy is this version.
    NotModified,
    /// 412, naming the header that did not hold.
    Failed(&'static str),
}

/// RFC 9110's order, as S3 applies it: If-Match (else If-Unmodified-Since) fails with 412;
/// then If-None-Match (else If-Modified-Since) answers 304. `etag` is quoted; `modified` is
/// the HTTP date sent as Last-Modified (whole seconds, as the headers compare).
fn preconditions(headers: &HeaderMap, etag: &str, modified: &str) -> Precondition {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    // A list of entity tags, or `*`; weak tags (`W/`) compare by their opaque part.
    let names_etag = |list: &str| {
        let bare = etag.trim_matches('"');
        list.split(',')
            .map(str::trim)
            .any(|t| t == "*" || t.trim_start_matches("W/").trim_matches('"') == bare)
    };
    let date = |s: &str| {
        chrono::DateTime::parse_from_rfc2822(s)
            .ok()
            .map(|d| d.timestamp())
    };
    // Parsed only when a date is compared (most requests send none).
    let last = || date(modified);
    match get("if-match") {
        Some(list) if !names_etag(list) => return Precondition::Failed("If-Match"),
        Some(_) => {}
        None => {
            if let Some(since) = get("if-unmodified-since").and_then(date) {
                if last().is_some_and(|last| last > since) {
                    return Precondition::Failed("If-Unmodified-Since");
                }
            }
        }
    }
    match get("if-none-match") {
        Some(list) if names_etag(list) => Precondition::NotModified,
        Some(_) => Precondition::Proceed,
        None => match get("if-modified-since").and_then(date) {
            Some(since) if last().is_some_and(|last| last <= since) => Precondition::NotModified,
            _ => Precondition::Proceed,
        },
    }
}

/// Where a listing continues: after a key, or after every key under a common prefix.
fn parse_token(t: &str) -> Option<(bool, String)> {
    let (kind, hex) = t.split_once(':')?;
    let bytes = hex::decode(hex).ok()?;
    let s = String::from_utf8(bytes).ok()?;
    match kind {
        "k" => Some((false, s)),
        "p" => Some((true, s)),
        _ => None,
    }
}

fn make_token(prefix_done: bool, s: &str) -> String {
    format!("{}:{}", if prefix_done { "p" } else { "k" }, hex::encode(s))
}

async fn list_objects(
    gw: &S3Gateway,
    bucket: &str,
    q: &[(String, String)],
) -> Result<Response<Body>, S3Error> {
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let prefix = get("prefix").unwrap_or_default();
    let delimiter = get("delimiter").filter(|d| !d.is_empty());
    let url = get("encoding-type").as_deref() == Some("url");
    let max_keys = match get("max-keys") {
        None => MAX_KEYS,
        Some(m) => m
            .parse::<usize>()
            .map_err(|_| S3Error::new(400, "InvalidArgument", "max-keys must be a number"))?
            .min(MAX_KEYS),
    };
    let token = get("continuation-token");
    let start_after = get("start-after").unwrap_or_default();
    let resume = match &token {
        Some(t) => Some(parse_token(t).ok_or_else(|| {
            S3Error::new(
                400,
                "InvalidArgument",
                "The continuation token provided is incorrect",
            )
        })?),
        None if !start_after.is_empty() => Some((false, start_after.clone())),
        None => None,
    };
    // The folder that holds every key with the prefix: its listing, at the node.
    let folder = match prefix.rfind('/') {
        Some(i) => prefix[..i].trim_end_matches('/').to_string(),
        None => String::new(),
    };
    let base = match folder.is_empty() {
        true => String::new(),
        false => format!("{folder}/"),
    };
    // Keys the node cannot name (`//`, `.` or `..`, a backslash, control characters) hold
    // nothing it serves: its origin listings leave them out too.
    let files = match node_uri(bucket, &folder) {
        None => None,
        Some(_) if prefix.contains("//") => None,
        Some(uri) => match gw.node.resolve(&uri).await {
            Ok(r) if !r.is_file || folder.is_empty() => Some(r.files),
            Ok(_) => None,
            Err(NodeError::NotFound(_)) | Err(NodeError::Origin(OriginError::NotFound { .. })) => {
                None
            }
            Err(e) => return Err(S3Error::from_node(e, bucket)),
        },
    };
    let mut contents = String::new();
    let mut prefixes = String::new();
    let mut count = 0usize;
    let mut next: Option<String> = None;
    if let Some(files) = files {
        list_page(
            &files,
            &base,
            &prefix,
            delimiter.as_deref(),
            resume,
            max_keys,
            url,
            &mut contents,
            &mut prefixes,
            &mut count,
            &mut next,
        );
    }
    let enc = |s: &str| match url {
        true => locus_core::uri::encode_path(s),
        false => locus_core::xml::escape(s),
    };
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">");
    out.push_str(&format!(
        "<Name>{}</Name><Prefix>{}</Prefix><KeyCount>{count}</KeyCount><MaxKeys>{max_keys}</MaxKeys><IsTruncated>{}</IsTruncated>",
        locus_core::xml::escape(bucket),
        enc(&prefix),
        next.is_some()
    ));
    if let Some(d) = &delimiter {
        out.push_str(&format!("<Delimiter>{}</Delimiter>", enc(d)));
    }
    if url {
        out.push_str("<EncodingType>url</EncodingType>");
    }
    if let Some(t) = &token {
        out.push_str(&format!(
            "<ContinuationToken>{}</ContinuationToken>",
            locus_core::xml::escape(t)
        ));
    }
    if !start_after.is_empty() {
        out.push_str(&format!("<StartAfter>{}</StartAfter>", enc(&start_after)));
    }
    if let Some(n) = &next {
        out.push_str(&format!(
            "<NextContinuationToken>{}</NextContinuationToken>",
            locus_core::xml::escape(n)
        ));
    }
    out.push_str(&contents);
    out.push_str(&prefixes);
    out.push_str("</ListBucketResult>");
    Ok(ok_xml(out))
}

/// One page of keys under `prefix` from `files` (the listing of folder `base`): each key once
/// in order, keys that share a common prefix (up to `delimiter`) as that prefix, counted as
/// one; where the page ends, the token to go on.
#[allow(clippy::too_many_arguments)]
fn list_page(
    files: &Files,
    base: &str,
    prefix: &str,
    delimiter: Option<&str>,
    resume: Option<(bool, String)>,
    max_keys: usize,
    url: bool,
    contents: &mut String,
    prefixes: &mut String,
    count: &mut usize,
    next: &mut Option<String>,
) {
    let rel_prefix = &prefix[base.len().min(prefix.len())..];
    let n = files.len();
    let rel = |i: usize| files.brief(i).map(|b| b.path).unwrap_or_default();
    // The first file whose path is past `after` (and past every key under it when `under`).
    let after = |from: &str, under: bool| -> usize {
        let Some(r) = from.strip_prefix(base) else {
            return match from < base {
                true => 0,
                false => n,
            };
        };
        let mut i = files.lower_bound(r);
        if under {
            // Past every path that starts with `r`.
            let (mut lo, mut hi) = (i, n);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                match rel(mid).starts_with(r) {
                    true => lo = mid + 1,
                    false => hi = mid,
                }
            }
            i = lo;
        } else if i < n && rel(i) == r {
            i += 1;
        }
        i
    };
    let mut i = files.lower_bound(rel_prefix);
    if let Some((under, from)) = &resume {
        i = i.max(after(from, *under));
    }
    let enc = |s: &str| match url {
        true => locus_core::uri::encode_path(s),
        false => locus_core::xml::escape(s),
    };
    let mut last: Option<(bool, String)> = None;
    while i < n {
        let Some(f) = files.get(i) else { break };
        if !f.path.starts_with(rel_prefix) {
            break;
        }
        if *count >= max_keys {
            *next = last.as_ref().map(|(p, k)| make_token(*p, k));
            return;
        }
        let key = format!("{base}{}", f.path);
        let common = delimiter.and_then(|d| {
            key[prefix.len()..]
                .find(d)
                .map(|at| key[..prefix.len() + at + d.len()].to_string())
        });
        match common {
            Some(cp) => {
                prefixes.push_str(&format!(
                    "<CommonPrefixes><Prefix>{}</Prefix></CommonPrefixes>",
                    enc(&cp)
                ));
                i = after(&cp, true);
                last = Some((true, cp));
            }
            None => {
                let (etag, modified, _) = object_meta(&f);
                contents.push_str(&format!(
                    "<Contents><Key>{}</Key><LastModified>{modified}</LastModified><ETag>{}</ETag><Size>{}</Size><StorageClass>STANDARD</StorageClass></Contents>",
                    enc(&key),
                    locus_core::xml::escape(&etag),
                    f.size
                ));
                i += 1;
                last = Some((false, key));
            }
        }
        *count += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc as StdArc;

    fn listing(keys: &[&str]) -> Files {
        let files = keys.iter().map(|k| locus_core::RemoteFile {
            uri: format!("s3://b/{k}"),
            path: k.to_string(),
            size: k.len() as u64,
            key: format!("s3:{k}:{}", k.len()),
            locator: "{\"etag\":\"\\\"e\\\"\",\"modified\":1700000000000}".into(),
            digest: None,
            listed: None,
        });
        Files::all(StdArc::new(locus_core::Listing::new(files)))
    }

    /// Every page of a listing, as a client would walk it: (keys, common prefixes).
    fn walk(
        files: &Files,
        prefix: &str,
        delim: Option<&str>,
        max: usize,
    ) -> (Vec<String>, Vec<String>, usize) {
        let mut keys = Vec::new();
        let mut cps = Vec::new();
        let mut resume = None;
        let mut pages = 0;
        loop {
            let (mut c, mut p, mut n, mut next) = (String::new(), String::new(), 0, None);
            list_page(
                files,
                "",
                prefix,
                delim,
                resume.clone(),
                max,
                false,
                &mut c,
                &mut p,
                &mut n,
                &mut next,
            );
            pages += 1;
            assert!(n <= max);
            for part in c.split("<Key>").skip(1) {
                keys.push(part.split("</Key>").next().unwrap().to_string());
            }
            for part in p.split("<Prefix>").skip(1) {
                cps.push(part.split("</Prefix>").next().unwrap().to_string());
            }
            match next {
                Some(t) => resume = Some(parse_token(&t).unwrap()),
                None => return (keys, cps, pages),
            }
        }
    }

    #[test]
    fn listings_page_and_fold_keys_as_s3_does() {
        let keys = ["a.txt", "d/1", "d/2", "d/e/3", "d2/x", "e", "f/g/h", "f/i"];
        let files = listing(&keys);
        for max in [1, 2, 3, 1000] {
            let (k, cps, _) = walk(&files, "", None, max);
            assert_eq!(k, keys, "max {max}");
            assert!(cps.is_empty());
            let (k, cps, _) = walk(&files, "", Some("/"), max);
            assert_eq!(k, vec!["a.txt", "e"], "max {max}");
            assert_eq!(cps, vec!["d/", "d2/", "f/"], "max {max}");
            let (k, cps, _) = walk(&files, "d", Some("/"), max);
            assert!(k.is_empty());
            assert_eq!(cps, vec!["d/", "d2/"]);
        }
        let (k, _, pages) = walk(&files, "d/", None, 2);
        assert_eq!(
            (k, pages),
            (vec!["d/1".to_string(), "d/2".into(), "d/e/3".into()], 2)
        );
        let (k, cps, _) = walk(&files, "d/", Some("/"), 1);
        assert_eq!(
            (k, cps),
            (
                vec!["d/1".to_string(), "d/2".into()],
                vec!["d/e/".to_string()]
            )
        );
        let (k, _, _) = walk(&files, "zz", None, 10);
        assert!(k.is_empty());
        // XML is escaped; `encoding-type=url` encodes instead.
        assert_eq!(
            locus_core::xml::escape("a&b<c>\"'\u{1}"),
            "a&amp;b&lt;c&gt;&quot;&apos;&#1;"
        );
        assert_eq!(locus_core::uri::encode_path("a b/ü+"), "a%20b/%C3%BC%2B");
        assert!(parse_token("k:zz").is_none() && parse_token("q:00").is_none());
    }
}
