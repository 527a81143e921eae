//! A wrapper that makes any origin fail on demand, for tests of the layers above it.

use std::ops::Range;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use locus_core::{Listing, Namespace, RemoteFile};

use crate::{ByteStream, Origin, OriginError};

/// Wraps an origin; fails the next `fail_reads` reads with a transient error and counts reads.
pub struct FaultyOrigin<O> {
    inner: O,
    /// Reads still to fail.
    pub fail_reads: AtomicU32,
    /// Reads attempted (failed ones included).
    pub reads: AtomicU64,
    /// Revisions resolved (failed ones included).
    pub resolves: AtomicU64,
    /// Resolves still to fail, as an origin that is down fails them.
    pub fail_resolves: AtomicU32,
}

impl<O: Origin> FaultyOrigin<O> {
    /// Wraps `inner` with no faults armed.
    pub fn new(inner: O) -> Arc<Self> {
        Arc::new(Self {
            inner,
            fail_reads: AtomicU32::new(0),
            reads: AtomicU64::new(0),
            resolves: AtomicU64::new(0),
            fail_resolves: AtomicU32::new(0),
        })
    }
}

#[async_trait]
impl<O: Origin> Origin for FaultyOrigin<O> {
    async fn resolve(&self, ns: &Namespace, revision: &str) -> Result<String, OriginError> {
        self.resolves.fetch_add(1, Ordering::SeqCst);
        // After the inner origin's answer, so that a slow one holds a failure back too.
        let r = self.inner.resolve(ns, revision).await;
        if take_one(&self.fail_resolves) {
            return Err(OriginError::Unavailable {
                what: ns.to_string(),
                attempts: 1,
                detail: "injected fault".into(),
            });
        }
        r
    }

    async fn list(&self, ns: &Namespace, rev_id: &str) -> Result<Listing, OriginError> {
        self.inner.list(ns, rev_id).await
    }

    async fn read(&self, file: &RemoteFile, range: Range<u64>) -> Result<ByteStream, OriginError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        if take_one(&self.fail_reads) {
            return Err(OriginError::Transient {
                what: file.uri.clone(),
                detail: "injected fault".into(),
                retry_after: None,
            });
        }
        self.inner.read(file, range).await
    }
}

/// Takes one armed fault, if any is left.
fn take_one(n: &AtomicU32) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}
