"""CI rebuilds on triggers: rebuild what a trigger made stale, nothing else.

A name is stale when its upstream run's record changed (the run was re-recorded,
e.g. a new training run under the same id), when the extras file it was built from
now asks for something else, or when the upstream image's tag now points at a new
digest (a security rebuild of the base). Everything else is up to date, and
rebuilding it would only be a cache hit, so it is not touched.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from composer import kinds
from composer.catalog import resolve
from composer.catalog.listing import names as list_names
from composer.errors import ComposerError, UsageError
from composer.model.records import BuildRecord
from composer.model.refs import parse_image_ref
from composer.oci import connect
from composer.pipeline import build
from composer.settings import Settings
from composer.store import envs_repository
from composer.upstream.runs import load_run


def extras_file(extra: Optional[str], root: Optional[Path] = None) -> Optional[Path]:
    """The extras file a record names (inputs.extra: registry data, so untrusted), if it lies
    inside the directory rebuild runs in (root): a record can never make rebuild read
    /etc/shadow or ../../secrets. None otherwise."""
    if not extra or any(ord(c) < 32 or ord(c) == 127 for c in extra):
        return None
    base = (root or Path.cwd()).resolve()
    path = Path(extra)
    full = (path if path.is_absolute() else base / path).resolve()
    if full != base and base not in full.parents:
        return None
    return full if full.is_file() else None


def read_extras_quietly(path: Path, name: str) -> tuple:
    """The extras a file asks for; an error names the file, never a line of it (the file may be
    something else than an extras file, and its contents must not reach a log)."""
    try:
        return tuple(kinds.read_extras(path))
    except ComposerError as exc:
        raise UsageError(f"the extras file of {name!r} ({path.name}) cannot be read as extras", "fix or restore the file") from exc


def triggers(settings: Settings, record: BuildRecord) -> "tuple[List[str], Optional[str]]":
    """(why the composition is stale, the moved base tag if that is one of the reasons), from
    the name's own provenance: its upstream run, its extras file, its base tag."""
    reasons: List[str] = []
    _, upstream_digest = load_run(settings, record.upstream_run)
    if upstream_digest != record.upstream_record:
        reasons.append(f"upstream run {record.upstream_run} was re-recorded")
    extra = record.inputs.get("extra")
    path = extras_file(extra)
    if path is not None and read_extras_quietly(path, record.name) != record.lock.requirements:
        reasons.append(f"extras file {extra} changed")
    moved = None
    tag = record.base.tag
    if tag:
        ref = parse_image_ref(f"{record.base.repository}:{tag}")
        now = connect(settings, ref.registry).head_manifest(ref.repository, tag)
        if now is not None and now.digest != record.base.digest:
            reasons.append(f"base tag {tag} now points at {now.digest[:19]}")
            moved = str(ref)
    return reasons, moved


def rebuild(settings: Settings, wanted: List[str], dry_run: bool = False) -> dict:
    reg = connect(settings)
    targets = wanted or list_names(reg, envs_repository(settings))
    results = []
    for name in targets:
        entry: dict = {"name": name}
        try:
            _, record, _ = resolve(settings, name)
            if record.name != name:
                entry.update(status="alias", note=f"alias of {record.name}: moves only with composer alias")
                results.append(entry)
                continue
            extra = record.inputs.get("extra")
            if extra is None and record.conda is None:
                source = list(record.lock.requirements)  # given inline: compose the recorded requirements again
            elif extras_file(extra) is None:
                raise ComposerError(f"the extras file {name!r} was built from ({extra}) is not in this directory",
                                    "run rebuild in the directory the build ran in (paths outside it are never read)")
            else:
                source = str(extras_file(extra))
            reasons, moved = triggers(settings, record)
            entry.update(before=record.image.digest, reasons=reasons)
            if not reasons:
                entry["status"] = "up-to-date"
            elif dry_run:
                entry["status"] = "stale"
            else:
                result = build(settings, record.upstream_run, source, name=name, update=True, base_update=moved)
                entry.update(status="rebuilt" if result.digest != record.image.digest else "up-to-date",
                             after=result.digest, ref=result.ref, cached=result.cached)
        except ComposerError as exc:
            entry.update(status="error", error=exc.one_line(), exit_code=exc.exit_code)
        results.append(entry)
    return {"dry_run": dry_run, "results": results,
            "changed": any(r["status"] in ("rebuilt", "stale") for r in results),
            "errors": sum(r["status"] == "error" for r in results)}
