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

from .catalog import names as list_names
from .compose import build, env_repository, resolve
from .config import Settings
from .errors import ComposerError
from .names import parse_image_ref
from .requirements import read_extras
from .resolver import load_run, registry_for


def triggers(settings: Settings, record: dict) -> "tuple[List[str], Optional[str]]":
    """(why the composition is stale, the moved base tag if that is one of the reasons)."""
    reasons: List[str] = []
    _, upstream_digest = load_run(settings, record["upstream"]["run"])
    if upstream_digest != record["upstream"]["record"]:
        reasons.append(f"upstream run {record['upstream']['run']} was re-recorded")
    extra = (record.get("inputs") or {}).get("extra")
    if extra and Path(extra).exists() and read_extras(Path(extra)) != record["lock"]["requirements"]:
        reasons.append(f"extras file {extra} changed")
    moved = None
    tag = record["base"].get("tag")
    if tag:
        ref = parse_image_ref(f"{record['base']['repository']}:{tag}")
        now = registry_for(settings, ref.registry).head_manifest(ref.repository, tag)
        if now is not None and now.digest != record["base"]["digest"]:
            reasons.append(f"base tag {tag} now points at {now.digest[:19]}")
            moved = str(ref)
    return reasons, moved


def rebuild(settings: Settings, wanted: List[str], dry_run: bool = False) -> dict:
    reg = registry_for(settings)
    targets = wanted or list_names(reg, env_repository(settings))
    results = []
    for name in targets:
        entry: dict = {"name": name}
        try:
            _, record, _ = resolve(settings, name)
            if record["name"] != name:
                entry.update(status="alias", note=f"alias of {record['name']}: moves only with composer alias")
                results.append(entry)
                continue
            extra = (record.get("inputs") or {}).get("extra")
            if not extra or not Path(extra).exists():
                raise ComposerError(f"the extras file {name!r} was built from ({extra}) is not here",
                                    "run rebuild where the build ran (the path is relative to it)")
            reasons, moved = triggers(settings, record)
            entry.update(before=record["image"]["digest"], reasons=reasons)
            if not reasons:
                entry["status"] = "up-to-date"
            elif dry_run:
                entry["status"] = "stale"
            else:
                result = build(settings, record["upstream"]["run"], extra, name=name, update=True, base_update=moved)
                entry.update(status="rebuilt" if result.digest != record["image"]["digest"] else "up-to-date",
                             after=result.digest, ref=result.ref, cached=result.cached)
        except ComposerError as exc:
            entry.update(status="error", error=exc.one_line(), exit_code=exc.exit_code)
        results.append(entry)
    return {"dry_run": dry_run, "results": results,
            "changed": any(r["status"] in ("rebuilt", "stale") for r in results),
            "errors": sum(r["status"] == "error" for r in results)}
