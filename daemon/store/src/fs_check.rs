//! What the file system under the cache costs it, looked at once at start for the log.
//!
//! ext4 without a journal skips every inode freed in the last minutes when it makes a new one,
//! reading each one's inode block: right after a cache evicted (or an operator removed) many
//! small files, each new cached file costs several times as much CPU. Measured
//! (docs/benchmarks.md, "The cache's file system"): a warm of 30,000 small files 13.3 s on a
//! fresh ext4 without a journal, a median 25.6 s right after 30,000 others were removed from
//! it; 12.6–13.0 s either way with a journal.

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
    notes_for(
        libc::major(dev),
        libc::minor(dev),
        Path::new("/sys"),
        Path::new("/proc"),
    )
}

/// The same for device `major:minor`, with `sys` and `proc` where sysfs and procfs are.
fn notes_for(major: u32, minor: u32, sys: &Path, proc: &Path) -> Vec<FsNote> {
    // The block device's kernel name (`vda`, `nvme0n1p2`, `dm-0`); none for a file system
    // without one (tmpfs, overlayfs, btrfs's anonymous devices).
    let Some(device) = std::fs::read_link(sys.join(format!("dev/block/{major}:{minor}")))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
    else {
        return Vec::new();
    };
    // ext4 shows each mounted file system in sysfs by its device's name, with its journal's
    // thread (`<none>` without one; an external journal has one too).
    let fs = sys.join("fs/ext4").join(&device);
    if !fs.is_dir() {
        return Vec::new();
    }
    let journal = match std::fs::read_to_string(fs.join("journal_task")) {
        Ok(task) => task.trim() != "<none>",
        // Kernels before `journal_task`: jbd2 lists each journal as `DEVICE-INODE`.
        Err(_) => match std::fs::read_dir(proc.join("fs/jbd2")) {
            Ok(dir) => dir.flatten().any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .strip_prefix(device.as_str())
                    .is_some_and(|rest| rest.starts_with('-'))
            }),
            // No jbd2 in /proc to tell: nothing to say.
            Err(_) => true,
        },
    };
    match journal {
        true => Vec::new(),
        false => vec![FsNote::Ext4WithoutJournal { device }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake sysfs and procfs: device 253:0 is `vda`; `ext4` mounts it as ext4; `journals`
    /// are jbd2's entries; `task`, what `journal_task` says (none: no such attribute).
    fn roots(ext4: bool, journals: &[&str], task: Option<&str>) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path().join("sys");
        std::fs::create_dir_all(sys.join("dev/block")).unwrap();
        std::fs::create_dir_all(sys.join("devices/virtual/block/vda")).unwrap();
        std::os::unix::fs::symlink(
            "../../devices/virtual/block/vda",
            sys.join("dev/block/253:0"),
        )
        .unwrap();
        std::fs::create_dir_all(sys.join("fs/ext4")).unwrap();
        if ext4 {
            std::fs::create_dir_all(sys.join("fs/ext4/vda")).unwrap();
            if let Some(task) = task {
                std::fs::write(sys.join("fs/ext4/vda/journal_task"), format!("{task}\n")).unwrap();
            }
        }
        std::fs::create_dir_all(t.path().join("proc/fs/jbd2")).unwrap();
        for j in journals {
            std::fs::create_dir_all(t.path().join("proc/fs/jbd2").join(j)).unwrap();
        }
        t
    }

    fn check(t: &tempfile::TempDir, major: u32, minor: u32) -> Vec<FsNote> {
        notes_for(major, minor, &t.path().join("sys"), &t.path().join("proc"))
    }

    #[test]
    fn ext4_without_a_journal_is_noted_and_with_one_is_not() {
        let vda = vec![FsNote::Ext4WithoutJournal {
            device: "vda".into(),
        }];
        // What the kernel says: `journal_task` (an external journal has a task too), whatever
        // jbd2's entries are.
        let none = roots(true, &["vda-8"], Some("<none>"));
        assert_eq!(check(&none, 253, 0), vda);
        let told = check(&none, 253, 0)[0].to_string();
        assert!(told.contains("without a journal (vda)"), "{told}");
        assert_eq!(check(&roots(true, &[], Some("4242")), 253, 0), vec![]);
        // Older kernels: jbd2's entries, by the device's name.
        assert_eq!(check(&roots(true, &["vdb-8", "vda1-8"], None), 253, 0), vda);
        assert_eq!(
            check(&roots(true, &["vdb-8", "vda-8"], None), 253, 0),
            vec![]
        );
    }

    #[test]
    fn other_file_systems_and_unknown_devices_are_not_noted() {
        let not_ext4 = roots(false, &[], Some("<none>"));
        assert_eq!(check(&not_ext4, 253, 0), vec![]);
        // No block device behind it (tmpfs, overlayfs).
        assert_eq!(check(&not_ext4, 0, 42), vec![]);
        let t = roots(true, &[], None);
        std::fs::remove_dir_all(t.path().join("proc/fs/jbd2")).unwrap();
        // Neither `journal_task` nor jbd2 in /proc: it cannot tell.
        assert_eq!(check(&t, 253, 0), vec![]);
    }

    #[test]
    fn the_real_check_finds_no_block_device_behind_procfs_or_a_missing_folder() {
        // procfs has an anonymous device (0:N): no /sys/dev/block entry.
        assert_eq!(notes(Path::new("/proc/self")), vec![]);
        let t = tempfile::tempdir().unwrap();
        assert_eq!(notes(&t.path().join("missing")), vec![]);
    }
}
