"""Step start: resolve a name to the recorded digest, fetch and verify its record, and make
sure the step runs in exactly that environment.

Outside the image (a launcher, a CI job, a laptop) `pull` fetches the image by digest
into the local Docker engine, when there is one, and checks its spec-hash label.
Inside a composed image (COMPOSER_SPEC_HASH is set there) it compares the running
environment with the record: the spec hash, the python version and every locked
distribution's version. A mismatch fails the step with a clear message.
"""

from __future__ import annotations

import os
import platform
from typing import Callable, List, Optional

from composer.catalog import resolve
from composer.errors import EnvironmentProblem, VerificationError
from composer.model.records import BuildRecord
from composer.progress import progress_bar
from composer.requirements import canonical_name
from composer.settings import Settings

SPEC_ENV = "COMPOSER_SPEC_HASH"


# Called with (settings, pull's result); what they return is added to the result. Integrations
# register here: Metaflow links a task verified to run in the environment to it
# (composer/metaflow_link.py).
AFTER_PULL: List[Callable[[Settings, dict], dict]] = []


def verify_running(record: BuildRecord, name: str) -> None:
    """Raise VerificationError unless this process runs in the environment record describes."""
    running = os.environ.get(SPEC_ENV)
    if running != record.spec_hash:
        raise VerificationError(
            f"this step runs in environment {(running or 'unknown')[:19]} but {name!r} is {record.spec_hash[:19]}",
            f"run the step in the image composer ref {name} prints",
        )
    want_py = record.python.version
    if platform.python_version() != want_py:
        raise VerificationError(f"this step runs python {platform.python_version()} but {name!r} has {want_py}",
                                "run the step with the image's recorded interpreter")
    from importlib import metadata

    installed = {}
    for dist in metadata.distributions():
        n = dist.metadata["Name"]
        if n:
            installed.setdefault(canonical_name(n), dist.version)
    for p in record.lock.packages:
        have = installed.get(p.name)
        if have != p.version:
            raise VerificationError(
                f"{p.name} is {have or 'missing'} here but {name!r} recorded {p.version}",
                "something changed the environment after it was built; do not install into a composed image",
            )


def pull_image(ref: str, spec: str, settings: Optional[Settings] = None, label: Optional[str] = None) -> bool:
    """Fetch ref (REPO@sha256:...) into the local engine unless present; check its spec label.
    Returns False when there is no Docker engine to pull into."""
    try:
        import docker
        import docker.errors
    except ImportError:  # pragma: no cover - a declared dependency
        return False
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except docker.errors.DockerException:
        return False
    repo, digest = ref.split("@", 1)
    try:
        try:
            image = client.images.get(ref)
        except docker.errors.ImageNotFound:
            _pull_with_progress(client, settings or Settings(progress="quiet"), repo, digest, label or repo)
            image = client.images.get(ref)
    except docker.errors.APIError as exc:
        raise EnvironmentProblem(f"Docker could not pull {ref}: {exc.explanation or exc}", "check the engine's access to the registry") from exc
    label = (image.labels or {}).get("dev.composer.spec-hash")
    if label != spec:
        raise VerificationError(f"image {ref} carries spec {label} but its record says {spec}", "rebuild the environment")
    return True


def _pull_with_progress(client, settings: Settings, repo: str, digest: str, label: str) -> None:
    """docker pull, its layers' download bytes summed into one bar on a terminal."""
    import docker.errors

    seen: dict = {}
    with progress_bar(settings, f"pulling {label} ({digest[7:19]})") as advance:
        for event in client.api.pull(repo, tag=digest, stream=True, decode=True):
            if event.get("error"):
                raise docker.errors.APIError(event["error"])
            detail = event.get("progressDetail") or {}
            if event.get("status") == "Downloading" and detail.get("total"):
                layer = event.get("id")
                before = seen.get(layer, (0, 0))
                seen[layer] = (detail.get("current") or 0, detail["total"])
                advance(seen[layer][0] - before[0], total=sum(t for _, t in seen.values()))


def pull(settings: Settings, name: str, use_docker: bool = True, in_image: Optional[bool] = None) -> dict:
    ref, record, record_digest = resolve(settings, name)
    inside = (SPEC_ENV in os.environ) if in_image is None else in_image
    out = {"name": name, "ref": ref, "digest": ref.split("@", 1)[1], "record": record_digest,
           "spec_hash": record.spec_hash, "pulled": False, "verified_running": False}
    if inside:
        verify_running(record, name)
        out["verified_running"] = True
    elif use_docker:
        out["pulled"] = pull_image(ref, record.spec_hash, settings, name)
    for hook in AFTER_PULL:
        out.update(hook(settings, out))
    return out
