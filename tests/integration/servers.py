"""Real servers for fault tests: a registry process of a test's own (to kill and restart, or
to put behind a password), and a forwarding proxy that misbehaves in chosen ways."""

from __future__ import annotations

import http.server
import os
import socket
import socketserver
import subprocess
import threading
import time
from pathlib import Path
from typing import Optional

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RegistryProcess:
    """`docker-registry serve` on a loopback port with its own storage; stop() kills it for real."""

    def __init__(self, root: Path, htpasswd: Optional[str] = None, host: str = "127.0.0.1", tls: Optional[tuple] = None):
        self.root, self.port, self.host = root, free_port(), host
        root.mkdir(parents=True, exist_ok=True)
        self.addr = f"{host}:{self.port}"
        self.proc: Optional[subprocess.Popen] = None
        self.scheme = "https" if tls else "http"
        tls_conf = f"  tls:\n    certificate: {tls[0]}\n    key: {tls[1]}\n" if tls else ""
        auth = ""
        if htpasswd:
            (root / "htpasswd").write_text(htpasswd)
            auth = f"auth:\n  htpasswd:\n    realm: composer-test\n    path: {root / 'htpasswd'}\n"
        (root / "config.yml").write_text(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n{tls_conf}{auth}"
        )

    def start(self) -> "RegistryProcess":
        self.proc = subprocess.Popen(["docker-registry", "serve", str(self.root / "config.yml")],
                                     stdout=subprocess.DEVNULL, stderr=open(self.root / "registry.log", "ab"))
        for _ in range(100):
            try:
                requests.get(f"{self.scheme}://127.0.0.1:{self.port}/v2/", timeout=1, verify=False)
                return self
            except requests.RequestException:
                time.sleep(0.05)
        raise RuntimeError(f"test registry on {self.port} did not start")

    def stop(self) -> None:
        if self.proc:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "FaultProxy._Server"

    def _forward(self):
        proxy = self.server.proxy
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        with proxy.lock:
            proxy.count += 1
            n = proxy.count
            proxy.bytes_up += len(body or b"")
        if proxy.mode == "reset" and n <= proxy.failures:
            self.connection.shutdown(socket.SHUT_RDWR)  # a reset: no answer at all
            self.close_connection = True
            return
        if (proxy.mode == "503" and n <= proxy.failures) or (proxy.mode == "500-spec" and "/manifests/spec-" in self.path):
            status = 503 if proxy.mode == "503" else 500
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        dropped = ("content-length",) if proxy.keep_host else ("host", "content-length")
        headers = {k: v for k, v in self.headers.items() if k.lower() not in dropped}
        r = requests.request(self.command, f"http://{proxy.upstream}{self.path}", headers=headers, data=body,
                             allow_redirects=False, timeout=60)
        content = r.content
        with proxy.lock:
            proxy.bytes_down += len(content) if self.command != "HEAD" else 0
        if proxy.mode == "corrupt" and self.command == "GET" and "/blobs/sha256:" in self.path and content:
            content = bytes([content[0] ^ 0xFF]) + content[1:]  # other bytes than stored
        self.send_response(r.status_code)
        for k, v in r.headers.items():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        # A HEAD answer has no body but the upstream's length (a blob's size).
        self.send_header("Content-Length", r.headers.get("Content-Length", "0") if self.command == "HEAD" else str(len(content)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(content)

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _forward

    def log_message(self, *args):
        pass


class FaultProxy:
    """Forwards to a real registry. Modes: '503' and 'reset' fail the first `failures` requests,
    '500-spec' answers 500 to spec-tag manifests, 'corrupt' flips a byte of every blob read, 'pass'
    only forwards. Every mode counts the bytes sent up (request bodies) and down (response bodies)."""

    class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        proxy: "FaultProxy"

    def __init__(self, upstream: str, mode: str, failures: int = 0, keep_host: bool = False):
        # keep_host: the registry sees the proxy's address, so upload locations lead back through it
        self.upstream, self.mode, self.failures, self.keep_host = upstream, mode, failures, keep_host
        self.count = 0
        self.bytes_up = self.bytes_down = 0
        self.lock = threading.Lock()
        self.server = self._Server(("127.0.0.1", 0), _Handler)
        self.server.proxy = self
        self.addr = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
