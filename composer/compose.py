"""The main job: compose an image from an upstream run's environment plus extras.

Order of work, chosen so that bad input fails before anything is written and a
crash never leaves a name pointing at an unrecorded image:
  1. read the extras, find the upstream run's record, lock, compute the spec hash;
  2. ask the registry for an image with that spec hash (a verified record is
     required; any registry error ends the command, it is never a cache hit);
  3. build and push under the unique tag NAME-<spec hash prefix>;
  4. push the build record (subject: the image), then the spec tag, then the name tag.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from . import __version__
from .builders import BuildRequest, detect
from . import state
from .canonical import canonical_json, digest_hex, sha256_digest
from .config import Settings
from .dockerfile import load_template, render_pip
from .errors import LockConflictError, NotFoundError, UsageError, VerificationError
from .history import append_version, read_history
from .lease import build_once, confirm_ownership
from .lock import Lock, lock_extras, uv_binary
from .names import ImageRef, SPEC_TAG_CHARS, check_name, parse_image_ref, render_name
from .records import (
    ANNOTATION_CREATED, ANNOTATION_NAME, ANNOTATION_SPEC, BUILD_RECORD_SCHEMA, BUILD_RECORD_TYPE, RUN_RECORD_SCHEMA,
    find_build_records, push_record, utc_now,
)
from .registry import Descriptor, Registry
from .requirements import canonical_name, read_extras
from .resolver import load_run, registry_for, store_run_record
from .spec import SPEC_VERSION, spec_document, spec_hash

ENVS_REPOSITORY = "envs"
DEFAULT_NAME = "compose-{upstream_run}"


@dataclass
class BuildResult:
    name: str
    ref: str  # REPO@sha256:...
    repository: str
    digest: str
    tag: str
    cached: bool
    record: str  # digest of the build record (the digest manifest)
    spec_hash: str
    builder: Optional[str]

    def to_json(self) -> dict:
        return asdict(self)


def env_repository(settings: Settings) -> str:
    return settings.repository(ENVS_REPOSITORY)


def spec_tag(spec: str) -> str:
    return f"spec-{digest_hex(spec)}"


def unique_tag(name: str, spec: str) -> str:
    return f"{name}-{digest_hex(spec)[:SPEC_TAG_CHARS]}"


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
    from .metaflow_link import with_step  # Metaflow: --upstream-step S is --upstream-run Flow/Run/S

    upstream_run = with_step(upstream_run, upstream_step)
    requirements = read_extras(Path(extra))
    values = {"upstream_run": upstream_run, **({"run_id": run_id} if run_id else {}), **(variables or {})}
    name = render_name(name or DEFAULT_NAME, values)

    reg = registry_for(settings)
    repo = env_repository(settings)
    upstream, upstream_record_digest = load_run(settings, upstream_run)
    if base_update:
        upstream = _moved_base(settings, upstream, base_update)
    base = parse_image_ref(f"{upstream['image']['repository']}@{upstream['image']['digest']}")
    # --- conda (composer/conda.py): a conda-prefix upstream or an environment.yml takes the conda path
    from .conda import build_conda, wants_conda

    if wants_conda(extra, upstream):
        return build_conda(settings, upstream_run=upstream_run, extra=extra, requirements=requirements, name=name,
                           run_id=run_id, update=update, upstream=upstream, upstream_record_digest=upstream_record_digest,
                           base=base, reg=reg, repo=repo)
    # --- end conda
    _, template = load_template("pip")

    def spec_of(lock: Lock) -> str:
        return spec_hash(spec_document(
            base_digest=base.digest, python=upstream["python"], platform=upstream["platform"],
            packages=lock.packages, template=template, frontend=settings.dockerfile_syntax,
        ))

    # The same lock inputs as an earlier build on this machine (even for another upstream run
    # with the same pins): reuse its lock, skip resolution.
    key = lock_key(settings, upstream, requirements)
    lock = _known_lock(key, upstream)
    if lock is None:
        lock = lock_extras(settings, requirements, upstream, upstream_run)
        state.write("locks", key, {"lock": asdict(lock), "lock_hash": _lock_hash(lock)})
    spec = spec_of(lock)

    ctx = {"upstream_run": upstream_run, "upstream_record": upstream_record_digest, "extra": str(extra)}
    return publish(
        settings, reg, repo, name=name, spec=spec, update=update, run_id=run_id,
        build_it=lambda: _build_and_record(settings, reg, repo, name, spec, base, upstream, lock, ctx),
        as_upstream=lambda record, keys: _store_as_upstream(settings, record, upstream, keys),
    )


def publish(settings: Settings, reg: Registry, repo: str, *, name: str, spec: str, update: bool, run_id: Optional[str],
            build_it: Callable[[], Tuple[Descriptor, Tuple[dict, Descriptor]]],
            as_upstream: Callable[[dict, List[str]], None]) -> BuildResult:
    """What every kind of environment shares once its spec is known: the name check, the cache,
    one builder per spec (build_it pushes the image, its record and the spec tag), a record
    per name, the run records (as_upstream), then the name's history and tag, last."""
    _check_name_free(reg, repo, name, spec, update)
    keys = [name] + ([run_id] if run_id else [])
    find = lambda: _cached_image(reg, repo, spec)  # noqa: E731

    def build_and_store() -> Tuple[Descriptor, list]:
        image, record = build_it()
        as_upstream(record[0], keys)
        return image, [record]

    found = find()
    built = False
    if found is None:
        found, built = build_once(reg, repo, spec, find, build_and_store)
    image, records = found
    record = next((r for r in records if r[0].get("name") == name), None)
    if record is None:  # the same composition, recorded under another name so far
        record = _publish_record(reg, repo, _record_for_name(records[0][0], name), image)
        as_upstream(record[0], keys)
    elif run_id and not built:  # a reused composition still becomes this run's environment
        _ensure_run_record(settings, record[0], run_id, as_upstream)
    _finish_tags(reg, repo, image, name, spec, record[1].digest, "built" if built else "reused")
    return _result(settings, name, repo, image.digest, unique_tag(name, spec), not built, record[1].digest, spec,
                   record[0]["builder"] if built else None)


def _build_and_record(settings: Settings, reg: Registry, repo: str, name: str, spec: str, base: ImageRef,
                      upstream: dict, lock: Lock, ctx: dict) -> Tuple[Descriptor, Tuple[dict, Descriptor]]:
    tag = unique_tag(name, spec)
    digest, builder_name, dockerfile = _build_image(settings, reg, repo, tag, spec, base, upstream, lock)
    return record_and_tag(settings, reg, repo, name=name, spec=spec, tag=tag, digest=digest, base=base, upstream=upstream,
                          ctx=ctx, requirements=lock.requirements, lock=lock, builder=builder_name, dockerfile=dockerfile)


def record_and_tag(settings: Settings, reg: Registry, repo: str, *, name: str, spec: str, tag: str, digest: str,
                   base: ImageRef, upstream: dict, ctx: dict, requirements: List[str], lock: Lock, builder: str,
                   dockerfile: str, extra: Optional[dict] = None) -> Tuple[Descriptor, Tuple[dict, Descriptor]]:
    """After the image is pushed: verify it, push its record, then the spec tag (the cache entry).
    extra: fields a kind of environment adds to the record (e.g. "conda")."""
    image = _verify_image(settings, reg, repo, digest, base)
    checkpoint("after-image-push")
    record = {
        "schema": BUILD_RECORD_SCHEMA,
        "name": name,
        "image": {"repository": f"{settings.registry_host}/{repo}", "tag": tag, "digest": digest},
        "base": {"repository": base.name, "digest": base.digest, "tag": upstream["image"].get("tag")},
        "upstream": {"run": ctx["upstream_run"], "record": ctx["upstream_record"]},
        "inputs": {"extra": ctx["extra"]},  # provenance for `composer rebuild`; not part of the spec
        "python": upstream["python"],
        "platform": upstream["platform"],
        "lock": {"requirements": list(requirements), "packages": lock.packages, "added": [p["name"] for p in lock.added]},
        **(extra or {}),
        "spec_hash": spec,
        "spec_version": SPEC_VERSION,
        "builder": builder,
        "dockerfile": dockerfile,  # with the daemonless builder: the Dockerfile that gives the same layer
        "composer_version": __version__,
        "created": utc_now(),
    }
    confirm_ownership()  # a builder that lost a start-up race publishes nothing
    published = _publish_record(reg, repo, record, image)
    checkpoint("after-record")
    reg.tag(repo, digest, spec_tag(spec))
    checkpoint("after-spec-tag")
    return image, published


def _build_image(settings: Settings, reg: Registry, repo: str, tag: str, spec: str, base: ImageRef, upstream: dict,
                 lock: Lock) -> Tuple[str, str, str]:
    """Push the composed image under tag: (digest, builder name, Dockerfile).

    The daemonless builder when it can (auto, daemonless): the same files as the
    Dockerfile's layer, without a daemon; otherwise BuildKit, saying why.
    """
    dockerfile, template = render_pip(
        base_ref=base.pinned(), base_name=_human_name(upstream["image"]),
        base_digest=base.digest, python=upstream["python"], spec_hash=spec, syntax=settings.dockerfile_syntax,
    )
    if settings.builder in ("auto", "daemonless"):
        from . import daemonless

        reason = daemonless.unsupported_reason(lock, upstream)
        if reason is None:
            labels = {
                "org.opencontainers.image.base.name": _human_name(upstream["image"]),
                "org.opencontainers.image.base.digest": base.digest,
                "dev.composer.spec-hash": spec,
                "dev.composer.template": template,
                "dev.composer.version": __version__,
            }
            try:
                digest = daemonless.build_and_push(settings=settings, reg=reg, repo=repo, tag=tag, base=base,
                                                   upstream=upstream, lock=lock, spec_hash=spec, labels=labels,
                                                   env={"COMPOSER_SPEC_HASH": spec})
                return digest, "daemonless", dockerfile
            except daemonless.NeedsBuildKit as exc:
                reason = exc.reason
        if settings.progress != "quiet" or settings.builder == "daemonless":
            print(f"composer: building with BuildKit: the daemonless builder cannot ({reason})", file=sys.stderr)
    builder = detect(settings)
    with tempfile.TemporaryDirectory(prefix="composer-build-") as tmp:
        context, secrets = _prepare_context(Path(tmp), dockerfile, lock, settings)
        digest = builder.build_and_push(BuildRequest(
            context=context, target=ImageRef(settings.registry_host, repo, tag), secrets=secrets,
            plain_http=reg.base.startswith("http:"), progress=settings.progress,
        ))
    return digest, builder.name, dockerfile


def checkpoint(stage: str) -> None:
    """Fault-injection point for the crash tests (COMPOSER_TEST_CRASH_AT=stage): the process dies
    there as a killed build would, with no cleanup."""
    if os.environ.get("COMPOSER_TEST_CRASH_AT") == stage:
        os._exit(86)


def _moved_base(settings: Settings, upstream: dict, tag_ref: str) -> dict:
    """The upstream record, re-pinned to what tag_ref points at now, if its python and
    distributions are exactly the recorded ones (upstream versions never move)."""
    from .resolver import pin_image, probe_image

    image, config = pin_image(settings, tag_ref)
    probe = probe_image(image, config)
    have = {canonical_name(d["name"]): d["version"] for d in probe["distributions"]}
    for d in upstream["distributions"]:
        if upstream.get("distributions_source") == "image" and have.get(d["name"]) != d["version"]:
            raise LockConflictError(
                f"{tag_ref} now has {d['name']} {have.get(d['name']) or 'missing'}, the run recorded {d['version']}",
                "re-record the upstream run if that change is intended",
            )
    if probe["version"] != upstream["python"]["version"] or probe["executable"] != upstream["python"]["executable"]:
        raise LockConflictError(f"{tag_ref} now has python {probe['version']} at {probe['executable']}",
                                "re-record the upstream run if that change is intended")
    return {**upstream, "image": {"repository": image.name, "digest": image.digest, "tag": image.tag}}


def inputs_key(settings: Settings, upstream_record: str, base: str, requirements: List[str], template: str) -> str:
    """The conda path's lock cache key: the upstream record, base, extras, index and template."""
    secretless = lambda url: sha256_digest(url.encode()) if url else None  # noqa: E731  (never store a token)
    return sha256_digest(canonical_json({
        "inputs": "composer.inputs/v1", "upstream_record": upstream_record, "base": base, "requirements": sorted(requirements),
        "index_url": secretless(settings.index_url), "extra_index_url": secretless(settings.extra_index_url),
        "template": template, "frontend": settings.dockerfile_syntax, "spec": SPEC_VERSION,
    }))


def lock_key(settings: Settings, upstream: dict, requirements: List[str]) -> str:
    """Everything a pip lock depends on, hashed: the upstream's pins, python and platform, the
    extras and the index. Not the image or run: a new run with the same pins locks the same."""
    secretless = lambda url: sha256_digest(url.encode()) if url else None  # noqa: E731  (never store a token)
    return sha256_digest(canonical_json({
        "inputs": "composer.lock-inputs/v1",
        "pins": sorted(f"{d['name']}=={d['version']}" for d in upstream["distributions"]),
        "python": upstream["python"]["version"], "platform": upstream["platform"]["python_platform"],
        "requirements": sorted(requirements),
        "index_url": secretless(settings.index_url), "extra_index_url": secretless(settings.extra_index_url),
    }))


def _lock_hash(lock: Lock) -> str:
    return sha256_digest(canonical_json(asdict(lock)))


def _known_lock(key: str, upstream: dict) -> Optional[Lock]:
    entry = state.read("locks", key)
    if entry is None:
        return None
    try:
        lock = Lock(**entry["lock"])
    except (TypeError, KeyError):
        return None
    # Checked twice over: an entry that disagrees with itself, or that would move an upstream
    # pin, is not used (the registry still decides whether the composition exists).
    pins = {d["name"]: d["version"] for d in upstream["distributions"]}
    if entry.get("lock_hash") != _lock_hash(lock) or any(pins.get(p["name"], p["version"]) != p["version"] for p in lock.packages):
        return None
    return lock


def _human_name(image: dict) -> str:
    return image["repository"] + (f":{image['tag']}" if image.get("tag") else "")


def _result(settings, name, repo, digest, tag, cached, record, spec, builder) -> BuildResult:
    full = f"{settings.registry_host}/{repo}"
    return BuildResult(name, f"{full}@{digest}", full, digest, tag, cached, record, spec, builder)


def _cached_image(reg: Registry, repo: str, spec: str) -> Optional[Tuple[Descriptor, list]]:
    """The image already built for this spec, with its verified records, or None.

    Only a 404 means "not built"; any other registry answer raises. An image
    without a matching record (a publish that crashed) is not a hit.
    """
    desc = reg.head_manifest(repo, spec_tag(spec))
    if desc is None:
        return None
    records = [r for r in find_build_records(reg, repo, desc.digest) if r[0].get("spec_hash") == spec]
    return (desc, records) if records else None


def _check_name_free(reg: Registry, repo: str, name: str, spec: str, update: bool) -> None:
    """A name points at one composition; moving it to another needs --update."""
    current = reg.head_manifest(repo, name)
    if current is None or update:
        return
    specs = {r[0].get("spec_hash") for r in find_build_records(reg, repo, current.digest) if r[0].get("name") == name}
    if spec not in specs:
        raise UsageError(
            f"name {name!r} already points to a different composition ({current.digest[:19]})",
            "choose another name, or pass --update to publish a new version under it",
        )


def _record_for_name(record: dict, name: str) -> dict:
    """A record for an existing image under another name: same content, its own name and tag."""
    new = json.loads(json.dumps(record))
    new["name"] = name
    new["image"]["tag"] = unique_tag(name, record["spec_hash"])
    new["created"] = utc_now()
    return new


def _publish_record(reg: Registry, repo: str, record: dict, image: Descriptor) -> Tuple[dict, Descriptor]:
    annotations = {ANNOTATION_NAME: record["name"], ANNOTATION_SPEC: record["spec_hash"], ANNOTATION_CREATED: record["created"]}
    desc = push_record(reg, repo, record, BUILD_RECORD_TYPE, annotations, subject=image)
    return record, desc


def _store_as_upstream(settings: Settings, record: dict, upstream: dict, keys: List[str],
                       more_dists: Iterable[dict] = (), extra: Optional[dict] = None) -> None:
    """Write a run record for the composed environment, so it can be another build's upstream.
    more_dists / extra: what a kind of environment adds (e.g. conda's python packages and section)."""
    dists = {d["name"]: d for d in upstream["distributions"]}
    dists.update({d["name"]: d for d in more_dists})
    dists.update({p["name"]: {"name": p["name"], "version": p["version"]} for p in record["lock"]["packages"]})
    for key in keys:
        store_run_record(settings, {
            "schema": RUN_RECORD_SCHEMA,
            "run": key,
            "image": dict(record["image"]),
            "python": dict(upstream["python"]),
            "platform": dict(upstream["platform"]),
            "distributions": sorted(dists.values(), key=lambda d: d["name"]),
            "distributions_source": "composed",
            "composed": {"name": record["name"], "spec_hash": record["spec_hash"]},
            **(extra or {}),
            "composer_version": __version__,
            "created": record["created"],
        })


def _ensure_run_record(settings: Settings, record: dict, run_id: str, as_upstream: Callable[[dict, List[str]], None]) -> None:
    try:
        current, _ = load_run(settings, run_id)
        if current["image"]["digest"] == record["image"]["digest"]:
            return
    except NotFoundError:
        pass
    as_upstream(record, [run_id])


def _finish_tags(reg: Registry, repo: str, image: Descriptor, name: str, spec: str, record: str, reason: str) -> None:
    # The name's history, then the name tag, last: a name never points at an image whose
    # record, cache entry and history entry are not yet in the registry.
    append_version(reg, repo, name, image, record, spec, reason)
    reg.tag(repo, image.digest, unique_tag(name, spec), name)


def _prepare_context(tmp: Path, dockerfile: str, lock: Lock, settings: Settings) -> Tuple[Path, Dict[str, str]]:
    context = tmp / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(dockerfile, encoding="utf-8")
    (context / "composer-extras.lock").write_text(lock.added_lock_text(), encoding="utf-8")
    uv = uv_binary()
    try:
        os.link(uv, context / "uv")
    except OSError:
        shutil.copy2(uv, context / "uv")
    # Secrets live outside the context, so no COPY could ever pick them up.
    secrets: Dict[str, str] = {}
    ca = settings.ca_bundle_path()
    if ca:
        secrets["ca"] = ca
    if settings.index_url:
        path = tmp / "index_url"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(settings.index_url)
        secrets["index_url"] = str(path)
    return context, secrets


def _verify_image(settings: Settings, reg: Registry, repo: str, digest: str, base: ImageRef) -> Descriptor:
    """The pushed image is in the registry under digest and starts with the base's layers."""
    got = reg.get_manifest(repo, digest)
    if got is None:
        raise VerificationError(f"the builder reported {digest} but the registry does not have it", "rerun the build")
    body, desc = got
    base_reg = reg if base.registry == reg.host else registry_for(settings, base.registry)
    base_got = base_reg.get_manifest(base.repository, base.digest)
    if base_got is None:
        raise NotFoundError(f"the upstream image {base.pinned()} is gone from its registry", "re-record the upstream run")
    base_layers = [l["digest"] for l in json.loads(base_got[0]).get("layers", [])]
    layers = [l["digest"] for l in json.loads(body).get("layers", [])]
    if layers[: len(base_layers)] != base_layers:
        raise VerificationError(f"the composed image {digest} does not start with the upstream's layers", "report this; do not use the image")
    return desc


def resolve(settings: Settings, name: str) -> Tuple[str, dict, str]:
    """NAME, NAME@N (version N) or an alias -> (REPO@sha256:..., its verified build record, the record's digest)."""
    name, _, version = name.partition("@")
    check_name(name)
    reg = registry_for(settings)
    repo = env_repository(settings)
    hint = f"build it first: python -m composer build ... --name {name}"
    if version:
        if not version.isdigit():
            raise UsageError(f"version {version!r} of {name!r} is not a number", f"use {name}@N, N from composer history {name}")
        chosen = [v for v in read_history(reg, repo, name) if v.number == int(version)]
        if not chosen:
            raise NotFoundError(f"{name!r} has no version {version}", f"see composer history {name}")
        digest, target = chosen[0].image.digest, chosen[0].alias_of or name
    else:
        desc = reg.head_manifest(repo, name)
        if desc is None:
            raise NotFoundError(f"no environment named {name!r} in {settings.registry}", hint)
        digest, target = desc.digest, name
    described = find_build_records(reg, repo, digest)
    records = [r for r in described if r[0].get("name") == target]
    if not records and not version:
        # No record under this name: it may be an alias, whose records are its target's.
        newest = read_history(reg, repo, name)[-1:]
        if newest and newest[0].image.digest == digest and newest[0].alias_of:
            records = [r for r in described if r[0].get("name") == newest[0].alias_of]
    if not records:
        raise VerificationError(f"{name!r} points to {digest} but no composer record describes it",
                                "rebuild it with composer build --update")
    record, rdesc = max(records, key=lambda r: r[0].get("created", ""))
    return f"{settings.registry_host}/{repo}@{digest}", record, rdesc.digest
