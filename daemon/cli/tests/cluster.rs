//! Several real daemons on loopback, talking gRPC, against a simulated Hub. Every read is
//! compared with the origin's bytes; origin traffic is counted by the simulator.

mod common;

use std::time::{Duration, Instant};

use common::*;
use locus_testorigin::{Faults, SimOptions};
use nix::sys::signal::Signal;

const REPO: &str = "acme/model";
const CHUNK: &str = "256KiB";

/// Starts `n` daemons that know each other statically.
fn static_cluster(env: &Env, n: usize, extra: &[&str]) -> (Vec<Daemon>, Vec<String>) {
    let addrs: Vec<String> = (0..n)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let peers = addrs.join(",");
    let ds: Vec<Daemon> = (0..n)
        .map(|i| {
            let mut args = vec!["--chunk-size", CHUNK, "--listen", &addrs[i], "--peers", &peers];
            args.extend_from_slice(extra);
            env.daemon(&format!("n{i}"), &args, &[])
        })
        .collect();
    converge(&ds);
    (ds, addrs)
}

/// Waits until every node sees every member up.
fn converge(ds: &[Daemon]) {
    for d in ds {
        wait_for("every member up", 20, || {
            let m = members(d);
            m.len() == ds.len() && m.iter().all(|(_, s)| s == "up")
        });
    }
}

fn api_calls(env: &Env) -> u64 {
    let s = env.sim.stats();
    s.requests
        .iter()
        .filter(|(k, _)| k.starts_with("api_"))
        .map(|(_, v)| v)
        .sum()
}

fn members(d: &Daemon) -> Vec<(String, String)> {
    let st = d.json(&["status", "--json"]);
    st["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["addr"].as_str().unwrap().to_string(),
                m["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn total(files: &[(String, bytes::Bytes)]) -> u64 {
    files.iter().map(|(_, b)| b.len() as u64).sum()
}

#[test]
fn a_cluster_warm_reads_the_origin_once_and_every_node_reads_from_peers() {
    let env = Env::new();
    let files = random_files(4, 3 << 20, 11);
    env.sim.commit("model", REPO, files.clone());
    let (ds, addrs) = static_cluster(&env, 3, &[]);

    let out = ds[0].ok(&["warm", "hf://acme/model", "--scope", "cluster"]);
    let summary = String::from_utf8_lossy(&out);
    assert!(summary.contains("warmed 4 files"), "{summary}");
    let after_warm = env.sim.stats();
    assert_eq!(
        after_warm.data_bytes,
        total(&files),
        "each byte from the origin once"
    );
    let api_after_warm = api_calls(&env);

    // The other nodes read everything from the owners: no origin bytes, no origin API call.
    for d in &ds[1..] {
        for (path, want) in &files {
            let got = d.ok(&["cat", &format!("hf://acme/model/{path}")]);
            assert!(got == want.to_vec(), "{path} differs");
        }
    }
    assert_eq!(env.sim.stats().data_bytes, total(&files));
    assert_eq!(api_calls(&env), api_after_warm, "metadata came from its owner");

    let st = ds[1].json(&["status", "--json"]);
    assert!(st["peer_bytes"].as_u64().unwrap() > 0, "{st}");
    let from_origin: u64 = ds
        .iter()
        .map(|d| d.json(&["status", "--json"])["origin_bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(from_origin, total(&files), "the owners' origin bytes add up to the repo");
    let m = members(&ds[1]);
    assert_eq!(m.len(), 3, "{m:?}");
    for a in &addrs {
        let state = &m.iter().find(|(x, _)| x == a).unwrap().1;
        assert!(
            state == "up",
            "{a} {state}"
        );
    }
    // Ownership is spread: every node served some chunks.
    for d in &ds {
        let st = d.json(&["status", "--json"]);
        assert!(st["peer_bytes_sent"].as_u64().unwrap() > 0, "{st}");
    }
}

#[test]
fn simultaneous_cold_reads_on_three_nodes_fetch_once() {
    let env = Env::with(SimOptions {
        faults: Faults {
            throttle_bps: 8 << 20,
            ..Faults::default()
        },
        ..SimOptions::default()
    });
    let files = random_files(1, 6 << 20, 21);
    env.sim.commit("model", REPO, files.clone());
    let (ds, _) = static_cluster(&env, 3, &[]);
    let uri = format!("hf://acme/model/{}", files[0].0);
    std::thread::scope(|s| {
        let hs: Vec<_> = ds
            .iter()
            .map(|d| {
                let uri = uri.clone();
                s.spawn(move || d.ok(&["cat", &uri]))
            })
            .collect();
        for h in hs {
            assert!(h.join().unwrap() == files[0].1.to_vec());
        }
    });
    let got = env.sim.stats().data_bytes;
    assert!(
        got as f64 <= 1.02 * files[0].1.len() as f64,
        "origin sent {got} bytes for a {}-byte file",
        files[0].1.len()
    );
}
