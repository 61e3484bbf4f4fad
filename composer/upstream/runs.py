"""Finding an upstream run's environment.

`record_run` registers the image a run ran in: it pins the image to a digest,
reads its platform from the registry, looks inside it for python and its
installed distributions (composer/upstream/probe.py), and stores a run record.

`load_run` finds a run's environment again from any machine, asking a chain of
run sources in order: composer's own run records first, then whatever sources
integrations registered (Metaflow's task metadata: composer/metaflow_link.py).
The core never imports an integration; integrations register into `SOURCES`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional, Tuple

from composer.errors import NotFoundError, UsageError, VerificationError
from composer.model.records import RUN_RECORD_SCHEMA, Distribution, Image, RunRecord, utc_now
from composer.history import append_version, read_history
from composer.model.refs import ImageRef, run_tag
from composer.oci import connect
from composer.requirements import canonical_name, parse_pinned
from composer.settings import Settings
from composer.store import load_run_record, runs_repository, write_run_record
from composer.upstream import conda_meta
from composer.upstream.probe import pin_image, probe_image, python_platform
from composer.version import __version__

# A run source answers (record, record digest) for a run id it knows, None for one it does not
# know, and raises for one it knows but cannot use.
RunSource = Callable[[Settings, str], Optional[Tuple[RunRecord, str]]]
# A step qualifier turns (run, step) into the id of that step's environment, or None when
# run is not one of its runs (e.g. Metaflow: Flow/Run + train -> Flow/Run/train).
StepQualifier = Callable[[str, str], Optional[str]]

SOURCES: List[RunSource] = []
STEP_QUALIFIERS: List[StepQualifier] = []


def register_source(source: RunSource, qualifier: Optional[StepQualifier] = None) -> None:
    if source not in SOURCES:
        SOURCES.append(source)
    if qualifier is not None and qualifier not in STEP_QUALIFIERS:
        STEP_QUALIFIERS.append(qualifier)


def with_step(run_id: str, step: Optional[str]) -> str:
    """The upstream id for --upstream-step: the step of run_id whose environment to use."""
    if not step:
        return run_id
    for qualify in STEP_QUALIFIERS:
        qualified = qualify(run_id, step)
        if qualified is not None:
            return qualified
    raise UsageError(f"--upstream-step needs a run whose steps have environments (a Metaflow run Flow/Run), not {run_id!r}",
                     "pass --upstream-run FLOW/RUN_ID, or drop --upstream-step")


def _own_records(settings: Settings, run_id: str) -> Optional[Tuple[RunRecord, str]]:
    return load_run_record(connect(settings), runs_repository(settings), run_id)


def load_run(settings: Settings, run_id: str, upstream_step: Optional[str] = None) -> Tuple[RunRecord, str]:
    """The run record for run_id (or its step) and the record's digest; a clear error when there is none."""
    run_id = with_step(run_id, upstream_step)
    for source in [_own_records, *SOURCES]:
        found = source(settings, run_id)
        if found is not None:
            return found
    raise NotFoundError(
        f"no environment is recorded for run {run_id!r} in {settings.registry}",
        f"record one with: python -m composer record --run {run_id} --image REGISTRY/REPO:TAG",
    )


def build_run_record(run_id: str, image: ImageRef, config: dict, probe: dict, distributions: list, source: str) -> RunRecord:
    """The run record for what the probe saw in image; validated like any record read from a registry."""
    arch = config.get("architecture") or ""
    document = {
        "schema": RUN_RECORD_SCHEMA,
        "run": run_id,
        "image": {"repository": image.name, "digest": image.digest, "tag": image.tag},
        "python": {k: probe.get(k) for k in ("executable", "version", "implementation", "prefix", "kind", "site_packages",
                                             "externally_managed")},
        "platform": {
            "os": config.get("os") or "linux", "architecture": arch, "variant": config.get("variant"),
            "libc": probe.get("libc") or None, "libc_version": probe.get("libc_version") or None,
            "python_platform": python_platform(arch, probe),
        },
        "distributions": sorted(({"name": canonical_name(str(d.get("name"))), "version": d.get("version")}
                                 for d in distributions if isinstance(d, dict)), key=lambda d: d["name"]),
        "distributions_source": source,
        "composer_version": __version__,
        "created": utc_now(),
    }
    if probe.get("conda"):
        try:
            document["conda"] = conda_meta.run_record_section(probe["conda"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # the image's word, malformed
            raise VerificationError(f"the environment of image {image.pinned()}: its conda prefix report is malformed "
                                    f"({type(exc).__name__})", "check the image; re-record the run with another one") from exc
    return RunRecord.from_json(document, f"the environment of image {image.pinned()}")


def record_run(settings: Settings, run_id: str, image_text: str, requirements: Optional[str] = None,
               update: bool = False) -> Tuple[RunRecord, str]:
    """Record the environment run_id ran in. A run already recorded with another image is only
    re-recorded with update=True, and its previous record stays listed in the run's history."""
    if not run_id.strip():
        raise UsageError("the run id is empty", "pass --run RUN_ID")
    settings.require_registry()
    reg, repo = connect(settings), runs_repository(settings)
    before = load_run_record(reg, repo, run_id)
    # An explicit conda list (@EXPLICIT) gives the conda packages; distributions then come from the image.
    explicit = None
    if requirements and conda_meta.is_explicit_file(Path(requirements)):
        explicit, requirements = conda_meta.parse_explicit(Path(requirements)), None
    pinned_reqs = parse_pinned(Path(requirements)) if requirements else None
    image, config = pin_image(settings, image_text)
    probe = probe_image(image, config)
    if explicit is not None:
        probe = conda_meta.with_explicit_packages(probe, explicit, image.pinned())
    dists = pinned_reqs if pinned_reqs is not None else probe.get("distributions") or []
    record = build_run_record(run_id, image, config, probe, dists, "requirements" if pinned_reqs is not None else "image")
    if before is not None and before[0].image.digest != record.image.digest:
        if not update:
            raise UsageError(
                f"run {run_id!r} is already recorded with image {before[0].image.pinned}",
                f"pass --update to record it with {record.image.pinned}; the old record stays in composer history --run {run_id}",
            )
    if before is not None:
        keep_run_version(reg, repo, run_id, before[1], "replaced")
    digest = write_run_record(reg, repo, record)
    keep_run_version(reg, repo, run_id, digest, "recorded" if before is None else "re-recorded")
    return record, digest


def keep_run_version(reg, repo: str, run_id: str, record_digest: str, reason: str) -> None:
    """Every record a run id has had stays listed (and so kept) in hist-<run tag>."""
    desc = reg.head_manifest(repo, record_digest)
    if desc is not None:
        append_version(reg, repo, run_tag(run_id), desc, record_digest, "", reason)


def run_history(settings: Settings, run_id: str) -> list:
    versions = read_history(connect(settings), runs_repository(settings), run_tag(run_id))
    if not versions:
        raise NotFoundError(f"no record of run {run_id!r} in {settings.registry}", "see composer record --help")
    return [v.to_json() for v in versions]


def composed_run_record(run_id: str, image: Image, upstream: RunRecord, name: str, spec_hash: str, created: str,
                        added: List[Distribution], conda: Optional[dict] = None) -> RunRecord:
    """The run record of a composed environment, so it can be another build's upstream: the
    upstream's python and platform, its distributions plus what the composition added."""
    return RunRecord(
        run=run_id, image=image, python=upstream.python, platform=upstream.platform,
        distributions=upstream.with_distributions(added).distributions, distributions_source="composed",
        created=created, composer_version=__version__, composed={"name": name, "spec_hash": spec_hash}, conda=conda,
    )
