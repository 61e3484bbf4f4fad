"""The environment-kind interface: what differs between a pip and a conda composition.

A kind reads the extras, says what its lock depends on (the lock cache's key), locks,
renders its Dockerfile template, prepares the BuildKit context, and adds its sections to
the records. Everything else (the cache, the lease, the builders, publishing) is shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from composer.model.records import Distribution, RunRecord
from composer.model.refs import ImageRef
from composer.settings import Settings

if TYPE_CHECKING:  # the pip lock type lives with the pip kind, which implements this interface
    from composer.kinds.pip import Lock


@dataclass(frozen=True)
class Composition:
    """One locked composition: everything the spec, the builders and the records need."""

    kind: "EnvironmentKind"
    requirements: Tuple[str, ...]  # the extras as read (normalised)
    lock: "Lock"  # the pip part (empty for a conda-only environment.yml)
    extra: Optional[object]  # what the kind adds (conda: its CondaLock), None for pip
    template: str  # e.g. pip/1: enters the spec hash
    spec_hash: str


class EnvironmentKind:
    name = "?"  # also the template's name: dockerfiles/<name>.Dockerfile

    def claims_file(self, extra: Path) -> bool:
        """Is this file in this kind's own format (an environment.yml for conda)?"""
        return False

    def claims_upstream(self, upstream: RunRecord) -> bool:
        """Must a composition on this upstream be of this kind (a conda prefix)?"""
        return False

    def read_extras(self, path: Path) -> List[str]:
        raise NotImplementedError

    def lock_inputs(self, settings: Settings, upstream: RunRecord, requirements: List[str]) -> dict:
        """Everything the lock depends on, as canonical JSON values (the lock cache's key)."""
        raise NotImplementedError

    def lock(self, settings: Settings, upstream: RunRecord, requirements: List[str], path: Path,
             run_id: str) -> Tuple["Lock", Optional[object]]:
        raise NotImplementedError

    def cached(self, entry: dict, upstream: RunRecord) -> Optional[Tuple["Lock", Optional[object]]]:
        """A lock cache entry back as a lock, or None when it does not hold up."""
        raise NotImplementedError

    def to_cache(self, lock: "Lock", extra: Optional[object]) -> dict:
        raise NotImplementedError

    def spec_parts(self, extra: Optional[object]) -> Dict[str, object]:
        """Keyword arguments the kind adds to composer.model.spec.spec_document."""
        return {}

    def render(self, settings: Settings, base: ImageRef, upstream: RunRecord, comp: Composition) -> str:
        raise NotImplementedError

    def prepare_context(self, settings: Settings, context: Path, comp: Composition, upstream: RunRecord) -> None:
        """Write what the kind's Dockerfile bind-mounts beyond the shared pip part."""

    def record_section(self, settings: Settings, comp: Composition, upstream: RunRecord) -> Optional[dict]:
        """The build record's section for this kind (conda), or None."""
        return None

    def composed_environment(self, comp: Composition, upstream: RunRecord) -> Tuple[List[Distribution], Optional[dict]]:
        """What the composed environment's run record adds: distributions, and its conda section."""
        return [Distribution(p["name"], p["version"]) for p in comp.lock.packages], None
