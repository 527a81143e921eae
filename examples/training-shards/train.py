#!/usr/bin/env python3
"""A training-style data loader reading shard files through a locus mount, epoch after epoch.

    python3 train.py --data DIR [--socket PATH] [--epochs 2] [--json]

DIR is a mounted folder of shards, e.g. /mnt/locus/hf/datasets/ORG/NAME@REV/train (the node's
namespace mount) or a `locus mount` mountpoint. A torch DataLoader with worker processes reads
every shard in fixed-size records; the "training step" is a checksum. After each epoch the script
reports how many bytes the node took from the origin, from peers and from its local cache during
that epoch (deltas of `locus status --json`) and the epoch's time: the first epoch reads the
origin once, later epochs read nothing from it.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

RECORD = 1 << 20  # bytes per sample


class Shards(IterableDataset):
    """Yields fixed-size uint8 records of every shard; each worker takes every n-th shard."""

    def __init__(self, files):
        self.files = files

    def __iter__(self):
        w = get_worker_info()
        mine = self.files[w.id :: w.num_workers] if w else self.files
        for f in mine:
            # Plain reads through the mount: the daemon fetches what is missing, the rest is
            # served from its cache (and the kernel's page cache).
            with open(f, "rb", buffering=0) as fh:
                while chunk := fh.read(RECORD):
                    yield torch.frombuffer(bytearray(chunk), dtype=torch.uint8)


def status(locus, socket):
    cmd = [locus, "status", "--json"] + (["--socket", socket] if socket else [])
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"error: `{' '.join(cmd)}` failed: {p.stderr.strip()}")
    return json.loads(p.stdout)


def mib(n):
    return f"{n / (1 << 20):.2f} MiB"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, type=Path, help="the mounted folder of shards")
    ap.add_argument("--socket", default=os.environ.get("LOCUS_SOCKET"), help="the node's daemon socket")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    ap.add_argument("--locus", default=os.environ.get("LOCUS_BIN") or shutil.which("locus") or "locus",
                    help="the locus binary, for `locus status --json`")
    ap.add_argument("--json", action="store_true", help="also print every epoch's numbers as one JSON document")
    a = ap.parse_args()

    files = sorted(p for p in a.data.rglob("*") if p.is_file())
    if not files:
        sys.exit(f"error: no files under {a.data}")
    size = sum(p.stat().st_size for p in files)
    print(f"{len(files)} shards, {mib(size)} under {a.data}")
    loader = DataLoader(Shards(files), batch_size=None, num_workers=a.workers)

    epochs = []
    for epoch in range(1, a.epochs + 1):
        before = status(a.locus, a.socket)
        t0 = time.perf_counter()
        seen, checksum = 0, 0
        for record in loader:
            seen += record.numel()
            checksum = (checksum + int(record.sum(dtype=torch.int64))) % (1 << 32)  # the "step"
        seconds = time.perf_counter() - t0
        after = status(a.locus, a.socket)
        e = {"epoch": epoch, "bytes": seen, "seconds": round(seconds, 3), "checksum": checksum}
        for k in ("origin_bytes", "peer_bytes", "local_bytes"):
            e[k] = after[k] - before[k]
        epochs.append(e)
        print(f"epoch {epoch}: read {mib(seen)} in {seconds:.2f} s ({seen / (1 << 20) / max(seconds, 1e-9):.0f} MiB/s); "
              f"from origin {mib(e['origin_bytes'])} ({e['origin_bytes']} B), peers {mib(e['peer_bytes'])}, "
              f"local cache {mib(e['local_bytes'])}; checksum {checksum:08x}")
        if seen != size:
            sys.exit(f"error: epoch {epoch} read {seen} bytes of {size}")
    if a.json:
        print(json.dumps({"files": len(files), "bytes": size, "epochs": epochs}))


if __name__ == "__main__":
    main()
