//! What one node knows of the cluster: the members, which of them answer, how loaded each is,
//! and so where each key should be read from.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use dashmap::DashMap;

use crate::ring::{capacity, choose_bounded, Ring};

/// Candidates looked at per key: past this many, the primary is as good as any.
const MAX_CANDIDATES: usize = 8;

/// Settings of the cluster view.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// This node's address as peers dial it.
    pub me: String,
    /// Bounded-load slack ε: a member above (1+ε) times the mean load passes keys on.
    pub epsilon: f64,
    /// Owners that hold each chunk after a cluster-scope warm.
    pub replicas: usize,
}

impl ClusterConfig {
    /// A cluster of one.
    pub fn solo(me: impl Into<String>) -> Self {
        Self {
            me: me.into(),
            epsilon: 0.25,
            replicas: 1,
        }
    }
}

/// A member's state as this node sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// This node.
    Me,
    /// Answering.
    Up,
    /// Not answering: skipped by readers until a health check succeeds.
    Down,
}

impl MemberState {
    /// `up` or `down` (this node is up).
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Me => "up",
            MemberState::Up => "up",
            MemberState::Down => "down",
        }
    }
}

/// One member, for status.
#[derive(Clone, Debug)]
pub struct MemberInfo {
    /// Address.
    pub addr: String,
    /// State.
    pub state: MemberState,
    /// Requests in flight from this node plus the load the member last reported.
    pub load: f64,
}

#[derive(Default)]
struct Peer {
    down_since: Option<Instant>,
    inflight: Arc<AtomicU32>,
    reported: f64,
}

/// Where to read a key from.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The first answering candidate: the only member that fetches the key from the origin.
    pub primary: String,
    /// Peers to try in order (never this node): the bounded-load choice first.
    pub order: Vec<String>,
    /// The first `replicas` answering candidates.
    pub owners: Vec<String>,
}

impl Plan {
    /// Whether this node is the key's primary owner.
    pub fn is_primary(&self, me: &str) -> bool {
        self.primary == me
    }
}

/// The cluster as one node sees it.
pub struct Cluster {
    cfg: ClusterConfig,
    ring: RwLock<Arc<Ring>>,
    peers: DashMap<String, Peer>,
}

/// Counts a request in flight to a peer for as long as it lives.
pub struct LoadGuard(Arc<AtomicU32>);

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Cluster {
    /// A view with this node as its only member.
    pub fn new(cfg: ClusterConfig) -> Arc<Cluster> {
        let ring = Ring::new([cfg.me.clone()]);
        metrics::gauge!(locus_core::metric::RING_MEMBERS).set(1.0);
        Arc::new(Cluster {
            cfg,
            ring: RwLock::new(Arc::new(ring)),
            peers: DashMap::new(),
        })
    }

    /// This node's address.
    pub fn me(&self) -> &str {
        &self.cfg.me
    }

    /// The current ring.
    pub fn ring(&self) -> Arc<Ring> {
        self.ring.read().map(|r| r.clone()).unwrap_or_default()
    }

    /// Replaces the member set (this node is always a member). Logs who joined and left.
    pub fn set_members(&self, members: impl IntoIterator<Item = String>) {
        let mut set: BTreeSet<String> = members.into_iter().collect();
        set.insert(self.cfg.me.clone());
        let old = self.ring();
        if old.members().iter().eq(set.iter()) {
            return;
        }
        for m in set.iter().filter(|m| !old.members().contains(m)) {
            tracing::info!(member = %m, "member joined");
        }
        for m in old.members().iter().filter(|m| !set.contains(*m)) {
            tracing::info!(member = %m, "member left");
            self.peers.remove(m);
        }
        metrics::gauge!(locus_core::metric::RING_MEMBERS).set(set.len() as f64);
        let ring = Arc::new(Ring::new(set));
        if let Ok(mut r) = self.ring.write() {
            *r = ring;
        }
    }

    /// Every member with its state and load.
    pub fn members(&self) -> Vec<MemberInfo> {
        self.ring()
            .members()
            .iter()
            .map(|m| {
                if *m == self.cfg.me {
                    return MemberInfo {
                        addr: m.clone(),
                        state: MemberState::Me,
                        load: 0.0,
                    };
                }
                let (state, load) = match self.peers.get(m) {
                    Some(p) => (
                        if p.down_since.is_some() {
                            MemberState::Down
                        } else {
                            MemberState::Up
                        },
                        p.inflight.load(Ordering::Relaxed) as f64 + p.reported,
                    ),
                    None => (MemberState::Up, 0.0),
                };
                MemberInfo {
                    addr: m.clone(),
                    state,
                    load,
                }
            })
            .collect()
    }

    /// Whether `addr` is this node or a member that answers.
    pub fn is_up(&self, addr: &str) -> bool {
        addr == self.cfg.me || self.peers.get(addr).is_none_or(|p| p.down_since.is_none())
    }

    /// Marks a peer as not answering, so that readers skip it until a health check succeeds.
    pub fn mark_down(&self, addr: &str, why: &str) {
        if addr == self.cfg.me {
            return;
        }
        let mut p = self.peers.entry(addr.to_string()).or_default();
        if p.down_since.is_none() {
            tracing::warn!(peer = addr, why, "peer marked down");
            metrics::counter!(locus_core::metric::PEER_DOWN).increment(1);
            p.down_since = Some(Instant::now());
        }
    }

    /// Records a successful exchange with `addr` and the load it reported.
    pub fn mark_up(&self, addr: &str, reported_load: f64) {
        if addr == self.cfg.me {
            return;
        }
        let mut p = self.peers.entry(addr.to_string()).or_default();
        if let Some(since) = p.down_since.take() {
            tracing::info!(peer = addr, down_for = ?since.elapsed(), "peer answers again");
        }
        p.reported = reported_load.max(0.0);
    }

    /// Counts one request in flight to `addr` until the guard drops.
    pub fn begin(&self, addr: &str) -> LoadGuard {
        let c = self
            .peers
            .entry(addr.to_string())
            .or_default()
            .inflight
            .clone();
        c.fetch_add(1, Ordering::Relaxed);
        LoadGuard(c)
    }

    fn load(&self, addr: &str) -> f64 {
        self.peers
            .get(addr)
            .map(|p| p.inflight.load(Ordering::Relaxed) as f64 + p.reported)
            .unwrap_or(0.0)
    }

    /// The first answering candidate of a key.
    pub fn primary(&self, hash: u64) -> String {
        let ring = self.ring();
        let p = ring
            .candidates(hash)
            .find(|c| self.is_up(c))
            .unwrap_or(&self.cfg.me)
            .to_string();
        p
    }

    /// Where to read the key with ring hash `hash` from.
    pub fn plan(&self, hash: u64) -> Plan {
        let ring = self.ring();
        let up: Vec<&str> = ring
            .candidates(hash)
            .filter(|c| self.is_up(c))
            .take(MAX_CANDIDATES)
            .collect();
        let primary = up.first().copied().unwrap_or(&self.cfg.me).to_string();
        let owners = up
            .iter()
            .take(self.cfg.replicas.max(1))
            .map(|s| s.to_string())
            .collect();
        let peers: Vec<&str> = up.iter().copied().filter(|c| *c != self.cfg.me).collect();
        let total: f64 = ring
            .members()
            .iter()
            .filter(|m| **m != self.cfg.me && self.is_up(m))
            .map(|m| self.load(m))
            .sum();
        let n = ring.len().saturating_sub(1).max(1);
        let cap = capacity(total, n, self.cfg.epsilon);
        let mut order = Vec::with_capacity(peers.len());
        if let Some(c) = choose_bounded(peers.iter().copied(), |m| self.load(m), cap) {
            order.push(c.to_string());
        }
        for p in peers {
            if !order.iter().any(|o| o == p) {
                order.push(p.to_string());
            }
        }
        Plan {
            primary,
            order,
            owners,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::key_hash;

    fn cluster(n: usize) -> Arc<Cluster> {
        let c = Cluster::new(ClusterConfig::solo("m0:1"));
        c.set_members((0..n).map(|i| format!("m{i}:1")));
        c
    }

    #[test]
    fn down_members_are_skipped_and_come_back() {
        let c = cluster(3);
        let h = (0..100u64)
            .map(|k| key_hash(&k.to_le_bytes()))
            .find(|h| c.plan(*h).primary != "m0:1")
            .unwrap();
        let p = c.plan(h);
        c.mark_down(&p.primary, "test");
        let q = c.plan(h);
        assert_ne!(q.primary, p.primary);
        assert!(!q.order.contains(&p.primary));
        c.mark_up(&p.primary, 0.0);
        assert_eq!(c.plan(h).primary, p.primary);
    }

    #[test]
    fn a_loaded_primary_passes_reads_on() {
        let c = cluster(4);
        let h = (0..100u64)
            .map(|k| key_hash(&k.to_le_bytes()))
            .find(|h| c.plan(*h).primary != "m0:1")
            .unwrap();
        let p = c.plan(h);
        assert_eq!(p.order[0], p.primary);
        let _g: Vec<_> = (0..10).map(|_| c.begin(&p.primary)).collect();
        let q = c.plan(h);
        assert_ne!(
            q.order[0], p.primary,
            "a full primary should pass the read on"
        );
        assert_eq!(q.primary, p.primary, "it stays the origin fetcher");
        drop(_g);
        assert_eq!(c.plan(h).order[0], p.primary);
    }

    #[test]
    fn members_list_states() {
        let c = cluster(3);
        c.mark_down("m2:1", "test");
        let m = c.members();
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].state, MemberState::Me);
        assert_eq!(m[2].state, MemberState::Down);
        c.set_members(["m1:1".to_string()]);
        assert_eq!(c.members().len(), 2);
    }
}
