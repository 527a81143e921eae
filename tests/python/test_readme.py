"""The README's "Using it" section, walked: every command of its shell block runs as written
against local origins (the simulated Hub serving `meta-llama/Llama-3.1-8B`, moto's S3 with
`my-bucket`, a local HTTP server, a folder standing for the NFS share), and its Python block
runs with the official safetensors library checking what it loaded.

What differs from a real machine is only where things are, replaced by name below (`PLACES`),
and where the origins are, appended to the daemon's line (`ORIGINS`). A command the README
gains runs too; one that fails fails this test."""

import json
import os
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, Hub, binary
from origins import SECRET, FileServer, Moto, free_port

REPO = "meta-llama/Llama-3.1-8B"
TOKEN = "hf_readme_walk_0123456789"


def blocks(lang: str) -> list[str]:
    """The `lang` code blocks of the README's "Using it" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Using it\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{lang}\n(.*?)```", section, re.S)


def commands(block: str) -> list[str]:
    """The block's command lines, without comments."""
    out = []
    for line in block.splitlines():
        line = re.sub(r"\s+#\s.*$", "", line).strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def make_model(d: Path) -> dict:
    """Two shards with an index, a config, and files the README's --include leaves out."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    shards = [
        {"model.embed_tokens.weight": torch.randn(64, 32), "model.norm.weight": torch.randn(32)},
        {"lm_head.weight": torch.randn(64, 32, dtype=torch.bfloat16), "model.layers.0.w": torch.randn(32, 32)},
    ]
    weight_map = {}
    for i, t in enumerate(shards):
        name = f"model-0000{i + 1}-of-00002.safetensors"
        save_file(t, d / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in t})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (d / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 32}))
    (d / "README.md").write_text("# a model card\n")
    (d / "original").mkdir()
    (d / "original" / "consolidated.00.pth").write_bytes(os.urandom(300_000))
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in d.rglob("*") if p.is_file()}


def mounted(p: Path) -> bool:
    return any(line.split()[4] == str(p) for line in Path("/proc/self/mountinfo").read_text().splitlines())


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/dev/fuse").exists(), reason="needs root and /dev/fuse")
def test_the_readme_using_it_section_runs_as_written(tmp_path):
    model_dir = tmp_path / "hub-model"
    model_dir.mkdir()
    files = make_model(model_dir)
    hub = Hub("--token", TOKEN, "--repo", f"{REPO}={model_dir}")
    moto = Moto()
    s3 = moto.client()
    s3.create_bucket(Bucket="my-bucket")
    s3_objects = {f"datasets/shards/shard-{i}.tar": os.urandom(50_000 + i) for i in range(3)}
    s3_objects["datasets/shards/index.txt"] = b"not a tar"
    s3_objects["checkpoints/run-42/step-100/model.safetensors"] = os.urandom(70_000)
    for i in range(20):
        s3_objects[f"datasets/imagenet/train/n01440764/{i:04d}.JPEG"] = os.urandom(10_000 + 97 * i)
    for k, v in s3_objects.items():
        s3.put_object(Bucket="my-bucket", Key=k, Body=v)
    web = tmp_path / "web"
    (web / "models").mkdir(parents=True)
    (web / "models" / "tokenizer.json").write_text('{"version": "1.0"}')
    http = FileServer(web)
    nfs = tmp_path / "nfs" / "models" / "bert-base"
    nfs.mkdir(parents=True)
    (nfs / "config.json").write_text('{"model_type": "bert"}')
    (nfs / "pytorch_model.bin").write_bytes(os.urandom(100_000))

    metrics = f"127.0.0.1:{free_port()}"
    PLACES = {
        "hf_…": TOKEN,
        "/var/cache/locus": str(tmp_path / "cache"),
        "0.0.0.0:9100": metrics,
        "/models/llama": str(tmp_path / "models" / "llama"),
        "/ckpt": str(tmp_path / "ckpt"),
        "/mnt/imagenet": str(tmp_path / "data"),
        "https://example.com": http.url,
        "file:///nfs": f"file://{tmp_path}/nfs",
    }
    ORIGINS = ["--s3-endpoint", moto.url, "--file-root", str(tmp_path / "nfs"), "--http-allow-private", "127.0.0.1"]
    for d in ("models/llama", "ckpt", "data"):
        (tmp_path / d).mkdir(parents=True)
    env = dict(os.environ)
    for k in ("HF_TOKEN", "HF_TOKEN_PATH", "AWS_PROFILE", "AWS_ENDPOINT_URL", "LOCUS_CONFIG"):
        env.pop(k, None)
    env.update(
        LOCUS_SOCKET=str(tmp_path / "locus.sock"),
        HF_ENDPOINT=hub.url,
        HF_HOME=str(tmp_path / "hf-home"),
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_REGION="us-east-1",
        PATH=f"{Path(binary('locus')).parent}:{env['PATH']}",
    )
    daemon = None
    log = open(tmp_path / "daemon.log", "w")
    ran = []

    def run(args: list[str]) -> subprocess.CompletedProcess:
        r = subprocess.run(args, capture_output=True, env=env, timeout=300)
        assert r.returncode == 0, f"{shlex.join(args)} failed ({r.returncode}): {r.stderr.decode()}"
        return r

    try:
        (sh,) = blocks("sh")
        for line in commands(sh):
            for k, v in PLACES.items():
                line = line.replace(k, v)
            if line.startswith("export "):
                k, v = line[len("export "):].split("=", 1)
                env[k] = v
                continue
            background = line.endswith("&")
            args = shlex.split(line.rstrip("&"))
            assert args[0] == "locus", line
            args[0] = binary("locus")
            verb, uri = args[1], next((a for a in args[2:] if "://" in a), "")
            if verb == "daemon":
                assert background, "the README starts the daemon in the background"
                daemon = subprocess.Popen(args + ORIGINS, stdout=log, stderr=subprocess.STDOUT, env=env)
                end = time.time() + 30
                while "ready" not in (tmp_path / "daemon.log").read_text():
                    assert daemon.poll() is None and time.time() < end, (tmp_path / "daemon.log").read_text()
                    time.sleep(0.05)
                ran.append(verb)
                continue
            r = run(args)
            ran.append(f"{verb} {uri.split('/')[0]}")
            out = r.stdout
            # What each command promises, checked against the origin's bytes.
            if verb == "ls" and uri.startswith("hf://"):
                got = {f["path"]: f["cached_fraction"] for f in json.loads(out)["files"]}
                want = {p: 1.0 if p.endswith((".safetensors", ".json")) else 0.0 for p in files}
                assert got == want, got
            elif verb == "cat" and uri.startswith("hf://"):
                assert out == files["config.json"]
            elif verb == "cat":
                assert out == (web / "models" / "tokenizer.json").read_bytes()
            elif verb == "status":
                st = json.loads(out)
                assert st["pinned"] == 4 and st["origin_bytes"] > 0, st
            elif verb == "mount" and uri.startswith("hf://"):
                m = Path(PLACES["/models/llama"])
                assert mounted(m)
                assert (m / "config.json").read_bytes() == files["config.json"]
                assert (m / "model-00001-of-00002.safetensors").read_bytes() == files["model-00001-of-00002.safetensors"]
            elif verb == "mount" and "imagenet" in uri:
                data = Path(PLACES["/mnt/imagenet"])
                for key, body in s3_objects.items():
                    if key.startswith("datasets/imagenet/"):
                        assert (data / key[len("datasets/imagenet/"):]).read_bytes() == body, key
            elif verb == "mount":
                c = Path(PLACES["/ckpt"])
                key = "checkpoints/run-42/step-100/model.safetensors"
                assert (c / "step-100" / "model.safetensors").read_bytes() == s3_objects[key]
            elif verb == "unmount":
                assert not mounted(Path(PLACES["/models/llama"]))
            elif verb == "unpin":
                assert json.loads(run([binary("locus"), "status", "--json"]).stdout)["pinned"] == 0
            elif verb == "warm" and uri.startswith("s3://"):
                ls = json.loads(run([binary("locus"), "ls", uri, "--json"]).stdout)
                got = {f["path"]: f["cached_fraction"] for f in ls["files"]}
                assert got == {"shard-0.tar": 1.0, "shard-1.tar": 1.0, "shard-2.tar": 1.0, "index.txt": 0.0}, got
            elif verb == "warm" and uri.startswith("file://"):
                ls = json.loads(run([binary("locus"), "ls", uri, "--json"]).stdout)
                assert sorted(f["cached_fraction"] for f in ls["files"]) == [1.0, 1.0], ls
        assert ran == [
            "daemon", "warm hf:", "ls hf:", "cat hf:", "status ", "mount hf:", "unmount ", "unpin hf:",
            "warm s3:", "mount s3:", "mount s3:", "cat http:", "warm file:",
        ], ran

        # The Python block, in a folder holding the `model.safetensors` it opens.
        (py,) = blocks("python")
        from safetensors.torch import save_file
        import torch

        save_file({"lm_head.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4)}, tmp_path / "model.safetensors")
        check = f"""
import numpy, torch
from safetensors.torch import load_file
want = {{}}
for p in {[str(model_dir / p) for p in files if p.endswith(".safetensors")]!r}:
    want.update(load_file(p))
assert set(tensors) == set(want), sorted(tensors)
assert all(torch.equal(tensors[k], want[k]) for k in want)
assert numpy.array_equal(w, numpy.arange(12, dtype=numpy.float32).reshape(3, 4))
print("checked", len(tensors))
"""
        r = subprocess.run(
            ["python3", "-c", py + check], capture_output=True, env=env, cwd=tmp_path, timeout=300
        )
        assert r.returncode == 0, r.stderr.decode()
        assert r.stdout.decode().strip() == "checked 4"
    finally:
        for m in (PLACES["/models/llama"], PLACES["/ckpt"], PLACES["/mnt/imagenet"]):
            if mounted(Path(m)):
                subprocess.run([binary("locus"), "unmount", m], env=env, capture_output=True)
        if daemon and daemon.poll() is None:
            daemon.terminate()
            daemon.wait(timeout=20)
        log.close()
        http.close()
        moto.close()
        hub.close()
