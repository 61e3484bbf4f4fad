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

from composer.builders.base import Builder, BuildJob, CannotBuild
from composer.errors import BuildError
from composer.settings import Settings

__all__ = ["Builder", "BuildJob", "CannotBuild", "build_image", "choose_builder", "start_build"]


def choose_builder(job: BuildJob) -> Tuple[Builder, Optional[str]]:
    """The builder to try first, and why not the daemonless one (None when it is chosen).

    `auto` uses the daemonless builder when it can, else BuildKit; `--builder daemonless`
    fails with one line saying why instead; a named BuildKit builder (buildctl, buildx,
    docker) is used as it is."""
    from composer.builders import buildkit, daemonless  # loaded when a build is planned, not on a cache hit

    settings = job.settings
    reason: Optional[str] = None
    if settings.builder in ("auto", "daemonless"):
        reason = daemonless.unsupported_reason(job)
        if reason is None:
            return daemonless.DaemonlessBuilder(), None
        refuse_daemonless(settings, reason)
    return buildkit.detect(settings), reason


def start_build(job: BuildJob) -> None:
    """Let the daemonless builder, when choose_builder would pick it, begin what it can before the
    lease is held (it installs the packages). BuildKit builders begin nothing: detecting one
    runs commands, which choose_builder does once, when the build runs. Never raises: the build
    itself meets, and reports, whatever went wrong here."""
    from composer.builders import daemonless

    try:
        if job.settings.builder in ("auto", "daemonless"):
            daemonless.DaemonlessBuilder().start(job)  # it begins only what it can build
    except Exception:  # noqa: BLE001  # the build itself reports it
        job.started = None


def refuse_daemonless(settings: Settings, reason: str, cause: Optional[BaseException] = None) -> None:
    if settings.builder == "daemonless":
        raise BuildError(f"--builder daemonless cannot build this image: {reason}",
                         "use --builder auto to fall back to BuildKit, or change what makes it unsupported") from cause


def build_image(job: BuildJob) -> Tuple[str, str]:
    """Build job's image and push it to job.target with the builder choose_builder picks:
    (image digest, builder name). A daemonless build that finds out mid-way that it cannot (a
    package without a wheel) falls back to BuildKit under `auto`; BuildKit says why on stderr."""
    from composer.builders import buildkit

    settings = job.settings
    builder, reason = choose_builder(job)
    if reason is None and settings.builder in ("auto", "daemonless"):  # the daemonless builder was chosen
        try:
            return builder.build(job), "daemonless"
        except CannotBuild as exc:
            refuse_daemonless(settings, exc.reason, exc)
            reason = exc.reason
            builder = buildkit.detect(settings)
    if reason and settings.progress != "quiet":
        print(f"composer: building with BuildKit: the daemonless builder cannot ({reason})", file=sys.stderr)
    return builder.build(job), builder.name
