#!/usr/bin/env python3
"""Runs the runnable examples end to end on this machine, offline.

    python3 examples/run_all.py [--bin-dir target/debug]

Builds nothing. With the binaries `locus` and `locus-test-origin` (from --bin-dir, default
$LOCUS_BIN_DIR or target/debug), it starts a local Hugging Face Hub (`locus-test-origin`)
serving a generated model demo/tiny and a repo of random shards demo/shards, one
`locus daemon` with the namespace mount, and runs against them:

  rust-load        $LOCUS_EXAMPLE_RUST_LOAD hf://demo/tiny (skipped, loudly, when that is unset)
  python-load      examples/python-load/load.py hf://demo/tiny, checked against safetensors
  training-shards  examples/training-shards/train.py over the mounted shards, 2 epochs

Everything lives in a temporary folder; the mount is removed and the processes stopped at the
end, also on failure and on Ctrl-C. Needs root (or fuse permissions) for the mount. Exits 1 if
an example failed.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def wait_for(cond, what, timeout=60):
    end = time.time() + timeout
    while not cond():
        if time.time() > end:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin-dir", type=Path, default=Path(os.environ.get("LOCUS_BIN_DIR", ROOT / "target" / "debug")))
    a = ap.parse_args()
    locus, origin = a.bin_dir / "locus", a.bin_dir / "locus-test-origin"
    for b in (locus, origin):
        if not b.exists():
            sys.exit(f"error: {b} is missing: build the workspace first (cargo build --workspace)")
    # SIGTERM ends the run like Ctrl-C does, through the `finally` below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    tmp = tempfile.TemporaryDirectory(prefix="locus-examples-")
    work = Path(tmp.name)
    sock, mnt = work / "locus.sock", work / "mnt"
    mnt.mkdir()
    procs, failed = [], []
    try:
        hub = subprocess.Popen([origin, "--model", "demo/tiny=32MiBx2", "--random", "demo/shards=16x4MiB"],
                               stdout=subprocess.PIPE, text=True)
        procs.append(hub)
        line = hub.stdout.readline().strip()  # `ready URL` once the repos are generated
        if not line.startswith("ready "):
            raise RuntimeError(f"locus-test-origin did not start: {line!r}")
        url = line.split()[1]
        print(f"== local Hub at {url}: hf://demo/tiny (32 MiB model, 2 shards), hf://demo/shards (16 x 4 MiB)")

        # No token from this machine's environment reaches the local Hub.
        env = dict(os.environ, HF_ENDPOINT=url, HF_TOKEN="", HF_TOKEN_PATH=str(work / "no-token"), LOCUS_SOCKET=str(sock))
        env.pop("LOCUS_CONFIG", None)
        log = open(work / "daemon.log", "w")
        daemon = subprocess.Popen([locus, "daemon", "--cache-dir", work / "cache", "--socket", sock, "--mount", mnt],
                                  stdout=log, stderr=subprocess.STDOUT, env=env)
        procs.append(daemon)
        wait_for(lambda: daemon.poll() is not None or "ready" in (work / "daemon.log").read_text(), "the daemon")
        if daemon.poll() is not None:
            raise RuntimeError(f"the daemon exited: {(work / 'daemon.log').read_text()}")
        wait_for(lambda: (mnt / "hf").exists(), "the namespace mount")
        print(f"== locus daemon: socket {sock}, namespace view {mnt}")

        rust = os.environ.get("LOCUS_EXAMPLE_RUST_LOAD")
        runs = [
            ("python-load", [sys.executable, HERE / "python-load" / "load.py", "hf://demo/tiny", "--socket", sock,
                             "--check", mnt / "hf" / "demo" / "tiny"]),
            ("training-shards", [sys.executable, HERE / "training-shards" / "train.py", "--data", mnt / "hf" / "demo" / "shards",
                                 "--socket", sock, "--epochs", "2", "--locus", locus, "--json"]),
        ]
        if rust:
            runs.insert(0, ("rust-load", [rust, "hf://demo/tiny", "--socket", sock]))
        else:
            print("== rust-load: SKIPPED: set LOCUS_EXAMPLE_RUST_LOAD to the built binary "
                  "(cargo build -p locus-example-rust-load; target/debug/locus-example-rust-load)")
        for name, cmd in runs:
            print(f"== {name}: {' '.join(map(str, cmd))}", flush=True)
            p = subprocess.run(cmd, env=env, capture_output=True, text=True)
            lines = p.stdout.splitlines()
            # The tensor lists are long: show their ends.
            shown = lines if len(lines) <= 12 else lines[:4] + [f"... ({len(lines) - 8} lines)"] + lines[-4:]
            print("\n".join("   " + x for x in shown))
            ok = p.returncode == 0
            if ok and name == "training-shards":
                epochs = json.loads(lines[-1])["epochs"]
                ok = epochs[0]["origin_bytes"] == 16 * 4 << 20 and all(e["origin_bytes"] == 0 for e in epochs[1:])
                if not ok:
                    print("   expected the whole data set from origin in epoch 1 and nothing after")
            if not ok:
                print(f"   FAILED (exit {p.returncode}): {p.stderr.strip()}")
                failed.append(name)
        st = json.loads(subprocess.run([locus, "status", "--json", "--socket", sock], capture_output=True, text=True, check=True).stdout)
        print(f"== node: {st['files']} files, {st['cache_bytes']} bytes cached; origin {st['origin_bytes']} B, "
              f"peers {st['peer_bytes']} B, local {st['local_bytes']} B")
    finally:
        subprocess.run([locus, "unmount", mnt], capture_output=True)
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
        tmp.cleanup()
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        return 1
    print(f"ok: {len(runs)} examples ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
