"""What is in the registry, by name: `resolve` (here), `listing` (ls, history, alias, gc),
`rebuild` (rebuilds on triggers) and `pull` (the step-start fetch and check)."""

from __future__ import annotations

from typing import Tuple

from composer.errors import NotFoundError, UsageError, VerificationError
from composer.model.records import BuildRecord
from composer.model.refs import check_name
from composer.oci import connect
from composer.history import read_history
from composer.settings import Settings
from composer.store import build_records_of, envs_repository, name_key, newest_record


def resolve(settings: Settings, name: str) -> Tuple[str, BuildRecord, str]:
    """NAME, NAME@N (version N) or an alias -> (REPO@sha256:..., its verified build record, the record's digest)."""
    name, _, version = name.partition("@")
    check_name(name)
    reg = connect(settings)
    repo = envs_repository(settings)
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
    # The shared referrers index, and the name's own record tag (the index may have lost the
    # record to a concurrent writer; the own tag only this name's publishers write).
    described = build_records_of(reg, repo, digest, [name_key(target)])
    records = [r for r in described if r[0].name == target]
    if not records and not version:
        # No record under this name: it may be an alias, whose records are its target's.
        newest = read_history(reg, repo, name)[-1:]
        if newest and newest[0].image.digest == digest and newest[0].alias_of:
            described = build_records_of(reg, repo, digest, [name_key(newest[0].alias_of)])
            records = [r for r in described if r[0].name == newest[0].alias_of]
    if not records:
        raise VerificationError(f"{name!r} points to {digest} but no composer record describes it",
                                "rebuild it with composer build --update")
    record, rdesc = newest_record(records)
    return f"{settings.registry_host}/{repo}@{digest}", record, rdesc.digest
