"""composer/oci/transport.py: the one retry loop, error mapping, TLS and the 401 challenge, against
real HTTP servers on 127.0.0.1 (the in-memory registry of tests/fakes, and small servers of the
test's own for authentication and TLS). Backoff never really sleeps here: the module's `time`
is replaced by a recorder."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import shutil
import ssl
import subprocess
import threading
from typing import Callable, List, Optional

import pytest
import requests

from composer.errors import RegistryError, VerificationError
from composer.oci import transport as transport_mod
from composer.oci.client import OCI_MANIFEST, Registry
from composer.oci.http import ConnectionFailed, TLSError
from composer.oci.transport import RETRY_STATUSES, RetryPolicy, Transient, Transport
from tests.fakes import FakeRegistry, registry_fixture

fake_registry = pytest.fixture(registry_fixture)


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class _Clock:
    """Stands in for the transport module's `time` and `random`: records the backoff, waits for
    nothing (the clock moves by what was slept); jitter draws `jitter` (1.0: the longest wait);
    `on_sleep` runs at each wait (what happens meanwhile elsewhere)."""

    def __init__(self):
        self.sleeps: List[float] = []
        self.on_sleep: Optional[Callable[[], None]] = None
        self.now = 1000.0
        self.jitter = 1.0

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep:
            self.on_sleep()

    def monotonic(self) -> float:
        return self.now

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * self.jitter


@pytest.fixture
def clock(monkeypatch) -> _Clock:
    c = _Clock()
    monkeypatch.setattr(transport_mod, "time", c)
    monkeypatch.setattr(transport_mod, "random", c)
    return c


def _transport(host: str, attempts: int = 3, **kw) -> Transport:
    return Transport(host, f"http://{host}", attempts=attempts, **kw)


def _image(fake: FakeRegistry, repo: str = "envs") -> bytes:
    """An image manifest whose blobs repo holds."""
    config, layer = fake.put_blob(repo, b"{}"), fake.put_blob(repo, b"layer")
    return json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": 5}],
    }).encode()


# -- the retry loop ------------------------------------------------------------------------
def test_backoff_doubles_with_jitter_and_is_bounded(clock):
    policy = RetryPolicy(attempts=9, backoff=0.5, max_wait=3.0)
    assert [policy.wait(n) for n in (1, 2, 3, 4, 10)] == pytest.approx([0.5, 1.0, 2.0, 3.0, 3.0])
    clock.jitter = 0.0  # the shortest draw is half the computed wait: waits never collapse to nothing
    assert [policy.wait(n) for n in (1, 2, 3)] == pytest.approx([0.25, 0.5, 1.0])
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


def test_real_jitter_spreads_the_waits():
    waits = {RetryPolicy().wait(3) for _ in range(50)}
    assert len(waits) > 40 and all(1.0 <= w <= 2.0 for w in waits)


def test_503_is_retried_with_backoff_then_succeeds(fake_registry, clock):
    fake_registry.put_blob("envs", b"data")
    fake_registry.fail_next("HEAD", "/blobs/", 503, times=2)
    resp = _transport(fake_registry.host).request("HEAD", f"/v2/envs/blobs/{digest(b'data')}",
                                                  scope="repository:envs:pull")
    assert resp.status_code == 200
    assert [m for m, _ in fake_registry.requests] == ["HEAD"] * 3
    assert clock.sleeps == pytest.approx([0.5, 1.0])


@pytest.mark.parametrize("status", sorted(RETRY_STATUSES))
def test_every_transient_status_is_retried(fake_registry, clock, status):
    fake_registry.fail_next("GET", "/tags/list", status)
    Registry(fake_registry.host).put_manifest("envs", "v1", _image(fake_registry), OCI_MANIFEST)
    assert Registry(fake_registry.host).tags("envs") == ["v1"]
    assert len(clock.sleeps) == 1


def test_a_reset_connection_is_retried(fake_registry, clock):
    fake_registry.fail_next("GET", "/v2/", None)  # the server hangs up without answering
    assert _transport(fake_registry.host).request("GET", "/v2/", scope="").status_code == 200
    assert len(clock.sleeps) == 1


def test_persistent_503_ends_in_one_error_after_the_attempts(fake_registry, clock):
    fake_registry.fail_next("GET", "/manifests/", 503, times=100)
    with pytest.raises(RegistryError) as err:
        Registry(fake_registry.host, attempts=4).get_manifest("envs", "latest")
    line = err.value.one_line()
    assert f"registry {fake_registry.host} failed after 4 attempts" in line and "HTTP 503" in line
    assert len(fake_registry.requests) == 4
    assert clock.sleeps == pytest.approx([0.5, 1.0, 2.0])
    assert isinstance(err.value.__cause__, Transient)  # the cause is kept


def test_400_is_not_retried(fake_registry, clock):
    fake_registry.fail_next("GET", "/manifests/", 400)
    with pytest.raises(RegistryError, match="answered HTTP 400 to GET /v2/envs/manifests/latest"):
        Registry(fake_registry.host).get_manifest("envs", "latest")
    assert len(fake_registry.requests) == 1 and clock.sleeps == []


def test_404_is_absent_only_where_the_caller_allows_it(fake_registry, clock):
    reg = Registry(fake_registry.host)
    assert reg.get_manifest("envs", "latest") is None
    with pytest.raises(RegistryError, match="HTTP 404"):
        reg.transport.request("GET", "/v2/envs/manifests/latest", scope="repository:envs:pull")
    assert clock.sleeps == []


def test_retrying_reruns_a_whole_operation_and_can_end_in_the_callers_error(clock):
    t = _transport("127.0.0.1:1")
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise Transient("not yet")
        return "done"

    assert t.retrying(flaky) == "done" and len(calls) == 3
    def never(error=None):
        calls.append(1)
        raise Transient("still not", error)

    own = VerificationError("the caller's own words", "and hint")
    with pytest.raises(VerificationError) as err:
        t.retrying(lambda: never(own))
    assert err.value is own and len(calls) == 3 + 3
    with pytest.raises(RegistryError, match="failed after 3 upload attempts: still not"):
        t.retrying(never, "upload")
    assert clock.sleeps == pytest.approx([0.5, 1.0] * 3)


def test_unreachable_registry(clock):
    with pytest.raises(RegistryError) as err:
        Registry("127.0.0.1:1", attempts=2).tags("envs")
    line = err.value.one_line()
    assert "registry 127.0.0.1:1 failed after 2 attempts: connection refused" in line
    assert isinstance(err.value.__cause__.__cause__, ConnectionFailed)


def test_attempts_come_from_the_caller_never_the_environment(monkeypatch):
    monkeypatch.setenv("COMPOSER_REGISTRY_ATTEMPTS", "7")
    assert Registry("127.0.0.1:5000").attempts == 5
    assert Registry("127.0.0.1:5000", attempts=1).attempts == 1
    with pytest.raises(ValueError):
        Registry("127.0.0.1:5000", attempts=0)


# -- whole-operation retries in the client ---------------------------------------------------
def test_manifest_put_waits_for_a_blob_another_upload_is_committing(fake_registry, clock):
    reg = Registry(fake_registry.host)
    layer = b"committed meanwhile"
    config = fake_registry.put_blob("envs", b"{}")
    body = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(layer), "size": len(layer)}],
    }).encode()
    clock.on_sleep = lambda: fake_registry.put_blob("envs", layer)  # lands while the client waits
    desc, _ = reg.put_manifest("envs", "v1", body, OCI_MANIFEST)
    assert desc.digest == digest(body) and fake_registry.tags("envs") == ["v1"]
    assert len(clock.sleeps) == 1

    clock.on_sleep = None
    other = body.replace(b"committed meanwhile", b"never pushed").replace(digest(layer).encode(), digest(b"never").encode())
    with pytest.raises(RegistryError) as err:
        reg.put_manifest("envs", "v2", other, OCI_MANIFEST)
    assert "refused manifest envs:v2 (MANIFEST_BLOB_UNKNOWN" in err.value.one_line()
    assert "check that every blob it names was pushed" in err.value.one_line()
    assert len(clock.sleeps) == 1 + 4  # the default 5 attempts


def test_a_failed_blob_put_restarts_the_upload_with_a_new_session(fake_registry, clock):
    fake_registry.fail_next("PUT", "/blobs/uploads/", 502, times=2)
    reg = Registry(fake_registry.host)
    reg.push_blob("envs", b"retried", "x/y")
    assert fake_registry.blob("envs", digest(b"retried")) == b"retried"
    posts = [t for m, t in fake_registry.requests if m == "POST"]
    puts = [t.split("?")[0] for m, t in fake_registry.requests if m == "PUT"]
    assert len(posts) == 3 and len(set(puts)) == 3
    assert [t["action"] for t in reg.transfers] == ["uploaded"]


def test_a_blob_put_that_landed_though_its_answer_was_lost_is_not_repeated(fake_registry, clock):
    reg = Registry(fake_registry.host)
    original = reg.session.request

    def lose_the_answer(method, url, **kw):
        resp = original(method, url, **kw)
        if method == "PUT":
            raise ConnectionFailed("http://127.0.0.1: [Errno 104] Connection reset by peer")
        return resp

    reg.session.request = lose_the_answer
    reg.push_blob("envs", b"landed", "x/y")
    assert [m for m, _ in fake_registry.requests].count("PUT") == 1
    assert clock.sleeps == []


def test_download_retries_a_503_and_checks_the_digest(fake_registry, clock, tmp_path):
    d = fake_registry.put_blob("envs", b"streamed bytes")
    fake_registry.fail_next("GET", "/blobs/", 503)
    reg = Registry(fake_registry.host)
    assert reg.download_blob("envs", d, tmp_path / "blob") == len(b"streamed bytes")
    assert (tmp_path / "blob").read_bytes() == b"streamed bytes"
    assert len(clock.sleeps) == 1


# -- access refused, TLS ---------------------------------------------------------------------
@pytest.mark.parametrize("status", [401, 403])
def test_refused_access_is_one_line_that_says_docker_login(fake_registry, clock, status, tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))  # no credentials to offer
    fake_registry.fail_next("HEAD", None, status)
    with pytest.raises(RegistryError) as err:
        Registry(fake_registry.host).head_manifest("envs", "latest")
    line = err.value.one_line()
    assert line == (f"registry {fake_registry.host} refused access to repository:envs:pull ({status}); "
                    f"run 'docker login {fake_registry.host}' or fix the credentials in DOCKER_CONFIG")
    assert err.value.exit_code == 5
    assert len(fake_registry.requests) == 1 and clock.sleeps == []


@pytest.fixture
def tls_server(tmp_path):
    """An HTTPS server on 127.0.0.1 with a self-signed certificate: (host, certificate path)."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make a certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}", str(cert)
    server.shutdown()
    server.server_close()


def test_an_untrusted_certificate_is_one_tls_error_never_retried(tls_server, clock, monkeypatch):
    host, cert = tls_server
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    untrusted = Transport(host, f"https://{host}")
    with pytest.raises(RegistryError) as err:
        untrusted.request("GET", "/v2/", scope="")
    assert err.value.one_line() == (
        f"TLS verification failed for registry {host} (TLSError); "
        "set COMPOSER_CA_BUNDLE to the CA that signed it, or list the host in insecure_registries")
    assert isinstance(err.value.__cause__, TLSError)
    assert clock.sleeps == []
    # The CA bundle is how it becomes trusted; verification is never turned off.
    assert Transport(host, f"https://{host}", verify=cert).request("GET", "/v2/", scope="").status_code == 200
    assert Transport(host, f"https://{host}", verify=None).verify is True


# -- the 401 challenge -----------------------------------------------------------------------
class _AuthServer(http.server.ThreadingHTTPServer):
    """A registry that wants Basic ("basic") or Bearer ("bearer", tokens from its /token realm)
    credentials. Logs every request's Authorization headers; answers 200 {} when satisfied."""

    daemon_threads = True

    def __init__(self, mode: str, basic: str):
        super().__init__(("127.0.0.1", 0), _AuthHandler)
        self.mode, self.basic = mode, basic
        self.log: List[tuple] = []  # (path, [Authorization headers], status)
        self.token_requests: List[dict] = []
        self.generation = 0  # bump to expire every token handed out so far
        self.host = f"127.0.0.1:{self.server_address[1]}"

    def token_for(self, scope: str) -> str:
        return f"tok-{self.generation}-{scope}"


class _AuthHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _reply(self, status: int, headers: Optional[dict] = None, body: bytes = b"") -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        srv: _AuthServer = self.server
        sent = self.headers.get_all("Authorization") or []
        path, _, query = self.path.partition("?")
        if path == "/token":
            params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
            srv.token_requests.append({**params, "authorization": sent})
            if sent != [f"Basic {srv.basic}"]:
                return self._reply(401)
            scope = requests.utils.unquote(params.get("scope", ""))
            return self._reply(200, {"Content-Type": "application/json"},
                               json.dumps({"token": srv.token_for(scope)}).encode())
        scope = "repository:" + path.split("/")[2] + ":pull"
        want = f"Basic {srv.basic}" if srv.mode == "basic" else f"Bearer {srv.token_for(scope)}"
        if sent == [want]:
            srv.log.append((path, sent, 200))
            return self._reply(200, {"Content-Type": "application/json"}, b"{}")
        srv.log.append((path, sent, 401))
        challenge = 'Basic realm="test"' if srv.mode == "basic" else \
            f'Bearer realm="http://{srv.host}/token",service="fake",scope="{scope}"'
        self._reply(401, {"WWW-Authenticate": challenge})


@pytest.fixture
def credentials(tmp_path, monkeypatch) -> str:
    basic = base64.b64encode(b"ci:pw").decode()
    (tmp_path / "config.json").write_text(json.dumps({"auths": {}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    return basic


def _serve(mode: str, basic: str):
    server = _AuthServer(mode, basic)
    threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
    return server


def _login(tmp_path, host: str, basic: str) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"auths": {host: {"auth": basic}}}))


def test_basic_auth_is_answered_once_then_sent_with_every_request(credentials, tmp_path, clock):
    server = _serve("basic", credentials)
    try:
        _login(tmp_path, server.host, credentials)
        t = _transport(server.host)
        for path in ("/v2/a/tags/list", "/v2/a/tags/list", "/v2/b/tags/list"):
            assert t.request("GET", path, scope="repository:x:pull").status_code == 200
        assert [(p, s) for p, _, s in server.log] == [
            ("/v2/a/tags/list", 401), ("/v2/a/tags/list", 200), ("/v2/a/tags/list", 200), ("/v2/b/tags/list", 200)]
        assert server.log[0][1] == []  # nothing is sent before the registry asks
        assert all(sent == [f"Basic {credentials}"] for _, sent, _ in server.log[1:])  # one header, never two
        assert clock.sleeps == []
    finally:
        server.shutdown()
        server.server_close()


def test_wrong_basic_credentials_are_refused_access(credentials, tmp_path, clock):
    server = _serve("basic", credentials)
    try:
        _login(tmp_path, server.host, base64.b64encode(b"ci:wrong").decode())
        with pytest.raises(RegistryError) as err:
            _transport(server.host).request("GET", "/v2/a/tags/list", scope="repository:a:pull")
        assert "refused access to repository:a:pull (401); run 'docker login" in err.value.one_line()
        assert [s for _, _, s in server.log] == [401, 401]  # asked, answered once, refused: no loop
    finally:
        server.shutdown()
        server.server_close()


def test_bearer_token_is_fetched_from_the_realm_once_per_scope(credentials, tmp_path, clock):
    server = _serve("bearer", credentials)
    try:
        _login(tmp_path, server.host, credentials)
        reg = Registry(server.host)
        reg.tags("a")
        reg.tags("a")
        reg.tags("b")
        assert [(r["scope"], r["service"], r["authorization"]) for r in server.token_requests] == [
            ("repository%3Aa%3Apull", "fake", [f"Basic {credentials}"]),
            ("repository%3Ab%3Apull", "fake", [f"Basic {credentials}"]),
        ]
        assert [s for _, _, s in server.log] == [401, 200, 200, 200]  # the realm known, b asks for its token first
        assert server.log[2][1] == ["Bearer tok-0-repository:a:pull"]

        # A clone has the same credentials (no new token) and a session of its own.
        twin = reg.clone()
        assert twin.session is not reg.session
        assert (twin.host, twin.base, twin.verify, twin.attempts, twin.timeout) == \
            (reg.host, reg.base, reg.verify, reg.attempts, reg.timeout)
        twin.tags("a")
        assert len(server.token_requests) == 2 and server.log[-1][2] == 200

        # An expired token is replaced, once.
        server.generation += 1
        reg.tags("a")
        assert len(server.token_requests) == 3 and [s for _, _, s in server.log[-2:]] == [401, 200]
    finally:
        server.shutdown()
        server.server_close()


def test_a_token_service_that_refuses_is_refused_access(credentials, tmp_path, clock):
    server = _serve("bearer", credentials)
    try:  # no credentials in the Docker config: the token service says 401
        with pytest.raises(RegistryError) as err:
            Registry(server.host).tags("a")
        assert "refused access to repository:a:pull (401)" in err.value.one_line()
        assert "docker login" in err.value.one_line()
        assert len(server.token_requests) == 1 and clock.sleeps == []
    finally:
        server.shutdown()
        server.server_close()
