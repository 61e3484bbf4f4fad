"""An in-memory OCI distribution registry for unit tests.

A real HTTP/1.1 server on 127.0.0.1 (ephemeral port, background thread), storage in
dicts under one lock. It imitates the CNCF distribution registry 2.8 (`docker-registry`,
what scripts/infra.sh runs), including where 2.8 departs from the letter of the OCI
distribution spec; each point below was checked against a real 2.8.2:

- Blob upload Locations are absolute (`absolute_locations=False`: paths) and carry an
  opaque `?_state=` that the next request on the session must send back unchanged; a
  missing or stale one is 404 BLOB_UPLOAD_INVALID. A PUT without `digest` is 400
  DIGEST_INVALID and the session stays; a PUT whose digest does not match is 400
  DIGEST_INVALID and ends the session. DELETE on a session cancels it (204).
- `POST .../blobs/uploads/?digest=` with a body is not taken as a monolithic upload: it
  opens a session (202) like any POST. `monolithic_post=True` gives the spec's 201.
- A mount needs both `mount` and `from`, and `from` must hold the blob; otherwise 202
  and a new session.
- An OCI manifest or index is 404 MANIFEST_UNKNOWN to a GET/HEAD whose Accept does
  not list its media type (no Accept at all included).
- A manifest PUT is refused with 400 MANIFEST_BLOB_UNKNOWN when the repository lacks
  its config or a layer, and (2.8 uses the same code, not MANIFEST_UNKNOWN) when an
  index names a manifest the repository lacks; 400 MANIFEST_INVALID when the
  Content-Type is not a manifest type or the body's mediaType disagrees with it.
  Blobs and manifests are per repository: a manifest is not a blob, and a blob pushed
  to one repository is not in another.
- DELETE of a manifest by tag is 400 DIGEST_INVALID (2.8 has no untag); by digest it
  is 202 and the manifest's tags go too. `delete_enabled=False` gives 405 UNSUPPORTED.
- tags/list is 404 NAME_UNKNOWN until the repository gets its first tag, and
  `"tags": null` once every tag is gone.
- There is no referrers API: `/v2/<name>/referrers/<digest>` is Go's plain-text
  "404 page not found". `referrers_api=True` implements it per OCI distribution 1.1
  (an index of the manifests whose subject is the digest, `artifactType` filter, and
  `OCI-Subject` on the PUT of a manifest that has a subject).

One deliberate difference: 2.8 ignores tags/list `n` and `last`; the fake paginates as
the spec says (`Link: <...>; rel="next"`). Without `n` everything comes in one page, unless
`page_size=N` (as GHCR, Harbor or Artifactory do): then tags/list, `_catalog` and the referrers
API answer at most N entries a page with a relative `Link` to the next.

Options for the client's edge cases: `basic_auth="user:password"` wants Basic credentials on
every request (401 with a challenge otherwise) and logs each request's Authorization headers
(`authorizations`); `location_host="localhost:PORT"` writes that host into absolute upload
Locations (another origin for the same server); `fail_next(..., headers={"Retry-After": "2"})`
adds headers to a fault; `put_raw_manifest` stores any bytes under a tag (oversized or
malformed manifests).
Not imitated: token auth, schema 1, rewriting Docker schema 2 manifests for old clients,
Content-Range checks (2.8 ignores them too), garbage collection.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import os
import re
import socket
import threading
import uuid
from typing import Dict, List, Optional, Set, Tuple
from urllib.parse import parse_qs, quote, urlsplit

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST) + INDEX_TYPES

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DIGEST = r"sha256:[a-f0-9]{64}"
_ROUTE = re.compile(
    rf"/v2/(?P<name>{_COMPONENT}(?:/{_COMPONENT})*)/(?:manifests/(?P<ref>[\w][\w.-]{{0,127}}|{_DIGEST})"
    rf"|blobs/uploads/(?P<upload>[\w-]*)|blobs/(?P<blob>{_DIGEST})|tags/(?P<tags>list)|referrers/(?P<subject>{_DIGEST}))"
)
_MESSAGES = {
    "BLOB_UNKNOWN": "blob unknown to registry", "BLOB_UPLOAD_INVALID": "blob upload invalid",
    "BLOB_UPLOAD_UNKNOWN": "blob upload unknown to registry", "DENIED": "requested access to the resource is denied",
    "DIGEST_INVALID": "provided digest did not match uploaded content", "MANIFEST_BLOB_UNKNOWN": "blob unknown to registry",
    "MANIFEST_INVALID": "manifest invalid", "MANIFEST_UNKNOWN": "manifest unknown",
    "NAME_UNKNOWN": "repository name not known to registry", "PAGINATION_NUMBER_INVALID": "invalid number of results requested",
    "TOOMANYREQUESTS": "too many requests", "UNAUTHORIZED": "authentication required",
    "UNSUPPORTED": "The operation is unsupported.", "UNKNOWN": "unknown error",
}
_FAULT_CODES = {401: "UNAUTHORIZED", 403: "DENIED", 429: "TOOMANYREQUESTS"}
_JSON = "application/json; charset=utf-8"

Reply = Tuple[int, Dict[str, str], bytes]
_PAGE_NOT_FOUND: Reply = (404, {"Content-Type": "text/plain; charset=utf-8"}, b"404 page not found\n")
_METHOD_NOT_ALLOWED: Reply = (405, {"Content-Type": "text/plain; charset=utf-8"}, b"405 method not allowed\n")


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _json(doc) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"  # as Go's encoder writes it


def _error(status: int, code: str, *details, message: Optional[str] = None) -> Reply:
    errors = [{"code": code, "message": message or _MESSAGES[code], **({"detail": d} if d is not None else {})}
              for d in (details or (None,))]
    return status, {"Content-Type": _JSON}, _json({"errors": errors})


class FakeRegistry:
    """The registry; `with FakeRegistry() as reg: Registry(reg.host)...`; `reg.url` is
    "http://" + host. Options: referrers_api, monolithic_post, delete_enabled,
    absolute_locations (see the module docstring).

    Inspection: tags(repo), manifest(repo, ref), blob(repo, digest), upload_sessions(),
    put_blob(repo, data), delete_manifest(repo, digest), delete_blob(repo, digest), and `requests`, every
    (method, request target with its query string) in arrival order.
    Faults: fail_next(method, path_contains, status, times).
    """

    def __init__(self, *, referrers_api: bool = False, monolithic_post: bool = False,
                 delete_enabled: bool = True, absolute_locations: bool = True, page_size: int = 0,
                 basic_auth: Optional[str] = None, location_host: Optional[str] = None):
        self.referrers_api, self.monolithic_post = referrers_api, monolithic_post
        self.delete_enabled, self.absolute_locations = delete_enabled, absolute_locations
        self.page_size, self.location_host = page_size, location_host
        self.basic_auth = "Basic " + base64.b64encode(basic_auth.encode()).decode() if basic_auth else None
        self.requests: List[Tuple[str, str]] = []
        self.authorizations: List[Tuple[str, str, str, List[str]]] = []  # method, target, Host, Authorization headers
        self._lock = threading.Lock()
        self._secret = os.urandom(16)
        self._blobs: Dict[str, bytes] = {}  # digest -> bytes, shared by all repositories
        self._links: Dict[str, Set[str]] = {}  # repo -> digests of the blobs it holds
        self._manifests: Dict[str, Dict[str, Tuple[bytes, str]]] = {}  # repo -> digest -> (bytes, media type)
        self._tags: Dict[str, Dict[str, str]] = {}  # repo -> tag -> digest; a repo is listed once tagged
        self._uploads: Dict[str, Tuple[str, bytearray]] = {}  # session id -> (repo, bytes so far)
        self._faults: List[dict] = []
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.registry = self
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        self.url = f"http://{self.host}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.01},
                                        name=f"fake-registry-{self.host}", daemon=True)
        self._thread.start()

    def __enter__(self) -> "FakeRegistry":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop serving and drop open keep-alive connections; idempotent."""
        if self._thread.is_alive():
            self._server.shutdown()
        for conn in list(self._server.connections):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()
        self._thread.join(timeout=5)

    # -- inspection and set-up ---------------------------------------------------------
    def tags(self, repo: str) -> List[str]:
        with self._lock:
            return sorted(self._tags.get(repo, {}))

    def manifest(self, repo: str, ref: str) -> Optional[bytes]:
        with self._lock:
            digest = ref if ref.startswith("sha256:") else self._tags.get(repo, {}).get(ref)
            stored = self._manifests.get(repo, {}).get(digest or "")
            return stored[0] if stored else None

    def blob(self, repo: str, digest: str) -> Optional[bytes]:
        with self._lock:
            return self._blobs[digest] if digest in self._links.get(repo, ()) else None

    def upload_sessions(self) -> int:
        """How many upload sessions are open (neither committed nor cancelled)."""
        with self._lock:
            return len(self._uploads)

    def put_blob(self, repo: str, data: bytes) -> str:
        """Store a blob in repo without HTTP; returns its digest."""
        digest = _digest(data)
        with self._lock:
            self._blobs[digest] = bytes(data)
            self._links.setdefault(repo, set()).add(digest)
        return digest

    def delete_blob(self, repo: str, digest: str) -> None:
        with self._lock:
            self._links.get(repo, set()).discard(digest)

    def delete_manifest(self, repo: str, digest: str) -> None:
        """Remove a manifest and every tag pointing at it, as a DELETE by digest does."""
        with self._lock:
            self._drop_manifest(repo, digest)

    def put_raw_manifest(self, repo: str, tag: str, body: bytes, media_type: str = OCI_MANIFEST) -> str:
        """Store any bytes as a manifest under tag, unchecked; returns their digest."""
        digest = _digest(body)
        with self._lock:
            self._manifests.setdefault(repo, {})[digest] = (bytes(body), media_type)
            self._tags.setdefault(repo, {})[tag] = digest
        return digest

    def fail_next(self, method: Optional[str] = None, path_contains: Optional[str] = None,
                  status: Optional[int] = 500, times: int = 1, headers: Optional[Dict[str, str]] = None) -> None:
        """Answer the next `times` requests matching method and a substring of the request
        target with `status` (a JSON errors body; the request has no effect). status=None
        closes the connection without answering, as a reset or a crash would."""
        with self._lock:
            self._faults.append({"method": method and method.upper(), "path": path_contains,
                                 "status": status, "left": times, "headers": headers or {}})

    # -- HTTP --------------------------------------------------------------------------
    def handle(self, method: str, target: str, headers, body: bytes) -> Optional[Reply]:
        """One request; None means drop the connection."""
        url = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        with self._lock:
            self.requests.append((method, target))
            self.authorizations.append((method, target, headers.get("Host") or "", headers.get_all("Authorization") or []))
            for fault in self._faults:
                if fault["left"] > 0 and fault["method"] in (None, method) and (fault["path"] or "") in target:
                    fault["left"] -= 1
                    status = fault["status"]
                    if status is None:
                        return None
                    code, extra, body = _error(status, _FAULT_CODES.get(status, "UNKNOWN"))
                    return code, {**extra, **fault["headers"]}, body
            if self.basic_auth and (headers.get_all("Authorization") or []) != [self.basic_auth]:
                return 401, {"Content-Type": _JSON, "WWW-Authenticate": 'Basic realm="fake"'}, \
                    _error(401, "UNAUTHORIZED")[2]
            if url.path in ("/v2", "/v2/"):
                return 200, {"Content-Type": _JSON}, b"{}"
            if url.path == "/v2/_catalog":
                names = sorted(n for n, tags in self._tags.items() if tags)
                page, link = self._page(names, query, "/v2/_catalog")
                return 200, {"Content-Type": _JSON, **link}, _json({"repositories": page})
            m = _ROUTE.fullmatch(url.path)
            if not m:
                return _PAGE_NOT_FOUND
            name, host = m["name"], headers.get("Host") or self.host
            if m["ref"]:
                return self._manifest_call(method, name, m["ref"], headers, body, host)
            if m["upload"] is not None:
                return self._upload_call(method, name, m["upload"], query, body, host)
            if m["blob"]:
                return self._blob_call(method, name, m["blob"])
            if m["tags"]:
                return self._tags_call(method, name, query) if method in ("GET", "HEAD") else _METHOD_NOT_ALLOWED
            return self._referrers_call(method, name, m["subject"], query)

    def _location(self, host: str, path: str) -> str:
        return f"http://{self.location_host or host}{path}" if self.absolute_locations else path

    def _page(self, items: list, query: Dict[str, str], path: str, key=lambda x: x) -> Tuple[list, Dict[str, str]]:
        """One page of a sorted list after `last`, at most `n` (or page_size) long, and its Link."""
        last = query.get("last", "")
        items = [i for i in items if key(i) > last]
        n = int(query["n"]) if query.get("n", "").isdigit() else self.page_size
        if 0 < n < len(items):
            return items[:n], {"Link": f'<{path}?n={n}&last={quote(key(items[n - 1]))}>; rel="next"'}
        return items, {}

    def _manifest_call(self, method: str, name: str, ref: str, headers, body: bytes, host: str) -> Reply:
        by_digest = ref.startswith("sha256:")
        if method in ("GET", "HEAD"):
            digest = ref if by_digest else self._tags.get(name, {}).get(ref, "")
            stored = self._manifests.get(name, {}).get(digest)
            if stored is None:
                return _error(404, "MANIFEST_UNKNOWN", None if by_digest else {"Tag": ref})
            data, media_type = stored
            accepted = {a.split(";")[0].strip() for h in headers.get_all("Accept") or () for a in h.split(",")}
            if media_type in (OCI_MANIFEST, OCI_INDEX) and media_type not in accepted:
                kind = "OCI manifest found, but accept header does not support OCI manifests" if media_type == OCI_MANIFEST \
                    else "OCI index found, but accept header does not support OCI indexes"
                return _error(404, "MANIFEST_UNKNOWN", message=kind)
            return 200, {"Content-Type": media_type, "Docker-Content-Digest": digest}, data
        if method == "PUT":
            return self._put_manifest(name, ref, headers, body, host)
        if method == "DELETE":
            if not self.delete_enabled:
                return _error(405, "UNSUPPORTED")
            if not by_digest:
                return _error(400, "DIGEST_INVALID")
            return (202, {}, b"") if self._drop_manifest(name, ref) else _error(404, "MANIFEST_UNKNOWN")
        return _METHOD_NOT_ALLOWED

    def _put_manifest(self, name: str, ref: str, headers, body: bytes, host: str) -> Reply:
        media_type = (headers.get("Content-Type") or "").split(";")[0].strip()
        try:
            doc = json.loads(body)
        except ValueError:
            return _error(400, "MANIFEST_INVALID")
        is_index = media_type in INDEX_TYPES
        if (media_type not in MANIFEST_TYPES or not isinstance(doc, dict) or doc.get("schemaVersion") != 2
                or doc.get("mediaType", media_type) != media_type or ("manifests" if is_index else "config") not in doc):
            return _error(400, "MANIFEST_INVALID")
        digest = _digest(body)
        if ref.startswith("sha256:") and ref != digest:
            return _error(400, "DIGEST_INVALID")
        if is_index:
            wanted, have = doc.get("manifests") or [], self._manifests.get(name, {})
        else:  # foreign layers (with urls) are not required to be in the registry
            wanted, have = [doc["config"]] + (doc.get("layers") or []), self._links.get(name, set())
        missing = [d.get("digest") for d in wanted if not d.get("urls") and d.get("digest") not in have]
        if missing:
            return _error(400, "MANIFEST_BLOB_UNKNOWN", *missing)
        self._manifests.setdefault(name, {})[digest] = (bytes(body), media_type)
        if not ref.startswith("sha256:"):
            self._tags.setdefault(name, {})[ref] = digest
        reply = {"Location": self._location(host, f"/v2/{name}/manifests/{digest}"), "Docker-Content-Digest": digest}
        subject = doc.get("subject")
        if self.referrers_api and isinstance(subject, dict) and subject.get("digest"):
            reply["OCI-Subject"] = subject["digest"]
        return 201, reply, b""

    def _drop_manifest(self, name: str, digest: str) -> bool:
        if self._manifests.get(name, {}).pop(digest, None) is None:
            return False
        tags = self._tags.get(name, {})
        for tag in [t for t, d in tags.items() if d == digest]:
            del tags[tag]
        return True

    def _tags_call(self, method: str, name: str, query: Dict[str, str]) -> Reply:
        if name not in self._tags:
            return _error(404, "NAME_UNKNOWN", {"name": name})
        if "n" in query and not query["n"].isdigit():
            return _error(400, "PAGINATION_NUMBER_INVALID", {"n": query["n"]})
        tags, link = self._page(sorted(self._tags[name]), query, f"/v2/{name}/tags/list")
        if query.get("n") == "0":
            tags = []
        return 200, {"Content-Type": _JSON, **link}, _json({"name": name, "tags": tags or None})

    def _blob_call(self, method: str, name: str, digest: str) -> Reply:
        held = digest in self._links.get(name, ())
        if method in ("GET", "HEAD"):
            if not held:
                return _error(404, "BLOB_UNKNOWN", digest)
            return 200, {"Content-Type": "application/octet-stream", "Docker-Content-Digest": digest}, self._blobs[digest]
        if method == "DELETE":
            if not self.delete_enabled:
                return _error(405, "UNSUPPORTED")
            if not held:
                return _error(404, "BLOB_UNKNOWN")
            self._links[name].discard(digest)
            return 202, {}, b""
        return _METHOD_NOT_ALLOWED

    def _state(self, name: str, uid: str, offset: int) -> str:
        mac = hmac.new(self._secret, f"{name}/{uid}/{offset}".encode(), hashlib.sha256).hexdigest()[:32]
        return f"{offset}.{mac}"

    def _session_reply(self, status: int, name: str, uid: str, host: str) -> Reply:
        offset = len(self._uploads[uid][1])
        path = f"/v2/{name}/blobs/uploads/{uid}?_state={self._state(name, uid, offset)}"
        return status, {"Location": self._location(host, path), "Range": f"0-{max(offset - 1, 0)}",
                        "Docker-Upload-UUID": uid}, b""

    def _commit(self, name: str, data: bytes, digest: str, host: str) -> Reply:
        self._blobs[digest] = data
        self._links.setdefault(name, set()).add(digest)
        return 201, {"Location": self._location(host, f"/v2/{name}/blobs/{digest}"), "Docker-Content-Digest": digest}, b""

    def _upload_call(self, method: str, name: str, uid: str, query: Dict[str, str], body: bytes, host: str) -> Reply:
        if not uid:
            if method != "POST":
                return _METHOD_NOT_ALLOWED
            mount, source = query.get("mount"), query.get("from")
            if mount and source and mount in self._links.get(source, ()):
                self._links.setdefault(name, set()).add(mount)
                return 201, {"Location": self._location(host, f"/v2/{name}/blobs/{mount}"), "Docker-Content-Digest": mount}, b""
            if self.monolithic_post and "digest" in query:
                if _digest(body) != query["digest"]:
                    return _error(400, "DIGEST_INVALID")
                return self._commit(name, bytes(body), query["digest"], host)
            uid = str(uuid.uuid4())
            self._uploads[uid] = (name, bytearray())
            return self._session_reply(202, name, uid, host)
        offset, _, _ = query.get("_state", "").partition(".")
        if not offset.isdigit() or not hmac.compare_digest(query["_state"], self._state(name, uid, int(offset))):
            return _error(404, "BLOB_UPLOAD_INVALID", {})
        session = self._uploads.get(uid)
        if session is None or session[0] != name:
            return _error(404, "BLOB_UPLOAD_UNKNOWN", {})
        if int(offset) != len(session[1]):
            return _error(404, "BLOB_UPLOAD_INVALID")
        if method == "GET":
            return self._session_reply(204, name, uid, host)
        if method == "PATCH":
            session[1].extend(body)
            return self._session_reply(202, name, uid, host)
        if method == "DELETE":
            del self._uploads[uid]
            return 204, {}, b""
        if method != "PUT":
            return _METHOD_NOT_ALLOWED
        digest = query.get("digest")
        if not digest:
            return _error(400, "DIGEST_INVALID", "digest missing")
        del self._uploads[uid]  # a failed commit ends the session too
        data = bytes(session[1] + body)
        if _digest(data) != digest:
            return _error(400, "DIGEST_INVALID", {"Digest": digest, "Reason": "content does not match digest"})
        return self._commit(name, data, digest, host)

    def _referrers_call(self, method: str, name: str, subject: str, query: Dict[str, str]) -> Reply:
        if not self.referrers_api:
            return _PAGE_NOT_FOUND
        if method not in ("GET", "HEAD"):
            return _METHOD_NOT_ALLOWED
        found = []
        for digest, (data, media_type) in sorted(self._manifests.get(name, {}).items()):
            doc = json.loads(data)
            if (doc.get("subject") or {}).get("digest") != subject:
                continue
            desc = {"mediaType": media_type, "digest": digest, "size": len(data)}
            artifact_type = doc.get("artifactType") or (doc.get("config") or {}).get("mediaType")
            if artifact_type:
                desc["artifactType"] = artifact_type
            if doc.get("annotations"):
                desc["annotations"] = doc["annotations"]
            found.append(desc)
        headers = {"Content-Type": OCI_INDEX}
        if query.get("artifactType"):
            found = [d for d in found if d.get("artifactType") == query["artifactType"]]
            headers["OCI-Filters-Applied"] = "artifactType"
        found, link = self._page(found, query, f"/v2/{name}/referrers/{subject}", key=lambda d: d["digest"])
        headers.update(link)
        return 200, headers, _json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": found})


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    registry: FakeRegistry

    def __init__(self, *args):
        self.connections: Set[socket.socket] = set()
        super().__init__(*args)

    def process_request(self, request, client_address):
        self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        self.connections.discard(request)
        super().shutdown_request(request)


def request_body(handler) -> bytes:
    """The body of the request a BaseHTTPRequestHandler is serving: Content-Length or chunked."""
    if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
        out = bytearray()
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return bytes(out)
            out += handler.rfile.read(size)
            handler.rfile.readline()
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every answer has a Content-Length
    server_version = "fake-distribution/2.8"
    sys_version = ""

    def setup(self) -> None:
        super().setup()  # headers and body are separate writes: without this, Nagle and delayed ACKs cost 40 ms each
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format, *args) -> None:  # silent
        pass

    def _serve(self) -> None:
        reply = self.server.registry.handle(self.command, self.path, self.headers, request_body(self))
        if reply is None:
            self.close_connection = True
            return
        status, headers, payload = reply
        self.send_response(status)
        self.send_header("Docker-Distribution-Api-Version", "registry/2.0")
        for key, value in headers.items():
            self.send_header(key, value)
        if status != 204:
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD" and status != 204:
            self.wfile.write(payload)

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _serve
