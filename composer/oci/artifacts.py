"""OCI artifacts: a JSON document as the single layer of an image manifest with an
artifactType and an empty config, optionally with a subject (the image it describes).

Registries with the referrers API index subjects themselves; on the others (the CNCF
distribution registry 2.8 among them) the client keeps the referrers tag schema
(`sha256-<hex>`), which `Registry.add_referrer_to_tag` does.
"""

from __future__ import annotations

import json
from typing import Optional, Sequence, Tuple

from composer.errors import VerificationError
from composer.model.canonical import canonical_json, sha256_digest
from composer.oci.client import EMPTY_JSON, OCI_EMPTY, OCI_MANIFEST, Descriptor, Registry

TITLE = "org.opencontainers.image.title"
_EMPTY_DESC = Descriptor(OCI_EMPTY, sha256_digest(EMPTY_JSON), len(EMPTY_JSON))


def artifact_manifest(artifact_type: str, blob: Descriptor, annotations: dict, subject: Optional[Descriptor] = None) -> bytes:
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


def push_artifact(reg: Registry, repo: str, document: dict, artifact_type: str, annotations: dict,
                  *, subject: Optional[Descriptor] = None, tag: Optional[str] = None,
                  more_tags: Sequence[str] = ()) -> Descriptor:
    """Push document as an artifact (blobs first, then the manifest at tag and more_tags, then
    the referrers tag when the registry has no referrers API); returns the manifest's descriptor."""
    body = canonical_json(document)
    blob = reg.push_blob(repo, body, artifact_type, probe=False)  # documents carry a time or an owner: new
    blob = Descriptor(blob.media_type, blob.digest, blob.size, annotations={TITLE: "record.json"})
    reg.push_blob(repo, EMPTY_JSON, OCI_EMPTY)
    manifest = artifact_manifest(artifact_type, blob, annotations, subject)
    desc, subject_processed = reg.put_manifest(repo, tag or sha256_digest(manifest), manifest, OCI_MANIFEST)
    for extra in more_tags:
        reg.put_manifest(repo, extra, manifest, OCI_MANIFEST)
    desc = Descriptor(desc.media_type, desc.digest, desc.size, artifact_type=artifact_type, annotations=annotations)
    if subject is not None and not subject_processed:
        reg.add_referrer_to_tag(repo, subject.digest, desc)
    return desc


def read_artifact(reg: Registry, repo: str, ref: str, artifact_type: str) -> Optional[Tuple[object, Descriptor, dict]]:
    """Fetch an artifact and its document, digest-checked: (document, manifest descriptor, manifest),
    or None when the registry says 404. Something else under that reference is a VerificationError."""
    got = reg.get_manifest(repo, ref)
    if got is None:
        return None
    body, desc = got
    manifest = json.loads(body)
    layers = manifest.get("layers") if isinstance(manifest, dict) else None
    if not isinstance(manifest, dict) or manifest.get("artifactType") != artifact_type or not layers \
            or not isinstance(layers[0], dict):
        kind = manifest.get("artifactType") or manifest.get("mediaType") if isinstance(manifest, dict) else "?"
        raise VerificationError(
            f"{reg.host}/{repo}:{ref} is not a composer record ({kind})",
            "something else was pushed under composer's name; remove it or use another registry prefix",
        )
    data = reg.get_blob(repo, Descriptor.from_dict(layers[0]).digest)
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise VerificationError(f"record {repo}@{desc.digest} is not JSON", "the registry content is corrupt") from exc
    return document, desc, manifest


def subject_of(manifest: dict) -> Optional[str]:
    subject = manifest.get("subject")
    return subject.get("digest") if isinstance(subject, dict) else None
