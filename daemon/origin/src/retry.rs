//! Exponential backoff with full jitter, honouring a server's `Retry-After`, and the one
//! retry loop ([`retry`]) every origin request and chunk fetch goes through. Hand-written
//! rather than `backon`: the loop is a dozen lines, and the origin's `Retry-After` and the
//! attempt count in the final error are what callers need from it.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

/// How often and how patiently to retry transient failures.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Total attempts, the first included.
    pub attempts: u32,
    /// Backoff before the second attempt (doubles each time).
    pub base: Duration,
    /// Longest single wait.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 8,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1` (`attempt` starts at 1), with full jitter, or the
    /// server's `Retry-After` when it gave one (bounded by 60 s).
    pub fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(ra) = retry_after {
            return ra.min(Duration::from_secs(60));
        }
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.cap);
        let ms = exp.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(ms / 2..=ms.max(1)))
    }
}

/// A failure that may pass with time, and the wait its server asked for.
pub trait Transient {
    /// Whether another attempt may succeed.
    fn is_transient(&self) -> bool;
    /// The wait the server asked for before the next attempt.
    fn retry_after(&self) -> Option<Duration>;
}

impl Transient for crate::OriginError {
    fn is_transient(&self) -> bool {
        crate::OriginError::is_transient(self)
    }
    fn retry_after(&self) -> Option<Duration> {
        crate::OriginError::retry_after(self)
    }
}

/// Calls `op` until it succeeds, fails for good, or has failed transiently `policy.attempts`
/// times, waiting [`RetryPolicy::backoff`] between attempts (nothing is held while waiting:
/// `op` takes its own permits). `on_retry(attempt, error, wait)` hears of each retry, to count
/// and log it. The error comes back with the number of attempts made.
pub async fn retry<T, E: Transient, Fut: Future<Output = Result<T, E>>>(
    policy: RetryPolicy,
    mut op: impl FnMut() -> Fut,
    mut on_retry: impl FnMut(u32, &E, Duration),
) -> Result<T, (E, u32)> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() && attempt < policy.attempts => {
                let wait = policy.backoff(attempt, e.retry_after());
                on_retry(attempt, &e, wait);
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err((e, attempt)),
        }
    }
}

/// Parses `Retry-After` given in seconds (HTTP dates are rare from the Hub; ignored).
pub fn parse_retry_after(value: Option<&str>) -> Option<Duration> {
    value?.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Sends one request, counted as one origin call of `kind`. Returns a response that is not
/// transient (2xx, 3xx or a final 4xx), or [`crate::OriginError::Transient`] (5xx, 429, a
/// failed connection) with the server's `Retry-After`: whoever calls this owns the retries.
pub(crate) async fn send_once(
    what: &str,
    kind: &'static str,
    req: reqwest::RequestBuilder,
) -> Result<reqwest::Response, crate::OriginError> {
    use reqwest::StatusCode;
    crate::count_request(kind);
    let (detail, retry_after) = match req.send().await {
        Ok(resp) => {
            let status = resp.status();
            if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                let ra = parse_retry_after(
                    resp.headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok()),
                );
                (format!("HTTP {status}"), ra)
            } else {
                return Ok(resp);
            }
        }
        Err(e) => match crate::http::refused_in(&e) {
            // An address the HTTP origin's policy refuses: final, not an outage.
            Some(r) => return Err(r.clone().into_error(what)),
            // URLs carry no secret (tokens are headers), so the error may name them.
            None => (describe_reqwest(&e), None),
        },
    };
    Err(crate::OriginError::Transient {
        what: what.to_string(),
        detail,
        retry_after,
    })
}

/// Sends a request with retries (metadata calls, whole-file spools: requests nobody above
/// retries). `build` makes a fresh request per attempt. Returns the first response that is not
/// transient; after `policy.attempts` transient failures, [`crate::OriginError::Unavailable`].
pub(crate) async fn send_with_retry(
    policy: RetryPolicy,
    what: &str,
    kind: &'static str,
    build: impl Fn() -> reqwest::RequestBuilder,
) -> Result<reqwest::Response, crate::OriginError> {
    send_with_retry_then(policy, what, kind, build, |resp| async { Ok(resp) }).await
}

/// [`send_with_retry`], where each attempt is the request and `then` on its response (reading
/// a metadata body): a body cut short is a failed attempt, retried in the same loop.
pub(crate) async fn send_with_retry_then<T, Fut>(
    policy: RetryPolicy,
    what: &str,
    kind: &'static str,
    build: impl Fn() -> reqwest::RequestBuilder,
    then: impl Fn(reqwest::Response) -> Fut,
) -> Result<T, crate::OriginError>
where
    Fut: Future<Output = Result<T, crate::OriginError>>,
{
    retry(
        policy,
        || {
            let sent = send_once(what, kind, build());
            let then = &then;
            async move { then(sent.await?).await }
        },
        |attempt, e, wait| {
            metrics::counter!(locus_core::metric::ORIGIN_RETRIES, "kind" => kind).increment(1);
            tracing::warn!(what, attempt, ?wait, error = %e, "origin request failed; retrying");
        },
    )
    .await
    .map_err(|(e, attempts)| {
        // The last failure counts as a retry too, as before: one per failed attempt.
        if e.is_transient() {
            metrics::counter!(locus_core::metric::ORIGIN_RETRIES, "kind" => kind).increment(1);
        }
        e.exhausted(attempts)
    })
}

/// The settings every origin's HTTP client shares; `customize` adds its own, then it is built.
pub(crate) fn build_client(
    connect_timeout: std::time::Duration,
    read_timeout: std::time::Duration,
    customize: impl FnOnce(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
) -> Result<reqwest::Client, crate::OriginError> {
    customize(
        reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .read_timeout(read_timeout)
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .user_agent(concat!("locus/", env!("CARGO_PKG_VERSION"))),
    )
    .build()
    .map_err(|e| crate::OriginError::Protocol {
        what: "HTTP client".into(),
        detail: e.to_string(),
    })
}

/// A response body that failed part way (a connection cut, a timeout): transient.
pub(crate) fn cut_short(what: &str, e: &reqwest::Error) -> crate::OriginError {
    crate::OriginError::Transient {
        what: what.to_string(),
        detail: describe_reqwest(e),
        retry_after: None,
    }
}

/// A reqwest error with its causes, on one line.
pub(crate) fn describe_reqwest(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            attempts: 5,
            base: Duration::from_millis(100),
            cap: Duration::from_millis(400),
        };
        let ms = |attempt| p.backoff(attempt, None).as_millis() as u64;
        for _ in 0..100 {
            // Each wait doubles (with jitter in its upper half) until the cap.
            assert!((50..=100).contains(&ms(1)));
            assert!((100..=200).contains(&ms(2)));
            assert!((200..=400).contains(&ms(3)));
            assert!((200..=400).contains(&ms(10)));
        }
        // A server's Retry-After wins, up to a minute.
        assert_eq!(
            p.backoff(1, Some(Duration::from_secs(600))),
            Duration::from_secs(60)
        );
        assert_eq!(
            p.backoff(1, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(parse_retry_after(Some(" 3 ")), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(Some("soon")), None);
    }
}
