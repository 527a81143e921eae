//! Origins: where bytes come from when no cache has them.
//!
//! [`Origin`] is the seam: the node is generic over it, tests wrap it ([`faulty::FaultyOrigin`])
//! to inject failures, and each scheme has one module ([`hf`] for the Hugging Face Hub).

use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use locus_core::{Namespace, RemoteFile};

pub mod faulty;
pub mod hf;
pub mod retry;

pub use hf::{HfConfig, HfOrigin};
pub use retry::RetryPolicy;

/// Bytes of one ranged read, in arrival order.
pub type ByteStream = BoxStream<'static, Result<Bytes, OriginError>>;

/// What went wrong at an origin. Messages name the object and say what to do; they never hold
/// credentials.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OriginError {
    /// 401/403: gated, private, or a bad token.
    #[error("{what}: access denied (HTTP {status}): the repo may be gated or private; set HF_TOKEN to a token that has access")]
    AccessDenied {
        /// The object asked for.
        what: String,
        /// HTTP status.
        status: u16,
    },
    /// The repo, revision or file does not exist.
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
    /// A transient failure that the caller may retry (a body cut short, a 5xx).
    #[error("{what}: {detail}")]
    Transient {
        /// The object asked for.
        what: String,
        /// What happened.
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
    /// Whether trying again may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            OriginError::Transient { .. } | OriginError::Unavailable { .. }
        )
    }
}

/// An origin of files. Implementations count their requests in the
/// `locus_origin_requests_total` metric, by `kind` (`revision`, `list`, `get`).
#[async_trait]
pub trait Origin: Send + Sync + 'static {
    /// Resolves a branch, tag or commit to an immutable revision id.
    async fn resolve(&self, ns: &Namespace, revision: &str) -> Result<String, OriginError>;

    /// Every file of `ns` at the immutable revision `rev_id` (recursively).
    async fn list(&self, ns: &Namespace, rev_id: &str) -> Result<Vec<RemoteFile>, OriginError>;

    /// The bytes `range` of `file`. The stream yields exactly `range.end - range.start` bytes or
    /// ends with an error.
    async fn read(&self, file: &RemoteFile, range: Range<u64>) -> Result<ByteStream, OriginError>;
}
