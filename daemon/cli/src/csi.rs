//! The daemon's CSI node plugin mounts each volume with a `locus mount` process of its own:
//! a process that outlives a restart of the daemon (its reads wait for the daemon to answer
//! again), so that an upgrade of the daemon does not break the pods' volumes.

use std::path::{Path, PathBuf};

use locus_csi::Mounter;

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
    async fn mount(
        &self,
        uri: &str,
        target: &Path,
        include: &[String],
        exclude: &[String],
    ) -> Result<(), String> {
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.arg("mount")
            .arg(uri)
            .arg(target)
            .arg("--socket")
            .arg(&self.socket)
            // Pods read it as whatever user their containers run as.
            .arg("--allow-other");
        for g in include {
            cmd.arg("--include").arg(g);
        }
        for g in exclude {
            cmd.arg("--exclude").arg(g);
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
