"""`build --from-record FILE`: rebuild a composition from its build record alone (a record
kept in git, an export, or `composer show NAME --json` saved somewhere).

The record holds everything the composition is: the base image's digest, the python, the
platform and the full lock with artifact hashes. Nothing is resolved again: the lock is
taken as recorded, the spec hash recomputed from it must be the recorded one, and the
image is built and published the way `build` does (composer/pipeline.py,
composer/publish/). With the daemonless builder the layer and the image are the same bytes
as the first time, so the image digest is the recorded one, as long as the base image and
the locked artifacts can still be fetched (and COMPOSER_GZIP_LEVEL, the layer compression
and SOURCE_DATE_EPOCH are what they were).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from composer.dockerfile import load_template
from composer.errors import UsageError, VerificationError
from composer.kinds.base import Composition
from composer.kinds.pip import Lock, PipKind
from composer.model.records import BuildRecord, Distribution, RunRecord
from composer.model.refs import parse_image_ref
from composer.model.spec import spec_document, spec_hash
from composer.oci import connect
from composer.pipeline import build_and_record
from composer.publish import Provenance, publish
from composer.settings import Settings
from composer.store import envs_repository, read_run_record, runs_repository
from composer.version import __version__


def read_record_file(path: str) -> BuildRecord:
    """A build record from a file: the record itself, or `composer show NAME --json`'s output."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UsageError(f"no build record file {path}", "save one with: composer show NAME --json > FILE") from exc
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path} is not a JSON build record ({exc})", "save one with: composer show NAME --json > FILE") from exc
    if isinstance(data, dict) and "schema" not in data and isinstance(data.get("record"), dict):
        data = data["record"]  # composer show --json
    return BuildRecord.from_json(data, f"build record {path}")


def upstream_of(settings: Settings, record: BuildRecord) -> RunRecord:
    """The upstream run record the record names, if this registry has it (by digest); else one
    made from the record: its python, platform and base, the lock's upstream pins."""
    got = read_run_record(connect(settings), runs_repository(settings), record.upstream_record)
    if got is not None and got[0].image.digest == record.base.digest:
        return got[0]
    added = set(record.lock.added)
    return RunRecord(
        run=record.upstream_run, image=record.base, python=record.python, platform=record.platform,
        distributions=tuple(Distribution(p.name, p.version) for p in record.lock.packages if p.name not in added),
        distributions_source="requirements", created=record.created, composer_version=record.composer_version,
    )


def build_from_record(settings: Settings, path: str, name: Optional[str] = None, update: bool = False,
                      run_id: Optional[str] = None) -> dict:
    settings.require_registry()
    record = read_record_file(path)
    if record.conda is not None:
        raise UsageError(f"{path} records a conda composition; --from-record rebuilds pip compositions only",
                         "rebuild it with composer build --upstream-run ... --extra environment.yml")
    packages = [{"name": p.name, "version": p.version, "hashes": list(p.hashes)} for p in record.lock.packages]
    added = set(record.lock.added)
    lock = Lock(requirements=list(record.lock.requirements), packages=packages,
                added=[p for p in packages if p["name"] in added])
    _, template = load_template(PipKind.name)
    spec = spec_hash(spec_document(base_digest=record.base.digest, python=record.python.to_json(),
                                   platform=record.platform.to_json(), packages=packages, template=template,
                                   frontend=settings.dockerfile_syntax))
    if spec != record.spec_hash:
        raise VerificationError(
            f"the record's spec hash {record.spec_hash[:19]} is not what its contents give here ({spec[:19]})",
            "the record was changed, or was made by a composer with another Dockerfile template or --dockerfile-syntax",
        )
    upstream = upstream_of(settings, record)
    comp = Composition(kind=PipKind(), requirements=tuple(record.lock.requirements), lock=lock, extra=None,
                       template=template, spec_hash=spec)
    provenance = Provenance(upstream_run=record.upstream_run, upstream_record=record.upstream_record, base=record.base,
                            inputs=dict(record.inputs))
    name = name or record.name
    base = parse_image_ref(record.base.pinned)
    result = publish(
        settings, connect(settings), envs_repository(settings), name=name, spec=spec, update=update, run_id=run_id,
        provenance=provenance, upstream=upstream, comp=comp,
        build_it=lambda: build_and_record(settings, name, comp, base, upstream, provenance,
                                          image_version=record.composer_version or __version__),
    )
    return {**result.to_json(), "from_record": path, "recorded_digest": record.image.digest,
            "identical": result.digest == record.image.digest}

