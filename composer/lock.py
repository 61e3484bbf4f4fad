"""Locking the extras on top of the upstream's pins, with uv.

Every distribution of the upstream environment becomes a constraint
(name==version), so the resolution can add packages but never move one the
upstream model was trained with. A clash is one line naming both sides.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from .config import Settings
from .errors import EnvironmentProblem, LockConflictError, UsageError
from .requirements import canonical_name

_LOCK_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


@dataclass(frozen=True)
class Lock:
    requirements: List[str]  # the extras as the user asked for them (normalised)
    packages: List[dict]  # the full resolution: name, version, hashes
    added: List[dict]  # the part not already in the upstream: what the new layer installs

    def added_lock_text(self) -> str:
        """The lock file the build installs, hash-checked, one package per entry."""
        lines = []
        for p in self.added:
            hashes = " ".join(f"--hash={h}" for h in p["hashes"])
            lines.append(f"{p['name']}=={p['version']} {hashes}".rstrip())
        return "\n".join(lines) + "\n"


def uv_binary() -> str:
    try:
        import uv

        return uv.find_uv_bin()
    except (ImportError, FileNotFoundError) as exc:
        raise EnvironmentProblem(f"uv is not available ({exc})", "pip install uv")


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


def lock_extras(settings: Settings, requirements: List[str], upstream: dict, run_id: str) -> Lock:
    pins = {d["name"]: d["version"] for d in upstream["distributions"]}
    py = upstream["python"]["version"]
    plat = upstream["platform"]["python_platform"]
    with tempfile.TemporaryDirectory(prefix="composer-lock-") as tmp:
        extras_in = Path(tmp, "extras.in")
        extras_in.write_text("\n".join(requirements) + "\n", encoding="utf-8")
        pins_txt = Path(tmp, "upstream-pins.txt")
        pins_txt.write_text("".join(f"{n}=={v}\n" for n, v in sorted(pins.items())), encoding="utf-8")
        cmd = [
            uv_binary(), "pip", "compile", str(extras_in), "-c", str(pins_txt),
            "--python-version", py, "--python-platform", plat,
            "--generate-hashes", "--no-header", "--no-annotate", "--quiet", "--color", "never",
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=uv_env(settings), timeout=600)
        except subprocess.TimeoutExpired:
            raise LockConflictError("locking the extras with uv took over 10 minutes", "check the package index and the extras")
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
            return LockConflictError(
                f"extra requirement {extra!r} conflicts with upstream pin {clashing[0]} of run {run_id} ({cause})",
                "relax the extra requirement; upstream versions never move",
            )
        return LockConflictError(f"the extras cannot be locked on top of run {run_id} ({cause})", "relax the extra requirements")
    return UsageError(f"uv could not lock the extras ({cause or 'no message'})", "check the extras file and the package index")
