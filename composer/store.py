"""Where composer's records live in the registry, written and read back verified.

    REGISTRY/PREFIX/runs   run records, tag run-<slug>-<hash of the run id>
    REGISTRY/PREFIX/envs   composed images, their build records (artifacts whose subject is
                           the image), spec tags, histories, names

Every record read here goes through its strict `from_json` (composer/model/records.py)
before anything uses it.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

from composer.errors import VerificationError
from composer.model.records import (
    ANNOTATION_CREATED, ANNOTATION_RUN, BUILD_RECORD_TYPE, RUN_RECORD_TYPE, BuildRecord, RunRecord, annotations_for,
)
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
def build_records_of(reg: Registry, repo: str, image_digest: str) -> List[Tuple[BuildRecord, Descriptor]]:
    """Build records whose subject is image_digest, each verified to describe it."""
    out = []
    for desc in reg.referrers(repo, image_digest, BUILD_RECORD_TYPE):
        got = read_artifact(reg, repo, desc.digest, BUILD_RECORD_TYPE)
        if got is None:
            continue  # listed but gone (deleted): not a record
        document, mdesc, manifest = got
        record = BuildRecord.from_json(document, f"build record {repo}@{mdesc.digest[:19]}")
        if subject_of(manifest) != image_digest or record.image.digest != image_digest:
            raise VerificationError(
                f"record {repo}@{mdesc.digest} does not describe {image_digest}",
                "the referrers index is inconsistent; rebuild the environment",
            )
        out.append((record, mdesc))
    return out


def newest_record(records: List[Tuple[BuildRecord, Descriptor]]) -> Tuple[BuildRecord, Descriptor]:
    """The record created last; on a tie (the same microsecond), the one listed last, i.e. added
    to the referrers index last."""
    return max(enumerate(records), key=lambda item: (item[1][0].created, item[0]))[1]


def write_build_record(reg: Registry, repo: str, record: BuildRecord, image: Descriptor) -> Descriptor:
    return push_artifact(reg, repo, record.to_json(), BUILD_RECORD_TYPE, dict(annotations_for(record)), subject=image)
