//! Ring simulation: 100 to 1,000 nodes under a Zipf-skewed chunk workload.
//!
//! For each cluster size it reports, side by side:
//! - the busiest node's load over the mean with plain consistent hashing (every request to the
//!   key's primary) and with bounded loads (ε = 0.25 and others; the paper's model: each request
//!   is a ball that goes to the first candidate under `ceil((1+ε)(L+1)/n)`);
//! - the share of requests served by their primary, and the extra copies bounded loads cause
//!   (distinct node-chunk pairs beyond one per chunk: bytes a secondary fetched from the primary);
//! - the fraction of keys whose primary moves when one node joins and when one leaves
//!   (ideal 1/(n+1) and 1/n).
//!
//! `cargo bench -p locus-cluster --bench ring_sim` (`-- --quick` for a smaller run).

use std::collections::HashSet;
use std::time::Instant;

use locus_cluster::ring::{capacity, choose_bounded, key_hash, Ring};
use rand::{Rng, SeedableRng};

struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Zipf {
        let mut acc = 0.0;
        let mut cdf = Vec::with_capacity(n);
        for k in 1..=n {
            acc += 1.0 / (k as f64).powf(s);
            cdf.push(acc);
        }
        for c in &mut cdf {
            *c /= acc;
        }
        Zipf { cdf }
    }

    fn sample(&self, rng: &mut impl Rng) -> usize {
        let u: f64 = rng.random();
        self.cdf.partition_point(|c| *c < u).min(self.cdf.len() - 1)
    }
}

fn nodes(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("10.{}.{}.{}:7070", i / 65536, (i / 256) % 256, i % 256))
        .collect()
}

fn max_over_mean(loads: &[f64]) -> f64 {
    let mean = loads.iter().sum::<f64>() / loads.len() as f64;
    loads.iter().cloned().fold(0.0, f64::max) / mean
}

fn moved(a: &Ring, b: &Ring, hashes: &[u64]) -> f64 {
    hashes
        .iter()
        .filter(|h| a.primary(**h) != b.primary(**h))
        .count() as f64
        / hashes.len() as f64
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let keys = if quick { 20_000 } else { 100_000 };
    let requests = if quick { 200_000 } else { 2_000_000 };
    let zipf_s = 1.0;
    // Chunk keys as the node forms them: file key, chunk size, index.
    let hashes: Vec<u64> = (0..keys)
        .map(|i| {
            key_hash(format!("sha256:{:064x}:{}#8388608#{}", i / 16, 1u64 << 30, i % 16).as_bytes())
        })
        .collect();
    let zipf = Zipf::new(keys, zipf_s);
    println!(
        "ring simulation: {keys} chunk keys, {requests} requests, Zipf s={zipf_s}, {} virtual nodes per member",
        locus_cluster::ring::VNODES
    );
    println!("| nodes | keys max/mean | plain CH max/mean | bounded ε=0.25 max/mean | ε=0.1 | ε=0.5 | at primary (ε=0.25) | extra copies (ε=0.25) | moved on join (ideal) | moved on leave (ideal) |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for n in [100usize, 300, 1000] {
        let t = Instant::now();
        let members = nodes(n);
        let ring = Ring::new(members.iter().cloned());
        let index: std::collections::HashMap<&str, usize> = ring
            .members()
            .iter()
            .enumerate()
            .map(|(i, m)| (m.as_str(), i))
            .collect();
        // Keys per node, no skew.
        let mut per_node = vec![0.0; n];
        for h in &hashes {
            per_node[index[ring.primary(*h).unwrap()]] += 1.0;
        }
        let keys_ratio = max_over_mean(&per_node);
        // One request sequence for every policy.
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let seq: Vec<usize> = (0..requests).map(|_| zipf.sample(&mut rng)).collect();
        let primaries: Vec<usize> = hashes
            .iter()
            .map(|h| index[ring.primary(*h).unwrap()])
            .collect();
        let mut plain = vec![0.0; n];
        for k in &seq {
            plain[primaries[*k]] += 1.0;
        }
        let mut bounded = Vec::new();
        let mut at_primary = 0.0;
        let mut extra = 0.0;
        for eps in [0.25, 0.1, 0.5] {
            let mut load = vec![0.0; n];
            let mut total = 0.0;
            let mut copies: HashSet<(usize, usize)> = HashSet::new();
            let mut primary_hits = 0usize;
            for k in &seq {
                let cap = capacity(total, n, eps);
                let c = choose_bounded(
                    ring.candidates(hashes[*k]).map(|m| index[m]),
                    |i| load[i],
                    cap,
                )
                .unwrap();
                load[c] += 1.0;
                total += 1.0;
                if c == primaries[*k] {
                    primary_hits += 1;
                } else {
                    copies.insert((c, *k));
                }
            }
            if eps == 0.25 {
                at_primary = primary_hits as f64 / requests as f64;
                extra = copies.len() as f64 / keys as f64;
            }
            bounded.push(max_over_mean(&load));
        }
        let joined = Ring::new(members.iter().cloned().chain(["10.255.0.1:7070".into()]));
        let left = Ring::new(members.iter().skip(1).cloned());
        println!(
            "| {n} | {keys_ratio:.3} | {:.2} | {:.3} | {:.3} | {:.3} | {:.1}% | {:.1}% of chunks | {:.4} ({:.4}) | {:.4} ({:.4}) |",
            max_over_mean(&plain),
            bounded[0],
            bounded[1],
            bounded[2],
            at_primary * 100.0,
            extra * 100.0,
            moved(&ring, &joined, &hashes),
            1.0 / (n + 1) as f64,
            moved(&ring, &left, &hashes),
            1.0 / n as f64,
        );
        eprintln!(
            "  ({n} nodes simulated in {:.1} s)",
            t.elapsed().as_secs_f64()
        );
    }
}
