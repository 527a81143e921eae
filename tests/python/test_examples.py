"""The examples under examples/ run for real: each against a local Hub and a real daemon with its
namespace mount, their output checked against the official `safetensors` library and the
daemon's counters; the Kubernetes examples validate against the API schemas and their `locus`
arguments parse with the real binary."""

import json
import shutil
import signal
import tempfile
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open as st_open

from conftest import ROOT, binary
from origins import Daemon

EXAMPLES = ROOT / "examples"
RUST_LOAD = "locus-example-rust-load"
TENSOR = re.compile(r"^tensor (\S+) (\S+) (\[[\d, ]*\]) (\d+)(?: sum32=([0-9a-f]{8}))?$")


def node(hub, tmp_path):
    """A daemon on `hub` with the namespace view at tmp_path/mnt, once the view is up."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": "", "HF_TOKEN_PATH": str(tmp_path / "no-token")}
    d = Daemon(tmp_path, "node", extra=["--mount", str(mnt)], env=env)
    for _ in range(200):
        if (mnt / "hf").exists():
            break
        time.sleep(0.05)
    return d, mnt


def stop(d, mnt):
    d.close()  # the daemon unmounts on SIGTERM; unmount anyway if it could not
    subprocess.run([binary("locus"), "unmount", str(mnt)], capture_output=True)


def official(folder: Path, torch_dtypes=False):
    """name -> (dtype, shape, nbytes, sum of bytes mod 2^32) of every *.safetensors in folder,
    read by the official library; dtypes as safetensors (F32) or torch (float32) names them."""
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with st_open(str(f), framework="pt") as st:
            for k in st.keys():
                t = st.get_tensor(k)
                raw = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else np.zeros(0, np.uint8)
                dtype = str(t.dtype).removeprefix("torch.") if torch_dtypes else st.get_slice(k).get_dtype()
                out[k] = (dtype, list(t.shape), raw.size, int(raw.sum(dtype=np.uint64)) % (1 << 32))
    return out


def parse_tensors(stdout: str):
    got = {}
    for line in stdout.splitlines():
        m = TENSOR.match(line)
        if m:
            name, dtype, shape, n, s = m.groups()
            got[name] = (dtype, json.loads(shape), int(n), int(s, 16) if s else None)
    return got


def rust_load() -> str:
    try:
        return binary(RUST_LOAD)
    except RuntimeError as e:
        # Not a skip: the example must build with the workspace it is a member of.
        pytest.fail(f"{e}; examples/rust-load is a workspace member", pytrace=False)


def test_rust_load_example_matches_safetensors(hub_factory, tmp_path):
    exe = rust_load()
    hub = hub_factory("--model", "acme/tiny=8MiBx2")
    d, mnt = node(hub, tmp_path)
    try:
        want = official(mnt / "hf" / "acme" / "tiny")
        assert len(want) > 10
        total = sum(v[2] for v in want.values())
        # Through the daemon (a URI), and a folder of the mount: the same tensors, bit for bit.
        for target in ["hf://acme/tiny@main", str(mnt / "hf" / "acme" / "tiny")]:
            p = subprocess.run([exe, target, "--socket", d.socket], capture_output=True, text=True, timeout=120)
            assert p.returncode == 0, p.stderr
            assert parse_tensors(p.stdout) == want, target
            assert f"total {len(want)} tensors, {total} bytes in 2 shards" in p.stdout
        # The URI's shards are the daemon's cache files, mapped as they are.
        shards = [l.split(" ", 1)[1] for l in p.stdout.splitlines() if l.startswith("shard ")]
        assert len(shards) == 2
        p = subprocess.run([exe, "hf://acme/tiny", "--socket", d.socket], capture_output=True, text=True)
        assert all(str(d.dir / "cache") in l for l in p.stdout.splitlines() if l.startswith("shard ")), p.stdout
        p = subprocess.run([exe, "hf://acme/nope", "--socket", d.socket], capture_output=True, text=True)
        assert p.returncode == 1 and p.stderr.startswith("error: ") and len(p.stderr.splitlines()) == 1, p.stderr
        assert subprocess.run([exe], capture_output=True).returncode == 2
    finally:
        stop(d, mnt)


def test_python_load_example_matches_safetensors(hub_factory, tmp_path):
    hub = hub_factory("--model", "acme/tiny=8MiBx2", "--model", "acme/other=2MiBx1")
    d, mnt = node(hub, tmp_path)
    script = str(EXAMPLES / "python-load" / "load.py")
    try:
        folder = mnt / "hf" / "acme" / "tiny"
        want = official(folder, torch_dtypes=True)
        for target in ["hf://acme/tiny", str(folder)]:
            p = subprocess.run([sys.executable, script, target, "--socket", d.socket, "--check", str(folder)],
                               capture_output=True, text=True, timeout=120)
            assert p.returncode == 0, p.stdout + p.stderr
            got = parse_tensors(p.stdout)
            assert {k: v[:3] for k, v in got.items()} == {k: v[:3] for k, v in want.items()}
            assert f"check ok: {len(want)} tensors equal" in p.stdout
        # The check really compares: another model's files are a mismatch, exit 1.
        p = subprocess.run([sys.executable, script, "hf://acme/tiny", "--socket", d.socket,
                            "--check", str(mnt / "hf" / "acme" / "other")], capture_output=True, text=True, timeout=120)
        assert p.returncode == 1 and "MISMATCH" in p.stdout, p.stdout + p.stderr
        p = subprocess.run([sys.executable, script, "hf://acme/nope", "--socket", d.socket], capture_output=True, text=True)
        assert p.returncode == 1 and p.stderr.startswith("error: "), p.stderr
    finally:
        stop(d, mnt)


def test_training_example_reads_the_origin_once(hub_factory, tmp_path):
    count, size = 8, 2 << 20
    hub = hub_factory("--random", f"acme/shards={count}x{size // (1 << 20)}MiB")
    d, mnt = node(hub, tmp_path)
    try:
        p = subprocess.run([sys.executable, str(EXAMPLES / "training-shards" / "train.py"), "--data",
                            str(mnt / "hf" / "acme" / "shards"), "--socket", d.socket, "--epochs", "2",
                            "--locus", binary("locus"), "--json"], capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stdout + p.stderr
        report = json.loads(p.stdout.splitlines()[-1])
        e1, e2 = report["epochs"]
        assert report["files"] == count and report["bytes"] == count * size
        assert e1["bytes"] == e2["bytes"] == count * size and e1["checksum"] == e2["checksum"]
        assert e1["origin_bytes"] == count * size, "epoch 1 reads every shard from the origin once"
        assert e2["origin_bytes"] == 0, "epoch 2 reads nothing from the origin"
        assert re.search(r"^epoch 2: .* from origin 0\.00 MiB \(0 B\)", p.stdout, re.M), p.stdout
        assert d.status()["origin_bytes"] == count * size
    finally:
        stop(d, mnt)


def test_run_all_runs_every_example():
    exe = rust_load()
    env = dict(os.environ, LOCUS_EXAMPLE_RUST_LOAD=exe, LOCUS_BIN_DIR=str(Path(binary("locus")).parent))
    p = subprocess.run([sys.executable, str(EXAMPLES / "run_all.py")], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "ok: 3 examples ran" in p.stdout and "SKIPPED" not in p.stdout, p.stdout
    tmp = re.search(r"socket (\S+)/locus\.sock", p.stdout).group(1)
    assert not Path(tmp).exists(), "run_all.py removes its temporary folder"
    assert tmp not in Path("/proc/mounts").read_text(), "run_all.py unmounts"


# Kubernetes examples: no cluster here, so the schemas, the chart's defaults and the binary judge.

def k8s_docs(name):
    return [d for d in yaml.safe_load_all((EXAMPLES / "k8s" / name).read_text()) if d]


def chart_defaults():
    values = yaml.safe_load((ROOT / "helm" / "locus" / "values.yaml").read_text())
    app = str(yaml.safe_load((ROOT / "helm" / "locus" / "Chart.yaml").read_text())["appVersion"])
    return values, f"{values['image']['repository']}:{values['image']['tag'] or app}"


def check_locus_args(args, tmp_path):
    """`locus ARGS` with the socket swapped for a missing one: rc 1, cannot connect (2 = usage)."""
    args = list(args)
    i = args.index("--socket") + 1
    assert args[i] == "/run/locus/locus.sock"
    args[i] = str(tmp_path / "no-daemon" / "locus.sock")
    p = subprocess.run([binary("locus"), *args], capture_output=True, text=True, timeout=60,
                       env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)})
    assert p.returncode == 1 and "cannot reach the locus daemon" in p.stderr, (args, p.returncode, p.stderr)


def check_pod(pod, tmp_path, values, image):
    """The socket and wait-for-daemon parts common to both examples; returns the warm args."""
    vols = {v["name"]: v for v in pod["volumes"]}
    inits = {c["name"]: c for c in pod["initContainers"]}
    sock = next(m for c in pod["initContainers"] for m in c["volumeMounts"] if m["mountPath"] == "/run/locus")
    assert vols[sock["name"]]["hostPath"]["path"] == values["socket"]["hostPath"]
    wait = re.search(r"locus (status --socket \S+)", inits["wait-for-locus"]["command"][-1]).group(1).split()
    check_locus_args(wait, tmp_path)
    warm = [c for c in pod["initContainers"] + pod["containers"] if c.get("args", [None])[0] == "warm"]
    assert len(warm) == 1
    for c in pod["initContainers"] + [warm[0]]:
        assert c["image"] == image, "the chart's default image"
    assert "command" not in warm[0], "keeps the image's ENTRYPOINT (tini -- locus)"
    check_locus_args(warm[0]["args"], tmp_path)
    return warm[0]["args"]


def validate(docs):
    import kubernetes_validate

    version = os.environ.get("K8S_VERSION") or kubernetes_validate.latest_version()
    for d in docs:
        kubernetes_validate.validate(d, version, strict=True)  # raises on unknown fields too


def test_k8s_inference_deployment(tmp_path):
    docs = k8s_docs("inference-deployment.yaml")
    validate(docs)
    values, image = chart_defaults()
    dep = next(d for d in docs if d["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    args = check_pod(pod, tmp_path, values, image)
    uri = next(a for a in args if a.startswith("hf://"))
    assert args[args.index("--scope") + 1] == "node", "warms a full copy on this pod's node"
    # The served model is the warmed URI's path under the chart's namespace mount.
    vols = {v["name"]: v for v in pod["volumes"]}
    server = pod["containers"][0]
    mount = next(m for m in server["volumeMounts"] if vols[m["name"]].get("hostPath", {}).get("path") == values["mount"]["hostPath"])
    assert mount["mountPropagation"] == "HostToContainer" and mount["readOnly"] is True
    model = server["args"][server["args"].index("--model") + 1]
    assert model == f"{mount['mountPath']}/hf/{uri[len('hf://'):]}" and "@" in model, (model, uri)
    assert not any(c.get("securityContext", {}).get("privileged") for c in pod["containers"] + pod["initContainers"])


def test_k8s_gateway_deployment():
    """The gateway example: HF_ENDPOINT is the Hub gateway on the pod's own node, at the
    chart's port once `gateways.hub.enabled` is set; nothing privileged, no host folder."""
    docs = k8s_docs("gateway-deployment.yaml")
    validate(docs)
    values, _ = chart_defaults()
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["HOST_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    assert env["HF_ENDPOINT"]["value"] == f"http://$(HOST_IP):{values['gateways']['hub']['port']}"
    assert values["gateways"]["hostPort"] is True, "the chart opens the gateway on the node's IP"
    assert "volumes" not in pod and not any(c.get("securityContext", {}).get("privileged") for c in pod["containers"])


# The volume attributes the CSI plugin reads (`daemon/csi/src/attrs.rs`, `KEYS`).
CSI_KEYS = {"uri", "revision", "include", "exclude", "warm", "warmTimeout"}


def test_k8s_csi_volumes():
    """The CSI examples: an inline volume and a static PV/PVC of driver csi.locus.dev, with
    attributes the plugin reads; the pods are unprivileged and name no host folder."""
    inline = k8s_docs("csi-inline-deployment.yaml")
    static = k8s_docs("csi-static-pv.yaml")
    validate(inline + static)
    pod = next(d for d in inline if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    vol = pod["volumes"][0]["csi"]
    pv = next(d for d in static if d["kind"] == "PersistentVolume")["spec"]["csi"]
    for attrs in (vol["volumeAttributes"], pv["volumeAttributes"]):
        assert set(attrs) <= CSI_KEYS and attrs["uri"].startswith(("hf://", "s3://")), attrs
    assert vol["driver"] == pv["driver"] == "csi.locus.dev" and vol["readOnly"] and pv["readOnly"]
    claim = next(d for d in static if d["kind"] == "PersistentVolumeClaim")
    assert claim["spec"]["volumeName"] == next(d for d in static if d["kind"] == "PersistentVolume")["metadata"]["name"]
    for p in [pod, next(d for d in static if d["kind"] == "Pod")["spec"]]:
        assert all("hostPath" not in v for v in p["volumes"])
        assert not any(c.get("securityContext", {}).get("privileged") for c in p["containers"])
    src = (ROOT / "daemon" / "csi" / "src" / "attrs.rs").read_text()
    assert all(f'"{k}"' in src for k in CSI_KEYS), "the plugin reads these keys"


def test_k8s_warm_job(tmp_path):
    docs = k8s_docs("warm-job.yaml")
    validate(docs)
    values, image = chart_defaults()
    job = next(d for d in docs if d["kind"] == "Job")
    args = check_pod(job["spec"]["template"]["spec"], tmp_path, values, image)
    assert args[args.index("--scope") + 1] == "cluster"
    assert sum(a.startswith("hf://") for a in args) >= 2, "warms a list of URIs"


def test_the_loader_as_another_user_needs_the_daemons_data_group(hub_factory):
    """Cached bytes are the daemon's user's alone unless it names a --data-group: a loader
    in the socket's group but not the data group gets a clear error, one in it loads."""
    exe = rust_load()
    hub = hub_factory("--model", "acme/llm=1MiBx2")
    work = tempfile.mkdtemp(prefix="locus-access-")
    os.chmod(work, 0o755)  # every folder above the cache is open: only its own modes decide
    env = dict(os.environ, HF_ENDPOINT=hub.url, HF_TOKEN_PATH=os.path.join(work, "none"))
    env.pop("HF_TOKEN", None)
    try:
        for i, extra in enumerate([[], ["--data-group", "4242"]]):
            sock = os.path.join(work, f"s{i}.sock")
            log_path = os.path.join(work, f"d{i}.log")
            with open(log_path, "w") as log:
                d = subprocess.Popen([binary("locus"), "daemon", "--cache-dir", os.path.join(work, "cache"),
                                      "--socket", sock, "--socket-group", "4242", *extra],
                                     env=env, stderr=log)
            try:
                deadline = time.time() + 30
                while "ready" not in open(log_path).read():
                    assert d.poll() is None and time.time() < deadline, open(log_path).read()
                    time.sleep(0.02)
                # The Rust loader (the example binary): Python itself lives in root's home here.
                r = subprocess.run([exe, "hf://acme/llm", "--socket", sock], user=65534, group=4242,
                                   extra_groups=[], capture_output=True, text=True, cwd=work)
                if not extra:
                    assert r.returncode == 1, r.stdout
                    assert "permission denied" in r.stderr.lower(), r.stderr
                    assert "--data-group" in r.stderr, r.stderr
                else:
                    assert r.returncode == 0, r.stderr
                    assert len(parse_tensors(r.stdout)) > 0, r.stdout
            finally:
                d.send_signal(signal.SIGTERM)
                d.wait(timeout=30)
    finally:
        shutil.rmtree(work)
