#!/usr/bin/env python3
"""Load a checkpoint with `locus.load` into torch tensors and list them.

    python3 load.py TARGET [--socket PATH] [--check PATH]...

TARGET is a .safetensors file, a checkpoint folder (for example a model under the node's
namespace mount, /mnt/locus/hf/ORG/NAME), or a URI such as hf://ORG/NAME@REV, which the node's
daemon makes local first (at --socket, default $LOCUS_SOCKET or /run/locus/locus.sock).

The tensors are zero-copy views of the (cached) files' mappings. With --check, the local
.safetensors files or folders given are loaded with the official `safetensors` library too, and
every tensor must match bit for bit (name, dtype, shape, bytes); a mismatch exits 1.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import torch

import locus


def official(paths):
    """Every tensor of the given files or folders (their *.safetensors), read by `safetensors`."""
    from safetensors.torch import load_file

    out = {}
    for p in map(Path, paths):
        for f in sorted(p.glob("*.safetensors")) if p.is_dir() else [p]:
            out.update(load_file(str(f)))
    return out


def same(a, b):
    """Equal dtype, shape and bytes (bitwise, so NaNs and float8 compare too)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return a.numel() == 0 or torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("target", help="a .safetensors file, a checkpoint folder or a URI (hf://ORG/NAME@REV)")
    ap.add_argument("--socket", default=os.environ.get("LOCUS_SOCKET"), help="the daemon's socket, for URIs")
    ap.add_argument("--check", action="append", default=[], metavar="PATH",
                    help="compare with the official safetensors load of these local files or folders")
    a = ap.parse_args()

    t0 = time.perf_counter()
    try:
        tensors = locus.load(a.target, framework="pt", socket=a.socket)
    except (locus.LocusError, OSError) as e:
        sys.exit(f"error: {e}")
    seconds = time.perf_counter() - t0
    total = 0
    for name in sorted(tensors):
        t = tensors[name]
        nbytes = t.numel() * t.element_size()
        total += nbytes
        print(f"tensor {name} {str(t.dtype).removeprefix('torch.')} {list(t.shape)} {nbytes}")
    print(f"total {len(tensors)} tensors, {total} bytes, loaded in {seconds:.3f} s")

    if a.check:
        ref = official(a.check)
        bad = sorted(set(ref) ^ set(tensors))
        bad += [k for k in sorted(set(ref) & set(tensors)) if not same(tensors[k], ref[k])]
        if bad:
            print(f"MISMATCH with safetensors: {len(bad)} tensors differ or are missing, e.g. {bad[:5]}")
            sys.exit(1)
        print(f"check ok: {len(ref)} tensors equal safetensors' load of {', '.join(a.check)}")


if __name__ == "__main__":
    main()
