"""The `locus` Python package against the official `safetensors` library: every dtype, empty and
scalar tensors, sharded folders, URIs through a real daemon, and bad input."""

import gc
import json
import mmap
import os
import signal
import subprocess
import time

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as np_save
from safetensors.torch import save_file as pt_save
from safetensors import safe_open as st_open

import locus
from conftest import binary

NP_DTYPES = [np.bool_, np.uint8, np.int8, np.int16, np.uint16, np.float16, np.int32, np.uint32,
             np.float32, np.float64, np.int64, np.uint64]
PT_DTYPES = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.uint16, torch.float16, torch.bfloat16,
             torch.int32, torch.uint32, torch.float32, torch.float64, torch.int64, torch.uint64,
             torch.float8_e4m3fn, torch.float8_e5m2, torch.complex64]
if hasattr(torch, "float8_e8m0fnu"):
    PT_DTYPES.append(torch.float8_e8m0fnu)


def same(a, b):
    """Equal dtype, shape and bytes (bitwise, so NaNs and float8 compare too)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return a.numel() == 0 or torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def np_tensors():
    rng = np.random.default_rng(0)
    out = {}
    for dt in NP_DTYPES:
        name = np.dtype(dt).name
        raw = rng.integers(0, 255, size=(3, 5), dtype=np.uint8).astype(np.uint64)
        out[f"{name}.matrix"] = (raw % 2 if dt is np.bool_ else raw).astype(dt)
        out[f"{name}.scalar"] = np.array(7, dtype=dt) if dt is not np.bool_ else np.array(True)
        out[f"{name}.empty"] = np.zeros((0, 4), dtype=dt)
    return out


def pt_tensors():
    g = torch.Generator().manual_seed(0)
    out = {}
    for dt in PT_DTYPES:
        name = str(dt).split(".")[1]
        base = torch.randint(1, 100, (4, 6), generator=g)
        out[f"{name}.matrix"] = (base % 2).to(dt) if dt == torch.bool else base.to(dt)
        out[f"{name}.scalar"] = torch.tensor(3).to(dt)
        out[f"{name}.empty"] = torch.zeros((2, 0), dtype=dt)
    return out


def test_every_numpy_dtype_matches_the_official_library(tmp_path):
    p = tmp_path / "np.safetensors"
    np_save(np_tensors(), str(p), metadata={"format": "np", "who": "test"})
    with st_open(str(p), framework="np") as ref, locus.safe_open(p, framework="np") as f:
        assert f.keys() == ref.keys()
        assert f.metadata() == ref.metadata()
        for k in ref.keys():
            want, got = ref.get_tensor(k), f.get_tensor(k)
            assert got.dtype == want.dtype and got.shape == want.shape, k
            np.testing.assert_array_equal(got, want, err_msg=k)
            s = f.get_slice(k)
            assert s.get_shape() == list(want.shape)
            assert s.get_dtype() == ref.get_slice(k).get_dtype()
            if want.ndim == 2 and want.shape[0] > 1:
                np.testing.assert_array_equal(s[1:3], ref.get_slice(k)[1:3])
    got = locus.load_file(p)
    assert set(got) == set(np_tensors())


def test_every_torch_dtype_matches_the_official_library(tmp_path):
    p = tmp_path / "pt.safetensors"
    pt_save(pt_tensors(), str(p))
    with st_open(str(p), framework="pt") as ref, locus.safe_open(p, framework="pt") as f:
        assert f.keys() == ref.keys()
        for k in ref.keys():
            want, got = ref.get_tensor(k), f.get_tensor(k)
            assert same(got, want), k
    with locus.safe_open(p, framework="np") as f:
        with pytest.raises(TypeError, match="framework='pt'"):
            f.get_tensor("bfloat16.matrix")


def test_arrays_are_views_of_the_mapping_and_outlive_the_file(tmp_path):
    p = tmp_path / "big.safetensors"
    np_save({"w": np.arange(1 << 20, dtype=np.float32)}, str(p))
    f = locus.safe_open(p)
    a = f.get_tensor("w")
    f.close()
    del f
    gc.collect()
    base = a
    while not isinstance(base, mmap.mmap):
        nxt = base.obj if isinstance(base, memoryview) else getattr(base, "base", None)
        if nxt is None:
            break
        base = nxt
    assert isinstance(base, mmap.mmap), "the array owns no copy: its memory is the file's mapping"
    assert a[12345] == 12345.0 and a.sum() == np.arange(1 << 20, dtype=np.float32).sum()
    a[0] = 42  # copy-on-write: the file is never written
    assert locus.load_file(p)["w"][0] == 0
    t = locus.load_file(p, framework="pt")["w"]
    assert t.untyped_storage().nbytes() == 4 << 20 and t[7].item() == 7.0


def write_raw(path, header: bytes, data: bytes):
    path.write_bytes(len(header).to_bytes(8, "little") + header + data)


@pytest.mark.parametrize(
    "header,data,needle",
    [
        (b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', b"\0" * 4, "does not match"),
        (b'{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}', b"\0" * 8, "dtype size"),
        (b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
         b"\0" * 4, "offsets"),
        (b'{"a":{"dtype":"Q9","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4, "not valid"),
        (b"{not json", b"", "not valid"),
    ],
)
def test_malformed_files_raise_a_clear_error(tmp_path, header, data, needle):
    p = tmp_path / "bad.safetensors"
    write_raw(p, header, data)
    with pytest.raises(locus.MalformedError, match=needle):
        locus.safe_open(p)


def test_truncated_and_oversized_headers(tmp_path):
    p = tmp_path / "t.safetensors"
    p.write_bytes(b"\x05\x00")
    with pytest.raises(locus.MalformedError, match="shorter"):
        locus.load_file(p)
    p.write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
    with pytest.raises(locus.MalformedError, match="limit"):
        locus.load_file(p)
    p.write_bytes((5000).to_bytes(8, "little") + b"{}")
    with pytest.raises(locus.MalformedError, match="past the end"):
        locus.load_file(p)
    with pytest.raises(locus.NotFoundError):
        locus.load_file(tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError):
        locus.load(tmp_path / "missing")


def test_sharded_folder_with_and_without_an_index(tmp_path):
    a = {"a.weight": np.ones((4, 4), np.float32), "a.bias": np.zeros(4, np.float32)}
    b = {"b.weight": np.full((2, 3), 2, np.int64)}
    d = tmp_path / "ckpt"
    d.mkdir()
    np_save(a, str(d / "model-00001-of-00002.safetensors"))
    np_save(b, str(d / "model-00002-of-00002.safetensors"))
    got = locus.load(d)
    assert set(got) == {*a, *b}
    index = {"metadata": {}, "weight_map": {k: "model-00001-of-00002.safetensors" for k in a}}
    np_save({"stray": np.ones(1, np.float32)}, str(d / "unrelated.safetensors"))
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    assert set(locus.load(d)) == set(a), "the index decides which shards load"
    index["weight_map"]["x"] = "model-00009-of-00009.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(locus.MalformedError, match="missing"):
        locus.load(d)


@pytest.fixture
def node(hub_factory, tmp_path):
    hub = hub_factory("--model", "acme/llm=4MiBx3")
    sock = tmp_path / "locus.sock"
    env = dict(os.environ, HF_ENDPOINT=hub.url, HF_TOKEN_PATH=str(tmp_path / "none"))
    env.pop("HF_TOKEN", None)
    log = open(tmp_path / "daemon.log", "w")
    d = subprocess.Popen([binary("locus"), "daemon", "--cache-dir", str(tmp_path / "cache"),
                          "--socket", str(sock)], env=env, stderr=log)
    deadline = time.time() + 30
    while "ready" not in (tmp_path / "daemon.log").read_text():
        assert d.poll() is None and time.time() < deadline, (tmp_path / "daemon.log").read_text()
        time.sleep(0.02)
    yield hub, str(sock)
    d.send_signal(signal.SIGTERM)
    d.wait(timeout=30)


def test_load_a_uri_through_the_daemon(node, tmp_path):
    hub, sock = node
    got = locus.load("hf://acme/llm", framework="pt", socket=sock)
    index = hub.get("/api/models/acme/llm/tree/main?recursive=true")
    shards = [e["path"] for e in index if e["path"].endswith(".safetensors")]
    assert len(shards) == 3
    # The same tensors as the official library reads from the same bytes.
    ref = {}
    for s in shards:
        p = tmp_path / s
        p.write_bytes(subprocess.run([binary("locus"), "cat", f"hf://acme/llm/{s}", "--socket", sock],
                                     check=True, capture_output=True).stdout)
        with st_open(str(p), framework="pt") as f:
            for k in f.keys():
                ref[k] = f.get_tensor(k)
    assert set(got) == set(ref)
    for k in ref:
        assert same(got[k], ref[k]), k
    one = locus.load(f"hf://acme/llm/{shards[0]}", socket=sock, framework="pt")
    assert set(one) < set(got)
    with pytest.raises(locus.NotFoundError):
        locus.load("hf://acme/nope", socket=sock)
    with pytest.raises(locus.NotFoundError):
        locus.load("hf://acme/llm/missing.safetensors", socket=sock)
    with pytest.raises(locus.InvalidArgumentError):
        locus.load("hf://acme/llm/../x", socket=sock)
    with pytest.raises(locus.UnavailableError, match="cannot reach"):
        locus.load("hf://acme/llm", socket=str(tmp_path / "nowhere.sock"))


def test_the_python_api_takes_uris_everywhere_and_names_them_in_errors(node, tmp_path):
    hub, sock = node
    assert isinstance(locus.__version__, str) and locus.__version__.count(".") == 2
    index = hub.get("/api/models/acme/llm/tree/main?recursive=true")
    shard = next(e["path"] for e in index if e["path"].endswith(".safetensors"))
    uri = f"hf://acme/llm/{shard}"
    # safe_open takes the URIs load takes.
    with locus.safe_open(uri, framework="pt", socket=sock) as f:
        keys = f.keys()
        first = f.get_tensor(keys[0])
    whole = locus.load(uri, framework="pt", socket=sock)
    assert sorted(whole) == keys and same(first, whole[keys[0]])
    assert set(locus.load_file(uri, framework="pt", socket=sock)) == set(keys)
    with pytest.raises(locus.InvalidArgumentError, match="safe_open opens one"):
        locus.safe_open("hf://acme/llm", socket=sock)
    # A file of the repo that is not safetensors: the error names it, never the cache file.
    for load in (lambda u: locus.load(u, socket=sock), lambda u: locus.safe_open(u, socket=sock)):
        with pytest.raises(locus.MalformedError) as e:
            load("hf://acme/llm/config.json")
        assert "config.json" in str(e.value) and "hf://acme/llm" in str(e.value), e.value
        assert str(tmp_path / "cache") not in str(e.value), e.value
    # A URI typo gets the CLI's message, not "no such file".
    cli = subprocess.run([binary("locus"), "warm", "hf:/acme/llm", "--socket", sock], capture_output=True, text=True)
    assert cli.returncode == 2
    for target in ("hf:/acme/llm", "s3:bucket/key"):
        with pytest.raises(locus.InvalidArgumentError) as e:
            locus.load(target, socket=sock)
        assert "unknown scheme" in str(e.value), e.value
    with pytest.raises(locus.InvalidArgumentError) as e:
        locus.load("hf:/acme/llm", socket=sock)
    assert str(e.value) in cli.stderr, (str(e.value), cli.stderr)


def test_official_safetensors_and_mmap_through_a_fuse_mount(node, tmp_path):
    hub, sock = node
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run([binary("locus"), "mount", "hf://acme/llm", str(mnt), "--socket", sock], check=True)
    try:
        shards = sorted(p for p in os.listdir(mnt) if p.endswith(".safetensors"))
        assert len(shards) == 3
        via_locus = locus.load("hf://acme/llm", framework="pt", socket=sock)
        for s in shards:
            with st_open(str(mnt / s), framework="pt") as f:
                for k in f.keys():
                    assert same(f.get_tensor(k), via_locus[k]), k
            with open(mnt / s, "rb") as fh:
                m = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
                n = int.from_bytes(m[:8], "little")
                assert json.loads(m[8:8 + n])
        # The loader works on the mounted folder as on any folder.
        assert set(locus.load(mnt, framework="pt")) == set(via_locus)
    finally:
        subprocess.run([binary("locus"), "unmount", str(mnt)], check=True)
