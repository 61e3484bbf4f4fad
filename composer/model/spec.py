"""The spec hash: what makes two compositions the same.

It covers canonical bytes of exactly the inputs that decide the image's
content: the base image digest, the full lock (names, versions, artifact
hashes), the platform and python, and the Dockerfile template's version.
Nothing incidental (paths, times, the environment's name, dict order) enters.

Bump SPEC_VERSION whenever the document's shape or meaning changes: the
golden values in tests/unit/test_spec_golden.py then change on purpose.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Optional

from composer.model.canonical import canonical_json, sha256_digest

SPEC_VERSION = "composer.spec/v1"


def spec_document(
    *,
    base_digest: str,
    python: Mapping[str, str],
    platform: Mapping[str, str],
    packages: Iterable[Mapping],
    template: str,
    frontend: Optional[str] = None,
    conda: Optional[Mapping] = None,
) -> dict:
    doc = {
        "spec": SPEC_VERSION,
        "base": base_digest,
        "python": {"executable": python["executable"], "version": python["version"]},
        "platform": {k: platform.get(k) or "" for k in ("os", "architecture", "variant", "python_platform")},
        "lock": sorted(
            ({"name": p["name"], "version": p["version"], "hashes": sorted(p.get("hashes") or [])} for p in packages),
            key=lambda p: p["name"],
        ),
        "template": template,
    }
    if frontend:  # a non-default Dockerfile frontend may build differently; absent keeps v1 hashes stable
        doc["frontend"] = frontend
    if conda:  # a conda prefix's full lock (composer/kinds/conda.py); absent for pip-only compositions, so their v1 hashes stay
        doc["conda"] = {
            "prefix": conda["prefix"],
            "packages": sorted(
                ({**{k: p.get(k) or "" for k in ("name", "version", "build", "subdir")},
                  "hash": f"sha256:{p['sha256']}" if p.get("sha256") else f"md5:{p.get('md5') or ''}"} for p in conda["packages"]),
                key=lambda p: (p["name"], p["subdir"]),
            ),
        }
    return doc


def spec_hash(document: dict) -> str:
    return sha256_digest(canonical_json(document))
