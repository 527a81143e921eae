"""Real origins for the tests and benchmarks of s3://, http(s):// and file:// names.

- `Moto`: moto's S3 server (a real S3 protocol implementation) as a process.
- `Proxy`: a reverse proxy in front of any HTTP origin that counts requests and bytes by kind
  and fails or throttles on demand, so that tests prove what they claim.
- `FileServer`: a plain HTTP server of one folder, with or without `Range` support.
- `Daemon`: a `locus daemon` process with its own cache and socket.
"""

import http.client
import http.server
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from conftest import binary

SECRET = "SENTINELsecretKEY0123456789abcdefSENTINEL"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} never opened")


class Moto:
    def __init__(self):
        self.port = free_port()
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_port(self.port)
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id="testing",
            aws_secret_access_key=SECRET,
            region_name="us-east-1",
            config=Config(max_pool_connections=32),
        )

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


def s3_kind(method: str, path: str, query: str) -> str:
    """The S3 API call a request is: list, head or get (anything else: other)."""
    if method == "HEAD":
        return "head"
    if method == "GET":
        key = path.lstrip("/").split("/", 1)
        if len(key) == 1 or key[1] == "" or "list-type" in query:
            return "list"
        return "get"
    return "other"


class Proxy:
    """Forwards to `upstream`; counts requests and response bytes by kind; can answer `fail`
    more requests of a kind with a status (503 SlowDown throttles, 500 fails, 403 denies).
    `latency` (seconds) delays every request; `bandwidth` (bytes a second) paces every
    response body, per connection: a remote store as a client sees it."""

    def __init__(self, upstream: str, kind=s3_kind, latency: float = 0.0, bandwidth: float | None = None):
        self.host, port = upstream.split("//", 1)[1].split(":")
        self.up_port = int(port)
        self.kind = kind
        self.lock = threading.Lock()
        self.reset()
        self.faults = []  # [kind, status, count, body]
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def handle_one(self):
                path, _, query = self.path.partition("?")
                kind = proxy.kind(self.command, path, query)
                with proxy.lock:
                    proxy.requests[kind] = proxy.requests.get(kind, 0) + 1
                    proxy.headers_seen.append(dict(self.headers))
                    proxy.paths[(kind, path)] = proxy.paths.get((kind, path), 0) + 1
                    fault = next((f for f in proxy.faults if f[0] in (kind, "*") and f[2] > 0), None)
                    if fault:
                        fault[2] -= 1
                        proxy.failed += 1
                if fault:
                    body = fault[3].encode()
                    self.send_response(fault[1])
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(body)
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if latency:
                    time.sleep(latency)
                conn = http.client.HTTPConnection(proxy.host, proxy.up_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding", "server", "date"):
                        self.send_header(k, v)
                data = resp.read()
                if resp.getheader("Content-Length") is None and self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    if bandwidth:
                        time.sleep(len(data) / bandwidth)
                    self.wfile.write(data)
                    with proxy.lock:
                        proxy.bytes[kind] = proxy.bytes.get(kind, 0) + len(data)
                conn.close()

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = handle_one

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reset(self):
        with self.lock:
            self.requests = {}
            self.bytes = {}
            self.failed = 0
            self.headers_seen = []
            self.paths = {}

    def fail(self, kind: str, status: int, count: int, code: str = "SlowDown"):
        body = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>{code}</Message></Error>"
        with self.lock:
            self.faults.append([kind, status, count, body])

    def close(self):
        self.server.shutdown()


class FileServer:
    """Serves files of `root` over HTTP with ETag, Last-Modified and, unless `ranges` is off,
    `Range`; counts GET and HEAD requests."""

    def __init__(self, root: Path, ranges: bool = True):
        self.root = Path(root)
        self.ranges = ranges
        self.counts = {"GET": 0, "HEAD": 0, "206": 0}
        srv = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def serve(self, body: bool):
                srv.counts[self.command] += 1
                p = srv.root / self.path.lstrip("/").split("?")[0]
                if not p.is_file():
                    self.send_error(404)
                    return
                st = p.stat()
                etag = f'"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"'
                im = self.headers.get("If-Match")
                if im and im != etag:
                    self.send_response(412)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = p.read_bytes()
                start, end, status = 0, len(data), 200
                rng = self.headers.get("Range")
                if srv.ranges and rng:
                    m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng)
                    start = int(m.group(1))
                    end = int(m.group(2)) + 1 if m.group(2) else len(data)
                    status = 206
                    srv.counts["206"] += 1
                self.send_response(status)
                self.send_header("ETag", etag)
                self.send_header("Last-Modified", self.date_time_string(int(st.st_mtime)))
                if srv.ranges:
                    self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
                self.send_header("Content-Length", str(end - start))
                self.end_headers()
                if body:
                    self.wfile.write(data[start:end])

            def do_GET(self):
                self.serve(True)

            def do_HEAD(self):
                self.serve(False)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


class Daemon:
    """`locus daemon` with its own cache, socket and log; `extra` flags are appended."""

    def __init__(self, workdir: Path, name: str, extra=(), env=None, listen: str | None = None):
        self.dir = Path(workdir) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = str(self.dir / "locus.sock")
        self.log_path = self.dir / "daemon.log"
        self.env = dict(os.environ)
        self.env.update(
            {
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": SECRET,
                "AWS_REGION": "us-east-1",
                "RUST_LOG": "info",
            }
        )
        self.env.pop("AWS_ENDPOINT_URL", None)
        self.env.update(env or {})
        if "AWS_PROFILE" in self.env:
            # Credentials come from the profile alone.
            self.env.pop("AWS_ACCESS_KEY_ID", None)
            self.env.pop("AWS_SECRET_ACCESS_KEY", None)
        args = [
            binary("locus"),
            "daemon",
            "--cache-dir",
            str(self.dir / "cache"),
            "--socket",
            self.socket,
            *([f"--listen={listen}"] if listen else []),
            *extra,
        ]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        end = time.time() + 30
        while "ready" not in self.log_path.read_text():
            if self.proc.poll() is not None or time.time() > end:
                # Not left running: it would hold its cache (and the file system under it).
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(f"daemon did not start: {self.log_path.read_text()}")
            time.sleep(0.05)

    def run(self, *args, check=True, timeout=300) -> subprocess.CompletedProcess:
        p = subprocess.run(
            [binary("locus"), "--socket", self.socket, *args],
            capture_output=True,
            timeout=timeout,
            env=self.env,
        )
        if check and p.returncode != 0:
            raise AssertionError(f"locus {args} failed ({p.returncode}): {p.stderr.decode()}")
        return p

    def status(self) -> dict:
        import json

        return json.loads(self.run("status", "--json").stdout)

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()

    def logs(self) -> str:
        return self.log_path.read_text()


class TcpTap:
    """A TCP proxy to `upstream` (HOST:PORT) that keeps every byte that crosses it, both ways:
    a captured peer exchange."""

    def __init__(self, upstream: str):
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.captured = bytearray()
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.addr = f"127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _pump(self, src, dst):
        try:
            while True:
                b = src.recv(1 << 16)
                if not b:
                    break
                with self.lock:
                    self.captured += b
                dst.sendall(b)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(self.upstream)
            except OSError:
                c.close()
                continue
            threading.Thread(target=self._pump, args=(c, u), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c), daemon=True).start()

    def bytes(self) -> bytes:
        with self.lock:
            return bytes(self.captured)

    def close(self):
        self.sock.close()


def cleanup(path: Path):
    shutil.rmtree(path, ignore_errors=True)


def loop_ext4(img: Path, mnt: Path, size: int, journal: bool) -> Path:
    """A fresh ext4 of `size` bytes in the file `img` (with or without a journal), mounted on
    `mnt` through a loop device; `discard` hands blocks freed inside back out of `img`."""
    with open(img, "wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-F", *([] if journal else ["-O", "^has_journal"]), str(img)],
                   check=True)
    mnt.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "ext4", "-o", "loop,discard", str(img), str(mnt)], check=True)
    return mnt


def unmount(mnt: Path):
    """Unmounts `mnt`; still busy after two seconds, detaches it (gone with its last user)."""
    for _ in range(20):
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    subprocess.run(["umount", "-l", str(mnt)], check=False)
