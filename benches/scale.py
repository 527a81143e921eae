#!/usr/bin/env python3
"""Scale (issue #17): listings of synthetic datasets of growing size, two builds side by side.

For each size N, the test Hub serves `datasets/bench/nN`: N files of 100-200 bytes, a thousand
per folder, generated from their names (`locus-test-origin --generated`). With each build, a
fresh daemon:

  1. `locus ls hf://datasets/bench/nN --json` cold (the daemon lists the Hub, N/1000 pages),
     then again (from the daemon's metadata): wall time, files seen, or the error;
  2. `locus cat` of one file of the dataset, 20 times: the median, which shows whether the
     listing is kept in memory or read again on each open;
  3. `locus mount` of the whole dataset, then a read of one file deep in it: the time from the
     mount command to that file's bytes (cold: the mount's first listing included, the
     daemon's listing already made by step 1), and the mount process's peak RSS;
  4. the daemon's peak RSS (VmHWM).

The Hub comes from `--origin` (a build with `--generated`); the `locus` binaries from `--a` and
`--b` (release folders). Run from the repository root:

    python3 benches/scale.py --a OLD/release --b NEW/release [--sizes 100000,300000,1000000]
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def start_origin(bin_dir, sizes):
    args = [str(bin_dir / "locus-test-origin"), "--lfs-threshold", "1MiB"]
    for n in sizes:
        args += ["--generated", f"datasets/bench/n{n}={n}x100-200"]
    started = time.time()
    p = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline().strip()
    if not line.startswith("ready "):
        sys.exit(f"test origin did not start: {line!r}")
    print(f"test Hub ready with {', '.join(map(str, sizes))} files in {time.time() - started:.1f} s")
    return p, line.split(" ", 1)[1]


def peak_rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def mount_first_file(bin_dir, sock, uri, work, name):
    """Seconds from `locus mount` to one file's bytes, and the mount process's peak RSS."""
    mnt = Path(tempfile.mkdtemp(dir=work))
    t = time.time()
    r = subprocess.run([str(bin_dir / "locus"), "--socket", str(sock), "mount", uri, str(mnt)],
                       capture_output=True, timeout=1800)
    if r.returncode != 0:
        return f"mount failed: {r.stderr.decode().strip()[:160]}", "-"
    try:
        (mnt / name).read_bytes()
        secs = time.time() - t
        pid = subprocess.run(["pgrep", "-f", f"mount {uri} {mnt}"], capture_output=True,
                             text=True).stdout.split()
        rss = f"{peak_rss_mib(int(pid[0])):.0f} MiB" if pid else "?"
        return f"{secs:.2f} s", rss
    finally:
        subprocess.run([str(bin_dir / "locus"), "unmount", str(mnt)], capture_output=True, timeout=120)


def one(bin_dir, url, n, work):
    d = Path(tempfile.mkdtemp(dir=work))
    sock = d / "locus.sock"
    env = dict(os.environ, HF_ENDPOINT=url, HF_TOKEN_PATH=str(d / "none"))
    env.pop("HF_TOKEN", None)
    log = open(d / "daemon.log", "w")
    p = subprocess.Popen([str(bin_dir / "locus"), "daemon", "--cache-dir", str(d / "cache"), "--socket", str(sock)],
                         stdout=subprocess.DEVNULL, stderr=log, env=env)
    deadline = time.time() + 30
    while "ready" not in (d / "daemon.log").read_text():
        if p.poll() is not None or time.time() > deadline:
            sys.exit("daemon failed: " + (d / "daemon.log").read_text())
        time.sleep(0.02)
    uri = f"hf://datasets/bench/n{n}"
    out = {}
    try:
        for what in ("cold", "again"):
            t = time.time()
            r = subprocess.run([str(bin_dir / "locus"), "--socket", str(sock), "ls", uri, "--json"],
                               capture_output=True, timeout=1800)
            secs = time.time() - t
            if r.returncode == 0:
                files = len(json.loads(r.stdout)["files"])
                out[what] = f"{secs:.2f} s ({files} files)"
            else:
                out[what] = f"failed after {secs:.2f} s: {r.stderr.decode().strip()[:160]}"
        cats = []
        for _ in range(20):
            t = time.time()
            r = subprocess.run([str(bin_dir / "locus"), "--socket", str(sock), "cat", f"{uri}/0000/00000007.bin"],
                               capture_output=True, timeout=600)
            cats.append(time.time() - t)
            if r.returncode != 0:
                out["cat"] = "failed: " + r.stderr.decode().strip()[:160]
                break
        else:
            out["cat"] = f"median {statistics.median(cats) * 1000:.1f} ms"
        name = f"{(n - 7) // 1000:04}/{n - 7:08}.bin"
        out["mount"], out["mount_rss"] = mount_first_file(bin_dir, sock, uri, d, name)
        out["rss"] = f"{peak_rss_mib(p.pid):.0f} MiB"
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=60)
        log.close()
        # A listing of millions of files leaves an index of gigabytes: gone before the next run.
        shutil.rmtree(d, ignore_errors=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True, type=Path, help="the first build's release folder")
    ap.add_argument("--b", required=True, type=Path, help="the second build's release folder")
    ap.add_argument("--origin", type=Path, default=Path("target/release"), help="a build with --generated")
    ap.add_argument("--sizes", default="100000,300000,1000000")
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    print(f"machine: {os.cpu_count()} cores; {os.uname().release}; a = {a.a}; b = {a.b}")
    origin, url = start_origin(a.origin, sizes)
    work = Path(tempfile.mkdtemp(prefix="locus-scale-"))
    try:
        for n in sizes:
            print(f"\n## {n} files")
            for name, bin_dir in (("a", a.a), ("b", a.b)):
                r = one(bin_dir, url, n, work)
                print(f"{name}  ls cold {r['cold']}; ls again {r['again']}; cat of one file {r['cat']}; "
                      f"mount to first file {r['mount']} (mount peak RSS {r['mount_rss']}); "
                      f"daemon peak RSS {r['rss']}")
    finally:
        origin.send_signal(signal.SIGINT)
        origin.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
