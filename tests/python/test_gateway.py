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


S3_KEY, S3_SECRET = "AKIDGATEWAYTEST", "gateway/secret+key"


def test_boto3_and_s3fs_read_through_the_s3_gateway(workdir):
    """moto's S3 is the origin; boto3 and s3fs speak to a node's S3 gateway with the key pair
    it was given: listings (pages, delimiters), objects, ranges and heads read as moto's, and
    a wrong signature, an unsigned request or a missing key get S3's errors."""
    import boto3
    import s3fs
    from botocore import UNSIGNED
    from botocore.config import Config
    from botocore.exceptions import ClientError

    from origins import Moto

    moto = Moto()
    bucket = "gw-bucket"
    origin = moto.client()
    origin.create_bucket(Bucket=bucket)
    objects = {f"data/{i % 3}/obj-{i:05d}.bin": os.urandom(100 + i % 900) for i in range(1200)}
    objects["big/blob.bin"] = os.urandom(12 << 20)
    objects["top level é.txt"] = b"hello\n"
    for k, v in objects.items():
        origin.put_object(Bucket=bucket, Key=k, Body=v)
    keyfile = workdir / "s3-key"
    keyfile.write_text(f"{S3_KEY}:{S3_SECRET}\n")
    port = free_port()
    d = Daemon(workdir, "n", extra=["--s3-endpoint", moto.url, "--s3-gateway", f"127.0.0.1:{port}",
                                    "--s3-gateway-buckets", bucket, "--s3-gateway-key-file", str(keyfile)])
    gw = f"http://127.0.0.1:{port}"

    def client(key=S3_KEY, secret=S3_SECRET, **kw):
        return boto3.client("s3", endpoint_url=gw, aws_access_key_id=key, aws_secret_access_key=secret,
                            region_name="us-east-1", **kw)

    try:
        c = client()
        pages = c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="data/",
                                                             PaginationConfig={"PageSize": 500})
        listed = [o["Key"] for p in pages for o in p.get("Contents", [])]
        assert listed == sorted(k for k in objects if k.startswith("data/"))
        top = c.list_objects_v2(Bucket=bucket, Delimiter="/")
        assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["big/", "data/"]
        assert [o["Key"] for o in top["Contents"]] == ["top level é.txt"]
        sub = c.list_objects_v2(Bucket=bucket, Prefix="data/1", Delimiter="/")
        assert [p["Prefix"] for p in sub["CommonPrefixes"]] == ["data/1/"] and "Contents" not in sub
        for key in ("big/blob.bin", "top level é.txt", "data/2/obj-00005.bin"):
            body = c.get_object(Bucket=bucket, Key=key)["Body"].read()
            assert body == objects[key], key
            head = c.head_object(Bucket=bucket, Key=key)
            want = origin.head_object(Bucket=bucket, Key=key)
            assert head["ContentLength"] == len(objects[key]) and head["ETag"] == want["ETag"], key
        part = c.get_object(Bucket=bucket, Key="big/blob.bin", Range="bytes=5000000-5999999")
        assert part["Body"].read() == objects["big/blob.bin"][5000000:6000000]
        assert part["ContentRange"] == f"bytes 5000000-5999999/{12 << 20}"
        with pytest.raises(ClientError) as e:
            c.get_object(Bucket=bucket, Key="data/nope")
        assert e.value.response["Error"]["Code"] == "NoSuchKey"
        with pytest.raises(ClientError) as e:
            c.head_object(Bucket=bucket, Key="data/nope")
        assert e.value.response["Error"]["Code"] == "404"
        with pytest.raises(ClientError) as e:
            c.get_object(Bucket=bucket, Key="big/blob.bin", Range="bytes=99999999-")
        assert e.value.response["Error"]["Code"] == "InvalidRange"
        with pytest.raises(ClientError) as e:
            client(secret="not-the-secret").get_object(Bucket=bucket, Key="big/blob.bin")
        assert e.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
        with pytest.raises(ClientError) as e:
            client(key="AKIDUNKNOWN").list_objects_v2(Bucket=bucket)
        assert e.value.response["Error"]["Code"] == "InvalidAccessKeyId"
        with pytest.raises(ClientError) as e:
            client(config=Config(signature_version=UNSIGNED)).get_object(Bucket=bucket, Key="big/blob.bin")
        assert e.value.response["Error"]["Code"] == "AccessDenied"
        with pytest.raises(ClientError) as e:
            c.put_object(Bucket=bucket, Key="new", Body=b"x")
        assert e.value.response["Error"]["Code"] == "MethodNotAllowed"
        url = client(config=Config(signature_version="s3v4")).generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "top level é.txt"},
                                       ExpiresIn=60)
        assert urllib.request.urlopen(url).read() == b"hello\n"

        fs = s3fs.S3FileSystem(key=S3_KEY, secret=S3_SECRET, client_kwargs={"endpoint_url": gw,
                                                                            "region_name": "us-east-1"})
        assert sorted(fs.ls(f"{bucket}/data/0")) == sorted(f"{bucket}/{k}" for k in objects if k.startswith("data/0/"))
        assert len(fs.find(f"{bucket}/data")) == 1200
        assert fs.cat(f"{bucket}/big/blob.bin") == objects["big/blob.bin"]
        assert fs.cat_file(f"{bucket}/big/blob.bin", start=100, end=2_000_100) == objects["big/blob.bin"][100:2_000_100]
        assert fs.info(f"{bucket}/big/blob.bin")["size"] == 12 << 20
        assert not fs.exists(f"{bucket}/data/nope")
        with fs.open(f"{bucket}/data/1/obj-00001.bin", "rb") as f:
            assert f.read() == objects["data/1/obj-00001.bin"]
        assert S3_SECRET not in d.logs()
    finally:
        d.close()
        moto.close()
