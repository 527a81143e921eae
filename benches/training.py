#!/usr/bin/env python3
"""The training epoch: a PyTorch DataLoader reading small files, with a simulated GPU step.

A dataset of N files of 10-100 KB (default 100,000) sits in S3 with a fixed latency on every
request (default 20 ms) and optionally a cap on each response's rate. Two S3 origins:
  --origin moto  moto's server behind a proxy that adds the latency (both Python: on a small
                 machine their CPU, not the latency, bounds the request rate);
  --origin sim   the test origin's S3 surface (`locus-test-origin --generated`, Rust), which
                 sleeps the latency without using a CPU, as a remote store does.
A `torch.utils.data.DataLoader` (8 workers, shuffled, batches of 256) reads it for two epochs;
the main loop takes each batch and then sleeps a fixed "GPU step" (default 160 ms a batch:
0.6 ms a sample, about a ResNet-50 training step on a current GPU).
Per epoch it reports the share of the epoch spent waiting for data and the GPU utilisation
(step time over epoch time), for:

  direct        each worker GETs its files from S3 through the proxy (boto3), as a data set
                that reads object storage does;
  mount         the workers read the same files from a `locus mount` of the prefix (the
                daemon fetches each file on its first read through the same proxy);
  mount+warm    the same, with `locus warm` of the prefix started when training starts (the
                daemon fetches ahead with its own concurrency while the loader reads);
  local         files of the same sizes on local disk, in the page cache;
  memory        the same sizes from memory, no I/O at all: the floor of the DataLoader's own
                hand-over of batches from its workers on this machine;
  warm          no training: `locus warm` of the prefix alone, its time, the daemon's CPU and
                the index's commits (`locus_index_commit_seconds`), what epoch 1 pays for.

Each locus run starts with an empty cache. A run's files are removed at the end of the benchmark,
not before the next run: on ext4 without a journal (this machine's disk) a new inode skips every
inode freed in the last minute or more, and a warm right after 100,000 files were removed spent
a third of its CPU in that search (`recently_deleted`). Run as root from the repository root after
`cargo build --release --workspace`:
    python3 benches/training.py [--origin sim|moto] [--files 100000] [--latency-ms 20] [--step-ms 40]
"""

import argparse
import concurrent.futures
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("LOCUS_PROFILE", "release")
sys.path.insert(0, str(ROOT / "tests" / "python"))
from origins import Daemon, Moto, Proxy, binary, cleanup  # noqa: E402
sys.path.insert(0, str(ROOT / "benches"))
from fuse_scale import cpu_seconds  # noqa: E402

BUCKET = "train"
PREFIX = "imagenet-like"


def name(i: int) -> str:
    """The test origin's generated names (`generated_name`), used for moto too."""
    return f"{PREFIX}/{i // 1000:04d}/{i:08d}.bin"


def size(i: int) -> int:
    return 10_000 + (i * 7919) % 90_001


def listing(url):
    """Every (key, size) under the prefix, in key order (not timed)."""
    import boto3

    c = boto3.client("s3", endpoint_url=url, aws_access_key_id="testing", aws_secret_access_key="testing",
                     region_name="us-east-1")
    return [(o["Key"], o["Size"]) for page in c.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix=PREFIX + "/") for o in page["Contents"]]


def sim_origin(n, latency_ms, bandwidth_mbps):
    """`locus-test-origin` with a generated data set: (process, Hub URL, S3 URL)."""
    args = [binary("locus-test-origin"), "--generated", f"datasets/{BUCKET}/{PREFIX}={n}x10KB-100KB",
            "--delay-ms", str(int(latency_ms))]
    if bandwidth_mbps:
        args += ["--throttle", f"{int(bandwidth_mbps * 1e6)}"]
    t0 = time.time()
    p = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if not line.startswith("ready "):
        sys.exit(f"test origin did not start: {line!r}")
    url = p.stdout.readline().split(" ", 1)[1].strip()
    print(f"test origin with {n} generated files ready in {time.time() - t0:.0f} s", flush=True)
    return p, line.split(" ", 1)[1].strip(), url


def upload(moto, n):
    c = moto.client()
    c.create_bucket(Bucket=BUCKET)
    blob = os.urandom(100_001)
    t0 = time.time()
    with concurrent.futures.ThreadPoolExecutor(16) as ex:
        list(ex.map(lambda i: c.put_object(Bucket=BUCKET, Key=name(i), Body=blob[: size(i)]), range(n)))
    print(f"uploaded {n} objects ({sum(size(i) for i in range(n)) / 1e9:.2f} GB) in {time.time() - t0:.0f} s",
          flush=True)


class S3Files:
    """Map-style data set over the objects, read with boto3 in each worker."""

    def __init__(self, url, files):
        self.url, self.files, self.client = url, files, None

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        if self.client is None:
            import boto3
            from botocore.config import Config

            self.client = boto3.client("s3", endpoint_url=self.url, aws_access_key_id="testing",
                                       aws_secret_access_key="testing", region_name="us-east-1",
                                       config=Config(max_pool_connections=4))
        key, want = self.files[i]
        return tensor(self.client.get_object(Bucket=BUCKET, Key=key)["Body"].read(), key, want)


class MountFiles:
    """The same data set read from a mounted folder."""

    def __init__(self, root, files):
        self.root, self.files = root, files

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        key, want = self.files[i]
        with open(os.path.join(self.root, key[len(PREFIX) + 1:]), "rb") as f:
            return tensor(f.read(), key, want)


class MemoryFiles:
    """The same sizes with no I/O: what the harness itself costs."""

    def __init__(self, files):
        self.files, self.blob = files, bytes(200_000)

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        key, want = self.files[i]
        return tensor(self.blob[:want], key, want)


def tensor(body, key, want):
    import torch

    if len(body) != want:
        raise RuntimeError(f"{key}: {len(body)} bytes, expected {want}")
    # What a decoder would be handed: the bytes as a tensor (a fixed-size view, so batches stack).
    return torch.frombuffer(bytearray(body[:8192]), dtype=torch.uint8)


# The mount's counters reported beside its FUSE requests: what its first reads found and learned.
MOUNT_COUNTERS = {"locus_fuse_stale_reads_total": "stale reads", "locus_fuse_learns_total": "learns",
                  "locus_fuse_learned_files_total": "files learned"}


def fuse_requests(metrics_url):
    """The mount's FUSE requests so far, by op (`locus_fuse_requests_total`; `read@pool`: the reads
    that went to the blocking pool, most of them asking the daemon), and `MOUNT_COUNTERS`."""
    import urllib.request

    ops = {}
    with urllib.request.urlopen(metrics_url) as r:
        for line in r.read().decode().splitlines():
            name = line.split(" ", 1)[0]
            if line.startswith("locus_fuse_requests_total{"):
                value = int(float(line.rsplit(" ", 1)[1]))
                op = line.split('op="', 1)[1].split('"', 1)[0]
                ops[op] = ops.get(op, 0) + value
                if op == "read" and 'on="pool"' in line:
                    ops["read@pool"] = ops.get("read@pool", 0) + value
            elif name in MOUNT_COUNTERS:
                ops[MOUNT_COUNTERS[name]] = int(float(line.rsplit(" ", 1)[1]))
    return ops


class LocusCost:
    """What the daemon and the mount spent in each epoch: CPU seconds and FUSE requests by op."""

    def __init__(self, daemon_pid, mount_dir, metrics_url):
        self.daemon_pid, self.metrics_url = daemon_pid, metrics_url
        out = subprocess.run(["pgrep", "-f", f"mount .*{mount_dir}"], capture_output=True, text=True)
        self.mount_pids = [int(p) for p in out.stdout.split()]
        self.last = self.now()

    def now(self):
        return (cpu_seconds(self.daemon_pid), sum(cpu_seconds(p) for p in self.mount_pids),
                fuse_requests(self.metrics_url))

    def epoch(self):
        cur = self.now()
        d_cpu, m_cpu = cur[0] - self.last[0], cur[1] - self.last[1]
        ops = {k: v - self.last[2].get(k, 0) for k, v in cur[2].items() if v - self.last[2].get(k, 0)}
        self.last = cur
        print(f"      locus: daemon CPU {d_cpu:.1f} s, mount CPU {m_cpu:.1f} s, FUSE requests "
              f"{dict(sorted(ops.items()))}", flush=True)
        return {"daemon_cpu": d_cpu, "mount_cpu": m_cpu, "fuse_requests": ops}


def train(dataset, epochs, step_s, batch, workers, seed, cost=None):
    import torch
    from torch.utils.data import DataLoader

    g = torch.Generator()
    g.manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, generator=g,
                        persistent_workers=True, prefetch_factor=4)
    out = []
    for epoch in range(epochs):
        wait = step = 0.0
        waits = []
        t_epoch = time.perf_counter()
        it = iter(loader)
        while True:
            t0 = time.perf_counter()
            try:
                next(it)
            except StopIteration:
                break
            t1 = time.perf_counter()
            wait += t1 - t0
            waits.append(t1 - t0)
            time.sleep(step_s)  # the simulated GPU step
            step += time.perf_counter() - t1
        total = time.perf_counter() - t_epoch
        # Where the wait is: the epoch's first batch (the workers start on a new order) and the
        # rest, batch by batch.
        rest = sorted(waits[1:]) or [0.0]
        out.append({"epoch": epoch + 1, "seconds": total, "wait_share": wait / total, "gpu_util": step / total,
                    "first_batch_wait": waits[0] if waits else 0.0,
                    "batch_wait_p50": rest[len(rest) // 2], "batch_wait_p99": rest[len(rest) * 99 // 100]})
        print(f"    epoch {epoch + 1}: {total:7.1f} s, data wait {100 * wait / total:5.1f}%, "
              f"GPU util {100 * step / total:5.1f}% (first batch {1000 * out[-1]['first_batch_wait']:.0f} ms, "
              f"then per batch median {1000 * out[-1]['batch_wait_p50']:.1f} ms, "
              f"p99 {1000 * out[-1]['batch_wait_p99']:.1f} ms)", flush=True)
        if cost is not None:
            out[-1]["locus"] = cost.epoch()
    del loader
    return out


class SimCounter:
    """The test origin's request counters, read as the proxy's are."""

    def __init__(self, hub_url):
        self.hub_url = hub_url

    @property
    def requests(self):
        import urllib.request

        with urllib.request.urlopen(self.hub_url + "/_sim/stats") as r:
            return {k: v for k, v in json.loads(r.read())["requests"].items() if k.startswith("s3")}

    def reset(self):
        import urllib.request

        urllib.request.urlopen(urllib.request.Request(self.hub_url + "/_sim/reset", method="POST")).read()

    def close(self):
        pass


def warm_alone(work, url, args):
    """`locus warm` of the prefix into an empty cache, nothing else running."""
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        metrics = f"127.0.0.1:{s.getsockname()[1]}"
    d = Daemon(work, "node-warm", extra=["--s3-endpoint", url, "--cache-size", "64GiB", "--metrics", metrics,
                                          "--concurrency", str(args.concurrency), *args.daemon_args.split()])
    try:
        cpu0, t0 = cpu_seconds(d.proc.pid), time.perf_counter()
        d.run("warm", f"s3://{BUCKET}/{PREFIX}", timeout=3600)
        took, cpu = time.perf_counter() - t0, cpu_seconds(d.proc.pid) - cpu0
        commits = {}
        with urllib.request.urlopen(f"http://{metrics}/metrics") as r:
            for line in r.read().decode().splitlines():
                for k in ("sum", "count"):
                    if line.startswith(f"locus_index_commit_seconds_{k} "):
                        commits[k] = float(line.split()[1])
    finally:
        d.close()
    out = {"seconds": took, "daemon_cpu": cpu, "commits": commits.get("count", 0),
           "commit_seconds": commits.get("sum", 0.0)}
    print(f"    warm: {took:.1f} s, {args.files / took:.0f} files/s, daemon CPU {cpu:.1f} s "
          f"({1000 * cpu / args.files:.2f} ms a file); index commits {out['commits']:.0f}, "
          f"{out['commit_seconds']:.1f} s in all", flush=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--origin", choices=["sim", "moto"], default="sim")
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--latency-ms", type=float, default=20)
    ap.add_argument("--bandwidth-mbps", type=float, default=0, help="per connection, MB/s (0: no cap)")
    ap.add_argument("--step-ms", type=float, default=160)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=64,
                    help="the daemon's origin connections (S3 takes thousands at once; at 20 ms a "
                         "connection fetches 50 small files a second)")
    ap.add_argument("--daemon-args", default="", help="more arguments for `locus daemon` (e.g. "
                    "'--metadata-ttl 600')")
    ap.add_argument("--sharing-strategy", choices=["file_descriptor", "file_system"],
                    help="how the DataLoader's workers hand tensors over (torch's default: "
                         "file_descriptor)")
    ap.add_argument("--mount-args", default="", help="more arguments for `locus mount` (e.g. "
                    "'--linger-us 0')")
    ap.add_argument("--runs", default="direct,mount,mount+warm,local,memory",
                    help="comma-separated; a locus run may name more mount arguments after a colon "
                         "(e.g. 'mount+warm:--open')")
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args()
    if args.sharing_strategy:
        import torch.multiprocessing

        torch.multiprocessing.set_sharing_strategy(args.sharing_strategy)

    work = Path(tempfile.mkdtemp(prefix="locus-training-"))
    moto = sim = None
    results = {}
    try:
        if args.origin == "moto":
            moto = Moto()
            upload(moto, args.files)
            proxy = Proxy(moto.url, latency=args.latency_ms / 1000,
                          bandwidth=args.bandwidth_mbps * 1e6 if args.bandwidth_mbps else None)
            url = proxy.url
        else:
            sim, hub_url, url = sim_origin(args.files, args.latency_ms, args.bandwidth_mbps)
            proxy = SimCounter(hub_url)
        files = listing(url)
        assert len(files) == args.files, len(files)
        step = args.step_ms / 1000
        for named in args.runs.split(","):
            # `RUN:ARGS`: a locus run whose mount takes ARGS too (e.g. `mount+warm:--open`).
            run, _, extra = named.partition(":")
            print(f"{named}:", flush=True)
            proxy.reset()
            if run == "memory":
                results[named] = train(MemoryFiles(files), args.epochs, step, args.batch, args.workers, 1)
            elif run == "local":
                local = work / "local"
                blob = os.urandom(200_000)
                for key, n in files:
                    p = local / key[len(PREFIX) + 1:]
                    p.parent.mkdir(parents=True, exist_ok=True)
                    p.write_bytes(blob[:n])
                results[named] = train(MountFiles(str(local), files), args.epochs, step, args.batch,
                                       args.workers, 1)
            elif run == "warm":
                results[named] = warm_alone(work, url, args)
            elif run == "direct":
                results[named] = train(S3Files(url, files), args.epochs, step, args.batch, args.workers, 1)
            else:
                tag = "".join(c if c.isalnum() else "-" for c in named)
                d = Daemon(work, f"node-{tag}",
                           extra=["--s3-endpoint", url, "--cache-size", "64GiB",
                                  "--concurrency", str(args.concurrency), *args.daemon_args.split()])
                mnt = work / f"mnt-{tag}"
                mnt.mkdir()
                uri = f"s3://{BUCKET}/{PREFIX}"
                warm = None
                try:
                    with socket.socket() as s:
                        s.bind(("127.0.0.1", 0))
                        metrics = f"127.0.0.1:{s.getsockname()[1]}"
                    d.run("mount", "--metrics", metrics, *args.mount_args.split(), *extra.split(), uri,
                          str(mnt))
                    cost = LocusCost(d.proc.pid, mnt, f"http://{metrics}/metrics")
                    if run == "mount+warm":
                        warm = subprocess.Popen([binary("locus"), "--socket", d.socket, "warm", uri],
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=d.env)
                    results[named] = train(MountFiles(str(mnt), files), args.epochs, step, args.batch,
                                           args.workers, 1, cost)
                finally:
                    if warm is not None:
                        warm.wait(timeout=3600)
                    subprocess.run([binary("locus"), "unmount", str(mnt)], check=False,
                                   stderr=subprocess.DEVNULL)
                    d.close()
            print(f"    origin requests: {dict(sorted(proxy.requests.items()))}", flush=True)
            results[named + " requests"] = dict(proxy.requests)
        proxy.close()
    finally:
        if moto:
            moto.close()
        if sim:
            sim.terminate()
            sim.wait(timeout=10)
        cleanup(work)
    base = results.get("direct")
    if base:
        print("\nratios against direct (data wait share, lower is better; GPU util, higher is better):")
        for run in args.runs.split(","):
            if run.partition(":")[0] in ("direct", "warm") or run not in results:
                continue
            for e, (b, r) in enumerate(zip(base, results[run])):
                print(f"  {run:11s} epoch {e + 1}: wait {100 * r['wait_share']:5.1f}% vs {100 * b['wait_share']:5.1f}% "
                      f"({b['wait_share'] / max(r['wait_share'], 1e-9):6.1f}x less), util {100 * r['gpu_util']:5.1f}% "
                      f"vs {100 * b['gpu_util']:5.1f}%, epoch time {b['seconds'] / r['seconds']:.2f}x faster")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    random.seed(1)
    main()
