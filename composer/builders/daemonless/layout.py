"""Where things go in the image: the staging prefix uv filled, mapped onto the image's layout.

site-packages goes to the upstream's site-packages, scripts to its scripts directory with the
image's python in their shebangs (RECORD kept true to them), data files to the scheme's base:
just as `uv pip install --python <image python>` lays them out inside the image (the BuildKit
path). The result is a sorted list of tar entries (composer/builders/daemonless/tarball.py
writes them).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional, Tuple

from composer.builders.base import CannotBuild
from composer.errors import BuildError
from composer.model.records import RunRecord

_PYTHON_DIR = re.compile(r"^python\d+\.\d+t?$")
_PYTHON_NAME = re.compile(rb"^python[0-9.]*[tw]?$")


@dataclass(frozen=True)
class Layout:
    """Install locations inside the image, as python's install scheme there has them."""

    executable: str  # the image's python: the shebang of console scripts
    site_packages: str  # e.g. /opt/venv/lib/python3.11/site-packages
    base: str  # the scheme's base: /opt/venv, or /usr/local for Debian's system python

    @property
    def scripts(self) -> str:
        return f"{self.base.rstrip('/')}/bin"


def scheme_base(site_packages: str) -> Optional[str]:
    """<base> of <base>/lib[64]/pythonX.Y/(site|dist)-packages, else None."""
    p = PurePosixPath(site_packages)
    parts = p.parts
    if (not p.is_absolute() or len(parts) < 4 or parts[-1] not in ("site-packages", "dist-packages")
            or not _PYTHON_DIR.match(parts[-2]) or parts[-3] not in ("lib", "lib64")):
        return None
    return str(p.parent.parent.parent)


def layout_for(upstream: RunRecord) -> Layout:
    """The upstream image's install layout; CannotBuild when its site-packages is not where a
    scheme puts it."""
    site = str(upstream.python.site_packages or "").rstrip("/")
    base = scheme_base(site)
    if base is None:
        raise CannotBuild("daemonless", f"site-packages {site!r} is not <prefix>/lib/pythonX.Y/site-packages")
    return Layout(executable=upstream.python.executable or "", site_packages=site, base=base)


# -- console scripts -----------------------------------------------------------------------
def python_shebang(executable: str) -> bytes:
    """The first line(s) of a console script run by executable; a /bin/sh trampoline when the
    path is too long for the kernel's shebang or has whitespace (as uv and pip do)."""
    if len(executable) + 3 > 127 or any(c.isspace() for c in executable):
        quoted = "'" + executable.replace("'", "'\"'\"'") + "'"
        return f"#!/bin/sh\n'''exec' {quoted} \"$0\" \"$@\"\n' '''\n".encode()
    return f"#!{executable}\n".encode()


_TRAMPOLINE = re.compile(rb"\A#!/bin/sh\n'''exec' [^\n]*\n' '''\n")


def rewrite_shebang(data: bytes, executable: str) -> Optional[bytes]:
    """data with its python shebang pointing at executable; None when it is not a python script
    (a binary, a shell script), which stays as it is."""
    m = _TRAMPOLINE.match(data)
    if m:
        return python_shebang(executable) + data[m.end():]
    if not data.startswith(b"#!"):
        return None
    first, nl, rest = data.partition(b"\n")
    words = first[2:].split()
    if not words or not _PYTHON_NAME.match(words[0].rsplit(b"/", 1)[-1]):
        return None
    return python_shebang(executable) + rest


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def fix_scripts(prefix: Path, site: Optional[Path], executable: str) -> List[str]:
    """Point console scripts at the image's python and keep RECORD true to them; returns the
    scripts rewritten (staging paths). Files are replaced, never edited in place (they may be
    hard links into uv's cache)."""
    bindir = prefix / "bin"
    changed: Dict[str, Tuple[str, int]] = {}
    if bindir.is_dir():
        for path in sorted(bindir.iterdir()):
            if path.is_symlink() or not path.is_file():
                continue
            data = path.read_bytes()
            new = rewrite_shebang(data, executable)
            if new is None or new == data:
                continue
            _replace(path, new, 0o755)
            changed[os.path.normpath(str(path))] = (_record_hash(new), len(new))
    if changed and site is not None:
        for record in sorted(site.glob("*.dist-info/RECORD")):
            text = record.read_text(encoding="utf-8")
            rows = list(csv.reader(io.StringIO(text)))
            touched = False
            for row in rows:
                if row and os.path.normpath(os.path.join(str(site), row[0])) in changed:
                    h, size = changed[os.path.normpath(os.path.join(str(site), row[0]))]
                    row[1:3] = [h, str(size)]
                    touched = True
            if touched:
                out = io.StringIO()
                csv.writer(out, lineterminator="\n").writerows(rows)
                _replace(record, out.getvalue().encode("utf-8"), 0o644)
    return sorted(changed)


def _replace(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".composer-tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


# -- the layer's entries -----------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """One tar entry: path in the image without the leading '/'."""

    path: str
    kind: str  # "file", "dir" or "symlink"
    mode: int
    source: Optional[str] = None  # a file on this machine, for "file"
    data: Optional[bytes] = None  # or the bytes themselves
    linkname: str = ""

    @property
    def size(self) -> int:
        if self.kind != "file":
            return 0
        return len(self.data) if self.data is not None else os.path.getsize(self.source or "")


def find_site_packages(prefix: Path) -> Optional[Path]:
    found = sorted(p for p in prefix.glob("lib*/python*/*-packages") if p.is_dir() and p.name in ("site-packages", "dist-packages"))
    if len(found) > 1:
        raise BuildError(f"uv made more than one site-packages in {prefix}: {[str(p) for p in found]}", "report this")
    return found[0] if found else None


def _ancestors(path: str) -> List[str]:
    p = PurePosixPath(path)
    return [str(a) for a in p.parents]


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a symlink loop: not a directory (os.walk counts it a file, and so do we)
        return False


def file_mode(st_mode: int) -> int:
    return 0o755 if st_mode & 0o111 else 0o644


def stage_entries(prefix: Path, layout: Layout) -> List[Entry]:
    """The staging prefix mapped into the image: sorted tar entries, with a directory entry for
    each directory a file needs below the install roots (the roots themselves and their
    ancestors exist in the image and keep its metadata). __pycache__ and uv's lock are left out."""
    site = find_site_packages(prefix)
    site_rel = site.relative_to(prefix).as_posix() + "/" if site else None
    roots = {layout.site_packages, layout.scripts, layout.base}
    keep_out = set(roots)
    for r in roots:
        keep_out.update(_ancestors(r))
    site_dst, base_dst = layout.site_packages.rstrip("/"), layout.base.rstrip("/")
    files: Dict[str, Entry] = {}
    # One scandir per directory (its file types come with it) and plain string paths: this walks
    # thousands of files on every build, so os.walk's extra stat calls and PurePosixPath add up.
    pending = [(str(prefix), "")]
    while pending:
        host_dir, rel_dir = pending.pop()
        with os.scandir(host_dir) as it:
            children = list(it)
        for child in children:
            rel = rel_dir + child.name
            is_link = child.is_symlink()
            if _is_dir(child):  # follows a symlink, as os.walk sorts names
                if child.name == "__pycache__":
                    continue
                if not is_link:
                    pending.append((child.path, rel + "/"))
                    continue
            if rel == ".lock" or child.name.endswith(".composer-tmp"):
                continue
            if site_rel and rel.startswith(site_rel):
                key = f"{site_dst}/{rel[len(site_rel):]}".lstrip("/")
            else:
                key = f"{base_dst}/{rel}".lstrip("/")
            if is_link:
                files[key] = Entry(key, "symlink", 0o777, linkname=os.readlink(child.path))
            elif child.is_file(follow_symlinks=False):
                files[key] = Entry(key, "file", file_mode(child.stat(follow_symlinks=False).st_mode), source=child.path)
    dirs: Dict[str, Entry] = {}
    for key in files:
        parent = key.rpartition("/")[0]
        while parent and parent not in dirs and "/" + parent not in keep_out:  # keep_out holds its members' ancestors
            dirs[parent] = Entry(parent, "dir", 0o755)
            parent = parent.rpartition("/")[0]
    return sorted(list(files.values()) + list(dirs.values()), key=lambda e: e.path)
