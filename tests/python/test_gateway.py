"""The Hub gateway (`locus daemon --hub-gateway`) with unmodified clients: `huggingface_hub`
(`snapshot_download`, `hf_hub_download`), the `hf` CLI, `hf_transfer` and
`transformers.AutoModel.from_pretrained`, each with its endpoint at a node. Bytes are checked
against the digests the simulated Hub publishes; the Hub counts what the cluster asked of it."""

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from huggingface_hub import hf_hub_download, snapshot_download
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError

from origins import Daemon, cleanup, free_port
from test_hub_fidelity import check_against_tree

NODE_TOKEN = "hf_node_token_for_the_gateway_test"
USER_TOKEN = "hf_user_token_for_the_gateway_test"


@pytest.fixture
def workdir(tmp_path):
    yield tmp_path
    cleanup(tmp_path)


def node(workdir, hub, name, extra=(), listen=None):
    """A daemon whose origin is `hub`, with its own token and a Hub gateway; returns it and
    the gateway's URL."""
    port = free_port()
    d = Daemon(
        workdir,
        name,
        extra=["--hub-gateway", f"127.0.0.1:{port}", *extra],
        env={"HF_ENDPOINT": hub.url, "HF_TOKEN": NODE_TOKEN},
        listen=listen,
    )
    return d, f"http://127.0.0.1:{port}"


def test_huggingface_hub_reads_through_two_nodes_and_the_second_costs_the_origin_nothing(hub_factory, workdir):
    hub = hub_factory("--model", "acme/model=6MiBx2", "--token", NODE_TOKEN, "--gated", "acme/other")
    ports = [free_port() for _ in range(2)]
    peers = ",".join(f"127.0.0.1:{p}" for p in ports)
    metrics = free_port()
    a, gw_a = node(workdir, hub, "a", ["--peers", peers, "--metrics", f"127.0.0.1:{metrics}"], listen=f"127.0.0.1:{ports[0]}")
    b, gw_b = node(workdir, hub, "b", ["--peers", peers], listen=f"127.0.0.1:{ports[1]}")
    try:
        folder = Path(snapshot_download("acme/model", cache_dir=workdir / "c1", endpoint=gw_a))
        files = check_against_tree(hub, "acme/model", folder)
        assert any("lfs" in e for e in files) and any("lfs" not in e for e in files)
        model_bytes = sum(e["size"] for e in files)
        first = hub.stats()
        assert model_bytes <= first["data_bytes"] <= model_bytes * 1.02, first
        # Another client on the other node: every byte from the cluster, none from the Hub.
        folder = Path(snapshot_download("acme/model", cache_dir=workdir / "c2", endpoint=gw_b))
        check_against_tree(hub, "acme/model", folder)
        p = hf_hub_download("acme/model", "config.json", cache_dir=workdir / "c3", endpoint=gw_b)
        assert Path(p).read_bytes() == (folder / "config.json").read_bytes()
        second = hub.stats()
        assert second["data_bytes"] == first["data_bytes"], (first, second)
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics").read().decode()
        assert 'locus_gateway_requests_total{api="hub.resolve",status="200"}' in text, text
        assert "locus_gateway_bytes_total" in text
        for d in (a, b):
            assert NODE_TOKEN not in d.logs()
    finally:
        a.close()
        b.close()


def test_the_hf_cli_and_hf_transfer_read_through_the_gateway(hub_factory, workdir):
    hub = hub_factory("--model", "acme/model=6MiBx2")
    d, gw = node(workdir, hub, "n")
    try:
        env = dict(os.environ, HF_ENDPOINT=gw, HF_HOME=str(workdir / "hf-home"))
        out = workdir / "cli"
        r = subprocess.run(["hf", "download", "acme/model", "--local-dir", str(out)], env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        files = check_against_tree(hub, "acme/model", out)
        # hf_transfer: parallel ranged GETs of the resolve URL, as it downloads from the Hub.
        import hf_transfer

        for e in files:
            dest = workdir / "hft" / e["path"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            hf_transfer.download(url=f"{gw}/acme/model/resolve/main/{e['path']}", filename=str(dest),
                                 max_files=8, chunk_size=1 << 20, headers={})
            assert dest.read_bytes() == (out / e["path"]).read_bytes(), e["path"]
    finally:
        d.close()


def test_a_gated_repo_needs_a_token_the_hub_accepts(hub_factory, workdir):
    hub = hub_factory("--model", "acme/gated=1MiBx1", "--model", "acme/open=1MiBx1", "--token", NODE_TOKEN,
                      "--also-token", USER_TOKEN, "--gated", "acme/gated")
    d, gw = node(workdir, hub, "n")
    try:
        # The node can read it (it warms it with its own token), and still a client without a
        # token, or with one the Hub refuses, gets nothing.
        d.run("warm", "hf://acme/gated")
        for token in (False, "hf_not_a_token"):
            with pytest.raises((GatedRepoError, HfHubHTTPError)):
                snapshot_download("acme/gated", cache_dir=workdir / f"c-{token}", endpoint=gw, token=token)
            with pytest.raises((GatedRepoError, HfHubHTTPError)):
                hf_hub_download("acme/gated", "config.json", cache_dir=workdir / f"d-{token}", endpoint=gw,
                                token=token)
        folder = Path(snapshot_download("acme/gated", cache_dir=workdir / "ok", endpoint=gw, token=USER_TOKEN))
        check_against_tree(hub, "acme/gated", folder)
        # A public repo needs none.
        folder = Path(snapshot_download("acme/open", cache_dir=workdir / "open", endpoint=gw, token=False))
        check_against_tree(hub, "acme/open", folder)
        assert NODE_TOKEN not in d.logs() and USER_TOKEN not in d.logs()
    finally:
        d.close()


def test_transformers_loads_a_model_through_the_gateway(hub_factory, workdir):
    src = workdir / "tiny-bert"
    # A tiny BERT, made and saved locally with transformers itself.
    make = f"""
import torch, transformers
torch.manual_seed(0)
cfg = transformers.BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64, max_position_embeddings=64)
transformers.BertModel(cfg).save_pretrained({str(src)!r})
"""
    subprocess.run([sys.executable, "-c", make], check=True, timeout=300)
    hub = hub_factory("--repo", f"acme/tiny-bert={src}")
    d, gw = node(workdir, hub, "n")
    try:
        load = f"""
import torch, transformers
m = transformers.AutoModel.from_pretrained("acme/tiny-bert")
ref = transformers.AutoModel.from_pretrained({str(src)!r})
a, b = m.state_dict(), ref.state_dict()
assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "weights differ"
print("loaded", type(m).__name__, sum(t.numel() for t in a.values()))
"""
        env = dict(os.environ, HF_ENDPOINT=gw, HF_HOME=str(workdir / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1")
        r = subprocess.run([sys.executable, "-c", load], env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and "loaded BertModel" in r.stdout, r.stdout + r.stderr
        assert hub.stats()["data_bytes"] >= (src / "model.safetensors").stat().st_size
    finally:
        d.close()
