"""An upstream's conda prefix, as its run record keeps it: read from the image's conda-meta/
(by the probe) or from an explicit list (`conda list --explicit --sha256`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional
from urllib.parse import unquote, urlparse

from composer.errors import UsageError
from composer.model.urls import redact
from composer.requirements import read_text


# -- explicit lists (conda list --explicit) and the run record's conda section --------
def is_explicit_file(path: Path) -> bool:
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            return any(line.strip() == "@EXPLICIT" for _, line in zip(range(200), f))
    except OSError:
        return False


def parse_explicit(path: Path) -> List[dict]:
    """`conda list --explicit [--sha256]` / `micromamba env export --explicit` output -> packages."""
    text = read_text(path, "explicit conda list")
    out: Dict[str, dict] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#") or line == "@EXPLICIT":
            continue
        url, _, digest = line.partition("#")
        parsed = urlparse(url)
        parts = [p for p in unquote(parsed.path).split("/") if p]
        fn = parts[-1] if parts else ""
        stem = re.sub(r"\.(conda|tar\.bz2)$", "", fn)
        bits = stem.rsplit("-", 2)
        if parsed.scheme not in ("http", "https", "file") or stem == fn or len(bits) != 3 or len(parts) < 2:
            raise UsageError(f"{path}:{number}: {line[:80]!r} is not a package URL of an explicit list",
                             "write CHANNEL/SUBDIR/NAME-VERSION-BUILD.conda#sha256 lines (conda list --explicit --sha256)")
        digest = digest.strip().lower()
        digest = digest[len("sha256:"):] if digest.startswith("sha256:") else digest
        sha256 = digest if re.fullmatch(r"[0-9a-f]{64}", digest) else None
        md5 = digest if re.fullmatch(r"[0-9a-f]{32}", digest) else None
        subdir = parts[-2]
        channel = url[: url.rindex(f"/{subdir}/")]
        out[bits[0].lower()] = {"name": bits[0].lower(), "version": bits[1], "build": bits[2], "subdir": subdir,
                                "channel": channel, "url": url, "fn": fn, "sha256": sha256, "md5": md5}
    if not out:
        raise UsageError(f"explicit conda list {path} names no package", "pass the output of conda list --explicit --sha256")
    return list(out.values())


def with_explicit_packages(probe: dict, packages: List[dict], image: str) -> dict:
    """The probe's report with the conda packages replaced by the given explicit list."""
    found = probe.get("conda")
    if not found:
        raise UsageError(f"an explicit conda list was given but image {image} has no conda prefix",
                         "record the run with its pip freeze instead, or use the image that has the prefix")
    return {**probe, "conda": {**found, "packages": packages, "packages_source": "explicit"}}


def _noarch(value) -> Optional[str]:
    if isinstance(value, dict):
        value = value.get("type")
    if value is True:
        return "generic"
    return value if value in ("python", "generic") else None


# Channels given with credentials in this process: redacted URL -> the URL as given. Records,
# labels, conda-meta and logs only ever hold the redacted form; fetching puts them back.
_CREDENTIALED: Dict[str, str] = {}


def remember_channel(url: str) -> str:
    """The channel URL as it may be stored; a credentialed one is remembered for this process."""
    clean = redact(url)
    if clean != url:
        _CREDENTIALED[clean.rstrip("/")] = url.rstrip("/")
    return clean


def with_credentials(url: str) -> str:
    """A stored (redacted) URL with the credentials of a channel given in this process put back."""
    for clean in sorted(_CREDENTIALED, key=len, reverse=True):
        if url == clean or url.startswith(clean + "/"):
            return _CREDENTIALED[clean] + url[len(clean):]
    return url


def normalise_package(p: dict) -> dict:
    """A conda package as records keep it: every key present, channel without its subdir."""
    url = redact(p["url"]) if p.get("url") else None  # never a token or password in a record
    fn = p.get("fn") or (url.rsplit("/", 1)[-1] if url else None)
    subdir = p.get("subdir") or (url.rsplit("/", 2)[-2] if url and url.count("/") >= 2 else None)
    channel = redact(p.get("channel") or "").rstrip("/")
    if subdir and channel.endswith("/" + subdir):
        channel = channel[: -len(subdir) - 1]
    return {
        "name": str(p["name"]).lower(), "version": str(p.get("version") or ""), "build": str(p.get("build") or ""),
        "build_number": int(p.get("build_number") or 0), "channel": channel or None, "subdir": subdir, "url": url,
        "fn": fn, "sha256": (p.get("sha256") or "").lower() or None, "md5": (p.get("md5") or "").lower() or None,
        "depends": list(p.get("depends") or []), "constrains": list(p.get("constrains") or []),
        "noarch": _noarch(p.get("noarch")),
    }


def run_record_section(found: dict) -> dict:
    """The run record's `conda` section from the probe's report (or an explicit list)."""
    packages = sorted((normalise_package(p) for p in found.get("packages") or []), key=lambda p: p["name"])
    return {
        "prefix": found["prefix"],
        "channels": sorted({p["channel"] for p in packages if p["channel"]}),
        "packages": packages,
        "packages_source": found.get("packages_source") or "image",
        "micromamba": found.get("micromamba"),
    }
