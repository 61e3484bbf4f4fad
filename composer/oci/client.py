"""A small, strict client for the OCI distribution API, on top of composer.oci.transport.

Strict means: every manifest and blob read is checked against its digest,
a 404 is the only answer taken as "absent", and anything else that is not a
success (5xx, resets, timeouts, auth failures) ends in a RegistryError after
bounded retries. Nothing here ever guesses that something exists.

The HTTP work (TLS, credentials, the 401 challenge, retries, error mapping) is the
transport's; this module knows the distribution API. The records it writes are plain OCI
artifacts that oras clients pull (tests/integration/test_compose.py checks that).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union
from urllib.parse import urljoin

from composer.errors import NotFoundError, RegistryError, VerificationError
from composer.model.canonical import canonical_json, sha256_digest
from composer.model.refs import DIGEST_RE, is_loopback, referrers_tag, registry_endpoint
from composer.oci.http import Response, Session
from composer.oci.transport import (MAX_DOCUMENT, RetryPolicy, Transient, Transport, error_code, error_detail,
                                    parse_json_object)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST)
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"

# A listing longer than this many pages is a registry answering in circles.
MAX_PAGES = 10000
__all__ = ["Descriptor", "Registry", "is_loopback", "next_link"]

# A manifest PUT can be refused with these for a moment while a concurrent upload of a blob it
# names commits (distribution's filesystem storage): retried like a 5xx.
BLOB_COMMIT_CODES = ("DIGEST_INVALID", "MANIFEST_BLOB_UNKNOWN", "BLOB_UNKNOWN")


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
            desc = cls(d["mediaType"], d["digest"], int(d["size"]), d.get("artifactType"), d.get("annotations"))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise VerificationError(f"malformed OCI descriptor {str(d)[:200]!r} ({type(exc).__name__})",
                                    "the registry content is corrupt") from exc
        if not (isinstance(desc.media_type, str) and isinstance(desc.digest, str)
                and desc.size >= 0 and (desc.annotations is None or isinstance(desc.annotations, dict))):
            raise VerificationError(f"malformed OCI descriptor {str(d)[:200]!r}", "the registry content is corrupt")
        return desc


def next_link(header: Optional[str]) -> Optional[str]:
    """The target of a Link header's rel="next" (RFC 8288), or None."""
    for part in (header or "").split(","):
        target, _, params = part.partition(";")
        target = target.strip()
        if target.startswith("<") and target.endswith(">") and \
                any(p.strip().replace(" ", "") in ('rel="next"', "rel=next") for p in params.split(";")):
            return target[1:-1]
    return None


def _index_entries(index: dict, what: str) -> list:
    entries = index.get("manifests")
    if entries is None:
        return []
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise VerificationError(f"{what} has a malformed manifests list", "the registry content is corrupt")
    return entries


class Pieces:
    """One request body given as several bytes objects, sent one after the other without being
    joined into one (a copy of every byte); its length is known, so it goes with Content-Length."""

    def __init__(self, parts: Iterable[bytes]):
        self.parts = [p for p in parts if p]
        self.size = sum(len(p) for p in self.parts)

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        return iter(self.parts)


class _StreamBody:
    """A request body read from a file (or bytes) in chunks; every iteration starts over, so a
    retried request sends the whole blob again. Has a length, so it is sent with Content-Length
    rather than chunked encoding."""

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


def _via_transport(name: str, doc: str) -> property:
    return property(lambda self: getattr(self.transport, name),
                    lambda self, value: setattr(self.transport, name, value), doc=doc)


class Registry:
    """One registry host. Repositories are passed per call. Not thread-safe: give another
    thread its own client with `clone()`."""

    def __init__(
        self,
        host: str,
        *,
        insecure_hosts: Iterable[str] = (),
        ca_bundle: Optional[str] = None,
        attempts: Optional[int] = None,
        retry: Optional[RetryPolicy] = None,
        timeout: Tuple[float, float] = (5.0, 120.0),
    ):
        endpoint = registry_endpoint(host)
        plain_http = is_loopback(endpoint) or host in set(insecure_hosts) or endpoint in set(insecure_hosts)
        # TLS is always verified for https; the CA bundle widens trust, never disables it.
        self._start(Transport(host, f"{'http' if plain_http else 'https'}://{endpoint}", verify=ca_bundle or True,
                              attempts=attempts, retry=retry, timeout=timeout))

    def _start(self, transport: Transport) -> None:
        self.transport = transport
        self.transfers: List[dict] = []  # see note_transfer
        # Small blobs already read and digest-checked (records, configs): content-addressed, so
        # reading one again in the same command can only give the same bytes.
        self._blobs: Dict[Tuple[str, str], bytes] = {}
        # None until the registry has answered a referrers query; False: it has no referrers API
        # (distribution 2.8), so the tag schema is read without asking it again.
        self._referrers_api: Optional[bool] = None
        # Manifests by digest this client read, and small blobs it knows the repository holds (it
        # uploaded them, or a HEAD said so): content-addressed, so asking again in the same
        # command can only give the same answer, unless this client deleted it (forgotten then).
        # A client lives for one command (one Settings: the API makes its own per call). A blob
        # removed behind our back fails the manifest PUT that needs it: closed, and forgotten.
        self._manifests: Dict[Tuple[str, str], Tuple[bytes, Descriptor]] = {}
        self._have: Dict[Tuple[str, str], int] = {}

    def clone(self) -> "Registry":
        """Another client for the same host, settings and credentials, with a session of its own
        (for another thread: sessions are not shared across threads)."""
        twin = type(self).__new__(type(self))
        twin._start(self.transport.clone())
        return twin

    @property
    def host(self) -> str:
        return self.transport.host

    base = _via_transport("base", "scheme://host")
    verify = _via_transport("verify", "True, or the path of the CA bundle TLS is verified with")
    attempts = _via_transport("attempts", "tries per registry operation before a RegistryError")
    timeout = _via_transport("timeout", "(connect, read) seconds")

    @property
    def session(self) -> Session:
        return self.transport.session

    def _request(self, method: str, path: str, *, scope: str, headers=None, data=None,
                 allow: Tuple[int, ...] = (200,)) -> Response:
        return self.transport.request(method, path, scope=scope, headers=headers, data=data, allow=allow)

    def note_transfer(self, action: str, repo: str, digest: str, size: int) -> None:
        """Instrumentation: what happened to each blob (present, mounted, uploaded, copied)."""
        self.transfers.append({"action": action, "repo": repo, "digest": digest, "size": size})

    # -- manifests ---------------------------------------------------------------------
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
        if not DIGEST_RE.match(digest) or size is None or not size.isdigit():
            # No trustworthy header: fall back to reading and hashing the manifest.
            got = self.get_manifest(repo, ref)
            return got[1] if got else None
        if DIGEST_RE.match(ref) and digest != ref:
            raise VerificationError(f"registry {self.host} answered {digest} for {repo}@{ref}", "the registry is inconsistent")
        media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        return Descriptor(media_type, digest, int(size))

    def get_manifest(self, repo: str, ref: str) -> Optional[Tuple[bytes, Descriptor]]:
        """A manifest's bytes (at most 4 MiB, a JSON object, matching its digest) and its
        descriptor, or None when the registry says 404."""
        if (repo, ref) in self._manifests:
            return self._manifests[(repo, ref)]
        resp, body = self.transport.fetch(
            f"/v2/{repo}/manifests/{ref}", scope=f"repository:{repo}:pull",
            headers={"Accept": ", ".join(MANIFEST_TYPES)}, allow=(200, 404),
            what=f"manifest {repo}:{ref} from {self.host}",
        )
        if resp.status_code == 404:
            return None
        digest = sha256_digest(body)
        claimed = resp.headers.get("Docker-Content-Digest")
        if (DIGEST_RE.match(ref) and digest != ref) or (claimed and claimed != digest):
            raise VerificationError(
                f"manifest {repo}:{ref} from {self.host} does not match its digest (got {digest})",
                "the registry returned other bytes than it stored; do not use it",
            )
        media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        parsed = parse_json_object(body, f"manifest {repo}:{ref} from {self.host}")
        if isinstance(parsed.get("mediaType"), str) and parsed["mediaType"]:
            media_type = parsed["mediaType"]
        desc = Descriptor(media_type, digest, len(body))
        if len(self._manifests) < 4096:
            self._manifests[(repo, digest)] = (body, desc)
        return body, desc

    def put_manifest(self, repo: str, ref: str, body: bytes, media_type: str) -> Tuple[Descriptor, bool]:
        """Store a manifest under a tag or its digest. Returns its descriptor and whether the
        registry processed its subject (OCI-Subject header: the referrers API exists)."""
        digest = sha256_digest(body)
        scope = f"repository:{repo}:pull,push"
        path = f"/v2/{repo}/manifests/{ref}"

        def attempt() -> Response:
            resp = self.transport.send("PUT", path, scope=scope, headers={"Content-Type": media_type}, data=body)
            if resp.status_code == 400:
                refused = RegistryError(f"registry {self.host} refused manifest {repo}:{ref}{error_detail(resp)}",
                                        "check that every blob it names was pushed")
                code = error_code(resp)
                if code in BLOB_COMMIT_CODES:
                    self._have = {k: v for k, v in self._have.items() if k[0] != repo}  # ask again next time
                    raise Transient(f"{code} for PUT {path}", refused)
                raise refused
            return self.transport.check(resp, scope=scope, allow=(201,), what=f"PUT {path}")

        resp = self.transport.retrying(attempt)
        claimed = resp.headers.get("Docker-Content-Digest")
        if claimed and claimed != digest:
            raise VerificationError(f"registry {self.host} stored {repo}:{ref} as {claimed}, expected {digest}", "the registry is inconsistent")
        # Not remembered: what the registry holds is only known by reading it (verify_image does).
        return Descriptor(media_type, digest, len(body)), bool(resp.headers.get("OCI-Subject"))

    def tag(self, repo: str, digest: str, *tags: str, before_write: Optional[Callable[[], None]] = None) -> None:
        """Point tags, in order, at an existing manifest, copying its exact bytes (digest unchanged).
        before_write runs once, right before the first tag that has to move is written."""
        got = None
        for tag in tags:
            current = self.head_manifest(repo, tag)
            if current is not None and current.digest == digest:
                continue
            if before_write is not None:
                before_write()
                before_write = None
            if got is None:
                got = self.get_manifest(repo, digest)
                if got is None:
                    raise NotFoundError(f"{repo}@{digest} is not in registry {self.host}", "push it before tagging")
            self.put_manifest(repo, tag, got[0], got[1].media_type)

    def _pages(self, path: str, *, scope: str, what: str, headers: Optional[dict] = None,
               first_absent: Tuple[int, ...] = (404,)) -> Iterator[Tuple[object, dict]]:
        """Every page of a paginated list, following Link rel="next": (response, JSON object).
        A 404 on the first page ends the listing with no page (the caller says what that means);
        any other failure, on any page, fails the whole listing."""
        url, seen = self.transport.url(path), set()
        for number in range(1, MAX_PAGES + 1):
            seen.add(url)
            allow = (200,) + (first_absent if number == 1 else ())
            resp, body = self.transport.fetch(url, scope=scope, headers=headers, allow=allow,
                                              what=f"{what} (page {number})")
            if resp.status_code != 200:
                return
            yield resp, parse_json_object(body, f"{what} (page {number})")
            link = next_link(resp.headers.get("Link"))
            if not link:
                return
            url = urljoin(url, link)
            if url in seen:
                raise VerificationError(f"{what}: page {number} links back to an earlier page", "the registry is misbehaving")
        raise VerificationError(f"{what} has more than {MAX_PAGES} pages", "the registry is misbehaving")

    @staticmethod
    def _names(doc: dict, key: str, what: str) -> List[str]:
        names = doc.get(key)
        if names is None:
            return []
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise VerificationError(f"{what}: {key!r} is not a list of strings", "the registry is misbehaving")
        return names

    def tags(self, repo: str) -> List[str]:
        """Every tag of repo (all pages), sorted; [] when the repository does not exist."""
        what = f"the tag list of {repo} from {self.host}"
        found: List[str] = []
        for _, doc in self._pages(f"/v2/{repo}/tags/list", scope=f"repository:{repo}:pull", what=what):
            found += self._names(doc, "tags", what)
        return sorted(set(found))

    def catalog(self) -> List[str]:
        """Every repository the registry lists (all pages), sorted."""
        what = f"the catalog of {self.host}"
        found: List[str] = []
        for _, doc in self._pages("/v2/_catalog", scope="registry:catalog:*", what=what, first_absent=()):
            found += self._names(doc, "repositories", what)
        return sorted(set(found))

    def delete_manifest(self, repo: str, digest: str) -> None:
        """Delete a manifest by digest (its tags go with it); already gone is fine."""
        self._manifests.pop((repo, digest), None)
        resp = self._request("DELETE", f"/v2/{repo}/manifests/{digest}", scope=f"repository:{repo}:delete",
                             allow=(202, 404, 405))
        if resp.status_code == 405:
            raise RegistryError(f"registry {self.host} does not allow deletes",
                                "enable them (distribution: storage.delete.enabled: true)")

    # -- referrers ---------------------------------------------------------------------
    def referrers(self, repo: str, digest: str, artifact_type: Optional[str] = None) -> List[Descriptor]:
        """Manifests whose subject is digest: the referrers API, else the referrers tag schema."""
        what = f"the referrers of {repo}@{digest} from {self.host}"
        entries: list = []
        api = False
        if self._referrers_api is not False:
            for resp, index in self._pages(f"/v2/{repo}/referrers/{digest}", scope=f"repository:{repo}:pull", what=what,
                                           headers={"Accept": OCI_INDEX}):
                if not resp.headers.get("Content-Type", "").startswith(OCI_INDEX):
                    break  # not the referrers API (a registry answering something else there)
                api = True
                entries += _index_entries(index, what)
            self._referrers_api = api
        if not api:
            got = self.get_manifest(repo, referrers_tag(digest))
            entries = _index_entries(json.loads(got[0]), what) if got else []
        found = [Descriptor.from_dict(m) for m in entries]
        return [d for d in found if artifact_type is None or d.artifact_type == artifact_type]

    def add_referrer_to_tag(self, repo: str, subject_digest: str, referrer: Descriptor) -> None:
        """Keep the referrers tag schema up to date for registries without the referrers API."""
        tag = referrers_tag(subject_digest)
        for _ in range(5):
            got = self.get_manifest(repo, tag)
            index = json.loads(got[0]) if got else {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
            entries = _index_entries(index, f"{self.host}/{repo}:{tag}")
            if any(m.get("digest") == referrer.digest for m in entries):
                return
            index["manifests"] = entries + [referrer.to_dict()]
            self.put_manifest(repo, tag, canonical_json(index), OCI_INDEX)
            # A concurrent writer may have replaced the index between our read and write.
            check = self.get_manifest(repo, tag)
            if check and any(m.get("digest") == referrer.digest
                             for m in _index_entries(json.loads(check[0]), f"{self.host}/{repo}:{tag}")):
                return
        raise RegistryError(f"could not update referrers tag {tag} in {self.host}/{repo}", "retry the command")

    # -- blobs -------------------------------------------------------------------------
    def get_blob(self, repo: str, digest: str, limit: int = MAX_DOCUMENT) -> bytes:
        """A small blob (a config, a record) read into memory: at most limit bytes, digest-checked.
        Layers are streamed to files with download_blob instead."""
        if (repo, digest) in self._blobs:
            return self._blobs[(repo, digest)]
        resp, body = self.transport.fetch(f"/v2/{repo}/blobs/{digest}", scope=f"repository:{repo}:pull",
                                          allow=(200, 404), limit=limit, what=f"blob {digest} from {self.host}/{repo}")
        if resp.status_code == 404:
            raise NotFoundError(f"blob {digest} is missing from {self.host}/{repo}", "the registry lost content; republish it")
        if sha256_digest(body) != digest:
            raise VerificationError(f"blob {digest} from {self.host}/{repo} does not match its digest", "the registry returned other bytes than it stored")
        if len(body) <= 1 << 16 and len(self._blobs) < 4096:
            self._blobs[(repo, digest)] = body
        return body

    def push_blob(self, repo: str, data: bytes, media_type: str, probe: bool = True) -> Descriptor:
        """Push bytes as a blob unless repo has it (see upload_blob). probe=False: upload without
        asking first, for a document that is new almost every time (a record, a lease: they carry
        a time or an owner), where the question would cost a round trip and save nothing."""
        return self.upload_blob(repo, sha256_digest(data), len(data), data=data, media_type=media_type, probe=probe)

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
        except (KeyError, ValueError) as exc:
            raise RegistryError(f"registry {self.host} gave no size for blob {repo}@{digest}", "the registry is misbehaving") from exc

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> bool:
        """Cross-repository mount of a blob (same registry host); True when the registry mounted
        it (201), False when it declined (202: it opened an upload session, which is closed).
        One token covers both repositories: push,pull on the target and pull on the source."""
        scope = f"repository:{repo}:pull,push repository:{from_repo}:pull"
        resp = self._request("POST", f"/v2/{repo}/blobs/uploads/?mount={digest}&from={from_repo}", scope=scope,
                             allow=(201, 202))
        if resp.status_code == 201:
            claimed = resp.headers.get("Docker-Content-Digest")
            if claimed and claimed != digest:
                raise VerificationError(f"registry {self.host} mounted {claimed} when asked for {digest}", "the registry is inconsistent")
            self.note_transfer("mounted", repo, digest, 0)
            return True
        location = resp.headers.get("Location", "")
        if location:
            try:  # best effort: an abandoned session expires on its own
                self._request("DELETE", location, scope=f"repository:{repo}:pull,push", allow=(204, 404))
            except RegistryError:
                pass
        return False

    def upload_blob(self, repo: str, digest: str, size: int, *, path=None, data: Optional[bytes] = None,
                    media_type: str = "application/octet-stream", probe: bool = True) -> Descriptor:
        """Push a blob from a file (streamed, never read into memory) or bytes, unless repo has it.
        Monolithic POST + PUT, retried as a whole: an upload session does not survive a failed PUT.
        The registry checks the digest on PUT, and the stored size is checked afterwards."""
        desc = Descriptor(media_type, digest, size)
        have = self._have.get((repo, digest))
        if have is None and probe:
            have = self.blob_size(repo, digest)
        if have is not None:
            if have != size:
                raise VerificationError(f"registry {self.host} holds {repo}@{digest} with {have} bytes, expected {size}", "the registry is inconsistent")
            self.note_transfer("present", repo, digest, size)
            self._known(repo, digest, size)
            return desc
        scope = f"repository:{repo}:pull,push"
        uploads = f"/v2/{repo}/blobs/uploads/"
        body = _StreamBody(path=path, data=data, size=size)
        t = self.transport

        def attempt() -> bool:
            """Whether the registry confirmed the digest it stored (Docker-Content-Digest)."""
            start = t.check(t.send("POST", uploads, scope=scope), scope=scope, allow=(202,), what=f"POST {uploads}")
            location = start.headers.get("Location", "")
            if not location:
                raise RegistryError(f"registry {self.host} gave no upload location for {repo}", "the registry is misbehaving")
            location = t.url(location)
            put = f"{location}{'&' if '?' in location else '?'}digest={digest}"
            try:
                resp = t.check(t.send("PUT", put, scope=scope, headers={"Content-Type": "application/octet-stream"}, data=body),
                               scope=scope, allow=(201,), what=f"the upload of {digest[:19]} to {repo}")
            except Transient:
                if self.blob_size(repo, digest) == size:  # the PUT landed though its answer was lost
                    return True
                raise
            claimed = resp.headers.get("Docker-Content-Digest")
            if claimed and claimed != digest:
                raise VerificationError(f"registry {self.host} stored {claimed} for an upload of {digest}", "the registry is inconsistent")
            return claimed == digest

        if not t.retrying(attempt, "upload"):  # no digest in the answer: ask what it holds
            self._check_stored(repo, digest, size)
        self.note_transfer("uploaded", repo, digest, size)
        self._known(repo, digest, size)
        if data is not None and size <= 1 << 16 and len(self._blobs) < 4096 and sha256_digest(data) == digest:
            self._blobs[(repo, digest)] = bytes(data)  # read back soon (a lease, a claim): no need to ask
        return desc

    def _check_stored(self, repo: str, digest: str, size: int) -> None:
        stored = self.blob_size(repo, digest)
        if stored != size:
            raise VerificationError(f"after the upload registry {self.host} holds {repo}@{digest} with size {stored}, expected {size}",
                                    "the registry is inconsistent")

    def _known(self, repo: str, digest: str, size: int) -> None:
        if size <= 1 << 16 and len(self._have) < 4096:  # configs, records: the ones asked about again
            self._have[(repo, digest)] = size

    def download_blob(self, repo: str, digest: str, path) -> int:
        """Stream a blob into a file, checking its digest; returns its size."""
        got = self.transport.download(f"/v2/{repo}/blobs/{digest}", path, scope=f"repository:{repo}:pull")
        if got is None:
            raise NotFoundError(f"blob {digest} is missing from {self.host}/{repo}", "the registry lost content; republish it")
        written, size = got
        if written != digest:
            raise VerificationError(f"blob {digest} from {self.host}/{repo} does not match its digest",
                                    "the registry returned other bytes than it stored")
        return size

    def copy_blob(self, source: "Registry", source_repo: str, digest: str, size: int, repo: str,
                  media_type: str = "application/octet-stream") -> Descriptor:
        """Copy a blob from another registry (or a repository a mount cannot reach): streamed
        through a temporary file, checked on the way in and on the way out."""
        have = self.blob_size(repo, digest)
        if have == size:
            self.note_transfer("present", repo, digest, size)
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


    def upload_blob_chunks(self, repo: str, chunks: Iterable[Union[bytes, Pieces]],
                           media_type: str = "application/octet-stream",
                           digest_of: Optional[Callable[[], str]] = None) -> Descriptor:
        """Push a blob whose bytes are still being made (a layer while it is compressed): an upload
        session, one PATCH per chunk (with Content-Range and Content-Length, as the distribution
        spec's chunked upload asks), then the closing PUT with the sha256 computed on the way.
        The chunks are consumed once, so nothing is retried here: on any failure (RegistryError,
        VerificationError) the caller pushes the blob again from a copy with upload_blob, which
        retries. The registry checks the digest on PUT, and the stored size is checked afterwards.
        digest_of: the blob's digest, asked once the chunks are exhausted, when the writer already
        hashes what it writes (else it is computed here on the way)."""
        scope = f"repository:{repo}:pull,push"
        t = self.transport
        uploads = f"/v2/{repo}/blobs/uploads/"
        start = t.retrying(lambda: t.check(t.send("POST", uploads, scope=scope), scope=scope, allow=(202,),
                                           what=f"POST {uploads}"), "upload")
        h, offset = hashlib.sha256(), 0

        def next_location(resp: Response) -> str:
            location = resp.headers.get("Location", "")
            if not location:
                raise RegistryError(f"registry {self.host} gave no upload location for {repo}", "the registry is misbehaving")
            return t.url(location)

        location = next_location(start)
        try:
            for chunk in chunks:
                if not len(chunk):
                    continue
                if digest_of is None:
                    for part in (chunk.parts if isinstance(chunk, Pieces) else (chunk,)):
                        h.update(part)
                headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(chunk)),
                           "Content-Range": f"{offset}-{offset + len(chunk) - 1}"}
                resp = t.check(t.send("PATCH", location, scope=scope, headers=headers, data=chunk), scope=scope,
                               allow=(202,), what=f"a chunk of an upload to {repo}")
                offset += len(chunk)
                location = next_location(resp)
            digest = digest_of() if digest_of is not None else "sha256:" + h.hexdigest()
            put = f"{location}{'&' if '?' in location else '?'}digest={digest}"
            resp = t.check(t.send("PUT", put, scope=scope, headers={"Content-Type": "application/octet-stream",
                                                                     "Content-Length": "0"}, data=b""),
                           scope=scope, allow=(201,), what=f"the upload of {digest[:19]} to {repo}")
        except Transient as exc:
            raise RegistryError(f"registry {self.host} failed during a chunked upload to {repo}: {exc.reason}",
                                "retry; composer pushes the layer again in one piece") from exc
        claimed = resp.headers.get("Docker-Content-Digest")
        if claimed and claimed != digest:
            raise VerificationError(f"registry {self.host} stored {claimed} for an upload of {digest}", "the registry is inconsistent")
        if claimed != digest:  # the registry did not say what it stored: ask
            self._check_stored(repo, digest, offset)
        self.note_transfer("uploaded", repo, digest, offset)
        return Descriptor(media_type, digest, offset)

def _json(resp: Response, what: str) -> dict:
    try:
        doc = resp.json()
    except ValueError as exc:
        raise VerificationError(f"{what} is not JSON", "the registry is misbehaving") from exc
    if not isinstance(doc, dict):
        raise VerificationError(f"{what} is not a JSON object", "the registry is misbehaving")
    return doc
