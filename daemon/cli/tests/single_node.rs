//! One node, real processes: a `locus daemon` and `locus` clients against a simulated Hub.
//! Every read is compared with the origin's bytes.

mod common;

use std::time::Duration;

use common::*;
use locus_testorigin::{CutRule, FailRule, Faults, SimOptions};
use nix::sys::signal::Signal;

const REPO: &str = "acme/model";

fn model_env() -> (Env, Vec<(String, bytes::Bytes)>) {
    let env = Env::new();
    let files = locus_testorigin::model::generate_model(3 << 20, 2, 5);
    env.sim.commit("model", REPO, files.clone());
    (env, files)
}

#[test]
fn warm_cat_ls_status() {
    let (env, files) = model_env();
    let d = env.daemon("n", &["--chunk-size", "256KiB"], &[]);
    let out = d.ok(&["warm", "hf://acme/model"]);
    let summary = String::from_utf8_lossy(&out);
    assert!(
        summary.contains(&format!("warmed {} files", files.len()))
            && summary.contains("from origin"),
        "{summary}"
    );
    let data_requests = env.sim.stats().data_requests();
    let data_bytes = env.sim.stats().data_bytes;
    let total: u64 = files.iter().map(|(_, b)| b.len() as u64).sum();
    assert_eq!(data_bytes, total, "each byte fetched from the origin once");
    let st = d.json(&["status", "--json"]);
    assert_eq!(
        (st["local_bytes"].as_u64(), st["hit_ratio"].as_f64()),
        (Some(0), Some(0.0)),
        "{st}"
    );

    for (path, want) in &files {
        let got = d.ok(&["cat", &format!("hf://acme/model/{path}")]);
        assert_eq!(got, want.to_vec(), "{path}");
    }
    // Every byte `cat` read came from the cache, and the hit ratio is by bytes.
    let st = d.json(&["status", "--json"]);
    assert_eq!(st["local_bytes"].as_u64(), Some(total), "{st}");
    assert_eq!(
        st["hit_ratio"].as_f64(),
        Some(0.5),
        "as many bytes served as fetched: {st}"
    );
    let ls = d.json(&["ls", "hf://acme/model", "--json"]);
    let entries = ls["files"].as_array().unwrap();
    assert_eq!(entries.len(), files.len());
    for e in entries {
        assert_eq!(e["cached_fraction"], 1.0, "{e}");
        let want = files
            .iter()
            .find(|(p, _)| p == e["path"].as_str().unwrap())
            .unwrap();
        assert_eq!(e["size"], want.1.len() as u64);
    }
    let st = d.json(&["status", "--json"]);
    for k in [
        "cache_bytes",
        "capacity_bytes",
        "files",
        "origin_bytes",
        "peer_bytes",
        "local_bytes",
        "members",
    ] {
        assert!(st.get(k).is_some(), "status lacks {k}: {st}");
    }
    assert_eq!(st["cache_bytes"], total);
    assert_eq!(st["origin_bytes"], total);
    assert_eq!(st["members"][0]["state"], "up");

    // A second warm and the reads cost no origin data request.
    let out = d.ok(&["warm", "hf://acme/model", "--include", "*.safetensors"]);
    assert!(String::from_utf8_lossy(&out).contains("0 B from origin"));
    assert_eq!(env.sim.stats().data_requests(), data_requests);
}

#[test]
fn restart_keeps_the_cache_and_sigterm_stops_cleanly() {
    let (env, files) = model_env();
    let mut d = env.daemon("n", &[], &[]);
    d.ok(&["warm", "hf://acme/model"]);
    let status = d.signal(Signal::SIGTERM);
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    assert!(!d.socket.exists(), "socket removed on shutdown");
    assert!(d.log_text().contains("stopped"));
    let before = env.sim.stats();
    d.restart();
    let out = d.ok(&["warm", "hf://acme/model"]);
    assert!(String::from_utf8_lossy(&out).contains("0 B from origin"));
    let after = env.sim.stats();
    assert_eq!(
        after.data_requests(),
        before.data_requests(),
        "no origin data request after restart"
    );
    let (path, want) = &files[0];
    assert_eq!(
        d.ok(&["cat", &format!("hf://acme/model/{path}")]),
        want.to_vec()
    );
}

#[test]
fn kill_9_during_warm_leaves_a_cache_that_recovers() {
    let env = Env::new();
    let files = random_files(2, 6 << 20, 11);
    env.sim.commit("model", "acme/big", files.clone());
    let mut d = env.daemon("n", &["--chunk-size", "256KiB", "--concurrency", "4"], &[]);
    for (round, delay_ms) in [300u64, 700, 1100].into_iter().enumerate() {
        env.sim.set_faults(Faults {
            throttle_bps: 1_000_000,
            ..Faults::default()
        });
        let socket = d.socket.clone();
        let warm = std::thread::spawn(move || locus_cmd(&socket, &["warm", "hf://acme/big"]));
        std::thread::sleep(Duration::from_millis(delay_ms));
        d.signal(Signal::SIGKILL);
        let out = warm.join().unwrap();
        assert!(
            !out.status.success(),
            "round {round}: warm cannot succeed when its daemon died"
        );
        env.sim.set_faults(Faults::default());
        d.restart();
    }
    d.ok(&["warm", "hf://acme/big"]);
    for (path, want) in &files {
        assert_eq!(
            d.ok(&["cat", &format!("hf://acme/big/{path}")]),
            want.to_vec()
        );
    }
    // Every data file is known to the index, nothing was left behind to clean by hand.
    assert_eq!(data_files(&d.cache).len(), files.len());
    let st = d.json(&["status", "--json"]);
    assert_eq!(st["cache_bytes"], (files.len() * (6 << 20)) as u64);
}

#[test]
fn concurrent_readers_share_one_origin_request_per_chunk() {
    let env = Env::new();
    let files = random_files(1, 4 << 20, 3);
    env.sim.commit("model", "acme/one", files.clone());
    env.sim.set_faults(Faults {
        throttle_bps: 8_000_000,
        ..Faults::default()
    });
    let d = env.daemon("n", &["--chunk-size", "512KiB"], &[]);
    let uri = format!("hf://acme/one/{}", files[0].0);
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let socket = d.socket.clone();
            let uri = uri.clone();
            std::thread::spawn(move || locus_cmd(&socket, &["cat", &uri]))
        })
        .collect();
    for r in readers {
        let out = r.join().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(out.stdout, files[0].1.to_vec());
    }
    let s = env.sim.stats();
    assert_eq!(s.get("cdn"), 8, "one CDN request per chunk: {s:?}");
    assert_eq!(s.data_bytes, 4 << 20);
}

/// A file the Hub serves itself (under the LFS threshold) costs one GET, with no HEAD
/// first; an LFS file's GET of its resolve URL is answered with the CDN redirect, which is
/// learnt, and then each of its chunks is one CDN request.
#[test]
fn a_small_hub_file_is_one_request_and_a_large_ones_chunks_go_to_the_cdn() {
    let env = Env::new();
    let small = random_files(20, 10_000, 3);
    let big = random_files(1, 1 << 20, 40);
    env.sim.commit("model", "acme/small", small.clone());
    env.sim.commit("model", "acme/big", big.clone());
    let d = env.daemon("n", &["--chunk-size", "256KiB"], &[]);
    d.ok(&["warm", "hf://acme/small"]);
    let s = env.sim.stats();
    assert_eq!(
        (s.get("resolve"), s.get("resolve_head"), s.data_requests()),
        (20, 0, 20),
        "one GET a small file: {s:?}"
    );
    d.ok(&["warm", "hf://acme/big"]);
    let s = env.sim.stats();
    assert_eq!(s.get("resolve_head"), 0, "{s:?}");
    assert_eq!(s.get("cdn"), 4, "one CDN request a chunk: {s:?}");
    // Chunks fetched at once may each meet the redirect before it is learnt.
    assert!((1..=4).contains(&s.get("resolve_redirect")), "{s:?}");
    assert_eq!(s.data_requests(), 24, "{s:?}");
    assert_eq!(s.cdn_authorized, 0, "the token never goes to the CDN");
    assert_eq!(
        d.ok(&["cat", &format!("hf://acme/small/{}", small[7].0)]),
        small[7].1.to_vec()
    );
    assert_eq!(
        d.ok(&["cat", &format!("hf://acme/big/{}", big[0].0)]),
        big[0].1.to_vec()
    );
}

#[test]
fn transient_origin_failures_are_retried() {
    let (env, files) = model_env();
    env.sim.set_faults(Faults {
        fail: vec![
            FailRule {
                kind: "api".into(),
                status: 503,
                count: 2,
                retry_after: None,
            },
            FailRule {
                kind: "cdn".into(),
                status: 500,
                count: 3,
                retry_after: None,
            },
            FailRule {
                kind: "cdn".into(),
                status: 429,
                count: 1,
                retry_after: Some(1),
            },
            FailRule {
                kind: "resolve".into(),
                status: 502,
                count: 2,
                retry_after: None,
            },
        ],
        cut: Some(CutRule {
            count: 2,
            after_bytes: 1000,
        }),
        ..Faults::default()
    });
    let d = env.daemon("n", &["--chunk-size", "256KiB"], &[]);
    let out = d.locus(&["warm", "hf://acme/model"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    // The retry a chunk waits on (the 429 asks for 1 s) is shown as it happens.
    eprintln!("{err}");
    assert!(
        err.contains("warm: origin: retry ") && err.contains("HTTP 429"),
        "{err}"
    );
    for (path, want) in &files {
        assert_eq!(
            d.ok(&["cat", &format!("hf://acme/model/{path}")]),
            want.to_vec()
        );
    }
    let f = env.sim.faults();
    assert!(
        f.fail.iter().all(|r| r.count == 0),
        "every failure fired: {f:?}"
    );
    assert_eq!(f.cut.unwrap().count, 0);
    assert_eq!(env.sim.stats().get("failed"), 8);
}

#[test]
fn a_corrupt_chunk_on_disk_is_fetched_again_not_served() {
    let (env, files) = model_env();
    let d = env.daemon("n", &["--chunk-size", "256KiB"], &[]);
    d.ok(&["warm", "hf://acme/model"]);
    let (path, want) = files
        .iter()
        .find(|(p, _)| p.ends_with(".safetensors"))
        .unwrap();
    // Damage every data file in the middle of its second chunk.
    for p in data_files(&d.cache) {
        let mut bytes = std::fs::read(&p).unwrap();
        if bytes.len() > 300 << 10 {
            bytes[300 << 10] ^= 0xff;
            std::fs::write(&p, bytes).unwrap();
        }
    }
    let before = env.sim.stats().get("cdn");
    assert_eq!(
        d.ok(&["cat", &format!("hf://acme/model/{path}")]),
        want.to_vec()
    );
    assert!(
        env.sim.stats().get("cdn") > before,
        "the bad chunk was fetched again"
    );
    assert!(d.log_text().contains("failed its checksum"));
    // And a warm repairs the rest.
    d.ok(&["warm", "hf://acme/model"]);
    for (path, want) in &files {
        assert_eq!(
            d.ok(&["cat", &format!("hf://acme/model/{path}")]),
            want.to_vec()
        );
    }
}

#[test]
fn bytes_that_do_not_match_the_published_digest_are_never_served() {
    let (env, files) = model_env();
    let d = env.daemon("n", &[], &[]);
    // Once: the digest check catches it and the file is fetched again.
    env.sim.set_faults(Faults {
        corrupt: 1,
        ..Faults::default()
    });
    d.ok(&["warm", "hf://acme/model"]);
    for (path, want) in &files {
        assert_eq!(
            d.ok(&["cat", &format!("hf://acme/model/{path}")]),
            want.to_vec()
        );
    }
    // Always: the warm fails with a clear error instead of caching wrong bytes.
    let env2 = Env::new();
    env2.sim.commit("model", REPO, files.clone());
    env2.sim.set_faults(Faults {
        corrupt: 1000,
        ..Faults::default()
    });
    let d2 = env2.daemon("n", &[], &[]);
    let out = d2.locus(&["warm", "hf://acme/model"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("do not match its published digest"),
        "{}",
        stderr(&out)
    );
    for (path, _) in &files {
        let out = d2.locus(&["cat", &format!("hf://acme/model/{path}")]);
        assert_eq!(out.status.code(), Some(1), "{path} must not be served");
        assert!(out.stdout.is_empty(), "no byte of {path} reached stdout");
    }
    // A client of the API is told what kind of failure it is: DATA_LOSS, not a retryable one.
    let uri = format!("hf://acme/model/{}", files[0].0);
    let status = env2.rt.block_on(async {
        let mut c = locus_grpc::connect_local(&d2.socket).await.unwrap();
        c.open(locus_grpc::v1::OpenRequest { uri })
            .await
            .unwrap_err()
    });
    assert_eq!(status.code(), tonic::Code::DataLoss, "{status:?}");
}

#[test]
fn bad_input_gets_one_clear_line_and_the_right_exit_code() {
    let (env, _) = model_env();
    let d = env.daemon("n", &[], &[]);
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["cat", "hf://acme/model/../../etc/passwd"],
            2,
            "not allowed",
        ),
        (&["warm", "acme/model"], 2, "unknown scheme"),
        (&["ls", "hf://acme"], 2, "expected org/name"),
        (&["warm", "hf://acme/nope"], 1, "repository not found"),
        (&["cat", "hf://acme/model/missing.bin"], 1, "no such file"),
        (
            &["warm", "hf://acme/model@no-such-branch"],
            1,
            "revision not found",
        ),
        (&["cat", "hf://acme/model"], 1, "is a folder"),
        (
            &["warm", "hf://acme/model", "--scope", "galaxy"],
            2,
            "invalid value",
        ),
        (
            &["warm", "hf://acme/model", "--include", "[z-a]"],
            2,
            "bad glob",
        ),
        // A pattern that keeps nothing is a mistake, with the names nearest to it.
        (
            &["warm", "hf://acme/model", "--include", "tokeniser.jsn"],
            1,
            "selected none of the files; nearest: tokenizer.json",
        ),
        (
            &["warm", "hf://acme/model", "--exclude", "*"],
            1,
            "selected none of the files",
        ),
    ];
    for (args, code, needle) in cases {
        let out = d.locus(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(*code), "{args:?}: {err}");
        assert!(err.to_lowercase().contains(needle), "{args:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
            "{err}"
        );
    }
    let out = locus_cmd(&env.path("nowhere.sock"), &["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot reach the locus daemon"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stderr(&out).trim().lines().count(), 1);
    let out = std::process::Command::new(LOCUS)
        .args(["daemon", "--cache-size", "lots"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(d.child.id() > 0 && !d.log_text().contains("panicked"));
}

#[test]
fn the_daemons_help_says_it_reads_the_credentials() {
    let out = std::process::Command::new(LOCUS)
        .args(["daemon", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for needle in [
        "read by the daemon",
        "HF_TOKEN",
        "HF_ENDPOINT",
        "AWS_ACCESS_KEY_ID",
        "[default: 10GiB]",
    ] {
        assert!(help.contains(needle), "{needle}: {help}");
    }
}

#[test]
fn gated_repos_need_a_token_that_never_leaks() {
    let (env, files) = model_env();
    let token = "hf_SeCrEtToKeN1234567890";
    env.sim.set_faults(Faults {
        token: Some(token.into()),
        ..Faults::default()
    });
    let d = env.daemon("anon", &[], &[]);
    let out = d.locus(&["warm", "hf://acme/model"]);
    assert_eq!(out.status.code(), Some(1));
    // Which case it is, and where the daemon (not the command) looks for a token.
    let err = stderr(&out);
    assert!(err.contains("access denied"), "{err}");
    assert!(
        err.contains("the daemon has no Hugging Face token"),
        "{err}"
    );
    assert!(
        err.contains("HF_TOKEN") && err.contains("its own environment"),
        "{err}"
    );
    let wrong = env.daemon("wrong", &[], &[("HF_TOKEN", "hf_notTheRightToken123")]);
    let err = stderr(&wrong.locus(&["warm", "hf://acme/model"]));
    assert!(err.contains("the daemon's token was rejected"), "{err}");
    assert!(!err.contains("hf_notTheRightToken123"), "{err}");

    let d = env.daemon("env", &[], &[("HF_TOKEN", token)]);
    d.ok(&["warm", "hf://acme/model"]);
    // The token file that huggingface_hub writes works too.
    let home = env.path("hf-home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("token"), format!("{token}\n")).unwrap();
    let d2 = env.daemon(
        "file",
        &[],
        &[
            ("HF_HOME", home.to_str().unwrap()),
            ("HF_TOKEN_PATH", home.join("token").to_str().unwrap()),
        ],
    );
    d2.ok(&["warm", "hf://acme/model"]);
    let (path, want) = &files[0];
    assert_eq!(
        d2.ok(&["cat", &format!("hf://acme/model/{path}")]),
        want.to_vec()
    );
    let s = env.sim.stats();
    assert!(s.authorized > 0);
    assert_eq!(s.cdn_authorized, 0, "the token never goes to the CDN");
    for l in [d.log_text(), d2.log_text()] {
        assert!(!l.contains(token), "token in the log");
    }
}

#[test]
fn a_moved_branch_never_serves_stale_bytes() {
    let env = Env::new();
    let v1 = env.sim.commit(
        "model",
        REPO,
        vec![(
            "config.json".into(),
            bytes::Bytes::from_static(b"{\"v\":1}"),
        )],
    );
    let d = env.daemon("n", &["--metadata-ttl", "1"], &[]);
    assert_eq!(d.ok(&["cat", "hf://acme/model/config.json"]), b"{\"v\":1}");
    env.sim.commit(
        "model",
        REPO,
        vec![(
            "config.json".into(),
            bytes::Bytes::from_static(b"{\"v\":2}"),
        )],
    );
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(d.ok(&["cat", "hf://acme/model/config.json"]), b"{\"v\":2}");
    assert_eq!(
        d.ok(&["cat", &format!("hf://acme/model@{v1}/config.json")]),
        b"{\"v\":1}"
    );
}

/// A branch is resolved to its commit without the repo's file list (`expand=sha`): for a
/// dataset of 100,000 files each of the Hub's revision answers stays under 1 KB, where the
/// whole answer names every file (3.4 MB here, hundreds of MB for millions of files), and a
/// branch is resolved again at every metadata TTL.
#[test]
fn a_branch_is_resolved_without_the_repos_file_list() {
    let env = Env::new();
    env.sim
        .commit_generated("dataset", "bench/wide", 100_000, 10..=10, 3);
    let d = env.daemon("n", &["--metadata-ttl", "1"], &[]);
    let name = locus_testorigin::generated_name(4_242);
    let want = env
        .sim
        .file("dataset", "bench/wide", "main", &name)
        .unwrap();
    let uri = format!("hf://datasets/bench/wide/{name}");
    assert!(d.ok(&["cat", &uri]) == want.to_vec());
    std::thread::sleep(Duration::from_millis(1200));
    assert!(d.ok(&["cat", &uri]) == want.to_vec());
    let s = env.sim.stats();
    let asked = s.get("api_revision");
    assert!(
        asked >= 2,
        "a branch is resolved once a TTL: {:?}",
        s.requests
    );
    let per = s.api_bytes.get("api_revision").copied().unwrap_or(0) / asked;
    assert!(per > 0 && per < 1024, "{per} bytes a revision answer");
}

#[test]
fn a_listing_at_a_commit_is_read_back_from_the_index_after_a_restart() {
    let env = Env::new();
    // 100,000 files: a listing of about 6 MB, which the index keeps in pieces.
    let sha = env
        .sim
        .commit_generated("dataset", "bench/kept", 100_000, 10..=10, 5);
    let mut d = env.daemon("n", &[], &[]);
    let uri = format!("hf://datasets/bench/kept@{sha}");
    let cold = d.ok(&["ls", &uri]);
    assert_eq!(String::from_utf8_lossy(&cold).lines().count(), 100_000);
    assert!(d.signal(Signal::SIGTERM).success());
    env.sim.reset_stats();
    d.restart();
    let again = d.ok(&["ls", &uri]);
    assert!(again == cold, "the listing read back differs");
    let s = env.sim.stats();
    assert_eq!(s.get("api_tree"), 0, "listed again: {:?}", s.requests);
}

#[test]
fn lru_eviction_above_capacity_spares_pinned_files() {
    let env = Env::new();
    let a = random_files(1, 2 << 20, 1);
    let b = random_files(1, 2 << 20, 2);
    env.sim.commit("model", "acme/a", a.clone());
    env.sim.commit("model", "acme/b", b.clone());
    let d = env.daemon(
        "n",
        &["--cache-size", "3MiB", "--chunk-size", "256KiB"],
        &[],
    );
    d.ok(&["warm", "hf://acme/a"]);
    d.ok(&["warm", "hf://acme/b"]);
    let frac = |uri: &str| {
        d.json(&["ls", uri, "--json"])["files"][0]["cached_fraction"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(frac("hf://acme/a"), 0.0, "least recently used file evicted");
    assert_eq!(frac("hf://acme/b"), 1.0);
    d.ok(&["warm", "hf://acme/a", "--pin"]);
    assert_eq!(frac("hf://acme/b"), 0.0);
    // a is pinned: b cannot fit beside it, and says so.
    let out = d.locus(&["warm", "hf://acme/b"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cache full"), "{}", stderr(&out));
    assert_eq!(frac("hf://acme/a"), 1.0);
    assert_eq!(
        d.ok(&["cat", &format!("hf://acme/a/{}", a[0].0)]),
        a[0].1.to_vec()
    );
    let st = d.json(&["status", "--json"]);
    assert!(st["cache_bytes"].as_u64().unwrap() <= 3 << 20);
}

#[test]
fn unpin_and_evict_reach_every_cached_version_of_a_name() {
    let env = Env::new();
    let v1 = random_files(2, 300_000, 31);
    env.sim.commit("model", "acme/a", v1.clone());
    let d = env.daemon("n", &["--metadata-ttl", "1"], &[]);
    let status = || d.json(&["status", "--json"]);
    d.ok(&["warm", "hf://acme/a", "--pin"]);
    // The branch moves on: new bytes under the same names, pinned too.
    let v2 = random_files(2, 300_000, 41);
    let rev2 = env.sim.commit("model", "acme/a", v2.clone());
    std::thread::sleep(Duration::from_millis(1200));
    d.ok(&["warm", "hf://acme/a", "--pin"]);
    assert_eq!(status()["pinned"].as_u64(), Some(4));
    // Naming one revision reaches that one only.
    let out = String::from_utf8(d.ok(&["unpin", &format!("hf://acme/a@{rev2}")])).unwrap();
    assert!(out.contains("unpinned 2 files"), "{out}");
    assert_eq!(status()["pinned"].as_u64(), Some(2));
    // The name without a revision reaches the older version as well.
    let out = String::from_utf8(d.ok(&["unpin", "hf://acme/a"])).unwrap();
    assert!(out.contains("unpinned 2 files"), "{out}");
    assert_eq!(status()["pinned"].as_u64(), Some(0));
    let out = String::from_utf8(d.ok(&["evict", "hf://acme/a"])).unwrap();
    assert!(out.contains("evicted 4 files"), "{out}");
    assert_eq!(status()["files"].as_u64(), Some(0));
}

#[test]
fn unpin_and_evict_give_the_room_back() {
    let env = Env::new();
    let a = random_files(2, 1 << 20, 11);
    let b = random_files(1, 2 << 20, 12);
    env.sim.commit("model", "acme/a", a.clone());
    env.sim.commit("model", "acme/b", b.clone());
    let d = env.daemon(
        "n",
        &["--cache-size", "3MiB", "--chunk-size", "256KiB"],
        &[],
    );
    let status = || d.json(&["status", "--json"]);
    d.ok(&["warm", "hf://acme/a", "--pin"]);
    assert_eq!(status()["pinned"].as_u64(), Some(2));
    // Pinned, a leaves no room for b.
    assert_eq!(d.locus(&["warm", "hf://acme/b"]).status.code(), Some(1));
    let out = String::from_utf8(d.ok(&["unpin", "hf://acme/a"])).unwrap();
    assert!(out.contains("unpinned 2 files"), "{out}");
    assert_eq!(status()["pinned"].as_u64(), Some(0));
    // Unpinned, a is evicted as b needs the room.
    d.ok(&["warm", "hf://acme/b"]);
    // Evict takes b out now, pinned or not; what is not cached is counted, not an error.
    d.ok(&["warm", "hf://acme/b", "--pin"]);
    let held = status()["files"].as_u64().unwrap();
    assert!((1..3).contains(&held), "b and what of a still fits: {held}");
    let out = String::from_utf8(d.ok(&["evict", "hf://acme/b", "hf://acme/a"])).unwrap();
    assert!(
        out.contains(&format!("evicted {held} files"))
            && out.contains(&format!("{} not cached here", 3 - held)),
        "{out}"
    );
    let st = status();
    assert_eq!(
        (st["files"].as_u64(), st["cache_bytes"].as_u64()),
        (Some(0), Some(0))
    );
    // Gone from the cache, never from the origin: read again, fetched again.
    assert_eq!(
        d.ok(&["cat", &format!("hf://acme/b/{}", b[0].0)]),
        b[0].1.to_vec()
    );
    // A bad selection is a usage error.
    assert_eq!(d.locus(&["evict", "hf:/x"]).status.code(), Some(2));
}

#[test]
#[ignore = "needs root (a mount, another user or a tmpfs): tests/run runs it"]
fn the_local_socket_is_for_its_owner_and_group_only() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    let (env, _) = model_env();
    // Reachable by path for other users: only the socket's own mode and group decide.
    std::fs::set_permissions(env.path(""), std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = env.daemon("n", &["--socket-group", "4242"], &[]);
    let meta = std::fs::metadata(&d.socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660, "socket mode");
    assert_eq!(meta.gid(), 4242, "socket group");
    let as_user = |gid: u32| {
        std::process::Command::new(LOCUS)
            .args(["status", "--socket", d.socket.to_str().unwrap()])
            .uid(65534)
            .gid(gid)
            .output()
            .unwrap()
    };
    // Another user outside the group cannot use the local API.
    let o = as_user(65534);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).to_lowercase().contains("permission denied"),
        "{}",
        stderr(&o)
    );
    // One in the group can.
    let o = as_user(4242);
    assert!(o.status.success(), "{}", stderr(&o));
    // A folder the daemon makes for its socket is 0750, in the socket's group.
    let dir = env.path("run/locus");
    let sock = dir.join("locus.sock");
    let mut child = std::process::Command::new(LOCUS)
        .args(["daemon", "--cache-dir", env.path("c2").to_str().unwrap()])
        .args(["--socket", sock.to_str().unwrap(), "--socket-group", "4242"])
        .env_remove("LOCUS_CONFIG")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while !sock.exists() && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let meta = std::fs::metadata(&dir).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(meta.mode() & 0o777, 0o750, "socket folder mode");
    assert_eq!(meta.gid(), 4242, "socket folder group");
}

#[test]
#[ignore = "needs root (a mount, another user or a tmpfs): tests/run runs it"]
fn cached_bytes_are_readable_by_the_daemon_and_its_data_group_only() {
    use std::os::unix::process::CommandExt;
    let (env, files) = model_env();
    // Every folder above the cache is open to other users: only the cache's own modes decide.
    std::fs::set_permissions(
        env.path(""),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let read_as = |path: &std::path::Path, gid: u32| {
        std::process::Command::new("cat")
            .arg(path)
            .uid(65534)
            .gid(gid)
            .output()
            .unwrap()
    };
    let d = env.daemon("n", &["--socket-group", "4242"], &[]);
    d.ok(&["warm", "hf://acme/model"]);
    let cached = data_files(&d.cache);
    assert_eq!(cached.len(), files.len());
    // The socket's group may ask the daemon, but not read its files behind its back.
    for p in &cached {
        let o = read_as(p, 4242);
        assert!(!o.status.success(), "{} was readable", p.display());
        assert!(stderr(&o).contains("Permission denied"), "{}", stderr(&o));
    }
    let cache = d.cache.display().to_string();
    drop(d);
    // With --data-group the group reads them (the files already cached too), others still not.
    let args = [
        "--cache-dir",
        &cache,
        "--socket-group",
        "4242",
        "--data-group",
        "4242",
    ];
    let d = env.daemon("n2", &args, &[]);
    d.ok(&["warm", "hf://acme/model"]);
    let wanted: std::collections::HashSet<Vec<u8>> =
        files.iter().map(|(_, b)| b.to_vec()).collect();
    for p in data_files(&d.cache) {
        let o = read_as(&p, 4242);
        assert!(o.status.success(), "{}: {}", p.display(), stderr(&o));
        assert!(
            wanted.contains(&o.stdout),
            "{} holds other bytes",
            p.display()
        );
        assert!(!read_as(&p, 65534).status.success(), "{}", p.display());
    }
}

#[test]
fn metrics_and_healthz() {
    let (env, _) = model_env();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let d = env.daemon("n", &["--metrics", &addr], &[]);
    d.ok(&["warm", "hf://acme/model"]);
    let health = reqwest::blocking::get(format!("http://{addr}/healthz")).unwrap();
    assert!(health.status().is_success());
    let text = reqwest::blocking::get(format!("http://{addr}/metrics"))
        .unwrap()
        .text()
        .unwrap();
    for name in [
        "locus_origin_requests_total",
        "locus_origin_bytes_total",
        "locus_peer_bytes_total",
        "locus_cache_hits_total",
        "locus_cache_misses_total",
        "locus_cache_bytes",
        "locus_evictions_total",
        "locus_fetch_seconds_bucket",
        "locus_ring_members",
    ] {
        assert!(text.contains(name), "metric {name} missing:\n{text}");
    }
    let value = |text: &str, name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
    };
    assert!(value(&text, "locus_origin_bytes_total") > 3e6);
    // One record of each count: the metrics say what `locus status` says.
    d.ok(&["warm", "hf://acme/model", "--pin"]);
    let st = d.json(&["status", "--json"]);
    let text = reqwest::blocking::get(format!("http://{addr}/metrics"))
        .unwrap()
        .text()
        .unwrap();
    for (metric, field) in [
        ("locus_origin_bytes_total", "origin_bytes"),
        ("locus_cache_hits_total", "cache_hits"),
        ("locus_cache_misses_total", "cache_misses"),
    ] {
        assert_eq!(
            value(&text, metric),
            st[field].as_f64().unwrap(),
            "{metric} and status' {field}"
        );
    }
    assert!(
        st["cache_hits"].as_f64().unwrap() > 0.0,
        "the second warm hit"
    );
    // What is pinned, and the build.
    assert_eq!(st["pinned_bytes"], st["cache_bytes"], "{st}");
    assert!(st["pinned"].as_u64().unwrap() > 0);
    assert_eq!(
        value(&text, "locus_cache_pinned_bytes"),
        st["pinned_bytes"].as_f64().unwrap()
    );
    assert!(st["version"].as_str().unwrap().contains("commit"), "{st}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("locus_build_info{") && l.ends_with(" 1")),
        "{text}"
    );
}

#[test]
fn config_from_variables_and_a_toml_file() {
    let (env, _) = model_env();
    let toml = env.path("locus.toml");
    std::fs::write(&toml, "cache-size = \"123MiB\"\nchunk-size = \"512KiB\"\n").unwrap();
    let d = env.daemon(
        "n",
        &[],
        &[
            ("LOCUS_CONFIG", toml.to_str().unwrap()),
            ("LOCUS_CHUNK_SIZE", "1MiB"),
        ],
    );
    let st = d.json(&["status", "--json"]);
    assert_eq!(st["capacity_bytes"], 123u64 << 20, "from the TOML file");
    assert_eq!(st["chunk_size"], 1u64 << 20, "the variable beats the file");
    let d2 = env.daemon(
        "m",
        &["--cache-size", "7MiB"],
        &[
            ("LOCUS_CONFIG", toml.to_str().unwrap()),
            ("LOCUS_CACHE_SIZE", "9MiB"),
        ],
    );
    assert_eq!(
        d2.json(&["status", "--json"])["capacity_bytes"],
        7u64 << 20,
        "the flag beats both"
    );
    std::fs::write(&toml, "cache-size = 5\nbogus = 1\n").unwrap();
    let out = std::process::Command::new(LOCUS)
        .args(["--config", toml.to_str().unwrap(), "daemon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--config"), "{}", stderr(&out));
}

#[test]
fn datasets_and_paginated_listings() {
    let env = Env::with(SimOptions {
        page_size: 3,
        ..SimOptions::default()
    });
    let files: Vec<_> = (0..10)
        .map(|i| {
            (
                format!("data/part-{i:02}.jsonl"),
                bytes::Bytes::from(format!("{{\"row\":{i}}}\n")),
            )
        })
        .collect();
    env.sim.commit("dataset", "acme/ds", files.clone());
    let d = env.daemon("n", &[], &[]);
    let ls = d.json(&["ls", "hf://datasets/acme/ds/data", "--json"]);
    assert_eq!(ls["files"].as_array().unwrap().len(), 10);
    d.ok(&[
        "warm",
        "hf://datasets/acme/ds",
        "--include",
        "data/part-0[0-4]*",
        "--exclude",
        "*03*",
    ]);
    let ls = d.json(&["ls", "hf://datasets/acme/ds", "--json"]);
    let cached: Vec<_> = ls["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["cached_fraction"] == 1.0)
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        cached,
        [
            "data/part-00.jsonl",
            "data/part-01.jsonl",
            "data/part-02.jsonl",
            "data/part-04.jsonl"
        ]
    );
    assert_eq!(
        d.ok(&["cat", "hf://datasets/acme/ds/data/part-07.jsonl"]),
        files[7].1.to_vec()
    );
}

#[test]
fn ctrl_c_cancels_a_warm_and_says_so_unless_it_was_detached() {
    let (env, files) = model_env();
    let total: u64 = files.iter().map(|(_, b)| b.len() as u64).sum();
    // Slow enough that a warm is still running a second in.
    env.sim.set_faults(Faults {
        throttle_bps: 150_000,
        ..Faults::default()
    });
    let d = env.daemon("n", &["--chunk-size", "256KiB", "--concurrency", "2"], &[]);
    let cached = || {
        d.json(&["status", "--json"])["cache_bytes"]
            .as_u64()
            .unwrap()
    };
    let child = std::process::Command::new(LOCUS)
        .args(["warm", "hf://acme/model", "--socket"])
        .arg(&d.socket)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the daemon stops this warm"),
        "{}",
        stderr(&out)
    );
    // The daemon stopped: chunks under way finish, no new ones start.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let stopped = cached();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(cached(), stopped, "the warm went on after Ctrl-C");
    assert!(
        stopped < total,
        "{stopped} of {total}: nothing was cancelled"
    );
    // What the cancelled warm cached stays, and is not asked of the origin again.
    assert!(stopped > 0, "the cancelled warm kept nothing");
    env.sim.reset_stats();

    // Detached: the command returns at once, the daemon finishes the warm.
    let started = std::time::Instant::now();
    let out = d.ok(&["warm", "hf://acme/model", "--detach"]);
    assert!(String::from_utf8_lossy(&out).contains("detached"));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(cached() < total, "the warm cannot have finished yet");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    // Cached whole and checked: the daemon logs the end of the warm nobody watches.
    while cached() < total || !d.log_text().contains("detached warm finished") {
        assert!(
            std::time::Instant::now() < deadline,
            "the detached warm never finished: {}",
            d.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(
        env.sim.stats().data_bytes,
        total - stopped,
        "the detached warm fetched only what the cancelled one had not cached"
    );
}
