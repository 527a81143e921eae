"""s3://, http(s):// and file:// origins end to end: real `locus` daemons against moto's S3
server (behind a counting, fault-injecting proxy), a local HTTP server and files on disk.
Every byte read is compared with what the origin holds."""

import concurrent.futures
import json
import urllib.request
import os
import subprocess
import time
from pathlib import Path

import pytest

from origins import SECRET, Daemon, FileServer, Moto, Proxy, TcpTap, cleanup, free_port

BUCKET = "locus-test"
SMALL = 2000
LARGE = 3
LARGE_SIZE = 20 << 20


@pytest.fixture(scope="module")
def s3():
    """moto with `data/train/NN/obj-NNNNN.bin` (2,000 small objects over 20 folders) and
    `data/large/shard-N.bin` (three 20 MiB objects), behind a proxy."""
    moto = Moto()
    c = moto.client()
    c.create_bucket(Bucket=BUCKET)
    objects = {}
    for i in range(SMALL):
        objects[f"data/train/{i % 20:02d}/obj-{i:05d}.bin"] = os.urandom(1000 + i % 1500)
    for i in range(LARGE):
        objects[f"data/large/shard-{i}.bin"] = os.urandom(LARGE_SIZE + i * 4099)
    with concurrent.futures.ThreadPoolExecutor(16) as ex:
        list(ex.map(lambda kv: c.put_object(Bucket=BUCKET, Key=kv[0], Body=kv[1]), objects.items()))
    proxy = Proxy(moto.url)
    yield moto, proxy, objects
    proxy.close()
    moto.close()


@pytest.fixture
def workdir(tmp_path):
    yield tmp_path
    cleanup(tmp_path)


def start(workdir, proxy, name="n1", extra=(), **kw):
    return Daemon(workdir, name, extra=["--s3-endpoint", proxy.url, *extra], **kw)


def fails_with_one_line(r, text):
    """Exit status 1 and one line of stderr that says `text`."""
    err = r.stderr.decode().strip()
    assert r.returncode == 1 and len(err.splitlines()) == 1 and text in err, err
    return err


def secret_free(*texts):
    for t in texts:
        assert SECRET not in t, "the AWS secret reached a log or an output"


def test_s3_prefix_ls_cat_warm(s3, workdir):
    moto, proxy, objects = s3
    d = start(workdir, proxy)
    try:
        proxy.reset()
        listing = json.loads(d.run("ls", f"s3://{BUCKET}/data", "--json").stdout)
        paths = {f["path"]: f["size"] for f in listing["files"]}
        want = {k[len("data/"):]: len(v) for k, v in objects.items() if k.startswith("data/")}
        assert paths == want
        # One HEAD (is `data` an object?) and one LIST of 2,003 keys in pages of 1,000.
        assert proxy.requests.get("list") == 3, proxy.requests
        assert proxy.requests.get("head") == 1, proxy.requests

        # A single object, a folder with globs, and every byte compared.
        key = "data/large/shard-1.bin"
        out = d.run("cat", f"s3://{BUCKET}/{key}").stdout
        assert out == objects[key]
        r = d.run("warm", f"s3://{BUCKET}/data/train", "--include", "0[0-4]/**", "--exclude", "*/obj-0000*")
        assert b"warmed" in r.stdout + r.stderr
        st = d.status()
        assert st["origin_calls"]["list"] >= 3 and st["origin_calls"]["get"] > 0
        sub = json.loads(d.run("ls", f"s3://{BUCKET}/data/train/03", "--json").stdout)["files"]
        assert len(sub) == SMALL // 20
        for f in sub:
            excluded = f["path"].startswith("obj-0000")
            assert f["cached_fraction"] == (0.0 if excluded else 1.0), f
        untouched = json.loads(d.run("ls", f"s3://{BUCKET}/data/train/07", "--json").stdout)["files"]
        assert all(f["cached_fraction"] == 0.0 for f in untouched)
        for f in sub[:50]:
            assert d.run("cat", f["uri"]).stdout == objects[f"data/train/03/{f['path']}"]
        # Listing again within the metadata TTL costs nothing at the origin.
        proxy.reset()
        d.run("ls", f"s3://{BUCKET}/data")
        assert proxy.requests.get("list", 0) == 0
        secret_free(d.logs(), json.dumps(proxy.headers_seen).replace("Credential=testing", ""))
    finally:
        d.close()


def test_s3_overwritten_object_never_serves_old_bytes(s3, workdir):
    moto, proxy, _ = s3
    c = moto.client()
    c.put_object(Bucket=BUCKET, Key="ow/a.bin", Body=b"A" * 5000)
    c.put_object(Bucket=BUCKET, Key="ow/b.bin", Body=b"B" * 5000)
    d = start(workdir, proxy, extra=["--metadata-ttl", "2"])
    try:
        assert d.run("cat", f"s3://{BUCKET}/ow/a.bin").stdout == b"A" * 5000
        # Listed, then overwritten before its bytes were read: the read fails (If-Match), it
        # never returns the old bytes or a mix, and the next read lists again.
        d.run("ls", f"s3://{BUCKET}/ow")
        c.put_object(Bucket=BUCKET, Key="ow/b.bin", Body=b"b" * 7000)
        r = d.run("cat", f"s3://{BUCKET}/ow/b.bin", check=False)
        # The listing still names the old version: the read fails cleanly, once.
        assert r.returncode == 1 and b"changed at the origin" in r.stderr, (r.returncode, r.stderr)
        r = d.run("cat", f"s3://{BUCKET}/ow/b.bin")
        assert r.stdout == b"b" * 7000
        # Past the metadata TTL an overwritten object is served from its new bytes.
        c.put_object(Bucket=BUCKET, Key="ow/a.bin", Body=b"a" * 5000)
        time.sleep(2.5)
        assert d.run("cat", f"s3://{BUCKET}/ow/a.bin").stdout == b"a" * 5000
    finally:
        d.close()


def test_s3_throttled_and_failing_endpoint(s3, workdir):
    moto, proxy, objects = s3
    d = start(workdir, proxy)
    try:
        key = "data/large/shard-2.bin"
        proxy.reset()
        proxy.fail("get", 503, 4, "SlowDown")
        proxy.fail("head", 500, 1, "InternalError")
        assert d.run("cat", f"s3://{BUCKET}/{key}").stdout == objects[key]
        assert proxy.failed == 5
        # A store that keeps failing: one clear line, exit status 1.
        proxy.fail("*", 500, 10_000, "InternalError")
        t = time.time()
        r = d.run("cat", f"s3://{BUCKET}/data/large/shard-0.bin", check=False)
        assert time.time() - t < 120
        fails_with_one_line(r, "unavailable")
    finally:
        proxy.faults.clear()
        d.close()
    # An endpoint that cannot be reached.
    d = Daemon(workdir, "n2", extra=["--s3-endpoint", f"http://127.0.0.1:{free_port()}"])
    try:
        r = d.run("ls", f"s3://{BUCKET}/data", check=False, timeout=200)
        fails_with_one_line(r, "unavailable")
    finally:
        d.close()


def test_s3_errors_are_one_clear_line(s3, workdir):
    moto, proxy, _ = s3
    d = start(workdir, proxy)
    try:
        cases = [
            (f"s3://no-such-bucket-here/x", "not found"),
            (f"s3://{BUCKET}/no/such/key.bin", "not found"),
            ("s3://Bad_Bucket/x", "invalid URI"),
            (f"s3://{BUCKET}/a/../b", "invalid URI"),
        ]
        for uri, want in cases:
            r = d.run("cat", uri, check=False)
            err = r.stderr.decode().strip()
            assert r.returncode in (1, 2) and len(err.splitlines()) == 1 and want in err, (uri, err)
        proxy.fail("*", 403, 100, "AccessDenied")
        r = d.run("ls", f"s3://{BUCKET}/denied", check=False)
        err = r.stderr.decode().strip()
        assert r.returncode == 1 and "access denied" in err and "AWS" in err, err
        secret_free(err, d.logs())
    finally:
        proxy.faults.clear()
        d.close()


def test_s3_cluster_reads_each_byte_and_listing_once(s3, workdir):
    moto, proxy, objects = s3
    ports = [free_port() for _ in range(3)]
    peers = ",".join(f"127.0.0.1:{p}" for p in ports)
    nodes = [
        start(workdir, proxy, f"n{i}", extra=["--peers", peers], listen=f"127.0.0.1:{p}")
        for i, p in enumerate(ports)
    ]
    try:
        proxy.reset()
        prefix = f"s3://{BUCKET}/data/train/1"  # no such prefix: `data/train/1x` are folders
        assert nodes[0].run("ls", prefix, check=False).returncode == 1
        prefix = f"s3://{BUCKET}/data/train"
        for n in nodes:
            n.run("warm", prefix, "--include", "1[0-2]/**")
        want = sum(len(v) for k, v in objects.items() if k.startswith(("data/train/10/", "data/train/11/", "data/train/12/")))
        twice = {p: n for (k, p), n in proxy.paths.items() if k == "get" and n > 1}
        assert want <= proxy.bytes["get"] <= want * 1.02, (proxy.bytes, want, twice)
        # The listing was taken once, at the namespace's owner, for the whole cluster.
        assert proxy.requests["list"] == 2 + 1, proxy.requests  # 2 pages + the missing prefix
        assert proxy.requests["head"] == 2, proxy.requests
        for n in nodes:
            for f in json.loads(n.run("ls", f"{prefix}/11", "--json").stdout)["files"][:20]:
                assert n.run("cat", f["uri"]).stdout == objects[f"data/train/11/{f['path']}"]
        # An object overwritten after the cluster listed it: the read fails cleanly once,
        # and the next one lists again at the owner (long before the 60 s TTL) and gets it.
        key = "data/train/13/obj-00013.bin"
        new = os.urandom(3000)
        moto.client().put_object(Bucket=BUCKET, Key=key, Body=new)
        r = nodes[1].run("cat", f"s3://{BUCKET}/{key}", check=False)
        # The listing still names the old version: the read fails cleanly, once.
        assert r.returncode == 1 and b"changed at the origin" in r.stderr, (r.returncode, r.stderr)
        r = nodes[1].run("cat", f"s3://{BUCKET}/{key}")
        assert r.stdout == new
        objects[key] = new
        for n in nodes:
            secret_free(n.logs())
    finally:
        for n in nodes:
            n.close()


@pytest.mark.parametrize("ranges", [True, False])
def test_http_origin(workdir, ranges):
    root = workdir / "www"
    (root / "m").mkdir(parents=True)
    data = os.urandom(20 << 20)
    (root / "m" / "model.bin").write_bytes(data)
    srv = FileServer(root, ranges=ranges)
    # The test server is on loopback, which only a daemon told so may reach.
    d = Daemon(workdir, "n1", extra=["--metadata-ttl", "2", "--http-allow-private", "127.0.0.1/32"])
    try:
        url = f"{srv.url}/m/model.bin"
        listing = json.loads(d.run("ls", url, "--json").stdout)["files"]
        assert [(f["path"], f["size"]) for f in listing] == [("model.bin", len(data))]
        assert d.run("cat", url).stdout == data
        r = d.run("warm", url, "--include", "*.bin")
        assert b"warmed 1 files" in r.stdout + r.stderr
        if ranges:
            assert srv.counts["206"] == srv.counts["GET"] == 3  # 8 MiB chunks
        else:
            assert srv.counts["GET"] == 1, srv.counts  # whole, once
            assert "does not support Range" in d.logs()
            # The whole-file spool takes its room from the cache: 20 MiB spooled beside the
            # chunks being fetched does not fit in 24 MiB, and the read says so.
            small = Daemon(workdir, "n2", extra=["--cache-size", "24MiB", "--http-allow-private", "127.0.0.1"])
            try:
                r = small.run("cat", url, check=False)
                assert r.returncode == 1, r
                # Whichever asks last finds the cache full: the spool or a chunk.
                assert b"cache full" in r.stderr, r.stderr
                assert r.stdout == b""
            finally:
                small.close()
        # Listed, then replaced before its bytes were read: the read fails cleanly (never old
        # or mixed bytes), and the next one lists again and gets the new bytes.
        (root / "m" / "other.bin").write_bytes(os.urandom(3 << 20))
        url2 = f"{srv.url}/m/other.bin"
        d.run("ls", url2)
        new2 = os.urandom(4 << 20)
        (root / "m" / "other.bin").write_bytes(new2)
        r = d.run("cat", url2, check=False)
        # The listing still names the old version: the read fails cleanly, once.
        assert r.returncode == 1 and b"changed at the origin" in r.stderr, (r.returncode, r.stderr)
        r = d.run("cat", url2)
        assert r.stdout == new2
        # Past the metadata TTL a replaced file is served from its new bytes.
        new = os.urandom(5 << 20)
        (root / "m" / "model.bin").write_bytes(new)
        time.sleep(2.5)
        assert d.run("cat", url).stdout == new
        r = d.run("cat", f"{srv.url}/m/missing.bin", check=False)
        assert r.returncode == 1 and b"not found" in r.stderr
        r = d.run("cat", "http://user:pw@127.0.0.1/x", check=False)
        assert r.returncode == 2 and b"credentials" in r.stderr
    finally:
        d.close()
        srv.close()


def test_http_origin_reaches_no_private_address_by_default(workdir):
    """A peer may name any URL and get its bytes: by default no loopback or private address,
    named, resolved or redirected to, is fetched from; the refusal is one line naming the
    flag, and it is not retried."""
    root = workdir / "www"
    root.mkdir()
    (root / "x.bin").write_bytes(b"private bytes")
    srv = FileServer(root)
    d = Daemon(workdir, "n1")
    try:
        port = srv.url.rsplit(":", 1)[1]
        for url in (f"{srv.url}/x.bin", f"http://localhost:{port}/x.bin", f"http://[::ffff:127.0.0.1]:{port}/x.bin",
                    "http://10.0.0.1/x", "http://169.254.169.254/latest/meta-data/"):
            t = time.monotonic()
            r = d.run("cat", url, check=False)
            assert r.returncode == 1, (url, r)
            assert r.stdout == b""
            err = r.stderr.decode()
            assert len(err.strip().splitlines()) == 1, err
            assert "address" in err, err
            if "169.254" not in url:
                assert "--http-allow-private" in err, err
            # Refused at once, not retried with backoff.
            assert time.monotonic() - t < 5, url
        assert srv.counts["GET"] == srv.counts["HEAD"] == 0, srv.counts
    finally:
        d.close()
        srv.close()


def test_file_origin_and_mounts(s3, workdir):
    moto, proxy, objects = s3
    src = workdir / "shared"
    (src / "ckpt" / "sub").mkdir(parents=True)
    files = {"ckpt/a.bin": os.urandom(9 << 20), "ckpt/sub/b.txt": b"hello\n"}
    for p, b in files.items():
        (src / p).write_bytes(b)
    mnt = workdir / "ns"
    mnt.mkdir()
    d = start(workdir, proxy, extra=["--file-root", str(src), "--mount", str(mnt)])
    try:
        assert d.run("cat", f"file://{src}/ckpt/a.bin").stdout == files["ckpt/a.bin"]
        r = d.run("warm", f"file://{src}/ckpt", "--exclude", "*.txt")
        assert b"warmed 1 files" in r.stdout + r.stderr
        r = d.run("cat", "file:///etc/hostname", check=False)
        assert r.returncode == 1 and b"outside every --file-root" in r.stderr
        # The namespace view shows buckets.
        view = mnt / "s3" / BUCKET / "data"
        for _ in range(100):
            if (mnt / "s3").exists():
                break
            time.sleep(0.1)
        assert (view / "large" / "shard-0.bin").read_bytes() == objects["data/large/shard-0.bin"]
        assert len(os.listdir(view / "train" / "05")) == SMALL // 20
        # `locus mount` of a prefix and of a folder.
        for uri, want in [
            (f"s3://{BUCKET}/data/train/05", {k[len("data/train/05/"):]: v for k, v in objects.items() if k.startswith("data/train/05/")}),
            (f"file://{src}/ckpt", {k[len("ckpt/"):]: v for k, v in files.items()}),
        ]:
            m = workdir / ("m" + str(abs(hash(uri))))
            m.mkdir()
            d.run("mount", uri, str(m))
            try:
                got = {
                    str(p.relative_to(m)): p.read_bytes() for p in m.rglob("*") if p.is_file()
                }
                assert got == want
                with pytest.raises(OSError):
                    (m / "new").write_bytes(b"x")
            finally:
                subprocess.run([d.run("--version").args[0], "unmount", str(m)], check=True)
    finally:
        d.close()
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_s3_credentials_from_a_profile(s3, workdir):
    """Without AWS_ACCESS_KEY_ID, the keys of AWS_PROFILE in the shared credentials file sign
    the requests (the proxy sees the key id; the secret only ever signs)."""
    moto, proxy, objects = s3
    creds = workdir / "credentials"
    creds.write_text(f"[default]\naws_access_key_id = WRONGDEFAULT\naws_secret_access_key = x\n"
                     f"[ci]\naws_access_key_id = PROFILEKEYID\naws_secret_access_key = {SECRET}\n")
    env = {"AWS_SHARED_CREDENTIALS_FILE": str(creds), "AWS_PROFILE": "ci", "HOME": str(workdir)}
    d = start(workdir, proxy, env=env)
    try:
        proxy.reset()
        key = "data/large/shard-0.bin"
        assert d.run("cat", f"s3://{BUCKET}/{key}").stdout == objects[key]
        auth = [next((v for k, v in h.items() if k.lower() == "authorization"), "") for h in proxy.headers_seen]
        assert auth and all("Credential=PROFILEKEYID/" in a for a in auth), auth[:2]
        secret_free(d.logs(), json.dumps(proxy.headers_seen))
    finally:
        d.close()


def test_s3_without_credentials_says_the_daemon_has_none_not_where_the_chain_probed(s3, workdir):
    """No keys, no profile with keys, no instance role: the error says the daemon found no
    credentials and that the daemon reads them, never the instance-metadata address the
    credential chain tried last (here a closed local port, as 169.254.169.254 is off an EC2
    host)."""
    moto, proxy, _ = s3
    (workdir / "credentials").write_text("")
    port = free_port()
    env = {
        "AWS_SHARED_CREDENTIALS_FILE": str(workdir / "credentials"),
        "AWS_PROFILE": "none",
        "HOME": str(workdir),
        "AWS_METADATA_ENDPOINT": f"http://127.0.0.1:{port}",
    }
    d = start(workdir, proxy, env=env)
    try:
        r = d.run("ls", f"s3://{BUCKET}/data", check=False)
        err = fails_with_one_line(r, "access denied (the daemon found no AWS credentials")
        assert "the daemon reads them, not this client" in err, err
        logs = d.logs()
        for probe in (f"127.0.0.1:{port}", "latest/api/token", "169.254.169.254"):
            assert probe not in err and probe not in logs, (probe, err, logs)
    finally:
        d.close()


def test_keys_of_a_listed_prefix_cost_one_listing_per_ttl(s3, workdir):
    """Past the TTL, reading keys of a prefix listed before lists the prefix again, once,
    instead of a HEAD per key."""
    moto, proxy, objects = s3
    d = start(workdir, proxy, extra=["--metadata-ttl", "1"])
    try:
        d.run("ls", f"s3://{BUCKET}/data/train/04")
        time.sleep(1.5)
        proxy.reset()
        keys = sorted(k for k in objects if k.startswith("data/train/04/"))[:30]
        began = time.monotonic()
        for k in keys:
            assert d.run("cat", f"s3://{BUCKET}/{k}").stdout == objects[k]
        took = time.monotonic() - began
        assert proxy.requests.get("get") == len(keys), proxy.requests
        # One listing round (a HEAD and a LIST) per TTL that ran out while the keys were read
        # (a loaded machine can take more than the 1 s TTL for 30 reads), never one per key.
        rounds = 1 + int(took)
        assert proxy.requests.get("head", 0) + proxy.requests.get("list", 0) <= 2 * rounds + 2, (proxy.requests, took)
    finally:
        d.close()


def test_s3_keys_as_they_are_and_folder_markers(s3, workdir):
    """Keys with characters that URL and path encoders touch are read as they are (never as
    another object), and folder markers (`dir/` objects) do not hide their folders."""
    moto, proxy, _ = s3
    c = moto.client()
    odd = {
        "odd/m[1]~x.bin": b"brackets and tilde",
        "odd/a%7Eb.csv": b"a literal percent",
        "odd/a~b.csv": b"a tilde",
        "odd/sp ace+plus.txt": b"space and plus",
        "odd/dir/inner.bin": b"inside a marked folder",
    }
    for k, v in odd.items():
        c.put_object(Bucket=BUCKET, Key=k, Body=v)
    c.put_object(Bucket=BUCKET, Key="odd/dir/", Body=b"")
    d = start(workdir, proxy)
    try:
        files = json.loads(d.run("ls", f"s3://{BUCKET}/odd", "--json").stdout)["files"]
        assert sorted(f["path"] for f in files) == sorted(k[len("odd/"):] for k in odd)
        for f in files:
            assert d.run("cat", f["uri"]).stdout == odd["odd/" + f["path"]], f
        for k, v in odd.items():
            assert d.run("cat", f"s3://{BUCKET}/{k}").stdout == v, k
        sub = json.loads(d.run("ls", f"s3://{BUCKET}/odd/dir", "--json").stdout)["files"]
        assert [f["path"] for f in sub] == ["inner.bin"]
    finally:
        d.close()


def test_no_planted_secret_reaches_any_output(s3, workdir, hub_factory):
    """A Hub token, an AWS secret key, a URL signature and a password in HF_ENDPOINT, planted,
    then used by a two-node cluster at debug logging: none of them reaches a log, an error
    line, `status --json`, `/metrics` or the bytes the peers exchange."""
    moto, proxy, objects = s3
    token = "hf_PLANTEDtokenValue0123456789abcdef"
    sig = "PLANTEDsignature0123456789abcdef0123456789abcdef"
    password = "PLANTEDpassword42"
    planted = {"HF token": token, "AWS secret": SECRET, "URL signature": sig, "HF_ENDPOINT password": password}
    hub = hub_factory("--token", token, "--model", "acme/llm=2MiBx2")
    root = workdir / "www"
    (root / "m").mkdir(parents=True)
    data = os.urandom(3 << 20)
    (root / "m" / "model.bin").write_bytes(data)
    srv = FileServer(root)
    signed = (f"{srv.url}/m/model.bin?X-Amz-Algorithm=AWS4-HMAC-SHA256"
              f"&X-Amz-Credential=AKIAPLANTED%2F20261130%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Signature={sig}")
    missing = signed.replace("model.bin", "gone.bin")
    # Two members whose every peer byte crosses a tap.
    ports = [free_port() for _ in range(2)]
    taps = [TcpTap(f"127.0.0.1:{p}") for p in ports]
    peers = ",".join(t.addr for t in taps)
    metrics = [free_port() for _ in range(2)]
    env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": token, "LOCUS_LOG": "debug"}
    nodes = [
        start(workdir, proxy, f"n{i}", env=env, listen=f"127.0.0.1:{ports[i]}",
              extra=["--advertise", taps[i].addr, "--peers", peers, "--metrics", f"127.0.0.1:{metrics[i]}",
                     "--http-allow-private", "127.0.0.1/32", "--chunk-size", "256KiB"])
        for i in range(2)
    ]
    # A node whose HF_ENDPOINT carries a password (and cannot be reached).
    lone = start(workdir, proxy, "lone", env={"HF_ENDPOINT": f"http://locus:{password}@127.0.0.1:1", "LOCUS_LOG": "debug"})
    outputs = []
    try:
        def run(n, *args, check=True):
            r = n.run(*args, check=check)
            outputs.append(r.stderr.decode(errors="replace"))
            return r

        for uri in ("hf://acme/llm", f"s3://{BUCKET}/data/train/00"):
            run(nodes[0], "warm", uri, "--scope", "cluster")
        run(nodes[0], "warm", signed, "--scope", "cluster")
        # The other node reads everything: the hub's and the bucket's chunks from its peer, the
        # signed URL from the origin itself.
        files = json.loads(run(nodes[1], "ls", "hf://acme/llm", "--json").stdout)["files"]
        for f in files:
            assert run(nodes[1], "cat", f["uri"]).stdout
        for f in json.loads(run(nodes[1], "ls", f"s3://{BUCKET}/data/train/00", "--json").stdout)["files"][:10]:
            assert run(nodes[1], "cat", f["uri"]).stdout == objects[f"data/train/00/{f['path']}"]
        assert run(nodes[1], "cat", signed).stdout == data
        # Errors that name the secrets' carriers.
        r = run(nodes[0], "cat", missing, check=False)
        assert r.returncode == 1 and "gone.bin" in r.stderr.decode(), r.stderr
        r = run(lone, "cat", "hf://acme/llm/config.json", check=False)
        assert r.returncode == 1, r.stderr
        for n in nodes + [lone]:
            outputs.append(run(n, "status", "--json").stdout.decode())
        for port in metrics:
            outputs.append(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode())
        captured = b"".join(t.bytes() for t in taps)
        # The taps saw the peers at work (so the check below means something).
        assert b"acme/llm" in captured and BUCKET.encode() in captured, len(captured)
        assert nodes[1].status()["peer_bytes"] > 0
        logs = [n.logs() for n in nodes + [lone]]
        assert any("127.0.0.1:1" in l for l in logs), "the lone node never named its endpoint"
        for what, value in planted.items():
            for i, text in enumerate(outputs + logs):
                assert value not in text, f"the {what} reached an output: {text[:2000]}"
            assert value.encode() not in captured, f"the {what} crossed the peer port"
        # The signed URL's path is still written (without its query).
        assert any("/m/gone.bin?<redacted>" in o for o in outputs + logs)
    finally:
        for n in nodes + [lone]:
            n.close()
        for t in taps:
            t.close()
        srv.close()


def test_locus_reads_a_synthetic_dataset_over_the_test_origins_s3(hub_factory, workdir):
    """The test origin's S3 surface serves locus as moto does: a listing of 2,500 objects in
    pages and each byte the Hub serves for the same file (the training benchmark's origin)."""
    import urllib.request

    hub = hub_factory("--generated", "datasets/bench/many=2500x100-400")
    d = Daemon(workdir, "n1", extra=["--s3-endpoint", hub.s3_url])
    try:
        files = json.loads(d.run("ls", "s3://bench/many", "--json").stdout)["files"]
        assert [f["path"] for f in files] == [f"{i // 1000:04d}/{i:08d}.bin" for i in range(2500)]
        for f in (files[0], files[1500], files[-1]):
            want = urllib.request.urlopen(f"{hub.url}/datasets/bench/many/resolve/main/{f['path']}").read()
            assert f["size"] == len(want)
            assert d.run("cat", f"s3://bench/many/{f['path']}").stdout == want
        assert hub.stats()["requests"]["s3_list"] == 3
    finally:
        d.close()
