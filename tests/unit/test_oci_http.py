"""composer/oci/http.py, the registry client's HTTP layer, against real servers on 127.0.0.1: an
echo server of the test's own (http.server), the in-memory registry of tests/fakes, a TLS server
with a CA made here, and a small forwarding proxy (absolute URLs and CONNECT)."""

from __future__ import annotations

import datetime
import gzip
import hashlib
import http.client
import http.server
import ipaddress
import json
import logging
import select
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest

from composer.oci import http as http_mod
from composer.oci.client import OCI_MANIFEST, Pieces, Registry
from composer.oci.http import ConnectionFailed, HTTPError, Session, TimedOut, TLSError, bypasses_proxy
from tests.fakes import registry_fixture
from tests.fakes.registry import request_body

fake_registry = pytest.fixture(registry_fixture)
ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = (5.0, 5.0)
PROXY_VARS = [v for n in ("http_proxy", "https_proxy", "all_proxy", "no_proxy") for v in (n, n.upper())]


@pytest.fixture(autouse=True)
def no_proxy_environment(monkeypatch):
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


# -- servers -------------------------------------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    """Answers by path: /echo (what it received, as JSON), /big?n=, /redirect/<status>, /slow?s=,
    /close-after (answers, then closes without saying so), /truncated, /badchunk, /chunked,
    /gzip, /nocontent."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _body(self) -> bytes:
        return request_body(self)

    def _reply(self, status: int, body: bytes = b"", headers=()) -> None:
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        if status not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and status not in (204, 304):
            self.wfile.write(body)

    def _serve(self) -> None:
        body = self._body()
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query))
        self.server.seen.append((self.command, self.path, self.client_address[1]))
        if url.path == "/echo":
            doc = {"method": self.command, "path": self.path, "headers": [[k, v] for k, v in self.headers.items()],
                   "body": body.decode("latin-1"), "port": self.client_address[1]}
            self._reply(200, json.dumps(doc).encode(), [("Content-Type", "application/json")])
        elif url.path == "/big":
            self._reply(200, b"x" * int(query["n"]))
        elif url.path.startswith("/redirect/"):
            self._reply(int(url.path.rsplit("/", 1)[1]), b"moved", [("Location", "/echo")])
        elif url.path == "/slow":
            time.sleep(float(query.get("s", "1")))
            self._reply(200, b"late")
        elif url.path == "/close-after":
            self._reply(200, b"bye")
            self.close_connection = True
        elif url.path == "/truncated":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"only ten b")
            self.close_connection = True
        elif url.path == "/badchunk":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"zz\r\nabc\r\n")
            self.close_connection = True
        elif url.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (b"one ", b"two ", b"three"):
                self.wfile.write(b"%X\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        elif url.path == "/gzip":
            self._reply(200, gzip.compress(b"compressed by the server"), [("Content-Encoding", "gzip")])
        elif url.path == "/nocontent":
            self._reply(204)
        else:
            self._reply(404, b"no such path")

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _serve


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, context: ssl.SSLContext = None):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen = []  # (method, target, client port)
        if context is not None:
            self.socket = context.wrap_socket(self.socket, server_side=True)
        self.scheme = "https" if context else "http"
        self.base = f"{self.scheme}://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, args=(0.01,), daemon=True).start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


@pytest.fixture
def server():
    srv = _Server()
    yield srv
    srv.stop()


def _certificates(tmp_path: Path):
    """A CA and a certificate it signs for 127.0.0.1: (ca path, cert path, key path)."""
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "composer test CA")])

    def builder(subject, public_key):
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(public_key)
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1)))

    ca = (builder(ca_name, ca_key.public_key())
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    leaf = (builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]), key.public_key())
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return tuple(str(p) for p in paths)


@pytest.fixture
def tls_server(tmp_path):
    """(HTTPS server for 127.0.0.1, path of the CA that signed its certificate)."""
    ca, cert, key = _certificates(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv = _Server(ctx)
    yield srv, ca
    srv.stop()


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    """Forwards absolute-URL requests and tunnels CONNECT; records (method, target, Proxy-Authorization)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_CONNECT(self):
        self.server.seen.append(("CONNECT", self.path, self.headers.get("Proxy-Authorization")))
        host, _, port = self.path.rpartition(":")
        upstream = socket.create_connection((host, int(port)))
        self.send_response(200, "Connection established")
        self.end_headers()
        ends = [self.connection, upstream]
        try:
            while True:
                readable, _, _ = select.select(ends, [], [], 5)
                if not readable:
                    break
                for end in readable:
                    data = end.recv(65536)
                    if not data:
                        return
                    (upstream if end is self.connection else self.connection).sendall(data)
        finally:
            upstream.close()
            self.close_connection = True

    def _forward(self):
        self.server.seen.append((self.command, self.path, self.headers.get("Proxy-Authorization")))
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-authorization", "connection")}
        upstream = http.client.HTTPConnection(url.hostname, url.port, timeout=5)
        upstream.request(self.command, url.path + (f"?{url.query}" if url.query else ""), body=body, headers=headers)
        answer = upstream.getresponse()
        data = answer.read()
        upstream.close()
        self.send_response(answer.status)
        for k, v in answer.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_HEAD = do_POST = do_PUT = _forward


@pytest.fixture
def proxy():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ProxyHandler)
    srv.daemon_threads = True
    srv.seen = []
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    threading.Thread(target=srv.serve_forever, args=(0.01,), daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def echo(session: Session, url: str, **kw) -> dict:
    resp = session.request(kw.pop("method", "GET"), url, timeout=TIMEOUT, **kw)
    assert resp.status_code == 200, resp.content
    doc = resp.json()
    doc["headers"] = {k.lower(): v for k, v in doc["headers"]}
    return doc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- connections ---------------------------------------------------------------------------
def test_several_requests_share_one_connection(server):
    s = Session()
    ports = {echo(s, f"{server.base}/echo")["port"] for _ in range(4)}
    ports.add(echo(s, f"{server.base}/echo", method="PUT", data=b"body")["port"])
    head = s.request("HEAD", f"{server.base}/big?n=100", timeout=TIMEOUT)  # no body, whatever its length says
    assert head.status_code == 200 and head.headers["Content-Length"] == "100" and head.content == b""
    assert s.request("DELETE", f"{server.base}/nocontent", timeout=TIMEOUT).status_code == 204
    ports.add(echo(s, f"{server.base}/echo")["port"])
    assert len(ports) == 1
    assert len({port for _, _, port in server.seen}) == 1


def test_the_registry_client_uses_one_connection(fake_registry, monkeypatch):
    connects = []
    original = http.client.HTTPConnection.connect
    monkeypatch.setattr(http.client.HTTPConnection, "connect", lambda self: (connects.append(1), original(self))[1])
    reg = Registry(fake_registry.host)
    config = reg.push_blob("envs", b"{}", "application/vnd.oci.image.config.v1+json")
    layer = reg.push_blob("envs", b"layer bytes", "application/vnd.oci.image.layer.v1.tar")
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.to_dict(),
                           "layers": [layer.to_dict()]}).encode()
    reg.put_manifest("envs", "v1", manifest, OCI_MANIFEST)
    assert reg.get_manifest("envs", "v1")[0] == manifest
    assert reg.tags("envs") == ["v1"]
    assert len(fake_registry.requests) >= 5 and len(connects) == 1


def test_an_idle_connection_the_server_closed_is_replaced(server, caplog):
    s = Session()
    first = s.request("GET", f"{server.base}/close-after", timeout=TIMEOUT)  # no "Connection: close" said
    assert first.content == b"bye"
    time.sleep(0.3)  # the server's FIN arrives
    with caplog.at_level(logging.DEBUG, logger="composer.http"):
        doc = echo(s, f"{server.base}/echo")
    assert doc["port"] != server.seen[0][2]
    assert any("closed an idle connection" in r.getMessage() for r in caplog.records)


def test_a_body_left_unread_costs_its_connection_only(server):
    s = Session()
    resp = s.request("GET", f"{server.base}/big?n={5 << 20}", timeout=TIMEOUT, stream=True)
    assert len(next(resp.iter_content(1 << 16))) == 1 << 16
    resp.close()
    after = echo(s, f"{server.base}/echo")
    assert after["port"] != server.seen[0][2]
    with s.request("GET", f"{server.base}/big?n=100", timeout=TIMEOUT, stream=True):
        pass  # a small body already buffered with the headers: unread all the same
    after = echo(s, f"{server.base}/echo")
    assert after["port"] != server.seen[2][2]
    with s.request("GET", f"{server.base}/big?n={1 << 20}", timeout=TIMEOUT, stream=True) as whole:
        assert sum(len(b) for b in whole.iter_content(1 << 16)) == 1 << 20
    assert echo(s, f"{server.base}/echo")["port"] == after["port"]  # read to the end: kept


def test_a_chunked_answer_is_read_whole(server):
    s = Session()
    assert s.request("GET", f"{server.base}/chunked", timeout=TIMEOUT).content == b"one two three"
    streamed = s.request("GET", f"{server.base}/chunked", timeout=TIMEOUT, stream=True)
    assert b"".join(streamed.iter_content(3)) == b"one two three"
    assert len({port for _, _, port in server.seen}) == 1


# -- request bodies, queries, headers ------------------------------------------------------
def test_a_generator_body_is_sent_chunked(server):
    doc = echo(Session(), f"{server.base}/echo", method="PATCH", data=(p for p in (b"a" * 10, b"", b"b" * 70000)))
    assert doc["headers"]["transfer-encoding"] == "chunked" and "content-length" not in doc["headers"]
    assert doc["body"] == "a" * 10 + "b" * 70000


def test_pieces_go_with_content_length_one_write_each(server, monkeypatch):
    sent = []
    original = http.client.HTTPConnection.send
    monkeypatch.setattr(http.client.HTTPConnection, "send", lambda self, data: (sent.append(data), original(self, data))[1])
    parts = [b"first piece ", b"second piece ", b"x" * 100000]
    doc = echo(Session(), f"{server.base}/echo", method="PUT", data=Pieces(parts),
               headers={"Content-Length": "1", "Content-Type": "application/octet-stream"})
    assert doc["headers"]["content-length"] == str(sum(map(len, parts)))  # the body's, not the caller's
    assert "transfer-encoding" not in doc["headers"]
    assert doc["body"].encode("latin-1") == b"".join(parts)
    assert [d for d in sent if any(d is p for p in parts)] == parts  # never joined


def test_a_form_body_and_query_params(server):
    form = {"grant_type": "refresh_token", "refresh_token": "a/b+c d", "scope": "repository:x:pull,push"}
    params = [("service", "reg.example"), ("scope", "repository:a:pull"), ("scope", "repository:b:push,pull")]
    doc = echo(Session(), f"{server.base}/echo?first=1", method="POST", data=form, params=params)
    assert doc["headers"]["content-type"] == "application/x-www-form-urlencoded"
    assert dict(parse_qsl(doc["body"])) == form
    assert parse_qsl(urlsplit(doc["path"]).query) == [("first", "1")] + params


def test_headers_sent_and_received(server):
    s = Session()
    doc = echo(s, f"{server.base}/echo", headers={"accept": "application/json", "X-Extra": "1"})
    sent = doc["headers"]
    assert "accept-encoding" not in sent  # digests are over the bytes as stored
    assert sent["accept"] == "application/json" and sent["x-extra"] == "1" and sent["user-agent"].startswith("composer/")
    assert "content-length" not in sent  # a GET without a body says nothing about one
    assert echo(s, f"{server.base}/echo", method="POST")["headers"]["content-length"] == "0"
    resp = s.request("GET", f"{server.base}/gzip", timeout=TIMEOUT)
    assert resp.headers.get("content-encoding") == "gzip" and gzip.decompress(resp.content) == b"compressed by the server"
    assert "CONTENT-LENGTH" in resp.headers and resp.headers.get("X-Missing") is None
    with pytest.raises(KeyError):
        resp.headers["X-Missing"]  # noqa: B018
    resp.composer_error = None  # the transport caches what it parsed on the response
    assert resp.url == f"{server.base}/gzip"


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirects_are_returned_not_followed(server, status):
    resp = Session().request("POST", f"{server.base}/redirect/{status}", data=b"x", timeout=TIMEOUT)
    assert resp.status_code == status and resp.headers["Location"] == "/echo"
    assert [m for m, _, _ in server.seen] == ["POST"]


# -- failures ------------------------------------------------------------------------------
def test_a_slow_answer_times_out_and_the_session_goes_on(server):
    s = Session()
    with pytest.raises(TimedOut, match="timed out"):
        s.request("GET", f"{server.base}/slow?s=1.5", timeout=(5.0, 0.3))
    assert echo(s, f"{server.base}/echo")["method"] == "GET"


def test_a_refused_connection(server):
    with pytest.raises(ConnectionFailed, match="Connection refused"):
        Session().request("GET", f"http://127.0.0.1:{free_port()}/v2/", timeout=TIMEOUT)


@pytest.mark.parametrize("stream", [False, True])
def test_a_body_cut_short_or_badly_framed_is_a_connection_failure(server, stream):
    s = Session()
    for path in ("/truncated", "/badchunk"):
        with pytest.raises(ConnectionFailed):
            resp = s.request("GET", f"{server.base}{path}", timeout=TIMEOUT, stream=stream)
            b"".join(resp.iter_content(1 << 16))
    assert echo(s, f"{server.base}/echo")["method"] == "GET"


def test_not_an_http_url():
    with pytest.raises(HTTPError):
        Session().request("GET", "ftp://127.0.0.1/x", timeout=TIMEOUT)


# -- TLS -----------------------------------------------------------------------------------
def test_https_is_verified_with_the_ca_given(tls_server, monkeypatch):
    srv, ca = tls_server
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    s = Session()
    assert echo(s, f"{srv.base}/echo", verify=ca)["method"] == "GET"
    assert echo(s, f"{srv.base}/echo", verify=ca)["port"] == srv.seen[0][2]  # kept alive over TLS too
    with pytest.raises(TLSError, match="CERTIFICATE_VERIFY_FAILED"):
        Session().request("GET", f"{srv.base}/echo", timeout=TIMEOUT)  # the default roots do not know our CA
    port = srv.server_address[1]
    with pytest.raises(TLSError, match="CERTIFICATE_VERIFY_FAILED"):  # right CA, another name
        Session().request("GET", f"https://localhost:{port}/echo", timeout=TIMEOUT, verify=ca)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca)  # what requests would trust by default, we trust
    assert echo(Session(), f"{srv.base}/echo")["method"] == "GET"


def test_tls_contexts_are_made_once(tmp_path, monkeypatch):
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    assert http_mod.tls_context(True) is http_mod.tls_context(True)
    with pytest.raises(TLSError, match="cannot load the CA certificates"):
        http_mod.tls_context(str(tmp_path / "missing.pem"))
    with pytest.raises(ValueError):
        http_mod.tls_context(False)


# -- proxies -------------------------------------------------------------------------------
@pytest.fixture
def proxied_loopback(monkeypatch):
    """The test servers are on loopback, which never goes through a proxy: here it does, as any
    other host would."""
    monkeypatch.setattr(http_mod, "is_loopback", lambda host: False)


def test_loopback_never_goes_through_a_proxy(server, proxy, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("ALL_PROXY", proxy.url)
    assert echo(Session(), f"{server.base}/echo")["path"] == "/echo"
    assert proxy.seen == []  # credentials go to loopback over plain HTTP only because it stays here


def test_http_proxy_from_the_environment_and_no_proxy(server, proxy, monkeypatch, proxied_loopback):
    monkeypatch.setenv("HTTP_PROXY", proxy.url.replace("http://", "http://user:p%40ss@"))
    doc = echo(Session(), f"{server.base}/echo?q=1")
    assert doc["path"] == "/echo?q=1" and doc["headers"]["host"] == server.base.split("//")[1]
    expected_auth = "Basic " + __import__("base64").b64encode(b"user:p@ss").decode()
    assert proxy.seen == [("GET", f"{server.base}/echo?q=1", expected_auth)]  # the absolute URL
    monkeypatch.setenv("no_proxy", "example.com, 127.0.0.1")
    echo(Session(), f"{server.base}/echo")
    assert len(proxy.seen) == 1


def test_https_goes_through_the_proxy_with_connect(tls_server, proxy, monkeypatch, proxied_loopback):
    srv, ca = tls_server
    monkeypatch.setenv("https_proxy", proxy.url.replace("http://", "http://u:pw@"))
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:1")  # not for https
    s = Session()
    assert echo(s, f"{srv.base}/echo", verify=ca)["path"] == "/echo"
    assert echo(s, f"{srv.base}/echo", verify=ca)["path"] == "/echo"  # the tunnel is kept alive
    expected_auth = "Basic " + __import__("base64").b64encode(b"u:pw").decode()
    assert proxy.seen == [("CONNECT", srv.base.split("//")[1], expected_auth)]
    monkeypatch.setenv("NO_PROXY", "*")
    echo(Session(), f"{srv.base}/echo", verify=ca)
    assert len(proxy.seen) == 1


def test_all_proxy_is_the_fallback(server, proxy, monkeypatch, proxied_loopback):
    monkeypatch.setenv("ALL_PROXY", proxy.url)
    echo(Session(), f"{server.base}/echo")
    assert [m for m, _, _ in proxy.seen] == ["GET"]


@pytest.mark.parametrize("host, port, no_proxy, bypass", [
    ("registry.example.com", 443, "example.com", True),
    ("example.com", 443, ".example.com", True),
    ("registry.example.com", 443, "*.example.com", True),
    ("notexample.com", 443, "example.com", False),
    ("registry.example.com", 443, "example.com:5000", False),
    ("registry.example.com", 5000, "example.com:5000", True),
    ("10.1.2.3", 80, "10.0.0.0/8", True),
    ("10.1.2.3", 80, "10.1.2.4", False),
    ("127.0.0.1", 5000, "", False),  # no_proxy alone (proxy_for exempts loopback before asking it)
    ("127.0.0.1", 5000, "localhost,127.0.0.1", True),
    ("::1", 5000, "::1", True),
    ("anything", 1, " * ", True),
    ("Registry.Example.COM", 443, "EXAMPLE.com", True),
])
def test_no_proxy_patterns(host, port, no_proxy, bypass):
    assert bypasses_proxy(host, port, no_proxy) is bypass


# -- logging and imports -------------------------------------------------------------------
def test_each_request_is_logged_as_urllib3_did(server, caplog):
    with caplog.at_level(logging.DEBUG, logger="composer.http"):
        Session().request("GET", f"{server.base}/big?n=626", timeout=TIMEOUT)
    assert f'{server.base} "GET /big?n=626 HTTP/1.1" 200 626' in [r.getMessage() for r in caplog.records]


def test_importing_the_registry_client_imports_neither_requests_nor_urllib3():
    code = ("import sys, composer.oci, composer.oci.client; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('requests', 'urllib3')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_blob_bytes_arrive_as_stored(fake_registry, tmp_path):
    data = bytes(range(256)) * 5000
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    fake_registry.put_blob("envs", data)
    assert Registry(fake_registry.host).download_blob("envs", digest, tmp_path / "blob") == len(data)
