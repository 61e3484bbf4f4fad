"""A small conda channel of the tests' own, built by hand and served over HTTP on loopback.

No public conda channel can be reached from here, so the conda tests make their own:
packages are plain .tar.bz2 archives (info/index.json, info/paths.json, info/files,
info/link.json for noarch python, then the payload), indexed into repodata.json by
py-rattler's indexer, and served by a threaded http.server on 127.0.0.1.

The packages, and why each is there:

  python      3.11.2  linux-64  no files: stands for the image's own (Debian) interpreter,
                                made visible at the prefix by a venv; noarch-python
                                packages need a python record to know their site-packages
  tinyutil    0.1.0   noarch generic  a data file under share/
  libtiny     1.0.0   linux-64  a text file with the conda prefix placeholder (relocation)
  tinycore    1.0.0 / 2.0.0   noarch python (module + dist-info), depends python
  tinyplot    1.0.0   depends tinycore >=1,<2 and tinyutil
  tinyplot    2.0.0   depends tinycore >=2     (conflicts with an upstream tinycore 1.0.0)
  tinyshap    0.3.0   depends tinycore >=1,<3, tinyutil, libtiny; has a console script
  six         1.16.0  noarch python with a `six` dist-info: a conda package that is also a
                      PyPI distribution, so the pip part of the extras must keep it
  clashing    1.0.0   depends tinyutil >=0.2   (conflicts with an upstream tinyutil 0.1.0)
  overlap     1.0.0   ships share/tinyutil/data.txt, a file tinyutil already has in the prefix
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import socketserver
import tarfile
import threading
from pathlib import Path
from typing import Dict, List, Optional

PLACEHOLDER = "/opt/anaconda1anaconda2anaconda3"
PY_VERSION = "3.11"


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 1_700_000_000
    tar.addfile(info, io.BytesIO(data))


def make_package(channel: Path, name: str, version: str, *, build: str = "0", subdir: str = "noarch",
                 depends: Optional[List[str]] = None, files: Optional[Dict[str, str]] = None,
                 noarch: Optional[str] = None, placeholders: Optional[List[str]] = None,
                 entry_points: Optional[List[str]] = None) -> Path:
    """Write CHANNEL/SUBDIR/NAME-VERSION-BUILD.tar.bz2 and return its path."""
    files = files or {}
    placeholders = placeholders or []
    index = {
        "name": name, "version": version, "build": build, "build_number": 0, "depends": depends or [],
        "subdir": subdir, "license": "Apache-2.0", "timestamp": 1_700_000_000_000,
    }
    if noarch:
        index["noarch"] = noarch
    if subdir != "noarch":
        index.update(platform="linux", arch="x86_64")
    paths = []
    for path, text in sorted(files.items()):
        data = text.encode()
        entry = {"_path": path, "path_type": "hardlink", "sha256": hashlib.sha256(data).hexdigest(), "size_in_bytes": len(data)}
        if path in placeholders:
            entry.update(prefix_placeholder=PLACEHOLDER, file_mode="text")
        paths.append(entry)
    out = channel / subdir / f"{name}-{version}-{build}.tar.bz2"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:bz2") as tar:
        _add(tar, "info/index.json", json.dumps(index, indent=2).encode())
        _add(tar, "info/paths.json", json.dumps({"paths": paths, "paths_version": 1}, indent=2).encode())
        _add(tar, "info/files", "".join(f"{p}\n" for p in sorted(files)).encode())
        if placeholders:
            _add(tar, "info/has_prefix", "".join(f"{PLACEHOLDER} text {p}\n" for p in placeholders).encode())
        if noarch == "python":
            link = {"noarch": {"type": "python", "entry_points": entry_points or []}, "package_metadata_version": 1}
            _add(tar, "info/link.json", json.dumps(link).encode())
        for path, text in sorted(files.items()):
            _add(tar, path, text.encode(), 0o755 if path.startswith("bin/") else 0o644)
    return out


def _py_package(channel: Path, name: str, version: str, depends: List[str], dist: Optional[str] = None,
                entry_points: Optional[List[str]] = None, module: Optional[str] = None) -> Path:
    """A noarch-python package: a module and a .dist-info, as conda-built Python packages have."""
    dist = dist or name
    module = module or name
    files = {
        f"site-packages/{module}/__init__.py": f"__version__ = {version!r}\nPACKAGE = {name!r}\n",
        f"site-packages/{dist}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n",
        f"site-packages/{dist}-{version}.dist-info/INSTALLER": "conda\n",
    }
    if entry_points:
        files[f"site-packages/{module}/cli.py"] = f"def main():\n    print('{name} {version}')\n"
    return make_package(channel, name, version, depends=["python >=3.8"] + depends, noarch="python",
                        files=files, entry_points=entry_points)


def build_channel(root: Path) -> Path:
    """Write every test package under root (a channel directory) and index it."""
    root.mkdir(parents=True, exist_ok=True)
    make_package(root, "python", "3.11.2", build="0_system", subdir="linux-64")
    make_package(root, "tinyutil", "0.1.0", noarch="generic", files={"share/tinyutil/data.txt": "tinyutil 0.1.0\n"})
    make_package(root, "tinyutil", "0.2.0", noarch="generic", files={"share/tinyutil/data.txt": "tinyutil 0.2.0\n"})
    make_package(root, "libtiny", "1.0.0", build="h0", subdir="linux-64",
                 files={"etc/libtiny.conf": f"prefix={PLACEHOLDER}\n"}, placeholders=["etc/libtiny.conf"])
    _py_package(root, "tinycore", "1.0.0", [])
    _py_package(root, "tinycore", "2.0.0", [])
    _py_package(root, "tinyplot", "1.0.0", ["tinycore >=1,<2", "tinyutil"])
    _py_package(root, "tinyplot", "2.0.0", ["tinycore >=2"])
    _py_package(root, "tinyshap", "0.3.0", ["tinycore >=1,<3", "tinyutil", "libtiny"],
                entry_points=["tinyshap = tinyshap.cli:main"])
    _py_package(root, "six", "1.16.0", [])
    make_package(root, "clashing", "1.0.0", noarch="generic", depends=["tinyutil >=0.2"],
                 files={"share/clashing/README": "clashing\n"})
    make_package(root, "overlap", "1.0.0", noarch="generic", files={"share/tinyutil/data.txt": "not tinyutil's\n"})
    index_channel(root)
    return root


_INDEX = """
import asyncio, os, sys
from rattler.index import index_fs
done = index_fs(sys.argv[1], write_zst=False, write_shards=False, force=True)
if asyncio.iscoroutine(done):
    asyncio.run(done)
sys.stdout.flush()
os._exit(0)  # py-rattler's runtime can crash the interpreter at exit (see composer/conda.py _worker)
"""


def index_channel(root: Path) -> None:
    """repodata.json for noarch and linux-64, with py-rattler's own indexer (in a process of its own)."""
    import subprocess
    import sys

    (root / "linux-64").mkdir(exist_ok=True)
    (root / "noarch").mkdir(exist_ok=True)
    proc = subprocess.run([sys.executable, "-c", _INDEX, str(root)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for sub in ("noarch", "linux-64"):
        assert (root / sub / "repodata.json").is_file(), f"indexing wrote no {sub}/repodata.json"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class ChannelServer:
    """Serves a channel directory over HTTP on 127.0.0.1 (a thread; close() stops it)."""

    class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True

    def __init__(self, root: Path):
        self.server = self._Server(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- an upstream image whose environment is a conda prefix ---------------------------------
UPSTREAM_SPECS = ("python ==3.11.2", "tinycore ==1.0.0", "tinyutil ==0.1.0", "libtiny ==1.0.0")
PREFIX = "/opt/conda"

_IN_IMAGE_INSTALL = r'''
import asyncio, os, sys
from rattler import BuildString, GenericVirtualPackage, PackageName, Version, install, solve

async def main(channel, specs):
    glibc = [GenericVirtualPackage(PackageName("__glibc"), Version("2.36"), BuildString("0"))]
    records = await solve([channel], specs, platforms=["linux-64", "noarch"], virtual_packages=glibc)
    await install(records, target_prefix=sys.argv[1], cache_dir="/tmp/rattler-cache", show_progress=False)

asyncio.run(main(sys.argv[2], sys.argv[3:]))
sys.stdout.flush()
os._exit(0)  # py-rattler's runtime can crash the interpreter at exit (see composer/conda.py _worker)
'''


def make_conda_upstream(ref: str, base_ref: str, channel_url: str, specs=UPSTREAM_SPECS) -> str:
    """Build and push REF: the Python base with a conda prefix at /opt/conda made by py-rattler
    *inside* the build (the host's py-rattler package bind-mounted, run by the image's python
    3.11; the step reaches the loopback channel through --network host). The prefix is a venv
    of Debian's python3 with conda-meta/: its python record stands for that interpreter.
    Independent of composer's own install path on purpose: composer's result is checked
    against a prefix made another way."""
    import os
    import shutil
    import subprocess
    import tempfile

    import rattler

    docker = "docker"
    if subprocess.run(["docker", "buildx", "version"], capture_output=True).returncode != 0 and os.path.exists("/usr/bin/docker"):
        docker = "/usr/bin/docker"
    with tempfile.TemporaryDirectory(prefix="conda-upstream-") as tmp:
        ctx = Path(tmp)
        def link_or_copy(src, dst):
            try:
                os.link(src, dst)
            except OSError:  # another filesystem
                shutil.copy2(src, dst)

        shutil.copytree(Path(rattler.__file__).parent, ctx / "site" / "rattler", copy_function=link_or_copy,
                        ignore=shutil.ignore_patterns("__pycache__"))
        (ctx / "install.py").write_text(_IN_IMAGE_INSTALL)
        args = " ".join(f"'{s}'" for s in specs)
        (ctx / "Dockerfile").write_text(
            f"FROM {base_ref}\n"
            "RUN --mount=type=bind,source=.,target=/tmp/ctx \\\n"
            f"    python3 -m venv --without-pip {PREFIX} && \\\n"
            f"    PYTHONPATH=/tmp/ctx/site python3 /tmp/ctx/install.py {PREFIX} {channel_url} {args} && \\\n"
            "    rm -rf /tmp/rattler-cache /root/.cache/rattler\n"
            f"ENV PATH={PREFIX}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin CONDA_PREFIX={PREFIX}\n"
        )
        env = {**os.environ, "DOCKER_BUILDKIT": "1"}
        proc = subprocess.run([docker, "build", "-q", "--network", "host", "-t", ref, str(ctx)],
                              capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    push = subprocess.run([docker, "push", ref], capture_output=True, text=True, timeout=600)
    assert push.returncode == 0, push.stderr[-2000:]
    return ref
