#!/usr/bin/env python3
"""The daemon's own namespace view (`locus daemon --mount DIR`), two builds side by side.

Reads 2,000 files of 10 KB of a dataset through DIR/hf/datasets/bench/small/ with 16 threads:

  1. cold: nothing cached; every file's first read asks the daemon for its chunks (the call
     the mount makes through the local API), which fetches them from the test Hub;
  2. cached: after `locus warm`, on a fresh daemon (the listing carries where each file is).

Each run starts a fresh daemon and mount; the builds take turns. Run as root from the
repository root, with the two builds' `release` folders (each holding `locus` and
`locus-test-origin`):

    python3 benches/daemon_mount.py --a OLD/release --b NEW/release [--runs 5]
"""

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuse import read_all  # noqa: E402

FILES = 2000


def start_origin(bin_dir, src):
    p = subprocess.Popen([str(bin_dir / "locus-test-origin"), "--repo", f"datasets/bench/small={src}",
                          "--lfs-threshold", "1MiB"], stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline().strip()
    if not line.startswith("ready "):
        sys.exit(f"test origin did not start: {line!r}")
    return p, line.split(" ", 1)[1]


def daemon(bin_dir, url, work, mnt, warm):
    d = Path(tempfile.mkdtemp(dir=work))
    sock = d / "locus.sock"
    log = open(d / "daemon.log", "w")
    env = dict(os.environ, HF_ENDPOINT=url, HF_TOKEN_PATH=str(d / "none"))
    env.pop("HF_TOKEN", None)
    cache = d / "cache"
    if warm:
        # Fill the cache with a daemon of its own, so the measured one starts fresh on it.
        p = subprocess.Popen([str(bin_dir / "locus"), "daemon", "--cache-dir", str(cache), "--socket", str(sock)],
                             stdout=subprocess.DEVNULL, stderr=log, env=env)
        wait_ready(d, p)
        subprocess.run([str(bin_dir / "locus"), "warm", "hf://datasets/bench/small", "--socket", str(sock)],
                       check=True, stdout=subprocess.DEVNULL)
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
        log.truncate(0)
        log.seek(0)
    p = subprocess.Popen([str(bin_dir / "locus"), "daemon", "--cache-dir", str(cache), "--socket", str(sock),
                          "--mount", str(mnt)], stdout=subprocess.DEVNULL, stderr=log, env=env)
    wait_ready(d, p)
    return p, d


def wait_ready(d, p):
    deadline = time.time() + 30
    while "ready" not in (d / "daemon.log").read_text():
        if p.poll() is not None or time.time() > deadline:
            sys.exit("daemon failed: " + (d / "daemon.log").read_text())
        time.sleep(0.02)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True, type=Path, help="the first build's release folder")
    ap.add_argument("--b", required=True, type=Path, help="the second build's release folder")
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="locus-dmount-bench-"))
    print(f"machine: {os.cpu_count()} cores; {os.uname().release}; runs: {a.runs}; a = {a.a}; b = {a.b}")
    try:
        src = work / "small"
        for i in range(FILES):
            p = src / f"d{i % 20}" / f"f{i}.bin"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(os.urandom(10_000))
        rels = [p.relative_to(src) for p in src.rglob("*.bin")]
        origin, url = start_origin(a.a, src)
        times = {(b, w): [] for b in "ab" for w in (False, True)}
        for i in range(a.runs):
            for warm in (False, True):
                # Alternate which build goes first.
                for which in ("ab" if i % 2 == 0 else "ba"):
                    bin_dir = a.a if which == "a" else a.b
                    mnt = work / f"m-{which}-{i}-{warm}"
                    mnt.mkdir()
                    p, d = daemon(bin_dir, url, work, mnt, warm)
                    root = mnt / "hf" / "datasets" / "bench" / "small"
                    t, n = read_all([root / r for r in rels], 16)
                    assert n == FILES * 10_000, n
                    times[(which, warm)].append(t)
                    p.send_signal(signal.SIGTERM)
                    p.wait(timeout=30)
                    shutil.rmtree(d, ignore_errors=True)
        for warm in (False, True):
            ta, tb = times[("a", warm)], times[("b", warm)]
            label = "cached" if warm else "cold"
            print(f"\n## {label}: 16 threads reading {FILES} files of 10 KB through `daemon --mount`")
            print(f"a  median {statistics.median(ta):.3f} s ({FILES / statistics.median(ta):.0f} files/s)  {['%.3f' % t for t in ta]}")
            print(f"b  median {statistics.median(tb):.3f} s ({FILES / statistics.median(tb):.0f} files/s)  {['%.3f' % t for t in tb]}")
            print(f"b/a rate ratio: median {statistics.median(x / y for x, y in zip(ta, tb)):.2f}")
        origin.terminate()
        origin.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
