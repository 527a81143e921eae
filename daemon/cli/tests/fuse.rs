//! Real FUSE mounts (`/dev/fuse`, as root) over a real daemon; every read is compared with the
//! origin's bytes.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use locus_testorigin::{FailRule, Faults};

struct Mount {
    dir: PathBuf,
}

impl Mount {
    fn new(d: &Daemon, env: &Env, uri: &str, name: &str) -> Mount {
        Self::with_args(d, env, uri, name, &[])
    }

    fn with_args(d: &Daemon, env: &Env, uri: &str, name: &str, args: &[&str]) -> Mount {
        let dir = env.path(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut all = vec!["mount", uri, dir.to_str().unwrap()];
        all.extend_from_slice(args);
        d.ok(&all);
        Mount { dir }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new(LOCUS)
            .arg("unmount")
            .arg(&self.dir)
            .output();
    }
}

fn mounted(p: &Path) -> bool {
    let c = std::fs::canonicalize(p).unwrap();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == c.to_str())
}

#[test]
#[ignore = "needs root (a mount, another user or a tmpfs): tests/run runs it"]
fn a_mount_shows_the_repo_and_reads_the_origins_bytes() {
    let env = Env::new();
    let files = locus_testorigin::model::generate_model(6 << 20, 3, 4);
    env.sim.commit("model", "acme/m", files.clone());
    let d = env.daemon("n", &["--chunk-size", "256KiB"], &[]);
    let m = Mount::new(&d, &env, "hf://acme/m", "mnt");
    let mut names: Vec<String> = std::fs::read_dir(&m.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = files.iter().map(|(p, _)| p.clone()).collect();
    want.sort();
    assert_eq!(names, want);
    for (p, b) in &files {
        let path = m.dir.join(p);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), b.len() as u64);
        assert_eq!(std::fs::read(&path).unwrap(), b.to_vec(), "{p}");
        // Real programs too.
        let out = std::process::Command::new("cat")
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, b.to_vec(), "cat {p}");
        let out = std::process::Command::new("sha256sum")
            .arg(&path)
            .output()
            .unwrap();
        let sum = String::from_utf8_lossy(&out.stdout);
        let want = std::process::Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(b)?;
                c.wait_with_output()
            })
            .unwrap();
        assert_eq!(
            sum.split_whitespace().next(),
            String::from_utf8_lossy(&want.stdout)
                .split_whitespace()
                .next()
        );
    }
    // mmap works and sees the same bytes.
    let (p, b) = files
        .iter()
        .find(|(p, _)| p.ends_with(".safetensors"))
        .unwrap();
    let f = std::fs::File::open(m.dir.join(p)).unwrap();
    // SAFETY: a read-only mapping of a file on a read-only mount.
    let map = unsafe { memmap2::Mmap::map(&f) }.unwrap();
    assert_eq!(&map[..], &b[..]);
}

#[test]
#[ignore = "needs root (a mount, another user or a tmpfs): tests/run runs it"]
fn a_folder_that_is_not_empty_is_mounted_over_only_when_asked() {
    let env = Env::new();
    env.sim.commit("model", "acme/m", random_files(1, 1000, 1));
    let d = env.daemon("n", &[], &[]);
    let dir = env.path("full");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("mine.txt"), b"x").unwrap();
    let out = d.locus(&["mount", "hf://acme/m", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--allow-non-empty"),
        "{}",
        stderr(&out)
    );
    assert!(!mounted(&dir));
    let m = Mount::with_args(&d, &env, "hf://acme/m", "full", &["--allow-non-empty"]);
    assert!(mounted(&m.dir));
    assert!(m.dir.join("weights/shard-0.bin").exists());
    drop(m);
    assert_eq!(
        std::fs::read(dir.join("mine.txt")).unwrap(),
        b"x",
        "there again"
    );
}

#[test]
#[ignore = "needs root (a mount, another user or a tmpfs): tests/run runs it"]
fn every_write_fails_with_erofs() {
    let env = Env::new();
    env.sim.commit("model", "acme/m", random_files(1, 1000, 1));
    let d = env.daemon("n", &[], &[]);
    let m = Mount::new(&d, &env, "hf://acme/m", "mnt");
    let f = m.dir.join("weights/shard-0.bin");
    let erofs = |r: std::io::Result<()>| {
        let e = r.expect_err("must fail");
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    };
    erofs(std::fs::OpenOptions::new().write(true).open(&f).map(|_| ()));
    erofs(std::fs::write(m.dir.join("new"), b"x"));
    erofs(std::fs::create_dir(m.dir.join("d")));
    erofs(std::fs::rename(&f, m.dir.join("x")));
    erofs(std::fs::remove_file(&f));
    erofs(std::fs::set_permissions(
        &f,
        std::fs::Permissions::from_mode(0o777),
    ));
    erofs(
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&f)
            .map(|_| ()),
    );
    erofs(std::os::unix::fs::symlink("a", m.dir.join("link")));
}

#[test]
#[ignore = "needs root (a mount, another user or a tmpfs): tests/run runs it"]
fn an_uncached_file_is_readable_at_once_and_fetched_as_the_reader_goes() {
    let env = Env::new();
    let files = random_files(1, 8 << 20, 7);
    env.sim.commit("model", "acme/big", files.clone());
    env.sim.set_faults(Faults {
        throttle_bps: 4_000_000,
        ..Faults::default()
    });
    let d = env.daemon("n", &["--chunk-size", "256KiB"], &[]);
    let m = Mount::new(&d, &env, "hf://acme/big", "mnt");
    let path = m.dir.join(&files[0].0);
    use std::io::Read;
    let mut f = std::fs::File::open(&path).unwrap();
    let mut first = vec![0u8; 4096];
    f.read_exact(&mut first).unwrap();
    assert_eq!(first, files[0].1[..4096].to_vec());
    let fetched = env.sim.stats().data_bytes;
    assert!(
        fetched < 8 << 20,
        "the first bytes came before the whole file ({fetched} bytes fetched)"
    );
    let mut rest = Vec::new();
    f.read_to_end(&mut rest).unwrap();
    first.extend(rest);
    assert_eq!(first, files[0].1.to_vec());
    assert_eq!(
        env.sim.stats().data_bytes,
        8 << 20,
        "each byte fetched once"
    );
}

#[test]
#[ignore = "needs root (a mount, another user or a tmpfs): tests/run runs it"]
fn origin_failures_and_corrupt_chunks_never_give_wrong_bytes() {
    let env = Env::new();
    let files = random_files(2, 1 << 20, 5);
    env.sim.commit("model", "acme/m", files.clone());
    let d = env.daemon("n", &["--chunk-size", "256KiB"], &[]);
    // A cached file whose chunk rots on disk: read through a new mount, it is fetched again.
    d.ok(&["warm", &format!("hf://acme/m/{}", files[0].0)]);
    for p in data_files(&d.cache) {
        let mut b = std::fs::read(&p).unwrap();
        if b.len() > 300_000 {
            b[300_000] ^= 0xff;
            std::fs::write(&p, b).unwrap();
        }
    }
    let m = Mount::new(&d, &env, "hf://acme/m", "mnt");
    assert_eq!(
        std::fs::read(m.dir.join(&files[0].0)).unwrap(),
        files[0].1.to_vec()
    );
    // An origin that refuses: EIO, and the log names the file.
    env.sim.set_faults(Faults {
        fail: vec![FailRule {
            kind: "cdn".into(),
            status: 403,
            count: 1000,
            retry_after: None,
        }],
        ..Faults::default()
    });
    let e = std::fs::read(m.dir.join(&files[1].0)).expect_err("must fail");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
}

#[test]
#[ignore = "needs root (a mount, another user or a tmpfs): tests/run runs it"]
fn a_parallel_walk_and_many_readers_at_once() {
    let env = Env::new();
    // 2,000 files in 7 × 3 folders (about 95 per folder: several READDIRPLUS replies each).
    let files: Vec<_> = (0..2000)
        .map(|i| {
            (
                format!("d{}/e{}/f{i}.bin", i % 7, i % 3),
                locus_testorigin::model::random_bytes(i, 1000 + (i as usize * 37) % 8_000),
            )
        })
        .collect();
    let by_path: std::collections::HashMap<&str, &bytes::Bytes> =
        files.iter().map(|(p, b)| (p.as_str(), b)).collect();
    env.sim.commit("dataset", "acme/many", files.clone());
    let d = env.daemon("n", &[], &[]);
    d.ok(&["warm", "hf://datasets/acme/many"]);
    let m = Mount::new(&d, &env, "hf://datasets/acme/many", "mnt");
    let root = m.dir.clone();
    let found = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..8 {
            let root = &root;
            let found = &found;
            let by_path = &by_path;
            s.spawn(move || {
                for d1 in (0..7).filter(|d| d % 8 == t || t >= 7) {
                    let dir = root.join(format!("d{d1}"));
                    for e in std::fs::read_dir(&dir).unwrap() {
                        for f in std::fs::read_dir(e.unwrap().path()).unwrap() {
                            let p = f.unwrap().path();
                            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                            let want = by_path[rel.as_str()];
                            let meta = std::fs::metadata(&p).unwrap();
                            assert_eq!(meta.len(), want.len() as u64, "{rel}");
                            assert_eq!(std::fs::read(&p).unwrap(), want.to_vec(), "{rel}");
                            found.lock().unwrap().push(rel);
                        }
                    }
                }
            });
        }
    });
    let mut found = found.into_inner().unwrap();
    found.sort();
    found.dedup();
    assert_eq!(found.len(), files.len());
    // 32 threads reading the same files at once.
    std::thread::scope(|s| {
        for t in 0..32 {
            let root = &root;
            let files = &files;
            s.spawn(move || {
                for (p, b) in files.iter().skip(t).step_by(5).take(20) {
                    assert_eq!(std::fs::read(root.join(p)).unwrap(), b.to_vec());
                }
            });
        }
    });
}

/// The pid of the process serving the mount at `dir`.
fn mount_pid(uri: &str, dir: &Path) -> nix::unistd::Pid {
    let out = std::process::Command::new("pgrep")
        .args(["-f", &format!("mount {uri} {}", dir.display())])
        .output()
        .unwrap();
    let pid: i32 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::unistd::Pid::from_raw(pid)
}

#[test]
#[ignore = "needs root (a mount, another user or a tmpfs): tests/run runs it"]
fn a_read_waiting_on_the_origin_does_not_hold_up_other_files() {
    let env = Env::new();
    let mut small = random_files(4, 50_000, 31);
    let late = small.pop().unwrap();
    let big = (
        "big/shard.bin".to_string(),
        locus_testorigin::model::random_bytes(32, 4 << 20),
    );
    let mut files = small.clone();
    files.push(big.clone());
    files.push(late.clone());
    env.sim.commit("model", "acme/m", files);
    let d = env.daemon("n", &[], &[]);
    for (p, _) in small.iter().chain([&late]) {
        d.ok(&["warm", &format!("hf://acme/m/{p}")]);
    }
    let addr = format!("127.0.0.1:{}", free_port());
    let m = Mount::with_args(
        &d,
        &env,
        "hf://acme/m",
        "mnt",
        &["--metrics", &addr, "--threads", "1"],
    );
    // From now on every origin request takes 5 s.
    env.sim.set_faults(Faults {
        delay_ms: 5000,
        ..Faults::default()
    });
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let slow = s.spawn(|| {
            let got = std::fs::read(m.dir.join(&big.0)).unwrap();
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            got
        });
        std::thread::sleep(Duration::from_millis(500));
        // Looked up before anything is opened: each is opened ahead (below).
        for (p, _) in &small {
            assert!(m.dir.join(p).is_file());
        }
        // One thread reads the mount's requests; the uncached read waits on the pool.
        for (p, b) in &small {
            assert_eq!(std::fs::read(m.dir.join(p)).unwrap(), b.to_vec(), "{p}");
            assert_eq!(
                std::fs::metadata(m.dir.join(p)).unwrap().len(),
                b.len() as u64
            );
        }
        // Those opens read nothing from the disk (the warm just wrote the files): a file looked
        // up now is not opened ahead.
        assert_eq!(std::fs::read(m.dir.join(&late.0)).unwrap(), late.1.to_vec());
        assert!(
            !done.load(std::sync::atomic::Ordering::SeqCst),
            "the cached files were read only after the uncached one"
        );
        assert_eq!(slow.join().unwrap(), big.1.to_vec());
    });
    // The mount's metrics say where each read was answered.
    let text = reqwest::blocking::get(format!("http://{addr}/metrics"))
        .unwrap()
        .text()
        .unwrap();
    let value = |prefix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(value(r#"locus_fuse_requests_total{op="read",on="reader"}"#) >= small.len() as f64);
    assert!(
        value(r#"locus_fuse_requests_total{op="read",on="pool"}"#) >= 1.0,
        "{text}"
    );
    let total: usize = small.iter().map(|(_, b)| b.len()).sum::<usize>() + big.1.len();
    assert!(
        value("locus_fuse_read_bytes_total") >= total as f64,
        "{text}"
    );
    assert!(
        text.contains("locus_fuse_passthrough_opens_total"),
        "{text}"
    );
    // Each small file the node held whole when listed was opened ahead when the kernel first
    // looked it up, before the first open (by a helper, which may finish after the read); the
    // big one, not cached, was not.
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while metric(&addr, "locus_fuse_opened_ahead_total", "") < small.len() as f64
        && std::time::Instant::now() < until
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let ahead = metric(&addr, "locus_fuse_opened_ahead_total", "");
    assert_eq!(ahead, small.len() as f64, "{text}");
}

#[test]
#[ignore = "needs root (a mount, another user or a tmpfs): tests/run runs it"]
fn a_daemon_restart_or_a_dead_mount_process_is_recoverable() {
    let env = Env::new();
    let files = random_files(2, 600_000, 3);
    env.sim.commit("model", "acme/m", files.clone());
    let mut d = env.daemon("n", &["--chunk-size", "256KiB"], &[]);
    let m = Mount::new(&d, &env, "hf://acme/m", "mnt");
    assert_eq!(
        std::fs::read(m.dir.join(&files[0].0)).unwrap(),
        files[0].1.to_vec()
    );
    d.restart();
    // The mount reconnects to the new daemon on the same socket.
    assert_eq!(
        std::fs::read(m.dir.join(&files[1].0)).unwrap(),
        files[1].1.to_vec()
    );
    // Kill the mount process: `locus unmount` still clears the mount point.
    nix::sys::signal::kill(
        mount_pid("hf://acme/m", &m.dir),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(mounted(&m.dir));
    let out = std::process::Command::new(LOCUS)
        .arg("unmount")
        .arg(&m.dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!mounted(&m.dir));
    let out = std::process::Command::new(LOCUS)
        .arg("unmount")
        .arg(&m.dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not mounted"));
}

#[test]
#[ignore = "needs root (a mount, another user or a tmpfs): tests/run runs it"]
fn the_daemons_namespace_view() {
    let env = Env::new();
    let model = random_files(2, 300_000, 21);
    let data = vec![(
        "train/part-0.jsonl".to_string(),
        bytes::Bytes::from_static(b"{\"x\":1}\n"),
    )];
    let rev = env.sim.commit("model", "acme/m", model.clone());
    env.sim.commit("dataset", "acme/ds", data.clone());
    let ns = env.path("ns");
    let mut d = env.daemon("n", &["--mount", ns.to_str().unwrap()], &[]);
    assert!(mounted(&ns));
    let hf = ns.join("hf");
    // Before anything is looked up, each level lists what the node caches.
    d.ok(&["warm", "hf://acme/m", "hf://datasets/acme/ds"]);
    let names = |p: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&hf), ["acme", "datasets"]);
    assert_eq!(names(&hf.join("acme")), ["m"]);
    assert_eq!(names(&hf.join("datasets/acme")), ["ds"]);
    assert_eq!(names(&hf.join("acme/m")), ["weights"]);
    // NAME@main is NAME, as a link: `du` counts the repo once.
    let link = hf.join("acme/m@main");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("m"));
    assert_eq!(
        std::fs::read(link.join(&model[0].0)).unwrap(),
        model[0].1.to_vec()
    );
    let du = std::process::Command::new("du")
        .args(["-sb", hf.join("acme").to_str().unwrap()])
        .output()
        .unwrap();
    let counted: u64 = String::from_utf8_lossy(&du.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let size: u64 = model.iter().map(|(_, b)| b.len() as u64).sum();
    assert!(
        (size..size + 4096).contains(&counted),
        "du counted {counted} for a {size}-byte repo"
    );
    let e = std::fs::symlink_metadata(hf.join("acme/nope@main")).expect_err("no such repo");
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    assert_eq!(names(&hf.join("acme")), ["m", "m@main"]);
    assert_eq!(
        std::fs::read(hf.join("acme/m").join(&model[0].0)).unwrap(),
        model[0].1.to_vec()
    );
    assert_eq!(
        std::fs::read(hf.join(format!("acme/m@{rev}")).join(&model[1].0)).unwrap(),
        model[1].1.to_vec()
    );
    assert_eq!(
        std::fs::read(hf.join("datasets/acme/ds/train/part-0.jsonl")).unwrap(),
        data[0].1.to_vec()
    );
    let e = std::fs::metadata(hf.join("acme/nope")).expect_err("no such repo");
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    let e = std::fs::write(hf.join("acme/m/new"), b"x").expect_err("read-only");
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    // A clean stop unmounts; a daemon killed with SIGKILL leaves a mount the next start clears.
    assert!(d.signal(nix::sys::signal::Signal::SIGTERM).success());
    assert!(!mounted(&ns));
    d.restart();
    assert!(mounted(&ns));
    d.signal(nix::sys::signal::Signal::SIGKILL);
    d.restart();
    assert_eq!(
        std::fs::read(hf.join("acme/m").join(&model[0].0)).unwrap(),
        model[0].1.to_vec()
    );
    assert!(d.signal(nix::sys::signal::Signal::SIGTERM).success());
}

#[test]
#[ignore = "needs root (a mount, another user or a tmpfs): tests/run runs it"]
fn mounts_are_for_their_user_unless_other_users_are_allowed() {
    use std::os::unix::process::CommandExt;
    let env = Env::new();
    let model = random_files(1, 300_000, 23);
    env.sim.commit("model", "acme/m", model.clone());
    // Every folder above the mounts is open: only the mounts' own setting decides.
    std::fs::set_permissions(
        env.path(""),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let read_as_nobody = |p: &Path| {
        std::process::Command::new("cat")
            .arg(p)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    let denied = |p: &Path| {
        let o = read_as_nobody(p);
        assert!(!o.status.success(), "{} was readable", p.display());
        assert!(stderr(&o).contains("Permission denied"), "{}", stderr(&o));
        // The mount's own user reads it.
        assert_eq!(std::fs::read(p).unwrap(), model[0].1.to_vec());
    };
    let allowed = |p: &Path| {
        let o = read_as_nobody(p);
        assert!(o.status.success(), "{}: {}", p.display(), stderr(&o));
        assert_eq!(o.stdout, model[0].1.to_vec());
    };
    let ns = env.path("ns");
    let mut d = env.daemon("n", &["--mount", ns.to_str().unwrap()], &[]);
    denied(&ns.join("hf/acme/m").join(&model[0].0));
    let m = Mount::new(&d, &env, "hf://acme/m", "mnt");
    denied(&m.dir.join(&model[0].0));
    drop(m);
    // A clean stop, which unmounts the view (a killed daemon would leave it mounted).
    assert!(d.signal(nix::sys::signal::Signal::SIGTERM).success());
    let ns = env.path("ns2");
    let mut d = env.daemon(
        "n2",
        &["--mount", ns.to_str().unwrap(), "--mount-allow-other"],
        &[],
    );
    allowed(&ns.join("hf/acme/m").join(&model[0].0));
    let m = Mount::with_args(&d, &env, "hf://acme/m", "mnt2", &["--allow-other"]);
    allowed(&m.dir.join(&model[0].0));
    drop(m);
    assert!(d.signal(nix::sys::signal::Signal::SIGTERM).success());
    assert!(!mounted(&ns));
}

/// Open descriptors of process `pid` on files under `dir`.
fn fds_under(pid: nix::unistd::Pid, dir: &Path) -> usize {
    let dir = std::fs::canonicalize(dir).unwrap();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t.starts_with(&dir))
        .count()
}

/// Waits until `read` gives `want`, failing after 10 s with what it gives.
fn settles_at<T: PartialEq + std::fmt::Debug>(read: impl Fn() -> T, want: T, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = read();
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {got:?}, not {want:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the mount process `pid` holds `n` files under `dir` (the helpers that open
/// cache files ahead hold theirs for moments).
fn fds_settle_at(pid: nix::unistd::Pid, dir: &Path, n: usize, what: &str) {
    settles_at(
        || fds_under(pid, dir),
        n,
        &format!("{what}: cache files open"),
    );
}

/// Waits until metric `name` (samples whose labels contain `labels`, summed) is `want`: the
/// kernel sends a RELEASE after the close has returned.
fn metric_settles_at(addr: &str, name: &str, labels: &str, want: f64) {
    settles_at(
        || metric(addr, name, labels),
        want,
        &format!("{name}{{{labels}}}"),
    );
}

/// 40 files of about 10 KB under `small/` and `big.bin` of 3 MiB.
fn small_files_and_a_big_one() -> Vec<(String, bytes::Bytes)> {
    let mut files: Vec<(String, bytes::Bytes)> = (0..40)
        .map(|i| {
            (
                format!("small/{i}.bin"),
                locus_testorigin::model::random_bytes(i, 10_000 + i as usize),
            )
        })
        .collect();
    files.push((
        "big.bin".into(),
        locus_testorigin::model::random_bytes(99, 3 << 20),
    ));
    files
}

#[test]
#[ignore = "needs root (a mount, another user or a tmpfs): tests/run runs it"]
fn a_mount_holds_cache_files_only_while_they_are_open() {
    let env = Env::new();
    // Many small files (read through the mount, not passthrough) and a large one (passthrough).
    let files = small_files_and_a_big_one();
    env.sim.commit("model", "acme/many", files.clone());
    let d = env.daemon("n", &["--chunk-size", "256KiB"], &[]);
    d.ok(&["warm", "hf://acme/many"]);
    let m = Mount::new(&d, &env, "hf://acme/many", "mnt");
    let pid = mount_pid("hf://acme/many", &m.dir);
    let data = d.cache.join("data");
    for _ in 0..2 {
        for (p, b) in &files {
            assert_eq!(std::fs::read(m.dir.join(p)).unwrap(), b.to_vec(), "{p}");
        }
    }
    // Every file was read twice and closed: the mount holds none of their cache files (it
    // held one per file ever read), so an evicted one gives its space back.
    fds_settle_at(pid, &data, 0, "after every file was closed");
    // While a file is open its cache file is too, and it reads right after a reopen.
    let open = std::fs::File::open(m.dir.join("small/3.bin")).unwrap();
    // Out of the kernel's page cache, so that the read reaches the mount.
    nix::fcntl::posix_fadvise(
        &open,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )
    .unwrap();
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut &open, &mut got).unwrap();
    assert_eq!(got, files[3].1.to_vec());
    fds_settle_at(pid, &data, 1, "the open file's cache file");
    drop(open);
    for (p, b) in &files {
        assert_eq!(std::fs::read(m.dir.join(p)).unwrap(), b.to_vec(), "{p}");
    }
}

#[test]
#[ignore = "needs root (a mount, another user or a tmpfs): tests/run runs it"]
fn a_mount_without_opens_reads_the_origins_bytes_with_no_open_or_release_round_trips() {
    use std::io::Read;
    use std::os::unix::fs::FileExt;
    let env = Env::new();
    let files = small_files_and_a_big_one();
    // One more than the cache files such a mount holds for reads that stop short.
    let part: Vec<(String, bytes::Bytes)> = (0..locus_fuse::HELD_MAX as u64 + 1)
        .map(|i| {
            (
                format!("part/{i}.bin"),
                locus_testorigin::model::random_bytes(1000 + i, 8192 + i as usize),
            )
        })
        .collect();
    env.sim.commit(
        "model",
        "acme/many",
        files.iter().chain(&part).cloned().collect(),
    );
    let d = env.daemon("n", &["--chunk-size", "256KiB"], &[]);
    d.ok(&["warm", "hf://acme/many"]);
    let addr = format!("127.0.0.1:{}", free_port());
    let m = Mount::with_args(
        &d,
        &env,
        "hf://acme/many",
        "mnt",
        &["--no-open", "--metrics", &addr],
    );
    let pid = mount_pid("hf://acme/many", &m.dir);
    let data = d.cache.join("data");
    for _ in 0..2 {
        for (p, b) in &files {
            assert_eq!(std::fs::read(m.dir.join(p)).unwrap(), b.to_vec(), "{p}");
        }
    }
    let requests = |op: &str| metric(&addr, "locus_fuse_requests_total", &format!(r#"op="{op}""#));
    // The first open was answered ENOSYS; the kernel asked for no other open, and for no
    // release or flush at all.
    assert_eq!(requests("open"), 1.0, "opens asked of the mount");
    assert_eq!(requests("release"), 0.0);
    assert!(requests("flush") <= 1.0);
    assert!(
        requests("read") >= files.len() as f64,
        "reads come by inode"
    );
    assert_eq!(metric(&addr, "locus_fuse_passthrough_opens_total", ""), 0.0);
    // No close says when a cache file is done with: a read to a file's end closed it.
    fds_settle_at(pid, &data, 0, "after whole reads");
    // Reads that stop short hold their cache files, HELD_MAX at most.
    let first_page = |p: &str| {
        let f = std::fs::File::open(m.dir.join(p)).unwrap();
        // No read-ahead: the kernel asks for the first page only.
        nix::fcntl::posix_fadvise(&f, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_RANDOM)
            .unwrap();
        let mut page = vec![0u8; 4096];
        f.read_exact_at(&mut page, 0).unwrap();
        page
    };
    for (p, b) in &part[..2] {
        assert_eq!(first_page(p), b[..4096].to_vec(), "{p}");
    }
    fds_settle_at(pid, &data, 2, "two files read in part");
    for (p, b) in &part[2..] {
        assert_eq!(first_page(p), b[..4096].to_vec(), "{p}");
    }
    fds_settle_at(pid, &data, locus_fuse::HELD_MAX, "more files read in part");
    // Read to the end, each closes again, and the bytes are whole.
    for (p, b) in &part {
        let mut got = Vec::new();
        std::fs::File::open(m.dir.join(p))
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got, b.to_vec(), "{p}");
    }
    fds_settle_at(pid, &data, 0, "after whole reads");
    assert_eq!(requests("open"), 1.0, "opens asked of the mount");
}

#[test]
#[ignore = "needs root (a mount, another user or a tmpfs): tests/run runs it"]
fn a_mount_stops_answering_opens_once_it_has_opened_only_small_files() {
    use std::io::Read;
    use std::os::unix::fs::FileExt;
    let env = Env::new();
    let n = locus_fuse::AUTO_SMALL_OPENS as u64;
    let mut files: Vec<(String, bytes::Bytes)> = (0..n + 6)
        .map(|i| {
            (
                format!("small/{i}.bin"),
                locus_testorigin::model::random_bytes(2000 + i, 10_000 + i as usize),
            )
        })
        .collect();
    files.push((
        "big.bin".into(),
        locus_testorigin::model::random_bytes(99, 3 << 20),
    ));
    // As many as a mount without opens holds for reads that stop short.
    let part: Vec<(String, bytes::Bytes)> = (0..locus_fuse::HELD_MAX as u64)
        .map(|i| {
            (
                format!("part/{i}.bin"),
                locus_testorigin::model::random_bytes(1000 + i, 8192 + i as usize),
            )
        })
        .collect();
    env.sim.commit(
        "model",
        "acme/many",
        files.iter().chain(&part).cloned().collect(),
    );
    let d = env.daemon("n", &["--chunk-size", "256KiB"], &[]);
    d.ok(&["warm", "hf://acme/many"]);
    let data = d.cache.join("data");
    let (small, big) = files.split_at(n as usize + 6);
    let read_all = |dir: &Path, files: &[(String, bytes::Bytes)]| {
        for (p, b) in files {
            assert_eq!(std::fs::read(dir.join(p)).unwrap(), b.to_vec(), "{p}");
        }
    };

    // Small files only: the default mount answers opens until the 64th distinct one.
    let addr = format!("127.0.0.1:{}", free_port());
    let m = Mount::with_args(&d, &env, "hf://acme/many", "mnt", &["--metrics", &addr]);
    let pid = mount_pid("hf://acme/many", &m.dir);
    let requests = |op: &str| metric(&addr, "locus_fuse_requests_total", &format!(r#"op="{op}""#));
    let settled = |to: &str| {
        metric(
            &addr,
            "locus_fuse_opens_settled_total",
            &format!(r#"to="{to}""#),
        )
    };
    // The first file stays open, its first page read: open at the switch.
    let first = std::fs::File::open(m.dir.join(&small[0].0)).unwrap();
    nix::fcntl::posix_fadvise(
        &first,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_RANDOM,
    )
    .unwrap();
    let mut page = vec![0u8; 4096];
    first.read_exact_at(&mut page, 0).unwrap();
    assert!(page[..] == small[0].1[..4096]);
    // Opened again and again: one file counted once.
    for _ in 0..3 {
        read_all(&m.dir, &small[1..2]);
    }
    read_all(&m.dir, &small[1..n as usize - 1]);
    assert_eq!(settled("none"), 0.0, "{} small files opened", n - 1);
    assert_eq!(requests("open"), (n + 2) as f64);
    // The 64th: answered ENOSYS, and the kernel asks for no open or release from then on.
    read_all(&m.dir, &small[n as usize - 1..]);
    read_all(&m.dir, big);
    read_all(&m.dir, &small[1..]);
    assert_eq!(settled("none"), 1.0);
    assert_eq!(settled("always"), 0.0);
    assert_eq!(requests("open"), (n + 3) as f64, "opens asked of the mount");
    // Releases of the whole reads before the switch (the first file is still open).
    let released = (n + 1) as f64;
    metric_settles_at(
        &addr,
        "locus_fuse_requests_total",
        r#"op="release""#,
        released,
    );
    assert_eq!(metric(&addr, "locus_fuse_passthrough_opens_total", ""), 0.0);
    // The file open at the switch: its cache file is held (no RELEASE will say when it is
    // done with), the first to go once reads that stop short hold more.
    fds_settle_at(pid, &data, 1, "the file open at the switch");
    for (p, b) in &part {
        let f = std::fs::File::open(m.dir.join(p)).unwrap();
        nix::fcntl::posix_fadvise(&f, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_RANDOM)
            .unwrap();
        f.read_exact_at(&mut page, 0).unwrap();
        assert!(page[..] == b[..4096], "{p}");
    }
    fds_settle_at(pid, &data, locus_fuse::HELD_MAX, "held at most");
    // Reads through its handle still answer; one that reaches the end closes it again.
    let mut rest = vec![0u8; small[0].1.len() - 4096];
    first.read_exact_at(&mut rest, 4096).unwrap();
    assert!(rest[..] == small[0].1[4096..]);
    fds_settle_at(
        pid,
        &data,
        locus_fuse::HELD_MAX,
        "after its read to the end",
    );
    drop(first);
    let mut got = Vec::new();
    std::fs::File::open(m.dir.join(&small[0].0))
        .unwrap()
        .read_to_end(&mut got)
        .unwrap();
    assert!(got[..] == small[0].1[..]);
    std::thread::sleep(Duration::from_millis(200));
    // The handle open at the switch may still see its RELEASE (kernels differ: some decide
    // at open, some at close); no other comes.
    let after = requests("release");
    assert!(
        after == released || after == released + 1.0,
        "RELEASEs after the switch: {after}, {released} before"
    );
    assert_eq!(requests("open"), (n + 3) as f64);
    drop(m);

    // A large file opened first: opens stay (where the kernel reads it by passthrough).
    let addr = format!("127.0.0.1:{}", free_port());
    let m = Mount::with_args(&d, &env, "hf://acme/many", "mnt2", &["--metrics", &addr]);
    read_all(&m.dir, big);
    let passthrough = metric(&addr, "locus_fuse_passthrough_opens_total", "") > 0.0;
    read_all(&m.dir, small);
    read_all(&m.dir, small);
    let settled = |to: &str| {
        metric(
            &addr,
            "locus_fuse_opens_settled_total",
            &format!(r#"to="{to}""#),
        )
    };
    let opens = metric(&addr, "locus_fuse_requests_total", r#"op="open""#);
    if passthrough {
        assert_eq!((settled("always"), settled("none")), (1.0, 0.0));
        assert_eq!(opens, (2 * small.len() + 1) as f64, "every open asked");
    } else {
        // No passthrough here: the large file read through the mount settles nothing.
        assert_eq!((settled("always"), settled("none")), (0.0, 1.0));
        assert_eq!(opens, (n + 1) as f64);
    }

    // `--open`: every open reaches the mount, whatever is read.
    drop(m);
    let addr = format!("127.0.0.1:{}", free_port());
    let m = Mount::with_args(
        &d,
        &env,
        "hf://acme/many",
        "mnt3",
        &["--open", "--metrics", &addr],
    );
    read_all(&m.dir, small);
    assert_eq!(
        metric(&addr, "locus_fuse_requests_total", r#"op="open""#),
        small.len() as f64
    );
    assert_eq!(metric(&addr, "locus_fuse_opens_settled_total", ""), 0.0);
}

/// A daemon serving `file://` names under `root`, with a metadata TTL of 1 s and 64 KiB chunks.
fn file_daemon(env: &Env, root: &Path) -> Daemon {
    file_daemon_ttl(env, root, "1")
}

/// A daemon of a `file://` origin under `root` whose metadata TTL is `ttl` seconds.
fn file_daemon_ttl(env: &Env, root: &Path, ttl: &str) -> Daemon {
    env.daemon(
        "n",
        &[
            "--file-root",
            root.to_str().unwrap(),
            "--metadata-ttl",
            ttl,
            "--chunk-size",
            "64KiB",
        ],
        &[],
    )
}

#[test]
#[ignore = "needs root (a mount, another user or a tmpfs): tests/run runs it"]
fn an_open_file_never_mixes_versions_of_an_overwritten_object() {
    use std::io::Read;
    let env = Env::new();
    let root = env.path("shared");
    std::fs::create_dir_all(&root).unwrap();
    let old = locus_testorigin::model::random_bytes(1, 4 << 20);
    std::fs::write(root.join("model.bin"), &old).unwrap();
    let d = file_daemon(&env, &root);
    let m = Mount::new(&d, &env, &format!("file://{}", root.display()), "mnt");
    let mut f = std::fs::File::open(m.dir.join("model.bin")).unwrap();
    let mut head = vec![0u8; 64 << 10];
    f.read_exact(&mut head).unwrap();
    assert!(head[..] == old[..64 << 10]);
    // Overwritten (same size) while open, and the metadata TTL passes: the name now lists as
    // the new version.
    let new = locus_testorigin::model::random_bytes(2, 4 << 20);
    std::fs::write(root.join("model.bin"), &new).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // The rest of the open file is the old version's bytes, or an error: never the new one's.
    let mut rest = Vec::new();
    match f.read_to_end(&mut rest) {
        Ok(_) => assert!(rest[..] == old[64 << 10..], "mixed versions"),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}"),
    }
    // What came before an error is the old version's too.
    let at = 64 << 10;
    assert!(rest.len() <= old.len() - at);
    assert!(
        rest[..] == old[at..at + rest.len()],
        "bytes before the error"
    );
}

/// The value of every sample of `name` whose labels contain `labels`, summed.
fn metric(addr: &str, name: &str, labels: &str) -> f64 {
    let text = reqwest::blocking::get(format!("http://{addr}/metrics"))
        .unwrap()
        .text()
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
#[ignore = "needs root (a mount, another user or a tmpfs): tests/run runs it"]
fn a_listing_in_use_is_listed_again_before_its_ttl_and_no_reader_waits_for_it() {
    let env = Env::new();
    let root = env.path("shared");
    std::fs::create_dir_all(&root).unwrap();
    let files = 400;
    for i in 0..files {
        std::fs::write(root.join(format!("f{i}")), format!("file {i}")).unwrap();
    }
    // A TTL of 6 s: the mount asks again from 4.5 s on (a quarter ahead), the node's own
    // refresh ahead would start at 5.4 s (a tenth), and an answer as old as the node's
    // would be due again at once.
    let d = file_daemon_ttl(&env, &root, "6");
    let addr = format!("127.0.0.1:{}", free_port());
    let m = Mount::with_args(
        &d,
        &env,
        &format!("file://{}", root.display()),
        "mnt",
        &["--metrics", &addr],
    );
    // Readers look up a new name every 40 ms for two and a half TTLs.
    let started = std::time::Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(15) {
        let name = format!("f{}", i % files);
        assert_eq!(
            std::fs::read_to_string(m.dir.join(&name)).unwrap(),
            format!("file {}", i % files)
        );
        i += 1;
        std::thread::sleep(Duration::from_millis(40));
    }
    let relists = metric(&addr, "locus_fuse_relists_total", "");
    let ahead = metric(&addr, "locus_fuse_relists_ahead_total", "");
    assert!(
        (2.0..=3.0).contains(&ahead),
        "listed again ahead of the TTL {ahead} times (once a TTL)"
    );
    assert_eq!(
        relists, ahead,
        "every listing again was ahead of the TTL: no reader waited for one"
    );
}

#[test]
#[ignore = "needs root (a mount, another user or a tmpfs): tests/run runs it"]
fn a_later_open_sees_the_new_version_once_the_ttl_passes() {
    use std::io::Read;
    let env = Env::new();
    let root = env.path("shared");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    let old = locus_testorigin::model::random_bytes(1, 1 << 20);
    std::fs::write(root.join("model.bin"), &old).unwrap();
    std::fs::write(root.join("gone.txt"), b"soon gone").unwrap();
    std::fs::write(root.join("sub/kept.txt"), b"kept").unwrap();
    let d = file_daemon(&env, &root);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let m = Mount::with_args(
        &d,
        &env,
        &format!("file://{}", root.display()),
        "mnt",
        &["--metrics", &addr],
    );
    let names = |dir: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&m.dir), ["gone.txt", "model.bin", "sub"]);
    assert!(std::fs::read(m.dir.join("model.bin")).unwrap() == old);
    let old_ino = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(m.dir.join("model.bin")).unwrap().ino()
    };
    // Held open across the change.
    let mut held = std::fs::File::open(m.dir.join("model.bin")).unwrap();
    // The origin changes: a new version of another size, a name gone, names added.
    let new = locus_testorigin::model::random_bytes(2, (1 << 20) + 12_345);
    std::fs::write(root.join("model.bin"), &new).unwrap();
    std::fs::remove_file(root.join("gone.txt")).unwrap();
    std::fs::write(root.join("added.txt"), b"added").unwrap();
    std::fs::write(root.join("sub/added.txt"), b"added too").unwrap();
    // Within two TTLs (the node's listing may be a TTL old when the mount lists again).
    std::thread::sleep(Duration::from_millis(2200));
    let meta = std::fs::metadata(m.dir.join("model.bin")).unwrap();
    assert_eq!(
        meta.len(),
        new.len() as u64,
        "a later stat sees the new size"
    );
    assert_ne!(
        std::os::unix::fs::MetadataExt::ino(&meta),
        old_ino,
        "a new version is a new inode"
    );
    assert!(
        std::fs::read(m.dir.join("model.bin")).unwrap() == new,
        "a later open reads the new version"
    );
    assert_eq!(names(&m.dir), ["added.txt", "model.bin", "sub"]);
    assert_eq!(names(&m.dir.join("sub")), ["added.txt", "kept.txt"]);
    assert_eq!(
        std::fs::read(m.dir.join("sub/added.txt")).unwrap(),
        b"added too"
    );
    let e = std::fs::metadata(m.dir.join("gone.txt")).expect_err("gone");
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    // The file open across the change still reads the version it opened, whole.
    let mut rest = Vec::new();
    held.read_to_end(&mut rest).unwrap();
    assert!(rest == old, "the open file moved to another version");
    drop(held);
    assert!(metric(&addr, "locus_fuse_relists_total", "") >= 1.0);
    assert!(metric(&addr, "locus_fuse_versions_replaced_total", "") >= 2.0);
    // Unchanged, the names keep their inodes: nothing is replaced by a later listing.
    let ino_of =
        |p: &str| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(m.dir.join(p)).unwrap());
    let before = ino_of("model.bin");
    std::thread::sleep(Duration::from_millis(2200));
    assert_eq!(ino_of("model.bin"), before);
    assert!(std::fs::read(m.dir.join("model.bin")).unwrap() == new);
}

#[test]
#[ignore = "needs root (a mount, another user or a tmpfs): tests/run runs it"]
fn files_warmed_beside_a_mount_are_learned_and_then_read_without_asking_the_daemon() {
    let env = Env::new();
    let root = env.path("shared");
    let mut files = Vec::new();
    for dir in ["walked", "opened"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
        for i in 0..64u64 {
            let bytes = locus_testorigin::model::random_bytes(i, 10_000 + 997 * i as usize);
            std::fs::write(root.join(format!("{dir}/f{i:02}")), &bytes).unwrap();
            files.push((format!("{dir}/f{i:02}"), bytes));
        }
    }
    let uri = format!("file://{}", root.display());
    let d = env.daemon(
        "n",
        &[
            "--file-root",
            root.to_str().unwrap(),
            "--metadata-ttl",
            "600",
        ],
        &[],
    );
    let addr = format!("127.0.0.1:{}", free_port());
    let m = Mount::with_args(&d, &env, &uri, "mnt", &["--metrics", &addr]);
    // Listed before anything is cached: `walked` read whole (each name gets an inode), `opened`
    // only entered (its files are inodes only once opened by path).
    assert_eq!(std::fs::read_dir(m.dir.join("walked")).unwrap().count(), 64);
    assert!(m.dir.join("opened/f00").exists());
    d.ok(&["warm", &uri]);
    let pool_reads = || metric(&addr, "locus_fuse_requests_total", r#"op="read",on="pool""#);
    let stale = || metric(&addr, "locus_fuse_stale_reads_total", "");
    for (n, dir) in ["walked", "opened"].into_iter().enumerate() {
        let mine: Vec<&(String, bytes::Bytes)> =
            files.iter().filter(|(p, _)| p.starts_with(dir)).collect();
        // Each first read asks the node, which holds the file: 8 of them in a folder of 64,
        // then the folder is asked again for what the node holds.
        for (p, b) in &mine[..8] {
            assert!(std::fs::read(m.dir.join(p)).unwrap() == b[..], "{p}");
        }
        assert_eq!(stale(), 8.0 * (n + 1) as f64);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        // The 56 not read yet (the 8 read keep their own read state).
        while metric(&addr, "locus_fuse_learned_files_total", "") < 56.0 * (n + 1) as f64 {
            assert!(
                std::time::Instant::now() < deadline,
                "the folder was not learned"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(metric(&addr, "locus_fuse_learns_total", ""), (n + 1) as f64);
        // The rest are read here, from the node's cache files: no call to the node.
        let before = pool_reads();
        for (p, b) in &mine[8..] {
            assert!(std::fs::read(m.dir.join(p)).unwrap() == b[..], "{p}");
        }
        assert_eq!(stale(), 8.0 * (n + 1) as f64, "a first read asked the node");
        assert_eq!(pool_reads(), before, "a read went to the pool");
    }
    assert_eq!(metric(&addr, "locus_fuse_learned_files_total", ""), 112.0);
}

#[test]
#[ignore = "needs root (a mount, another user or a tmpfs): tests/run runs it"]
fn the_namespace_view_keeps_a_bounded_number_of_inodes() {
    let env = Env::new();
    let mut repos = Vec::new();
    for i in 0..12 {
        let files = random_files(10, 1_000, 100 + i);
        env.sim
            .commit("model", &format!("acme/m{i}"), files.clone());
        repos.push(files);
    }
    let ns = env.path("ns");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut d = env.daemon(
        "n",
        &[
            "--mount",
            ns.to_str().unwrap(),
            "--mount-max-inodes",
            "100",
            "--metrics",
            &addr,
        ],
        &[],
    );
    let hf = ns.join("hf/acme");
    // 12 repos of 11 inodes each, twice over: more than the view keeps.
    for round in 0..2 {
        for (i, files) in repos.iter().enumerate() {
            for (p, b) in files {
                let got = std::fs::read(hf.join(format!("m{i}")).join(p)).unwrap();
                assert_eq!(got, b.to_vec(), "round {round}, m{i}/{p}");
            }
            let linked = metric(&addr, "locus_fuse_inodes", r#"state="linked""#);
            assert!(linked <= 100.0, "{linked} inodes linked");
        }
    }
    // Dropped repos are forgotten by the kernel too (told to drop their names): the mount
    // does not hold on to them. (Without the kernel told, 148 were still held here.)
    let mut held = 0.0;
    for _ in 0..30 {
        held = metric(&addr, "locus_fuse_inodes", r#"state="held""#);
        if held <= 110.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(held <= 110.0, "{held} inodes held");
    // Names looked up by the hundred (every ORG is a folder) stay bounded as well, once the
    // second a new organisation's folder is kept for its repo's lookup has passed.
    for i in 0..500 {
        let _ = std::fs::metadata(ns.join(format!("hf/org{i}/x")));
    }
    std::thread::sleep(Duration::from_millis(1100));
    let _ = std::fs::metadata(ns.join("hf/last/x"));
    let linked = metric(&addr, "locus_fuse_inodes", r#"state="linked""#);
    assert!(linked <= 100.0, "{linked} inodes linked");
    assert!(d.signal(nix::sys::signal::Signal::SIGTERM).success());
}

#[test]
#[ignore = "needs root (a mount, another user or a tmpfs): tests/run runs it"]
fn the_demo_runs_offline_and_says_what_to_type_next() {
    let out = std::process::Command::new(LOCUS)
        .args([
            "demo",
            "--model-size",
            "16MiB",
            "--shards",
            "2",
            "--throttle",
            "1GB",
        ])
        .env_remove("LOCUS_CONFIG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(text.contains("origin bytes in all"), "{text}");
    let next = text
        .split("Next, on your own model")
        .nth(1)
        .unwrap_or_else(|| panic!("no hand-over: {text}"));
    for cmd in ["locus daemon ", "locus warm hf://", "locus mount hf://"] {
        assert!(next.contains(cmd), "{cmd} missing: {next}");
    }
    // The version names the build's commit.
    let v = std::process::Command::new(LOCUS)
        .arg("--version")
        .output()
        .unwrap();
    let v = String::from_utf8_lossy(&v.stdout);
    assert!(
        v.contains("(commit ") || v.contains("(unknown commit)"),
        "{v}"
    );
}

#[test]
#[ignore = "needs root (a mount, another user or a tmpfs): tests/run runs it"]
fn a_mount_logs_quietly_to_the_state_folder_and_unmount_confirms() {
    let env = Env::new();
    env.sim.commit("model", "acme/m", random_files(2, 1000, 3));
    let d = env.daemon("n", &[], &[]);
    let dir = env.path("mnt");
    std::fs::create_dir_all(&dir).unwrap();
    let out = String::from_utf8(d.ok(&["mount", "hf://acme/m", dir.to_str().unwrap()])).unwrap();
    let log = out
        .split("(log: ")
        .nth(1)
        .and_then(|l| l.trim().strip_suffix(')'))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no log named: {out}"));
    assert!(log.starts_with("/var/log/locus"), "{}", log.display());
    // No extended attributes: "none", not "not implemented".
    for e in std::fs::read_dir(dir.join("weights")).unwrap() {
        let p = std::ffi::CString::new(e.unwrap().path().as_os_str().as_encoded_bytes()).unwrap();
        let name = c"security.selinux";
        // SAFETY: valid NUL-terminated strings; a null buffer of size 0 asks for the size.
        let r = unsafe { libc::getxattr(p.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
        assert_eq!(r, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ENODATA)
        );
        // SAFETY: as above.
        let n = unsafe { libc::listxattr(p.as_ptr(), std::ptr::null_mut(), 0) };
        assert_eq!(n, 0);
    }
    let out = d.locus(&["unmount", dir.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("unmounted"));
    assert!(!mounted(&dir));
    std::thread::sleep(Duration::from_millis(300));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("stopping"), "{text}");
    assert!(!text.contains(" WARN "), "{text}");
    let _ = std::fs::remove_file(&log);
}

/// A process's memory from /proc: `VmRSS` now or `VmHWM` (its peak), in bytes.
fn memory(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in {status}"));
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

/// The names in folder `dir`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Two million files (issue #17), far over one message's cap (64 MiB: about 400k files of
/// this dataset): listed whole, in pages, in path order, as one JSON document (a reader that
/// stops early ends `ls` quietly); a glob of one folder warms that folder; the namespace view
/// and a mount load a folder at a time, as they are opened; and the daemon's memory grows by
/// less than 1 GiB through all of it.
#[test]
#[ignore = "needs root (a mount, another user or a tmpfs): tests/run runs it"]
fn two_million_files_are_listed_warmed_and_mounted_a_folder_at_a_time() {
    use std::io::Read;
    const N: u64 = 2_000_000;
    let env = Env::new();
    env.sim
        .commit_generated("dataset", "bench/many", N, 100..=200, 1);
    let ns = env.path("ns");
    let addr = format!("127.0.0.1:{}", free_port());
    let d = env.daemon(
        "n",
        &[
            "--mount",
            ns.to_str().unwrap(),
            "--mount-max-inodes",
            "5000",
            "--metrics",
            &addr,
        ],
        &[],
    );
    let before = memory(d.child.id(), "VmRSS");
    let out = d.ok(&["ls", "hf://datasets/bench/many", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out).expect("one JSON document");
    drop(out);
    assert_eq!(v["uri"], "hf://datasets/bench/many");
    let files = v["files"].as_array().unwrap();
    assert_eq!(files.len() as u64, N);
    let paths: Vec<&str> = files.iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert!(paths.windows(2).all(|w| w[0] < w[1]), "in order, once each");
    assert_eq!(paths[0], locus_testorigin::generated_name(0));
    assert_eq!(
        paths[N as usize - 1],
        locus_testorigin::generated_name(N - 1)
    );
    drop(v);
    // `locus ls | head`: the reader goes away after a few lines.
    let mut child = std::process::Command::new(LOCUS)
        .args(["--socket", d.socket.to_str().unwrap()])
        .args(["ls", "hf://datasets/bench/many"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 4096];
    let n = child.stdout.as_mut().unwrap().read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).contains("0000/00000000.bin"));
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stderr.is_empty(), "{}", stderr(&out));

    // A glob warms the files it matches, and only those.
    let out = d.ok(&["warm", "hf://datasets/bench/many", "--include", "1234/*"]);
    let said = String::from_utf8_lossy(&out);
    assert!(said.contains("warmed 1000 files"), "{said}");
    let folder = d.json(&["ls", "hf://datasets/bench/many/1234", "--json"]);
    let folder = folder["files"].as_array().unwrap();
    assert_eq!(folder.len(), 1000);
    assert!(
        folder.iter().all(|f| f["cached_fraction"] == 1.0),
        "{folder:?}"
    );
    let next = d.json(&["ls", "hf://datasets/bench/many/1235", "--json"]);
    assert_eq!(next["files"][0]["cached_fraction"], 0.0);
    let name = locus_testorigin::generated_name(1_234_567);
    let want = env
        .sim
        .file("dataset", "bench/many", "main", &name)
        .unwrap();
    let got = d.ok(&["cat", &format!("hf://datasets/bench/many/{name}")]);
    assert!(got == want.to_vec(), "cat read other bytes");

    // The namespace view: the dataset's folders are shown, and only the ones opened are
    // listed (a bound of 5,000 inodes would not hold the whole 2M).
    let view = ns.join("hf/datasets/bench/many");
    assert!(std::fs::read(view.join(&name)).unwrap() == want.to_vec());
    let top = names_in(&view);
    assert_eq!(top.len(), 2000);
    assert_eq!((top[0].as_str(), top[1999].as_str()), ("0000", "1999"));
    let other = locus_testorigin::generated_name(7_042);
    assert_eq!(names_in(&view.join("0007")).len(), 1000);
    assert!(
        std::fs::read(view.join(&other)).unwrap()
            == env
                .sim
                .file("dataset", "bench/many", "main", &other)
                .unwrap()
                .to_vec()
    );
    let linked = metric(&addr, "locus_fuse_inodes", r#"state="linked""#);
    assert!(linked <= 5000.0, "{linked} inodes linked");
    // Folder 1234 was listed for one file: its other 999 are names without inodes (0007 was
    // read whole, so all of its files are inodes). Were every name an inode, `held` (which
    // also counts inodes the kernel holds after they were unlinked) would be `linked` or more.
    let held = metric(&addr, "locus_fuse_inodes", r#"state="held""#);
    assert!(
        held + 900.0 <= linked,
        "{held} inodes held, {linked} names linked"
    );

    // `locus mount` of the whole dataset: its first file is read after one folder's listing.
    let m = Mount::new(&d, &env, "hf://datasets/bench/many", "mnt");
    assert!(std::fs::read(m.dir.join(&name)).unwrap() == want.to_vec());
    assert_eq!(names_in(&m.dir).len(), 2000);
    let mount = mount_pid("hf://datasets/bench/many", &m.dir);
    let mount_peak = memory(mount.as_raw() as u32, "VmHWM");
    assert!(
        mount_peak < 256 << 20,
        "the mount process peaked at {} MiB",
        mount_peak >> 20
    );

    let grown = memory(d.child.id(), "VmHWM").saturating_sub(before);
    eprintln!(
        "daemon memory grew by {} MiB at most; the mount peaked at {} MiB",
        grown >> 20,
        mount_peak >> 20
    );
    assert!(grown < 1 << 30, "the daemon grew by {} MiB", grown >> 20);
}
