"""Fixtures: the simulated Hub (`locus-test-origin`) as a process."""

import json
import os
import subprocess
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
PROFILE = os.environ.get("LOCUS_PROFILE", "debug")


def binary(name: str) -> str:
    p = TARGET / PROFILE / name
    if not p.exists():
        raise RuntimeError(f"{p} is missing: build it first (cargo build --workspace)")
    return str(p)


class Hub:
    def __init__(self, *args: str):
        self.proc = subprocess.Popen(
            [binary("locus-test-origin"), *args],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline().strip()
        assert line.startswith("ready "), f"test origin did not start: {line!r}"
        self.url = line.split(" ", 1)[1]
        # The same repos over S3 (bucket ORG, keys NAME/PATH).
        self.s3_url = self.proc.stdout.readline().strip().split(" ", 1)[1]

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path) as r:
            return json.loads(r.read())

    def stats(self):
        return self.get("/_sim/stats")

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def hub_factory():
    hubs = []

    def make(*args: str) -> Hub:
        h = Hub(*args)
        hubs.append(h)
        return h

    yield make
    for h in hubs:
        h.close()
