//! The CSI node plugin (`locus daemon --csi-socket`), driven over its Unix socket with a gRPC
//! client built from the spec's csi.proto, as kubelet drives it. Real FUSE mounts (root):
//! every file published is read and compared with the origin's bytes. The checks of the
//! upstream `csi-sanity` suite that apply to a node-only plugin are reproduced and named.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::*;
use locus_grpc::csi;
use tonic::Code;

struct Csi {
    rt: tokio::runtime::Runtime,
    identity: csi::identity_client::IdentityClient<tonic::transport::Channel>,
    node: csi::node_client::NodeClient<tonic::transport::Channel>,
}

impl Csi {
    fn connect(socket: &Path) -> Csi {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let ch = rt
            .block_on(locus_grpc::unix_channel(socket))
            .expect("CSI socket");
        Csi {
            identity: csi::identity_client::IdentityClient::new(ch.clone()),
            node: csi::node_client::NodeClient::new(ch),
            rt,
        }
    }

    fn publish(&mut self, req: csi::NodePublishVolumeRequest) -> Result<(), tonic::Status> {
        self.rt
            .block_on(self.node.node_publish_volume(req))
            .map(|_| ())
    }

    fn unpublish(&mut self, volume_id: &str, target: &str) -> Result<(), tonic::Status> {
        self.rt
            .block_on(
                self.node
                    .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
                        volume_id: volume_id.into(),
                        target_path: target.into(),
                    }),
            )
            .map(|_| ())
    }
}

fn mount_cap(mode: csi::volume_capability::access_mode::Mode) -> Option<csi::VolumeCapability> {
    Some(csi::VolumeCapability {
        access_type: Some(csi::volume_capability::AccessType::Mount(
            csi::volume_capability::MountVolume::default(),
        )),
        access_mode: Some(csi::volume_capability::AccessMode { mode: mode as i32 }),
    })
}

fn publish_req(id: &str, target: &Path, ctx: &[(&str, &str)]) -> csi::NodePublishVolumeRequest {
    csi::NodePublishVolumeRequest {
        volume_id: id.into(),
        target_path: target.to_string_lossy().into(),
        volume_capability: mount_cap(
            csi::volume_capability::access_mode::Mode::MultiNodeReaderOnly,
        ),
        readonly: true,
        volume_context: ctx
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
        ..Default::default()
    }
}

fn mounted(p: &Path) -> bool {
    let Ok(c) = std::fs::canonicalize(p) else {
        return false;
    };
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == c.to_str())
}

/// Every file under `dir`, by path from it.
fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn start(env: &Env, name: &str) -> (Daemon, PathBuf) {
    let sock = env.path(&format!("{name}-csi/csi.sock"));
    let d = env.daemon(
        name,
        &[
            "--csi-socket",
            sock.to_str().unwrap(),
            "--node-id",
            "node-a",
            "--chunk-size",
            "256KiB",
        ],
        &[],
    );
    (d, sock)
}

/// csi-sanity's Identity checks, and the node's own: "GetPluginCapabilities should return
/// appropriate capabilities", "Probe should return appropriate information", "GetPluginInfo
/// should return appropriate information", "NodeGetCapabilities should return appropriate
/// capabilities", "NodeGetInfo should return appropriate values".
#[test]
#[ignore = "needs root (a mount, another user or a tmpfs): tests/run runs it"]
fn the_plugin_says_who_it_is_as_csi_sanity_checks() {
    let env = Env::new();
    let (_d, sock) = start(&env, "n");
    let mut c = Csi::connect(&sock);
    let info =
        c.rt.block_on(c.identity.get_plugin_info(csi::GetPluginInfoRequest {}))
            .unwrap()
            .into_inner();
    assert_eq!(info.name, "csi.locus.dev");
    // csi-sanity's rule for the name: a letter first and last, at most 63 characters.
    let n = info.name.as_bytes();
    assert!(n.len() <= 63 && n[0].is_ascii_alphabetic() && n[n.len() - 1].is_ascii_alphabetic());
    assert!(!info.vendor_version.is_empty());
    let caps =
        c.rt.block_on(
            c.identity
                .get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {}),
        )
        .unwrap()
        .into_inner();
    assert!(caps.capabilities.is_empty(), "a node plugin only: {caps:?}");
    let probe =
        c.rt.block_on(c.identity.probe(csi::ProbeRequest {}))
            .unwrap()
            .into_inner();
    assert_eq!(probe.ready, Some(true));
    let ncaps =
        c.rt.block_on(
            c.node
                .node_get_capabilities(csi::NodeGetCapabilitiesRequest {}),
        )
        .unwrap()
        .into_inner();
    assert!(
        ncaps.capabilities.is_empty(),
        "no staging, no stats: {ncaps:?}"
    );
    let ninfo =
        c.rt.block_on(c.node.node_get_info(csi::NodeGetInfoRequest {}))
            .unwrap()
            .into_inner();
    assert_eq!(ninfo.node_id, "node-a");
    assert!(ninfo.max_volumes_per_node >= 0 && ninfo.accessible_topology.is_none());
    // Staging is not offered, and says so.
    let e =
        c.rt.block_on(
            c.node
                .node_stage_volume(csi::NodeStageVolumeRequest::default()),
        )
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
    // The socket is for the owner and group (kubelet, the registrar), and a second daemon
    // does not take over a live plugin's socket.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let out = std::process::Command::new(LOCUS)
        .args(["daemon", "--cache-dir"])
        .arg(env.path("other-cache"))
        .arg("--socket")
        .arg(env.path("other.sock"))
        .arg("--csi-socket")
        .arg(&sock)
        .env("HF_ENDPOINT", env.sim.url())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("already serving it"),
        "{}",
        stderr(&out)
    );
    c.rt.block_on(c.identity.probe(csi::ProbeRequest {}))
        .expect("the first plugin still answers");
}

/// csi-sanity's NodePublishVolume and NodeUnpublishVolume checks ("should fail when no volume
/// id is provided", "should fail when no target path is provided", "should fail when no
/// volume capability is provided", and for unpublish the first two), and bad attributes.
#[test]
#[ignore = "needs root (a mount, another user or a tmpfs): tests/run runs it"]
fn bad_requests_get_invalid_argument_with_a_message() {
    let env = Env::new();
    env.sim.commit("model", "acme/m", random_files(2, 1000, 1));
    let (_d, sock) = start(&env, "n");
    let mut c = Csi::connect(&sock);
    let target = env.path("pods/t1/mount");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    let good = publish_req("v1", &target, &[("uri", "hf://acme/m")]);
    let mut cases: Vec<(&str, csi::NodePublishVolumeRequest, &str)> = vec![
        (
            "no volume id",
            csi::NodePublishVolumeRequest {
                volume_id: String::new(),
                ..good.clone()
            },
            "volume_id",
        ),
        (
            "no target path",
            csi::NodePublishVolumeRequest {
                target_path: String::new(),
                volume_capability: None,
                ..good.clone()
            },
            "target_path",
        ),
        (
            "no volume capability",
            csi::NodePublishVolumeRequest {
                volume_capability: None,
                ..good.clone()
            },
            "volume_capability",
        ),
        (
            "a relative target",
            csi::NodePublishVolumeRequest {
                target_path: "rel/path".into(),
                ..good.clone()
            },
            "absolute",
        ),
    ];
    let mut block = good.clone();
    block.volume_capability = Some(csi::VolumeCapability {
        access_type: Some(csi::volume_capability::AccessType::Block(Default::default())),
        access_mode: None,
    });
    cases.push(("a block volume", block, "block"));
    for (ctx, want) in [
        (vec![], "\"uri\" is required"),
        (vec![("uri", "hf://acme/m/../../etc")], "uri"),
        (
            vec![("uri", "hf://acme/m"), ("incude", "*.json")],
            "unknown volume attribute \"incude\"",
        ),
        (vec![("uri", "hf://acme/m"), ("warm", "maybe")], "warm"),
        (vec![("uri", "hf://acme/m"), ("include", "a[")], "include"),
    ] {
        cases.push(("bad attributes", publish_req("v1", &target, &ctx), want));
    }
    for (what, req, want) in cases {
        let e = c.publish(req).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
        assert!(e.message().contains(want), "{what}: {}", e.message());
    }
    assert!(!target.exists(), "nothing was made for a bad request");
    // A repo that does not exist is NOT_FOUND.
    let e = c
        .publish(publish_req("v1", &target, &[("uri", "hf://acme/none")]))
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    for (id, path, want) in [("", "/x", "volume_id"), ("v1", "", "target_path")] {
        let e = c.unpublish(id, path).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains(want));
    }
}

/// Publish, read every file, publish again (idempotent), publish other attributes at the
/// same target (ALREADY_EXISTS), restart the daemon and read again, unpublish twice; and
/// csi-sanity's "should remove target path", reproduced without a controller.
#[test]
#[ignore = "needs root (a mount, another user or a tmpfs): tests/run runs it"]
fn a_published_volume_reads_the_origins_bytes_survives_a_restart_and_goes_away() {
    let env = Env::new();
    let mut files = locus_testorigin::model::generate_model(3 << 20, 2, 7);
    files.push((
        "original/consolidated.pth".into(),
        bytes::Bytes::from(vec![7u8; 5000]),
    ));
    let sha = env.sim.commit("model", "acme/m", files.clone());
    let (mut d, sock) = start(&env, "n");
    let mut c = Csi::connect(&sock);
    let pod = env.path("pods/uid-1/volumes");
    std::fs::create_dir_all(&pod).unwrap();
    let target = pod.join("model");
    let ctx = [
        ("uri", "hf://acme/m"),
        ("exclude", "original/**"),
        ("warm", "true"),
        ("csi.storage.k8s.io/pod.name", "llama-0"),
        ("csi.storage.k8s.io/ephemeral", "true"),
    ];
    c.publish(publish_req("csi-abc", &target, &ctx)).unwrap();
    let _guard = Unmount(vec![target.clone(), pod.join("target")]);
    assert!(mounted(&target));
    // The warm filled the cache before the publish answered: reading costs the origin nothing.
    let before = env.sim.stats().data_bytes;
    let want: Vec<(String, Vec<u8>)> = {
        let mut v: Vec<_> = files
            .iter()
            .filter(|(p, _)| !p.starts_with("original/"))
            .map(|(p, b)| (p.clone(), b.to_vec()))
            .collect();
        v.sort();
        v
    };
    let got = files_under(&target);
    let names = |v: &[(String, Vec<u8>)]| v.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
    assert_eq!(names(&got), names(&want), "exclude hides original/**");
    assert!(got == want, "every byte is the origin's");
    assert_eq!(
        env.sim.stats().data_bytes,
        before,
        "warm: true fetched it all before"
    );
    // Idempotent: the same request again is OK and changes nothing.
    c.publish(publish_req("csi-abc", &target, &ctx)).unwrap();
    // Other attributes at the same target: ALREADY_EXISTS.
    let e = c
        .publish(publish_req("csi-abc", &target, &[("uri", "hf://acme/m")]))
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    // The branch moves on; the volume stays on the commit it was published at.
    env.sim.commit("model", "acme/m", random_files(1, 100, 9));
    // A second volume, not warmed: its file's chunks come from the daemon when read.
    let big = locus_testorigin::model::random_bytes(5, 3 << 20);
    env.sim
        .commit("model", "acme/big", vec![("w.bin".into(), big.clone())]);
    let t3 = pod.join("big");
    c.publish(publish_req("csi-big", &t3, &[("uri", "hf://acme/big")]))
        .unwrap();
    let _guard3 = Unmount(vec![t3.clone()]);
    // The daemon goes away (an upgrade): a read of the cold file waits for it, and goes on
    // once it is back; the warmed volume reads the same bytes, at the commit it was published
    // at; the plugin knows its volumes again.
    d.signal(nix::sys::signal::Signal::SIGKILL);
    let path = t3.join("w.bin");
    let reader = std::thread::spawn(move || std::fs::read(path));
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(
        !reader.is_finished(),
        "the read waits while the daemon is down"
    );
    d.restart();
    let read = reader
        .join()
        .unwrap()
        .expect("the read goes on once the daemon is back");
    assert!(read == big, "and reads the origin's bytes");
    let got = files_under(&target);
    assert!(got == want, "after a restart, the same bytes at {sha}");
    let mut c = Csi::connect(&sock);
    c.publish(publish_req("csi-abc", &target, &ctx)).unwrap();
    let e = c
        .publish(publish_req("csi-abc", &target, &[("uri", "hf://acme/m")]))
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::AlreadyExists,
        "the restarted plugin knows the volume: {e:?}"
    );
    c.unpublish("csi-big", t3.to_str().unwrap()).unwrap();
    // The volume's mount process dies: publishing again mounts it again (at its commit).
    kill_mount_process(&target);
    c.publish(publish_req("csi-abc", &target, &ctx)).unwrap();
    assert!(
        files_under(&target) == want,
        "mounted again, the same bytes"
    );
    // Unpublish: unmounted and the folder removed; again: still OK.
    c.unpublish("csi-abc", target.to_str().unwrap()).unwrap();
    assert!(!mounted(&target) && !target.exists());
    c.unpublish("csi-abc", target.to_str().unwrap()).unwrap();

    // csi-sanity "should remove target path": a SINGLE_NODE_WRITER capability, readonly
    // false (locus mounts read-only whatever is asked), the path exists after publish and not
    // after unpublish.
    let t2 = pod.join("target");
    let mut req = publish_req("v-sanity", &t2, &[("uri", "hf://acme/m")]);
    req.volume_capability = mount_cap(csi::volume_capability::access_mode::Mode::SingleNodeWriter);
    req.readonly = false;
    c.publish(req).unwrap();
    assert!(t2.is_dir() && mounted(&t2));
    assert!(std::fs::write(t2.join("new"), b"x").is_err(), "read-only");
    c.unpublish("v-sanity", t2.to_str().unwrap()).unwrap();
    assert!(!t2.exists());
    let e = c.unpublish("v-sanity", t2.to_str().unwrap());
    assert!(e.is_ok() || e.unwrap_err().code() == Code::NotFound);
}

/// The PIDs of the mount processes serving `target`.
fn mount_processes(target: &Path) -> Vec<String> {
    let pids = std::process::Command::new("pgrep")
        .args(["-f", &format!("{} --foreground", target.display())])
        .output()
        .unwrap();
    let pids: Vec<String> = String::from_utf8_lossy(&pids.stdout)
        .split_whitespace()
        .map(String::from)
        .collect();
    assert!(
        !pids.is_empty(),
        "the volume has a mount process of its own"
    );
    pids
}

/// Kills the mount process of the volume at `target` (each has its own), and waits until its
/// mount answers ENOTCONN.
fn kill_mount_process(target: &Path) {
    for pid in mount_processes(target) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid.parse().unwrap()),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(std::fs::read_dir(target).is_err(), "its mount is dead");
}

/// Unmounts what a test left mounted, should it fail half way.
struct Unmount(Vec<PathBuf>);

impl Drop for Unmount {
    fn drop(&mut self) {
        for p in &self.0 {
            if mounted(p) {
                let _ = std::process::Command::new(LOCUS)
                    .arg("unmount")
                    .arg(p)
                    .output();
            }
        }
    }
}

/// A daemon in a PID namespace of its own, as in a container: when it dies, every process it
/// started dies with it.
fn contained_daemon(env: &Env, csock: &Path, msock: &Path) -> std::process::Child {
    let d = env.path("n");
    std::fs::create_dir_all(&d).unwrap();
    let log = d.join("daemon.log");
    let before = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .matches(" ready")
        .count();
    let child = std::process::Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--kill-child",
            LOCUS,
            "daemon",
            "--cache-dir",
        ])
        .arg(d.join("cache"))
        .arg("--socket")
        .arg(d.join("locus.sock"))
        .arg("--csi-socket")
        .arg(csock)
        .arg("--csi-mounter")
        .arg(msock)
        .env("HF_ENDPOINT", env.sim.url())
        .env("HF_TOKEN_PATH", d.join("no-token"))
        .env_remove("HF_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap(),
        )
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::read_to_string(&log)
        .unwrap_or_default()
        .matches(" ready")
        .count()
        == before
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child
}

/// With `--csi-mounter`, a volume's mount process is the mounter's child: the daemon's whole
/// "container" (a PID namespace) dies, reads of the volume wait, and go on right once a new
/// daemon is up; the mounter refuses targets outside kubelet's folder.
#[test]
#[ignore = "needs root (a mount, another user or a tmpfs): tests/run runs it"]
fn volumes_mounted_by_a_mounter_outlive_the_daemons_container() {
    let env = Env::new();
    let big = locus_testorigin::model::random_bytes(8, 3 << 20);
    env.sim
        .commit("model", "acme/big", vec![("w.bin".into(), big.clone())]);
    let pods = env.path("pods");
    std::fs::create_dir_all(&pods).unwrap();
    let msock = env.path("mounter/m.sock");
    let csock = env.path("csi/csi.sock");
    let mut mounter = std::process::Command::new(LOCUS)
        .args(["mounter", "--listen"])
        .arg(&msock)
        .arg("--targets-under")
        .arg(&pods)
        .arg("--log-dir")
        .arg(env.path("mounter-logs"))
        .arg("--socket")
        .arg(env.path("n").join("locus.sock"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !msock.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the mounter did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut d = contained_daemon(&env, &csock, &msock);
    let mut c = Csi::connect(&csock);
    let target = pods.join("uid-9/vol");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    c.publish(publish_req(
        "v9",
        &target,
        &[("uri", "hf://acme/big"), ("noOpen", "true")],
    ))
    .unwrap();
    let _guard = Unmount(vec![target.clone()]);
    assert!(mounted(&target));
    // The volume's attributes reach its mount process through the mounter.
    for pid in mount_processes(&target) {
        let args = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        assert!(
            args.split(|b| *b == 0).any(|a| a == b"--no-open"),
            "noOpen: {}",
            String::from_utf8_lossy(&args)
        );
    }
    // Outside kubelet's folder: refused by the mounter.
    let e = c
        .publish(publish_req(
            "v10",
            &env.path("elsewhere/vol"),
            &[("uri", "hf://acme/big")],
        ))
        .unwrap_err();
    assert!(e.message().contains("not under"), "{e:?}");
    // The daemon's container dies (its PID namespace, every process in it).
    let _ = d.kill();
    let _ = d.wait();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let path = target.join("w.bin");
    let reader = std::thread::spawn(move || std::fs::read(path));
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(!reader.is_finished(), "the read waits for a daemon");
    let mut d = contained_daemon(&env, &csock, &msock);
    let got = reader.join().unwrap().expect("the read goes on");
    assert!(got == big, "the origin's bytes");
    let mut c = Csi::connect(&csock);
    c.unpublish("v9", target.to_str().unwrap()).unwrap();
    assert!(!mounted(&target));
    let _ = d.kill();
    let _ = d.wait();
    let _ = mounter.kill();
    let _ = mounter.wait();
}

/// A second call on a target while one works on it is ABORTED (kubelet asks again); another
/// target is not held up; once the first call ends, the same request is OK.
#[test]
#[ignore = "needs root (a mount, another user or a tmpfs): tests/run runs it"]
fn a_call_on_a_busy_target_is_aborted_and_other_targets_go_on() {
    let env = Env::new();
    let big = locus_testorigin::model::random_bytes(21, 1 << 20);
    env.sim
        .commit("model", "acme/slow", vec![("w.bin".into(), big.clone())]);
    env.sim.commit("model", "acme/m", random_files(1, 1000, 3));
    let (_d, sock) = start(&env, "n");
    let pod = env.path("pods/uid-2");
    std::fs::create_dir_all(&pod).unwrap();
    let (busy, other) = (pod.join("slow"), pod.join("other"));
    let _guard = Unmount(vec![busy.clone(), other.clone()]);
    // 32 KiB/s a response: each 256 KiB chunk takes 8 s, so the warm holds the first call
    // while the checks below run.
    env.sim.set_faults(locus_testorigin::Faults {
        throttle_bps: 32 << 10,
        ..Default::default()
    });
    let ctx = [
        ("uri", "hf://acme/slow"),
        ("warm", "true"),
        ("warmTimeout", "60"),
    ];
    let first = {
        let (sock, busy) = (sock.clone(), busy.clone());
        std::thread::spawn(move || Csi::connect(&sock).publish(publish_req("v-slow", &busy, &ctx)))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while env.sim.stats().data_requests() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first publish never warmed"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut c = Csi::connect(&sock);
    let e = c.publish(publish_req("v-slow", &busy, &ctx)).unwrap_err();
    assert_eq!(e.code(), Code::Aborted, "{e:?}");
    let e = c.unpublish("v-slow", busy.to_str().unwrap()).unwrap_err();
    assert_eq!(e.code(), Code::Aborted, "{e:?}");
    // Another target is not held up.
    c.publish(publish_req("v-other", &other, &[("uri", "hf://acme/m")]))
        .unwrap();
    assert!(mounted(&other));
    assert!(
        !first.is_finished(),
        "the checks above ran while the first call worked"
    );
    env.sim.set_faults(locus_testorigin::Faults::default());
    first.join().unwrap().expect("the first call ends well");
    assert!(files_under(&busy) == vec![("w.bin".to_string(), big.to_vec())]);
    // Its claim went with it: the same request is OK now.
    c.publish(publish_req("v-slow", &busy, &ctx)).unwrap();
    c.unpublish("v-slow", busy.to_str().unwrap()).unwrap();
    c.unpublish("v-other", other.to_str().unwrap()).unwrap();
}

/// `warmTimeout` bounds how long a publish waits for its warm; the warm goes on after it.
#[test]
#[ignore = "needs root (a mount, another user or a tmpfs): tests/run runs it"]
fn a_warm_longer_than_warm_timeout_answers_the_publish_and_goes_on() {
    let env = Env::new();
    let size = 1usize << 20;
    let big = locus_testorigin::model::random_bytes(22, size);
    env.sim
        .commit("model", "acme/slow", vec![("w.bin".into(), big.clone())]);
    let (_d, sock) = start(&env, "n");
    let mut c = Csi::connect(&sock);
    let target = env.path("pods/uid-3/slow");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    let _guard = Unmount(vec![target.clone()]);
    // The warm needs 4 s at least (a 256 KiB chunk at 64 KiB/s); warmTimeout is 1 s.
    env.sim.set_faults(locus_testorigin::Faults {
        throttle_bps: 64 << 10,
        ..Default::default()
    });
    let ctx = [
        ("uri", "hf://acme/slow"),
        ("warm", "true"),
        ("warmTimeout", "1"),
    ];
    c.publish(publish_req("v-slow", &target, &ctx)).unwrap();
    let sent = env.sim.stats().data_bytes;
    assert!(
        sent < size as u64,
        "the publish waited for the whole warm ({sent} B sent)"
    );
    assert!(mounted(&target));
    // The warm goes on in the background (nothing reads) and fills the cache.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while env.sim.stats().data_bytes < size as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "the warm stopped at warmTimeout"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    env.sim.set_faults(locus_testorigin::Faults::default());
    let before = env.sim.stats().data_bytes;
    assert!(files_under(&target) == vec![("w.bin".to_string(), big.to_vec())]);
    assert_eq!(
        env.sim.stats().data_bytes,
        before,
        "read from the warmed cache"
    );
}

/// A restarted plugin mounts again, from its state file and without a call, a volume whose
/// mount process died while the daemon was down.
#[test]
#[ignore = "needs root (a mount, another user or a tmpfs): tests/run runs it"]
fn a_restarted_plugin_mounts_again_a_volume_whose_process_died() {
    let env = Env::new();
    let files = random_files(2, 100_000, 31);
    env.sim.commit("model", "acme/m", files.clone());
    let (mut d, sock) = start(&env, "n");
    let mut c = Csi::connect(&sock);
    let target = env.path("pods/uid-4/vol");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    c.publish(publish_req(
        "v4",
        &target,
        &[("uri", "hf://acme/m"), ("noOpen", "false")],
    ))
    .unwrap();
    let _guard = Unmount(vec![target.clone()]);
    let mut want: Vec<(String, Vec<u8>)> =
        files.iter().map(|(p, b)| (p.clone(), b.to_vec())).collect();
    want.sort();
    assert!(files_under(&target) == want);
    // The daemon goes down, and the volume's mount process dies meanwhile.
    d.signal(nix::sys::signal::Signal::SIGKILL);
    kill_mount_process(&target);
    // The state file as a version before auto mounts wrote it: `noOpen: "false"` (then the
    // default) and no `open`.
    let state = d.cache.join("csi-volumes.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    let vol = v
        .as_object_mut()
        .and_then(|m| m.values_mut().next())
        .and_then(|v| v.as_object_mut())
        .unwrap();
    assert_eq!(vol.remove("open"), Some(serde_json::Value::Bool(true)));
    std::fs::write(&state, serde_json::to_vec(&v).unwrap()).unwrap();
    // `restart` returns once the daemon is ready, after the plugin's start.
    d.restart();
    assert!(
        files_under(&target) == want,
        "mounted again from the state file, with no call"
    );
    // Mounted as it was then: with opens, not left to settle.
    for pid in mount_processes(&target) {
        let args = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        assert!(
            args.split(|b| *b == 0).any(|a| a == b"--open"),
            "noOpen: \"false\": {}",
            String::from_utf8_lossy(&args)
        );
    }
}
