"""Where composer's records live in the registry, written and read back verified.

    REGISTRY/PREFIX/runs   run records, tag run-<slug>-<hash of the run id>
    REGISTRY/PREFIX/envs   composed images, their build records (artifacts whose subject is
                           the image), spec tags, histories, names

Every record read here goes through its strict `from_json` (composer/model/records.py)
before anything uses it.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, List, Optional, Tuple

from composer.errors import VerificationError
from composer.model.records import (
    ANNOTATION_CREATED, ANNOTATION_RUN, BUILD_RECORD_TYPE, RUN_RECORD_TYPE, BuildRecord, RunRecord, annotations_for,
)
from composer.model.canonical import digest_hex
from composer.model.refs import run_tag
from composer.oci.artifacts import push_artifact, read_artifact, subject_of
from composer.oci.client import Descriptor, Registry
from composer.settings import Settings

ENVS_REPOSITORY = "envs"
RUNS_REPOSITORY = "runs"


def envs_repository(settings: Settings) -> str:
    return settings.repository(ENVS_REPOSITORY)


def runs_repository(settings: Settings) -> str:
    return settings.repository(RUNS_REPOSITORY)


# -- run records --------------------------------------------------------------------------------
def read_run_record(reg: Registry, repo: str, ref: str) -> Optional[Tuple[RunRecord, str]]:
    """The run record at ref (a run-... tag or a digest) and its manifest digest, or None (404)."""
    got = read_artifact(reg, repo, ref, RUN_RECORD_TYPE)
    if got is None:
        return None
    document, desc, _ = got
    return RunRecord.from_json(document, f"run record {repo}@{desc.digest[:19]}"), desc.digest


def load_run_record(reg: Registry, repo: str, run_id: str) -> Optional[Tuple[RunRecord, str]]:
    """The record stored for run_id, checked to be about run_id."""
    got = read_run_record(reg, repo, run_tag(run_id))
    if got is not None and got[0].run != run_id:
        raise VerificationError(f"the record stored for run {run_id!r} is for {got[0].run!r}", "re-record the run")
    return got


def write_run_record(reg: Registry, repo: str, record: RunRecord) -> str:
    desc = push_artifact(reg, repo, record.to_json(), RUN_RECORD_TYPE,
                         {ANNOTATION_RUN: record.run, ANNOTATION_CREATED: record.created}, tag=run_tag(record.run))
    return desc.digest


# -- build records ------------------------------------------------------------------------------
# The referrers index (`sha256-<image hex>`) is one document many publishers rewrite (read,
# add, write): a concurrent writer can drop an entry. So every build record is also stored at
# tags of its own, which only publishers of that name (or the spec's builder) write:
#     sha256-<image hex>-<16 hex of sha256("name:" NAME)>   the name's record for that image
#     sha256-<image hex>-<16 hex of sha256("spec:" SPEC)>   the builder's record of the spec
# Readers that know the name or spec read these too: the shared index is a view, not the truth.
def record_tag(image_digest: str, key: str) -> str:
    """key: name:NAME or spec:SPEC (names can never start with sha256-: the tag is composer's)."""
    return f"sha256-{digest_hex(image_digest)}-{hashlib.sha256(key.encode('utf-8')).hexdigest()[:16]}"


def name_key(name: str) -> str:
    return f"name:{name}"


def spec_key(spec: str) -> str:
    return f"spec:{spec}"


def _verified_record(reg: Registry, repo: str, ref: str, image_digest: str) -> Optional[Tuple[BuildRecord, Descriptor]]:
    got = read_artifact(reg, repo, ref, BUILD_RECORD_TYPE)
    if got is None:
        return None  # listed but gone (deleted), or never written: not a record
    document, mdesc, manifest = got
    record = BuildRecord.from_json(document, f"build record {repo}@{mdesc.digest[:19]}")
    if subject_of(manifest) != image_digest or record.image.digest != image_digest:
        raise VerificationError(
            f"record {repo}@{mdesc.digest} does not describe {image_digest}",
            "the referrers index is inconsistent; rebuild the environment",
        )
    # As write_build_record lists it (artifact type, annotations from the checked record), so it
    # can be listed again.
    return record, Descriptor(mdesc.media_type, mdesc.digest, mdesc.size, artifact_type=BUILD_RECORD_TYPE,
                              annotations=dict(annotations_for(record)))


def build_records_of(reg: Registry, repo: str, image_digest: str, keys: Iterable[str] = ()) -> List[Tuple[BuildRecord, Descriptor]]:
    """Build records whose subject is image_digest, each verified to describe it: those the
    referrers index lists, then those at the record tags of keys (name_key / spec_key) that
    the index may have lost to a concurrent writer."""
    out: List[Tuple[BuildRecord, Descriptor]] = []
    seen = set()
    for desc in reg.referrers(repo, image_digest, BUILD_RECORD_TYPE):
        got = _verified_record(reg, repo, desc.digest, image_digest)
        if got is not None and got[1].digest not in seen:
            seen.add(got[1].digest)
            out.append(got)
    for key in keys:
        got = _verified_record(reg, repo, record_tag(image_digest, key), image_digest)
        if got is not None and got[1].digest not in seen:
            seen.add(got[1].digest)
            out.append(got)
    return out


def newest_record(records: List[Tuple[BuildRecord, Descriptor]]) -> Tuple[BuildRecord, Descriptor]:
    """The record created last; on a tie (the same microsecond), the one listed last, i.e. added
    to the referrers index last."""
    return max(enumerate(records), key=lambda item: (item[1][0].created, item[0]))[1]


def write_build_record(reg: Registry, repo: str, record: BuildRecord, image: Descriptor,
                       keys: Iterable[str] = ()) -> Descriptor:
    """Push the record at its own tags (one per key: name_key, and spec_key for the builder),
    then list it in the shared referrers index (read back and re-added until it holds)."""
    tags = [record_tag(image.digest, k) for k in keys]
    return push_artifact(reg, repo, record.to_json(), BUILD_RECORD_TYPE, dict(annotations_for(record)), subject=image,
                         tag=tags[0] if tags else None, more_tags=tags[1:])


def relist_record(reg: Registry, repo: str, image: Descriptor, record: Descriptor) -> None:
    """Put a record back into the shared referrers index if a concurrent writer dropped it
    (best effort: readers that know the name find it at its own tag anyway)."""
    if not any(d.digest == record.digest for d in reg.referrers(repo, image.digest, BUILD_RECORD_TYPE)):
        reg.add_referrer_to_tag(repo, image.digest, record)
