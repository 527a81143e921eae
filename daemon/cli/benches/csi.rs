//! The CSI plugin's speed, side by side with native reads, in one run (as root, release):
//!
//!   cargo bench -p locus --bench csi -- [--runs 5]
//!
//! 1. Time from `NodePublishVolume` to a readable mount (the call's answer, then the first
//!    `stat` of a file through the target): cold (nothing cached, no warm) and warm (cached).
//! 2. A sequential read of a cached 1 GiB file through a CSI-published mount, first and
//!    second (the kernel's page cache), against a read of a native copy in the page cache
//!    (the FUSE goals: first ≥ 0.5x, second ≥ 0.9x).

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use locus_grpc::csi;

const LOCUS: &str = env!("CARGO_BIN_EXE_locus");
const GIB: u64 = 1 << 30;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn read_all(p: &Path) -> (u64, f64) {
    let t = Instant::now();
    let mut f = std::fs::File::open(p).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        n += k as u64;
    }
    (n, t.elapsed().as_secs_f64())
}

fn req(id: &str, target: &Path, uri: &str, warm: bool) -> csi::NodePublishVolumeRequest {
    let mut ctx = HashMap::new();
    ctx.insert("uri".to_string(), uri.to_string());
    if warm {
        ctx.insert("warm".to_string(), "true".to_string());
    }
    csi::NodePublishVolumeRequest {
        volume_id: id.into(),
        target_path: target.to_string_lossy().into(),
        volume_capability: Some(csi::VolumeCapability {
            access_type: Some(csi::volume_capability::AccessType::Mount(Default::default())),
            access_mode: Some(csi::volume_capability::AccessMode {
                mode: csi::volume_capability::access_mode::Mode::MultiNodeReaderOnly as i32,
            }),
        }),
        readonly: true,
        volume_context: ctx,
        ..Default::default()
    }
}

fn main() {
    let runs: usize = std::env::args()
        .skip_while(|a| a != "--runs")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sim = rt
        .block_on(locus_testorigin::HubSim::start(Default::default()))
        .unwrap();
    sim.commit_generated("model", "bench/big", 1, GIB..=GIB, 3);
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("csi/csi.sock");
    let run_daemon = |cache: &Path| {
        let log = std::fs::File::create(cache.with_extension("log")).unwrap();
        let mut child = Command::new(LOCUS)
            .args(["daemon", "--cache-dir"])
            .arg(cache)
            .arg("--socket")
            .arg(cache.with_extension("sock"))
            .arg("--csi-socket")
            .arg(&sock)
            .args(["--cache-size", "4GiB"])
            .env("HF_ENDPOINT", sim.url())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(cache.with_extension("log"))
            .unwrap_or_default()
            .contains(" ready")
        {
            assert!(
                Instant::now() < deadline && child.try_wait().unwrap().is_none(),
                "daemon did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    };
    let publish = |target: &Path, warm: bool, id: &str| -> f64 {
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        let t = Instant::now();
        rt.block_on(async {
            let ch = locus_grpc::unix_channel(&sock).await.unwrap();
            csi::node_client::NodeClient::new(ch)
                .node_publish_volume(req(id, target, "hf://bench/big", warm))
                .await
                .unwrap();
        });
        std::fs::metadata(target.join(locus_testorigin::generated_name(0))).unwrap();
        t.elapsed().as_secs_f64()
    };
    let unpublish = |target: &Path, id: &str| {
        rt.block_on(async {
            let ch = locus_grpc::unix_channel(&sock).await.unwrap();
            csi::node_client::NodeClient::new(ch)
                .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
                    volume_id: id.into(),
                    target_path: target.to_string_lossy().into(),
                })
                .await
                .unwrap();
        });
    };
    // 1. Cold: a fresh cache each run, no warm (the publish lists the repo, pins it, mounts).
    let mut cold = Vec::new();
    for r in 0..runs {
        let cache = dir.path().join(format!("cold-{r}"));
        let mut d = run_daemon(&cache);
        let target = dir.path().join(format!("pods/cold-{r}/mount"));
        cold.push(publish(&target, false, &format!("cold-{r}")));
        unpublish(&target, &format!("cold-{r}"));
        let _ = d.kill();
        let _ = d.wait();
        let _ = std::fs::remove_dir_all(&cache);
    }
    // 2. Warm: one daemon, the file cached; then reads against a native copy.
    let cache = dir.path().join("warm");
    let mut d = run_daemon(&cache);
    let t = dir.path().join("pods/fill/mount");
    let fill = publish(&t, true, "fill");
    unpublish(&t, "fill");
    let native = dir.path().join("native.bin");
    // The native copy: the same bytes, read once through a mount and written to local disk.
    let t = dir.path().join("pods/copy/mount");
    publish(&t, false, "copy");
    std::fs::copy(t.join(locus_testorigin::generated_name(0)), &native).unwrap();
    unpublish(&t, "copy");
    read_all(&native);
    let (mut warm, mut first, mut second, mut nat) = (vec![], vec![], vec![], vec![]);
    for r in 0..runs {
        let target = dir.path().join(format!("pods/warm-{r}/mount"));
        warm.push(publish(&target, true, &format!("warm-{r}")));
        let file = target.join(locus_testorigin::generated_name(0));
        let (n, s1) = read_all(&file);
        assert_eq!(n, GIB);
        let (_, s2) = read_all(&file);
        let (_, sn) = read_all(&native);
        first.push(GIB as f64 / s1);
        second.push(GIB as f64 / s2);
        nat.push(GIB as f64 / sn);
        unpublish(&target, &format!("warm-{r}"));
    }
    let _ = d.kill();
    let _ = d.wait();
    let mb = |v: f64| v / 1e6;
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("CSI publish to a readable mount, 1 GiB repo ({runs} runs; the warm's own fill took {fill:.2} s):");
    println!(
        "  cold (nothing cached, no warm): median {:.3} s  [{}]",
        median(cold.clone()),
        list(&cold)
    );
    println!(
        "  warm (cached, warm: true):      median {:.3} s  [{}]",
        median(warm.clone()),
        list(&warm)
    );
    let (f, s, n) = (median(first), median(second), median(nat));
    println!(
        "Sequential read of the cached 1 GiB file through the CSI mount vs native (page cache):"
    );
    println!(
        "  first read  {:.0} MB/s, ratio {:.2} (goal >= 0.5)",
        mb(f),
        f / n
    );
    println!(
        "  second read {:.0} MB/s, ratio {:.2} (goal >= 0.9)",
        mb(s),
        s / n
    );
    println!("  native      {:.0} MB/s", mb(n));
}
