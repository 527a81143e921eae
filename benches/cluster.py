#!/usr/bin/env python3
"""Cluster benchmarks of locus: three daemons on loopback against the local test origin.

  1. Origin bytes of a cluster-scope warm of a repo, then of every other node reading every
     file (goal: at most 1.02x the repo, then nothing more); and of three simultaneous cold reads
     of one file on three nodes, side by side with three independent nodes (no cluster).
  2. Reading a 1 GiB file from a peer over loopback: a fresh node's `locus warm` of a file that
     its peer holds, against a plain TCP copy of the same bytes (sendfile to a socket, received
     into a file) in the same run (goals: at least 1 GB/s, at least 0.5x the TCP copy).
     `--grpc-only` runs it with chunk bodies over gRPC instead of the chunk wire.

Run from the repository root after `cargo build --release --workspace`:
    python3 benches/cluster.py [--runs 5]
The ring simulation (busiest node over the mean, keys moved on a join or leave) is a Rust bench:
    cargo bench -p locus-cluster --bench ring_sim
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from single_node import BIN, Daemon, MiB, fmt_rate, median, start_origin  # noqa: E402


def sim_stats(url):
    with urllib.request.urlopen(f"{url}/_sim/stats") as r:
        return json.load(r)


def free_addr():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    a = "127.0.0.1:%d" % s.getsockname()[1]
    s.close()
    return a


def status(d):
    return json.loads(d.locus("status", "--json", stdout=subprocess.PIPE).stdout)


def wait_up(nodes, n):
    deadline = time.time() + 30
    while True:
        ok = all(
            len(m := status(d)["members"]) == n and all(x["state"] == "up" for x in m) for d in nodes
        )
        if ok:
            return
        if time.time() > deadline:
            sys.exit("cluster did not form")
        time.sleep(0.1)


def cluster(url, work, n, *flags):
    addrs = [free_addr() for _ in range(n)]
    nodes = [Daemon(url, work, "--listen", a, "--peers", ",".join(addrs), *flags) for a in addrs]
    wait_up(nodes, n)
    return nodes, addrs


def bench_origin_once(work, runs):
    files, size = 4, 64 * MiB
    origin, url = start_origin("--random", f"acme/repo={files}x{size}", "--random", f"acme/one=1x{256 * MiB}",
                               "--throttle", "100MB")
    repo = files * size
    warm_ratio, after_ratio, cold_ratio, solo_ratio = [], [], [], []
    try:
        for _ in range(runs):
            nodes, _ = cluster(url, work, 3)
            before = sim_stats(url)["data_bytes"]
            nodes[0].locus("warm", "hf://acme/repo", "--scope", "cluster")
            mid = sim_stats(url)["data_bytes"]
            for d in nodes[1:]:
                d.locus("warm", "hf://acme/repo")
            end = sim_stats(url)["data_bytes"]
            warm_ratio.append((mid - before) / repo)
            after_ratio.append((end - mid) / repo)
            # Three cold reads of one file at once, on three nodes.
            before = sim_stats(url)["data_bytes"]
            ts = [threading.Thread(target=d.locus, args=("cat", "hf://acme/one/shard-00000.bin")) for d in nodes]
            [t.start() for t in ts]
            [t.join() for t in ts]
            cold_ratio.append((sim_stats(url)["data_bytes"] - before) / (256 * MiB))
            for d in nodes:
                d.stop()
            # The same three reads on three independent nodes.
            solo = [Daemon(url, work) for _ in range(3)]
            before = sim_stats(url)["data_bytes"]
            ts = [threading.Thread(target=d.locus, args=("cat", "hf://acme/one/shard-00000.bin")) for d in solo]
            [t.start() for t in ts]
            [t.join() for t in ts]
            solo_ratio.append((sim_stats(url)["data_bytes"] - before) / (256 * MiB))
            for d in solo:
                d.stop()
    finally:
        origin.terminate()
    return {
        "cluster_warm_origin_over_repo": median(warm_ratio),
        "other_nodes_origin_over_repo": median(after_ratio),
        "three_cold_reads_origin_over_file": median(cold_ratio),
        "three_independent_nodes_origin_over_file": median(solo_ratio),
    }


def tcp_copy(path, out):
    """Seconds to send `path` over a loopback TCP connection (sendfile) into the file `out`."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def serve():
        c, _ = srv.accept()
        with open(path, "rb") as f:
            c.sendfile(f)
        c.close()

    t = threading.Thread(target=serve)
    t.start()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    start = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port))
    with open(out, "wb") as f:
        while True:
            n = s.recv_into(buf)
            if n == 0:
                break
            f.write(view[:n])
    secs = time.perf_counter() - start
    s.close()
    t.join()
    srv.close()
    os.unlink(out)
    return secs


def bench_peer_read(work, runs, flags=()):
    size = 1 << 30
    origin, url = start_origin("--random", f"acme/big=1x{size}")
    a_addr, b_addr = free_addr(), free_addr()
    peers = f"{a_addr},{b_addr}"
    a = Daemon(url, work, "--listen", a_addr, "--peers", peers, *flags)
    t_locus, t_tcp = [], []
    try:
        a.locus("warm", "hf://acme/big")
        local = Path(work) / "big.bin"
        with open(local, "wb") as f:
            a.locus("cat", "hf://acme/big/shard-00000.bin", stdout=f)
        # One round more than asked, the first discarded. This VM hands freed memory back to
        # its host (free page reporting) a moment after it is freed, and a page the host took
        # back costs a host fault when it is touched again: a writer into the page cache then
        # runs several times slower, by how much depending on what was freed when. Each side
        # therefore runs twice in a row and only the second run is timed: it writes into the
        # memory its first run just freed, as on a machine that keeps its memory. The sides
        # alternate which goes first.
        def locus_once():
            b = Daemon(url, work, "--listen", b_addr, "--peers", peers, *flags)
            wait_up([a, b], 2)
            os.sync()
            start = time.perf_counter()
            b.locus("warm", "hf://acme/big")
            elapsed = time.perf_counter() - start
            st = status(b)
            if st["peer_bytes"] != size or st["origin_bytes"] != 0:
                sys.exit(f"the fresh node did not read from its peer alone: {st}")
            b.stop()
            return elapsed

        def tcp_once():
            os.sync()
            return tcp_copy(local, Path(work) / "copy.bin")

        for i in range(runs + 1):
            sides = [locus_once, tcp_once] if i % 2 == 0 else [tcp_once, locus_once]
            got = {}
            for side in sides:
                side()
                got[side] = side()
            elapsed, tcp = got[locus_once], got[tcp_once]
            if i > 0:
                t_locus.append(elapsed)
                t_tcp.append(tcp)
                print(f"  round {i}: locus {elapsed:.3f} s, tcp {tcp:.3f} s", flush=True)
        local.unlink()
    finally:
        a.stop()
        origin.terminate()
    return {
        "locus_peer_read_runs_s": [round(t, 3) for t in t_locus],
        "tcp_copy_runs_s": [round(t, 3) for t in t_tcp],
        "locus_peer_read_s": median(t_locus),
        "tcp_copy_s": median(t_tcp),
        "locus_rate": fmt_rate(size, median(t_locus)),
        "tcp_rate": fmt_rate(size, median(t_tcp)),
        "locus_GBps": size / median(t_locus) / 1e9,
        "speed_ratio": median([c / l for l, c in zip(t_locus, t_tcp)]),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--work", default=None, help="folder for caches (default: a temporary folder)")
    ap.add_argument("--part", choices=["all", "origin", "peer"], default="all")
    ap.add_argument("--grpc-only", action="store_true",
                    help="peer read with chunk bodies over gRPC (--no-peer-wire), for comparison")
    args = ap.parse_args()
    import tempfile

    work = args.work or tempfile.mkdtemp(prefix="locus-bench-")
    if args.part in ("all", "origin"):
        print("origin bytes:", json.dumps(bench_origin_once(work, args.runs), indent=2), flush=True)
    if args.part in ("all", "peer"):
        print("peer read:", json.dumps(bench_peer_read(work, args.runs, ["--no-peer-wire"] if args.grpc_only else []), indent=2), flush=True)


if __name__ == "__main__":
    main()
