"""The registry client's HTTP/1.1, on the standard library (http.client, ssl, socket): importing
requests cost every command about 80 ms, more than a cache hit's registry round trips.

A `Session` does single exchanges: redirects, credentials, retries and judging statuses are
composer.oci.transport's. What it does itself:

- keeps connections alive per origin (and proxy), checking before reuse that the server has not
  closed an idle one; a response whose body was not read to the end closes its connection;
- verifies TLS always, with the CA bundle requests would use (REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE,
  certifi, else the system's roots) or the one given; the host name is checked;
- takes proxies from the environment as requests does: <scheme>_proxy, else all_proxy (lower
  case first), and no_proxy ("*", hosts, domains and their subdomains, IPs, CIDR ranges, each
  optionally with :port). Unlike requests, loopback never goes through a proxy. Only
  http:// proxies; https goes through them with CONNECT. ~/.netrc is never read;
- sends no Accept-Encoding and decodes no Content-Encoding: digests are over the exact bytes.

Every failure is one of the exceptions below, the original as its cause.
"""

from __future__ import annotations

import base64
import collections.abc
import http.client
import ipaddress
import json
import logging
import os
import select
import socket
import ssl
import threading
from typing import Dict, Iterator, List, Optional, Tuple
from urllib.parse import unquote, urlencode, urlsplit

from composer.model.refs import is_loopback
from composer.version import __version__

log = logging.getLogger("composer.http")

USER_AGENT = f"composer/{__version__}"
MAX_IDLE = 4  # idle connections kept per origin: one is the rule, a few when streams overlap
_NO_BODY_METHODS = ("GET", "HEAD")  # the others get Content-Length: 0 without a body, as requests sends


class HTTPError(Exception):
    """An exchange failed, or could not be made."""


class TLSError(HTTPError):
    """The TLS handshake failed: an untrusted certificate, another host's name, no common protocol,
    or CA certificates that cannot be loaded."""


class ConnectionFailed(HTTPError):
    """No usable answer: refused, reset, unknown host, closed early, a body cut short or badly framed."""


class TimedOut(HTTPError):
    """No connection, or no data, within the timeout."""


class Headers(collections.abc.Mapping):
    """Response headers: case-insensitive, a repeated header joined with ", "."""

    def __init__(self, pairs=()):
        self._items: Dict[str, Tuple[str, str]] = {}
        for name, value in pairs:
            key = name.lower()
            if key in self._items:
                name, value = self._items[key][0], f"{self._items[key][1]}, {value}"
            self._items[key] = (name, value)

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()][1]

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({dict(self.items())!r})"


# -- TLS -----------------------------------------------------------------------------------
_contexts: Dict[str, ssl.SSLContext] = {}
_contexts_lock = threading.Lock()  # clones of a session run in other threads


def ca_location(verify: object = True) -> str:
    """The CA file or directory verify names, resolved as requests does for True; "" for the
    system's default roots."""
    if verify is True or verify is None:
        env = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if env:
            return env
        try:
            import certifi
        except ImportError:
            return ""
        return certifi.where()
    if verify is False:
        raise ValueError("TLS verification cannot be turned off")
    return os.fspath(verify)


def tls_context(verify: object = True) -> ssl.SSLContext:
    """The verifying context for verify, made once per CA location (loading a bundle takes ms)."""
    where = ca_location(verify)
    with _contexts_lock:
        ctx = _contexts.get(where)
        if ctx is None:
            try:
                if not where:
                    ctx = ssl.create_default_context()
                elif os.path.isdir(where):
                    ctx = ssl.create_default_context(capath=where)
                else:
                    ctx = ssl.create_default_context(cafile=where)
            except OSError as exc:  # ssl.SSLError included
                raise TLSError(f"cannot load the CA certificates in {where}: {exc}") from exc
            _contexts[where] = ctx
    return ctx


# -- proxies -------------------------------------------------------------------------------
def _env(name: str) -> str:
    return os.environ.get(name.lower()) or os.environ.get(name.upper()) or ""


def _port_matches(entry: str, port: int) -> Tuple[str, bool]:
    """(entry without its :port, whether that port, if any, is port)."""
    name, sep, tail = entry.rpartition(":")
    if sep and tail.isdigit() and name and not name.endswith(":"):  # not an IPv6 address
        return name.strip("[]"), int(tail) == port
    return entry.strip("[]"), True


def bypasses_proxy(host: str, port: int, no_proxy: str) -> bool:
    """Whether no_proxy (comma-separated) exempts host:port from the proxy."""
    host = host.lower().strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if entry == "*":
            return True
        if not entry:
            continue
        if ip is not None:
            try:
                if ip in ipaddress.ip_network(entry.strip("[]"), strict=False):
                    return True
                continue
            except ValueError:
                pass
        name, port_ok = _port_matches(entry, port)
        name = name.lstrip("*").lstrip(".")
        if port_ok and name and (host == name or host.endswith("." + name)):
            return True
    return False


def proxy_for(scheme: str, host: str, port: int) -> Optional[str]:
    """The proxy URL the environment names for scheme://host:port, or None. Loopback never goes
    through a proxy (requests would send it there): composer sends credentials over plain HTTP
    to loopback only because such traffic never leaves the machine."""
    proxy = _env(f"{scheme}_proxy") or _env("all_proxy")
    if not proxy or is_loopback(host) or bypasses_proxy(host, port, _env("no_proxy")):
        return None
    return proxy


def _parse_proxy(proxy: str) -> Tuple[str, int, Optional[str]]:
    """(host, port, Proxy-Authorization value or None) of an http:// proxy URL."""
    parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    try:
        port = parts.port or 80
    except ValueError as exc:
        raise HTTPError(f"proxy {parts.hostname} has an invalid port") from exc
    if parts.scheme.lower() != "http" or not parts.hostname:
        raise HTTPError(f"proxy {parts.scheme}://{parts.hostname} is not supported: only http:// proxies are")
    auth = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        auth = "Basic " + base64.b64encode(pair.encode()).decode()
    return parts.hostname, port, auth


# -- failures ------------------------------------------------------------------------------
def _mapped(exc: BaseException, where: str, handshake: bool = False) -> Optional[HTTPError]:
    """Our exception for one raised by socket, ssl or http.client; None for anything else."""
    if isinstance(exc, HTTPError):
        return exc
    if isinstance(exc, (socket.timeout, TimeoutError)):
        text = str(exc)
        return TimedOut(f"{where}: {text}" if "timed out" in text else f"{where}: timed out")
    if isinstance(exc, ssl.SSLError) and (handshake or isinstance(exc, ssl.SSLCertVerificationError)):
        return TLSError(f"{where}: {exc}")
    if isinstance(exc, (OSError, http.client.HTTPException)):  # ssl errors after the handshake too
        return ConnectionFailed(f"{where}: {exc or type(exc).__name__}")
    return None


def _guarded(conn: http.client.HTTPConnection, where: str, call, *args):
    """call(*args) on conn, its network failures mapped (and conn closed)."""
    try:
        return call(*args)
    except Exception as exc:
        conn.close()
        mapped = _mapped(exc, where)
        if mapped is None:
            raise
        raise mapped from exc


def _timeouts(timeout) -> Tuple[Optional[float], Optional[float]]:
    if isinstance(timeout, tuple):
        return timeout[0], timeout[1]
    return timeout, timeout


def _alive(conn: http.client.HTTPConnection) -> bool:
    """Whether an idle connection can carry another request: readable now means the server
    closed it (EOF) or sent something unasked, either way it is done."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return not poller.poll(0)
        readable, _, _ = select.select([sock], [], [], 0)
        return not readable
    except (OSError, ValueError):
        return False


def _body(method: str, data) -> Tuple[object, Optional[int], Optional[str]]:
    """(body to send, its length or None for chunked, the Content-Type it implies)."""
    if data is None:
        return None, (None if method in _NO_BODY_METHODS else 0), None
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data)
        return data, len(data), None
    if isinstance(data, str):
        data = data.encode()
        return data, len(data), None
    if isinstance(data, collections.abc.Mapping):
        form = urlencode(list(data.items()), doseq=True).encode()
        return form, len(form), "application/x-www-form-urlencoded"
    if hasattr(data, "__iter__") and hasattr(data, "__len__") and not isinstance(data, (list, tuple)):
        return data, len(data), None  # Pieces, a streamed file: len() is its size in bytes
    if hasattr(data, "__iter__"):
        return data, None, None
    raise TypeError(f"cannot send a {type(data).__name__} as a request body")


class Response:
    """One answer. Its body is read at once unless the request was stream=True; then read it
    with iter_content or content, and close it (or use `with`): a body left unread costs the
    connection."""

    def __init__(self, session: "Session", key: tuple, conn: http.client.HTTPConnection,
                 raw: http.client.HTTPResponse, url: str, where: str):
        self.status_code = raw.status
        self.reason = raw.reason
        self.headers = Headers(raw.getheaders())
        self.url = url
        self._session, self._key, self._conn, self._raw, self._where = session, key, conn, raw, where
        self._expected = raw.length  # None: chunked or until the server closes
        self._received = 0
        self._content: Optional[bytes] = None
        self._consumed = False
        if raw.length == 0:  # HEAD, 204, 304, Content-Length: 0: done already
            self._read(None)

    def __repr__(self) -> str:
        return f"<Response [{self.status_code}]>"

    def __enter__(self) -> "Response":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _read(self, amount: Optional[int]) -> bytes:
        if self._conn is None and self._raw.isclosed():
            return b""
        try:
            block = self._raw.read(amount)
        except Exception as exc:
            self._discard()
            mapped = _mapped(exc, self._where)
            if mapped is None:
                raise
            raise mapped from exc
        except BaseException:
            self._discard()
            raise
        self._received += len(block)
        if not block or self._raw.isclosed():
            self._finish()
        return block

    def _finish(self) -> None:
        """The body ended: the connection goes back to the session, unless the body was cut short."""
        if self._conn is None:
            return
        if self._expected is not None and self._received < self._expected:
            self._discard()
            raise ConnectionFailed(f"{self._where}: the body ended after {self._received} of {self._expected} bytes")
        conn, self._conn = self._conn, None
        self._session.checkin(self._key, conn)

    def _discard(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._raw.close()

    def iter_content(self, chunk_size: int = 1 << 16) -> Iterator[bytes]:
        """The body in blocks of at most chunk_size bytes, as they arrive (as sent: not decoded)."""
        if self._content is not None:
            for i in range(0, len(self._content), chunk_size):
                yield self._content[i : i + chunk_size]
            return
        if self._consumed:
            raise RuntimeError("the body of this response was already read")
        self._consumed = True
        while True:
            block = self._read(chunk_size)
            if not block:
                return
            yield block

    @property
    def content(self) -> bytes:
        """The whole body."""
        if self._content is None:
            if self._consumed:
                raise RuntimeError("the body of this response was already read")
            self._consumed = True
            parts = []
            while True:
                block = self._read(None)
                if not block:
                    break
                parts.append(block)
            self._content = b"".join(parts)
        return self._content

    def json(self):
        return json.loads(self.content)

    def close(self) -> None:
        """Done with it: a connection whose body was read to the end is kept, any other closed."""
        if self._conn is None:
            return
        if self._raw.isclosed() and (self._expected is None or self._received >= self._expected):
            conn, self._conn = self._conn, None
            self._session.checkin(self._key, conn)
        else:
            self._discard()


class Session:
    """Keep-alive connections for a run of exchanges. Not thread-safe: one per thread."""

    def __init__(self):
        self._idle: Dict[tuple, List[http.client.HTTPConnection]] = {}

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

    def checkin(self, key: tuple, conn: http.client.HTTPConnection) -> None:
        """Keep a connection whose last exchange is complete, for the next request to key."""
        idle = self._idle.setdefault(key, [])
        if conn.sock is None or len(idle) >= MAX_IDLE:
            conn.close()
        else:
            idle.append(conn)

    def _checkout(self, key: tuple, where: str) -> Optional[http.client.HTTPConnection]:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if _alive(conn):
                return conn
            log.debug("%s closed an idle connection", where)
            conn.close()
        return None

    def request(self, method: str, url: str, *, headers: Optional[dict] = None, data=None, params=None,
                stream: bool = False, timeout=None, verify: object = True, allow_redirects: bool = False) -> Response:
        """One exchange: method url (params added to its query), headers, the body data (bytes,
        str, a dict sent as a form, a sized iterable of bytes sent as it iterates with Content-Length,
        any other iterable sent chunked). timeout is (connect, read) seconds or one number for both;
        verify True or the path of a CA bundle. Redirects are the caller's to follow."""
        if allow_redirects:
            raise ValueError("redirects are followed by the caller, one hop at a time")
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        host = parts.hostname
        if scheme not in ("http", "https") or not host:
            raise HTTPError(f"cannot request {url!r}: not an http(s) URL")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError as exc:
            raise HTTPError(f"cannot request {url!r}: invalid port") from exc
        netloc = parts.netloc.rpartition("@")[2]  # credentials in a URL are never sent
        query = parts.query
        if params:
            extra = urlencode(list(params.items()) if isinstance(params, collections.abc.Mapping) else list(params))
            query = f"{query}&{extra}" if query else extra
        target = (parts.path or "/") + (f"?{query}" if query else "")
        full_url = f"{scheme}://{netloc}{target}"
        where = f"{scheme}://{netloc}"

        body, length, content_type = _body(method, data)
        fields: Dict[str, Tuple[str, str]] = {"user-agent": ("User-Agent", USER_AGENT), "accept": ("Accept", "*/*")}
        if content_type:
            fields["content-type"] = ("Content-Type", content_type)
        for name, value in (headers or {}).items():
            fields[name.lower()] = (name, str(value))
        fields.pop("content-length", None)
        fields.pop("transfer-encoding", None)
        if length is not None:
            fields["content-length"] = ("Content-Length", str(length))
        elif body is not None:
            fields["transfer-encoding"] = ("Transfer-Encoding", "chunked")

        proxy = proxy_for(scheme, host, port)
        proxy_addr = _parse_proxy(proxy) if proxy else None
        if proxy_addr and scheme == "http":
            target = full_url  # a plain-HTTP proxy is sent the absolute URL
            if proxy_addr[2]:
                fields["proxy-authorization"] = ("Proxy-Authorization", proxy_addr[2])
        ctx = tls_context(verify) if scheme == "https" else None
        key = (scheme, host, port, proxy, id(ctx))
        connect_timeout, read_timeout = _timeouts(timeout)

        conn = self._checkout(key, where)
        if conn is None:
            conn = self._connect(scheme, host, port, proxy_addr, ctx, connect_timeout, where)
        try:
            conn.sock.settimeout(read_timeout)
            _guarded(conn, where, self._send_head, conn, method, target, fields,
                     body if body is None or isinstance(body, bytes) else None)
            if body is not None and not isinstance(body, bytes):
                self._send_body(conn, where, body, length)
            raw = _guarded(conn, where, conn.getresponse)
        except BaseException:
            conn.close()  # the body's own failure (a file that cannot be read) passes as it is
            raise
        log.debug('%s "%s %s HTTP/%s" %s %s', where, method, target, "1.0" if raw.version == 10 else "1.1",
                  raw.status, raw.length)
        resp = Response(self, key, conn, raw, full_url, where)
        if not stream:
            resp.content  # noqa: B018 - read now, so the connection goes back to the session
        return resp

    @staticmethod
    def _send_head(conn: http.client.HTTPConnection, method: str, target: str, fields: dict, body: Optional[bytes]) -> None:
        conn.putrequest(method, target, skip_host="host" in fields, skip_accept_encoding=True)
        for name, value in fields.values():
            conn.putheader(name, value)
        conn.endheaders(body)  # a bytes body goes in the same write as the headers

    @staticmethod
    def _send_body(conn: http.client.HTTPConnection, where: str, body, length: Optional[int]) -> None:
        if length is None:
            for piece in body:
                if piece:
                    _guarded(conn, where, conn.send, b"%X\r\n%s\r\n" % (len(piece), piece))
            _guarded(conn, where, conn.send, b"0\r\n\r\n")
            return
        sent = 0
        for piece in body:  # one write per piece: never joined
            if piece:
                _guarded(conn, where, conn.send, piece)
                sent += len(piece)
        if sent != length:
            raise HTTPError(f"the request body announced {length} bytes but gave {sent}")

    @staticmethod
    def _connect(scheme: str, host: str, port: int, proxy: Optional[Tuple[str, int, Optional[str]]],
                 ctx: Optional[ssl.SSLContext], timeout: Optional[float], where: str) -> http.client.HTTPConnection:
        """A new connection, TLS handshake (through the proxy's tunnel) done, within timeout."""
        to_host, to_port = (proxy[0], proxy[1]) if proxy else (host, port)
        if scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(to_host, to_port, timeout=timeout, context=ctx)
            if proxy:
                conn.set_tunnel(host, port, headers={"Proxy-Authorization": proxy[2]} if proxy[2] else None)
        else:
            conn = http.client.HTTPConnection(to_host, to_port, timeout=timeout)
        log.debug("new connection to %s%s", where, f" through proxy {to_host}:{to_port}" if proxy else "")
        try:
            conn.connect()  # TCP_NODELAY is http.client's: headers and body may be separate writes
        except Exception as exc:
            conn.close()
            mapped = _mapped(exc, where, handshake=True)
            if mapped is None:
                raise
            raise mapped from exc
        return conn
