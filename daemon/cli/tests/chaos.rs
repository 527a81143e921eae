//! The chaos suite: faults a production node meets (a second daemon on its cache, power loss,
//! rot and truncation on disk, a read-only or corrupt cache, an origin that never recovers),
//! injected into real daemons, each followed by a full byte check against the origin. Nothing
//! here may ever serve a wrong byte or need a manual clean-up.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use locus_loader::{Checkpoint, OpenOptions};
use locus_testorigin::{FailRule, Faults};
use nix::sys::signal::Signal;

const REPO: &str = "acme/model";

fn model_env() -> (Env, Vec<(String, bytes::Bytes)>) {
    let env = Env::new();
    let files = locus_testorigin::model::generate_model(3 << 20, 2, 7);
    env.sim.commit("model", REPO, files.clone());
    (env, files)
}

/// Every file of the repo through `cat`, and every tensor through the loader, equal the origin's.
fn check_all(d: &Daemon, files: &[(String, bytes::Bytes)]) {
    for (path, want) in files {
        assert_eq!(
            d.ok(&["cat", &format!("hf://{REPO}/{path}")]),
            want.to_vec(),
            "cat {path}"
        );
    }
    check_loader(d, files);
}

/// Every tensor the loader maps from `hf://REPO` equals the one the official crate reads from
/// the origin's bytes.
fn check_loader(d: &Daemon, files: &[(String, bytes::Bytes)]) {
    let opts = OpenOptions {
        socket: Some(d.socket.clone()),
    };
    let ckpt = Checkpoint::open_with(&format!("hf://{REPO}"), &opts).expect("loader opens");
    let mut seen = 0;
    for (path, bytes) in files.iter().filter(|(p, _)| p.ends_with(".safetensors")) {
        let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
        for (name, view) in st.tensors() {
            let t = ckpt.tensor(&name).unwrap();
            assert!(t.data() == view.data(), "tensor {name} of {path} differs");
            seen += 1;
        }
    }
    assert!(seen > 0);
}

/// Every data file of a cache, with its length.
fn data_files(cache: &Path) -> Vec<(PathBuf, u64)> {
    common::data_files(cache)
        .into_iter()
        .map(|p| {
            let len = std::fs::metadata(&p).unwrap().len();
            (p, len)
        })
        .collect()
}

/// A cache directory's names, lengths and contents' hashes: what "changes nothing" compares.
fn snapshot(cache: &Path) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![cache.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let name = p.strip_prefix(cache).unwrap().display().to_string();
            // The lock file holds the pid of whoever holds the lock (checked apart).
            if name == "lock" {
                continue;
            }
            let bytes = std::fs::read(&p).unwrap();
            out.push((name, bytes.len() as u64, xxhash(&bytes)));
        }
    }
    out.sort();
    out
}

fn xxhash(b: &[u8]) -> u64 {
    // FNV-1a: enough to tell two contents apart here.
    b.iter().fold(0xcbf29ce484222325u64, |h, x| {
        (h ^ *x as u64).wrapping_mul(0x100000001b3)
    })
}

/// Runs a second `locus daemon` on `cache` (its own socket and port) and waits for it to end.
fn second_daemon(env: &Env, cache: &Path) -> std::process::Output {
    let mut child = Command::new(LOCUS)
        .args(["daemon", "--cache-dir"])
        .arg(cache)
        .arg("--socket")
        .arg(env.path("second.sock"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .env("HF_ENDPOINT", env.sim.url())
        .env_remove("LOCUS_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("a second daemon on a live cache kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_second_daemon_on_a_live_cache_exits_and_changes_nothing() {
    let (env, files) = model_env();
    let d = env.daemon("n", &[], &[]);
    d.ok(&["warm", &format!("hf://{REPO}")]);
    // The index writer commits in the background: let it settle, so that the snapshot is the
    // cache as it stays.
    std::thread::sleep(Duration::from_secs(1));
    let before = snapshot(&d.cache);
    let out = second_daemon(&env, &d.cache);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let canonical = std::fs::canonicalize(&d.cache).unwrap();
    assert!(
        err.contains(&canonical.display().to_string())
            && err.contains(&format!("pid {}", d.child.id())),
        "names the directory and the live daemon's pid: {err}"
    );
    assert_eq!(
        err.trim().lines().count(),
        1,
        "one line, no log noise: {err}"
    );
    assert_eq!(
        snapshot(&d.cache),
        before,
        "the second daemon changed the cache"
    );
    assert_eq!(
        std::fs::read_to_string(d.cache.join("lock"))
            .unwrap()
            .trim(),
        d.child.id().to_string(),
        "the lock file still names the live daemon"
    );
    assert!(!env.path("second.sock").exists());
    // The first daemon still serves everything, from its cache.
    let origin = env.sim.stats().data_requests();
    check_all(&d, &files);
    assert_eq!(env.sim.stats().data_requests(), origin);
}

#[test]
fn a_read_only_cache_stops_the_daemon_and_keeps_the_cache() {
    let (env, files) = model_env();
    let mut d = env.daemon("n", &[], &[]);
    d.ok(&["warm", &format!("hf://{REPO}")]);
    d.signal(Signal::SIGTERM);
    let before = snapshot(&d.cache);
    let cache = d.cache.display().to_string();
    let mount = |args: &[&str]| {
        let s = Command::new("mount").args(args).status().unwrap();
        assert!(s.success(), "mount {args:?}");
    };
    mount(&["--bind", &cache, &cache]);
    mount(&["-o", "remount,ro,bind", &cache]);
    let out = second_daemon(&env, &d.cache);
    let _ = Command::new("umount").arg(&cache).status();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("Read-only file system"), "{err}");
    assert_eq!(snapshot(&d.cache), before);
    // Writable again: everything is still there, no origin byte needed.
    let origin = env.sim.stats().data_requests();
    d.restart();
    check_all(&d, &files);
    assert_eq!(env.sim.stats().data_requests(), origin);
}

#[test]
fn an_index_that_cannot_be_opened_is_left_alone() {
    let (env, _) = model_env();
    let mut d = env.daemon("n", &[], &[]);
    d.ok(&["warm", &format!("hf://{REPO}")]);
    d.signal(Signal::SIGTERM);
    // An index that is there but unusable (here a folder: EISDIR, as EIO or EACCES would be):
    // not proven corrupt, so nothing may be renamed or deleted.
    let index = d.cache.join("index.redb");
    std::fs::rename(&index, d.cache.join("index.real")).unwrap();
    std::fs::create_dir(&index).unwrap();
    let before = snapshot(&d.cache);
    let out = second_daemon(&env, &d.cache);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot be opened") && err.contains("nothing in the cache was changed"),
        "{err}"
    );
    assert_eq!(snapshot(&d.cache), before, "nothing renamed or deleted");
    assert!(!data_files(&d.cache).is_empty());
}

#[test]
fn a_corrupt_index_is_set_aside_and_nothing_unchecked_is_served() {
    let (env, files) = model_env();
    let mut d = env.daemon("n", &[], &[]);
    d.ok(&["warm", &format!("hf://{REPO}")]);
    d.signal(Signal::SIGTERM);
    assert!(!data_files(&d.cache).is_empty());
    let index = d.cache.join("index.redb");
    let mut bytes = std::fs::read(&index).unwrap();
    for b in bytes.iter_mut().take(4096) {
        *b = 0x5a;
    }
    std::fs::write(&index, bytes).unwrap();
    d.restart();
    assert!(
        d.log_text().contains("cache index corrupt"),
        "{}",
        d.log_text()
    );
    assert!(d.cache.join("index.redb.broken").exists());
    // The data files the lost records described are gone with them: no manual clean-up, and
    // no disk space held by files nothing names.
    assert_eq!(data_files(&d.cache), Vec::new());
    let origin = env.sim.stats().data_requests();
    check_all(&d, &files);
    assert!(
        env.sim.stats().data_requests() > origin,
        "the cache was rebuilt from the origin, not served from unrecorded files"
    );
}

/// What a warm reported done is committed: a kill the moment it answers loses no record, so
/// nothing is fetched again.
#[test]
fn a_warm_that_answered_loses_nothing_to_a_kill_at_once() {
    let (env, files) = model_env();
    let mut d = env.daemon("n", &["--chunk-size", "256KiB"], &[]);
    d.ok(&["warm", &format!("hf://{REPO}")]);
    d.signal(Signal::SIGKILL);
    d.restart();
    env.sim.reset_stats();
    d.ok(&["warm", &format!("hf://{REPO}")]);
    assert_eq!(
        env.sim.stats().data_requests(),
        0,
        "records the first warm reported done were lost to the kill: {}",
        d.log_text()
    );
    check_all(&d, &files);
}

#[test]
fn power_loss_never_serves_bytes_that_did_not_reach_the_disk() {
    let (env, files) = model_env();
    let mut d = env.daemon("n", &["--chunk-size", "256KiB"], &[]);
    d.ok(&["warm", &format!("hf://{REPO}")]);
    // The index commit may become durable before the bytes it describes: after a power loss a
    // recorded chunk holds zeros (a hole) or lies past the end of its file. Simulate both on a
    // killed daemon's cache: zero a chunk's worth in one file, cut the other short.
    d.signal(Signal::SIGKILL);
    let data = data_files(&d.cache);
    let big: Vec<_> = data.iter().filter(|(_, len)| *len > 1 << 20).collect();
    assert!(big.len() >= 2, "{data:?}");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&big[0].0)
        .unwrap();
    f.write_all_at(&vec![0u8; 256 << 10], 512 << 10).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&big[1].0)
        .unwrap();
    f.set_len(big[1].1 / 2 - 1000).unwrap();
    drop(f);
    d.restart();
    let origin = env.sim.stats().data_requests();
    // The loader first: it maps what the daemon hands out.
    check_loader(&d, &files);
    check_all(&d, &files);
    assert!(
        env.sim.stats().data_requests() > origin,
        "the lost bytes came again"
    );
    assert!(d.log_text().contains("failed its checksum"));
    // Nothing else was fetched again: only the damaged chunks.
    let again = env.sim.stats().data_requests();
    check_all(&d, &files);
    assert_eq!(env.sim.stats().data_requests(), again);
}

#[test]
fn rot_and_truncation_under_a_running_daemon_never_reach_a_reader() {
    let (env, files) = model_env();
    let d = env.daemon("n", &[], &[]);
    d.ok(&["warm", &format!("hf://{REPO}")]);
    check_loader(&d, &files);
    // One byte flipped in place in every large cached file (as rot, or a stray writer).
    for (p, len) in data_files(&d.cache) {
        if len > 1 << 20 {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&p)
                .unwrap();
            let mut b = [0u8; 1];
            f.read_exact_at(&mut b, len / 2).unwrap();
            f.write_all_at(&[b[0] ^ 0x01], len / 2).unwrap();
        }
    }
    check_loader(&d, &files);
    // A cached file cut short under the daemon: no reader may fault on it (SIGBUS), each gets
    // the origin's bytes.
    let (p, len) = data_files(&d.cache)
        .into_iter()
        .max_by_key(|(_, l)| *l)
        .unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    check_all(&d, &files);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len / 3)
        .unwrap();
    check_loader(&d, &files);
    assert!(d.log_text().contains("failed its checksum"));
}

#[test]
fn an_origin_that_always_fails_costs_at_most_the_configured_attempts() {
    let env = Env::new();
    // 20 MiB in 3 chunks of 8 MiB.
    let files = random_files(1, 20 << 20, 5);
    env.sim.commit("model", REPO, files.clone());
    let d = env.daemon("n", &[], &[]);
    d.ok(&["ls", &format!("hf://{REPO}")]);
    env.sim.set_faults(Faults {
        fail: vec![FailRule {
            kind: "cdn".into(),
            status: 503,
            count: u32::MAX,
            retry_after: None,
        }],
        ..Faults::default()
    });
    env.sim.reset_stats();
    let started = Instant::now();
    let out = d.locus(&["cat", &format!("hf://{REPO}/{}", files[0].0)]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("503"), "{err}");
    assert!(out.stdout.is_empty());
    // The read fails with the first chunk that gives up; the others go on in the background
    // (their fetches are shared tasks): count once all three have given up.
    let gave_up = || {
        d.log_text()
            .lines()
            .filter(|l| l.contains("chunk fetch failed") && !l.contains("retrying"))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while gave_up() < 3 {
        assert!(Instant::now() < deadline, "{}", d.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let cdn = env.sim.stats().get("cdn");
    eprintln!("{cdn} CDN requests for 3 chunks");
    // Default attempts: 8 per chunk, in one layer (it was 8 x 8 per chunk).
    assert!(cdn <= 3 * 8, "{cdn} CDN requests for 3 chunks");
    assert!(cdn >= 3, "{cdn}");
    assert!(started.elapsed() < Duration::from_secs(90));
}

#[test]
fn configuration_errors_are_not_outages() {
    let (env, _) = model_env();
    let d = env.daemon("n", &[], &[]);
    // No --file-root: the daemon's configuration, not an origin outage.
    let out = d.locus(&["cat", "file:///etc/hostname"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--file-root"), "{err}");
    assert!(!err.contains("unexpected answer from origin"), "{err}");
    let status = env.rt.block_on(async {
        let mut c = locus_grpc::connect_local(&d.socket).await.unwrap();
        c.open(locus_grpc::v1::OpenRequest {
            uri: "file:///etc/hostname".into(),
        })
        .await
        .unwrap_err()
    });
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
}

/// xorshift64*: the seeded choices of the kill test (the seed is printed, and
/// `LOCUS_CHAOS_SEED` replays a run).
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Every file of `repo` read through `d` equals the origin's; returns the bytes checked.
fn check_repo(d: &Daemon, repo: &str, files: &[(String, bytes::Bytes)]) -> u64 {
    let mut n = 0;
    for (path, want) in files {
        let got = d.ok(&["cat", &format!("hf://{repo}/{path}")]);
        assert!(got == want.to_vec(), "{repo}/{path} differs");
        n += got.len() as u64;
    }
    n
}

#[test]
fn kill_9_at_random_points_of_warms_peer_reads_and_mount_reads() {
    let seed = std::env::var("LOCUS_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| locus_core::unix_ms() | 1);
    eprintln!("kill -9 chaos: LOCUS_CHAOS_SEED={seed}");
    let mut rng = Rng(seed);
    let env = Env::new();
    // Paced so that a warm of a repo takes a few hundred milliseconds: kills land inside it.
    env.sim.set_faults(Faults {
        throttle_bps: 1 << 20,
        ..Faults::default()
    });
    let addrs: Vec<String> = (0..2)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let peers = addrs.join(",");
    let mut ds: Vec<Daemon> = (0..2)
        .map(|i| {
            env.daemon(
                &format!("n{i}"),
                &[
                    "--chunk-size",
                    "256KiB",
                    "--listen",
                    &addrs[i],
                    "--peers",
                    &peers,
                ],
                &[],
            )
        })
        .collect();
    let mnt = env.path("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let (mut kills, mut checked, mut interrupted) = ([0u32; 3], 0u64, 0u32);
    for round in 0..21u64 {
        // A repo of its own per round: every read starts cold.
        let repo = format!("acme/r{round}");
        let files = locus_testorigin::model::generate_model(2 << 20, 2, 100 + round);
        env.sim.commit("model", &repo, files.clone());
        let uri = format!("hf://{repo}");
        let scenario = rng.next(3) as usize;
        let at = Duration::from_millis(rng.next(400));
        let victim = match scenario {
            // A warm on node 0.
            0 => {
                let mut c = Command::new(LOCUS)
                    .args(["warm", &uri, "--socket"])
                    .arg(&ds[0].socket)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap();
                std::thread::sleep(at);
                ds[0].signal(Signal::SIGKILL);
                if !c.wait().unwrap().success() {
                    interrupted += 1;
                }
                0
            }
            // Node 1 reads from node 0, which holds the repo; either one is killed.
            1 => {
                ds[0].ok(&["warm", &uri]);
                let mut c = Command::new(LOCUS)
                    .args(["warm", &uri, "--socket"])
                    .arg(&ds[1].socket)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap();
                let victim = rng.next(2) as usize;
                std::thread::sleep(at / 4);
                ds[victim].signal(Signal::SIGKILL);
                if !c.wait().unwrap().success() {
                    interrupted += 1;
                }
                victim
            }
            // A mount over node 0, read while node 0 dies: whatever a reader got is right.
            _ => {
                let dir = mnt.join(format!("r{round}"));
                std::fs::create_dir_all(&dir).unwrap();
                ds[0].ok(&["mount", &uri, dir.to_str().unwrap()]);
                let reader = {
                    let dir = dir.clone();
                    let files = files.clone();
                    std::thread::spawn(move || {
                        let mut all = true;
                        for (p, want) in &files {
                            match std::fs::read(dir.join(p)) {
                                Ok(got) => {
                                    assert!(got == want.to_vec(), "mount read of {p} differs")
                                }
                                Err(_) => all = false,
                            }
                        }
                        all
                    })
                };
                std::thread::sleep(at);
                ds[0].signal(Signal::SIGKILL);
                // A mount's reads wait for the daemon to come back (up to two minutes).
                ds[0].restart();
                if !reader.join().unwrap() {
                    interrupted += 1;
                }
                // The mount reconnects: every file through it equals the origin's.
                for (p, want) in &files {
                    let got = std::fs::read(dir.join(p)).unwrap();
                    assert!(
                        got == want.to_vec(),
                        "{p} through the mount after a restart"
                    );
                    checked += got.len() as u64;
                }
                let _ = Command::new(LOCUS).arg("unmount").arg(&dir).output();
                kills[2] += 1;
                checked += check_repo(&ds[0], &repo, &files);
                continue;
            }
        };
        kills[scenario] += 1;
        ds[victim].restart();
        for d in &ds {
            checked += check_repo(d, &repo, &files);
        }
    }
    eprintln!(
        "kill -9: {} in warms, {} in peer reads, {} in mount reads; {} operations interrupted; \
         {checked} bytes checked, 0 wrong",
        kills[0], kills[1], kills[2], interrupted
    );
    assert_eq!(kills.iter().sum::<u32>(), 21);
}

#[test]
#[ignore = "needs root (a mount, another user or a tmpfs): tests/run runs it"]
fn a_full_disk_fails_the_request_clearly_and_keeps_the_cache_sound() {
    let env = Env::new();
    let big = random_files(1, 12 << 20, 9);
    let small = random_files(1, 1 << 20, 10);
    env.sim.commit("model", "acme/big", big.clone());
    env.sim.commit("model", "acme/small", small.clone());
    let mnt = env.path("tiny-disk");
    std::fs::create_dir_all(&mnt).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"])
        .arg(&mnt)
        .status()
        .expect("mount (tests run as root)");
    assert!(st.success(), "mounting a small tmpfs needs root");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let mut d = env.daemon(
        "n",
        &[
            "--cache-dir",
            mnt.join("cache").to_str().unwrap(),
            "--cache-size",
            "1GiB",
            "--chunk-size",
            "256KiB",
        ],
        &[],
    );
    let out = d.locus(&["warm", "hf://acme/big"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no space left"), "{}", stderr(&out));
    // The node goes on serving what fits, correctly, once the failed fetches have ended and
    // their space is back (each try fails cleanly until then).
    let mut tries = 0;
    loop {
        let out = d.locus(&["warm", "hf://acme/small"]);
        if out.status.success() {
            break;
        }
        assert!(stderr(&out).contains("no space left"), "{}", stderr(&out));
        tries += 1;
        assert!(tries < 60, "the small repo never fit: {}", d.log_text());
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(
        d.ok(&["cat", &format!("hf://acme/small/{}", small[0].0)]),
        small[0].1.to_vec()
    );
    // The index recorded it, even where an index commit had failed on the full disk (redb
    // refuses everything after an I/O error until it is opened again): a restart keeps it.
    assert!(d.signal(Signal::SIGTERM).success());
    let before = env.sim.stats();
    d.restart();
    let out = d.ok(&["warm", "hf://acme/small"]);
    assert!(
        String::from_utf8_lossy(&out).contains("0 B from origin"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(env.sim.stats().data_requests(), before.data_requests());
}

/// Metadata calls and whole-file spools are retried inside the origin alone: an origin whose
/// API always fails costs one call's attempts per command, and a server without Range that
/// always fails costs one spool's attempts, not a retry of each by the node above.
#[test]
fn metadata_calls_and_whole_file_spools_are_retried_by_the_origin_alone() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = Env::new();
    env.sim.commit("model", REPO, random_files(1, 1000, 3));
    // An HTTP server without Range: HEAD gives a size and an ETag, every GET a 503 that asks
    // for no wait (Retry-After: 0). Counts GETs.
    let gets = Arc::new(AtomicU64::new(0));
    let l = env
        .rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let www = format!("http://{}/m.bin", l.local_addr().unwrap());
    let g = gets.clone();
    env.rt.spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            let g = g.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let n = c.read(&mut buf).await.unwrap_or(0);
                let answer = if buf[..n].starts_with(b"GET") {
                    g.fetch_add(1, Ordering::SeqCst);
                    "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0\r\nContent-Length: 0\r\n"
                } else {
                    "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nETag: \"v1\"\r\n"
                };
                let _ = c
                    .write_all(format!("{answer}Connection: close\r\n\r\n").as_bytes())
                    .await;
            });
        }
    });
    let d = env.daemon("n", &["--http-allow-private", "127.0.0.1/32"], &[]);
    env.sim.set_faults(Faults {
        fail: vec![FailRule {
            kind: "api".into(),
            status: 503,
            count: u32::MAX,
            retry_after: Some(0),
        }],
        ..Faults::default()
    });
    env.sim.reset_stats();
    for cmd in ["ls", "warm"] {
        let out = d.locus(&[cmd, &format!("hf://{REPO}")]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{cmd}: {err}");
        let s = env.sim.stats();
        // One revision call, retried by the origin alone (8, the default), by nothing above.
        assert_eq!(s.get("api_revision"), 8, "{cmd}: {s:?}");
        assert_eq!(s.get("api_tree"), 0, "{cmd}: {s:?}");
        env.sim.reset_stats();
    }
    // A whole-file spool that always fails (one chunk, one spool): the origin's 8 GETs.
    let out = d.locus(&["cat", &www]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    assert_eq!(gets.load(Ordering::SeqCst), 8, "{}", d.log_text());
}
