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
/// How long a yes stands in for the Hub's answer while the Hub cannot be asked.
pub const STALE_YES: Duration = Duration::from_secs(3600);

/// [`HubAccess`] answers, kept for a TTL.
pub struct AccessCache {
    hub: Arc<dyn HubAccess>,
    ttl: Duration,
    /// (repo, SHA-256 of the token or `None`, TTL window) → answer. Tokens are kept only as
    /// hashes. Each key's windows are offset by its own hash, so answers do not all expire at
    /// once (and the Hub is not asked about every repo and token in the same second).
    answers: quick_cache::sync::Cache<(String, Option<[u8; 32]>, u64), Answer>,
    /// (repo, token hash) → when the Hub last said yes (ms since the epoch).
    last_yes: quick_cache::sync::Cache<(String, Option<[u8; 32]>), u64>,
}

impl AccessCache {
    /// Answers from `hub`, each kept for `ttl` (at least a second).
    pub fn new(hub: Arc<dyn HubAccess>, ttl: Duration) -> Self {
        AccessCache {
            hub,
            ttl: ttl.max(Duration::from_secs(1)),
            answers: quick_cache::sync::Cache::new(MAX_ANSWERS),
            last_yes: quick_cache::sync::Cache::new(MAX_ANSWERS),
        }
    }

    /// Whether a client presenting `token` may read `ns`. An error (the Hub unreachable, an
    /// answer not understood) is not kept and is not a yes, unless the Hub said yes to this
    /// repo and token less than [`STALE_YES`] ago: an outage of the Hub does not take away
    /// what it granted just before.
    pub async fn check(
        &self,
        ns: &Namespace,
        token: Option<&Secret>,
    ) -> Result<Answer, OriginError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let hash: Option<[u8; 32]> =
            token.map(|t| sha2::Sha256::digest(t.expose().as_bytes()).into());
        let who = (ns.to_string(), hash);
        let ttl = self.ttl.as_millis().max(1) as u64;
        let offset = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            who.hash(&mut h);
            h.finish() % ttl
        };
        let key = (who.0.clone(), hash, (now + offset) / ttl);
        self.answers
            .get_or_insert_async(&key, async {
                let answer = match self.hub.check(ns, token).await {
                    Ok(()) => {
                        self.last_yes.insert(who.clone(), now);
                        Ok(Answer::Yes)
                    }
                    Err(OriginError::AccessDenied { detail, .. }) => Ok(Answer::Denied(detail)),
                    Err(e @ OriginError::NotFound { .. }) => Ok(Answer::Missing(e.to_string())),
                    Err(e) => match self.last_yes.get(&who) {
                        Some(t) if now.saturating_sub(t) < STALE_YES.as_millis() as u64 => {
                            tracing::warn!(repo = %ns, error = %e, "the Hub cannot be asked; keeping its recent yes");
                            Ok(Answer::Yes)
                        }
                        _ => Err(e),
                    },
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
    async fn a_hub_that_cannot_be_asked_keeps_a_recent_yes_but_grants_nothing_new() {
        let fake = Arc::new(Fake {
            asked: AtomicU32::new(0),
            fail: AtomicU32::new(0),
        });
        let cache = AccessCache::new(fake.clone(), Duration::from_secs(1));
        let ns = locus_core::LocusUri::parse("hf://acme/model")
            .unwrap()
            .namespace;
        let good = Secret::new("good");
        assert_eq!(cache.check(&ns, Some(&good)).await.unwrap(), Answer::Yes);
        // The Hub goes down; the next window asks again and gets an error.
        fake.fail.store(100, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let asked = fake.asked.load(Ordering::SeqCst);
        assert_eq!(cache.check(&ns, Some(&good)).await.unwrap(), Answer::Yes);
        assert_eq!(fake.asked.load(Ordering::SeqCst), asked + 1, "it was asked");
        // No yes before: an error, not a yes.
        assert!(cache.check(&ns, Some(&Secret::new("other"))).await.is_err());
        assert!(cache.check(&ns, None).await.is_err());
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
