"""Publishing a composition: what every kind of environment shares once its spec is known.

The name check, the cache, one builder per spec (composer/publish/lease.py), the build
record, the spec tag, a record per name with that name's own provenance, the run records
(so a composed environment can be an upstream), then the name's history
(composer/history.py) and the name tag, last:

    lease-<spec>  ->  NAME-<12 hex> (the builder's push)  ->  record (subject: the image)
    ->  spec-<spec>  ->  run records  ->  hist-NAME  ->  NAME

so a crash never leaves a name or a cache entry pointing at an image without a record, and a
rerun completes the work (COMPOSER_TEST_CRASH_AT kills the process after each step in tests).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Dict, List, Optional, Tuple

from composer.errors import NotFoundError, UsageError, VerificationError
from composer.kinds.base import Composition
from composer.model.canonical import digest_hex
from composer.model.records import BuildRecord, Image, RunRecord, utc_now
from composer.model.refs import SPEC_TAG_CHARS, parse_image_ref
from composer.oci import connect
from composer.oci.client import Descriptor, Registry
from composer.history import append_version
from composer.publish.lease import build_once
from composer.settings import Settings
from composer.oci.artifacts import push_artifact, read_artifact
from composer.store import (
    build_records_of, load_run_record, name_key, newest_record, relist_record, runs_repository, spec_key,
    write_build_record, write_run_record,
)
from composer.upstream.runs import composed_run_record, keep_run_version


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


@dataclass(frozen=True)
class Provenance:
    """How a name came to point at a composition: never part of what the composition is."""

    upstream_run: str
    upstream_record: str  # digest of the run record the build used
    base: Image  # the upstream image: its repository and the tag it was recorded with
    inputs: Dict[str, Optional[str]] = field(default_factory=dict)  # extra: the extras file as given

    def of(self, record: BuildRecord) -> bool:
        given = lambda inputs: {k: v for k, v in inputs.items() if v is not None}  # noqa: E731
        return (record.upstream_run, record.upstream_record, record.base, given(record.inputs)) == (
            self.upstream_run, self.upstream_record, self.base, given(self.inputs))


def spec_tag(spec: str) -> str:
    return f"spec-{digest_hex(spec)}"


def unique_tag(name: str, spec: str) -> str:
    return f"{name}-{digest_hex(spec)[:SPEC_TAG_CHARS]}"


def checkpoint(stage: str) -> None:
    """Fault-injection point for the crash tests (COMPOSER_TEST_CRASH_AT=stage): the process dies
    there as a killed build would, with no cleanup."""
    if os.environ.get("COMPOSER_TEST_CRASH_AT") == stage:
        os._exit(86)


Found = Tuple[Descriptor, List[Tuple[BuildRecord, Descriptor]]]


def publish(settings: Settings, reg: Registry, repo: str, *, name: str, spec: str, update: bool, run_id: Optional[str],
            provenance: Provenance, upstream: RunRecord, comp: Composition,
            build_it: Callable[[], Tuple[BuildRecord, Image]], start: Optional[Callable[[], None]] = None) -> BuildResult:
    """Find or build the composition, then publish it under name (see the module's docstring).
    build_it builds and pushes the image and returns its (not yet published) record; start, when
    the registry does not have it, lets the builder begin what it can while the name and the
    lease are checked (it writes nothing, so a build that never comes costs only time)."""
    keys = [name] + ([run_id] if run_id else [])
    found = cached_image(reg, repo, spec, name)
    exists = check_name_free(reg, repo, name, spec, update, found)
    if found is None:
        check_run_ids_free(settings, keys)  # before anything is written or built
    claim = NameClaim(reg, repo, name, spec, settle=min(settings.lease_poll, CLAIM_SETTLE)) if not exists and not update else None
    if claim is not None:
        claim.stake()  # a concurrent build of another composition under this new name: one of us fails
    if found is None and start is not None:
        start()  # after the checks that refuse a build, so a refused one does not wait for it to end
    try:
        return _publish(settings, reg, repo, name=name, spec=spec, update=update, run_id=run_id, provenance=provenance,
                        upstream=upstream, comp=comp, build_it=build_it, found=found, claim=claim, keys=keys)
    finally:
        if claim is not None:
            claim.release()


def _publish(settings: Settings, reg: Registry, repo: str, *, name: str, spec: str, update: bool, run_id: Optional[str],
             provenance: Provenance, upstream: RunRecord, comp: Composition, build_it: Callable[[], Tuple[BuildRecord, Image]],
             found: Optional[Found], claim: Optional["NameClaim"], keys: List[str]) -> BuildResult:

    def still_ours(image: Optional[str] = None) -> None:
        """Right before anything is written under name: no concurrent build of another
        composition took the name (its claim, or the name itself) since we checked. image:
        our image's digest, when known (a name already pointing at it is ours)."""
        if claim is not None:
            claim.check()
        check_name_free(reg, repo, name, spec, update, image=image)

    def build_and_store() -> Found:
        record, _ = build_it()
        image = verify_image(settings, reg, repo, record.image.digest, parse_image_ref(record.base.pinned))
        checkpoint("after-image-push")
        still_ours(image.digest)
        desc = write_build_record(reg, repo, record, image, [name_key(name), spec_key(spec)])
        checkpoint("after-record")
        reg.tag(repo, image.digest, spec_tag(spec))
        checkpoint("after-spec-tag")
        still_ours(image.digest)
        store_as_upstream(settings, record, upstream, comp, keys)
        return image, [(record, desc)]

    built = False
    if found is None:
        found, built = build_once(reg, repo, spec, lambda: cached_image(reg, repo, spec, name), build_and_store, settings)
    image, records = found
    own = [r for r in records if r[0].name == name]
    newest = newest_record(own) if own else None
    if newest is None or not provenance.of(newest[0]):
        # The same content, recorded so far under another name or from another upstream:
        # this name gets a record of its own, with its own provenance.
        if not built:
            check_run_ids_free(settings, keys)  # before anything is written
        still_ours(image.digest)
        record = with_provenance(records[0][0], name, spec, provenance)
        newest = (record, write_build_record(reg, repo, record, image, [name_key(name)]))
        store_as_upstream(settings, record, upstream, comp, keys)
    elif run_id and not built:  # a reused composition still becomes this run's environment
        still_ours(image.digest)
        ensure_run_record(settings, newest[0], upstream, comp, run_id)
    record, record_desc = newest
    # The name's history, then the name tag, last; each checked once more just before it is
    # written (a cache hit with everything in place writes neither, and checks nothing).
    append_version(reg, repo, name, image, record_desc.digest, spec, "built" if built else "reused",
                   before_write=lambda: still_ours(image.digest))
    reg.tag(repo, image.digest, unique_tag(name, spec), name, before_write=lambda: still_ours(image.digest))
    # The shared referrers index may have lost our record to a concurrent writer: put it back
    # (best effort; `resolve` finds it at the name's own record tag regardless).
    if record_desc.artifact_type:
        relist_record(reg, repo, image, record_desc)
    full = f"{settings.registry_host}/{repo}"
    return BuildResult(name, f"{full}@{image.digest}", full, image.digest, unique_tag(name, spec), not built,
                       record_desc.digest, spec, record.builder if built else None)


# -- a new name, claimed ------------------------------------------------------------------------
CLAIM_TYPE = "application/vnd.composer.name-claim.v1+json"
CLAIM_SETTLE = 0.25  # seconds between writing a claim and reading it back (at most the lease poll)


def claim_tag(name: str) -> str:
    return f"lease-name-{hashlib.sha256(name.encode('utf-8')).hexdigest()[:32]}"


class NameClaim:
    """Two builds of different compositions under one new name, without --update: exactly one
    may succeed. Registries have no compare-and-swap, so each writes a claim (last writer
    wins) and, once it has settled, reads it back before anything is written under the name:
    a build that finds another composition's claim fails with one line (its image, pushed
    under its own unique tag, is left unnamed). The claim is read again right before anything is written under the
    name, and the name itself is rechecked then too, so a build that started after the other
    had read its claim back still loses once the other has moved the name."""

    def __init__(self, reg: Registry, repo: str, name: str, spec: str, settle: float):
        self.reg, self.repo, self.name, self.spec, self.settle = reg, repo, name, spec, settle
        self.owner = uuid.uuid4().hex
        self.digest: Optional[str] = None
        self.staked = time.monotonic()

    def stake(self) -> None:
        doc = {"owner": self.owner, "name": self.name, "spec_hash": self.spec, "created": utc_now()}
        self.digest = push_artifact(self.reg, self.repo, doc, CLAIM_TYPE, {}, tag=claim_tag(self.name)).digest
        self.staked = time.monotonic()

    def check(self) -> None:
        """Raise when another composition's claim replaced ours. The first check waits until the
        claim has settled (concurrent writers have landed); the build usually takes longer than
        that, so the wait overlaps it instead of adding to every new name's build."""
        time.sleep(max(0.0, self.staked + self.settle - time.monotonic()))
        got = read_artifact(self.reg, self.repo, claim_tag(self.name), CLAIM_TYPE)
        doc = got[0] if got and isinstance(got[0], dict) else None
        if doc is None or doc.get("owner") == self.owner or doc.get("spec_hash") == self.spec:
            return  # ours, or the same composition, or released by a winner (the name check decides)
        raise UsageError(
            f"name {self.name!r} is being published by a concurrent build of a different composition",
            "choose another name, or pass --update to publish a new version under it",
        )

    def release(self) -> None:
        try:
            if self.digest:
                self.reg.delete_manifest(self.repo, self.digest)
                self.digest = None
        except Exception:  # a claim left behind decides nothing: the next one overwrites it
            pass


def with_provenance(content: BuildRecord, name: str, spec: str, provenance: Provenance) -> BuildRecord:
    """A record for an existing image under name: the same content, this build's provenance."""
    return replace(content, name=name, image=replace(content.image, tag=unique_tag(name, spec)), base=provenance.base,
                   upstream_run=provenance.upstream_run, upstream_record=provenance.upstream_record,
                   inputs=dict(provenance.inputs), created=utc_now())


def cached_image(reg: Registry, repo: str, spec: str, name: Optional[str] = None) -> Optional[Found]:
    """The image already built for this spec, with its verified records, or None.

    Only a 404 means "not built"; any other registry answer raises. An image without a
    matching record (a publish that crashed) is not a hit. Records are read from the shared
    referrers index and from the builder's and the name's own record tags.
    """
    desc = reg.head_manifest(repo, spec_tag(spec))
    if desc is None:
        return None
    keys = [spec_key(spec)] + ([name_key(name)] if name else [])
    records = [r for r in build_records_of(reg, repo, desc.digest, keys) if r[0].spec_hash == spec]
    return (desc, records) if records else None


def check_name_free(reg: Registry, repo: str, name: str, spec: str, update: bool, found: Optional[Found] = None,
                    image: Optional[str] = None) -> bool:
    """A name points at one composition; moving it to another needs --update. found: the cached
    image of spec, whose records need not be read twice when the name already points at it;
    image: the digest of spec's image, when known (a name pointing at it is ours).
    Returns whether the name exists."""
    current = reg.head_manifest(repo, name)
    if current is None:
        return False
    if update or current.digest == image:
        return True
    records = found[1] if found is not None and found[0].digest == current.digest else \
        build_records_of(reg, repo, current.digest, [name_key(name)])
    specs = {r.spec_hash for r, _ in records if r.name == name}
    if spec not in specs:
        raise UsageError(
            f"name {name!r} already points to a different composition ({current.digest[:19]})",
            "choose another name, or pass --update to publish a new version under it",
        )
    return True


def check_run_ids_free(settings: Settings, keys: List[str]) -> None:
    """A composed environment's run record never replaces a run the user recorded: names and
    run ids share the runs repository, so such a clash is refused before anything is built."""
    reg = connect(settings)
    for key in keys:
        refuse_recorded_run(key, load_run_record(reg, runs_repository(settings), key))


def refuse_recorded_run(key: str, got: Optional[Tuple[RunRecord, str]]) -> None:
    if got is not None and got[0].distributions_source != "composed":
        raise UsageError(
            f"{key!r} is already a recorded run (image {got[0].image.digest[:19]}); a composed environment "
            f"named or run-id'd {key!r} would replace that record",
            "pick another --name / --run-id; recorded runs are only changed with composer record --update",
        )


def store_as_upstream(settings: Settings, record: BuildRecord, upstream: RunRecord, comp: Composition, keys: List[str]) -> None:
    """Write a run record for the composed environment under each key, so it can be another build's
    upstream. Each key's run history (`composer history --run KEY`) lists every record it has had,
    so the one a moved name replaces stays listed and kept, as `composer record --update` keeps it."""
    added, conda = comp.kind.composed_environment(comp, upstream)
    reg, repo = connect(settings), runs_repository(settings)
    for key in keys:
        before = load_run_record(reg, repo, key)
        if before is not None:
            keep_run_version(reg, repo, key, before[1], "replaced")  # nothing when it is the newest already
        digest = write_run_record(reg, repo, composed_run_record(key, record.image, upstream, record.name, record.spec_hash,
                                                                 record.created, added, conda))
        keep_run_version(reg, repo, key, digest, "composed")


def ensure_run_record(settings: Settings, record: BuildRecord, upstream: RunRecord, comp: Composition, run_id: str) -> None:
    got = load_run_record(connect(settings), runs_repository(settings), run_id)
    if got is not None and got[0].image.digest == record.image.digest:
        return
    refuse_recorded_run(run_id, got)
    store_as_upstream(settings, record, upstream, comp, [run_id])


def verify_image(settings: Settings, reg: Registry, repo: str, digest: str, base) -> Descriptor:
    """The pushed image is in the registry under digest and starts with the base's layers."""
    got = reg.get_manifest(repo, digest)
    if got is None:
        raise VerificationError(f"the builder reported {digest} but the registry does not have it", "rerun the build")
    body, desc = got
    base_reg = reg if base.registry == reg.host else connect(settings, base.registry)
    base_got = base_reg.get_manifest(base.repository, base.digest)
    if base_got is None:
        raise NotFoundError(f"the upstream image {base.pinned()} is gone from its registry", "re-record the upstream run")
    base_layers = [l.get("digest") for l in json.loads(base_got[0]).get("layers", [])]
    layers = [l.get("digest") for l in json.loads(body).get("layers", [])]
    if layers[: len(base_layers)] != base_layers:
        raise VerificationError(f"the composed image {digest} does not start with the upstream's layers", "report this; do not use the image")
    return desc
