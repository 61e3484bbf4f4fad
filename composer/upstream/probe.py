"""Looking inside an upstream image: pin it to a digest, read its platform from the registry,
and run a tiny, network-less python probe in it for python and its distributions.

Whatever the probe prints is the image's word, not ours: RunRecord.from_json checks every
field before anything uses it.
"""

from __future__ import annotations

import json
import platform as host_platform
import re
from typing import Tuple

from composer.errors import EnvironmentProblem, NotFoundError, UsageError
from composer.model.refs import ImageRef, parse_image_ref
from composer.oci import connect
from composer.oci.client import DOCKER_LIST, OCI_INDEX
from composer.settings import Settings

# Runs inside the image with its own shell and PATH: finds python the way the
# image's users would, then reports what a lock needs to know about it.
# Conda: an active prefix ($CONDA_PREFIX) comes before PATH, and a micromamba image's
# environment ($MAMBA_ROOT_PREFIX, $ENV_NAME: its entrypoint activates it, the probe bypasses
# the entrypoint) too; /opt/conda is the last resort.
FIND_PYTHON = (
    'mm=""; if [ -n "$MAMBA_ROOT_PREFIX" ]; then if [ -z "$ENV_NAME" ] || [ "$ENV_NAME" = base ]; '
    'then mm="$MAMBA_ROOT_PREFIX/bin/python"; else mm="$MAMBA_ROOT_PREFIX/envs/$ENV_NAME/bin/python"; fi; fi; '
    'for p in "$COMPOSER_PYTHON" "${CONDA_PREFIX:+$CONDA_PREFIX/bin/python}" "$mm" python3 python /opt/conda/bin/python; do '
    '[ -n "$p" ] && command -v "$p" >/dev/null 2>&1 && exec "$p" -c "$0"; done; '
    'echo "composer-probe: no python interpreter on PATH" >&2; exit 97'
)
PROBE_SCRIPT = r"""
import json, os, platform, sys, sysconfig
try:
    from importlib import metadata
    seen = {}
    for d in metadata.distributions():
        name = d.metadata["Name"]
        if name and name.lower() not in seen:
            seen[name.lower()] = {"name": name, "version": d.version}
    dists = list(seen.values())
except Exception:
    dists = []
libc, libc_version = platform.libc_ver()
stdlib = sysconfig.get_path("stdlib") or ""
kind = "system"
if os.path.isdir(os.path.join(sys.prefix, "conda-meta")):
    kind = "conda"
elif sys.prefix != getattr(sys, "base_prefix", sys.prefix):
    kind = "venv"
# conda (composer/kinds/conda.py): the prefix python runs in, or whose site-packages it imports
# from, or $CONDA_PREFIX; its packages as conda-meta/ lists them; micromamba if the image has one.
conda = None
where = [sys.prefix, os.environ.get("CONDA_PREFIX") or ""]
where += [os.path.dirname(os.path.dirname(os.path.dirname(p))) for p in sys.path if p.endswith("site-packages")]
where = [p for p in where if p and os.path.isdir(os.path.join(p, "conda-meta"))]
if where:
    import shutil
    meta, pkgs = os.path.join(where[0], "conda-meta"), []
    for f in sorted(os.listdir(meta)):
        try:
            with open(os.path.join(meta, f)) as fh:
                r = json.load(fh) if f.endswith(".json") else None
        except Exception:
            r = None
        if isinstance(r, dict) and r.get("name"):
            pkgs.append({k: r.get(k) for k in ("name", "version", "build", "build_number", "channel", "subdir", "url",
                                                "fn", "sha256", "md5", "depends", "constrains", "noarch")})
    mm = os.environ.get("MAMBA_EXE") or ""
    mm = mm if mm and os.access(mm, os.X_OK) else (shutil.which("micromamba") or "")
    conda = {"prefix": where[0], "packages": pkgs, "micromamba": mm or None}

print(json.dumps({
    "executable": sys.executable,
    "version": platform.python_version(),
    "implementation": sys.implementation.name,
    "prefix": sys.prefix,
    "kind": kind,
    "site_packages": sysconfig.get_path("purelib"),
    "externally_managed": kind == "system" and os.path.exists(os.path.join(stdlib, "EXTERNALLY-MANAGED")),
    "machine": platform.machine(),
    "libc": libc, "libc_version": libc_version,
    "distributions": dists,
    "conda": conda,
}))
"""

_ARCH_TO_MACHINE = {"amd64": "x86_64", "arm64": "aarch64", "ppc64le": "ppc64le", "s390x": "s390x"}
_MACHINE_TO_ARCH = {v: k for k, v in _ARCH_TO_MACHINE.items()}


def pin_image(settings: Settings, text: str) -> Tuple[ImageRef, dict]:
    """Resolve an image reference to a single-platform manifest digest and its config."""
    ref = parse_image_ref(text)
    reg = connect(settings, ref.registry)
    got = reg.get_manifest(ref.repository, ref.reference)
    if got is None:
        raise NotFoundError(f"image {text} is not in registry {ref.registry}", "push it first or fix the reference")
    body, desc = got
    manifest = json.loads(body)
    if desc.media_type in (OCI_INDEX, DOCKER_LIST):
        want = _MACHINE_TO_ARCH.get(host_platform.machine(), host_platform.machine())
        match = [m for m in manifest.get("manifests", []) if (m.get("platform") or {}).get("os") == "linux"
                 and (m.get("platform") or {}).get("architecture") == want]
        if not match:
            raise UsageError(f"image {text} has no linux/{want} manifest", "pass a single-platform image digest")
        return pin_image(settings, f"{ref.name}@{match[0]['digest']}")
    if "config" not in manifest:
        raise UsageError(f"{text} is not a container image manifest", "pass an image reference, not an artifact")
    config = json.loads(reg.get_blob(ref.repository, manifest["config"]["digest"]))
    return ref.with_digest(desc.digest), config


def probe_image(image: ImageRef, config: dict) -> dict:
    """Run a tiny python probe inside the image (Docker engine) and return what it reports."""
    try:
        import docker
        import docker.errors
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise EnvironmentProblem(f"the docker SDK is not importable ({exc})", "pip install docker") from exc
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        raise EnvironmentProblem(
            f"no Docker engine to look inside {image} ({type(exc).__name__})",
            "start Docker (make infra) or pass --requirements with the run's pinned packages",
        ) from exc
    pinned = image.pinned()
    want = f"{config.get('os') or 'linux'}/{config.get('architecture') or '?'}"
    engine = client.info()
    have = f"{engine.get('OSType') or 'linux'}/{_MACHINE_TO_ARCH.get(engine.get('Architecture'), engine.get('Architecture'))}"
    if want != have:
        raise UsageError(
            f"image {pinned} is for {want} but this Docker engine runs {have}",
            "record it on a machine of that platform, or pick the image's build for this one",
        )
    try:
        try:
            client.images.get(pinned)
        except docker.errors.ImageNotFound:
            client.images.pull(image.name, tag=image.digest)
        # An image may name its interpreter in a label (composed conda images do); its Env wins.
        label = ((config.get("config") or {}).get("Labels") or {}).get("dev.composer.python")
        own_env = any(e.startswith("COMPOSER_PYTHON=") for e in (config.get("config") or {}).get("Env") or [])
        out = client.containers.run(
            pinned, entrypoint=["/bin/sh"], command=["-c", FIND_PYTHON, PROBE_SCRIPT],
            remove=True, network_disabled=True, stdout=True, stderr=False,
            environment={"COMPOSER_PYTHON": label} if label and not own_env else None,
        )
    except docker.errors.ContainerError as exc:
        if exc.exit_status in (97, 126, 127):
            raise UsageError(f"image {pinned} has no python interpreter", "compose on an image that has python3 on its PATH") from exc
        raise UsageError(f"looking inside {pinned} failed (exit {exc.exit_status})", "check that the image runs /bin/sh and python") from exc
    except docker.errors.APIError as exc:
        raise EnvironmentProblem(f"Docker could not run {pinned}: {exc.explanation or exc}", "check the Docker engine and registry access") from exc
    try:
        return json.loads(out.decode("utf-8").strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise UsageError(f"the python probe in {pinned} printed no report", "check the image's python") from exc


def python_platform(arch: str, probe: dict) -> str:
    """uv's --python-platform for the image: e.g. x86_64-manylinux_2_36."""
    machine = _ARCH_TO_MACHINE.get(arch, probe.get("machine") or arch)
    if probe.get("libc") == "glibc" and re.match(r"^\d+\.\d+", probe.get("libc_version") or ""):
        major, minor = probe["libc_version"].split(".")[:2]
        return f"{machine}-manylinux_{major}_{minor}"
    return f"{machine}-unknown-linux-musl" if probe.get("libc") in ("", None) else f"{machine}-unknown-linux-gnu"
