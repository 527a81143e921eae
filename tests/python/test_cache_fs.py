"""What the daemon says at start about the cache's file system (real ext4 file systems on loop
devices: made with and without a journal)."""

import subprocess
import time
from pathlib import Path

import pytest

from origins import Daemon, cleanup

WARNING = "the cache is on ext4 without a journal"


@pytest.fixture
def workdir(tmp_path):
    yield tmp_path
    cleanup(tmp_path)


def ext4(workdir: Path, name: str, journal: bool) -> Path:
    img, mnt = workdir / f"{name}.img", workdir / name
    with open(img, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", *([] if journal else ["-O", "^has_journal"]), str(img)],
                   check=True)
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True)
    return mnt


def log_after_start(root: Path) -> str:
    d = Daemon(root, "node")
    try:
        # The warning comes before "ready", which the daemon has logged by now.
        return d.log_path.read_text()
    finally:
        d.close()


def test_a_cache_on_ext4_without_a_journal_is_told_at_start_and_with_one_is_not(workdir):
    mounts = []
    try:
        bare = ext4(workdir, "bare", journal=False)
        mounts.append(bare)
        log = log_after_start(bare)
        assert WARNING in log, log
        assert "(loop" in log, log
        journaled = ext4(workdir, "journaled", journal=True)
        mounts.append(journaled)
        log = log_after_start(journaled)
        assert "ready" in log and WARNING not in log, log
    finally:
        for m in mounts:
            for _ in range(20):
                if subprocess.run(["umount", str(m)], capture_output=True).returncode == 0:
                    break
                time.sleep(0.1)
