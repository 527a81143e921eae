//! Who may read a gated or private repo through the gateway: a client whose own token the Hub
//! accepts for it. The node fetches with its own token; its rights are never lent to a client
//! that has none. The Hub is asked once per repo and token (or no token) per TTL window,
//! however many requests arrive at once; its answers are kept, its failures are not.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use locus_core::{Namespace, Secret};
use locus_origin::{HfOrigin, OriginError};
use sha2::Digest as _;

/// Asks the Hub whether a client's token (or none) may read a repo's files.
#[async_trait]
pub trait HubAccess: Send + Sync + 'static {
    /// `Ok` when the Hub says yes.
    async fn check(&self, ns: &Namespace, token: Option<&Secret>) -> Result<(), OriginError>;
}

#[async_trait]
impl HubAccess for HfOrigin {
    async fn check(&self, ns: &Namespace, token: Option<&Secret>) -> Result<(), OriginError> {
        self.check_access(ns, token).await
    }
}

/// The Hub's answer for one repo and token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The client may read the repo.
    Yes,
    /// It may not (gated, private, a bad token): the Hub's words.
    Denied(String),
    /// The Hub does not show the repo to this client.
    Missing(String),
}

/// Answers kept at most (repo × token × window).
const MAX_ANSWERS: usize = 65_536;

/// [`HubAccess`] answers, kept for a TTL.
pub struct AccessCache {
    hub: Arc<dyn HubAccess>,
    ttl: Duration,
    /// (repo, SHA-256 of the token or `None`, TTL window) → answer. Tokens are kept only as
    /// hashes.
    answers: quick_cache::sync::Cache<(String, Option<[u8; 32]>, u64), Answer>,
}

impl AccessCache {
    /// Answers from `hub`, each kept for `ttl` (at least a second).
    pub fn new(hub: Arc<dyn HubAccess>, ttl: Duration) -> Self {
        AccessCache {
            hub,
            ttl: ttl.max(Duration::from_secs(1)),
            answers: quick_cache::sync::Cache::new(MAX_ANSWERS),
        }
    }

    /// Whether a client presenting `token` may read `ns`. An error (the Hub unreachable, an
    /// answer not understood) is neither kept nor taken as a yes.
    pub async fn check(
        &self,
        ns: &Namespace,
        token: Option<&Secret>,
    ) -> Result<Answer, OriginError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let window = now / self.ttl.as_millis().max(1) as u64;
        let hash = token.map(|t| sha2::Sha256::digest(t.expose().as_bytes()).into());
        let key = (ns.to_string(), hash, window);
        self.answers
            .get_or_insert_async(&key, async {
                let answer = match self.hub.check(ns, token).await {
                    Ok(()) => Ok(Answer::Yes),
                    Err(OriginError::AccessDenied { detail, .. }) => Ok(Answer::Denied(detail)),
                    Err(e @ OriginError::NotFound { .. }) => Ok(Answer::Missing(e.to_string())),
                    Err(e) => Err(e),
                };
                let label = match &answer {
                    Ok(Answer::Yes) => "yes",
                    Ok(Answer::Denied(_)) => "denied",
                    Ok(Answer::Missing(_)) => "missing",
                    Err(_) => "error",
                };
                metrics::counter!(crate::GATEWAY_ACCESS_CHECKS, "answer" => label).increment(1);
                answer
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A Hub that lets `good` read everything, says no to any other token, and counts.
    struct Fake {
        asked: AtomicU32,
        fail: AtomicU32,
    }

    #[async_trait]
    impl HubAccess for Fake {
        async fn check(&self, _: &Namespace, token: Option<&Secret>) -> Result<(), OriginError> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            if self.fail.load(Ordering::SeqCst) > 0 {
                self.fail.fetch_sub(1, Ordering::SeqCst);
                return Err(OriginError::Transient {
                    what: "hub".into(),
                    detail: "down".into(),
                    retry_after: None,
                });
            }
            match token.map(|t| t.expose().to_string()).as_deref() {
                Some("good") => Ok(()),
                _ => Err(OriginError::AccessDenied {
                    what: "repo".into(),
                    detail: "HTTP 401".into(),
                    hint: "",
                }),
            }
        }
    }

    #[tokio::test]
    async fn the_hub_is_asked_once_per_repo_and_token_and_failures_are_not_kept() {
        let fake = Arc::new(Fake {
            asked: AtomicU32::new(0),
            fail: AtomicU32::new(1),
        });
        let cache = Arc::new(AccessCache::new(fake.clone(), Duration::from_secs(3600)));
        let ns = locus_core::LocusUri::parse("hf://acme/model")
            .unwrap()
            .namespace;
        let good = Secret::new("good");
        // A failure is an error, not an answer, and is not kept.
        assert!(cache.check(&ns, Some(&good)).await.is_err());
        let asks: Vec<_> = (0..16)
            .map(|_| {
                let (cache, ns, good) = (cache.clone(), ns.clone(), good.clone());
                tokio::spawn(async move { cache.check(&ns, Some(&good)).await })
            })
            .collect();
        for a in asks {
            assert_eq!(a.await.unwrap().unwrap(), Answer::Yes);
        }
        assert_eq!(
            fake.asked.load(Ordering::SeqCst),
            2,
            "16 requests at once ask once"
        );
        assert!(matches!(
            cache.check(&ns, Some(&Secret::new("bad"))).await.unwrap(),
            Answer::Denied(_)
        ));
        assert!(matches!(
            cache.check(&ns, None).await.unwrap(),
            Answer::Denied(_)
        ));
        assert!(matches!(
            cache.check(&ns, None).await.unwrap(),
            Answer::Denied(_)
        ));
        let other = locus_core::LocusUri::parse("hf://acme/other")
            .unwrap()
            .namespace;
        assert_eq!(cache.check(&other, Some(&good)).await.unwrap(), Answer::Yes);
        assert_eq!(fake.asked.load(Ordering::SeqCst), 5);
    }
}
