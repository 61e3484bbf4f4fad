"""composer/oci/client.py, the methods the daemonless builder uses (blob_size, mount_blob,
upload_blob, download_blob, copy_blob), against a small in-process registry stand-in that
can fail on purpose. The real registry is exercised in tests/integration/test_daemonless.py."""

from __future__ import annotations

import hashlib
import http.server
import threading
import uuid
from urllib.parse import parse_qs, urlparse

import pytest

from composer.errors import NotFoundError, RegistryError, VerificationError
from composer.oci.client import Registry


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class FakeRegistry(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.blobs = {}  # (repo, digest) -> bytes
        self.log = []  # (method, path, body length)
        self.fail_puts = 0  # answer 500 to this many upload PUTs
        self.allow_mount = True
        self.corrupt_get = False

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _reply(self, code, headers=None, body=b""):
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _route(self):
        url = urlparse(self.path)
        parts = url.path.split("/")
        # /v2/<repo...>/blobs/<digest>  or  /v2/<repo...>/blobs/uploads/[<id>]
        i = parts.index("blobs")
        return url, "/".join(parts[2:i]), parts[i + 1:]

    def do_HEAD(self):
        self.server.log.append(("HEAD", self.path, 0))
        _, repo, rest = self._route()
        data = self.server.blobs.get((repo, rest[0]))
        if data is None:
            return self._reply(404)
        self._reply(200, {"Content-Length": str(len(data)), "Docker-Content-Digest": rest[0]})

    def do_GET(self):
        self.server.log.append(("GET", self.path, 0))
        _, repo, rest = self._route()
        data = self.server.blobs.get((repo, rest[0]))
        if data is None:
            return self._reply(404)
        self._reply(200, {}, data[:-1] + b"!" if self.server.corrupt_get else data)

    def do_POST(self):
        self.server.log.append(("POST", self.path, 0))
        url, repo, _ = self._route()
        q = parse_qs(url.query)
        if "mount" in q:
            src = (q["from"][0], q["mount"][0])
            if self.server.allow_mount and src in self.server.blobs:
                self.server.blobs[(repo, q["mount"][0])] = self.server.blobs[src]
                return self._reply(201, {"Docker-Content-Digest": q["mount"][0], "Location": f"/v2/{repo}/blobs/{q['mount'][0]}"})
        self._reply(202, {"Location": f"/v2/{repo}/blobs/uploads/{uuid.uuid4().hex}"})

    def do_PUT(self):
        body = self._body()
        self.server.log.append(("PUT", self.path, len(body)))
        url, repo, _ = self._route()
        if self.server.fail_puts:
            self.server.fail_puts -= 1
            return self._reply(500)
        digest = parse_qs(url.query)["digest"][0]
        if _digest(body) != digest:
            return self._reply(400, {"Content-Type": "application/json"}, b'{"errors":[{"code":"DIGEST_INVALID","message":"x"}]}')
        self.server.blobs[(repo, digest)] = body
        self._reply(201, {"Docker-Content-Digest": digest})

    def do_DELETE(self):
        self.server.log.append(("DELETE", self.path, 0))
        self._reply(204)


@pytest.fixture
def fake():
    server = FakeRegistry()
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _reg(fake) -> Registry:
    return Registry(fake.host, attempts=3)


DATA = b"layer bytes " * 1000


def test_blob_size_and_404(fake):
    fake.blobs[("a", _digest(DATA))] = DATA
    reg = _reg(fake)
    assert reg.blob_size("a", _digest(DATA)) == len(DATA)
    assert reg.blob_size("b", _digest(DATA)) is None


def test_mount_201_and_202(fake):
    fake.blobs[("base", _digest(DATA))] = DATA
    reg = _reg(fake)
    assert reg.mount_blob("target", _digest(DATA), "base") is True
    assert fake.blobs[("target", _digest(DATA))] == DATA
    fake.allow_mount = False
    assert reg.mount_blob("other", _digest(DATA), "base") is False
    assert fake.log[-1][0] == "DELETE"  # the upload session it opened instead was closed
    assert [t["action"] for t in reg.transfers] == ["mounted"]


def test_upload_streams_a_file_and_skips_present_blobs(fake, tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(DATA)
    reg = _reg(fake)
    desc = reg.upload_blob("t", _digest(DATA), len(DATA), path=path, media_type="x/y")
    assert (desc.digest, desc.size, desc.media_type) == (_digest(DATA), len(DATA), "x/y")
    assert fake.blobs[("t", _digest(DATA))] == DATA
    puts = [l for l in fake.log if l[0] == "PUT"]
    assert len(puts) == 1 and puts[0][2] == len(DATA)
    reg.upload_blob("t", _digest(DATA), len(DATA), data=DATA)
    assert len([l for l in fake.log if l[0] == "PUT"]) == 1  # HEAD said it is there
    assert [t["action"] for t in reg.transfers] == ["uploaded", "present"]


def test_upload_retries_a_failed_put_with_a_new_session_and_the_whole_body(fake, tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(DATA)
    fake.fail_puts = 2
    _reg(fake).upload_blob("t", _digest(DATA), len(DATA), path=path)
    puts = [l for l in fake.log if l[0] == "PUT"]
    assert len(puts) == 3 and all(p[2] == len(DATA) for p in puts)
    assert len({p[1] for p in puts}) == 3  # three sessions
    assert fake.blobs[("t", _digest(DATA))] == DATA


def test_upload_gives_up_with_a_registry_error(fake):
    fake.fail_puts = 10
    with pytest.raises(RegistryError, match="3 upload attempts"):
        _reg(fake).upload_blob("t", _digest(DATA), len(DATA), data=DATA)


def test_upload_of_wrong_bytes_is_refused(fake):
    with pytest.raises(RegistryError, match="DIGEST_INVALID"):
        _reg(fake).upload_blob("t", _digest(b"other"), len(DATA), data=DATA)


def test_present_blob_with_other_size_is_an_inconsistency(fake):
    fake.blobs[("t", _digest(DATA))] = DATA
    with pytest.raises(VerificationError):
        _reg(fake).upload_blob("t", _digest(DATA), len(DATA) + 1, data=DATA)


def test_copy_between_registries_checks_the_digest(fake, tmp_path):
    other = FakeRegistry()
    threading.Thread(target=other.serve_forever, args=(0.02,), daemon=True).start()
    try:
        fake.blobs[("base", _digest(DATA))] = DATA
        src, dst = _reg(fake), _reg(other)
        dst.copy_blob(src, "base", _digest(DATA), len(DATA), "target")
        assert other.blobs[("target", _digest(DATA))] == DATA
        assert dst.transfers[-1]["action"] == "copied"
        dst.copy_blob(src, "base", _digest(DATA), len(DATA), "target")
        assert dst.transfers[-1]["action"] == "present"
        fake.corrupt_get = True
        with pytest.raises(VerificationError):
            dst.copy_blob(src, "base", _digest(DATA), len(DATA), "elsewhere")
        assert ("elsewhere", _digest(DATA)) not in other.blobs
        with pytest.raises(NotFoundError):
            src.download_blob("base", _digest(b"missing"), tmp_path / "x")
    finally:
        other.shutdown()
        other.server_close()


# -- the streamed (chunked) upload, against the in-memory distribution registry -------------------
def test_chunked_upload_streams_and_checks_the_digest():
    from tests.fakes import FakeRegistry as Distribution

    with Distribution() as fake:
        reg = Registry(fake.host)
        chunks = [b"a" * 1000, b"", b"b" * 10, b"c"]
        desc = reg.upload_blob_chunks("ml/envs", iter(chunks), "application/vnd.oci.image.layer.v1.tar+gzip")
        data = b"".join(chunks)
        assert (desc.digest, desc.size) == (_digest(data), len(data))
        assert desc.media_type == "application/vnd.oci.image.layer.v1.tar+gzip"
        assert fake.blob("ml/envs", desc.digest) == data
        methods = [m for m, target in fake.requests if "/blobs/uploads/" in target]
        assert methods == ["POST", "PATCH", "PATCH", "PATCH", "PUT"]  # the empty chunk sends nothing
        assert reg.transfers[-1]["action"] == "uploaded" and fake.upload_sessions() == 0


def test_chunked_upload_failure_is_a_registry_error_not_retried():
    """The chunks are consumed once: a failed PATCH ends the upload with an error (the builder
    then pushes its copy of the layer with upload_blob, which retries)."""
    from tests.fakes import FakeRegistry as Distribution

    with Distribution() as fake:
        reg = Registry(fake.host, attempts=3)
        fake.fail_next("PATCH", status=500, times=1)
        with pytest.raises(RegistryError):
            reg.upload_blob_chunks("ml/envs", iter([b"x" * 10, b"y"]))
        assert [m for m, t in fake.requests if "/blobs/uploads/" in t] == ["POST", "PATCH"]
        assert fake.blob("ml/envs", _digest(b"x" * 10 + b"y")) is None
