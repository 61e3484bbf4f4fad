"""Builders turn a composition into an image in the registry. One interface, several builders:

- `daemonless` (composer/builders/daemonless/): appends one reproducible layer to the
  upstream image with no daemon and nothing run inside the image (pip compositions only);
- BuildKit (composer/builders/buildkit.py): `buildctl`, `docker buildx`, or a Docker CLI
  with built-in BuildKit, each run as a subprocess on the rendered Dockerfile.

`build_image` is the one place that decides which builder runs, and says why; every kind
of environment goes through it. To add a builder: implement `Builder` (composer/builders/
base.py), then teach `build_image` when to pick it.
"""

from __future__ import annotations

import sys
from typing import Optional, Tuple

from composer.builders import buildkit, daemonless
from composer.builders.base import Builder, BuildJob, CannotBuild
from composer.errors import BuildError

__all__ = ["Builder", "BuildJob", "CannotBuild", "build_image"]


def build_image(job: BuildJob) -> Tuple[str, str]:
    """Build job's image and push it to job.target: (image digest, builder name).

    `auto` uses the daemonless builder when it can, else BuildKit, saying why on stderr (also
    when the daemonless build finds out mid-way that it cannot: a package without a wheel);
    `--builder daemonless` fails with one line saying why instead; a named BuildKit builder
    (buildctl, buildx, docker) is used as it is."""
    settings = job.settings
    reason: Optional[str] = None
    if settings.builder in ("auto", "daemonless"):
        cause: Optional[CannotBuild] = None
        reason = daemonless.unsupported_reason(job)
        if reason is None:
            try:
                return daemonless.DaemonlessBuilder().build(job), "daemonless"
            except CannotBuild as exc:
                reason, cause = exc.reason, exc
        if settings.builder == "daemonless":
            raise BuildError(f"--builder daemonless cannot build this image: {reason}",
                             "use --builder auto to fall back to BuildKit, or change what makes it unsupported") from cause
        if settings.progress != "quiet":
            print(f"composer: building with BuildKit: the daemonless builder cannot ({reason})", file=sys.stderr)
    builder = buildkit.detect(settings)
    return builder.build(job), builder.name
