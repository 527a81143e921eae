//! Origins: where bytes come from when no cache has them.
//!
//! [`Origin`] is the seam: the node is generic over it, tests wrap it (`faulty::FaultyOrigin`,
//! with the `faulty` feature)
//! to inject failures, and each scheme has one module: [`hf`] for the Hugging Face Hub,
//! [`object`] for S3 and local files (both through `object_store`), [`http`] for plain URLs.
//! [`Origins`] routes each namespace to its scheme's origin.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use locus_core::{Listing, Namespace, RemoteFile};

mod beneath;
#[cfg(any(test, feature = "faulty"))]
pub mod faulty;
pub mod hf;
pub mod http;
pub mod object;
pub mod retry;
mod snapshot;

pub use hf::{HfConfig, HfOrigin};
pub use http::{HttpOrigin, SpoolSpace};
pub use object::{FileOrigin, S3Config, S3Origin};
pub use retry::RetryPolicy;

/// Kinds of origin API calls, as counted in `locus_origin_requests_total{kind}` and shown by
/// `locus status`.
pub const REQUEST_KINDS: [&str; 4] = ["revision", "list", "head", "get"];
static REQUESTS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

/// Counts one origin API call of `kind` (one of [`REQUEST_KINDS`]).
pub fn count_request(kind: &'static str) {
    metrics::counter!(locus_core::metric::ORIGIN_REQUESTS, "kind" => kind).increment(1);
    if let Some(i) = REQUEST_KINDS.iter().position(|k| *k == kind) {
        REQUESTS[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// Origin API calls made by this process so far, by kind.
pub fn requests_by_kind() -> Vec<(&'static str, u64)> {
    REQUEST_KINDS
        .iter()
        .zip(&REQUESTS)
        .map(|(k, n)| (*k, n.load(Ordering::Relaxed)))
        .collect()
}

/// Bytes of one ranged read, in arrival order.
pub type ByteStream = BoxStream<'static, Result<Bytes, OriginError>>;

/// What went wrong at an origin. Messages name the object and say what to do; they never hold
/// credentials.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OriginError {
    /// 401/403: gated, private, a bad token or missing permissions.
    #[error("{what}: access denied ({detail}): {hint}")]
    AccessDenied {
        /// The object asked for.
        what: String,
        /// What the origin said (e.g. `HTTP 403`).
        detail: String,
        /// What to do about it.
        hint: &'static str,
    },
    /// The object changed at the origin after it was listed: its bytes under the listed identity
    /// are gone. The next listing (after the metadata TTL) names the new object.
    #[error("{what}: changed at the origin since it was listed; read it again")]
    Changed {
        /// The object asked for.
        what: String,
    },
    /// The repo, revision, bucket or file does not exist.
    #[error("{what}: {kind} not found")]
    NotFound {
        /// The object asked for.
        what: String,
        /// `repository`, `revision` or `file`.
        kind: &'static str,
    },
    /// Retries ran out on a transient failure (5xx, 429, a dropped connection).
    #[error("{what}: origin unavailable after {attempts} attempts: {detail}")]
    Unavailable {
        /// The object asked for.
        what: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        detail: String,
    },
    /// A transient failure of one attempt that the caller may retry (a body cut short, a
    /// 5xx, a 429): the caller owns the retries of this request.
    #[error("{what}: {detail}")]
    Transient {
        /// The object asked for.
        what: String,
        /// What happened.
        detail: String,
        /// How long the server asked the caller to wait (`Retry-After`).
        retry_after: Option<std::time::Duration>,
    },
    /// The daemon has no origin for this scheme: its configuration, not an outage.
    #[error("{what}: {hint}")]
    NotConfigured {
        /// The namespace asked for.
        what: String,
        /// What to configure.
        hint: &'static str,
    },
    /// The request names something no origin can fetch (a malformed URL).
    #[error("{what}: {detail}")]
    Invalid {
        /// What was asked for.
        what: String,
        /// What is wrong with it.
        detail: String,
    },
    /// No room on the cache disk for what the request needs.
    #[error("{what}: {detail}")]
    NoSpace {
        /// What was asked for.
        what: String,
        /// Why.
        detail: String,
    },
    /// The origin answered something locus cannot use.
    #[error("{what}: unexpected answer from origin: {detail}")]
    Protocol {
        /// The object asked for.
        what: String,
        /// What was wrong.
        detail: String,
    },
}

impl OriginError {
    /// Whether the caller should try again: one attempt failed transiently. `Unavailable`
    /// is not: the layer that said it already spent its attempts, and retrying it again
    /// would multiply them (8 × 8 requests per chunk against an origin that stays down).
    pub fn is_transient(&self) -> bool {
        matches!(self, OriginError::Transient { .. })
    }

    /// Whether the origin could not be reached or kept failing (retried or not): a reason to
    /// use metadata known from before, never a wrong answer.
    pub fn is_outage(&self) -> bool {
        matches!(
            self,
            OriginError::Transient { .. } | OriginError::Unavailable { .. }
        )
    }

    /// The error to report once `attempts` attempts were made: a transient failure becomes
    /// [`OriginError::Unavailable`] (retried already, so no layer above retries it again).
    pub fn exhausted(self, attempts: u32) -> OriginError {
        match self {
            OriginError::Transient { what, detail, .. } => OriginError::Unavailable {
                what,
                attempts,
                detail,
            },
            e => e,
        }
    }

    /// The wait the origin asked for before the next attempt.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            OriginError::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// An origin of files. Implementations count their requests with [`count_request`].
#[async_trait]
pub trait Origin: Send + Sync + 'static {
    /// Resolves a branch, tag or commit to an immutable revision id.
    async fn resolve(&self, ns: &Namespace, revision: &str) -> Result<String, OriginError>;

    /// Every file of `ns` at the immutable revision `rev_id` (recursively).
    async fn list(&self, ns: &Namespace, rev_id: &str) -> Result<Listing, OriginError>;

    /// The bytes `range` of `file`. The stream yields exactly `range.end - range.start` bytes or
    /// ends with an error.
    async fn read(&self, file: &RemoteFile, range: Range<u64>) -> Result<ByteStream, OriginError>;
}

/// Routes each namespace to the origin of its scheme. Schemes left `None` answer with a clear
/// error naming what to configure.
#[derive(Default, Clone)]
pub struct Origins {
    /// `hf://`.
    pub hf: Option<Arc<dyn Origin>>,
    /// `s3://`.
    pub s3: Option<Arc<dyn Origin>>,
    /// `http://` and `https://`.
    pub http: Option<Arc<dyn Origin>>,
    /// `file://`.
    pub file: Option<Arc<dyn Origin>>,
}

impl Origins {
    fn route(&self, ns: &Namespace) -> Result<&Arc<dyn Origin>, OriginError> {
        let (o, hint) = match ns {
            Namespace::Hf { .. } => (&self.hf, "no Hub origin is configured"),
            Namespace::S3 { .. } => (&self.s3, "no S3 origin is configured"),
            Namespace::Http { .. } => (&self.http, "no HTTP origin is configured"),
            Namespace::File { .. } => (
                &self.file,
                "file:// origins are off: start the daemon with --file-root DIR",
            ),
        };
        o.as_ref().ok_or_else(|| OriginError::NotConfigured {
            what: ns.to_string(),
            hint,
        })
    }

    fn route_file(&self, file: &RemoteFile) -> Result<&Arc<dyn Origin>, OriginError> {
        let ns = locus_core::LocusUri::parse(&file.uri)
            .map_err(|e| OriginError::Protocol {
                what: file.path.clone(),
                detail: e.to_string(),
            })?
            .namespace;
        self.route(&ns)
    }
}

#[async_trait]
impl Origin for Origins {
    async fn resolve(&self, ns: &Namespace, revision: &str) -> Result<String, OriginError> {
        self.route(ns)?.resolve(ns, revision).await
    }

    async fn list(&self, ns: &Namespace, rev_id: &str) -> Result<Listing, OriginError> {
        self.route(ns)?.list(ns, rev_id).await
    }

    async fn read(&self, file: &RemoteFile, range: Range<u64>) -> Result<ByteStream, OriginError> {
        self.route_file(file)?.read(file, range).await
    }
}
