//! What the file system under the cache costs it, looked at once at start for the log.
//!
//! ext4 without a journal skips every inode freed in the last minutes when it makes a new one,
//! reading each one's inode block: right after a cache evicted (or an operator removed) many
//! small files, each new cached file costs several times as much CPU. Measured
//! (docs/benchmarks.md, "The cache's file system"): a warm of 30,000 small files 12.7 s on a
//! fresh ext4 without a journal, a median 28.2 s right after 30,000 others were removed from
//! it; 12.7–13.4 s either way with a journal.

use std::path::Path;

/// A property of the cache's file system that costs the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FsNote {
    /// ext4 with no journal, on block device `device`.
    Ext4WithoutJournal { device: String },
}

impl std::fmt::Display for FsNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsNote::Ext4WithoutJournal { device } => write!(
                f,
                "the cache is on ext4 without a journal ({device}): for minutes after files \
                 are removed, each new cached file costs several times the CPU (ext4 skips \
                 recently freed inodes); a journaled ext4 (mkfs.ext4's default) or XFS does not"
            ),
        }
    }
}

/// Notes on the file system that holds `dir` (none where it cannot tell).
pub fn notes(dir: &Path) -> Vec<FsNote> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(dir) else {
        return Vec::new();
    };
    let dev = meta.dev();
    notes_for(libc::major(dev), libc::minor(dev), Path::new("/sys"))
}

/// The same for device `major:minor`, with sysfs at `sys`.
fn notes_for(major: u32, minor: u32, sys: &Path) -> Vec<FsNote> {
    // The block device's kernel name (`vda`, `nvme0n1p2`, `dm-0`); none for a file system
    // without one (tmpfs, overlayfs, btrfs's anonymous devices).
    let Some(device) = std::fs::read_link(sys.join(format!("dev/block/{major}:{minor}")))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
    else {
        return Vec::new();
    };
    // ext4 (and ext2 or ext3 through its driver) shows each mounted file system in sysfs by
    // its device's name, with its journal's thread (`<none>` without one; an external journal
    // has one too).
    let fs = sys.join("fs/ext4").join(&device);
    if !fs.is_dir() {
        return Vec::new();
    }
    // Kernels without `journal_task` say nothing here: jbd2's own entries name
    // an external journal by its device, which cannot be told from another file system's.
    match std::fs::read_to_string(fs.join("journal_task")) {
        Ok(task) if task.trim() == "<none>" => vec![FsNote::Ext4WithoutJournal { device }],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake sysfs: device 253:0 is `vda`, 259:2 the partition `nvme0n1p2`; each of `ext4`
    /// is mounted as ext4 and its `journal_task` says `task` (none: no such attribute).
    fn sysfs(ext4: &[&str], task: Option<&str>) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let links = [
            ("253:0", "../../devices/virtual/block/vda"),
            (
                "259:2",
                "../../devices/pci0000:00/nvme/nvme0/nvme0n1/nvme0n1p2",
            ),
        ];
        std::fs::create_dir_all(t.path().join("dev/block")).unwrap();
        for (dev, target) in links {
            std::os::unix::fs::symlink(target, t.path().join("dev/block").join(dev)).unwrap();
        }
        std::fs::create_dir_all(t.path().join("fs/ext4")).unwrap();
        for name in ext4 {
            let dir = t.path().join("fs/ext4").join(name);
            std::fs::create_dir_all(&dir).unwrap();
            if let Some(task) = task {
                std::fs::write(dir.join("journal_task"), format!("{task}\n")).unwrap();
            }
        }
        t
    }

    #[test]
    fn ext4_without_a_journal_is_noted_and_with_one_is_not() {
        let none = sysfs(&["vda", "nvme0n1p2"], Some("<none>"));
        let notes = notes_for(253, 0, none.path());
        assert_eq!(
            notes,
            vec![FsNote::Ext4WithoutJournal {
                device: "vda".into()
            }]
        );
        let told = notes[0].to_string();
        assert!(told.contains("without a journal (vda)"), "{told}");
        // A partition: its own name, as in /sys/fs/ext4.
        assert_eq!(
            notes_for(259, 2, none.path()),
            vec![FsNote::Ext4WithoutJournal {
                device: "nvme0n1p2".into()
            }]
        );
        // A journal (internal or external) has a thread.
        let journaled = sysfs(&["vda"], Some("4242"));
        assert_eq!(notes_for(253, 0, journaled.path()), vec![]);
    }

    #[test]
    fn other_file_systems_unknown_devices_and_older_kernels_are_not_noted() {
        // Device 253:0 mounted as something else (XFS, btrfs on a block device).
        assert_eq!(
            notes_for(253, 0, sysfs(&["sdb"], Some("<none>")).path()),
            vec![]
        );
        // No block device behind it (tmpfs, overlayfs).
        assert_eq!(
            notes_for(0, 42, sysfs(&["vda"], Some("<none>")).path()),
            vec![]
        );
        // A kernel without `journal_task`: it cannot tell.
        assert_eq!(notes_for(253, 0, sysfs(&["vda"], None).path()), vec![]);
    }

    #[test]
    fn the_real_check_finds_no_block_device_behind_procfs_or_a_missing_folder() {
        // procfs has an anonymous device (0:N): no /sys/dev/block entry.
        assert_eq!(notes(Path::new("/proc/self")), vec![]);
        let t = tempfile::tempdir().unwrap();
        assert_eq!(notes(&t.path().join("missing")), vec![]);
    }
}
