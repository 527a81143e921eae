#!/usr/bin/env python3
"""Loader benchmarks, side by side with the official safetensors loaders, in one run.

  1. `locus.load_file` of a warm (page-cached) 1 GiB file against `safetensors.numpy.load_file`:
     time, and the process's RSS growth before any tensor is touched; then the time to touch
     every byte (sum) after each load.
  2. A sharded 2 GiB checkpoint to torch tensors: `locus.load(folder, framework="pt")` and
     `locus.load("hf://…")` through a warm daemon, against `safetensors.torch.load_file` over the
     shards.

Each measurement runs in a fresh Python process (so RSS and caches of one do not help another),
alternating locus and the peer. Run from the repository root after
`cargo build --release --workspace` and `pip install ./loader/python`:
    python3 benches/loader.py [--runs 5]
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

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"
GiB = 1 << 30

CHILD = r"""
import json, sys, time, os
def rss():
    for l in open('/proc/self/status'):
        if l.startswith('VmRSS:'): return int(l.split()[1]) * 1024
which, target, extra = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
import numpy, torch, safetensors.numpy, safetensors.torch, locus
base = rss()
t0 = time.perf_counter()
if which == 'locus_np':
    d = locus.load_file(target)
elif which == 'st_np':
    d = safetensors.numpy.load_file(target)
elif which == 'locus_pt':
    d = locus.load(target, framework='pt', socket=extra.get('socket'))
elif which == 'st_pt':
    d = {}
    for s in extra['shards']:
        d.update(safetensors.torch.load_file(s))
load = time.perf_counter() - t0
grown = rss() - base
t0 = time.perf_counter()
total = 0.0
for v in d.values():
    total += float(v.sum())
touch = time.perf_counter() - t0
print(json.dumps({'load': load, 'rss_growth': grown, 'touch': touch, 'n': len(d)}))
"""


def child(which, target, **extra):
    out = subprocess.run([sys.executable, "-c", CHILD, which, str(target), json.dumps(extra)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def make_file(path, size, dtype="float32", tensors=64):
    import numpy as np
    from safetensors.numpy import save_file
    per = size // tensors // np.dtype(dtype).itemsize
    rng = np.random.default_rng(0)
    save_file({f"layer.{i}.weight": rng.standard_normal(per, dtype=np.float32).astype(dtype) for i in range(tensors)},
              str(path))


def med(rows, key):
    return statistics.median(r[key] for r in rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="locus-loader-bench-"))
    print(f"machine: {os.cpu_count()} cores; runs per side: {a.runs}")
    try:
        f = work / "one.safetensors"
        make_file(f, GiB)
        subprocess.run(["cat", str(f)], stdout=subprocess.DEVNULL, check=True)
        ours, theirs = [], []
        for _ in range(a.runs):
            ours.append(child("locus_np", f))
            theirs.append(child("st_np", f))
        size = f.stat().st_size
        print("\n## 1 GiB file, warm, numpy")
        print(f"locus.load_file              median {med(ours, 'load') * 1e3:.1f} ms, RSS +{med(ours, 'rss_growth') / 2**20:.1f} MiB "
              f"({med(ours, 'rss_growth') / size:.2%} of the file); touching every byte after: {med(ours, 'touch'):.2f} s")
        print(f"safetensors.numpy.load_file  median {med(theirs, 'load') * 1e3:.1f} ms, RSS +{med(theirs, 'rss_growth') / 2**20:.1f} MiB "
              f"({med(theirs, 'rss_growth') / size:.2%}); touching every byte after: {med(theirs, 'touch'):.2f} s")
        print(f"time ratio locus / safetensors (median of pairs): {statistics.median(o['load'] / t['load'] for o, t in zip(ours, theirs)):.4f}")
        print(f"load + touch ratio: {statistics.median((o['load'] + o['touch']) / (t['load'] + t['touch']) for o, t in zip(ours, theirs)):.3f}")
        f.unlink()

        # Sharded 2 GiB checkpoint, bf16, with an index.
        d = work / "ckpt"
        d.mkdir()
        shards = []
        weight_map = {}
        for i in range(4):
            s = d / f"model-{i + 1:05}-of-00004.safetensors"
            import numpy as np
            from safetensors.torch import save_file
            import torch
            g = torch.Generator().manual_seed(i)
            ts = {f"layers.{i}.{j}.weight": torch.randn(2 * GiB // 4 // 16 // 2, generator=g).to(torch.bfloat16) for j in range(16)}
            save_file(ts, str(s))
            weight_map.update({k: s.name for k in ts})
            shards.append(str(s))
        (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        for s in shards:
            subprocess.run(["cat", s], stdout=subprocess.DEVNULL, check=True)
        total = sum(Path(s).stat().st_size for s in shards)

        origin = subprocess.Popen([str(BIN / "locus-test-origin"), "--repo", f"acme/ckpt={d}"], stdout=subprocess.PIPE, text=True)
        url = origin.stdout.readline().split()[1]
        sock = work / "locus.sock"
        env = dict(os.environ, HF_ENDPOINT=url, HF_TOKEN_PATH=str(work / "none"))
        log = open(work / "daemon.log", "w")
        daemon = subprocess.Popen([str(BIN / "locus"), "daemon", "--cache-dir", str(work / "cache"), "--socket", str(sock)],
                                  env=env, stderr=log)
        while "ready" not in (work / "daemon.log").read_text():
            time.sleep(0.05)
        subprocess.run([str(BIN / "locus"), "warm", "hf://acme/ckpt", "--socket", str(sock)], check=True, stdout=subprocess.DEVNULL)
        mnt = work / "mnt"
        mnt.mkdir()
        subprocess.run([str(BIN / "locus"), "mount", "hf://acme/ckpt", str(mnt), "--socket", str(sock)],
                       check=True, stdout=subprocess.DEVNULL)
        mnt_shards = [str(mnt / Path(s).name) for s in shards]
        folder, uri, st, st_fuse = [], [], [], []
        for _ in range(a.runs):
            folder.append(child("locus_pt", d))
            uri.append(child("locus_pt", "hf://acme/ckpt", socket=str(sock)))
            st.append(child("st_pt", d, shards=shards))
            st_fuse.append(child("st_pt", mnt, shards=mnt_shards))
        subprocess.run([str(BIN / "locus"), "unmount", str(mnt)], check=False)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait()
        origin.terminate()
        origin.wait()
        print(f"\n## sharded checkpoint, {total / GiB:.2f} GiB in 4 shards (bf16), to torch")
        for name, rows in (("locus.load(folder)", folder), ("locus.load(hf:// via daemon)", uri),
                           ("safetensors.torch.load_file x4", st), ("the same through the FUSE mount", st_fuse)):
            print(f"{name:32} load median {med(rows, 'load') * 1e3:8.1f} ms, RSS +{med(rows, 'rss_growth') / 2**20:7.1f} MiB, "
                  f"then touching every byte {med(rows, 'touch'):.2f} s")
        print(f"time ratio locus.load(folder) / safetensors: {statistics.median(o['load'] / t['load'] for o, t in zip(folder, st)):.4f}")
        print(f"time ratio locus.load(uri) / safetensors: {statistics.median(o['load'] / t['load'] for o, t in zip(uri, st)):.4f}")
        print(f"load + touch ratio (folder): {statistics.median((o['load'] + o['touch']) / (t['load'] + t['touch']) for o, t in zip(folder, st)):.3f}")
        print(f"time ratio locus.load(uri) / safetensors through the mount: {statistics.median(o['load'] / t['load'] for o, t in zip(uri, st_fuse)):.4f}")
        print(f"load + touch ratio locus.load(uri) / safetensors through the mount: {statistics.median((o['load'] + o['touch']) / (t['load'] + t['touch']) for o, t in zip(uri, st_fuse)):.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
