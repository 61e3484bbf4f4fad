"""The main job, one way from inputs to a published image:

    extras + upstream environment -> lock -> composition (spec hash, Dockerfile)
        -> cache / lease -> builder -> image -> build record -> tags and history -> result

Order of work, chosen so that bad input fails before anything is written and a crash
never leaves a name pointing at an unrecorded image:
  1. read the extras, find the upstream run's record, lock, compute the spec hash;
  2. ask the registry for an image with that spec hash (a verified record is required;
     any registry error ends the command, it is never a cache hit);
  3. build and push under the unique tag NAME-<spec hash prefix> (composer/builders/);
  4. push the build record, then the spec tag, the run records, the history and the name
     tag, last (composer/publish/).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from composer import kinds, state
from composer.builders.base import BuildJob
from composer.dockerfile import load_template
from composer.errors import LockConflictError
from composer.kinds import Composition, EnvironmentKind
from composer.kinds.pip import uv_binary
from composer.model.canonical import canonical_json, sha256_digest
from composer.model.records import BuildRecord, Image, Lock as RecordLock, LockedPackage, RunRecord, utc_now
from composer.model.refs import ImageRef, parse_image_ref, render_name
from composer.model.spec import SPEC_VERSION, spec_document, spec_hash
from composer.oci import connect
from composer.publish import BuildResult, Provenance, cached_image, publish, unique_tag
from composer.publish.lease import confirm_ownership
from composer.requirements import canonical_name
from composer.settings import Settings
from composer.store import envs_repository
from composer.upstream.probe import pin_image, probe_image
from composer.upstream.runs import load_run, with_step
from composer.version import __version__

DEFAULT_NAME = "compose-{upstream_run}"


Extras = Union[str, Path, Sequence[str]]  # a requirements.txt / pyproject.toml / environment.yml, or requirement strings


@dataclass(frozen=True)
class Prepared:
    """Everything known before the registry is asked whether the composition exists."""

    name: str
    upstream: RunRecord
    base: ImageRef
    comp: Composition
    provenance: Provenance


def prepare(settings: Settings, upstream_run: str, extra: Extras, name: Optional[str] = None,
            variables: Optional[Dict[str, str]] = None, run_id: Optional[str] = None,
            base_update: Optional[str] = None, upstream_step: Optional[str] = None) -> Prepared:
    """Steps 1 of the module's docstring: read, find, lock, hash. Nothing is written to the registry."""
    settings.require_registry()
    upstream_run = with_step(upstream_run, upstream_step)
    path = Path(extra) if isinstance(extra, (str, Path)) else None
    requirements = kinds.read_extras(extra)
    values = {"upstream_run": upstream_run, **({"run_id": run_id} if run_id else {}), **(variables or {})}
    name = render_name(name or DEFAULT_NAME, values)

    upstream, upstream_record = load_run(settings, upstream_run)
    if base_update:
        upstream = moved_base(settings, upstream, base_update)
    base = parse_image_ref(upstream.image.pinned)
    kind = kinds.choose(path, upstream)
    comp = compose(settings, kind, upstream, requirements, path, upstream_run, base)
    # Inline extras have no file to watch: rebuild composes the recorded requirements again.
    provenance = Provenance(upstream_run=upstream_run, upstream_record=upstream_record, base=upstream.image,
                            inputs={"extra": str(path) if path is not None else None})
    return Prepared(name, upstream, base, comp, provenance)


def build(
    settings: Settings,
    upstream_run: str,
    extra: Extras,
    name: Optional[str] = None,
    variables: Optional[Dict[str, str]] = None,
    run_id: Optional[str] = None,
    update: bool = False,
    base_update: Optional[str] = None,
    upstream_step: Optional[str] = None,
) -> BuildResult:
    """Compose upstream_run's environment + the extras under name (see the module's docstring).

    base_update: the upstream image's tag was moved (e.g. a security rebuild): compose on what
    it points at now, after checking it still holds exactly the upstream's distributions.
    """
    p = prepare(settings, upstream_run, extra, name, variables, run_id, base_update, upstream_step)
    ahead: List[BuildJob] = []

    def start() -> None:  # not in the registry: the builder begins while the name and lease are checked
        from composer.builders import start_build

        ahead.append(new_job(settings, p.name, p.comp, p.base, p.upstream))
        start_build(ahead[0])

    return publish(
        settings, connect(settings), envs_repository(settings), name=p.name, spec=p.comp.spec_hash, update=update,
        run_id=run_id, provenance=p.provenance, upstream=p.upstream, comp=p.comp,
        build_it=lambda: build_and_record(settings, p.name, p.comp, p.base, p.upstream, p.provenance,
                                          job=ahead[0] if ahead else None),
        start=start,
    )


def plan(settings: Settings, upstream_run: str, extra: Extras, name: Optional[str] = None,
         variables: Optional[Dict[str, str]] = None, run_id: Optional[str] = None,
         upstream_step: Optional[str] = None) -> dict:
    """`build --dry-run`: the lock, what the new layer adds, the spec hash, whether the registry
    already has it, and the builder that would run. Nothing is built or pushed."""
    p = prepare(settings, upstream_run, extra, name, variables, run_id, upstream_step=upstream_step)
    repo = envs_repository(settings)
    found = cached_image(connect(settings), repo, p.comp.spec_hash)
    builder, reason = None, None
    if found is None:
        from composer.builders import choose_builder  # the builders only load when something is built

        chosen, reason = choose_builder(new_job(settings, p.name, p.comp, p.base, p.upstream))
        builder = chosen.name
    return {
        "name": p.name, "spec_hash": p.comp.spec_hash, "kind": p.comp.kind.name, "template": p.comp.template,
        "upstream_run": p.provenance.upstream_run, "base": p.base.pinned(),
        "cached": found is not None, "digest": found[0].digest if found else None,
        "ref": f"{settings.registry_host}/{repo}@{found[0].digest}" if found else None,
        "tag": unique_tag(p.name, p.comp.spec_hash), "builder": builder, "builder_reason": reason,
        "requirements": list(p.comp.requirements),
        "lock": [{"name": x["name"], "version": x["version"]} for x in p.comp.lock.packages],
        "added": [{"name": x["name"], "version": x["version"]} for x in p.comp.lock.added],
    }


def compose(settings: Settings, kind: EnvironmentKind, upstream: RunRecord, requirements: List[str], path: Path,
            upstream_run: str, base: ImageRef) -> Composition:
    """Lock (or reuse the lock the same lock inputs gave on this machine) and hash the spec.

    One cache policy for every kind: the key is what the lock depends on, never the image or
    the run, so a new run with the same pins skips resolution. An entry is used only if the
    kind finds it consistent with itself and the upstream; the registry still decides
    whether the composition exists."""
    key = sha256_digest(canonical_json({"kind": kind.name, **kind.lock_inputs(settings, upstream, requirements)}))
    found = state.read("locks", key)
    locked = kind.cached(found, upstream) if found is not None else None
    if locked is None:
        locked = kind.lock(settings, upstream, requirements, path, upstream_run)
        state.write("locks", key, kind.to_cache(*locked))
    lock, extra = locked
    _, template = load_template(kind.name)
    spec = spec_hash(spec_document(
        base_digest=base.digest or "", python=upstream.python.to_json(), platform=upstream.platform.to_json(),
        packages=lock.packages, template=template, frontend=settings.dockerfile_syntax, **kind.spec_parts(extra),
    ))
    return Composition(kind=kind, requirements=tuple(requirements), lock=lock, extra=extra, template=template, spec_hash=spec)


def build_and_record(settings: Settings, name: str, comp: Composition, base: ImageRef, upstream: RunRecord,
                     provenance: Provenance, image_version: str = __version__,
                     job: Optional[BuildJob] = None) -> Tuple[BuildRecord, Image]:
    """Build and push the image, then its record (what publish calls once it holds the lease).
    image_version: the composer version the image's label names (a rebuild from a record keeps
    the record's, so the image is the same). job: the job made (and started) ahead, if any."""
    from composer.builders import build_image  # the builders only load when something is built

    job = job or new_job(settings, name, comp, base, upstream, image_version)
    digest, builder = build_image(job)
    record = BuildRecord(
        name=name,
        image=Image(f"{settings.registry_host}/{job.repository}", digest, job.tag),
        base=provenance.base,
        upstream_run=provenance.upstream_run,
        upstream_record=provenance.upstream_record,
        python=upstream.python,
        platform=upstream.platform,
        lock=RecordLock(
            requirements=comp.requirements,
            packages=tuple(LockedPackage(p["name"], p["version"], tuple(p.get("hashes") or ())) for p in comp.lock.packages),
            added=tuple(p["name"] for p in comp.lock.added),
        ),
        spec_hash=comp.spec_hash,
        spec_version=SPEC_VERSION,
        builder=builder,
        dockerfile=job.dockerfile,  # with the daemonless builder: the Dockerfile that gives the same layer
        created=utc_now(),
        composer_version=__version__,
        inputs=dict(provenance.inputs),
        conda=comp.kind.record_section(settings, comp, upstream),
        layer=job.layer,  # daemonless: the encoder and its settings (the layer's bytes depend on them)
    )
    confirm_ownership()  # a builder that lost a start-up race publishes nothing
    return record, record.image


def new_job(settings: Settings, name: str, comp: Composition, base: ImageRef, upstream: RunRecord,
            image_version: str = __version__) -> BuildJob:
    dockerfile = comp.kind.render(settings, base, upstream, comp)
    return BuildJob(
        settings=settings, registry=connect(settings), repository=envs_repository(settings),
        tag=unique_tag(name, comp.spec_hash), base=base, upstream=upstream, kind=comp.kind.name,
        lock=comp.lock, spec_hash=comp.spec_hash, dockerfile=dockerfile,
        prepare_context=lambda context: prepare_context(settings, context, dockerfile, comp, upstream),
        labels={
            "org.opencontainers.image.base.name": upstream.image.human_name,
            "org.opencontainers.image.base.digest": base.digest or "",
            "dev.composer.spec-hash": comp.spec_hash,
            "dev.composer.template": comp.template,
            "dev.composer.version": image_version,
        },
        env={"COMPOSER_SPEC_HASH": comp.spec_hash},
    )


def prepare_context(settings: Settings, context: Path, dockerfile: str, comp: Composition, upstream: RunRecord) -> Dict[str, str]:
    """The BuildKit context: the Dockerfile, the pip lock, the locked files fetched and
    hash-checked here (composer-dists/), uv; the kind's own files. The build needs no index,
    no network and no secret: it returns none ({id: path}), since its steps run the upstream's
    own interpreter, and that is the upstream's code."""
    from composer.kinds.dists import fetch as fetch_dists  # only a BuildKit build needs it

    context.mkdir(parents=True, exist_ok=True)
    (context / "Dockerfile").write_text(dockerfile, encoding="utf-8")
    (context / "composer-extras.lock").write_text(comp.lock.added_lock_text() if comp.lock.added else "", encoding="utf-8")
    fetch_dists(settings, comp.lock.added, upstream.python.version, upstream.platform.python_platform,
                context / "composer-dists")
    uv = uv_binary()
    try:
        os.link(uv, context / "uv")
    except OSError:
        shutil.copy2(uv, context / "uv")
    comp.kind.prepare_context(settings, context, comp, upstream)
    return {}


def moved_base(settings: Settings, upstream: RunRecord, tag_ref: str) -> RunRecord:
    """The upstream record, re-pinned to what tag_ref points at now, if its python and
    distributions are exactly the recorded ones (upstream versions never move)."""
    image, config = pin_image(settings, tag_ref)
    probe = probe_image(image, config)
    have = {}
    for d in probe.get("distributions") or []:
        if isinstance(d, dict) and isinstance(d.get("name"), str):
            have[canonical_name(d["name"])] = d.get("version")
    if upstream.distributions_source == "image":
        for d in upstream.distributions:
            if have.get(d.name) != d.version:
                raise LockConflictError(
                    f"{tag_ref} now has {d.name} {have.get(d.name) or 'missing'}, the run recorded {d.version}",
                    "re-record the upstream run if that change is intended",
                )
    if probe.get("version") != upstream.python.version or probe.get("executable") != upstream.python.executable:
        raise LockConflictError(f"{tag_ref} now has python {probe.get('version')} at {probe.get('executable')}",
                                "re-record the upstream run if that change is intended")
    return replace(upstream, image=Image(image.name, image.digest or "", image.tag))
