//! What the chunk fetcher shares across fetches: one fetch per chunk on this node at a time
//! (readers of a chunk being fetched join it), and the origin's connection permits and retry
//! policy, which every fetch from the origin goes through ([`Fetches::origin`]).

use std::future::Future;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use futures::future::{BoxFuture, Shared};
use futures::FutureExt;
use locus_origin::RetryPolicy;
use tokio::sync::Semaphore;

use crate::read::Source;
use crate::NodeError;

type ChunkFuture = Shared<BoxFuture<'static, Result<Source, NodeError>>>;

pub(crate) struct Fetches {
    /// Fetches under way, by file key and chunk.
    inflight: DashMap<(String, u32), ChunkFuture>,
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
    /// here, starts the fetch `start()` makes as a task (a reader that goes away does not
    /// cancel the fetch others wait on), which must call [`Fetches::finished`] as it ends. The
    /// check and the start happen under the entry's lock: one fetch per chunk.
    pub(crate) fn join<F>(
        &self,
        key: (String, u32),
        present: impl FnOnce() -> bool,
        start: impl FnOnce() -> F,
    ) -> Joined
    where
        F: Future<Output = Result<Source, NodeError>> + Send + 'static,
    {
        match self.inflight.entry(key) {
            Entry::Occupied(o) => Joined::Fetch(o.get().clone()),
            Entry::Vacant(v) => {
                if present() {
                    return Joined::Hit;
                }
                let task = tokio::spawn(start());
                let fut =
                    async move { task.await.map_err(|e| NodeError::Internal(e.to_string()))? }
                        .boxed()
                        .shared();
                v.insert(fut.clone());
                Joined::Fetch(fut)
            }
        }
    }

    /// Ends the record of a fetch started by [`Fetches::join`].
    pub(crate) fn finished(&self, key: &(String, u32)) {
        self.inflight.remove(key);
    }

    /// Runs `op` against the origin: one connection permit per attempt (none held while
    /// waiting to retry), transient failures retried per the node's policy. The error comes
    /// back with the attempts made.
    pub(crate) async fn origin<T, Fut: Future<Output = Result<T, NodeError>>>(
        &self,
        mut op: impl FnMut() -> Fut,
        on_retry: impl FnMut(u32, &NodeError, std::time::Duration),
    ) -> Result<T, (NodeError, u32)> {
        locus_origin::retry::retry(
            self.retry,
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
