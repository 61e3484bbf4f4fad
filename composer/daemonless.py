"""The daemonless builder: compose an image by appending one layer, with no Docker daemon.

The composed image is the upstream image plus one layer holding exactly the
locked extras, so it can be made without running anything inside the image:

  1. uv installs the added packages (wheels only, hash-checked, no
     dependency resolution) for the image's platform and python into a
     staging prefix on this machine, from uv's persistent cache;
  2. the staging prefix is mapped onto the image's own layout: site-packages
     to the upstream's site-packages, scripts to its scripts directory with
     the image's python in their shebangs, data files to the scheme's base,
     just as `uv pip install --python <image python>` lays them out inside
     the image (the BuildKit path);
  3. it becomes a reproducible tar (sorted, fixed mtimes, root-owned,
     normalised modes, no bytecode), compressed deterministically, so the
     same inputs give the same layer and the same image digest;
  4. the image config is the base's config plus the layer's diff_id, a
     history entry, labels and environment;
  5. the base layers reach the target repository without being downloaded:
     already there (HEAD), else a cross-repository mount on the same
     registry, else (another registry) a streamed, digest-checked copy; then
     the layer, the config and the manifest, in the base manifest's family.

`unsupported_reason` says beforehand when this cannot work (a conda
environment, a non-Linux platform, ...); a package that turns out to have no
wheel for the platform raises `NeedsBuildKit` from `build_and_push`, and the
caller falls back to BuildKit.
"""

from __future__ import annotations

import base64
import collections
import csv
import datetime as _dt
import hashlib
import io
import json
import os
import re
import struct
import subprocess
import sys
import tarfile
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Dict, Iterable, List, Mapping, Optional, Tuple

from .config import Settings
from .errors import BuildError, NotFoundError, UsageError, VerificationError
from .lock import Lock, uv_binary, uv_env
from .names import ImageRef
from .registry import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, Descriptor, Registry
from .resolver import registry_for

DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"

# Files in the layer carry this mtime unless SOURCE_DATE_EPOCH says otherwise:
# 1980-01-01T00:00:00Z, the earliest time a zip (hence a wheel) can hold.
DEFAULT_EPOCH = 315532800
# What Docker and BuildKit use by default. COMPOSER_GZIP_LEVEL=4 compressed pandas + scikit-learn
# 2.3x faster here for 4.5% more bytes: worth it where CPU, not the network, is the bottleneck.
# The level changes the layer's bytes (not the files), so keep it the same across a fleet.
GZIP_LEVEL = 6
GZIP_BLOCK = 1 << 20  # uncompressed bytes per independently deflated block: part of the output format
ZSTD_LEVEL = 3
HISTORY_COMMENT = "composer.daemonless.v1"
UV_TIMEOUT = int(os.environ.get("COMPOSER_UV_TIMEOUT", "1800"))

_PYTHON_DIR = re.compile(r"^python\d+\.\d+t?$")
_PYTHON_NAME = re.compile(rb"^python[0-9.]*[tw]?$")
_VERSION = re.compile(r"^\d+\.\d+(?:\.\d+)?")


class NeedsBuildKit(BuildError):
    """The daemonless builder cannot compose this; the BuildKit builder can. `reason` says why."""

    def __init__(self, reason: str):
        super().__init__(f"the daemonless builder cannot compose this image: {reason}",
                         "use a BuildKit builder (--builder auto, buildctl, buildx or docker)")
        self.reason = reason


# -- where things go in the image ------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """Install locations inside the image, as python's install scheme there has them."""

    executable: str  # the image's python: the shebang of console scripts
    site_packages: str  # e.g. /opt/venv/lib/python3.11/site-packages
    base: str  # the scheme's base: /opt/venv, or /usr/local for Debian's system python

    @property
    def scripts(self) -> str:
        return f"{self.base.rstrip('/')}/bin"


def _scheme_base(site_packages: str) -> Optional[str]:
    """<base> of <base>/lib[64]/pythonX.Y/(site|dist)-packages, else None."""
    p = PurePosixPath(site_packages)
    parts = p.parts
    if (not p.is_absolute() or len(parts) < 4 or parts[-1] not in ("site-packages", "dist-packages")
            or not _PYTHON_DIR.match(parts[-2]) or parts[-3] not in ("lib", "lib64")):
        return None
    return str(p.parent.parent.parent)


def layout_for(upstream: dict) -> Layout:
    python = upstream.get("python") or {}
    site = str(python.get("site_packages") or "").rstrip("/")
    base = _scheme_base(site)
    if base is None:
        raise NeedsBuildKit(f"site-packages {site!r} is not <prefix>/lib/pythonX.Y/site-packages")
    return Layout(executable=str(python.get("executable") or ""), site_packages=site, base=base)


def unsupported_reason(lock: Lock, upstream: dict) -> Optional[str]:
    """None when the daemonless builder can compose this; else a short reason to fall back to
    BuildKit. Whether every package has a wheel for the platform is only known when uv
    installs them: build_and_push raises NeedsBuildKit then."""
    python = upstream.get("python") or {}
    plat = upstream.get("platform") or {}
    if python.get("kind") == "conda":
        return "the upstream is a conda environment (its packages are not wheels)"
    if (plat.get("os") or "linux") != "linux":
        return f"the platform is {plat.get('os')}, not linux"
    if (python.get("implementation") or "cpython") != "cpython":
        return f"the python is {python.get('implementation')}, not CPython (wheel tags are not known)"
    pp = plat.get("python_platform") or ""
    if "linux" not in pp:
        return f"no Linux python platform is recorded for the upstream ({pp or 'none'})"
    if not _VERSION.match(str(python.get("version") or "")):
        return f"the upstream's python version {python.get('version')!r} is not X.Y[.Z]"
    exe = str(python.get("executable") or "")
    if not exe.startswith("/") or "\n" in exe:
        return f"the upstream's python executable {exe!r} is not an absolute path"
    site = str(python.get("site_packages") or "").rstrip("/")
    base = _scheme_base(site)
    if base is None:
        return f"site-packages {site!r} is not <prefix>/lib/pythonX.Y/site-packages"
    if base == "/":
        return "the install scheme's base is / (scripts would go to /bin, a symlink on merged-/usr systems)"
    unhashed = [p["name"] for p in lock.added if not p.get("hashes")]
    if unhashed:
        return f"the lock has no artifact hash for {unhashed[0]}"
    return None


# -- installing with uv ----------------------------------------------------------------
def install_extras(settings: Settings, lock: Lock, upstream: dict, prefix: Path, lockfile: Path) -> None:
    """`uv pip install --prefix`: the staging prefix gets the scheme layout (lib/pythonX.Y/
    site-packages, bin, data), so RECORD's relative paths hold in the image too."""
    prefix.mkdir(parents=True, exist_ok=True)
    if not lock.added:
        return
    lockfile.write_text(lock.added_lock_text(), encoding="utf-8")
    cmd = [
        uv_binary(), "pip", "install", "--prefix", str(prefix), "--python", sys.executable,
        "--python-platform", upstream["platform"]["python_platform"],
        "--python-version", upstream["python"]["version"],
        "--only-binary", ":all:", "--no-deps", "--require-hashes",
        # Copies or hard links from uv's persistent cache: never symlinks into the cache.
        "--link-mode", "hardlink", "--no-progress", "--color", "never", "-r", str(lockfile),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=uv_env(settings), timeout=UV_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise BuildError(f"installing the extras with uv took over {UV_TIMEOUT}s", "check the package index")
    if proc.returncode != 0:
        missing = no_wheel_reason(proc.stderr, upstream)
        if missing:
            raise NeedsBuildKit(missing)
        cause = " ".join(l.strip() for l in proc.stderr.splitlines() if l.strip() and not l.startswith(("Using ", "warning")))
        raise BuildError(f"uv could not install the extras for the new layer: {cause[:400] or 'no message'}",
                         "check the package index and the lock")


def no_wheel_reason(stderr: str, upstream: dict) -> Optional[str]:
    """When uv failed because a package has no wheel for the image: which package, said briefly."""
    if not re.search(r"no usable wheels|no wheels with a matching|Wheels are required for", stderr):
        return None
    m = re.search(r"Because (\S+) has no", stderr) or re.search(r"Wheels are required for `([^`]+)`", stderr)
    what = m.group(1) if m else "a package"
    return (f"{what} has no wheel for {upstream['platform']['python_platform']} / "
            f"python {upstream['python']['version']} (it must be built from source)")


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


def file_mode(st_mode: int) -> int:
    return 0o755 if st_mode & 0o111 else 0o644


def stage_entries(prefix: Path, layout: Layout) -> List[Entry]:
    """The staging prefix mapped into the image: sorted tar entries, with a directory entry for
    each directory a file needs below the install roots (the roots themselves and their
    ancestors exist in the image and keep its metadata). __pycache__ and uv's lock are left out."""
    site = find_site_packages(prefix)
    site_rel = site.relative_to(prefix).as_posix() if site else None
    roots = {layout.site_packages, layout.scripts, layout.base}
    keep_out = set(roots)
    for r in roots:
        keep_out.update(_ancestors(r))
    files: Dict[str, Entry] = {}
    for dirpath, dirnames, filenames in os.walk(prefix):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames) + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            host = os.path.join(dirpath, name)
            rel = PurePosixPath(os.path.relpath(host, prefix).replace(os.sep, "/"))
            if str(rel) == ".lock" or name.endswith(".composer-tmp"):
                continue
            if site_rel and (str(rel).startswith(site_rel + "/")):
                image = PurePosixPath(layout.site_packages) / rel.relative_to(site_rel)
            else:
                image = PurePosixPath(layout.base) / rel
            st = os.lstat(host)
            key = str(image).lstrip("/")
            if os.path.islink(host):
                files[key] = Entry(key, "symlink", 0o777, linkname=os.readlink(host))
            elif os.path.isfile(host):
                files[key] = Entry(key, "file", file_mode(st.st_mode), source=host)
    dirs: Dict[str, Entry] = {}
    for key in files:
        for parent in _ancestors("/" + key):
            if parent in keep_out:
                continue
            dirs.setdefault(parent.lstrip("/"), Entry(parent.lstrip("/"), "dir", 0o755))
    return sorted(list(files.values()) + list(dirs.values()), key=lambda e: e.path)


# -- the reproducible tar --------------------------------------------------------------------
class _HashingWriter:
    """Passes bytes on, counting them and hashing them (sha256)."""

    def __init__(self, sink: BinaryIO):
        self.sink, self.hash, self.size = sink, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.hash.update(data)
        self.size += len(data)
        self.sink.write(data)
        return len(data)

    def flush(self) -> None:
        flush = getattr(self.sink, "flush", None)
        if flush:
            flush()

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


@dataclass(frozen=True)
class Layer:
    digest: str  # of the compressed blob
    size: int  # compressed
    diff_id: str  # of the uncompressed tar
    tar_size: int
    compression: str  # gzip or zstd


def source_date_epoch() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if not value:
        return DEFAULT_EPOCH
    try:
        epoch = int(value)
    except ValueError:
        raise UsageError(f"SOURCE_DATE_EPOCH={value!r} is not a whole number of seconds", "unset it or set e.g. 315532800")
    if epoch < 0:
        raise UsageError(f"SOURCE_DATE_EPOCH={value!r} is negative", "unset it or set e.g. 315532800")
    return epoch


def zstd_module() -> Optional[str]:
    """Which zstd implementation is importable: 'compression.zstd' (Python 3.14), 'zstandard', or None."""
    try:
        import compression.zstd  # type: ignore  # noqa: F401

        return "compression.zstd"
    except ImportError:
        pass
    try:
        import zstandard  # type: ignore  # noqa: F401

        return "zstandard"
    except ImportError:
        return None


class ParallelGzip:
    """A gzip stream compressed on several cores, with the same bytes whatever their number.

    The input is cut into fixed blocks; each block is deflated on its own (primed with the
    previous block's last 32 KiB, so matches may reach back across the cut) and ends on a
    byte boundary (sync flush), so the raw deflate pieces concatenate into one valid stream,
    as pigz does. Output depends only on the input, GZIP_BLOCK and the level: no file name,
    mtime 0, OS byte 255 in the header."""

    HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"

    def __init__(self, out: BinaryIO, level: Optional[int] = None, workers: Optional[int] = None, block: int = GZIP_BLOCK):
        self.out, self.block = out, block
        wanted = os.environ.get("COMPOSER_GZIP_LEVEL", str(GZIP_LEVEL)) if level is None else str(level)
        if wanted not in [str(n) for n in range(1, 10)]:
            raise UsageError(f"COMPOSER_GZIP_LEVEL={wanted} is not a gzip level", "use 1 (fastest) to 9 (smallest); default 6")
        self.level = int(wanted)
        self.workers = max(1, workers or min(os.cpu_count() or 1, 8))
        self.pool = ThreadPoolExecutor(max_workers=self.workers) if self.workers > 1 else None
        self.pending: "collections.deque" = collections.deque()
        self.buf = bytearray()
        self.tail = b""
        self.crc = 0
        self.size = 0
        self.closed = False
        out.write(self.HEADER)

    def write(self, data) -> int:
        self.crc = zlib.crc32(data, self.crc)
        self.size += len(data)
        self.buf += data
        while len(self.buf) >= self.block:
            chunk = bytes(self.buf[: self.block])
            del self.buf[: self.block]
            self._submit(chunk, False)
        return len(data)

    def flush(self) -> None:
        pass

    def _submit(self, chunk: bytes, last: bool) -> None:
        zdict, self.tail = self.tail, chunk[-32768:]
        if self.pool is None:
            self.out.write(_deflate_block(chunk, zdict, self.level, last))
            return
        self.pending.append(self.pool.submit(_deflate_block, chunk, zdict, self.level, last))
        while len(self.pending) > 2 * self.workers:  # bounded memory, output in order
            self.out.write(self.pending.popleft().result())

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self._submit(bytes(self.buf), True)
            self.buf = bytearray()
            while self.pending:
                self.out.write(self.pending.popleft().result())
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)
        self.out.write(struct.pack("<II", self.crc & 0xFFFFFFFF, self.size & 0xFFFFFFFF))


def _deflate_block(chunk: bytes, zdict: bytes, level: int, last: bool) -> bytes:
    if zdict:
        c = zlib.compressobj(level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY, zdict)
    else:
        c = zlib.compressobj(level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY)
    return c.compress(chunk) + c.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


def _compressor(out: BinaryIO, compression: str):
    if compression == "gzip":
        return ParallelGzip(out)
    module = zstd_module()
    if module == "compression.zstd":
        from compression import zstd  # type: ignore

        return zstd.ZstdFile(out, "wb", level=ZSTD_LEVEL)
    if module == "zstandard":
        import zstandard  # type: ignore

        return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True).stream_writer(out, closefd=False)
    raise BuildError("zstd compression was asked for but no zstd module is importable", "pip install zstandard, or use gzip")


def write_layer(entries: Iterable[Entry], out: BinaryIO, compression: str = "gzip", epoch: Optional[int] = None) -> Layer:
    """Write the entries as a reproducible, compressed tar to out. Entries are written sorted,
    root-owned with no user or group names, with mtime epoch and normalised modes."""
    epoch = source_date_epoch() if epoch is None else epoch
    compressed = _HashingWriter(out)
    comp = _compressor(compressed, compression)
    plain = _HashingWriter(comp)
    with tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for e in sorted(entries, key=lambda e: e.path):
            info = tarfile.TarInfo(e.path)
            info.mtime = epoch
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if e.kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif e.kind == "symlink":
                info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, e.linkname
                tar.addfile(info)
            elif e.kind == "file":
                info.type, info.mode = tarfile.REGTYPE, (0o755 if e.mode & 0o111 else 0o644)
                if e.data is not None:
                    info.size = len(e.data)
                    tar.addfile(info, io.BytesIO(e.data))
                else:
                    with open(e.source or "", "rb") as f:
                        info.size = os.fstat(f.fileno()).st_size
                        tar.addfile(info, f)
            else:
                raise ValueError(f"unknown entry kind {e.kind!r}")
    comp.close()
    return Layer(compressed.digest, compressed.size, plain.digest, plain.size, compression)


# -- media types, config, manifest ------------------------------------------------------------
def choose_compression(manifest_media_type: str) -> str:
    """gzip for Docker-family bases; zstd only for an OCI base with a zstd module at hand
    (COMPOSER_LAYER_COMPRESSION=gzip keeps gzip: older engines, Docker 20.10 among them,
    cannot unpack zstd layers)."""
    wanted = os.environ.get("COMPOSER_LAYER_COMPRESSION", "auto")
    if wanted not in ("auto", "gzip", "zstd"):
        raise UsageError(f"COMPOSER_LAYER_COMPRESSION={wanted!r} is not auto, gzip or zstd", "unset it or pick one of those")
    if manifest_media_type != OCI_MANIFEST or wanted == "gzip":
        return "gzip"
    return "zstd" if zstd_module() else "gzip"


def layer_media_type(manifest_media_type: str, compression: str) -> str:
    if manifest_media_type == DOCKER_MANIFEST:
        if compression != "gzip":
            raise ValueError("Docker image manifests only carry gzip layers")
        return DOCKER_LAYER_GZIP
    if manifest_media_type == OCI_MANIFEST:
        return {"gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD}[compression]
    raise ValueError(f"not an image manifest media type: {manifest_media_type}")


def rfc3339(epoch: int) -> str:
    return _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def created_time(base_config: dict) -> str:
    """SOURCE_DATE_EPOCH when set, else the base's own creation time: never the clock, so the
    same inputs give the same config and the same image digest."""
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return rfc3339(source_date_epoch())
    return str(base_config.get("created") or rfc3339(DEFAULT_EPOCH))


def merge_env(env_list: Optional[List[str]], env: Mapping[str, str]) -> List[str]:
    """Config.Env with env applied: a variable already there is replaced in place, new ones
    are appended in name order."""
    out = list(env_list or [])
    index = {item.split("=", 1)[0]: i for i, item in enumerate(out)}
    for key in sorted(env):
        if "=" in key or not key:
            raise ValueError(f"invalid environment variable name {key!r}")
        item = f"{key}={env[key]}"
        if key in index:
            out[index[key]] = item
        else:
            index[key] = len(out)
            out.append(item)
    return out


def compose_config(base_config: dict, *, diff_id: str, created: str, created_by: str,
                   labels: Mapping[str, str], env: Mapping[str, str]) -> dict:
    cfg = json.loads(json.dumps(base_config))
    rootfs = cfg.get("rootfs") or {}
    diff_ids = list(rootfs.get("diff_ids") or [])
    history = list(cfg.get("history") or [])
    missing = len(diff_ids) - sum(1 for h in history if not h.get("empty_layer"))
    if missing > 0:
        # Keep history aligned with the layers (one non-empty entry each), as BuildKit does.
        history = [{"created_by": "(no history recorded in the base image)"} for _ in range(missing)] + history
    history.append({"created": created, "created_by": created_by, "comment": HISTORY_COMMENT})
    cfg["rootfs"] = {**rootfs, "type": rootfs.get("type") or "layers", "diff_ids": diff_ids + [diff_id]}
    cfg["history"] = history
    inner = dict(cfg.get("config") or {})
    merged_labels = dict(inner.get("Labels") or {})
    merged_labels.update(labels)
    if merged_labels:
        inner["Labels"] = merged_labels
    if env or inner.get("Env"):
        inner["Env"] = merge_env(inner.get("Env"), env)
    cfg["config"] = inner
    cfg["created"] = created
    return cfg


def config_bytes(config: dict) -> bytes:
    return json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def compose_manifest(base_manifest: dict, media_type: str, config: Descriptor, layer: Descriptor,
                     annotations: Optional[Mapping[str, str]] = None) -> bytes:
    manifest = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": config.media_type, "digest": config.digest, "size": config.size},
        "layers": [dict(l) for l in base_manifest.get("layers", [])]
                  + [{"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}],
    }
    if media_type == OCI_MANIFEST and annotations:
        manifest["annotations"] = dict(annotations)
    return config_bytes(manifest)


# -- the base image ---------------------------------------------------------------------------
_ARCH_ALIASES = {"x86_64": "amd64", "aarch64": "arm64"}


def base_manifest(base_reg: Registry, base: ImageRef, upstream: dict) -> Tuple[dict, str]:
    """The base's image manifest (an index is narrowed to the upstream's platform) and its type."""
    got = base_reg.get_manifest(base.repository, base.digest or base.reference)
    if got is None:
        raise NotFoundError(f"the upstream image {base} is gone from its registry", "re-record the upstream run")
    body, desc = got
    manifest = json.loads(body)
    media_type = desc.media_type
    if media_type in (OCI_INDEX, DOCKER_LIST):
        plat = upstream.get("platform") or {}
        arch = _ARCH_ALIASES.get(plat.get("architecture") or "", plat.get("architecture"))
        match = [m for m in manifest.get("manifests", [])
                 if (m.get("platform") or {}).get("os") == (plat.get("os") or "linux")
                 and (m.get("platform") or {}).get("architecture") == arch
                 and (not plat.get("variant") or (m.get("platform") or {}).get("variant") == plat.get("variant"))]
        if not match:
            raise NeedsBuildKit(f"the upstream index {base} has no manifest for {plat.get('os')}/{arch}")
        got = base_reg.get_manifest(base.repository, match[0]["digest"])
        if got is None:
            raise NotFoundError(f"manifest {match[0]['digest']} of {base} is missing", "re-record the upstream run")
        body, desc = got
        manifest = json.loads(body)
        media_type = desc.media_type
    if media_type not in (DOCKER_MANIFEST, OCI_MANIFEST):
        raise NeedsBuildKit(f"the upstream's manifest type {media_type or 'unknown'} is not an image manifest composer can extend")
    if "config" not in manifest or "layers" not in manifest:
        raise UsageError(f"{base} is not a container image manifest", "record an image, not an artifact")
    return manifest, media_type


def place_base_layers(reg: Registry, repo: str, base_reg: Registry, base: ImageRef, layers: List[dict]) -> Dict[str, int]:
    """Make every base layer present in repo without downloading it when the registry allows:
    HEAD, then a cross-repository mount (same registry), then a streamed copy. Returns counts."""
    counts = {"present": 0, "mounted": 0, "copied": 0}
    seen = set()
    same_host = base_reg.host == reg.host
    for layer in layers:
        digest, size = layer["digest"], int(layer["size"])
        if digest in seen:
            continue
        seen.add(digest)
        have = reg.blob_size(repo, digest)
        if have is not None:
            if have != size:
                raise VerificationError(f"{reg.host}/{repo} holds base layer {digest} with {have} bytes, the manifest says {size}",
                                        "the registry is inconsistent")
            reg._note_transfer("present", repo, digest, size)
            counts["present"] += 1
            continue
        if same_host and reg.mount_blob(repo, digest, base.repository):
            if reg.blob_size(repo, digest) != size:
                raise VerificationError(f"the mounted base layer {digest} in {reg.host}/{repo} is not {size} bytes",
                                        "the registry is inconsistent")
            counts["mounted"] += 1
            continue
        reg.copy_blob(base_reg, base.repository, digest, size, repo, layer.get("mediaType") or "application/octet-stream")
        counts["copied"] += 1
    return counts


# -- the whole job ------------------------------------------------------------------------------
def build_and_push(*, settings: Settings, reg: Registry, repo: str, tag: str, base: ImageRef, upstream: dict,
                   lock: Lock, spec_hash: str, labels: dict, env: dict) -> str:
    """Compose and push; return the image manifest digest (sha256:...).

    Raises NeedsBuildKit when this image needs the BuildKit builder, RegistryError /
    VerificationError when the registry fails or disagrees, BuildError when uv fails."""
    reason = unsupported_reason(lock, upstream)
    if reason:
        raise NeedsBuildKit(reason)
    layout = layout_for(upstream)
    base_reg = reg if base.registry == reg.host else registry_for(settings, base.registry)
    manifest, media_type = base_manifest(base_reg, base, upstream)
    base_config = json.loads(base_reg.get_blob(base.repository, manifest["config"]["digest"]))
    n_layers = len(manifest["layers"])
    if len((base_config.get("rootfs") or {}).get("diff_ids") or []) != n_layers:
        raise VerificationError(f"the config of {base} lists {len(base_config['rootfs'].get('diff_ids') or [])} layers, "
                                f"its manifest {n_layers}", "the upstream image is malformed; re-record it")
    compression = choose_compression(media_type)
    layer_type = layer_media_type(media_type, compression)
    verbose = settings.progress == "plain" or (settings.progress == "auto" and sys.stderr.isatty())

    with tempfile.TemporaryDirectory(prefix="composer-daemonless-") as tmp:
        prefix = Path(tmp, "prefix")
        install_extras(settings, lock, upstream, prefix, Path(tmp, "extras.lock"))
        # The base layers go into place (HEAD / mount) while the layer is being written.
        with ThreadPoolExecutor(max_workers=1) as pool:
            placing = pool.submit(place_base_layers, reg, repo, base_reg, base, manifest["layers"])
            fix_scripts(prefix, find_site_packages(prefix), layout.executable)
            entries = stage_entries(prefix, layout)
            layer_path = Path(tmp, "layer")
            with open(layer_path, "wb") as out:
                layer = write_layer(entries, out, compression)
            counts = placing.result()
        layer_desc = reg.upload_blob(repo, layer.digest, layer.size, path=layer_path, media_type=layer_type)

    created = created_time(base_config)
    added = " ".join(f"{p['name']}=={p['version']}" for p in lock.added)
    config = compose_config(
        base_config, diff_id=layer.diff_id, created=created,
        created_by=f"composer daemonless: uv pip install --no-deps --require-hashes {added}".rstrip(),
        labels=labels, env=env,
    )
    cfg = config_bytes(config)
    config_type = manifest["config"].get("mediaType") or (DOCKER_CONFIG if media_type == DOCKER_MANIFEST else OCI_CONFIG)
    config_desc = reg.upload_blob(repo, "sha256:" + hashlib.sha256(cfg).hexdigest(), len(cfg), data=cfg, media_type=config_type)
    annotations = {"org.opencontainers.image.base.name": base.name, "org.opencontainers.image.base.digest": base.digest or ""}
    body = compose_manifest(manifest, media_type, config_desc, layer_desc, annotations)
    desc, _ = reg.put_manifest(repo, tag, body, media_type)
    if verbose:
        sys.stderr.write(
            f"composer: daemonless: {len(lock.added)} package(s), {len(entries)} entries, layer {layer.size} bytes "
            f"({layer.compression}); base layers: {counts['present']} present, {counts['mounted']} mounted, "
            f"{counts['copied']} copied; {reg.host}/{repo}@{desc.digest}\n"
        )
    return desc.digest
