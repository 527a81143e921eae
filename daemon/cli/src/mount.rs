//! `locus mount` and `locus unmount`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use locus_fuse::daemon::DaemonBackend;
use locus_fuse::{LocusFs, MountOptions, Opens};

use crate::Failure;

#[derive(Args)]
pub struct MountArgs {
    /// A repo, folder or file, e.g. hf://ORG/NAME@REV.
    uri: String,
    /// An existing empty folder (see --allow-non-empty).
    mountpoint: PathBuf,
    /// Mount over a folder that is not empty (its files are hidden while the mount is there).
    #[arg(long)]
    allow_non_empty: bool,
    /// Stay in the foreground (otherwise the mount runs in a background process).
    #[arg(long)]
    foreground: bool,
    /// Let other users (and other containers' processes) read the mount; without it only
    /// the user who mounted it can. `--allow-other` alone means true.
    #[arg(long, default_value_t = false, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    allow_other: bool,
    /// Threads reading FUSE requests (requests that wait run on a pool of their own).
    #[arg(long, default_value_t = default_threads())]
    threads: usize,
    /// Never hand complete files to the kernel (FUSE passthrough, Linux 6.9+, root).
    #[arg(long)]
    no_passthrough: bool,
    /// Let the kernel open and close files without asking this mount from the start: two
    /// fewer FUSE round trips per file (OPEN and RELEASE), for datasets of many small files.
    /// No file is then read by passthrough (model files read faster with it). Without this
    /// or --open, opens are turned off once the first 64 files opened were all under 1 MiB.
    #[arg(long, conflicts_with = "open")]
    no_open: bool,
    /// Answer every open, whatever files are read (large files are read by passthrough).
    #[arg(long)]
    open: bool,
    /// Microseconds a request reader waits for the next request before it sleeps; 0 never
    /// waits. During a storm of small requests this keeps up to one core busy.
    #[arg(long, default_value_t = 50)]
    linger_us: u64,
    /// Serve this mount's Prometheus metrics at http://ADDR/metrics (and /healthz).
    #[arg(long)]
    metrics: Option<std::net::SocketAddr>,
    /// Show only files whose path from the mount's root matches this glob (repeatable).
    #[arg(long)]
    include: Vec<String>,
    /// Hide files whose path from the mount's root matches this glob (repeatable).
    #[arg(long)]
    exclude: Vec<String>,
}

/// One request reader per 4 cores, 1 to 8: a reader that finds requests queued takes them
/// without sleeping, and on a small machine every extra reader adds a wake-up per request
/// (48 threads reading 10 KB files on 2 cores: 0.61x native with 1 reader, 0.53x with 2,
/// 0.46x with 16).
pub fn default_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / 4).clamp(1, 8)
}

/// Whether a locus mount (FUSE, from a source named `locus…`) is at `path` now.
pub fn is_locus_mount(path: &Path) -> bool {
    let Ok(canon) = std::fs::canonicalize(path) else {
        return false;
    };
    let target = canon.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            l.split(' ').nth(4) == Some(target.as_str())
                && l.split(" - ").nth(1).is_some_and(|t| {
                    // FSTYPE SOURCE …: `fuse` (or `fuse.locus`) from a source `locus…`.
                    let mut f = t.split(' ');
                    f.next().is_some_and(|ty| ty.starts_with("fuse"))
                        && f.next().is_some_and(|src| src.starts_with("locus"))
                })
        })
}

/// Whether `path` is a mount point now (per /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(canon) = std::fs::canonicalize(path) else {
        return false;
    };
    let target = canon.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(target.as_str()))
}

/// Where a background mount logs: /var/log/locus for root, else the user's state folder
/// ($XDG_STATE_HOME/locus, ~/.local/state/locus), made if missing; the temporary folder if
/// neither can be.
fn log_dir() -> PathBuf {
    use std::os::unix::fs::DirBuilderExt;
    // The daemon's CSI mounts log into its cache folder (a read-only root file system has no
    // /var/log or /tmp to write).
    if let Some(d) = std::env::var_os("LOCUS_MOUNT_LOG_DIR") {
        return PathBuf::from(d);
    }
    let home_state = || {
        std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
            .map(|d| d.join("locus"))
    };
    let dir = match nix::unistd::geteuid().is_root() {
        true => Some(PathBuf::from("/var/log/locus")),
        false => home_state(),
    };
    dir.filter(|d| {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(d)
            .is_ok()
    })
    .unwrap_or_else(std::env::temp_dir)
}

pub async fn mount(socket: &Path, a: MountArgs) -> Result<(), Failure> {
    locus_core::LocusUri::parse(&a.uri).map_err(|e| Failure::usage(e.to_string()))?;
    locus_core::select::Selection::new(&a.include, &a.exclude)
        .map_err(|e| Failure::usage(format!("bad glob {e}")))?;
    let meta = std::fs::metadata(&a.mountpoint)
        .map_err(|e| Failure::usage(format!("mount point {}: {e}", a.mountpoint.display())))?;
    if !meta.is_dir() {
        return Err(Failure::usage(format!(
            "mount point {} is not a folder",
            a.mountpoint.display()
        )));
    }
    let mounted = is_mounted(&a.mountpoint);
    let non_empty = std::fs::read_dir(&a.mountpoint)
        .map_err(|e| Failure::usage(format!("mount point {}: {e}", a.mountpoint.display())))?
        .next()
        .is_some();
    if non_empty && !a.allow_non_empty && !mounted {
        return Err(Failure::usage(format!(
            "mount point {} is not empty: its files would be hidden while mounted (give \
             --allow-non-empty to mount over them)",
            a.mountpoint.display()
        )));
    }
    if mounted {
        return Err(Failure::new(
            1,
            format!(
                "{} is already a mount point (locus unmount it first)",
                a.mountpoint.display()
            ),
        ));
    }
    if !a.foreground {
        return spawn_background(socket, &a).await;
    }
    let socket = socket.to_path_buf();
    // fuser and the backend block: run them off the async runtime.
    std::thread::spawn(move || run_foreground(&socket, a))
        .join()
        .map_err(|_| Failure::new(1, "the mount thread panicked"))?
}

fn run_foreground(socket: &Path, a: MountArgs) -> Result<(), Failure> {
    crate::telemetry::init_logging();
    if let Some(addr) = a.metrics {
        serve_metrics(addr)?;
    }
    let backend = Arc::new(
        locus_fuse::filter::Filtered::new(
            DaemonBackend::connect(socket).map_err(|e| Failure::new(1, e.to_string()))?,
            &a.uri,
            &a.include,
            &a.exclude,
        )
        .map_err(|e| Failure::usage(e.to_string()))?,
    );
    let fs = LocusFs::new(
        backend,
        &a.uri,
        MountOptions {
            passthrough: !a.no_passthrough,
            linger: Duration::from_micros(a.linger_us),
            opens: match (a.no_open, a.open) {
                (true, _) => Opens::Never,
                (_, true) => Opens::Always,
                _ => Opens::Auto,
            },
            ..MountOptions::default()
        },
    )
    .map_err(|e| Failure::new(1, e.to_string()))?;
    let config = fuse_config(format!("locus:{}", a.uri), a.allow_other, a.threads);
    let session = spawn_session(fs, &a.mountpoint, &config)
        .map_err(|e| Failure::new(1, format!("mounting {}: {e}", a.mountpoint.display())))?;
    raise_readahead(&a.mountpoint);
    tracing::info!(uri = a.uri, mountpoint = %a.mountpoint.display(), "ready");
    // Unmount on SIGTERM/SIGINT; end when someone else unmounts.
    let mut signals = nix::sys::signal::SigSet::empty();
    signals.add(nix::sys::signal::Signal::SIGTERM);
    signals.add(nix::sys::signal::Signal::SIGINT);
    let _ = signals.thread_block();
    let (tx, rx) = std::sync::mpsc::channel::<&'static str>();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        if signals.wait().is_ok() {
            let _ = tx2.send("signal");
        }
    });
    let mp = a.mountpoint.clone();
    std::thread::spawn(move || {
        while is_mounted(&mp) {
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = tx.send("unmounted");
    });
    let why = rx.recv().unwrap_or("unmounted");
    tracing::info!(why, "stopping");
    if why == "signal" {
        session
            .umount_and_join()
            .map_err(|e| Failure::new(1, format!("unmounting: {e}")))?;
    }
    Ok(())
}

async fn spawn_background(socket: &Path, a: &MountArgs) -> Result<(), Failure> {
    let exe = std::env::current_exe().map_err(|e| Failure::new(1, e.to_string()))?;
    let log_path = log_dir().join(format!("mount-{}.log", std::process::id()));
    let log = std::fs::File::create(&log_path)
        .map_err(|e| Failure::new(1, format!("{}: {e}", log_path.display())))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("mount")
        .arg(&a.uri)
        .arg(&a.mountpoint)
        .arg("--foreground")
        .arg("--socket")
        .arg(socket)
        .arg("--threads")
        .arg(a.threads.to_string())
        .arg(format!("--allow-other={}", a.allow_other))
        .arg("--linger-us")
        .arg(a.linger_us.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    if a.no_passthrough {
        cmd.arg("--no-passthrough");
    }
    if a.no_open {
        cmd.arg("--no-open");
    }
    if a.open {
        cmd.arg("--open");
    }
    if a.allow_non_empty {
        cmd.arg("--allow-non-empty");
    }
    if let Some(addr) = a.metrics {
        cmd.arg("--metrics").arg(addr.to_string());
    }
    for g in &a.include {
        cmd.arg("--include").arg(g);
    }
    for g in &a.exclude {
        cmd.arg("--exclude").arg(g);
    }
    // SAFETY: setsid is async-signal-safe; the child leaves our session so it outlives us.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc_setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| Failure::new(1, e.to_string()))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if is_mounted(&a.mountpoint) {
            println!(
                "mounted {} at {} (log: {})",
                a.uri,
                a.mountpoint.display(),
                log_path.display()
            );
            return Ok(());
        }
        if let Ok(Some(_)) = child.try_wait() {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let last = text
                .lines()
                .rev()
                .find(|l| l.starts_with("error:"))
                .unwrap_or("the mount process exited");
            return Err(Failure::new(
                1,
                last.trim_start_matches("error: ").to_string(),
            ));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(Failure::new(1, "the mount did not come up in 60 s"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Installs a Prometheus recorder and serves it at `addr` on a thread of its own.
fn serve_metrics(addr: std::net::SocketAddr) -> Result<(), Failure> {
    let handle = crate::telemetry::install_metrics().map_err(|e| Failure::new(1, e.to_string()))?;
    locus_fuse::metrics::describe();
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| Failure::new(1, format!("--metrics {addr}: cannot listen: {e}")))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(1, e.to_string()))?;
    std::thread::spawn(move || {
        rt.block_on(async move {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => {
                    crate::telemetry::serve_metrics(l, handle, || {}, std::future::pending()).await
                }
                Err(e) => tracing::error!(error = %e, "metrics endpoint failed"),
            }
        })
    });
    Ok(())
}

/// Mounts `fs` and serves it on threads of its own; the file system gets a duplicate of the
/// session's device descriptor (to see requests waiting) before it serves anything but INIT.
pub fn spawn_session<B: locus_fuse::Backend>(
    fs: LocusFs<B>,
    mountpoint: &Path,
    config: &fuser::Config,
) -> std::io::Result<fuser::BackgroundSession> {
    use std::os::fd::AsFd;
    let device = fs.device_slot();
    let notifier = fs.notifier_slot();
    let session = fuser::Session::new(fs, mountpoint, config)?;
    let _ = device.set(session.as_fd().try_clone_to_owned()?);
    let _ = notifier.set(session.notifier());
    session.spawn()
}

/// Mount options shared by `locus mount` and the daemon's namespace view.
pub fn fuse_config(fsname: String, allow_other: bool, threads: usize) -> fuser::Config {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::RO,
        fuser::MountOption::FSName(fsname),
        fuser::MountOption::Subtype("locus".into()),
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
        fuser::MountOption::DefaultPermissions,
    ];
    if allow_other {
        config.acl = fuser::SessionACL::All;
    }
    config.n_threads = Some(threads.clamp(1, 64));
    config.clone_fd = true;
    config
}

/// The kernel reads ahead of a sequential reader by the mount's bdi setting (128 KiB by
/// default), which caps FUSE read requests; model files are read whole, so ask for 16 MiB.
/// Needs root; without it the default stays.
pub fn raise_readahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(mountpoint) else {
        return;
    };
    let dev = meta.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    if let Err(e) = std::fs::write(&knob, "16384") {
        tracing::debug!(knob, error = %e, "read-ahead left at the kernel's default");
    }
}

fn libc_setsid() {
    let _ = nix::unistd::setsid();
}

pub fn unmount(mountpoint: &Path) -> Result<(), Failure> {
    if !is_mounted(mountpoint) {
        return Err(Failure::new(
            1,
            format!("{} is not mounted", mountpoint.display()),
        ));
    }
    // A lazy unmount also clears a mount whose process died ("Transport endpoint is not connected").
    nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH)
        .map_err(|e| Failure::new(1, format!("unmounting {}: {e}", mountpoint.display())))
}
