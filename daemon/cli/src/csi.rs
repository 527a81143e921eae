//! The daemon's CSI node plugin mounts each volume with a `locus mount` process of its own:
//! a process that outlives a restart of the daemon (its reads wait for the daemon to answer
//! again), so that an upgrade of the daemon does not break the pods' volumes.

use std::path::{Path, PathBuf};

use locus_csi::{MountWith, Mounter};

use crate::mount::is_mounted;

/// Mounts with `locus mount` (this binary), in the background, against the daemon's socket;
/// the mounts log into `logs`.
pub struct ProcessMounter {
    pub exe: PathBuf,
    pub socket: PathBuf,
    pub logs: PathBuf,
}

#[async_trait::async_trait]
impl Mounter for ProcessMounter {
    async fn mount(&self, uri: &str, target: &Path, with: &MountWith) -> Result<(), String> {
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.arg("mount")
            .arg(uri)
            .arg(target)
            .arg("--socket")
            .arg(&self.socket)
            // Pods read it as whatever user their containers run as.
            .arg("--allow-other");
        for g in &with.include {
            cmd.arg("--include").arg(g);
        }
        for g in &with.exclude {
            cmd.arg("--exclude").arg(g);
        }
        if with.no_open {
            cmd.arg("--no-open");
        } else if with.open {
            cmd.arg("--open");
        }
        std::fs::create_dir_all(&self.logs).map_err(|e| format!("{}: {e}", self.logs.display()))?;
        let out = cmd
            .env("LOCUS_MOUNT_LOG_DIR", &self.logs)
            // A publish cut short by kubelet's deadline still ends with the mount up and
            // recorded (the plugin runs it to the end): the child is not killed with the call.
            .kill_on_drop(false)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| format!("{}: {e}", self.exe.display()))?;
        match out.status.success() {
            true => Ok(()),
            false => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        }
    }

    async fn unmount(&self, target: &Path) -> Result<(), String> {
        // Only a locus mount, never whatever else kubelet's path may hold, and not through a
        // symlink. The mount's process ends once its mount is gone.
        if !crate::mount::is_locus_mount(target) {
            return Ok(());
        }
        nix::mount::umount2(
            target,
            nix::mount::MntFlags::MNT_DETACH | nix::mount::MntFlags::UMOUNT_NOFOLLOW,
        )
        .map_err(|e| format!("{}: {e}", target.display()))
    }

    fn alive(&self, target: &Path) -> bool {
        // A mount whose process died answers ENOTCONN.
        is_mounted(target) && std::fs::read_dir(target).is_ok()
    }
}

/// This host's name: the node id kubelet expects by default.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// One request to a mounter, one JSON line; the answer is one JSON line too.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Ask {
    Mount {
        uri: String,
        target: PathBuf,
        #[serde(flatten)]
        with: MountWith,
    },
    Unmount {
        target: PathBuf,
    },
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Answer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Mounts through a `locus mounter` (its own DaemonSet in Kubernetes): the mount processes are
/// its children, so they outlive the daemon's container (an upgrade replaces the daemon's
/// pods, not the mounter's); their reads wait for the daemon to come back.
pub struct RemoteMounter {
    pub socket: PathBuf,
}

impl RemoteMounter {
    async fn ask(&self, ask: &Ask) -> Result<(), String> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let mut s = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| format!("the mounter at {}: {e}", self.socket.display()))?;
        let mut line = serde_json::to_vec(ask).map_err(|e| e.to_string())?;
        line.push(b'\n');
        s.write_all(&line).await.map_err(|e| e.to_string())?;
        let mut r = tokio::io::BufReader::new(s);
        let mut back = String::new();
        r.read_line(&mut back).await.map_err(|e| e.to_string())?;
        let a: Answer = serde_json::from_str(&back)
            .map_err(|e| format!("the mounter's answer {back:?}: {e}"))?;
        match a.error {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}

#[async_trait::async_trait]
impl Mounter for RemoteMounter {
    async fn mount(&self, uri: &str, target: &Path, with: &MountWith) -> Result<(), String> {
        self.ask(&Ask::Mount {
            uri: uri.to_string(),
            target: target.to_path_buf(),
            with: with.clone(),
        })
        .await
    }

    async fn unmount(&self, target: &Path) -> Result<(), String> {
        self.ask(&Ask::Unmount {
            target: target.to_path_buf(),
        })
        .await
    }

    fn alive(&self, target: &Path) -> bool {
        // The daemon sees kubelet's pods folder too.
        is_mounted(target) && std::fs::read_dir(target).is_ok()
    }
}

/// Whether `target` lies under `root`, by its components (no `..`, nothing relative).
fn under(target: &Path, root: &Path) -> bool {
    use std::path::Component;
    target.is_absolute()
        && !target
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        && target.starts_with(root)
        && target != root
}

/// `locus mounter`: serves mounts for the daemon's CSI plugin on `listener` (a root-only
/// socket), only at targets under `root` (kubelet's pods folder), until the process ends.
pub async fn serve_mounter(
    listener: tokio::net::UnixListener,
    mounter: std::sync::Arc<ProcessMounter>,
    root: PathBuf,
) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    loop {
        let Ok((s, _)) = listener.accept().await else {
            continue;
        };
        let (mounter, root) = (mounter.clone(), root.clone());
        tokio::spawn(async move {
            let (r, mut w) = s.into_split();
            let mut lines = tokio::io::BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let result = match serde_json::from_str::<Ask>(&line) {
                    Err(e) => Err(format!("bad request: {e}")),
                    Ok(Ask::Mount { target, .. }) | Ok(Ask::Unmount { target })
                        if !under(&target, &root) =>
                    {
                        Err(format!(
                            "{} is not under {}: refused",
                            target.display(),
                            root.display()
                        ))
                    }
                    Ok(Ask::Mount { uri, target, with }) => {
                        tracing::info!(uri, target = %target.display(), "mount");
                        mounter.mount(&uri, &target, &with).await
                    }
                    Ok(Ask::Unmount { target }) => {
                        tracing::info!(target = %target.display(), "unmount");
                        mounter.unmount(&target).await
                    }
                };
                let mut out = serde_json::to_vec(&Answer {
                    error: result.err(),
                })
                .unwrap_or_default();
                out.push(b'\n');
                if w.write_all(&out).await.is_err() {
                    break;
                }
            }
        });
    }
}
