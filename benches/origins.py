#!/usr/bin/env python3
"""Origin benchmarks of locus for s3:// names, against moto's S3 server on loopback.

  1. Epoch workload: 4 nodes (a locus cluster on loopback) each read every object under a
     prefix of 2,000 objects twice, through a `locus mount` of the prefix. Side by side: the
     same 4 readers going to the origin directly (boto3: one LIST per epoch, one GET per object).
     Counted at a proxy in front of moto: GET bytes over the prefix size (goal: at most 1.02x)
     and LIST+HEAD calls over the reads (goal: at most 1%).
  2. Cold warm of a large prefix: `locus warm` of 8 x 64 MiB objects on a fresh node against
     boto3's transfer manager downloading the same objects with the same concurrency (16), in
     the same run (goal: time ratio at most 1.0).

Run from the repository root after `cargo build --release --workspace`:
    python3 benches/origins.py [--runs 3] [--part epoch|warm|all]
"""

import argparse
import concurrent.futures
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("LOCUS_PROFILE", "release")
sys.path.insert(0, str(ROOT / "tests" / "python"))
from origins import Daemon, Moto, Proxy, cleanup, free_port  # noqa: E402

BUCKET = "bench"
N_OBJECTS = 2000
OBJECT_SIZE = 32 << 10
NODES = 4
LARGE = 8
LARGE_SIZE = 64 << 20
CONCURRENCY = 16


def put_all(client, objects):
    with concurrent.futures.ThreadPoolExecutor(16) as ex:
        list(ex.map(lambda kv: client.put_object(Bucket=BUCKET, Key=kv[0], Body=kv[1]), objects.items()))


def moto_with(objects):
    """moto's S3 server holding `objects` in BUCKET."""
    moto = Moto()
    c = moto.client()
    c.create_bucket(Bucket=BUCKET)
    put_all(c, objects)
    return moto


def read_tree(root: Path, threads=16) -> int:
    files = [p for p in root.rglob("*") if p.is_file()]
    with concurrent.futures.ThreadPoolExecutor(threads) as ex:
        return sum(ex.map(lambda p: len(p.read_bytes()), files))


def bench_epoch(work: Path, runs: int):
    objects = {f"epoch/part-{i % 50:02d}/obj-{i:05d}.bin": os.urandom(OBJECT_SIZE) for i in range(N_OBJECTS)}
    moto = moto_with(objects)
    total = sum(len(v) for v in objects.values())
    proxy = Proxy(moto.url)
    reads = NODES * 2 * N_OBJECTS
    print(f"epoch workload: {NODES} readers x 2 epochs x {N_OBJECTS} objects of {OBJECT_SIZE >> 10} KiB "
          f"({total / 2**20:.1f} MiB), {reads} reads")
    rows = []
    for run in range(runs):
        # Direct: every reader lists the prefix and GETs every object, each epoch.
        proxy.reset()
        t = time.time()
        import boto3
        from botocore.config import Config

        def direct_reader(_):
            s3 = boto3.client("s3", endpoint_url=proxy.url, aws_access_key_id="testing",
                              aws_secret_access_key="testing", region_name="us-east-1",
                              config=Config(max_pool_connections=CONCURRENCY))
            got = 0
            for _epoch in range(2):
                keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="epoch/")
                        for o in page.get("Contents", [])]
                with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as ex:
                    got += sum(ex.map(lambda k: len(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read()), keys))
            return got

        with concurrent.futures.ThreadPoolExecutor(NODES) as ex:
            assert sum(ex.map(direct_reader, range(NODES))) == 2 * NODES * total
        direct = (time.time() - t, proxy.bytes.get("get", 0), proxy.requests.get("list", 0) + proxy.requests.get("head", 0))

        # locus: 4 nodes, each reading the prefix twice through its own mount.
        d = work / f"epoch-{run}"
        ports = [free_port() for _ in range(NODES)]
        peers = ",".join(f"127.0.0.1:{p}" for p in ports)
        nodes = [Daemon(d, f"n{i}", extra=["--s3-endpoint", proxy.url, "--peers", peers], listen=f"127.0.0.1:{p}")
                 for i, p in enumerate(ports)]
        mounts = []
        try:
            proxy.reset()
            t = time.time()
            for i, n in enumerate(nodes):
                m = d / f"mnt{i}"
                m.mkdir()
                n.run("mount", f"s3://{BUCKET}/epoch", str(m))
                mounts.append((n, m))

            def node_reader(nm):
                return sum(read_tree(nm[1]) for _epoch in range(2))

            with concurrent.futures.ThreadPoolExecutor(NODES) as ex:
                assert sum(ex.map(node_reader, mounts)) == 2 * NODES * total
            loc = (time.time() - t, proxy.bytes.get("get", 0), proxy.requests.get("list", 0) + proxy.requests.get("head", 0))
        finally:
            for n, m in mounts:
                n.run("unmount", str(m), check=False)
            for n in nodes:
                n.close()
            cleanup(d)
        rows.append((direct, loc))
        print(f"  run {run + 1}: direct {direct[0]:.2f} s, GET {direct[1] / total:.3f}x, LIST+HEAD {direct[2]} | "
              f"locus {loc[0]:.2f} s, GET {loc[1] / total:.3f}x, LIST+HEAD {loc[2]}")
    med = lambda i, j: statistics.median(r[i][j] for r in rows)  # noqa: E731
    print(f"epoch workload, medians of {runs} runs:")
    print(f"  origin GET bytes / prefix size: locus {med(1, 1) / total:.3f}x, direct {med(0, 1) / total:.3f}x (goal: locus <= 1.02x)")
    print(f"  origin LIST+HEAD calls / reads: locus {med(1, 2) / reads:.5f} ({med(1, 2):.0f} calls), "
          f"direct {med(0, 2) / reads:.5f} ({med(0, 2):.0f}) (goal: locus <= 0.01)")
    print(f"  time: locus {med(1, 0):.2f} s, direct {med(0, 0):.2f} s, ratio {med(1, 0) / med(0, 0):.2f}")
    proxy.close()
    moto.close()


def bench_warm(work: Path, runs: int):
    objects = {f"large/shard-{i:02d}.bin": os.urandom(LARGE_SIZE) for i in range(LARGE)}
    moto = moto_with(objects)
    total = LARGE * LARGE_SIZE
    print(f"cold warm: {LARGE} x {LARGE_SIZE >> 20} MiB ({total >> 20} MiB), concurrency {CONCURRENCY}")
    import boto3
    from boto3.s3.transfer import TransferConfig

    rows = []
    for run in range(runs):
        out = work / f"boto-{run}"
        out.mkdir(parents=True)
        s3 = boto3.client("s3", endpoint_url=moto.url, aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
        cfg = TransferConfig(max_concurrency=CONCURRENCY, multipart_chunksize=8 << 20, multipart_threshold=8 << 20)
        t = time.time()
        # Like `aws s3 cp --recursive`: objects in parallel, each in parallel ranged parts.
        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            list(ex.map(lambda k: s3.download_file(BUCKET, k, str(out / Path(k).name), Config=cfg), objects))
        boto = time.time() - t
        cleanup(out)
        d = Daemon(work / f"warm-{run}", "n1", extra=["--s3-endpoint", moto.url, "--concurrency", str(CONCURRENCY)])
        try:
            t = time.time()
            d.run("warm", f"s3://{BUCKET}/large")
            loc = time.time() - t
            assert d.status()["origin_bytes"] == total
        finally:
            d.close()
            cleanup(work / f"warm-{run}")
        rows.append((boto, loc))
        print(f"  run {run + 1}: boto3 transfer manager {boto:.2f} s, locus warm {loc:.2f} s, ratio {loc / boto:.2f}")
    b = statistics.median(r[0] for r in rows)
    l = statistics.median(r[1] for r in rows)  # noqa: E741
    print(f"cold warm, medians of {runs} runs: locus {l:.2f} s ({total / l / 1e6:.0f} MB/s), "
          f"boto3 {b:.2f} s ({total / b / 1e6:.0f} MB/s), ratio {l / b:.2f} (goal: <= 1.0)")
    moto.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--part", choices=["all", "epoch", "warm"], default="all")
    ap.add_argument("--work", default=None)
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="locus-bench-origins-"))
    try:
        if a.part in ("all", "epoch"):
            bench_epoch(work, a.runs)
        if a.part in ("all", "warm"):
            bench_warm(work, a.runs)
    finally:
        cleanup(work)


if __name__ == "__main__":
    main()
