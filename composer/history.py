"""Names over time: every version a name (or alias) pointed to, kept in the registry.

A name's history is an OCI image index at tag hist-<name> in the environments
repository. Its entries are the image manifests the name has pointed to, oldest
first, annotated with the version number, the record, the spec hash, when and
why it moved. Because the index references them, every version stays in the
registry and resolvable (NAME@N, or by digest) until `composer gc` retires it.

An alias (latest, stable, ...) is a name that only moves when asked; its entries
also say which name and version it was pointed at (dev.composer.alias-of).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, List, Optional

from composer.errors import RegistryError, VerificationError
from composer.model.canonical import canonical_json
from composer.model.records import utc_now
from composer.model.refs import DIGEST_RE, TAG_RE
from composer.oci.client import OCI_INDEX, Descriptor, Registry

# dev.composer.version means composer's own version in image labels; a history entry's number
# is dev.composer.history.version (entries written before that are still read).
A_VERSION = "dev.composer.history.version"
A_VERSION_OLD = "dev.composer.version"
A_RECORD = "dev.composer.record"
A_SPEC = "dev.composer.spec-hash"
A_CREATED = "org.opencontainers.image.created"
A_ALIAS_OF = "dev.composer.alias-of"
A_REASON = "dev.composer.reason"


def history_tag(name: str) -> str:
    return f"hist-{name}"


@dataclass(frozen=True)
class Version:
    number: int
    image: Descriptor
    record: str
    spec_hash: str
    created: str
    reason: str
    alias_of: Optional[str] = None

    def to_json(self) -> dict:
        return {"version": self.number, "digest": self.image.digest, "record": self.record, "spec_hash": self.spec_hash,
                "created": self.created, "reason": self.reason, "alias_of": self.alias_of}


def _parse(entry: object, where: str) -> Version:
    """One history entry, checked: the index is registry data anyone with push access can write."""
    a = entry.get("annotations") if isinstance(entry, dict) else None
    a = a if isinstance(a, dict) else {}
    number = a.get(A_VERSION, a.get(A_VERSION_OLD, ""))
    desc = Descriptor.from_dict(entry if isinstance(entry, dict) else {})
    record, spec = a.get(A_RECORD, ""), a.get(A_SPEC, "")
    alias_of = a.get(A_ALIAS_OF)
    if (not str(number).isdigit() or not DIGEST_RE.match(desc.digest) or (record and not DIGEST_RE.match(record))
            or (spec and not DIGEST_RE.match(spec)) or (alias_of is not None and not TAG_RE.match(str(alias_of)))):
        raise VerificationError(f"the history {where} has a malformed entry", "the registry content is corrupt or tampered with")
    return Version(int(number), desc, record, spec, str(a.get(A_CREATED, "")), str(a.get(A_REASON, "")), alias_of)


def read_history(reg: Registry, repo: str, name: str) -> List[Version]:
    got = reg.get_manifest(repo, history_tag(name))
    if got is None:
        return []
    return parse_history(got[0], name)


def append_version(reg: Registry, repo: str, name: str, image: Descriptor, record: str, spec_hash: str,
                   reason: str, alias_of: Optional[str] = None, before_write: Optional[Callable[[], None]] = None) -> Version:
    """Add a version unless the newest one already is this image (and alias target); returns the
    newest. before_write runs right before the history is written (not when nothing is)."""
    for _ in range(5):
        got = reg.get_manifest(repo, history_tag(name))
        index = json.loads(got[0]) if got else {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [],
                                                 "annotations": {"dev.composer.history": name}}
        versions = [_parse(m, f"of {name!r}") for m in index["manifests"]]
        if versions and versions[-1].image.digest == image.digest and versions[-1].alias_of == alias_of:
            return versions[-1]
        number = (versions[-1].number if versions else 0) + 1
        annotations = {A_VERSION: str(number), A_RECORD: record, A_SPEC: spec_hash, A_CREATED: utc_now(), A_REASON: reason}
        if alias_of:
            annotations[A_ALIAS_OF] = alias_of
        index["manifests"].append({"mediaType": image.media_type, "digest": image.digest, "size": image.size,
                                   "annotations": annotations})
        if before_write is not None:
            before_write()
        reg.put_manifest(repo, history_tag(name), canonical_json(index), OCI_INDEX)
        check = read_history(reg, repo, name)  # a concurrent writer may have replaced ours
        if check and check[-1].number == number and check[-1].image.digest == image.digest:
            return check[-1]
    raise RegistryError(f"could not update the history of {name!r}", "retry the command")


def history_index(name: str, keep: List[Version]) -> bytes:
    """The history index holding exactly the given versions (numbers as they were)."""
    return canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "annotations": {"dev.composer.history": name}, "manifests": [
        {"mediaType": v.image.media_type, "digest": v.image.digest, "size": v.image.size, "annotations": {
            k: val for k, val in {A_VERSION: str(v.number), A_RECORD: v.record, A_SPEC: v.spec_hash, A_CREATED: v.created,
                                  A_REASON: v.reason, A_ALIAS_OF: v.alias_of}.items() if val}}
        for v in keep]})


def parse_history(body: bytes, name: str) -> List[Version]:
    """The versions of a history index's bytes (read_history, for bytes from elsewhere: an archive)."""
    try:
        index = json.loads(body)
    except ValueError as exc:
        raise VerificationError(f"the history of {name!r} is not JSON", "the content is corrupt") from exc
    entries = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(entries, list):
        raise VerificationError(f"the history of {name!r} is not an OCI index", "the registry content is corrupt or tampered with")
    return [_parse(m, f"of {name!r}") for m in entries]


def rewrite_history(reg: Registry, repo: str, name: str, keep: List[Version]) -> None:
    """Replace the history with the kept versions (gc); numbers stay as they were."""
    reg.put_manifest(repo, history_tag(name), history_index(name, keep), OCI_INDEX)
