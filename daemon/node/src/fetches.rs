//! What the chunk fetcher shares across fetches: one fetch per chunk on this node at a time
//! (readers of a chunk being fetched join it), and the origin's connection permits and retry
//! policy, which every fetch from the origin goes through ([`Fetches::origin`]).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use futures::future::{BoxFuture, Shared};
use futures::FutureExt;
use locus_origin::RetryPolicy;
use tokio::sync::Semaphore;

use crate::read::Source;
use crate::NodeError;

type ChunkFuture = Shared<BoxFuture<'static, Result<Source, NodeError>>>;

/// What a fetch under way has done so far, for progress reports.
#[derive(Default)]
pub(crate) struct Underway {
    /// Bytes of the chunk received by the attempt under way.
    pub received: AtomicU64,
    /// The retry it waits on, e.g. "origin: retry 3/8, 503 Service Unavailable".
    pub note: Mutex<Option<String>>,
}

impl Underway {
    /// A new attempt: what the last one received does not count.
    pub(crate) fn attempt(&self) {
        self.received.store(0, Ordering::Relaxed);
    }

    pub(crate) fn add(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn retrying(&self, note: String) {
        *self.note.lock().unwrap_or_else(|e| e.into_inner()) = Some(note);
    }
}

pub(crate) struct Fetches {
    /// Fetches under way, by file key and chunk.
    inflight: DashMap<(String, u32), (ChunkFuture, Arc<Underway>)>,
    /// Origin connections at once.
    permits: Semaphore,
    retry: RetryPolicy,
}

/// A fetch joined or started by [`Fetches::join`].
pub(crate) enum Joined {
    /// The chunk is already here.
    Hit,
    /// The fetch (already under way, or just started) to wait on.
    Fetch(ChunkFuture),
}

impl Fetches {
    pub(crate) fn new(concurrency: usize, retry: RetryPolicy) -> Self {
        Self {
            inflight: DashMap::new(),
            permits: Semaphore::new(concurrency.max(1)),
            retry,
        }
    }

    /// Joins the fetch of chunk `key` under way; else, unless `present()` says the chunk is
    /// here, starts the fetch `start(underway)` makes as a task (a reader that goes away does
    /// not cancel the fetch others wait on), which reports to `underway` and must call
    /// [`Fetches::finished`] as it ends. The check and the start happen under the entry's
    /// lock: one fetch per chunk.
    pub(crate) fn join<F>(
        &self,
        key: (String, u32),
        present: impl FnOnce() -> bool,
        start: impl FnOnce(Arc<Underway>) -> F,
    ) -> Joined
    where
        F: Future<Output = Result<Source, NodeError>> + Send + 'static,
    {
        match self.inflight.entry(key) {
            Entry::Occupied(o) => Joined::Fetch(o.get().0.clone()),
            Entry::Vacant(v) => {
                if present() {
                    return Joined::Hit;
                }
                let underway = Arc::new(Underway::default());
                let task = tokio::spawn(start(underway.clone()));
                let fut =
                    async move { task.await.map_err(|e| NodeError::Internal(e.to_string()))? }
                        .boxed()
                        .shared();
                v.insert((fut.clone(), underway));
                Joined::Fetch(fut)
            }
        }
    }

    /// Bytes received so far by the fetches under way of files `wanted` says are of interest,
    /// and the retry one of them waits on, if any.
    pub(crate) fn underway(&self, wanted: impl Fn(&str) -> bool) -> (u64, Option<String>) {
        let mut bytes = 0u64;
        let mut note = None;
        for e in self.inflight.iter() {
            if !wanted(&e.key().0) {
                continue;
            }
            let u = &e.value().1;
            bytes = bytes.saturating_add(u.received.load(Ordering::Relaxed));
            if note.is_none() {
                note = u.note.lock().unwrap_or_else(|e| e.into_inner()).clone();
            }
        }
        (bytes, note)
    }

    /// Attempts per chunk from the origin.
    pub(crate) fn attempts(&self) -> u32 {
        self.retry.attempts
    }

    /// Ends the record of a fetch started by [`Fetches::join`].
    pub(crate) fn finished(&self, key: &(String, u32)) {
        self.inflight.remove(key);
    }

    /// Runs `op` against the origin: one connection permit per attempt (none held while
    /// waiting to retry), transient failures retried per the node's policy, up to `attempts`
    /// in all (at most the policy's). The error comes back with the attempts made.
    pub(crate) async fn origin<T, Fut: Future<Output = Result<T, NodeError>>>(
        &self,
        attempts: u32,
        mut op: impl FnMut() -> Fut,
        on_retry: impl FnMut(u32, &NodeError, std::time::Duration),
    ) -> Result<T, (NodeError, u32)> {
        locus_origin::retry::retry(
            locus_origin::RetryPolicy {
                attempts: attempts.clamp(1, self.retry.attempts),
                ..self.retry
            },
            || {
                let attempt = op();
                async {
                    let _permit = self
                        .permits
                        .acquire()
                        .await
                        .map_err(|e| NodeError::Internal(e.to_string()))?;
                    attempt.await
                }
            },
            on_retry,
        )
        .await
    }
}
