//! Health checks of the other members: what brings a peer that was marked down back.

use std::sync::Arc;
use std::time::Duration;

use crate::Node;

/// How often members are checked.
pub const HEALTH_EVERY: Duration = Duration::from_secs(1);
/// Failed health checks in a row that mark a member down.
pub const HEALTH_FAILURES: u32 = 2;
/// Members that are up checked per round.
pub const UP_CHECKS: usize = 32;

impl Node {
    /// Health checks: every [`HEALTH_EVERY`], the members that are down (so that they come back
    /// as soon as they answer) and a rotating share of the others, at most [`UP_CHECKS`] of them
    /// (their load, and failures no reader has met yet): each member is seen every few seconds
    /// in a small cluster without all-to-all traffic in a large one. Runs until the node is
    /// dropped.
    pub fn spawn_health_checks(self: &Arc<Self>) {
        let node = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEALTH_EVERY);
            let mut round = 0usize;
            // Consecutive failed checks per member: one slow answer on a busy machine must not
            // move the member's keys (readers still mark a peer down at its first failure).
            let mut failures: std::collections::HashMap<String, u32> = Default::default();
            loop {
                tick.tick().await;
                round += 1;
                let Some(node) = node.upgrade() else { return };
                let Some(peers) = node.peers.clone() else {
                    return;
                };
                let me = node.cluster.me().to_string();
                let ring = node.cluster.ring();
                let others: Vec<&String> = ring.members().iter().filter(|m| **m != me).collect();
                let (down, up): (Vec<&String>, Vec<&String>) =
                    others.into_iter().partition(|m| !node.cluster.is_up(m));
                let start = (round * UP_CHECKS) % up.len().max(1);
                let members: Vec<String> = down
                    .into_iter()
                    .chain(
                        up.iter()
                            .cycle()
                            .skip(start)
                            .take(UP_CHECKS.min(up.len()))
                            .copied(),
                    )
                    .cloned()
                    .collect();
                let peers = &peers;
                let checks = members
                    .iter()
                    .map(|m| async move { (m, peers.health(m).await) });
                for (m, r) in futures::future::join_all(checks).await {
                    if r.is_ok() {
                        failures.remove(m);
                    }
                    match r {
                        Ok(h) if h.chunk_size == node.cfg.chunk_size => {
                            node.cluster.mark_up(m, h.load as f64)
                        }
                        Ok(h) => node.cluster.mark_down(
                            m,
                            &format!(
                                "chunk size {} differs from this node's {}",
                                h.chunk_size, node.cfg.chunk_size
                            ),
                        ),
                        Err(e) => {
                            let n = failures.entry(m.clone()).or_default();
                            *n += 1;
                            if *n >= HEALTH_FAILURES || !node.cluster.is_up(m) {
                                node.cluster.mark_down(m, &e.to_string());
                            }
                        }
                    }
                }
            }
        });
    }
}
