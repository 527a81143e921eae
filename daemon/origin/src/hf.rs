//! The Hugging Face Hub origin.
//!
//! - Revisions: `GET /api/{models|datasets}/{repo}/revision/{rev}?expand=sha` → `sha` (a 40-hex commit needs
//!   no request).
//! - Listings: `GET /api/{..}/{repo}/tree/{commit}?recursive=true`, following `Link: rel="next"`.
//! - Bytes: `GET /{repo}/resolve/{commit}/{path}` with `Range`. LFS files answer with a redirect
//!   to a CDN; the CDN URL is kept per file for a while so that each chunk costs one CDN request,
//!   not a Hub request too, and the token is never sent to the CDN.
//!
//! Transient failures (5xx, 429 with `Retry-After`, dropped connections) are retried with
//! backoff and jitter; 401/403 and missing repos, revisions and files are one clear error.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use locus_core::uri::RepoType;
use locus_core::uri::{encode_path, encode_segment};
use locus_core::{is_hex, Digest, Listing, ListingBuilder, Namespace, RemoteFile, Secret};
use reqwest::header::{HeaderMap, AUTHORIZATION, LOCATION, RANGE};
use reqwest::StatusCode;
use serde::Deserialize;

use crate::http::{AddressPolicy, Filtered};
use crate::retry::{build_client, cut_short, send_once, send_with_retry_then, RetryPolicy};
use crate::{ByteStream, Origin, OriginError};

/// How long a CDN URL from a redirect is reused before asking the Hub again.
const CDN_URL_TTL: Duration = Duration::from_secs(600);
/// CDN URLs kept at most (one per file read within the TTL).
const MAX_CDN_URLS: usize = 65_536;

/// Settings of the Hub origin.
#[derive(Clone, Debug)]
pub struct HfConfig {
    /// Base URL, `HF_ENDPOINT` (default `https://huggingface.co`).
    pub endpoint: String,
    /// `HF_TOKEN`, else the token file that `huggingface_hub` writes.
    pub token: Option<Secret>,
    /// Retry policy for transient failures.
    pub retry: RetryPolicy,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Longest silence while reading a response.
    pub read_timeout: Duration,
    /// Where the Hub's redirects (to its CDN) may lead: the endpoint itself and its own
    /// private network are trusted, anything else is judged as an `http(s)://` URL is.
    pub redirects: AddressPolicy,
}

impl HfConfig {
    /// Settings from the environment, as `huggingface_hub` reads them: `HF_ENDPOINT`, `HF_TOKEN`,
    /// `HF_TOKEN_PATH`, then `$HF_HOME/token`.
    pub fn from_env() -> Self {
        let endpoint = std::env::var("HF_ENDPOINT")
            .ok()
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| "https://huggingface.co".to_string());
        Self {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token: token_from_env(),
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            redirects: AddressPolicy::default(),
        }
    }
}

fn token_from_env() -> Option<Secret> {
    let clean = |s: String| {
        let t = s.trim().to_string();
        (!t.is_empty()).then(|| Secret::new(t))
    };
    if let Some(t) = std::env::var("HF_TOKEN").ok().and_then(clean) {
        return Some(t);
    }
    if let Ok(p) = std::env::var("HF_TOKEN_PATH") {
        return std::fs::read_to_string(p).ok().and_then(clean);
    }
    hf_hub::Cache::from_env().token().and_then(clean)
}

/// The Hub origin.
pub struct HfOrigin {
    cfg: HfConfig,
    client: reqwest::Client,
    /// `cfg.redirects` with the endpoint's network, and the endpoint's host.
    redirects: Arc<AddressPolicy>,
    home: Option<String>,
    /// `cfg.endpoint` parsed once (next-page links are checked against its origin).
    endpoint: Option<reqwest::Url>,
    /// resolve URL → (CDN URL, when it was learnt); bounded, least recently used go.
    cdn_urls: quick_cache::sync::Cache<String, (Arc<str>, Instant)>,
}

#[derive(Deserialize)]
struct RevisionInfo {
    sha: String,
}

#[derive(Deserialize)]
struct TreeEntry {
    #[serde(rename = "type")]
    kind: String,
    path: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    oid: Option<String>,
    #[serde(default)]
    lfs: Option<LfsInfo>,
}

#[derive(Deserialize)]
struct LfsInfo {
    oid: String,
    size: u64,
}

fn hf_parts(ns: &Namespace) -> Result<(RepoType, &str), OriginError> {
    match ns {
        Namespace::Hf { repo_type, repo_id } => Ok((*repo_type, repo_id.as_str())),
        other => Err(OriginError::Protocol {
            what: other.to_string(),
            detail: "not an hf:// name".into(),
        }),
    }
}

impl HfOrigin {
    /// A Hub origin with `cfg`.
    pub fn new(cfg: HfConfig) -> Result<Self, OriginError> {
        let endpoint = reqwest::Url::parse(&cfg.endpoint).ok();
        let home = endpoint
            .as_ref()
            .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_string()));
        let mut redirects = cfg.redirects.clone();
        if let Some(ip) = home.as_deref().and_then(|h| h.parse().ok()) {
            redirects = redirects.and_network_of(ip);
        }
        let redirects = Arc::new(redirects);
        // The CDN a redirect names is reached only at addresses the policy allows (the
        // connection goes where the filtering resolver says: no DNS rebinding). The endpoint
        // and the proxies the environment names are the operator's and resolve unfiltered;
        // through a proxy, the proxy resolves the CDN's name and only literal addresses are
        // checked.
        let mut trusted: Vec<String> = home.iter().cloned().collect();
        for var in [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
            "all_proxy",
        ] {
            let host = std::env::var(var).ok().and_then(|v| {
                let v = if v.contains("://") {
                    v
                } else {
                    format!("http://{v}")
                };
                reqwest::Url::parse(&v)
                    .ok()?
                    .host_str()
                    .map(|h| h.trim_matches(['[', ']']).to_string())
            });
            trusted.extend(host);
        }
        let resolver = Arc::new(Filtered::system(redirects.clone(), trusted));
        let client = build_client(cfg.connect_timeout, cfg.read_timeout, |b| {
            b.redirect(reqwest::redirect::Policy::none())
                .dns_resolver(resolver)
        })?;
        Ok(Self {
            cfg,
            client,
            redirects,
            home,
            endpoint,
            cdn_urls: quick_cache::sync::Cache::new(MAX_CDN_URLS),
        })
    }

    /// The endpoint this origin talks to.
    pub fn endpoint(&self) -> &str {
        &self.cfg.endpoint
    }

    /// A next-page link, made absolute, if it stays on the endpoint's own scheme, host and
    /// port: pages are fetched with the token, which goes nowhere else.
    fn same_host(&self, page: &str, next: &str, what: &str) -> Result<String, OriginError> {
        let refuse = |detail: String| OriginError::Protocol {
            what: what.to_string(),
            detail,
        };
        let next = reqwest::Url::parse(page)
            .and_then(|p| p.join(next))
            .map_err(|e| refuse(format!("bad next-page link: {e}")))?;
        let home = self
            .endpoint
            .as_ref()
            .ok_or_else(|| refuse(format!("bad endpoint {:?}", self.cfg.endpoint)))?;
        if next.origin() != home.origin() {
            return Err(refuse(format!(
                "the next page is on another host ({}); not followed with the token",
                next.origin().ascii_serialization()
            )));
        }
        Ok(next.to_string())
    }

    /// Whether `url` is on the Hub's own origin (scheme, host and port of the endpoint).
    fn is_home(&self, url: &str) -> bool {
        match (&self.endpoint, reqwest::Url::parse(url)) {
            (Some(home), Ok(u)) => u.origin() == home.origin(),
            _ => false,
        }
    }

    fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.cfg.token {
            Some(t) => req.header(AUTHORIZATION, format!("Bearer {}", t.expose())),
            None => req,
        }
    }

    async fn get_json<T: for<'de> Deserialize<'de>>(
        &self,
        url: &str,
        what: &str,
        kind: &'static str,
        missing: &'static str,
    ) -> Result<(T, HeaderMap), OriginError> {
        // The body is read inside the attempt: one cut short is retried like a failed request.
        let has_token = self.cfg.token.is_some();
        let (body, headers) = send_with_retry_then(
            self.cfg.retry,
            what,
            kind,
            || self.auth(self.client.get(url)),
            |resp| async move {
                let resp = check_status(resp, what, missing, has_token)?;
                let headers = resp.headers().clone();
                let body = resp.bytes().await.map_err(|e| cut_short(what, &e))?;
                Ok((body, headers))
            },
        )
        .await?;
        let value = serde_json::from_slice(&body).map_err(|e| OriginError::Protocol {
            what: what.to_string(),
            detail: format!("bad JSON: {e}"),
        })?;
        Ok((value, headers))
    }

    /// Whether the Hub lets a client that presents `token` (its own, never the daemon's) read
    /// the files of repo `ns`: with a token, the Hub's `auth-check` for it; without one, the
    /// repo's public info, which must show it neither gated nor private. `Ok` only on the
    /// Hub's yes: 401/403 or a gated repo is `AccessDenied`, a repo the Hub does not show
    /// `NotFound`, anything else an error (the caller refuses on any error).
    pub async fn check_access(
        &self,
        ns: &Namespace,
        token: Option<&Secret>,
    ) -> Result<(), OriginError> {
        #[derive(Deserialize)]
        struct Info {
            #[serde(default)]
            gated: serde_json::Value,
            #[serde(default)]
            private: bool,
        }
        let (rt, repo) = hf_parts(ns)?;
        let base = format!("{}/api/{}/{repo}", self.cfg.endpoint, rt.api_plural());
        let what = format!("{ns} (access check)");
        let denied = |detail: String| OriginError::AccessDenied {
            what: what.clone(),
            detail,
            hint: "the Hub does not let the token presented (or no token) read this repo's files",
        };
        let url = match token {
            Some(_) => format!("{base}/auth-check"),
            None => base,
        };
        // The repo's info is read inside the attempt: a body cut short is retried.
        let (status, body) = send_with_retry_then(
            self.cfg.retry,
            &what,
            "auth",
            || {
                let req = self.client.get(&url);
                match token {
                    Some(t) => req.header(AUTHORIZATION, format!("Bearer {}", t.expose())),
                    None => req,
                }
            },
            |resp| async {
                let status = resp.status();
                if !status.is_success() || token.is_some() {
                    return Ok((status, bytes::Bytes::new()));
                }
                let body = resp.bytes().await.map_err(|e| cut_short(&what, &e))?;
                Ok((status, body))
            },
        )
        .await?;
        match status.as_u16() {
            200..=299 if token.is_some() => Ok(()),
            200..=299 => {
                let info: Info =
                    serde_json::from_slice(&body).map_err(|e| OriginError::Protocol {
                        what: what.clone(),
                        detail: format!("bad JSON: {e}"),
                    })?;
                let gated = !matches!(
                    info.gated,
                    serde_json::Value::Null | serde_json::Value::Bool(false)
                );
                match (gated, info.private) {
                    (false, false) => Ok(()),
                    _ => Err(denied(
                        "the repo is gated or private and no token was presented".into(),
                    )),
                }
            }
            401 | 403 => Err(denied(format!("HTTP {}", status.as_u16()))),
            404 => Err(OriginError::NotFound {
                what: what.clone(),
                kind: "repository",
            }),
            s => Err(OriginError::Protocol {
                what: what.clone(),
                detail: format!("HTTP {s}"),
            }),
        }
    }

    /// The CDN URL a redirect of `resolve` pointed to, while it is fresh.
    fn cdn_url(&self, resolve: &str) -> Option<Arc<str>> {
        self.cdn_urls
            .get(resolve)
            .filter(|e| e.1.elapsed() < CDN_URL_TTL)
            .map(|e| e.0.clone())
    }

    /// Learns the CDN URL of `resolve` from its redirect `resp` (the Hub's answer for an LFS
    /// file), refusing one that points at a private or metadata address.
    fn learn_redirect(
        &self,
        resolve: &str,
        resp: &reqwest::Response,
        what: &str,
    ) -> Result<(), OriginError> {
        let loc = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| OriginError::Protocol {
                what: what.to_string(),
                detail: "redirect without Location".into(),
            })?;
        let url = resp.url().join(loc).map_err(|e| OriginError::Protocol {
            what: what.to_string(),
            detail: format!("bad redirect Location: {e}"),
        })?;
        if url.host_str().map(|h| h.trim_matches(['[', ']'])) != self.home.as_deref() {
            if let Some(r) = self.redirects.refuse_literal(&url) {
                return Err(r.into_error(what));
            }
        }
        self.cdn_urls.insert(
            resolve.to_string(),
            (url.to_string().into(), Instant::now()),
        );
        Ok(())
    }
}

/// What to do about a 401/403 (or a repo the Hub does not show): the token is the daemon's,
/// read where the daemon runs, so the hint says which case this is and where it looks.
fn access_hint(has_token: bool) -> &'static str {
    match has_token {
        false => "the daemon has no Hugging Face token: it reads HF_TOKEN, else the file HF_TOKEN_PATH or $HF_HOME/token names, in its own environment (not the locus command's); a gated or private repo needs one",
        true => "the daemon's token was rejected or has no access to this repo (a gated repo needs access granted on the Hub); the daemon reads HF_TOKEN, else HF_TOKEN_PATH or $HF_HOME/token, in its own environment",
    }
}

/// Maps a final (non-transient) response to an error, or passes a 2xx through.
fn check_status(
    resp: reqwest::Response,
    what: &str,
    missing: &'static str,
    has_token: bool,
) -> Result<reqwest::Response, OriginError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let code = resp
        .headers()
        .get("x-error-code")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let what = what.to_string();
    Err(match (status.as_u16(), code) {
        (_, "RepoNotFound") => OriginError::NotFound {
            what: match has_token {
                false => format!(
                    "{what} (a private repo looks missing without a token: {})",
                    access_hint(false)
                ),
                true => what,
            },
            kind: "repository",
        },
        (_, "RevisionNotFound") => OriginError::NotFound {
            what,
            kind: "revision",
        },
        (_, "EntryNotFound") => OriginError::NotFound { what, kind: "file" },
        (401 | 403, _) => OriginError::AccessDenied {
            what,
            detail: format!("HTTP {}", status.as_u16()),
            hint: access_hint(has_token),
        },
        (404, _) => OriginError::NotFound {
            what,
            kind: missing,
        },
        (s, _) => OriginError::Protocol {
            what,
            detail: format!("HTTP {s}"),
        },
    })
}

fn next_link(headers: &HeaderMap) -> Option<String> {
    let link = headers.get("link")?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params.contains("rel=\"next\"").then(|| {
            url.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
    })
}

#[async_trait]
impl Origin for HfOrigin {
    async fn resolve(&self, ns: &Namespace, revision: &str) -> Result<String, OriginError> {
        if is_hex(revision, 40) {
            return Ok(revision.to_ascii_lowercase());
        }
        let (rt, repo) = hf_parts(ns)?;
        // `expand=sha`: the commit only. Without it the Hub answers with every file's name too
        // (`siblings`), hundreds of megabytes for a repo of millions of files, at every TTL.
        let url = format!(
            "{}/api/{}/{repo}/revision/{}?expand=sha",
            self.cfg.endpoint,
            rt.api_plural(),
            encode_segment(revision)
        );
        let what = format!("{ns}@{revision}");
        let (info, _) = self
            .get_json::<RevisionInfo>(&url, &what, "revision", "revision")
            .await?;
        if !is_hex(&info.sha, 40) {
            return Err(OriginError::Protocol {
                what,
                detail: format!("revision id {:?} is not a commit hash", info.sha),
            });
        }
        Ok(info.sha.to_ascii_lowercase())
    }

    async fn list(&self, ns: &Namespace, rev_id: &str) -> Result<Listing, OriginError> {
        let (rt, repo) = hf_parts(ns)?;
        let what = format!("{ns}@{rev_id}");
        let mut url = format!(
            "{}/api/{}/{repo}/tree/{rev_id}?recursive=true&expand=false",
            self.cfg.endpoint,
            rt.api_plural()
        );
        // Each page goes into the compact listing as it comes: never the whole as RemoteFiles.
        let mut files = ListingBuilder::default();
        loop {
            let (entries, headers) = self
                .get_json::<Vec<TreeEntry>>(&url, &what, "list", "revision")
                .await?;
            for e in entries {
                if e.kind != "file" {
                    continue;
                }
                let path = locus_core::uri::normalize_path(&e.path).map_err(|r| {
                    OriginError::Protocol {
                        what: what.clone(),
                        detail: format!("listing holds an unsafe path {:?}: {r}", e.path),
                    }
                })?;
                if path.is_empty() {
                    continue;
                }
                let (size, digest) = match (&e.lfs, &e.oid) {
                    (Some(lfs), _) if is_hex(&lfs.oid, 64) => {
                        (lfs.size, Some(Digest::Sha256(lfs.oid.to_ascii_lowercase())))
                    }
                    (None, Some(oid)) if is_hex(oid, 40) => {
                        (e.size, Some(Digest::GitBlobSha1(oid.to_ascii_lowercase())))
                    }
                    _ => (e.size, None),
                };
                let key = match &digest {
                    Some(d) => RemoteFile::key_for_digest(d, size),
                    None => format!("hf:{ns}@{rev_id}/{path}:{size}"),
                };
                files.push(&RemoteFile {
                    uri: format!("{ns}@{rev_id}/{path}"),
                    locator: format!(
                        "{}{repo}/resolve/{rev_id}/{}",
                        rt.url_prefix(),
                        encode_path(&path)
                    ),
                    path,
                    size,
                    key,
                    digest,
                    listed: None,
                });
            }
            match next_link(&headers) {
                Some(next) => url = self.same_host(&url, &next, &what)?,
                None => break,
            }
        }
        Ok(files.finish())
    }

    async fn read(&self, file: &RemoteFile, range: Range<u64>) -> Result<ByteStream, OriginError> {
        let what = file.uri.clone();
        if range.start >= range.end || range.end > file.size {
            return Err(OriginError::Protocol {
                what,
                detail: format!("bad range {range:?} of a {}-byte file", file.size),
            });
        }
        let range_header = format!("bytes={}-{}", range.start, range.end - 1);
        let resolve = format!("{}/{}", self.cfg.endpoint, file.locator);
        let mut refreshed = false;
        // A GET of the resolve URL, not a HEAD first: a file the Hub serves itself (every
        // small, non-LFS file) answers with its bytes in one round trip; an LFS file answers
        // with the CDN redirect, learnt for the next reads. At most: resolve, CDN, resolve
        // again for an expired signed URL, CDN.
        for _ in 0..4 {
            let url = self
                .cdn_url(&resolve)
                .unwrap_or_else(|| resolve.as_str().into());
            // The token goes to the Hub's own origin only (the resolve URL, or where it
            // redirects on the same host, as for a renamed repo); signed CDN URLs need no
            // token, and must never see it.
            let home = self.is_home(&url);
            let req = self.client.get(&*url);
            let req = if home { self.auth(req) } else { req };
            // One attempt: the reader of the chunk owns its retries.
            let resp = send_once(&what, "get", req.header(RANGE, &range_header)).await?;
            let status = resp.status();
            if status.is_redirection() {
                // Learnt for the resolve URL: a same-host hop is followed to its CDN URL.
                self.learn_redirect(&resolve, &resp, &what)?;
                continue;
            }
            let via_cdn = !home;
            if via_cdn && !refreshed && matches!(status.as_u16(), 403 | 404 | 410) {
                // An expired signed URL: learn a fresh one once.
                self.cdn_urls.remove(&resolve);
                refreshed = true;
                continue;
            }
            let resp = check_status(resp, &what, "file", self.cfg.token.is_some())?;
            let whole = range.start == 0 && range.end == file.size;
            if resp.status() != StatusCode::PARTIAL_CONTENT
                && !(resp.status() == StatusCode::OK && whole)
            {
                return Err(OriginError::Protocol {
                    what,
                    detail: format!("expected 206 for a ranged read, got {}", resp.status()),
                });
            }
            let w = what.clone();
            let stream = resp.bytes_stream().map_err(move |e| cut_short(&w, &e));
            return Ok(stream.boxed());
        }
        // Concurrent refreshes can use the rounds up without the Hub misbehaving: try again.
        Err(OriginError::Transient {
            what,
            detail: "the Hub kept redirecting the file's download".into(),
            retry_after: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A metadata answer whose body is cut short is a failed attempt, retried like a failed
    /// request (the retries are the origin's: nobody above retries metadata).
    #[tokio::test]
    async fn a_metadata_body_cut_short_is_retried() {
        use std::sync::atomic::{AtomicU64, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let asked = Arc::new(AtomicU64::new(0));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", l.local_addr().unwrap());
        let n = asked.clone();
        let sha = "a".repeat(40);
        let json = format!("{{\"sha\":\"{sha}\"}}");
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf).await;
                // The first answer promises 500 bytes and sends 7; the next is whole.
                let answer = match n.fetch_add(1, Ordering::SeqCst) {
                    0 => "HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{\"sha\":".to_string(),
                    _ => format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
                        json.len()
                    ),
                };
                let _ = c.write_all(answer.as_bytes()).await;
            }
        });
        let o = HfOrigin::new(HfConfig {
            endpoint,
            token: None,
            retry: RetryPolicy {
                attempts: 3,
                base: Duration::from_millis(1),
                cap: Duration::from_millis(2),
            },
            ..HfConfig::from_env()
        })
        .unwrap();
        let ns = locus_core::LocusUri::parse("hf://acme/m")
            .unwrap()
            .namespace;
        assert_eq!(o.resolve(&ns, "main").await.unwrap(), sha);
        assert_eq!(asked.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn cdn_urls_are_bounded_and_one_in_use_outlives_a_stream_of_files() {
        let o = HfOrigin::new(HfConfig {
            endpoint: "http://127.0.0.1:1".into(),
            token: None,
            ..HfConfig::from_env()
        })
        .unwrap();
        let resolve = |i: usize| format!("http://127.0.0.1:1/acme/m/resolve/{i}/w.bin");
        let learn = |i: usize| {
            o.cdn_urls.insert(
                resolve(i),
                (format!("https://cdn.example/{i}").into(), Instant::now()),
            )
        };
        // A cache in its steady state first (quick_cache keeps the first entries of an empty
        // one in its hot part, whatever their use).
        for i in 0..2 * MAX_CDN_URLS {
            learn(10_000_000 + i);
        }
        learn(0);
        learn(1);
        for i in 2..2 * MAX_CDN_URLS {
            if i % 10 == 0 {
                assert!(
                    o.cdn_url(&resolve(0)).is_some(),
                    "dropped while in use ({i})"
                );
            }
            learn(i);
        }
        assert!(o.cdn_urls.len() <= MAX_CDN_URLS, "{}", o.cdn_urls.len());
        assert_eq!(
            (
                o.cdn_url(&resolve(0)).is_some(),
                o.cdn_url(&resolve(1)).is_some()
            ),
            (true, false)
        );
    }

    #[test]
    fn encodes_paths() {
        assert_eq!(encode_path("a b/c+d.bin"), "a%20b/c%2Bd.bin");
        assert_eq!(encode_path("x/y_z-1.safetensors"), "x/y_z-1.safetensors");
        assert_eq!(encode_segment("refs/pr/1"), "refs%2Fpr%2F1");
    }

    /// A server on `ip` that answers every request with `response` (`{port}` replaced by
    /// its own port); returns its port.
    async fn answering(ip: &str, response: &'static str) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let port = l.local_addr().unwrap().port();
        let r = response.replace("{port}", &port.to_string());
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let mut buf = vec![0; 4096];
                let _ = c.read(&mut buf).await;
                let _ = c.write_all(r.as_bytes()).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn the_hubs_redirects_reach_no_private_or_metadata_address() {
        let cdn = answering(
            "127.0.0.2",
            "HTTP/1.1 206 Partial Content\r\ncontent-range: bytes 0-4/5\r\ncontent-length: 5\r\n\r\nhello",
        )
        .await;
        let file = RemoteFile {
            uri: format!("hf://a/b@{}/x.bin", "0".repeat(40)),
            path: "x.bin".into(),
            size: 5,
            key: "k".into(),
            locator: format!("a/b/resolve/{}/x.bin", "0".repeat(40)),
            digest: None,
            listed: None,
        };
        let read = |target: String| {
            let file = file.clone();
            async move {
                let hub = answering(
                    "127.0.0.1",
                    Box::leak(
                        format!(
                            "HTTP/1.1 302 Found\r\nlocation: {target}\r\ncontent-length: 0\r\n\r\n"
                        )
                        .into_boxed_str(),
                    ),
                )
                .await;
                let o = HfOrigin::new(HfConfig {
                    endpoint: format!("http://127.0.0.1:{hub}"),
                    token: None,
                    ..HfConfig::from_env()
                })
                .unwrap();
                match o.read(&file, 0..5).await {
                    Ok(s) => s
                        .try_collect::<Vec<bytes::Bytes>>()
                        .await
                        .map(|b| b.concat()),
                    Err(e) => Err(e),
                }
            }
        };
        // Cloud metadata and a private network the endpoint is not in: refused at once.
        for target in [
            "http://169.254.169.254/latest/meta-data/",
            "http://10.1.2.3/x",
        ] {
            let e = read(target.to_string()).await.unwrap_err();
            assert!(
                matches!(e, OriginError::AccessDenied { .. }),
                "{target}: {e}"
            );
        }
        // The endpoint's own network (here loopback, another address): followed.
        let got = read(format!("http://127.0.0.2:{cdn}/cdn/x")).await.unwrap();
        assert_eq!(got, b"hello");
    }

    #[tokio::test]
    async fn a_next_page_on_another_host_is_not_fetched_with_the_token() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const TOKEN: &str = "hf_plantedtoken_for_the_pagination_test";
        // Another host: records whatever reaches it.
        let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let other_port = other.local_addr().unwrap().port();
        let seen = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let s2 = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = other.accept().await {
                let mut buf = vec![0; 4096];
                let n = c.read(&mut buf).await.unwrap_or(0);
                s2.lock().unwrap().extend_from_slice(&buf[..n]);
                let _ = c
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n[]")
                    .await;
            }
        });
        // The Hub: one page, whose next page is on the other host.
        let hub = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hub_port = hub.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = hub.accept().await {
                let mut buf = vec![0; 4096];
                let _ = c.read(&mut buf).await;
                let r = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nlink: <http://127.0.0.1:{other_port}/api/models/a/b/tree/x?cursor=1>; rel=\"next\"\r\ncontent-length: 2\r\n\r\n[]"
                );
                let _ = c.write_all(r.as_bytes()).await;
            }
        });
        let o = HfOrigin::new(HfConfig {
            endpoint: format!("http://127.0.0.1:{hub_port}"),
            token: Some(Secret::new(TOKEN)),
            ..HfConfig::from_env()
        })
        .unwrap();
        let ns = locus_core::LocusUri::parse("hf://a/b").unwrap().namespace;
        let e = o.list(&ns, &"0".repeat(40)).await.unwrap_err();
        assert!(e.to_string().contains("another host"), "{e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let seen = String::from_utf8_lossy(&seen.lock().unwrap()).to_string();
        assert!(
            !seen.contains(TOKEN),
            "the token went to another host: {seen}"
        );
        // The same host's next page is followed (relative links too).
        let hub = "http://127.0.0.1:1";
        let o = HfOrigin::new(HfConfig {
            endpoint: hub.into(),
            token: None,
            ..HfConfig::from_env()
        })
        .unwrap();
        let page = format!("{hub}/api/models/a/b/tree/x?recursive=true");
        assert_eq!(
            o.same_host(&page, "/api/models/a/b/tree/x?cursor=2", "w")
                .unwrap(),
            format!("{hub}/api/models/a/b/tree/x?cursor=2")
        );
    }

    #[test]
    fn finds_next_link() {
        let mut h = HeaderMap::new();
        h.insert(
            "link",
            "<https://h/api/models/a/b/tree/main?cursor=x>; rel=\"next\""
                .parse()
                .unwrap(),
        );
        assert_eq!(
            next_link(&h).as_deref(),
            Some("https://h/api/models/a/b/tree/main?cursor=x")
        );
    }

    /// A server on `ip` that answers each request with `answer(request line, whole request)`
    /// and records every request it gets; returns its port and the record.
    async fn recording(
        ip: &str,
        answer: impl Fn(&str, &str) -> String + Send + Sync + 'static,
    ) -> (u16, Arc<std::sync::Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s2, answer) = (seen.clone(), Arc::new(answer));
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let (seen, answer) = (s2.clone(), answer.clone());
                tokio::spawn(async move {
                    // One request a connection (each answer says `connection: close`), read
                    // whole: up to the blank line that ends its headers.
                    let mut req = Vec::new();
                    let mut buf = vec![0; 8192];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match c.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let req = String::from_utf8_lossy(&req).to_string();
                    let line = req.lines().next().unwrap_or("").to_string();
                    seen.lock().unwrap().push(req.clone());
                    let r = answer(&line, &req).replacen("\r\n", "\r\nconnection: close\r\n", 1);
                    let _ = c.write_all(r.as_bytes()).await;
                });
            }
        });
        (port, seen)
    }

    /// A private repo renamed on the Hub: its resolve URL redirects to the new name's on the
    /// same host, which must get the token too (else the private file cannot be read), and on
    /// to the CDN, which must never see it.
    #[tokio::test]
    async fn a_private_repos_same_host_redirect_keeps_the_token_and_the_cdn_never_sees_it() {
        const TOKEN: &str = "hf_plantedtoken_for_the_redirect_test";
        let (cdn, cdn_seen) = recording("127.0.0.2", |_, _| {
            "HTTP/1.1 206 Partial Content\r\ncontent-range: bytes 0-4/5\r\ncontent-length: 5\r\n\r\nhello".into()
        })
        .await;
        let rev = "0".repeat(40);
        let (hub, hub_seen) = recording("127.0.0.1", move |line, req| {
            let authed = req
                .to_ascii_lowercase()
                .contains(&format!("authorization: bearer {}", TOKEN.to_ascii_lowercase()));
            if !authed {
                // As the Hub answers for a private repo without the right token.
                return "HTTP/1.1 401 Unauthorized\r\nx-error-code: RepoNotFound\r\ncontent-length: 0\r\n\r\n".into();
            }
            if line.contains("/a/old/resolve/") {
                // Renamed: a relative redirect on the same host.
                let to = line.split(' ').nth(1).unwrap_or("").replace("/a/old/", "/a/new/");
                format!("HTTP/1.1 307 Temporary Redirect\r\nlocation: {to}\r\ncontent-length: 0\r\n\r\n")
            } else if line.contains("/a/new/resolve/") && line.contains("/y.bin") {
                // A small file the Hub serves itself, at the new name.
                "HTTP/1.1 206 Partial Content\r\ncontent-range: bytes 0-4/5\r\ncontent-length: 5\r\n\r\nworld".into()
            } else if line.contains("/a/new/resolve/") {
                format!("HTTP/1.1 302 Found\r\nlocation: http://127.0.0.2:{cdn}/cdn/x\r\ncontent-length: 0\r\n\r\n")
            } else {
                "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".into()
            }
        })
        .await;
        let file = RemoteFile {
            uri: format!("hf://a/old@{rev}/x.bin"),
            path: "x.bin".into(),
            size: 5,
            key: "k".into(),
            locator: format!("a/old/resolve/{rev}/x.bin"),
            digest: None,
            listed: None,
        };
        let small = RemoteFile {
            uri: format!("hf://a/old@{rev}/y.bin"),
            path: "y.bin".into(),
            locator: format!("a/old/resolve/{rev}/y.bin"),
            ..file.clone()
        };
        let read = |o: Arc<HfOrigin>, file: RemoteFile| async move {
            let s = o.read(&file, 0..5).await?;
            s.try_collect::<Vec<bytes::Bytes>>()
                .await
                .map(|b| b.concat())
        };
        let origin = |token: Option<&str>| {
            Arc::new(
                HfOrigin::new(HfConfig {
                    endpoint: format!("http://127.0.0.1:{hub}"),
                    token: token.map(Secret::new),
                    ..HfConfig::from_env()
                })
                .unwrap(),
            )
        };
        let o = origin(Some(TOKEN));
        assert_eq!(read(o.clone(), file.clone()).await.unwrap(), b"hello");
        // Read again: the learnt CDN URL, without the token and without the Hub.
        assert_eq!(read(o.clone(), file.clone()).await.unwrap(), b"hello");
        let asked = |seen: &Arc<std::sync::Mutex<Vec<String>>>| -> Vec<String> {
            let seen = seen.lock().unwrap();
            seen.iter()
                .map(|r| r.lines().next().unwrap_or("").to_string())
                .collect()
        };
        let paths = asked(&hub_seen);
        assert_eq!(paths.len(), 2, "the Hub asked once a name: {paths:?}");
        assert!(
            paths[0].contains("/a/old/resolve/") && paths[1].contains("/a/new/resolve/"),
            "{paths:?}"
        );
        assert_eq!(asked(&cdn_seen).len(), 2, "both reads from the CDN");
        // A small file of the renamed repo, served by the Hub itself at the new name: the
        // learnt same-host URL is used again, still with the token.
        assert_eq!(read(o.clone(), small.clone()).await.unwrap(), b"world");
        assert_eq!(read(o, small.clone()).await.unwrap(), b"world");
        let paths = asked(&hub_seen);
        assert_eq!(paths.len(), 5, "{paths:?}");
        assert!(
            paths[2].contains("/a/old/resolve/")
                && paths[3..].iter().all(|l| l.contains("/a/new/resolve/")),
            "{paths:?}"
        );
        let hub_seen = hub_seen.lock().unwrap().clone();
        assert!(
            hub_seen.iter().all(|r| r.contains(TOKEN)),
            "every request to the Hub carried the token: {paths:?}"
        );
        let cdn_seen = cdn_seen.lock().unwrap().clone();
        assert!(
            cdn_seen
                .iter()
                .all(|r| !r.contains(TOKEN) && !r.to_ascii_lowercase().contains("authorization")),
            "the CDN saw a credential: {cdn_seen:?}"
        );
        // Without the token the private repo stays closed, with a clear error.
        let e = read(origin(None), file).await.unwrap_err();
        assert!(
            matches!(
                e,
                OriginError::AccessDenied { .. } | OriginError::NotFound { .. }
            ),
            "{e}"
        );
    }
}
