#!/usr/bin/env python3
"""Single-node benchmarks of locus, side by side with the peers, in one run.

  1. Cold `locus warm` of a 3-file, 384 MiB repo from an origin throttled to 12 MB/s per
     connection, against hf_transfer (max_files=16) fetching the same files from the same origin.
  2. `locus cat` of a cached 1 GiB file against `cat` of the same bytes from a local file.
  3. Peak RSS of the daemon while warming a 1 GiB file.
  4. (--chunk-sweep) warm time and cat speed by chunk size, the measurement behind the default.

Run from the repository root after `cargo build --release --workspace`:
    python3 benches/single_node.py [--runs 5] [--chunk-sweep]
Medians and ratios are printed; runs of the two sides alternate (A B A B ...) so drift hits both.
"""

import argparse
import http.client
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"
MB = 1_000_000
MiB = 1 << 20


def start_origin(*args):
    p = subprocess.Popen([str(BIN / "locus-test-origin"), *args], stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline().strip()
    if not line.startswith("ready "):
        sys.exit(f"test origin did not start: {line!r}")
    return p, line.split(" ", 1)[1]


class Daemon:
    def __init__(self, hub_url, work, *flags):
        self.dir = Path(tempfile.mkdtemp(dir=work))
        self.socket = self.dir / "locus.sock"
        self.log = open(self.dir / "daemon.log", "w")
        env = dict(os.environ, HF_ENDPOINT=hub_url, HF_TOKEN_PATH=str(self.dir / "none"))
        env.pop("HF_TOKEN", None)
        self.proc = subprocess.Popen(
            [str(BIN / "locus"), "daemon", "--cache-dir", str(self.dir / "cache"), "--cache-size", "8GiB",
             "--socket", str(self.socket), *flags],
            stdout=subprocess.DEVNULL, stderr=self.log, env=env)
        deadline = time.time() + 30
        while "ready" not in (self.dir / "daemon.log").read_text():
            if self.proc.poll() is not None or time.time() > deadline:
                sys.exit("daemon failed: " + (self.dir / "daemon.log").read_text())
            time.sleep(0.02)

    def locus(self, *args, stdout=subprocess.DEVNULL):
        return subprocess.run([str(BIN / "locus"), *args, "--socket", str(self.socket)], stdout=stdout,
                              stderr=subprocess.PIPE, check=True)

    def peak_rss(self):
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


def cdn_url(hub_url, repo, path):
    """What huggingface_hub does before handing a URL to hf_transfer: HEAD, keep the redirect."""
    u = urllib.parse.urlparse(hub_url)
    c = http.client.HTTPConnection(u.hostname, u.port)
    c.request("HEAD", f"/{repo}/resolve/main/{path}")
    r = c.getresponse()
    size = int(r.getheader("x-linked-size") or r.getheader("content-length"))
    return r.getheader("location") or f"{hub_url}/{repo}/resolve/main/{path}", size


def median(xs):
    return statistics.median(xs)


def fmt_rate(nbytes, secs):
    return f"{nbytes / secs / MB:.0f} MB/s"


def bench_warm(work, runs, throttle, chunk_flags=(), label="locus warm", delay_ms=0):
    import hf_transfer

    origin, url = start_origin("--random", "bench/model=3x128MiB", "--throttle", str(throttle),
                               "--delay-ms", str(delay_ms))
    files = [f"shard-{i:05}.bin" for i in range(3)]
    total = 3 * 128 * MiB
    conns = 16
    limit = conns * throttle
    t_locus, t_hft, rss = [], [], []
    try:
        for _ in range(runs):
            d = Daemon(url, work, "--concurrency", str(conns), *chunk_flags)
            t0 = time.perf_counter()
            d.locus("warm", "hf://bench/model")
            t_locus.append(time.perf_counter() - t0)
            rss.append(d.peak_rss())
            d.stop()

            out = Path(tempfile.mkdtemp(dir=work))
            t0 = time.perf_counter()
            for f in files:
                loc, _size = cdn_url(url, "bench/model", f)
                hf_transfer.download(url=loc, filename=str(out / f), max_files=conns, chunk_size=10 * MiB)
            t_hft.append(time.perf_counter() - t0)
            shutil.rmtree(out)
    finally:
        origin.terminate()
        origin.wait()
    ratios = [a / b for a, b in zip(t_locus, t_hft)]
    return {
        "label": label,
        "locus_s": median(t_locus),
        "hf_transfer_s": median(t_hft),
        "ratio": median(ratios),
        "locus_rate": fmt_rate(total, median(t_locus)),
        "hft_rate": fmt_rate(total, median(t_hft)),
        "locus_of_limit": total / median(t_locus) / limit,
        "hft_of_limit": total / median(t_hft) / limit,
        "limit": f"{conns} x {throttle / MB:.0f} MB/s = {limit / MB:.0f} MB/s",
        "peak_rss": max(rss),
        "runs": runs,
    }


def bench_cat_and_rss(work, runs, chunk_flags=()):
    origin, url = start_origin("--random", "bench/big=1x1GiB")
    size = 1 << 30
    try:
        d = Daemon(url, work, *chunk_flags)
        t0 = time.perf_counter()
        d.locus("warm", "hf://bench/big")
        warm_s = time.perf_counter() - t0
        rss = d.peak_rss()
        uri = "hf://bench/big/shard-00000.bin"
        native = Path(tempfile.mkdtemp(dir=work)) / "native.bin"
        with open(native, "wb") as f:
            d.locus("cat", uri, stdout=f)
        subprocess.run(["cat", str(native)], stdout=subprocess.DEVNULL, check=True)  # into the page cache
        sock = str(d.socket)
        t_locus, t_cat, t_locus_pipe, t_cat_pipe = [], [], [], []
        for _ in range(runs):
            for cmd, acc in (
                (f"{BIN}/locus cat {uri} --socket {sock} > /dev/null", t_locus),
                (f"cat {native} > /dev/null", t_cat),
                (f"{BIN}/locus cat {uri} --socket {sock} | cat > /dev/null", t_locus_pipe),
                (f"cat {native} | cat > /dev/null", t_cat_pipe),
            ):
                t0 = time.perf_counter()
                subprocess.run(["sh", "-c", cmd], check=True)
                acc.append(time.perf_counter() - t0)
        dd = subprocess.run(["dd", f"if={native}", "of=/dev/null", "bs=1M"], stderr=subprocess.PIPE, text=True)
        d.stop()
    finally:
        origin.terminate()
        origin.wait()
    return {
        "warm_1gib_s": warm_s,
        "peak_rss_warm_1gib": rss,
        "locus_cat_s": median(t_locus),
        "cat_s": median(t_cat),
        "speed_ratio_devnull": median([c / l for l, c in zip(t_locus, t_cat)]),
        "locus_cat_pipe_s": median(t_locus_pipe),
        "cat_pipe_s": median(t_cat_pipe),
        "speed_ratio_pipe": median([c / l for l, c in zip(t_locus_pipe, t_cat_pipe)]),
        "locus_rate": fmt_rate(size, median(t_locus)),
        "cat_rate": fmt_rate(size, median(t_cat)),
        "page_cache_dd": dd.stderr.strip().splitlines()[-1],
        "runs": runs,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--throttle", type=int, default=12 * MB, help="bytes/s per connection")
    ap.add_argument("--chunk-sweep", action="store_true")
    ap.add_argument("--delay-ms", type=int, default=0, help="origin latency per request (the sweep)")
    ap.add_argument("--skip-main", action="store_true")
    a = ap.parse_args()
    for b in ("locus", "locus-test-origin"):
        if not (BIN / b).exists():
            sys.exit(f"{BIN / b} missing: cargo build --release --workspace")
    work = tempfile.mkdtemp(prefix="locus-bench-")
    print(f"machine: {os.cpu_count()} cores; {os.uname().release}; runs per side: {a.runs}")
    try:
        if not a.skip_main:
            w = bench_warm(work, a.runs, a.throttle)
            print("\n## cold warm, 3 x 128 MiB, origin throttled per connection")
            print(f"limit: {w['limit']}")
            print(f"locus warm   median {w['locus_s']:.2f} s  ({w['locus_rate']}, {w['locus_of_limit']:.0%} of the limit)")
            print(f"hf_transfer  median {w['hf_transfer_s']:.2f} s  ({w['hft_rate']}, {w['hft_of_limit']:.0%} of the limit)")
            print(f"time ratio locus / hf_transfer (median of pairs): {w['ratio']:.3f}")
            print(f"daemon peak RSS during the warm: {w['peak_rss'] / MiB:.0f} MiB")

            c = bench_cat_and_rss(work, max(a.runs, 5))
            print("\n## cached 1 GiB file: locus cat vs cat of the same bytes on local disk (page cache)")
            print(f"to /dev/null: locus cat {c['locus_cat_s']:.3f} s ({c['locus_rate']}), cat {c['cat_s']:.3f} s ({c['cat_rate']}); speed ratio {c['speed_ratio_devnull']:.2f}")
            print(f"through a pipe: locus cat {c['locus_cat_pipe_s']:.3f} s, cat {c['cat_pipe_s']:.3f} s; speed ratio {c['speed_ratio_pipe']:.2f}")
            print(f"page cache read (dd bs=1M): {c['page_cache_dd']}")
            print(f"\n## memory: daemon peak RSS warming a 1 GiB file (unthrottled, {c['warm_1gib_s']:.2f} s): {c['peak_rss_warm_1gib'] / MiB:.0f} MiB")
        if a.chunk_sweep:
            print(f"\n## chunk size sweep (cold warm as above, origin latency {a.delay_ms} ms per request; median of runs)")
            print("| chunk | locus warm s | hf_transfer s | ratio | % of limit |")
            print("| --- | --- | --- | --- | --- |")
            for cs in ("1MiB", "2MiB", "4MiB", "8MiB", "16MiB", "32MiB"):
                w = bench_warm(work, a.runs, a.throttle, ("--chunk-size", cs), cs, a.delay_ms)
                print(f"| {cs} | {w['locus_s']:.2f} | {w['hf_transfer_s']:.2f} | {w['ratio']:.3f} | {w['locus_of_limit']:.0%} |", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
