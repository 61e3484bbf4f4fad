"""What is in the registry, and keeping it tidy: ls, history, aliases and gc."""

from __future__ import annotations

import datetime as _dt
import json
import re
from typing import Dict, List, Set

from composer.catalog import resolve
from composer.errors import NotFoundError, UsageError
from composer.model.refs import RESERVED_PREFIXES, check_name
from composer.oci import connect
from composer.oci.client import Registry
from composer.history import Version, append_version, read_history, rewrite_history
from composer.settings import Settings
from composer.store import build_records_of, envs_repository, name_key, read_run_record, runs_repository

_UNIQUE = re.compile(r"-[0-9a-f]{12}\Z")


def names(reg: Registry, repo: str) -> List[str]:
    """Environment names and aliases: the tags that are not composer's own bookkeeping."""
    return [t for t in reg.tags(repo) if not t.startswith(RESERVED_PREFIXES) and not _UNIQUE.search(t)]


def history(settings: Settings, name: str) -> List[dict]:
    check_name(name)
    reg = connect(settings)
    versions = read_history(reg, envs_repository(settings), name)
    if not versions:
        raise NotFoundError(f"no environment or alias named {name!r} in {settings.registry}", "see composer ls")
    return [v.to_json() for v in versions]


def set_alias(settings: Settings, alias: str, target: str) -> dict:
    """Point alias at target (NAME or NAME@N) and record the move in the alias's history."""
    check_name(alias)
    reg = connect(settings)
    repo = envs_repository(settings)
    target_name = target.partition("@")[0]
    if alias == target_name:
        raise UsageError(f"alias {alias!r} cannot point at itself", "pick another alias name")
    if any(r.name == alias for d in _current_digest(reg, repo, alias) for r, _ in build_records_of(reg, repo, d)):
        raise UsageError(f"{alias!r} is an environment name, not an alias", "pick another alias name")
    ref, record, record_digest = resolve(settings, target)
    digest = ref.split("@", 1)[1]
    image = reg.head_manifest(repo, digest)
    assert image is not None  # resolve just read it
    version = append_version(reg, repo, alias, image, record_digest, record.spec_hash, "alias", alias_of=record.name)
    reg.tag(repo, digest, alias)  # after its history entry, as for names
    return {"alias": alias, "ref": ref, "alias_of": record.name, "version": version.number, "record": record_digest}


def _current_digest(reg: Registry, repo: str, name: str) -> List[str]:
    desc = reg.head_manifest(repo, name)
    return [desc.digest] if desc else []


def ls(settings: Settings) -> List[dict]:
    reg = connect(settings)
    repo = envs_repository(settings)
    out = []
    for name in names(reg, repo):
        ref, record, record_digest = resolve(settings, name)
        manifest = json.loads(reg.get_manifest(repo, ref.split("@", 1)[1])[0])
        size = manifest["config"]["size"] + sum(l["size"] for l in manifest.get("layers", []))
        out.append({
            "name": name, "ref": ref, "digest": ref.split("@", 1)[1], "record": record_digest,
            "alias_of": record.name if record.name != name else None,
            "upstream_run": record.upstream_run, "base_digest": record.base.digest,
            "created": record.created, "size": size,
        })
    return out


def _age_days(stamp: str) -> float:
    try:
        then = _dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return 0.0  # unknown age: treat as new, never delete on a guess
    return (_dt.datetime.now(_dt.timezone.utc) - then).total_seconds() / 86400


def gc(settings: Settings, keep: int, older_than_days: float, dry_run: bool) -> dict:
    """Retire versions beyond the newest `keep` of each name AND older than the given age.

    Never removes an image that a name or alias points at now, a kept version of any
    name, the base of a kept composition, or the image a run record names.
    """
    if keep < 1:
        raise UsageError(f"--keep {keep} would remove what names point at", "keep at least 1")
    reg = connect(settings)
    repo = envs_repository(settings)
    histories: Dict[str, List[Version]] = {}
    protected: Set[str] = set()
    candidates: Set[str] = set()
    for name in names(reg, repo):
        histories[name] = read_history(reg, repo, name)
        protected.update(_current_digest(reg, repo, name))
        for i, v in enumerate(histories[name]):
            if i >= len(histories[name]) - keep or _age_days(v.created) < older_than_days:
                protected.add(v.image.digest)
            else:
                candidates.add(v.image.digest)
    # Bases of kept compositions (a composed environment used as another's upstream), all the
    # way down: the base of a kept base is kept too.
    # A record is found through the shared referrers index and through the record tags of the
    # names whose history holds the image (the index can lose an entry to a concurrent writer).
    owners: Dict[str, Set[str]] = {}
    for name, versions in histories.items():
        for v in versions:
            owners.setdefault(v.image.digest, set()).add(v.alias_of or name)
    todo, seen = list(protected), set()
    while todo:
        digest = todo.pop()
        if digest in seen:
            continue
        seen.add(digest)
        for record, _ in build_records_of(reg, repo, digest, [name_key(n) for n in sorted(owners.get(digest, ()))]):
            if record.base.digest not in protected:
                protected.add(record.base.digest)
                todo.append(record.base.digest)
    # Images that run records name: those runs must stay composable.
    runs_repo = runs_repository(settings)
    for tag in reg.tags(runs_repo):
        if not tag.startswith("run-"):
            continue  # hist-run-...: a run's earlier records, kept by their index
        got = read_run_record(reg, runs_repo, tag)
        if got:
            protected.add(got[0].image.digest)
    doomed = sorted(candidates - protected)
    report = {"dry_run": dry_run, "deleted": doomed, "kept": len(protected), "names": sorted(histories)}
    if dry_run or not doomed:
        return report
    # Histories first: after a crash nothing refers to a deleted image; at worst an orphan stays.
    for name, versions in histories.items():
        kept = [v for v in versions if v.image.digest not in doomed]
        if len(kept) != len(versions):
            rewrite_history(reg, repo, name, kept)
    tags = reg.tags(repo)
    for digest in doomed:
        for desc in reg.referrers(repo, digest):
            reg.delete_manifest(repo, desc.digest)
        for tag in tags:  # records at tags of their own (per name, per spec)
            if tag.startswith(f"sha256-{digest.split(':', 1)[1]}-"):
                record = reg.head_manifest(repo, tag)
                if record is not None:
                    reg.delete_manifest(repo, record.digest)
        index = reg.head_manifest(repo, "sha256-" + digest.split(":", 1)[1])
        if index:
            reg.delete_manifest(repo, index.digest)
        reg.delete_manifest(repo, digest)  # with it go its unique and spec tags
    return report
