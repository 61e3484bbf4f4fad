"""The two record formats composer writes, and how they are stored in a registry.

A *run record* (composer.run-record/v1) says what environment run R ran in:
the image digest, its python, its platform and the distributions installed.
It lives at REGISTRY/PREFIX/runs:run-<slug>-<hash of R>, so any machine finds it.

A *build record* (composer.record/v1), the "digest manifest", says what one
composition is: image digest, base digest, upstream run and record digest,
the full lock, the spec hash, the builder and the Dockerfile. It is an OCI
artifact whose subject is the composed image, found through the referrers
API or, on registries without it, the referrers tag schema (sha256-<hex>).

Both are canonical JSON blobs inside an OCI image manifest with an
artifactType, so `oras` and other OCI tools can list and pull them.
README.md ("Record format") documents every field.
"""

from __future__ import annotations

import datetime as _dt
import json
from typing import Optional, Tuple

from .canonical import canonical_json, sha256_digest
from .errors import NotFoundError, VerificationError
from .registry import EMPTY_JSON, OCI_EMPTY, OCI_MANIFEST, Descriptor, Registry

RUN_RECORD_SCHEMA = "composer.run-record/v1"
BUILD_RECORD_SCHEMA = "composer.record/v1"
RUN_RECORD_TYPE = "application/vnd.composer.run-record.v1+json"
BUILD_RECORD_TYPE = "application/vnd.composer.record.v1+json"

ANNOTATION_NAME = "dev.composer.name"
ANNOTATION_SPEC = "dev.composer.spec-hash"
ANNOTATION_RUN = "dev.composer.run"
ANNOTATION_CREATED = "org.opencontainers.image.created"


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def artifact_manifest(
    artifact_type: str, blob: Descriptor, annotations: dict, subject: Optional[Descriptor] = None
) -> bytes:
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": OCI_EMPTY, "digest": _EMPTY_DESC.digest, "size": _EMPTY_DESC.size},
        "layers": [blob.to_dict()],
        "annotations": annotations,
    }
    if subject is not None:
        manifest["subject"] = {"mediaType": subject.media_type, "digest": subject.digest, "size": subject.size}
    return canonical_json(manifest)


_EMPTY_DESC = Descriptor(OCI_EMPTY, sha256_digest(EMPTY_JSON), len(EMPTY_JSON))


def push_record(
    reg: Registry, repo: str, record: dict, artifact_type: str, annotations: dict,
    *, subject: Optional[Descriptor] = None, tag: Optional[str] = None,
) -> Descriptor:
    """Push record as an artifact (blobs first, then the manifest) and return the manifest's descriptor."""
    body = canonical_json(record)
    blob = reg.push_blob(repo, body, artifact_type)
    blob = Descriptor(blob.media_type, blob.digest, blob.size, annotations={"org.opencontainers.image.title": "record.json"})
    reg.push_blob(repo, EMPTY_JSON, OCI_EMPTY)
    manifest = artifact_manifest(artifact_type, blob, annotations, subject)
    ref = tag or sha256_digest(manifest)
    desc, subject_processed = reg.put_manifest(repo, ref, manifest, OCI_MANIFEST)
    desc = Descriptor(desc.media_type, desc.digest, desc.size, artifact_type=artifact_type, annotations=annotations)
    if subject is not None and not subject_processed:
        reg.add_referrer_to_tag(repo, subject.digest, desc)
    return desc


def read_record(reg: Registry, repo: str, ref: str, artifact_type: str) -> Optional[Tuple[dict, Descriptor, dict]]:
    """Fetch and verify a record artifact: (record, manifest descriptor, manifest) or None if absent."""
    got = reg.get_manifest(repo, ref)
    if got is None:
        return None
    body, desc = got
    manifest = json.loads(body)
    if manifest.get("artifactType") != artifact_type or not manifest.get("layers"):
        raise VerificationError(
            f"{reg.host}/{repo}:{ref} is not a composer record ({manifest.get('artifactType') or manifest.get('mediaType')})",
            "something else was pushed under composer's name; remove it or use another registry prefix",
        )
    layer = manifest["layers"][0]
    data = reg.get_blob(repo, layer["digest"])
    try:
        record = json.loads(data)
    except ValueError:
        raise VerificationError(f"record {repo}@{desc.digest} is not JSON", "the registry content is corrupt")
    return record, desc, manifest


def find_build_records(reg: Registry, repo: str, image_digest: str) -> list:
    """Build records whose subject is image_digest, verified: [(record, descriptor)]."""
    out = []
    for desc in reg.referrers(repo, image_digest, BUILD_RECORD_TYPE):
        got = read_record(reg, repo, desc.digest, BUILD_RECORD_TYPE)
        if got is None:
            continue  # listed but gone (deleted): not a record
        record, mdesc, manifest = got
        subject = (manifest.get("subject") or {}).get("digest")
        if subject != image_digest or (record.get("image") or {}).get("digest") != image_digest:
            raise VerificationError(
                f"record {repo}@{mdesc.digest} does not describe {image_digest}",
                "the referrers index is inconsistent; rebuild the environment",
            )
        out.append((record, mdesc))
    return out


def require(record: Optional[dict], what: str, hint: str) -> dict:
    if record is None:
        raise NotFoundError(what, hint)
    return record
