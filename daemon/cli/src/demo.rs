//! `locus demo`: the offline quickstart. A local Hub (in this process) serves a generated
//! safetensors model; three real `locus daemon` processes on loopback form a cluster; the demo
//! warms the cluster (the origin is read once), lets a second node take a full copy from its
//! peers, warms again, reads every file back through the third node's FUSE namespace mount and
//! checks it, loads the checkpoint from the mount with the zero-copy loader, and reports each
//! step with its time and origin bytes. Everything lives in a temporary folder that is removed
//! at the end, also on Ctrl-C: the daemons get SIGTERM (they unmount) and the mount is detached.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Args;
use locus_core::format_size;
use locus_grpc::v1 as pb;
use locus_testorigin::{model, Faults, HubSim, SimOptions};
use sha2::Digest;

use crate::client;
use crate::Failure;

#[derive(Args)]
pub struct DemoArgs {
    /// Size of the generated model.
    #[arg(long, default_value = "256MiB")]
    model_size: String,
    /// Shards of the generated model.
    #[arg(long, default_value_t = 4)]
    shards: usize,
    /// Per-connection bandwidth of the local Hub's CDN (the real one caps each connection).
    #[arg(long, default_value = "40MB")]
    throttle: String,
    /// Keep the temporary folder (cache, logs) for inspection.
    #[arg(long)]
    keep: bool,
}

struct Step {
    name: String,
    seconds: f64,
    origin_bytes: u64,
    detail: String,
}

/// The daemon child; stopped like an operator would (SIGTERM, then SIGKILL after 5 s) if the
/// demo ends early, so that its mount is taken down.
struct Child(tokio::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(pid) = self.0.id() {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.0.start_kill();
    }
}

/// Whether this process can mount FUSE file systems (root and `/dev/fuse`).
fn fuse_usable() -> bool {
    nix::unistd::geteuid().is_root()
        && std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .is_ok()
}

async fn wait_ready(socket: &Path, log: &Path, child: &mut Child) -> Result<(), Failure> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut c) = client::connect(socket).await {
            if c.status(pb::StatusRequest {}).await.is_ok() {
                return Ok(());
            }
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            return Err(Failure::new(
                1,
                format!(
                    "the demo daemon exited ({status}): {}",
                    tail.lines().last().unwrap_or("")
                ),
            ));
        }
        if Instant::now() > deadline {
            return Err(Failure::new(
                1,
                "the demo daemon did not become ready in 30 s",
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Daemons in the demo cluster.
const NODES: usize = 3;

fn free_loopback_port() -> Result<u16, Failure> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Failure::new(1, format!("finding a free loopback port: {e}")))
}

/// Starts demo node `i`: its own cache, socket and log under `root`.
async fn spawn_node(
    root: &Path,
    i: usize,
    addr: &str,
    peers: &str,
    endpoint: &str,
    mount: Option<&Path>,
) -> Result<(Child, std::path::PathBuf, std::path::PathBuf), Failure> {
    let dir = root.join(format!("node{}", i + 1));
    std::fs::create_dir_all(&dir).map_err(|e| Failure::new(1, e.to_string()))?;
    let socket = dir.join("locus.sock");
    let log = dir.join("daemon.log");
    let exe = std::env::current_exe().map_err(|e| Failure::new(1, e.to_string()))?;
    let log_file = std::fs::File::create(&log).map_err(|e| Failure::new(1, e.to_string()))?;
    let child = Child(
        tokio::process::Command::new(exe)
            .arg("daemon")
            .arg("--cache-dir")
            .arg(dir.join("cache"))
            .arg("--cache-size")
            .arg("4GiB")
            .arg("--socket")
            .arg(&socket)
            .args(["--listen", addr, "--peers", peers])
            .args(
                mount
                    .map(|m| {
                        let mut a = vec![std::ffi::OsString::from("--mount")];
                        a.push(m.as_os_str().to_owned());
                        a
                    })
                    .unwrap_or_default(),
            )
            .env("HF_ENDPOINT", endpoint)
            .env_remove("HF_TOKEN")
            .env("HF_TOKEN_PATH", root.join("no-token"))
            .env_remove("LOCUS_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Failure::new(1, format!("starting a demo daemon: {e}")))?,
    );
    Ok((child, socket, log))
}

/// Waits until every node sees every member up (health checks run every second).
async fn wait_members_up(clients: &mut [client::Client]) -> Result<(), Failure> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut all = true;
        let n = clients.len();
        for c in clients.iter_mut() {
            let st = c
                .status(pb::StatusRequest {})
                .await
                .map_err(|s| Failure::new(1, s.message().to_string()))?
                .into_inner();
            all &= st.members.len() == n && st.members.iter().all(|m| m.state == "up");
        }
        if all {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Failure::new(1, "the demo cluster did not form in 30 s"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn run(a: DemoArgs) -> Result<(), Failure> {
    let size = locus_core::parse_size(&a.model_size)
        .map_err(|e| Failure::usage(format!("--model-size: {e}")))?;
    let throttle = locus_core::parse_size(&a.throttle)
        .map_err(|e| Failure::usage(format!("--throttle: {e}")))?;
    let tmp = tempfile::Builder::new()
        .prefix("locus-demo-")
        .tempdir()
        .map_err(|e| Failure::new(1, format!("creating a temporary folder: {e}")))?;
    let root = tmp.path().to_path_buf();
    // Listening before any work starts, so that an early Ctrl-C is not lost.
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).map_err(|e| Failure::new(1, e.to_string()))?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| Failure::new(1, e.to_string()))?;
    let work = run_steps(&root, size, a.shards, throttle);
    let result = tokio::select! {
        r = work => r,
        _ = int.recv() => Err(Failure::new(130, "interrupted; cleaned up")),
        _ = term.recv() => Err(Failure::new(143, "terminated; cleaned up")),
    };
    // The daemons are stopped by now (dropped with the steps); a mount left behind by one that
    // had to be killed is detached so that the folder can go.
    let mnt = root.join("mnt");
    if crate::mount::is_mounted(&mnt) {
        let _ = crate::mount::unmount(&mnt);
    }
    if a.keep {
        let kept = tmp.keep();
        println!("kept {}", kept.display());
    }
    result
}

async fn run_steps(root: &Path, size: u64, shards: usize, throttle: u64) -> Result<(), Failure> {
    let mut steps = Vec::new();
    let repo = "locus-demo/tiny-llm";
    let uri = format!("hf://{repo}");

    let t = Instant::now();
    // Generating hundreds of MiB takes a while: off the async threads, so Ctrl-C stays heard.
    let files = tokio::task::spawn_blocking(move || model::generate_model(size, shards, 42))
        .await
        .map_err(|e| Failure::new(1, e.to_string()))?;
    let sim = HubSim::start(SimOptions {
        faults: Faults {
            throttle_bps: throttle,
            ..Faults::default()
        },
        ..SimOptions::default()
    })
    .await
    .map_err(|e| Failure::new(1, format!("starting the local Hub: {e}")))?;
    sim.commit("model", repo, files.clone());
    let total: u64 = files.iter().map(|(_, b)| b.len() as u64).sum();
    steps.push(Step {
        name: "origin".into(),
        seconds: t.elapsed().as_secs_f64(),
        origin_bytes: 0,
        detail: format!(
            "local Hub at {} serving {uri}: {} files, {} ({}/s per connection)",
            sim.url(),
            files.len(),
            format_size(total),
            format_size(throttle)
        ),
    });

    let t = Instant::now();
    let addrs: Vec<String> = (0..NODES)
        .map(|_| free_loopback_port().map(|p| format!("127.0.0.1:{p}")))
        .collect::<Result<_, _>>()?;
    // The third node also serves the namespace view, where the model is read and loaded.
    let mnt = root.join("mnt");
    let mount = fuse_usable().then_some(mnt.as_path());
    if mount.is_some() {
        std::fs::create_dir_all(&mnt).map_err(|e| Failure::new(1, e.to_string()))?;
    }
    let mut nodes: Vec<(Child, std::path::PathBuf, std::path::PathBuf)> = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let m = if i == NODES - 1 { mount } else { None };
        nodes.push(spawn_node(root, i, addr, &addrs.join(","), &sim.url(), m).await?);
    }
    for (child, socket, log) in &mut nodes {
        wait_ready(socket, log, child).await?;
    }
    let mut clients = Vec::new();
    for (_, socket, _) in &nodes {
        clients.push(client::connect(socket).await?);
    }
    wait_members_up(&mut clients).await?;
    steps.push(Step {
        name: "cluster".into(),
        seconds: t.elapsed().as_secs_f64(),
        origin_bytes: 0,
        detail: format!(
            "{NODES} daemons on loopback ({}), each with its own cache",
            addrs.join(", ")
        ),
    });

    for (node, scope, name, what) in [
        (
            0,
            "cluster",
            "warm cluster",
            "node 1 asks each chunk's owner to fetch it: the origin once",
        ),
        (
            1,
            "node",
            "warm node 2",
            "a full copy on node 2, from its peers",
        ),
        (
            1,
            "node",
            "warm again",
            "already on node 2: no origin or peer bytes",
        ),
    ] {
        let before = sim.stats().data_bytes;
        let s = client::warm_with(
            &mut clients[node],
            pb::WarmRequest {
                uris: vec![uri.clone()],
                scope: scope.into(),
                ..Default::default()
            },
            true,
        )
        .await?;
        steps.push(Step {
            name: name.into(),
            seconds: s.seconds,
            origin_bytes: sim.stats().data_bytes - before,
            detail: format!("{what}; {s}"),
        });
    }
    let c = &mut clients[2];

    let model_dir = mnt.join("hf").join(repo);
    let t = Instant::now();
    let before = sim.stats().data_bytes;
    let mut tensors = 0;
    for (path, want) in &files {
        let got = match mount {
            Some(_) => tokio::fs::read(model_dir.join(path))
                .await
                .map_err(|e| Failure::new(1, format!("{path} through the mount: {e}")))?,
            None => {
                let open = c
                    .open(pb::OpenRequest {
                        uri: format!("{uri}/{path}"),
                    })
                    .await
                    .map_err(|s| Failure::new(1, s.message().to_string()))?
                    .into_inner();
                let mut got = Vec::with_capacity(open.size as usize);
                client::copy_verified(&open, &mut got)
                    .map_err(|e| Failure::new(1, e.to_string()))?;
                got
            }
        };
        if sha2::Sha256::digest(&got) != sha2::Sha256::digest(want) {
            return Err(Failure::new(
                1,
                format!("{path}: bytes read back differ from the origin's"),
            ));
        }
        if path.ends_with(".safetensors") {
            let st = safetensors::SafeTensors::deserialize(&got)
                .map_err(|e| Failure::new(1, format!("{path}: {e}")))?;
            tensors += st.len();
        }
    }
    steps.push(Step {
        name: "read back".into(),
        seconds: t.elapsed().as_secs_f64(),
        origin_bytes: sim.stats().data_bytes - before,
        detail: match mount {
            Some(_) => format!(
                "node 3's mount {}: {} files equal the origin's (sha256); {tensors} tensors parsed",
                model_dir.display(),
                files.len()
            ),
            None => format!(
                "node 3 (no FUSE here: needs root and /dev/fuse): {} files equal the origin's (sha256); {tensors} tensors parsed",
                files.len()
            ),
        },
    });

    // The zero-copy loader: each tensor a view of its shard's mapping (of the mount, or of the
    // cache file that the daemon hands out for a URI).
    let t = Instant::now();
    let before = sim.stats().data_bytes;
    let target = match mount {
        Some(_) => model_dir.to_string_lossy().into_owned(),
        None => uri.clone(),
    };
    let socket = nodes[NODES - 1].1.clone();
    let (count, bytes) = tokio::task::spawn_blocking(move || {
        let ck = locus_loader::Checkpoint::open_with(
            &target,
            &locus_loader::OpenOptions {
                socket: Some(socket),
            },
        )?;
        let (mut bytes, mut touched) = (0u64, 0u64);
        let names: Vec<String> = ck.names().map(str::to_string).collect();
        for n in &names {
            let t = ck.tensor(n)?;
            // Touch every page, as copying the weights to a device does.
            touched = t
                .data()
                .iter()
                .step_by(4096)
                .fold(touched, |a, b| a.wrapping_add(u64::from(*b)));
            bytes += t.data().len() as u64;
        }
        std::hint::black_box(touched);
        Ok::<_, locus_loader::LoaderError>((names.len(), bytes))
    })
    .await
    .map_err(|e| Failure::new(1, e.to_string()))?
    .map_err(|e| Failure::new(1, format!("loading the checkpoint: {e}")))?;
    if count != tensors {
        return Err(Failure::new(
            1,
            format!("the loader saw {count} tensors, safetensors {tensors}"),
        ));
    }
    steps.push(Step {
        name: "load".into(),
        seconds: t.elapsed().as_secs_f64(),
        origin_bytes: sim.stats().data_bytes - before,
        detail: format!(
            "locus-loader opened the checkpoint (index + shards): {count} tensors, {} as zero-copy views",
            format_size(bytes)
        ),
    });

    let st = c
        .status(pb::StatusRequest {})
        .await
        .map_err(|s| Failure::new(1, s.message().to_string()))?
        .into_inner();
    // Stop the daemons as an operator would.
    for (child, _, _) in &mut nodes {
        if let Some(pid) = child.0.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    for (child, _, _) in &mut nodes {
        let _ = tokio::time::timeout(Duration::from_secs(10), child.0.wait()).await;
    }

    println!();
    println!(
        "locus demo: {uri}, {} in {} files",
        format_size(total),
        files.len()
    );
    println!(
        "{:<14} {:>9} {:>12}  what happened",
        "step", "seconds", "origin bytes"
    );
    for s in &steps {
        println!(
            "{:<14} {:>9.2} {:>12}  {}",
            s.name,
            s.seconds,
            format_size(s.origin_bytes),
            s.detail
        );
    }
    let origin_total: u64 = steps.iter().map(|s| s.origin_bytes).sum();
    println!(
        "origin bytes in all: {} for a {} model ({:.3}x); node 3: {} from peers, {} cached",
        format_size(origin_total),
        format_size(total),
        origin_total as f64 / total.max(1) as f64,
        format_size(st.peer_bytes),
        format_size(st.cache_bytes),
    );
    println!();
    println!("Next, on your own model (the daemon reads HF_TOKEN and AWS_* itself):");
    for line in NEXT_STEPS {
        println!("  {line}");
    }
    Ok(())
}

/// What a user types after the demo: a daemon, a warm, and a mount or a load.
const NEXT_STEPS: [&str; 3] = [
    "locus daemon --cache-dir /var/cache/locus --cache-size 100GiB &",
    "locus warm hf://ORG/NAME",
    "locus mount hf://ORG/NAME /mnt/model    # or in Python: locus.load(\"hf://ORG/NAME\")",
];
