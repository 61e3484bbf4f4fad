"""pip environments: extras from requirements.txt or pyproject.toml, locked with uv on top
of the upstream's pins, installed by dockerfiles/pip.Dockerfile (or the daemonless builder).

Every distribution of the upstream environment becomes a constraint
(name==version), so the resolution can add packages but never move one the
upstream model was trained with. A clash is one line naming both sides.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from composer.dockerfile import render_pip
from composer.errors import EnvironmentProblem, LockConflictError, UsageError, VerificationError
from composer.kinds.base import Composition, EnvironmentKind
from composer.model.canonical import canonical_json, sha256_digest
from composer.model.records import RunRecord
from composer.model.refs import ImageRef
from composer.requirements import canonical_name, read_requirements
from composer.settings import Settings

_LOCK_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")
# What may be written into a file uv reads (constraints, lock): one PEP 503 name, one PEP 440
# version with nothing around it, artifact hashes. Anything else could become an option line
# (--extra-index-url ...) that makes uv fetch and build code from a server nobody configured.
_SAFE_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\Z")
_SAFE_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+!_-]*\Z")
_SAFE_HASH = re.compile(r"^(?:sha256|sha384|sha512):[a-f0-9]+\Z")


def safe_pin(name: object, version: object, what: str) -> str:
    """name==version for a file uv reads, or a VerificationError (exit 7): the values came from a
    record or an image, and a newline or an option in them must never reach uv."""
    from packaging.version import InvalidVersion, Version

    ok = isinstance(name, str) and isinstance(version, str) and bool(_SAFE_NAME.match(name)) \
        and bool(_SAFE_VERSION.match(version))
    if ok:
        try:
            Version(version)
        except InvalidVersion:
            ok = False
    if not ok:
        raise VerificationError(f"{what} pins {str(name)[:60]!r}=={str(version)[:60]!r}, which is not a PEP 503 name "
                                "and PEP 440 version", "re-record the upstream run; check who can push to the registry")
    return f"{name}=={version}"


@dataclass(frozen=True)
class Lock:
    requirements: List[str]  # the extras as the user asked for them (normalised)
    packages: List[dict]  # the full resolution: name, version, hashes
    added: List[dict]  # the part not already in the upstream: what the new layer installs

    def added_lock_text(self) -> str:
        """The lock file the build installs, hash-checked, one package per entry."""
        lines = []
        for p in self.added:
            bad = [h for h in p["hashes"] if not isinstance(h, str) or not _SAFE_HASH.match(h)]
            if bad:
                raise VerificationError(f"the lock holds a malformed hash for {str(p['name'])[:60]!r}", "clear composer's cache and rerun")
            hashes = " ".join(f"--hash={h}" for h in p["hashes"])
            lines.append(f"{safe_pin(p['name'], p['version'], 'the lock')} {hashes}".rstrip())
        return "\n".join(lines) + "\n"


def uv_binary() -> str:
    try:
        import uv

        return uv.find_uv_bin()
    except (ImportError, FileNotFoundError) as exc:
        raise EnvironmentProblem(f"uv is not available ({exc})", "pip install uv") from exc


def uv_env(settings: Settings) -> Dict[str, str]:
    """uv's environment for talking to the index: CA bundle and (secret) index URLs."""
    env = dict(os.environ)
    ca = settings.ca_bundle_path()
    if ca:
        env["SSL_CERT_FILE"] = ca
    if settings.index_url:
        env["UV_INDEX_URL"] = settings.index_url
    if settings.extra_index_url:
        env["UV_EXTRA_INDEX_URL"] = settings.extra_index_url
    return env


def parse_lock(text: str) -> List[dict]:
    """uv pip compile --generate-hashes output -> [{name, version, hashes}] sorted by name."""
    packages: Dict[str, dict] = {}
    current: Optional[dict] = None
    for raw in text.replace("\\\n", " ").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _LOCK_LINE.match(line)
        if not m:
            raise UsageError(f"uv produced a lock line composer cannot read: {line[:80]!r}", "report this with the extras file")
        current = {"name": canonical_name(m.group(1)), "version": m.group(2), "hashes": sorted(re.findall(r"--hash=(\S+)", line))}
        packages[current["name"]] = current
    return sorted(packages.values(), key=lambda p: p["name"])


def lock_extras(settings: Settings, requirements: List[str], pins: Dict[str, str], python_version: str,
                python_platform: str, run_id: str) -> Lock:
    """Lock requirements with uv for that python and platform, every pin a constraint."""
    py, plat = python_version, python_platform
    with tempfile.TemporaryDirectory(prefix="composer-lock-") as tmp:
        extras_in = Path(tmp, "extras.in")
        extras_in.write_text("\n".join(requirements) + "\n", encoding="utf-8")
        pins_txt = Path(tmp, "upstream-pins.txt")
        pins_txt.write_text("".join(safe_pin(n, v, f"run {run_id}") + "\n" for n, v in sorted(pins.items())), encoding="utf-8")
        cmd = [
            uv_binary(), "pip", "compile", str(extras_in), "-c", str(pins_txt),
            "--python-version", py, "--python-platform", plat,
            "--generate-hashes", "--no-header", "--no-annotate", "--quiet", "--color", "never",
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=uv_env(settings), timeout=600)
        except subprocess.TimeoutExpired as exc:
            raise LockConflictError("locking the extras with uv took over 10 minutes",
                                    "check the package index and the extras") from exc
    if proc.returncode != 0:
        raise _explain_failure(proc.stderr, requirements, pins, run_id)
    packages = parse_lock(proc.stdout)
    added = []
    for p in packages:
        pinned = pins.get(p["name"])
        if pinned is None:
            added.append(p)
        elif pinned != p["version"]:  # uv honours constraints; this guards the guarantee itself
            raise LockConflictError(f"the lock moved upstream pin {p['name']}=={pinned} to {p['version']}", "report this; the upstream must not change")
    return Lock(requirements=list(requirements), packages=packages, added=added)


def _explain_failure(stderr: str, requirements: List[str], pins: Dict[str, str], run_id: str) -> Exception:
    cause = " ".join(line.strip() for line in stderr.splitlines() if line.strip() and not line.startswith("warning"))
    cause = re.sub(r"^error:\s*", "", cause)
    cause = re.sub(r"\s*cause:\s*", ": ", cause)
    words = set(canonical_name(w) for w in re.findall(r"[A-Za-z0-9][A-Za-z0-9._-]*", cause))
    if "not found in the package registry" in cause or "was not found" in cause:
        missing = [r for r in requirements if canonical_name(re.split(r"[\[<>=!~; ]", r, 1)[0]) in words]
        what = missing[0] if missing else "a requirement"
        return UsageError(f"extra requirement {what!r} was not found on the package index ({cause})", "fix the name or set COMPOSER_INDEX_URL")
    if "No solution found" in stderr:
        extra = next((r for r in requirements if canonical_name(re.split(r"[\[<>=!~; ]", r, 1)[0]) in words), None)
        # Prefer a pin quoted exactly (uv says "you require attrs==23.1.0") over one merely mentioned.
        quoted = [f"{n}=={v}" for n, v in sorted(pins.items()) if f"{n}=={v}" in cause.lower()]
        clashing = quoted or [f"{n}=={v}" for n, v in sorted(pins.items()) if n in words]
        if extra and clashing:
            error = LockConflictError(
                f"extra requirement {extra!r} conflicts with upstream pin {clashing[0]} of run {run_id} ({cause})",
                "relax the extra requirement; upstream versions never move",
            )
            error.clashing_pin = clashing[0]  # type: ignore[attr-defined]  (the conda kind renames a clash with its own packages)
            return error
        return LockConflictError(f"the extras cannot be locked on top of run {run_id} ({cause})", "relax the extra requirements")
    return UsageError(f"uv could not lock the extras ({cause or 'no message'})", "check the extras file and the package index")


def secretless(url: Optional[str]) -> Optional[str]:
    """What a cache key may keep of an index URL that can carry a token: its hash."""
    return sha256_digest(url.encode()) if url else None


def lock_hash(lock: Lock) -> str:
    return sha256_digest(canonical_json(asdict(lock)))


def lock_from_cache(entry: dict, pins: Dict[str, str]) -> Optional[Lock]:
    """A cached pip lock, if it agrees with itself and moves no upstream pin."""
    try:
        lock = Lock(**entry["lock"])
    except (TypeError, KeyError):
        return None
    if entry.get("lock_hash") != lock_hash(lock) or any(pins.get(p["name"], p["version"]) != p["version"] for p in lock.packages):
        return None
    return lock


class PipKind(EnvironmentKind):
    name = "pip"

    def read_extras(self, path: Path) -> List[str]:
        return read_requirements(path)

    def lock_inputs(self, settings: Settings, upstream: RunRecord, requirements: List[str]) -> dict:
        # Not the image or run: a new run with the same pins (a retrained model) locks the same.
        return {
            "inputs": "composer.lock-inputs/v1",
            "pins": sorted(d.pin for d in upstream.distributions),
            "python": upstream.python.version, "platform": upstream.platform.python_platform,
            "requirements": sorted(requirements),
            "index_url": secretless(settings.index_url), "extra_index_url": secretless(settings.extra_index_url),
        }

    def lock(self, settings: Settings, upstream: RunRecord, requirements: List[str], path: Path,
             run_id: str) -> Tuple[Lock, None]:
        return lock_extras(settings, requirements, upstream.pins, upstream.python.version,
                           upstream.platform.python_platform, run_id), None

    def cached(self, entry: dict, upstream: RunRecord) -> Optional[Tuple[Lock, None]]:
        lock = lock_from_cache(entry, upstream.pins)
        return (lock, None) if lock is not None else None

    def to_cache(self, lock: Lock, extra: Optional[object]) -> dict:
        return {"lock": asdict(lock), "lock_hash": lock_hash(lock)}

    def render(self, settings: Settings, base: ImageRef, upstream: RunRecord, comp: Composition) -> str:
        dockerfile, _ = render_pip(base_ref=base.pinned(), base_name=upstream.image.human_name, base_digest=base.digest or "",
                                   python=upstream.python.to_json(), spec_hash=comp.spec_hash, syntax=settings.dockerfile_syntax)
        return dockerfile
