"""A small, strict client for the OCI distribution API.

Strict means: every manifest and blob read is checked against its digest,
a 404 is the only answer taken as "absent", and anything else that is not a
success (5xx, resets, timeouts, auth failures) ends in a RegistryError after
bounded retries. Nothing here ever guesses that something exists.

oras-py's own transport retries for minutes with no way to bound it, and does
not check digests on reads, so the HTTP work is done here; oras-py parses the
token challenge, and the records it writes are plain OCI artifacts that oras
clients pull (tests/integration/test_compose.py checks that).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

import requests

from .canonical import canonical_json, sha256_digest
from .errors import NotFoundError, RegistryError, VerificationError
from .names import DIGEST_RE, referrers_tag

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST)
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"

RETRY_STATUSES = {429, 500, 502, 503, 504}


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    artifact_type: Optional[str] = None
    annotations: Optional[Dict[str, str]] = None

    def to_dict(self) -> dict:
        d = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.artifact_type:
            d["artifactType"] = self.artifact_type
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Descriptor":
        try:
            return cls(d["mediaType"], d["digest"], int(d["size"]), d.get("artifactType"), d.get("annotations"))
        except (KeyError, TypeError, ValueError) as exc:
            raise VerificationError(f"malformed OCI descriptor {d!r} ({exc})", "the registry content is corrupt")


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1 : host.index("]")]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass
class _Auth:
    basic: Optional[str] = None  # base64 user:password from the Docker config
    use_basic: bool = False  # set once the registry asked for Basic auth
    tokens: Dict[str, str] = field(default_factory=dict)  # scope -> bearer token


def docker_config_path() -> str:
    """Docker's own rule: $DOCKER_CONFIG/config.json, else ~/.docker/config.json."""
    root = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return os.path.join(root, "config.json")


def _docker_credentials(host: str) -> Optional[str]:
    """Base64 user:password for host from the Docker config: auths, then credHelpers / credsStore."""
    try:
        with open(docker_config_path(), encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return None
    auths = cfg.get("auths") or {}
    for key in (host, f"https://{host}", f"http://{host}", f"https://{host}/v1/", f"{host}/v1/"):
        entry = auths.get(key) or {}
        if entry.get("auth"):
            return entry["auth"]
        if entry.get("username") and entry.get("password"):
            return base64.b64encode(f"{entry['username']}:{entry['password']}".encode()).decode()
    helper = (cfg.get("credHelpers") or {}).get(host) or cfg.get("credsStore")
    if helper:
        try:
            out = subprocess.run(
                [f"docker-credential-{helper}", "get"], input=host.encode(), capture_output=True, timeout=30, check=True
            ).stdout
            data = json.loads(out)
            return base64.b64encode(f"{data['Username']}:{data['Secret']}".encode()).decode()
        except (OSError, subprocess.SubprocessError, ValueError, KeyError):
            return None
    return None


class Registry:
    """One registry host. Repositories are passed per call."""

    def __init__(
        self,
        host: str,
        *,
        insecure_hosts: Iterable[str] = (),
        ca_bundle: Optional[str] = None,
        attempts: Optional[int] = None,
        timeout: Tuple[float, float] = (5.0, 120.0),
    ):
        self.host = host
        plain_http = is_loopback(host) or host in set(insecure_hosts)
        self.base = f"{'http' if plain_http else 'https'}://{host}"
        # TLS is always verified for https; the CA bundle widens trust, never disables it.
        self.verify: object = ca_bundle or True
        self.attempts = attempts or int(os.environ.get("COMPOSER_REGISTRY_ATTEMPTS", "3"))
        self.timeout = timeout
        self.session = requests.Session()
        self._auth = _Auth()
        self._auth_loaded = False

    # -- transport -------------------------------------------------------------
    def _request(self, method: str, path: str, *, scope: str, headers=None, data=None, allow=(200,),
                 retry: bool = True) -> requests.Response:
        """One registry call; retried with backoff on resets, timeouts, 429 and 5xx when retry is safe."""
        url = path if path.startswith("http") else self.base + path
        last_problem = ""
        for attempt in range(self.attempts if retry else 1):
            if attempt:
                time.sleep(min(0.2 * (3 ** (attempt - 1)), 3.0))
            try:
                resp = self._send(method, url, scope, headers or {}, data)
            except requests.exceptions.SSLError as exc:
                raise RegistryError(
                    f"TLS verification failed for registry {self.host} ({type(exc).__name__})",
                    "set COMPOSER_CA_BUNDLE to the CA that signed it, or list the host in insecure_registries",
                )
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                last_problem = _short_reason(exc)
                continue
            if resp.status_code in allow:
                return resp
            if resp.status_code in (401, 403):
                raise RegistryError(
                    f"registry {self.host} refused access to {scope} ({resp.status_code})",
                    f"run 'docker login {self.host}' or fix the credentials in DOCKER_CONFIG",
                )
            if resp.status_code in RETRY_STATUSES:
                last_problem = f"HTTP {resp.status_code} for {method} {path}"
                continue
            raise RegistryError(
                f"registry {self.host} answered HTTP {resp.status_code} to {method} {path}{_error_detail(resp)}",
                "check the registry and the reference",
            )
        raise RegistryError(
            f"registry {self.host} failed after {self.attempts if retry else 1} attempt(s): {last_problem}",
            "check that it is running and reachable, and --registry / COMPOSER_REGISTRY",
        )

    def _send(self, method: str, url: str, scope: str, headers: dict, data) -> requests.Response:
        resp = self._raw(method, url, scope, headers, data)
        if resp.status_code == 401 and self._authenticate(resp, scope):
            resp = self._raw(method, url, scope, headers, data)
        return resp

    def _raw(self, method: str, url: str, scope: str, headers: dict, data) -> requests.Response:
        hdrs = dict(headers)
        if scope in self._auth.tokens:
            hdrs["Authorization"] = f"Bearer {self._auth.tokens[scope]}"
        elif self._auth.use_basic and self._auth.basic:
            hdrs["Authorization"] = f"Basic {self._auth.basic}"
        return self.session.request(
            method, url, headers=hdrs, data=data, timeout=self.timeout, verify=self.verify, allow_redirects=True
        )

    def _authenticate(self, resp: requests.Response, scope: str) -> bool:
        """Answer a 401 challenge; True when there is a new credential to retry with."""
        from oras.auth.utils import parse_auth_header

        if not self._auth_loaded:
            self._auth.basic = _docker_credentials(self.host)
            self._auth_loaded = True
        challenge = resp.headers.get("WWW-Authenticate", "")
        kind = challenge.split(" ", 1)[0].lower()
        if kind == "basic":
            if not self._auth.basic or self._auth.use_basic:
                return False
            self._auth.use_basic = True
            return True
        if kind == "bearer" and scope not in self._auth.tokens:
            info = parse_auth_header(challenge)
            params = {"service": info.service, "scope": scope}
            hdrs = {"Authorization": f"Basic {self._auth.basic}"} if self._auth.basic else {}
            try:
                tok = self.session.get(info.realm, params=params, headers=hdrs, timeout=self.timeout, verify=self.verify)
            except requests.exceptions.RequestException as exc:
                raise RegistryError(f"token service of {self.host} is unreachable ({_short_reason(exc)})", "check the registry's auth setup")
            if tok.status_code != 200:
                return False
            try:
                body = tok.json()
            except ValueError:
                return False
            token = body.get("token") or body.get("access_token")
            if token:
                self._auth.tokens[scope] = token
                return True
        return False

    # -- manifests ---------------------------------------------------------------
    def head_manifest(self, repo: str, ref: str) -> Optional[Descriptor]:
        """The descriptor a tag or digest points to, or None when the registry says 404."""
        resp = self._request(
            "HEAD", f"/v2/{repo}/manifests/{ref}", scope=f"repository:{repo}:pull",
            headers={"Accept": ", ".join(MANIFEST_TYPES)}, allow=(200, 404),
        )
        if resp.status_code == 404:
            return None
        digest = resp.headers.get("Docker-Content-Digest", "")
        size = resp.headers.get("Content-Length")
        if not DIGEST_RE.match(digest) or size is None:
            # No trustworthy header: fall back to reading and hashing the manifest.
            got = self.get_manifest(repo, ref)
            return got[1] if got else None
        if DIGEST_RE.match(ref) and digest != ref:
            raise VerificationError(f"registry {self.host} answered {digest} for {repo}@{ref}", "the registry is inconsistent")
        media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        return Descriptor(media_type, digest, int(size))

    def get_manifest(self, repo: str, ref: str) -> Optional[Tuple[bytes, Descriptor]]:
        resp = self._request(
            "GET", f"/v2/{repo}/manifests/{ref}", scope=f"repository:{repo}:pull",
            headers={"Accept": ", ".join(MANIFEST_TYPES)}, allow=(200, 404),
        )
        if resp.status_code == 404:
            return None
        body = resp.content
        digest = sha256_digest(body)
        claimed = resp.headers.get("Docker-Content-Digest")
        if (DIGEST_RE.match(ref) and digest != ref) or (claimed and claimed != digest):
            raise VerificationError(
                f"manifest {repo}:{ref} from {self.host} does not match its digest (got {digest})",
                "the registry returned other bytes than it stored; do not use it",
            )
        media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        try:
            media_type = json.loads(body).get("mediaType") or media_type
        except ValueError:
            raise VerificationError(f"manifest {repo}:{ref} from {self.host} is not JSON", "the registry content is corrupt")
        return body, Descriptor(media_type, digest, len(body))

    def put_manifest(self, repo: str, ref: str, body: bytes, media_type: str) -> Tuple[Descriptor, bool]:
        """Store a manifest under a tag or its digest. Returns its descriptor and whether the
        registry processed its subject (OCI-Subject header: the referrers API exists)."""
        digest = sha256_digest(body)
        for attempt in range(self.attempts):
            resp = self._request(
                "PUT", f"/v2/{repo}/manifests/{ref}", scope=f"repository:{repo}:pull,push",
                headers={"Content-Type": media_type}, data=body, allow=(201, 400),
            )
            if resp.status_code == 201:
                break
            # A blob the manifest names can read as unknown or invalid for a moment while a
            # concurrent upload of the same blob commits (distribution's filesystem storage).
            if _error_code(resp) not in ("DIGEST_INVALID", "MANIFEST_BLOB_UNKNOWN", "BLOB_UNKNOWN") or attempt == self.attempts - 1:
                raise RegistryError(
                    f"registry {self.host} refused manifest {repo}:{ref}{_error_detail(resp)}",
                    "check that every blob it names was pushed",
                )
            time.sleep(0.2 * (attempt + 1))
        claimed = resp.headers.get("Docker-Content-Digest")
        if claimed and claimed != digest:
            raise VerificationError(f"registry {self.host} stored {repo}:{ref} as {claimed}, expected {digest}", "the registry is inconsistent")
        return Descriptor(media_type, digest, len(body)), bool(resp.headers.get("OCI-Subject"))

    def tag(self, repo: str, digest: str, *tags: str) -> None:
        """Point tags, in order, at an existing manifest, copying its exact bytes (digest unchanged)."""
        got = None
        for tag in tags:
            current = self.head_manifest(repo, tag)
            if current is not None and current.digest == digest:
                continue
            if got is None:
                got = self.get_manifest(repo, digest)
                if got is None:
                    raise NotFoundError(f"{repo}@{digest} is not in registry {self.host}", "push it before tagging")
            self.put_manifest(repo, tag, got[0], got[1].media_type)

    def tags(self, repo: str) -> List[str]:
        resp = self._request("GET", f"/v2/{repo}/tags/list", scope=f"repository:{repo}:pull", allow=(200, 404))
        if resp.status_code == 404:
            return []
        return sorted(resp.json().get("tags") or [])

    # -- blobs -------------------------------------------------------------------
    def blob_exists(self, repo: str, digest: str) -> bool:
        resp = self._request("HEAD", f"/v2/{repo}/blobs/{digest}", scope=f"repository:{repo}:pull", allow=(200, 404))
        return resp.status_code == 200

    def get_blob(self, repo: str, digest: str) -> bytes:
        resp = self._request("GET", f"/v2/{repo}/blobs/{digest}", scope=f"repository:{repo}:pull", allow=(200, 404))
        if resp.status_code == 404:
            raise NotFoundError(f"blob {digest} is missing from {self.host}/{repo}", "the registry lost content; republish it")
        if sha256_digest(resp.content) != digest:
            raise VerificationError(f"blob {digest} from {self.host}/{repo} does not match its digest", "the registry returned other bytes than it stored")
        return resp.content

    def push_blob(self, repo: str, data: bytes, media_type: str) -> Descriptor:
        """Push bytes as a blob unless repo has it (see upload_blob)."""
        return self.upload_blob(repo, sha256_digest(data), len(data), data=data, media_type=media_type)

    def delete_manifest(self, repo: str, digest: str) -> None:
        """Delete a manifest by digest (its tags go with it); already gone is fine."""
        resp = self._request("DELETE", f"/v2/{repo}/manifests/{digest}", scope=f"repository:{repo}:delete",
                             allow=(202, 404, 405))
        if resp.status_code == 405:
            raise RegistryError(f"registry {self.host} does not allow deletes",
                                "enable them (distribution: storage.delete.enabled: true)")

    # -- referrers -----------------------------------------------------------------
    def referrers(self, repo: str, digest: str, artifact_type: Optional[str] = None) -> List[Descriptor]:
        """Manifests whose subject is digest: the referrers API, else the referrers tag schema."""
        resp = self._request(
            "GET", f"/v2/{repo}/referrers/{digest}", scope=f"repository:{repo}:pull",
            headers={"Accept": OCI_INDEX}, allow=(200, 404),
        )
        index = None
        if resp.status_code == 200 and resp.headers.get("Content-Type", "").startswith(OCI_INDEX):
            index = resp.json()
        else:
            got = self.get_manifest(repo, referrers_tag(digest))
            index = json.loads(got[0]) if got else {"manifests": []}
        found = [Descriptor.from_dict(m) for m in index.get("manifests", [])]
        return [d for d in found if artifact_type is None or d.artifact_type == artifact_type]

    def add_referrer_to_tag(self, repo: str, subject_digest: str, referrer: Descriptor) -> None:
        """Keep the referrers tag schema up to date for registries without the referrers API."""
        tag = referrers_tag(subject_digest)
        for _ in range(5):
            got = self.get_manifest(repo, tag)
            index = json.loads(got[0]) if got else {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
            if any(m.get("digest") == referrer.digest for m in index.get("manifests", [])):
                return
            index["manifests"].append(referrer.to_dict())
            self.put_manifest(repo, tag, canonical_json(index), OCI_INDEX)
            # A concurrent writer may have replaced the index between our read and write.
            check = self.get_manifest(repo, tag)
            if check and any(m.get("digest") == referrer.digest for m in json.loads(check[0]).get("manifests", [])):
                return
        raise RegistryError(f"could not update referrers tag {tag} in {self.host}/{repo}", "retry the command")

    # -- streamed blobs and cross-repository mounts (the daemonless builder) -------------
    class _StreamBody:
        """A request body read from a file (or bytes) in chunks; every iteration starts
        over, so a retried request sends the whole blob again. Has a length, so requests
        sends Content-Length rather than chunked encoding."""

        def __init__(self, path=None, data: Optional[bytes] = None, size: int = 0, chunk: int = 1 << 20):
            self.path, self.data, self.size, self.chunk = path, data, size, chunk

        def __len__(self) -> int:
            return self.size

        def __iter__(self):
            if self.data is not None:
                for i in range(0, len(self.data), self.chunk):
                    yield self.data[i : i + self.chunk]
                return
            with open(self.path, "rb") as f:
                while True:
                    block = f.read(self.chunk)
                    if not block:
                        return
                    yield block

    def _note_transfer(self, action: str, repo: str, digest: str, size: int) -> None:
        """Instrumentation: what happened to each blob (present, mounted, uploaded, copied)."""
        self.__dict__.setdefault("transfers", []).append({"action": action, "repo": repo, "digest": digest, "size": size})

    def blob_size(self, repo: str, digest: str) -> Optional[int]:
        """The size of a blob repo holds (HEAD, nothing downloaded), or None on a 404."""
        resp = self._request("HEAD", f"/v2/{repo}/blobs/{digest}", scope=f"repository:{repo}:pull", allow=(200, 404))
        if resp.status_code == 404:
            return None
        claimed = resp.headers.get("Docker-Content-Digest")
        if claimed and claimed != digest:
            raise VerificationError(f"registry {self.host} answered {claimed} for blob {repo}@{digest}", "the registry is inconsistent")
        try:
            return int(resp.headers["Content-Length"])
        except (KeyError, ValueError):
            raise RegistryError(f"registry {self.host} gave no size for blob {repo}@{digest}", "the registry is misbehaving")

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> bool:
        """Cross-repository mount of a blob (same registry host); True when the registry mounted
        it (201), False when it declined (202: it opened an upload session, which is closed)."""
        resp = self._request(
            "POST", f"/v2/{repo}/blobs/uploads/?mount={digest}&from={from_repo}",
            scope=f"repository:{repo}:pull,push", allow=(201, 202),
        )
        if resp.status_code == 201:
            claimed = resp.headers.get("Docker-Content-Digest")
            if claimed and claimed != digest:
                raise VerificationError(f"registry {self.host} mounted {claimed} when asked for {digest}", "the registry is inconsistent")
            self._note_transfer("mounted", repo, digest, 0)
            return True
        location = resp.headers.get("Location", "")
        if location:
            try:  # best effort: an abandoned session expires on its own
                self._request("DELETE", location if location.startswith("http") else self.base + location,
                              scope=f"repository:{repo}:pull,push", allow=(204, 404))
            except RegistryError:
                pass
        return False

    def upload_blob(self, repo: str, digest: str, size: int, *, path=None, data: Optional[bytes] = None,
                    media_type: str = "application/octet-stream") -> Descriptor:
        """Push a blob from a file (streamed, never read into memory) or bytes, unless repo has it.
        Monolithic POST + PUT; a failed PUT restarts the session. The registry checks the digest
        on PUT, and the stored size is checked afterwards."""
        desc = Descriptor(media_type, digest, size)
        have = self.blob_size(repo, digest)
        if have is not None:
            if have != size:
                raise VerificationError(f"registry {self.host} holds {repo}@{digest} with {have} bytes, expected {size}", "the registry is inconsistent")
            self._note_transfer("present", repo, digest, size)
            return desc
        scope = f"repository:{repo}:pull,push"
        body = self._StreamBody(path=path, data=data, size=size)
        problem = ""
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(min(0.2 * (3 ** (attempt - 1)), 3.0))
            start = self._request("POST", f"/v2/{repo}/blobs/uploads/", scope=scope, allow=(202,))
            location = start.headers.get("Location", "")
            if not location:
                raise RegistryError(f"registry {self.host} gave no upload location for {repo}", "the registry is misbehaving")
            if not location.startswith("http"):
                location = self.base + location
            sep = "&" if "?" in location else "?"
            try:  # one attempt per session: a session does not survive a failed PUT
                resp = self._send("PUT", f"{location}{sep}digest={digest}", scope,
                                  {"Content-Type": "application/octet-stream"}, body)
            except requests.exceptions.SSLError as exc:
                raise RegistryError(f"TLS verification failed for registry {self.host} ({type(exc).__name__})",
                                    "set COMPOSER_CA_BUNDLE to the CA that signed it, or list the host in insecure_registries")
            except requests.exceptions.RequestException as exc:
                problem = _short_reason(exc)
            else:
                if resp.status_code == 201:
                    claimed = resp.headers.get("Docker-Content-Digest")
                    if claimed and claimed != digest:
                        raise VerificationError(f"registry {self.host} stored {claimed} for an upload of {digest}", "the registry is inconsistent")
                    break
                if resp.status_code in (401, 403):
                    raise RegistryError(f"registry {self.host} refused access to {scope} ({resp.status_code})",
                                        f"run 'docker login {self.host}' or fix the credentials in DOCKER_CONFIG")
                if resp.status_code not in RETRY_STATUSES:
                    raise RegistryError(
                        f"registry {self.host} answered HTTP {resp.status_code} to the upload of {digest[:19]} to {repo}{_error_detail(resp)}",
                        "check the registry and its storage",
                    )
                problem = f"HTTP {resp.status_code} for PUT of {digest[:19]}"
            if self.blob_size(repo, digest) == size:  # the PUT landed though its answer was lost
                break
        else:
            raise RegistryError(f"registry {self.host} failed after {self.attempts} upload attempts: {problem}",
                                "check that it is running and reachable")
        stored = self.blob_size(repo, digest)
        if stored != size:
            raise VerificationError(f"after the upload registry {self.host} holds {repo}@{digest} with size {stored}, expected {size}",
                                    "the registry is inconsistent")
        self._note_transfer("uploaded", repo, digest, size)
        return desc

    def download_blob(self, repo: str, digest: str, path) -> int:
        """Stream a blob into a file, checking its digest; returns its size."""
        import hashlib

        url = f"{self.base}/v2/{repo}/blobs/{digest}"
        scope = f"repository:{repo}:pull"
        problem = ""
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(min(0.2 * (3 ** (attempt - 1)), 3.0))
            try:
                resp = None
                for _ in range(2):  # a 401 challenge, then the answer
                    hdrs = {}
                    if scope in self._auth.tokens:
                        hdrs["Authorization"] = f"Bearer {self._auth.tokens[scope]}"
                    elif self._auth.use_basic and self._auth.basic:
                        hdrs["Authorization"] = f"Basic {self._auth.basic}"
                    resp = self.session.get(url, headers=hdrs, stream=True, timeout=self.timeout, verify=self.verify)
                    if resp.status_code != 401 or not self._authenticate(resp, scope):
                        break
                    resp.close()
                assert resp is not None
                with resp:
                    if resp.status_code == 404:
                        raise NotFoundError(f"blob {digest} is missing from {self.host}/{repo}", "the registry lost content; republish it")
                    if resp.status_code in (401, 403):
                        raise RegistryError(f"registry {self.host} refused access to {scope} ({resp.status_code})",
                                            f"run 'docker login {self.host}' or fix the credentials in DOCKER_CONFIG")
                    if resp.status_code in RETRY_STATUSES:
                        problem = f"HTTP {resp.status_code} for GET of blob {digest[:19]}"
                        continue
                    if resp.status_code != 200:
                        raise RegistryError(f"registry {self.host} answered HTTP {resp.status_code} to GET blob {repo}@{digest}",
                                            "check the registry and the reference")
                    h, size = hashlib.sha256(), 0
                    with open(path, "wb") as out:
                        for block in resp.iter_content(1 << 20):
                            h.update(block)
                            size += len(block)
                            out.write(block)
            except requests.exceptions.SSLError as exc:
                raise RegistryError(f"TLS verification failed for registry {self.host} ({type(exc).__name__})",
                                    "set COMPOSER_CA_BUNDLE to the CA that signed it, or list the host in insecure_registries")
            except requests.exceptions.RequestException as exc:
                problem = _short_reason(exc)
                continue
            if "sha256:" + h.hexdigest() != digest:
                raise VerificationError(f"blob {digest} from {self.host}/{repo} does not match its digest",
                                        "the registry returned other bytes than it stored")
            return size
        raise RegistryError(f"registry {self.host} failed after {self.attempts} attempts: {problem}",
                            "check that it is running and reachable")

    def copy_blob(self, source: "Registry", source_repo: str, digest: str, size: int, repo: str,
                  media_type: str = "application/octet-stream") -> Descriptor:
        """Copy a blob from another registry (or a repository a mount cannot reach): streamed
        through a temporary file, checked on the way in and on the way out."""
        import tempfile

        have = self.blob_size(repo, digest)
        if have == size:
            self._note_transfer("present", repo, digest, size)
            return Descriptor(media_type, digest, size)
        with tempfile.TemporaryDirectory(prefix="composer-blob-") as tmp:
            path = f"{tmp}/blob"
            got = source.download_blob(source_repo, digest, path)
            if got != size:
                raise VerificationError(f"blob {digest} from {source.host}/{source_repo} has {got} bytes, its descriptor says {size}",
                                        "the upstream manifest and its blobs disagree")
            desc = self.upload_blob(repo, digest, size, path=path, media_type=media_type)
        if self.transfers[-1]["action"] == "uploaded":
            self.transfers[-1]["action"] = "copied"
        return desc


def _short_reason(exc: Exception) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "timed out", "Connection reset", "No route to host"):
        if marker.lower() in text.lower():
            return marker.lower()
    return type(exc).__name__


def _error_code(resp: requests.Response) -> str:
    try:
        errors = resp.json().get("errors") or []
        return str(errors[0].get("code", "")) if errors else ""
    except (ValueError, AttributeError):
        return ""


def _error_detail(resp: requests.Response) -> str:
    try:
        errors = resp.json().get("errors") or []
        if errors:
            return f" ({errors[0].get('code', '')}: {errors[0].get('message', '')})"
    except ValueError:
        pass
    return ""
