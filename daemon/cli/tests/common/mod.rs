//! Test harness: a simulated Hub in this process and real `locus` processes around it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use locus_testorigin::{HubSim, SimOptions};

pub const LOCUS: &str = env!("CARGO_BIN_EXE_locus");

pub struct Env {
    pub sim: HubSim,
    pub dir: tempfile::TempDir,
    /// Runs the simulated Hub while the test drives processes.
    pub rt: tokio::runtime::Runtime,
}

impl Env {
    pub fn new() -> Env {
        Env::with(SimOptions::default())
    }

    pub fn with(opts: SimOptions) -> Env {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        Env {
            sim: rt
                .block_on(HubSim::start(opts))
                .expect("start simulated hub"),
            dir: tempfile::tempdir().expect("tempdir"),
            rt,
        }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Starts a daemon named `name` (its own cache and socket) with extra flags and variables.
    pub fn daemon(&self, name: &str, args: &[&str], envs: &[(&str, &str)]) -> Daemon {
        Daemon::start(self, name, args, envs)
    }
}

pub struct Daemon {
    pub child: std::process::Child,
    pub socket: PathBuf,
    pub cache: PathBuf,
    pub log: PathBuf,
    name: String,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    endpoint: String,
}

impl Daemon {
    fn start(env: &Env, name: &str, args: &[&str], envs: &[(&str, &str)]) -> Daemon {
        let d = env.dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        let cache = args
            .iter()
            .position(|a| *a == "--cache-dir")
            .map(|i| PathBuf::from(args[i + 1]))
            .unwrap_or_else(|| d.join("cache"));
        let mut daemon = Daemon {
            child: Command::new("true").spawn().unwrap(),
            socket: d.join("locus.sock"),
            cache,
            log: d.join("daemon.log"),
            name: name.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            endpoint: env.sim.url(),
        };
        daemon.spawn();
        daemon
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(LOCUS);
        cmd.arg("daemon");
        if !self.args.iter().any(|a| a == "--cache-dir") {
            cmd.arg("--cache-dir").arg(&self.cache);
        }
        cmd.arg("--socket")
            .arg(&self.socket)
            .args(&self.args)
            .env("HF_ENDPOINT", &self.endpoint)
            .env_remove("HF_TOKEN")
            .env("HF_TOKEN_PATH", self.cache.with_file_name("no-token"))
            .env_remove("LOCUS_CONFIG")
            .env("LOCUS_LOG", "info,locus_origin=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let before = self.log_text().matches(" ready").count();
        self.child = cmd.spawn().expect("spawn locus daemon");
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.log_text().matches(" ready").count() == before {
            if let Ok(Some(s)) = self.child.try_wait() {
                panic!("daemon {} exited with {s}: {}", self.name, self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "daemon {} not ready: {}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal and waits for the process to end; returns its exit status.
    pub fn signal(&mut self, sig: nix::sys::signal::Signal) -> std::process::ExitStatus {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
        self.child.wait().unwrap()
    }

    /// Starts the daemon again on the same cache.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.spawn();
    }

    /// Runs `locus ARGS --socket SOCKET`.
    pub fn locus(&self, args: &[&str]) -> Output {
        locus_cmd(&self.socket, args)
    }

    /// Runs a client command that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> Vec<u8> {
        let out = self.locus(args);
        assert!(
            out.status.success(),
            "locus {args:?} failed ({}): {}\ndaemon log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        out.stdout
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_slice(&self.ok(args)).expect("json output")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn locus_cmd(socket: &Path, args: &[&str]) -> Output {
    Command::new(LOCUS)
        .args(args)
        .arg("--socket")
        .arg(socket)
        .env_remove("LOCUS_CONFIG")
        .output()
        .expect("run locus")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `n` files of `size` pseudo-random bytes.
pub fn random_files(n: usize, size: usize, seed: u64) -> Vec<(String, Bytes)> {
    (0..n)
        .map(|i| {
            (
                format!("weights/shard-{i}.bin"),
                locus_testorigin::model::random_bytes(seed + i as u64, size),
            )
        })
        .collect()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Every data file of a cache (`data/<folder>/<id>`), sorted.
#[allow(dead_code)]
pub fn data_files(cache: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(cache.join("data"))
        .unwrap()
        .flat_map(|folder| std::fs::read_dir(folder.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}
