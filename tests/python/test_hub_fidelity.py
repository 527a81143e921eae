"""The simulated Hub is faithful to the real one: the official `huggingface_hub` client
downloads from it, through the LFS redirect to the CDN, and every byte checks out against the
digests the Hub's tree API publishes (LFS sha256, git blob sha1)."""

import hashlib
from pathlib import Path

import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, HfHubHTTPError, RepositoryNotFoundError


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def check_against_tree(hub, repo: str, folder: Path, kind: str = "models"):
    tree = hub.get(f"/api/{kind}/{repo}/tree/main?recursive=true")
    files = [e for e in tree if e["type"] == "file"]
    assert files
    for e in files:
        data = (folder / e["path"]).read_bytes()
        assert len(data) == e["size"]
        if "lfs" in e:
            assert hashlib.sha256(data).hexdigest() == e["lfs"]["oid"], e["path"]
        else:
            assert git_blob_sha1(data) == e["oid"], e["path"]
    return files


def test_snapshot_download_of_a_model(hub_factory, tmp_path):
    hub = hub_factory("--model", "acme/model=3MiBx2")
    folder = Path(snapshot_download("acme/model", cache_dir=tmp_path, endpoint=hub.url))
    files = check_against_tree(hub, "acme/model", folder)
    assert any("lfs" in e for e in files) and any("lfs" not in e for e in files)
    stats = hub.stats()
    assert stats["requests"].get("cdn", 0) > 0, stats
    assert stats["cdn_authorized"] == 0


def test_revisions_and_missing_things(hub_factory, tmp_path):
    hub = hub_factory("--model", "acme/model=1MiBx1")
    info = HfApi(endpoint=hub.url).model_info("acme/model")
    p = hf_hub_download("acme/model", "config.json", revision=info.sha, cache_dir=tmp_path, endpoint=hub.url)
    assert Path(p).read_bytes().startswith(b"{")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("acme/model", "nope.bin", cache_dir=tmp_path, endpoint=hub.url)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("acme/missing", "config.json", cache_dir=tmp_path, endpoint=hub.url)


def test_dataset_repo(hub_factory, tmp_path):
    src = tmp_path / "src"
    (src / "data").mkdir(parents=True)
    for i in range(5):
        (src / "data" / f"part-{i}.jsonl").write_text(f'{{"row": {i}}}\n' * (1000 * (i + 1)))
    hub = hub_factory("--repo", f"datasets/acme/ds={src}")
    folder = Path(snapshot_download("acme/ds", repo_type="dataset", cache_dir=tmp_path / "c", endpoint=hub.url))
    check_against_tree(hub, "acme/ds", folder, kind="datasets")


def test_gated_repo_needs_the_token(hub_factory, tmp_path):
    hub = hub_factory("--model", "acme/model=1MiBx1", "--token", "hf_gated")
    with pytest.raises((GatedRepoError, HfHubHTTPError)):
        snapshot_download("acme/model", cache_dir=tmp_path / "a", endpoint=hub.url, token=False)
    folder = Path(snapshot_download("acme/model", cache_dir=tmp_path / "b", endpoint=hub.url, token="hf_gated"))
    assert hub.stats()["authorized"] > 0
    assert (folder / "config.json").exists()


def test_a_synthetic_dataset_pages_like_the_hub(hub_factory, tmp_path):
    """`huggingface_hub` follows the tree's pages of a generated dataset (2,500 files, a
    thousand per folder) and downloads files whose bytes match the published git blob ids."""
    hub = hub_factory("--generated", "datasets/bench/many=2500x100-400")
    api = HfApi(endpoint=hub.url)
    entries = list(api.list_repo_tree("bench/many", repo_type="dataset", recursive=True))
    files = [e for e in entries if hasattr(e, "blob_id")]
    assert [f.path for f in files] == [f"{i // 1000:04d}/{i:08d}.bin" for i in range(2500)]
    assert sorted(e.path for e in entries if not hasattr(e, "blob_id")) == ["0000", "0001", "0002"]
    for f in (files[0], files[1234], files[-1]):
        p = hf_hub_download("bench/many", f.path, repo_type="dataset", cache_dir=tmp_path, endpoint=hub.url)
        data = Path(p).read_bytes()
        assert len(data) == f.size and 100 <= f.size <= 400
        assert git_blob_sha1(data) == f.blob_id


def test_a_synthetic_dataset_over_s3_pages_like_s3(hub_factory, tmp_path):
    """boto3 (a real S3 client) lists the same generated dataset over the S3 surface in pages of
    1,000 (and by folder with a delimiter), and reads objects whole and by range with the bytes
    the Hub serves for the same files."""
    import boto3
    import urllib.request
    from botocore.exceptions import ClientError

    hub = hub_factory("--generated", "datasets/bench/many=2500x100-400")
    s3 = boto3.client("s3", endpoint_url=hub.s3_url, aws_access_key_id="x", aws_secret_access_key="y",
                      region_name="us-east-1")
    pages = list(s3.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix="many/"))
    assert [p["KeyCount"] for p in pages] == [1000, 1000, 500]
    keys = [o["Key"] for p in pages for o in p["Contents"]]
    assert keys == [f"many/{i // 1000:04d}/{i:08d}.bin" for i in range(2500)]
    folders = s3.list_objects_v2(Bucket="bench", Prefix="many/", Delimiter="/")
    assert [c["Prefix"] for c in folders["CommonPrefixes"]] == ["many/0000/", "many/0001/", "many/0002/"]
    assert "Contents" not in folders
    tree = {e["path"]: e for e in hub.get("/api/datasets/bench/many/tree/main/0001")}
    for o in (pages[1]["Contents"][0], pages[1]["Contents"][734]):
        path = o["Key"][len("many/"):]
        want = urllib.request.urlopen(f"{hub.url}/datasets/bench/many/resolve/main/{path}").read()
        assert o["Size"] == len(want) == tree[path]["size"]
        head = s3.head_object(Bucket="bench", Key=o["Key"])
        assert head["ContentLength"] == len(want) and head["ETag"] == o["ETag"]
        assert s3.get_object(Bucket="bench", Key=o["Key"])["Body"].read() == want
        part = s3.get_object(Bucket="bench", Key=o["Key"], Range="bytes=10-49")["Body"].read()
        assert part == want[10:50]
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket="bench", Key="many/none.bin")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="bench", Key=keys[0], IfMatch='"0000"')
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    stats = hub.stats()["requests"]
    assert stats["s3_list"] == 4 and stats["s3_get"] == 5 and stats["s3_head"] == 3, stats


def test_gated_repos_answer_as_the_hubs_do(hub_factory, tmp_path):
    """A gated repo's info is public and says so; its files and `auth-check` need a token the
    Hub accepts (two users' here); other repos stay public."""
    hub = hub_factory("--model", "acme/gated=1MiBx1", "--model", "acme/open=1MiBx1", "--token", "hf_a",
                      "--also-token", "hf_b", "--gated", "acme/gated")
    api = HfApi(endpoint=hub.url)
    assert api.model_info("acme/gated", token=False).gated == "auto"
    assert api.model_info("acme/open", token=False).gated is False
    for token in ("hf_a", "hf_b"):
        api.auth_check("acme/gated", token=token)
    with pytest.raises(GatedRepoError):
        api.auth_check("acme/gated", token="hf_c")
    with pytest.raises((GatedRepoError, HfHubHTTPError)):
        hf_hub_download("acme/gated", "config.json", cache_dir=tmp_path / "a", endpoint=hub.url, token=False)
    assert Path(hf_hub_download("acme/gated", "config.json", cache_dir=tmp_path / "b", endpoint=hub.url,
                                token="hf_b")).exists()
    assert Path(hf_hub_download("acme/open", "config.json", cache_dir=tmp_path / "c", endpoint=hub.url,
                                token=False)).exists()
