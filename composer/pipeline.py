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
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from composer import kinds, state
from composer.builders import BuildJob, build_image
from composer.dockerfile import load_template
from composer.errors import LockConflictError
from composer.kinds import Composition, EnvironmentKind
from composer.kinds.pip import uv_binary
from composer.model.canonical import canonical_json, sha256_digest
from composer.model.records import BuildRecord, Image, Lock as RecordLock, LockedPackage, RunRecord, utc_now
from composer.model.refs import ImageRef, parse_image_ref, render_name
from composer.model.spec import SPEC_VERSION, spec_document, spec_hash
from composer.oci import connect
from composer.publish import BuildResult, Provenance, publish, unique_tag
from composer.publish.lease import confirm_ownership
from composer.requirements import canonical_name
from composer.settings import Settings
from composer.store import envs_repository
from composer.upstream.probe import pin_image, probe_image
from composer.upstream.runs import load_run, with_step
from composer.version import __version__

DEFAULT_NAME = "compose-{upstream_run}"


def build(
    settings: Settings,
    upstream_run: str,
    extra: str,
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
    settings.require_registry()
    upstream_run = with_step(upstream_run, upstream_step)
    path = Path(extra)
    requirements = kinds.read_extras(path)
    values = {"upstream_run": upstream_run, **({"run_id": run_id} if run_id else {}), **(variables or {})}
    name = render_name(name or DEFAULT_NAME, values)

    upstream, upstream_record = load_run(settings, upstream_run)
    if base_update:
        upstream = moved_base(settings, upstream, base_update)
    base = parse_image_ref(upstream.image.pinned)
    kind = kinds.choose(path, upstream)
    comp = compose(settings, kind, upstream, requirements, path, upstream_run, base)
    provenance = Provenance(upstream_run=upstream_run, upstream_record=upstream_record, base=upstream.image,
                            inputs={"extra": str(extra)})
    return publish(
        settings, connect(settings), envs_repository(settings), name=name, spec=comp.spec_hash, update=update,
        run_id=run_id, provenance=provenance, upstream=upstream, comp=comp,
        build_it=lambda: build_and_record(settings, name, comp, base, upstream, provenance),
    )


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
                     provenance: Provenance) -> Tuple[BuildRecord, Image]:
    """Build and push the image, then its record (what publish calls once it holds the lease)."""
    reg = connect(settings)
    repo = envs_repository(settings)
    tag = unique_tag(name, comp.spec_hash)
    dockerfile = comp.kind.render(settings, base, upstream, comp)
    job = BuildJob(
        settings=settings, registry=reg, repository=repo, tag=tag, base=base, upstream=upstream, kind=comp.kind.name,
        lock=comp.lock, spec_hash=comp.spec_hash, dockerfile=dockerfile,
        prepare_context=lambda context: prepare_context(settings, context, dockerfile, comp, upstream),
        labels={
            "org.opencontainers.image.base.name": upstream.image.human_name,
            "org.opencontainers.image.base.digest": base.digest or "",
            "dev.composer.spec-hash": comp.spec_hash,
            "dev.composer.template": comp.template,
            "dev.composer.version": __version__,
        },
        env={"COMPOSER_SPEC_HASH": comp.spec_hash},
    )
    digest, builder = build_image(job)
    record = BuildRecord(
        name=name,
        image=Image(f"{settings.registry_host}/{repo}", digest, tag),
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
        dockerfile=dockerfile,  # with the daemonless builder: the Dockerfile that gives the same layer
        created=utc_now(),
        composer_version=__version__,
        inputs=dict(provenance.inputs),
        conda=comp.kind.record_section(settings, comp, upstream),
        layer=job.layer,  # daemonless: the encoder and its settings (the layer's bytes depend on them)
    )
    confirm_ownership()  # a builder that lost a start-up race publishes nothing
    return record, record.image


def prepare_context(settings: Settings, context: Path, dockerfile: str, comp: Composition, upstream: RunRecord) -> Dict[str, str]:
    """The BuildKit context: the Dockerfile, the pip lock, uv; the kind's own files. Secrets
    live outside the context (returned as {id: path}), so no COPY could ever pick them up."""
    context.mkdir(parents=True, exist_ok=True)
    (context / "Dockerfile").write_text(dockerfile, encoding="utf-8")
    (context / "composer-extras.lock").write_text(comp.lock.added_lock_text(), encoding="utf-8")
    uv = uv_binary()
    try:
        os.link(uv, context / "uv")
    except OSError:
        shutil.copy2(uv, context / "uv")
    comp.kind.prepare_context(settings, context, comp, upstream)
    secrets: Dict[str, str] = {}
    ca = settings.ca_bundle_path()
    if ca:
        secrets["ca"] = ca
    if settings.index_url:
        path = context.parent / "index_url"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(settings.index_url)
        secrets["index_url"] = str(path)
    return secrets


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
