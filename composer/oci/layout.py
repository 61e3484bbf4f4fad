"""The OCI image layout (image-spec `image-layout.md`) as one tar archive: `oci-layout`,
`index.json` and `blobs/sha256/<hex>`, which independent tools read (`skopeo inspect
oci-archive:FILE:REF`).

`LayoutWriter` streams blobs into the tar as they come (a blob is written once, however
often it is added) and writes `index.json` last. `LayoutReader` reads one back without
extracting it: every member is looked up by the path its digest gives, never by a name
the archive chose, and every blob is checked against its digest when it is read. An
archive is outside input: a wrong digest, a missing blob or a malformed index is a
VerificationError (exit 7).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import IO, Dict, List, Optional

from composer.errors import NotFoundError, UsageError, VerificationError
from composer.model.canonical import canonical_json, sha256_digest
from composer.model.refs import DIGEST_RE
from composer.oci.client import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST

LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
LAYOUT_VERSION = {"imageLayoutVersion": "1.0.0"}
REF_NAME = "org.opencontainers.image.ref.name"
_MTIME = 0  # members carry no time: the same content gives the same archive


def blob_path(digest: str) -> str:
    if not DIGEST_RE.match(digest):
        raise VerificationError(f"{digest[:80]!r} is not a sha256 digest", "the archive is malformed")
    return "blobs/sha256/" + digest.split(":", 1)[1]


_OCI_TYPES = {
    "application/vnd.docker.container.image.v1+json": "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar": "application/vnd.oci.image.layer.v1.tar",
}


def oci_form(body: bytes, media_type: str) -> Optional[bytes]:
    """An OCI image manifest for a Docker schema 2 one: the same config and layer blobs under
    OCI media types (what `skopeo copy docker://... oci:...` writes). Tools that read OCI
    layouts (skopeo 1.9 among them) only open OCI manifests. None when there is nothing to
    convert (already OCI) or it cannot be (a foreign or unknown layer type)."""
    if media_type != DOCKER_MANIFEST:
        return None
    doc = json.loads(body)
    blobs = [doc.get("config") or {}, *(doc.get("layers") or [])]
    if any(b.get("mediaType") not in _OCI_TYPES or b.get("urls") for b in blobs):
        return None
    convert = lambda b: {**b, "mediaType": _OCI_TYPES[b["mediaType"]]}  # noqa: E731
    return canonical_json({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": convert(doc["config"]),
                           "layers": [convert(l) for l in doc["layers"]]})


def _info(name: str, size: int, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 0 if directory else size
    info.mtime = _MTIME
    info.mode = 0o755 if directory else 0o644
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.uname = info.gname = ""
    return info


class LayoutWriter:
    """Write an OCI image layout as a tar; use as a context manager. Nothing is left at `path`
    unless `close()` finished: the archive is written next to it and renamed at the end."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.tar = tarfile.open(self.partial, "w", format=tarfile.PAX_FORMAT)
        self.blobs: Dict[str, int] = {}
        for d in ("blobs", "blobs/sha256"):
            self.tar.addfile(_info(d, 0, directory=True))
        self._file(LAYOUT_FILE, canonical_json(LAYOUT_VERSION))

    def _file(self, name: str, data: bytes) -> None:
        self.tar.addfile(_info(name, len(data)), io.BytesIO(data))

    def has(self, digest: str) -> bool:
        return digest in self.blobs

    def add_bytes(self, data: bytes) -> str:
        digest = sha256_digest(data)
        if digest not in self.blobs:
            self._file(blob_path(digest), data)
            self.blobs[digest] = len(data)
        return digest

    def add_file(self, digest: str, path: Path) -> None:
        """A blob already checked against digest (Registry.download_blob checks it)."""
        if digest in self.blobs:
            return
        size = Path(path).stat().st_size
        with open(path, "rb") as f:
            self.tar.addfile(_info(blob_path(digest), size), f)
        self.blobs[digest] = size

    def close(self, manifests: List[dict], annotations: Dict[str, str]) -> None:
        """Write index.json (the descriptors tools start from) and move the archive into place."""
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests, "annotations": annotations}
        self._file(INDEX_FILE, canonical_json(index))
        self.tar.close()
        self.partial.replace(self.path)

    def abort(self) -> None:
        self.tar.close()
        self.partial.unlink(missing_ok=True)


class LayoutReader:
    """Read an OCI image-layout tar without extracting it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.tar = tarfile.open(self.path, "r:")
        except FileNotFoundError as exc:
            raise NotFoundError(f"no archive at {self.path}", "give the file composer export wrote") from exc
        except (tarfile.TarError, OSError) as exc:
            raise UsageError(f"{self.path} is not a tar archive ({exc})", "give the file composer export wrote") from exc
        self.members = {m.name.lstrip("./") if m.name.startswith("./") else m.name: m
                        for m in self.tar.getmembers() if m.isfile()}
        layout = self._json(LAYOUT_FILE)
        if not isinstance(layout, dict) or layout.get("imageLayoutVersion") != "1.0.0":
            raise VerificationError(f"{self.path} is not an OCI image layout (oci-layout: {str(layout)[:60]})",
                                    "give the file composer export wrote")
        index = self._json(INDEX_FILE)
        if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
            raise VerificationError(f"{self.path}: index.json is not an OCI index", "the archive is malformed")
        self.index = index

    def _member(self, name: str) -> tarfile.TarInfo:
        member = self.members.get(name)
        if member is None:
            raise VerificationError(f"{self.path} has no {name}", "the archive is incomplete; export it again")
        return member

    def _json(self, name: str) -> object:
        f = self.tar.extractfile(self._member(name))
        assert f is not None
        try:
            return json.loads(f.read())
        except ValueError as exc:
            raise VerificationError(f"{self.path}: {name} is not JSON", "the archive is malformed") from exc

    @property
    def annotations(self) -> Dict[str, str]:
        a = self.index.get("annotations")
        return {str(k): str(v) for k, v in a.items()} if isinstance(a, dict) else {}

    def has(self, digest: str) -> bool:
        return blob_path(digest) in self.members

    def size(self, digest: str) -> Optional[int]:
        member = self.members.get(blob_path(digest))
        return member.size if member is not None else None

    def read(self, digest: str) -> bytes:
        """A (small) blob's bytes, checked against its digest."""
        f = self.tar.extractfile(self._member(blob_path(digest)))
        assert f is not None
        data = f.read()
        if sha256_digest(data) != digest:
            raise VerificationError(f"blob {digest} in {self.path} does not match its digest", "the archive is corrupt")
        return data

    def extract(self, digest: str, out: IO[bytes]) -> int:
        """Stream a blob into out, checking its digest; returns its size."""
        f = self.tar.extractfile(self._member(blob_path(digest)))
        assert f is not None
        h = hashlib.sha256()
        size = 0
        while True:
            block = f.read(1 << 20)
            if not block:
                break
            h.update(block)
            out.write(block)
            size += len(block)
        if "sha256:" + h.hexdigest() != digest:
            raise VerificationError(f"blob {digest} in {self.path} does not match its digest", "the archive is corrupt")
        return size

    def close(self) -> None:
        self.tar.close()
