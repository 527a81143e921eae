//! What is cached: the repos and buckets of this node's cache (the namespace view's folders),
//! and what the cluster holds of files: each member says which chunks it has on disk, and a chunk
//! counts once whoever holds it. `locus ls --cluster` shows it, so that a cluster-scope warm
//! (each chunk at its owners) does not look partly done from any one node.

use futures::StreamExt;
use locus_core::{ChunkLayout, Files};
use locus_grpc::v1 as pb;

use crate::peer::MAX_HOLDS_KEYS;
use crate::Node;

/// Members asked at once.
const MEMBERS_AT_ONCE: usize = 16;

/// The cluster's holdings of some files.
#[derive(Debug, Default)]
pub struct Coverage {
    /// For each file, the fraction of its chunks some member holds.
    pub fractions: Vec<f64>,
    /// Members marked down or that did not answer: what they hold is not counted.
    pub unanswered: Vec<String>,
}

impl Node {
    /// The repos (`hf://ORG/NAME`, `hf://datasets/ORG/NAME`) and buckets (`s3://BUCKET`) this
    /// node's cache holds files of, sorted, each once: O(namespaces), kept by the store.
    pub fn cached_namespaces(&self) -> Vec<String> {
        self.store.namespaces()
    }

    /// What the members (this one included) hold of `files`.
    pub async fn coverage(&self, files: &Files) -> Coverage {
        let (keys, counts): (Vec<String>, Vec<u32>) = files
            .iter()
            .map(|f| (f.key, ChunkLayout::new(f.size, self.cfg.chunk_size).count()))
            .unzip();
        let mut held: Vec<Vec<u8>> = keys.iter().map(|k| self.store.chunk_bitmap(k)).collect();
        let mut unanswered = Vec::new();
        if let Some(peers) = &self.peers {
            // A member marked down is not asked, and counts as not answering.
            let (others, down): (Vec<_>, Vec<_>) = self
                .cluster
                .members()
                .into_iter()
                .filter(|m| m.addr != self.cluster.me())
                .partition(|m| m.state != locus_cluster::MemberState::Down);
            unanswered.extend(down.into_iter().map(|m| m.addr));
            let others: Vec<String> = others.into_iter().map(|m| m.addr).collect();
            let keys = &keys;
            let mut answers = futures::stream::iter(others)
                .map(|addr| async move {
                    let mut maps = Vec::with_capacity(keys.len());
                    for batch in keys.chunks(MAX_HOLDS_KEYS) {
                        let req = pb::HoldsRequest {
                            keys: batch.to_vec(),
                            chunk_size: self.cfg.chunk_size,
                        };
                        match peers.holds(&addr, req).await {
                            Ok(r) if r.chunks.len() == batch.len() => maps.extend(r.chunks),
                            Ok(_) => return Err(addr),
                            Err(e) => {
                                tracing::warn!(peer = addr, error = %e, "a member did not say what it holds");
                                return Err(addr);
                            }
                        }
                    }
                    Ok(maps)
                })
                .buffer_unordered(MEMBERS_AT_ONCE);
            while let Some(a) = answers.next().await {
                match a {
                    Ok(maps) => merge(&mut held, &counts, maps),
                    Err(addr) => unanswered.push(addr),
                }
            }
        }
        unanswered.sort();
        let fractions = counts
            .iter()
            .zip(&held)
            .map(|(&count, bits)| {
                if count == 0 {
                    return 1.0;
                }
                let n = (0..count)
                    .filter(|i| {
                        bits.get(*i as usize / 8)
                            .is_some_and(|b| b & (1 << (i % 8)) != 0)
                    })
                    .count();
                n as f64 / count as f64
            })
            .collect();
        Coverage {
            fractions,
            unanswered,
        }
    }
}

/// Adds a member's answer `theirs` (a bitmap per file) to `held`; bytes past each file's
/// `counts` chunks (from a hostile or confused member) count for nothing.
pub(crate) fn merge(held: &mut [Vec<u8>], counts: &[u32], theirs: Vec<Vec<u8>>) {
    for ((mine, theirs), count) in held.iter_mut().zip(theirs).zip(counts) {
        let need = (*count as usize).div_ceil(8).min(theirs.len());
        union(mine, &theirs[..need]);
    }
}

/// Sets in `a` every bit set in `b`.
fn union(a: &mut Vec<u8>, b: &[u8]) {
    if a.len() < b.len() {
        a.resize(b.len(), 0);
    }
    for (x, y) in a.iter_mut().zip(b) {
        *x |= y;
    }
}
