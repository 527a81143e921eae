#!/usr/bin/env python3
"""FUSE benchmarks, against the same bytes on local disk, in one run.

  1. Sequential read of a cached 1 GiB file through the mount (first read, then a second read
     served from the kernel's page cache), against `cat` of a native copy in the page cache.
  2. 48 threads reading 3,000 cached 10 KB files through a fresh mount, against the native copies.
  3. Time to first byte of an uncached 1 GiB file through the mount, and its full read time,
     against `locus warm` of the same file on a fresh cache.

Run as root from the repository root after `cargo build --release --workspace`:
    python3 benches/fuse.py [--runs 5]
"""

import argparse
import concurrent.futures
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from single_node import BIN, Daemon, start_origin  # noqa: E402

MB = 1_000_000


def mount(d, uri, mnt):
    mnt.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(BIN / "locus"), "mount", uri, str(mnt), "--socket", str(d.socket)], check=True,
                   stdout=subprocess.DEVNULL)


def unmount(mnt):
    subprocess.run([str(BIN / "locus"), "unmount", str(mnt)], check=False, stderr=subprocess.DEVNULL)


def timed(cmd):
    t0 = time.perf_counter()
    subprocess.run(cmd, shell=True, check=True)
    return time.perf_counter() - t0


def cpu_seconds(mnt):
    """User + system CPU seconds of the process serving the mount at `mnt`."""
    pid = subprocess.run(["pgrep", "-f", f"{mnt} --foreground"], capture_output=True, text=True).stdout.split()[0]
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_all(paths, threads):
    def one(p):
        with open(p, "rb") as f:
            return len(f.read())
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as ex:
        n = sum(ex.map(one, paths))
    return time.perf_counter() - t0, n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="locus-fuse-bench-"))
    print(f"machine: {os.cpu_count()} cores; {os.uname().release}; runs: {a.runs}")
    try:
        # 1. sequential 1 GiB
        origin, url = start_origin("--random", "bench/big=1x1GiB")
        d = Daemon(url, work)
        d.locus("warm", "hf://bench/big")
        native = work / "native.bin"
        with open(native, "wb") as f:
            d.locus("cat", "hf://bench/big/shard-00000.bin", stdout=f)
        timed(f"cat {native} > /dev/null")
        first, second, nat = [], [], []
        for i in range(a.runs):
            mnt = work / f"mnt{i}"
            mount(d, "hf://bench/big", mnt)
            first.append(timed(f"cat {mnt}/shard-00000.bin > /dev/null"))
            second.append(timed(f"cat {mnt}/shard-00000.bin > /dev/null"))
            nat.append(timed(f"cat {native} > /dev/null"))
            unmount(mnt)
        size = native.stat().st_size
        print("\n## sequential read of a cached 1 GiB file (cat > /dev/null)")
        print(f"native (page cache)   median {statistics.median(nat):.3f} s ({size / statistics.median(nat) / MB:.0f} MB/s)")
        print(f"mount, first read     median {statistics.median(first):.3f} s ({size / statistics.median(first) / MB:.0f} MB/s); "
              f"speed ratio {statistics.median(n / f for n, f in zip(nat, first)):.2f} (goal >= 0.5)")
        print(f"mount, second read    median {statistics.median(second):.3f} s ({size / statistics.median(second) / MB:.0f} MB/s); "
              f"speed ratio {statistics.median(n / s for n, s in zip(nat, second)):.2f} (goal >= 0.9)")
        d.stop()
        origin.terminate()
        origin.wait()
        native.unlink()

        # 2. 48 threads x 3000 x 10 KB
        src = work / "small"
        for i in range(3000):
            p = src / f"d{i % 30}" / f"f{i}.bin"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(os.urandom(10_000))
        origin, url = start_origin("--repo", f"datasets/bench/small={src}", "--lfs-threshold", "1MiB")
        d = Daemon(url, work)
        d.locus("warm", "hf://datasets/bench/small")
        rels = [p.relative_to(src) for p in src.rglob("*.bin")]
        read_all([src / r for r in rels], 48)
        fuse_t, fuse2_t, nat_t, cpu_t = [], [], [], []
        for i in range(a.runs):
            mnt = work / f"smnt{i}"
            mount(d, "hf://datasets/bench/small", mnt)
            c0 = cpu_seconds(mnt)
            t, n = read_all([mnt / r for r in rels], 48)
            cpu_t.append(cpu_seconds(mnt) - c0)
            assert n == 3000 * 10_000
            fuse_t.append(t)
            nat_t.append(read_all([src / r for r in rels], 48)[0])
            fuse2_t.append(read_all([mnt / r for r in rels], 48)[0])
            unmount(mnt)
        print("\n## 48 threads reading 3,000 cached 10 KB files (fresh mount each run)")
        print(f"native  median {statistics.median(nat_t):.3f} s ({3000 / statistics.median(nat_t):.0f} files/s)")
        print(f"mount   median {statistics.median(fuse_t):.3f} s ({3000 / statistics.median(fuse_t):.0f} files/s); "
              f"rate ratio {statistics.median(n / f for n, f in zip(nat_t, fuse_t)):.2f} (goal >= 0.5); "
              f"mount process CPU {statistics.median(cpu_t):.2f} s")
        print(f"mount, second pass median {statistics.median(fuse2_t):.3f} s ({3000 / statistics.median(fuse2_t):.0f} files/s); "
              f"rate ratio {statistics.median(n / f for n, f in zip(nat_t, fuse2_t)):.2f}")
        d.stop()
        origin.terminate()
        origin.wait()

        # 3. uncached 1 GiB: time to first byte and full read, vs warm
        origin, url = start_origin("--random", "bench/big=1x1GiB")
        ttfb, full, warm = [], [], []
        for i in range(a.runs):
            d = Daemon(url, work)
            mnt = work / f"umnt{i}"
            mount(d, "hf://bench/big", mnt)
            t0 = time.perf_counter()
            with open(mnt / "shard-00000.bin", "rb") as f:
                f.read(4096)
                ttfb.append(time.perf_counter() - t0)
                while f.read(1 << 20):
                    pass
            full.append(time.perf_counter() - t0)
            unmount(mnt)
            d.stop()
            d = Daemon(url, work)
            t0 = time.perf_counter()
            d.locus("warm", "hf://bench/big")
            warm.append(time.perf_counter() - t0)
            d.stop()
        origin.terminate()
        origin.wait()
        print("\n## uncached 1 GiB file through the mount (local unthrottled origin)")
        print(f"time to first byte    median {statistics.median(ttfb) * 1e3:.1f} ms")
        print(f"full read             median {statistics.median(full):.2f} s")
        print(f"locus warm            median {statistics.median(warm):.2f} s; read / warm ratio "
              f"{statistics.median(f / w for f, w in zip(full, warm)):.2f}")
    finally:
        for m in work.glob("*mnt*"):
            unmount(m)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
