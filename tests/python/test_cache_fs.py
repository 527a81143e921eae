"""What the daemon says at start about the cache's file system (real ext4 file systems on loop
devices: made with and without a journal)."""

from pathlib import Path

import pytest

from origins import Daemon, cleanup, loop_ext4, unmount

WARNING = "the cache is on ext4 without a journal"


@pytest.fixture
def workdir(tmp_path):
    yield tmp_path
    cleanup(tmp_path)


def ext4(workdir: Path, name: str, journal: bool) -> Path:
    return loop_ext4(workdir / f"{name}.img", workdir / name, 64 << 20, journal)


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
            unmount(m)
