"""The builder interface: a BuildJob in, an image digest out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from composer.errors import BuildError
from composer.model.records import RunRecord
from composer.model.refs import ImageRef
from composer.oci.client import Registry
from composer.settings import Settings


@dataclass
class BuildJob:
    """Everything a builder needs; builders read it, never change it."""

    settings: Settings
    registry: Registry  # where the image goes
    repository: str  # e.g. PREFIX/envs
    tag: str  # the unique tag NAME-<spec hash prefix>
    base: ImageRef  # the upstream image, pinned by digest
    upstream: RunRecord
    kind: str  # the environment kind: pip | conda
    lock: object  # the pip lock (composer.kinds.pip.Lock): requirements, packages, added
    spec_hash: str
    dockerfile: str  # the rendered Dockerfile (kept in the record whichever builder runs)
    # Writes the BuildKit context (Dockerfile and what it bind-mounts) into a directory and
    # returns the secret files to mount ({id: path}); only BuildKit builders call it.
    prepare_context: Callable[[Path], Dict[str, str]]
    labels: Dict[str, str] = field(default_factory=dict)  # image labels (daemonless writes them itself)
    env: Dict[str, str] = field(default_factory=dict)  # image environment (likewise)
    # Set by a builder that writes the layer's bytes itself (daemonless): how it compressed it
    # (tarball.LayerEncoding.to_json()), for the build record's `layer` section.
    layer: Optional[Dict[str, Any]] = None
    # Work the builder began before the build held the lease (Builder.start): only what writes
    # nothing anywhere but a temporary directory, so it can be thrown away.
    started: Optional[Any] = None

    @property
    def target(self) -> ImageRef:
        return ImageRef(self.registry.host, self.repository, self.tag)


class Builder:
    name = "?"

    def start(self, job: BuildJob) -> None:
        """Begin what needs neither the lease nor the registry (a builder may do nothing), while
        the build waits for them; build() uses it or, when it went wrong, does it again."""

    def build(self, job: BuildJob) -> str:
        """Build job's image, push it to job.target, return the pushed manifest's digest."""
        raise NotImplementedError


class CannotBuild(BuildError):
    """This builder cannot build this job; `reason` says why (another builder may)."""

    def __init__(self, builder: str, reason: str):
        super().__init__(f"the {builder} builder cannot build this image: {reason}",
                         "use a BuildKit builder (--builder auto, buildctl, buildx or docker)")
        self.reason = reason
