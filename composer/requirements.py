"""Reading the user's requirement files, strictly: bad input is one clear error, never a guess."""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Sequence

import tomli
from packaging.requirements import InvalidRequirement, Requirement

from composer.errors import UsageError

MAX_EXTRAS_BYTES = 1 << 20  # a requirements file beyond 1 MiB is a mistake, not a requirement set
_NAME_NORMALIZE = re.compile(r"[-_.]+")


def canonical_name(name: str) -> str:
    """PEP 503 normalised project name."""
    return _NAME_NORMALIZE.sub("-", name).lower()


def read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise UsageError(f"{what} {path} does not exist", "check the path")
    size = path.stat().st_size
    if size > MAX_EXTRAS_BYTES:
        raise UsageError(f"{what} {path} is {size} bytes", f"keep it under {MAX_EXTRAS_BYTES} bytes (one requirement per line)")
    data = path.read_bytes()
    if b"\x00" in data:
        raise UsageError(f"{what} {path} is a binary file", "pass a requirements.txt or pyproject.toml")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UsageError(f"{what} {path} is not UTF-8 text", "save it as UTF-8") from None


def _logical_lines(text: str):
    """(line number, text) with comments dropped and backslash continuations joined."""
    buf, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if not buf:
            start = number
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        if buf.strip():
            yield start, buf.strip()
        buf = ""
    if buf.strip():
        yield start, buf.strip()


def parse_requirement(text: str, where: str) -> Requirement:
    try:
        req = Requirement(text)
    except InvalidRequirement as exc:
        first = str(exc).splitlines()[0]
        raise UsageError(f"{where}: {text[:80]!r} is not a valid requirement ({first})", "write it as name[extras] [version spec], e.g. pandas>=2.2") from exc
    if req.url:
        raise UsageError(f"{where}: {req.name} is a direct URL requirement", "publish it to a package index and require it by version")
    req.name = canonical_name(req.name)
    return req


def read_requirements(path: Path) -> List[str]:
    """The extra requirements as normalised PEP 508 strings, from requirements.txt or pyproject.toml."""
    text = read_text(path, "extras file")
    if path.suffix == ".toml":
        try:
            data = tomli.loads(text)
        except tomli.TOMLDecodeError as exc:
            raise UsageError(f"extras file {path} is not valid TOML ({exc})", "fix the file") from exc
        deps = (data.get("project") or {}).get("dependencies")
        if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
            raise UsageError(f"{path} has no [project] dependencies list", "add dependencies = [\"pkg>=1\"] under [project]")
        reqs = [parse_requirement(d, f"{path} [project.dependencies]") for d in deps]
    else:
        reqs = []
        for number, line in _logical_lines(text):
            if line.startswith("-"):
                raise UsageError(
                    f"{path}:{number}: option lines ({line.split()[0]}) are not supported in extras",
                    "list requirements only; set the index with COMPOSER_INDEX_URL",
                )
            reqs.append(parse_requirement(line, f"{path}:{number}"))
    if not reqs:
        raise UsageError(f"extras file {path} lists no requirements", "add at least one requirement, e.g. shap>=0.45")
    return sorted({str(r) for r in reqs})


def read_requirement_list(items: Sequence[str]) -> List[str]:
    """Extras given inline (composer.build(extra=["pandas>=2.2", ...])), read by the same rules as a file."""
    if isinstance(items, (str, bytes)) or not all(isinstance(i, str) for i in items):
        raise UsageError("inline extras must be a list of requirement strings", 'e.g. extra=["pandas>=2.2", "shap"]')
    reqs = []
    for number, line in enumerate(items, 1):
        line = line.strip()
        if line.startswith("-") or "\n" in line:
            raise UsageError(f"inline extra #{number} {line[:40]!r} is not a requirement", "one requirement per item, no options")
        reqs.append(parse_requirement(line, f"inline extra #{number}"))
    if not reqs:
        raise UsageError("the inline extras list is empty", "add at least one requirement, e.g. shap>=0.45")
    return sorted({str(r) for r in reqs})


def parse_pinned(path: Path) -> List[dict]:
    """An upstream lock (pip freeze / uv pip compile output): every line must be name==version."""
    text = read_text(path, "requirements file")
    pins = {}
    for number, line in _logical_lines(text):
        if line.startswith("-"):
            continue  # --hash continuation options and index lines carry no pins
        line = line.split(" --hash", 1)[0].strip()
        req = parse_requirement(line, f"{path}:{number}")
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator not in ("==", "===") or "*" in specs[0].version:
            raise UsageError(f"{path}:{number}: {line!r} is not pinned to one version", "use name==version lines (pip freeze output)")
        pins[canonical_name(req.name)] = {"name": canonical_name(req.name), "version": specs[0].version}
    if not pins:
        raise UsageError(f"requirements file {path} pins nothing", "pass the run's pip freeze output")
    return sorted(pins.values(), key=lambda p: p["name"])
