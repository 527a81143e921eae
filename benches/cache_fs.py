#!/usr/bin/env python3
"""The cache's file system: a warm of small files after others were removed (issue #17).

ext4 without a journal does not reuse an inode freed in the last minutes: each new inode skips
them, reading each one's inode block. A cache that evicts small files and caches new ones (or
a warm right after an operator removed a data set) then pays for every file it creates. This
bench makes two file systems of the same size on loop devices, ext4 with a journal (mkfs.ext4's
default) and ext4 without one, and on each warms the same N small files (the training
bench's data set: 10-100 KB, S3 with 20 ms a request, the daemon at --concurrency 64) several
times in a row, each run's cache removed right before the next run starts. Reported per file
system: each run's time and the daemon's CPU, and the ratio of the later runs to the first.

Run as root from the repository root after `cargo build --release --workspace` (needs
`mkfs.ext4` and loop devices):
    python3 benches/cache_fs.py [--files 30000] [--runs 3] [--size-gb 8]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("LOCUS_PROFILE", "release")
from training import BUCKET, PREFIX, sim_origin  # noqa: E402
from origins import Daemon, binary, loop_ext4, unmount  # noqa: E402
from fuse_scale import cpu_seconds as cpu  # noqa: E402


def make_fs(work: Path, name: str, size_gb: int, journal: bool) -> Path:
    return loop_ext4(work / f"{name}.img", work / name, size_gb << 30, journal)


def drop_fs(mnt: Path):
    """Unmounts `mnt` and removes its image."""
    unmount(mnt)
    mnt.with_suffix(".img").unlink(missing_ok=True)


def warm(root: Path, run: int, url: str):
    """One warm of the data set into a fresh cache under `root`: (seconds, daemon CPU seconds)."""
    d = Daemon(root, f"run{run}", extra=["--s3-endpoint", url, "--cache-size", "64GiB", "--concurrency", "64"])
    try:
        c0, t0 = cpu(d.proc.pid), time.time()
        subprocess.run([binary("locus"), "--socket", d.socket, "warm", f"s3://{BUCKET}/{PREFIX}"],
                       env=d.env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        el, c = time.time() - t0, cpu(d.proc.pid) - c0
    finally:
        d.close()
    return el, c


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=30_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size-gb", type=int, default=8)
    args = ap.parse_args()
    if args.files * 55_000 * 1.2 > (args.size_gb << 30):
        sys.exit(f"{args.files} files need more than {args.size_gb} GB: raise --size-gb")
    print(f"machine: {os.cpu_count()} cores; {os.uname().release}; files {args.files}; runs {args.runs}",
          flush=True)
    work = Path(tempfile.mkdtemp(prefix="locus-cache-fs-", dir=os.environ.get("TMPDIR", "/var/tmp")))
    # One image at a time, filled up to the data set's size once (discard gives back the rest).
    if shutil.disk_usage(work).free < args.files * 55_000 * 1.5:
        shutil.rmtree(work, ignore_errors=True)
        sys.exit(f"{work}: not enough free disk for the images")
    sim = None
    mounts = []
    results = {}
    try:
        sim, _, url = sim_origin(args.files, 20, 0)
        for name, journal in [("journal", True), ("no-journal", False)]:
            mnt = make_fs(work, name, args.size_gb, journal)
            mounts.append(mnt)
            runs = []
            results[name] = runs
            for r in range(args.runs):
                if r > 0:
                    # The last run's cache goes right before this one starts.
                    shutil.rmtree(mnt / f"run{r - 1}")
                el, c = warm(mnt, r, url)
                runs.append((el, c))
                print(f"ext4 {name:10s} run {r}: warm {el:6.1f} s ({args.files / el:5.0f} files/s), "
                      f"daemon CPU {c:5.1f} s{'' if r else '  (fresh file system)'}", flush=True)
            drop_fs(mounts.pop())
    finally:
        for m in mounts:
            drop_fs(m)
        if sim:
            sim.kill()
            sim.wait()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n## A warm of {args.files} small files, fresh and right after the last one's files were removed")
    for name, runs in results.items():
        later = [el for el, _ in runs[1:]]
        later_cpu = [c for _, c in runs[1:]]
        if not later:
            continue
        print(f"ext4 {name:10s} fresh {runs[0][0]:6.1f} s (CPU {runs[0][1]:5.1f} s); after a removal median "
              f"{statistics.median(later):6.1f} s (CPU {statistics.median(later_cpu):5.1f} s): "
              f"{statistics.median(later) / runs[0][0]:.2f}x the time, "
              f"{statistics.median(later_cpu) / max(runs[0][1], 1e-9):.2f}x the CPU")


if __name__ == "__main__":
    main()
