#!/usr/bin/env python3
"""48 threads reading 10 KB files through a mount over a million cached files (issue #17).

The test Hub serves `datasets/bench/small`: N files of 10,000 bytes (default 1,000,000), a
thousand per folder, generated from their names. A daemon warms all of them (its cache then
holds N files), and the same layout is written to local disk. Each run takes a fresh mount of
the whole dataset and a fixed random sample of S files (default 50,000), and 48 threads read
the sample: through the mount (first pass: each folder listed as it is looked in, each file
opened once), through the mount again (names, attributes and pages known), and natively, cold
and again. Reported as medians and the ratio native time / mount time (goal >= 0.7). The passes
over the page cache are bound by Python's GIL among the 48 threads, not by the file system.

Each run also reports the CPU seconds the daemon and the mount process spent in the first pass.

Run as root from the repository root after `cargo build --release --workspace`:
    python3 benches/fuse_scale.py [--files 1000000] [--sample 50000] [--runs 3] [--keep DIR]
        [--against '--open'] [--skip-warm]
(`--keep DIR`: the cache and native copies stay in DIR, and a later run with the same DIR
reuses them: its warm then finds every file cached; `--skip-warm` leaves the warm out.
`--linked`: no warm and no native copies; the cache is filled by the store's scale bench
(`--listed`) with the files the Hub lists, their data files hard links to 100,000 real ones, so
that ten million cached files fit this disk: their bytes are not the origin's, only the times
and the origin's request count (which must stay 0) are reported.
`--against ARGS`: each run also mounts with ARGS added, the two alternating. Each mount also
times `--latency` files of the sample read by one thread, pages dropped and then again: run
with `--files 10000 --sample 5000` for the baseline of a small cache.)
"""

import argparse
import concurrent.futures
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import peak_rss_mib  # noqa: E402
from single_node import BIN, start_origin  # noqa: E402

SIZE = 10_000


def name(i):
    return f"{i // 1000:04d}/{i:08d}.bin"


def read_all(paths, threads=48):
    def one(p):
        with open(p, "rb") as f:
            return len(f.read())
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as ex:
        n = sum(ex.map(one, paths, chunksize=64))
    return time.perf_counter() - t0, n


def latencies(paths):
    """Seconds each file takes to open, read whole and close, one after the other."""
    out = []
    for p in paths:
        t0 = time.perf_counter()
        with open(p, "rb") as f:
            f.read()
        out.append(time.perf_counter() - t0)
    return out


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def list_hub(url, repo, out):
    """Writes `uri, path, size, key` of each file of `repo` at the Hub at `url` to `out` (as a
    daemon lists it: a file's key is its git blob id and size), page by page; returns the count."""
    # `expand=sha`: the commit alone, not every file's name (gigabytes at the Hub for 10M files).
    with urllib.request.urlopen(f"{url}/api/{repo}/revision/main?expand=sha") as r:
        sha = json.load(r)["sha"]
    nxt, n = f"{url}/api/{repo}/tree/{sha}?recursive=true", 0
    with open(out, "w") as f:
        while nxt:
            with urllib.request.urlopen(nxt) as r:
                page, link = json.load(r), r.headers.get("Link", "")
            for e in page:
                if e["type"] == "file" and "lfs" not in e:
                    f.write(f"hf://{repo}@{sha}/{e['path']}\t{e['path']}\t{e['size']}\t"
                            f"gitblob:{e['oid']}:{e['size']}\n")
                    n += 1
            nxt = link.split(">", 1)[0].lstrip("<") if 'rel="next"' in link else None
    return n


def fill_linked(url, work):
    """A cache holding every file of the dataset, filled without its bytes (see --linked)."""
    t = time.time()
    n = list_hub(url, "datasets/bench/small", work / "listed.tsv")
    print(f"listed {n} files at the Hub: {time.time() - t:.0f} s", flush=True)
    t = time.time()
    subprocess.run(["cargo", "bench", "-q", "-p", "locus-store", "--bench", "scale", "--", "--listed",
                    str(work / "listed.tsv"), str(work / "cache")], check=True)
    print(f"linked fill of {n} files: {time.time() - t:.0f} s", flush=True)


def origin_data_bytes(url):
    """File bytes the test Hub has sent so far."""
    with urllib.request.urlopen(f"{url}/_sim/stats") as r:
        return json.load(r)["data_bytes"]


def locus(sock, *args, **kw):
    return subprocess.run([str(BIN / "locus"), "--socket", str(sock), *args], check=True, **kw)


def cpu_seconds(pid):
    """User + system CPU seconds of process `pid` so far."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def mount_pid(mnt):
    """The `locus mount` process serving `mnt`."""
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                args = (p / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"mount" in args and str(mnt).encode() in args:
                return int(p.name)
    sys.exit(f"no mount process for {mnt}")


def drop_caches(what=3):
    """Neither side starts with the other's pages or names cached (1: pages only)."""
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text(f"{what}\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--sample", type=int, default=50_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="where the cache and the native copies go")
    ap.add_argument("--keep", type=Path, default=None, help="keep (and reuse) the cache and copies here")
    ap.add_argument("--mount-args", default="", help="more arguments for `locus mount` (e.g. '--threads 4')")
    ap.add_argument("--against", default=None,
                    help="also measure mounts with these arguments added, alternating with the plain "
                         "ones in each run (e.g. '--open')")
    ap.add_argument("--latency", type=int, default=2000,
                    help="files of the sample read one at a time after the passes, for p50/p99")
    ap.add_argument("--linked", action="store_true",
                    help="fill the cache with links instead of a warm; no native copies (see above)")
    ap.add_argument("--skip-warm", action="store_true",
                    help="with --keep: the kept cache holds the dataset already; no warm first")
    a = ap.parse_args()
    n = a.files
    if a.keep:
        work = a.keep
        work.mkdir(parents=True, exist_ok=True)
        for old in work.glob("mnt*"):
            subprocess.run([str(BIN / "locus"), "unmount", str(old)], check=False, stderr=subprocess.DEVNULL)
            shutil.rmtree(old, ignore_errors=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="locus-fuse-scale-", dir=a.dir))
    print(f"machine: {os.cpu_count()} cores; {os.uname().release}; files {n}; sample {a.sample}; runs {a.runs}")
    origin, url = start_origin("--generated", f"datasets/bench/small={n}x{SIZE}-{SIZE}", "--lfs-threshold", "1MiB")
    d = None
    try:
        sock = work / "locus.sock"
        log = open(work / "daemon.log", "w")
        env = dict(os.environ, HF_ENDPOINT=url, HF_TOKEN_PATH=str(work / "none"))
        env.pop("HF_TOKEN", None)
        if a.linked and not (a.keep and a.skip_warm):
            fill_linked(url, work)
        cache_gib = max(8, n * 12_288 // (1 << 30) + 4)
        d = subprocess.Popen([str(BIN / "locus"), "daemon", "--cache-dir", str(work / "cache"),
                              "--cache-size", f"{cache_gib}GiB", "--socket", str(sock)],
                             stdout=subprocess.DEVNULL, stderr=log, env=env)
        deadline = time.time() + 30
        while "ready" not in (work / "daemon.log").read_text():
            if d.poll() is not None or time.time() > deadline:
                sys.exit("daemon failed: " + (work / "daemon.log").read_text())
            time.sleep(0.02)
        if not (a.keep and a.skip_warm or a.linked):
            t = time.time()
            locus(sock, "warm", "hf://datasets/bench/small", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            print(f"warm of {n} files: {time.time() - t:.0f} s")
        native = work / "native"
        t = time.time()
        body = os.urandom(SIZE)
        written = work / "native.done"
        for i in range(0 if a.linked or written.exists() and written.read_text() == str(n) else n):
            p = native / name(i)
            if i % 1000 == 0:
                p.parent.mkdir(parents=True, exist_ok=True)
            with open(p, "wb") as f:
                f.write(body)
        if not a.linked:
            written.write_text(str(n))
            print(f"native copies written: {time.time() - t:.0f} s")
        sample = [name(i) for i in random.Random(7).sample(range(n), a.sample)]
        variants = [a.mount_args.split()]
        if a.against is not None:
            variants.append(a.mount_args.split() + a.against.split())
        fuse1 = [[] for _ in variants]
        fuse2 = [[] for _ in variants]
        lat = [[] for _ in variants]
        nat, nat2 = [], []
        for r in range(a.runs):
            # Alternate which variant goes first: a later pass may find the disk warmer.
            order = list(range(len(variants)))
            if r % 2:
                order.reverse()
            for v in order:
                mnt = work / f"mnt{r}-{v}"
                mnt.mkdir()
                drop_caches()
                locus(sock, "mount", *variants[v], "hf://datasets/bench/small", str(mnt),
                      stdout=subprocess.DEVNULL)
                m = mount_pid(mnt)
                c0 = (cpu_seconds(d.pid), cpu_seconds(m))
                t1, got = read_all([mnt / p for p in sample])
                cpu = (cpu_seconds(d.pid) - c0[0], cpu_seconds(m) - c0[1])
                assert got == a.sample * SIZE, got
                t2, _ = read_all([mnt / p for p in sample])
                # One reader, names known, pages dropped: each file's open, READ (its cache
                # file from the disk) and close; then again from the page cache.
                drop_caches(1)
                cold = latencies([mnt / p for p in sample[:a.latency]])
                warm = latencies([mnt / p for p in sample[:a.latency]])
                lat[v].append((pct(cold, 0.5), pct(cold, 0.99), pct(warm, 0.5), pct(warm, 0.99)))
                subprocess.run([str(BIN / "locus"), "unmount", str(mnt)], check=False)
                fuse1[v].append(t1)
                fuse2[v].append(t2)
                print(f"run {r}: mount {' '.join(variants[v]) or '(default)'}: {t1:.2f} s "
                      f"(CPU: daemon {cpu[0]:.2f} s, mount {cpu[1]:.2f} s), again {t2:.2f} s; one reader "
                      + "p50/p99 {:.0f}/{:.0f} µs from the disk, {:.0f}/{:.0f} µs again".format(
                          *(x * 1e6 for x in lat[v][-1])), flush=True)
            if a.linked:
                continue
            drop_caches()
            tn, got = read_all([native / p for p in sample])
            assert got == a.sample * SIZE, got
            tn2, _ = read_all([native / p for p in sample])
            nat.append(tn)
            nat2.append(tn2)
            print(f"run {r}: native {tn:.2f} s, again {tn2:.2f} s", flush=True)
        med = statistics.median
        print(f"\n## 48 threads reading {a.sample} of {n} cached 10 KB files (fresh mount, caches dropped)")
        if a.linked:
            sent = origin_data_bytes(url)
            print(f"linked cache: the origin sent {sent} file bytes; daemon peak RSS "
                  f"{peak_rss_mib(d.pid):.0f} MiB")
            assert sent == 0, "a file was read from the origin: the linked fill missed it"
        else:
            print(f"native        median {med(nat):.2f} s ({a.sample / med(nat):.0f} files/s); again (page "
                  f"cache) {med(nat2):.2f} s")
        for v, args in enumerate(variants):
            print(f"mount {' '.join(args) or '(default)'}")
            ratio = "" if a.linked else f"; rate ratio {med(x / y for x, y in zip(nat, fuse1[v])):.2f} (goal >= 0.7)"
            print(f"  first pass  median {med(fuse1[v]):.2f} s ({a.sample / med(fuse1[v]):.0f} files/s){ratio}")
            ratio = "" if a.linked else f"; rate ratio {med(x / y for x, y in zip(nat2, fuse2[v])):.2f} against native again"
            print(f"  again       median {med(fuse2[v]):.2f} s ({a.sample / med(fuse2[v]):.0f} files/s){ratio}")
            print("  one reader  p50/p99 {:.0f}/{:.0f} µs from the disk, {:.0f}/{:.0f} µs from the page cache "
                  "(medians of the runs')".format(*(med(x[i] for x in lat[v]) * 1e6 for i in range(4))))
    finally:
        if d is not None:
            d.terminate()
            d.wait(timeout=120)
        origin.terminate()
        origin.wait()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
