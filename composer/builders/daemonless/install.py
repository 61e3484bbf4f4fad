"""Installing the locked extras with uv into a staging prefix on this machine.

uv installs the added packages (wheels only, hash-checked, no dependency resolution) for the
image's platform and python, from its persistent cache; nothing runs inside the image. A
package without a wheel for the platform is CannotBuild: BuildKit can build it from source.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Optional

from composer.builders.base import CannotBuild
from composer.errors import BuildError
from composer.kinds.pip import Lock, uv_binary, uv_env
from composer.model.records import RunRecord
from composer.settings import Settings


def install_extras(settings: Settings, lock: Lock, upstream: RunRecord, prefix: Path, lockfile: Path) -> None:
    """`uv pip install --prefix`: the staging prefix gets the scheme layout (lib/pythonX.Y/
    site-packages, bin, data), so RECORD's relative paths hold in the image too."""
    prefix.mkdir(parents=True, exist_ok=True)
    if not lock.added:
        return
    lockfile.write_text(lock.added_lock_text(), encoding="utf-8")
    cmd = [
        uv_binary(), "pip", "install", "--prefix", str(prefix), "--python", sys.executable,
        "--python-platform", upstream.platform.python_platform,
        "--python-version", upstream.python.version,
        "--only-binary", ":all:", "--no-deps", "--require-hashes",
        # Copies or hard links from uv's persistent cache: never symlinks into the cache.
        "--link-mode", "hardlink", "--no-progress", "--color", "never", "-r", str(lockfile),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=uv_env(settings), timeout=settings.uv_timeout)
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"installing the extras with uv took over {settings.uv_timeout}s", "check the package index") from exc
    if proc.returncode != 0:
        missing = no_wheel_reason(proc.stderr, upstream)
        if missing:
            raise CannotBuild("daemonless", missing)
        cause = " ".join(l.strip() for l in proc.stderr.splitlines() if l.strip() and not l.startswith(("Using ", "warning")))
        raise BuildError(f"uv could not install the extras for the new layer: {cause[:400] or 'no message'}",
                         "check the package index and the lock")


def no_wheel_reason(stderr: str, upstream: RunRecord) -> Optional[str]:
    """When uv failed because a package has no wheel for the image: which package, said briefly."""
    if not re.search(r"no usable wheels|no wheels with a matching|Wheels are required for", stderr):
        return None
    m = re.search(r"Because (\S+) has no", stderr) or re.search(r"Wheels are required for `([^`]+)`", stderr)
    what = m.group(1) if m else "a package"
    return (f"{what} has no wheel for {upstream.platform.python_platform} / "
            f"python {upstream.python.version} (it must be built from source)")
