#!/usr/bin/env python3
"""Gateway benchmarks of locus, side by side with the peers, in one run.

  1. `curl` of a warm 3-file, 384 MiB repo through a node's Hub gateway against `curl` of the
     same files from nginx (Debian's, sendfile on) on the same machine, both from the page
     cache: rate ratio (goal: at least 1.0), files one after another and all three at once.
  2. `huggingface_hub.snapshot_download` of that repo through the gateway, cold (a fresh node)
     and warm, against `snapshot_download` straight from the origin (throttled per connection,
     as a CDN is), and the client's own ceiling: `snapshot_download` from the unthrottled
     origin, which serves from memory.
  3. Three nodes, four clients on each, `snapshot_download` of the same model cold at once:
     origin bytes over the model's (goal: at most 1.02x), the slowest client's time, and the
     daemons' peak RSS.

Run from the repository root after `cargo build --release --workspace`, with nginx installed
(`apt-get install nginx-light`):
    python3 benches/gateway.py [--runs 5] [--throttle 50MB]
Medians and ratios are printed; runs of the two sides alternate so drift hits both.
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster import free_addr, sim_stats, wait_up  # noqa: E402
from single_node import Daemon, MiB, median, start_origin  # noqa: E402

REPO = "bench/model"
SPEC = f"{REPO}=3x128MiB"


def gw_node(url, work, *flags):
    addr = free_addr()
    return Daemon(url, work, "--hub-gateway", addr, *flags), f"http://{addr}"


def tree(base):
    with urllib.request.urlopen(f"{base}/api/models/{REPO}/tree/main?recursive=true") as r:
        return [e for e in json.load(r) if e["type"] == "file"]


def curl(urls):
    """Fetches `urls` at once with curl; returns (bytes, seconds) for all of them."""
    t = time.perf_counter()
    procs = [subprocess.Popen(["curl", "-sf", "-o", "/dev/null", "-w", "%{size_download}", u],
                              stdout=subprocess.PIPE, text=True) for u in urls]
    total = 0
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            sys.exit(f"curl failed ({p.returncode})")
        total += int(out)
    return total, time.perf_counter() - t


class Nginx:
    def __init__(self, root, work):
        self.addr = free_addr()
        self.dir = Path(tempfile.mkdtemp(dir=work))
        conf = self.dir / "nginx.conf"
        conf.write_text(f"""
daemon off;
user root;
worker_processes auto;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  client_body_temp_path {self.dir}/body;
  proxy_temp_path {self.dir}/proxy;
  fastcgi_temp_path {self.dir}/fastcgi;
  uwsgi_temp_path {self.dir}/uwsgi;
  scgi_temp_path {self.dir}/scgi;
  server {{ listen {self.addr}; root {root}; }}
}}
""")
        self.proc = subprocess.Popen(["nginx", "-c", str(conf)], stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while True:
            try:
                urllib.request.urlopen(f"http://{self.addr}/nope")
            except urllib.error.HTTPError:
                break
            except OSError:
                if time.time() > deadline:
                    sys.exit("nginx did not start")
                time.sleep(0.05)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


def bench_curl(work, runs):
    print("\n== 1. curl of a warm 3 x 128 MiB repo: the Hub gateway against nginx (page cache both)")
    origin, url = start_origin("--random", SPEC)
    d, gw = gw_node(url, work)
    try:
        d.locus("warm", f"hf://{REPO}")
        files = tree(gw)
        root = Path(tempfile.mkdtemp(dir=work))
        for f in files:
            dest = root / REPO / "resolve" / "main" / f["path"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["curl", "-sf", "-o", str(dest), f"{gw}/{REPO}/resolve/main/{f['path']}"], check=True)
            if hashlib.sha256(dest.read_bytes()).hexdigest() != f["lfs"]["oid"]:
                sys.exit(f"{f['path']}: the gateway's bytes are not the origin's")
        nginx = Nginx(root, work)
        try:
            sides = {"gateway": gw, "nginx": f"http://{nginx.addr}"}
            for how, at_once in (("one after another", False), ("all three at once", True)):
                rates = {k: [] for k in sides}
                for r in range(runs + 1):
                    order = list(sides) if r % 2 == 0 else list(sides)[::-1]
                    for side in order:
                        urls = [f"{sides[side]}/{REPO}/resolve/main/{f['path']}" for f in files]
                        if at_once:
                            n, secs = curl(urls)
                        else:
                            n, secs = 0, 0.0
                            for u in urls:
                                b, s = curl([u])
                                n, secs = n + b, secs + s
                        if r > 0:  # the first round fills the page cache
                            rates[side].append(n / secs)
                g, x = median(rates["gateway"]), median(rates["nginx"])
                print(f"  {how}: gateway {g / 1e6:.0f} MB/s, nginx {x / 1e6:.0f} MB/s, ratio {g / x:.2f} "
                      f"(runs: gateway {', '.join(f'{v / 1e6:.0f}' for v in rates['gateway'])}; "
                      f"nginx {', '.join(f'{v / 1e6:.0f}' for v in rates['nginx'])})")
        finally:
            nginx.stop()
    finally:
        d.stop()
        origin.terminate()


def snapshot(endpoint, cache, token=None):
    """`snapshot_download` in a fresh process (as a client is); returns its seconds."""
    code = ("import sys, time; from huggingface_hub import snapshot_download; t = time.perf_counter(); "
            f"snapshot_download({REPO!r}, cache_dir=sys.argv[1], endpoint=sys.argv[2]); "
            "print(time.perf_counter() - t)")
    env = dict(os.environ, HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    env.pop("HF_TOKEN", None)
    p = subprocess.run([sys.executable, "-c", code, str(cache), endpoint], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"snapshot_download failed: {p.stderr[-2000:]}")
    return float(p.stdout.strip().splitlines()[-1])


def bench_snapshot(work, runs, throttle):
    print(f"\n== 2. snapshot_download of the 3 x 128 MiB repo (origin throttled to {throttle}/s per connection)")
    fast, fast_url = start_origin("--random", SPEC)
    slow, slow_url = start_origin("--random", SPEC, "--throttle", throttle)
    times = {"ceiling (unthrottled origin)": [], "direct (throttled origin)": [], "gateway cold": [],
             "gateway warm": []}
    try:
        for r in range(runs):
            c = Path(tempfile.mkdtemp(dir=work))
            times["ceiling (unthrottled origin)"].append(snapshot(fast_url, c / "a"))
            times["direct (throttled origin)"].append(snapshot(slow_url, c / "b"))
            d, gw = gw_node(slow_url, work)
            try:
                times["gateway cold"].append(snapshot(gw, c / "c"))
                times["gateway warm"].append(snapshot(gw, c / "d"))
            finally:
                d.stop()
            shutil.rmtree(c, ignore_errors=True)
    finally:
        fast.terminate()
        slow.terminate()
    direct = median(times["direct (throttled origin)"])
    ceiling = median(times["ceiling (unthrottled origin)"])
    for k, v in times.items():
        m = median(v)
        print(f"  {k:30s} median {m:6.2f} s ({384 * MiB / m / 1e6:5.0f} MB/s); direct/this {direct / m:5.2f}x; "
              f"this/ceiling {m / ceiling:5.2f}x; runs {', '.join(f'{x:.2f}' for x in v)}")


def bench_cluster(work, throttle):
    print(f"\n== 3. 3 nodes x 4 clients, snapshot_download of the same model cold at once (origin {throttle}/s per connection)")
    origin, url = start_origin("--random", SPEC, "--throttle", throttle)
    addrs = [free_addr() for _ in range(3)]
    nodes, gws = [], []
    try:
        for a in addrs:
            d, gw = gw_node(url, work, "--listen", a, "--peers", ",".join(addrs))
            nodes.append(d)
            gws.append(gw)
        wait_up(nodes, 3)
        model = sum(f["size"] for f in tree(url))
        before = sim_stats(url)["data_bytes"]
        c = Path(tempfile.mkdtemp(dir=work))
        code = ("import sys, time; from huggingface_hub import snapshot_download; t = time.perf_counter(); "
                f"snapshot_download({REPO!r}, cache_dir=sys.argv[1], endpoint=sys.argv[2]); "
                "print(time.perf_counter() - t)")
        env = dict(os.environ, HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
        # Peak anonymous memory (heap) and peak file-backed resident pages (mapped chunks, which
        # are the page cache's) of each daemon, sampled every 50 ms.
        peaks = [[0, 0] for _ in nodes]
        done = threading.Event()

        def sample():
            while not done.is_set():
                for i, n in enumerate(nodes):
                    for line in Path(f"/proc/{n.proc.pid}/status").read_text().splitlines():
                        k, _, v = line.partition(":")
                        if k in ("RssAnon", "RssFile"):
                            j = 0 if k == "RssAnon" else 1
                            peaks[i][j] = max(peaks[i][j], int(v.split()[0]) * 1024)
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-c", code, str(c / f"{i}-{k}"), gw], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env)
                 for i, gw in enumerate(gws) for k in range(4)]
        secs = []
        for p in procs:
            out, err = p.communicate()
            if p.returncode != 0:
                sys.exit(f"a client failed: {err[-2000:]}")
            secs.append(float(out.strip().splitlines()[-1]))
        wall = time.perf_counter() - t
        done.set()
        sampler.join()
        got = sim_stats(url)["data_bytes"] - before
        for i in range(12):
            folder = next((c / f"{i // 4}-{i % 4}").glob("models--*/snapshots/*"))
            for f in tree(url):
                if hashlib.sha256((folder / f["path"]).read_bytes()).hexdigest() != f["lfs"]["oid"]:
                    sys.exit(f"client {i}: {f['path']} is wrong")
        rss = [n.peak_rss() for n in nodes]
        print(f"  origin bytes {got / MiB:.0f} MiB for a {model / MiB:.0f} MiB model: {got / model:.3f}x "
              f"(goal <= 1.02x); 12 clients done in {wall:.1f} s (fastest {min(secs):.1f} s, "
              f"slowest {max(secs):.1f} s); every file checked against its sha256")
        print(f"  daemons' peak RSS {', '.join(f'{r / MiB:.0f}' for r in rss)} MiB; of it, peak anonymous "
              f"{', '.join(f'{p[0] / MiB:.0f}' for p in peaks)} MiB and peak file-backed (mapped chunks) "
              f"{', '.join(f'{p[1] / MiB:.0f}' for p in peaks)} MiB")
        shutil.rmtree(c, ignore_errors=True)
        # Why a chunk could come from the origin twice: a peer that went silent for 5 s under
        # the load was passed over (a read never waits on a stuck peer).
        warns = [line for n in nodes for line in (n.dir / "daemon.log").read_text().splitlines() if " WARN " in line or "ERROR" in line]
        print(f"  daemons' warnings: {len(warns)}" + "".join(f"\n    {w[:300]}" for w in warns[:8]))
    finally:
        for n in nodes:
            n.stop()
        origin.terminate()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--throttle", default="50MB", help="the origin's rate per connection")
    ap.add_argument("--only", choices=["curl", "snapshot", "cluster"])
    a = ap.parse_args()
    if not shutil.which("nginx"):
        sys.exit("nginx is required (apt-get install nginx-light)")
    work = tempfile.mkdtemp(prefix="locus-gw-bench-")
    try:
        if a.only in (None, "curl"):
            bench_curl(work, a.runs)
        if a.only in (None, "snapshot"):
            bench_snapshot(work, a.runs, a.throttle)
        if a.only in (None, "cluster"):
            bench_cluster(work, a.throttle)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
