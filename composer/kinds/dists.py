"""Fetching the locked distributions on the host, hash-checked, for an offline install.

A BuildKit build never reaches a package index and never sees a credential: composer
downloads each locked artifact here (the best wheel for the image's python and platform,
else the sdist, and for an sdist the wheels its build needs), checks it against the lock's
hashes, and puts it in the build context. The build step then runs `uv pip install
--offline --no-index --find-links` with no network (`--network none`) and no secret mounted,
because that step runs the upstream's own interpreter, which is the upstream's code.

Nothing downloaded here is executed here: a wheel is a zip and an sdist's pyproject.toml is
read as text. The index URLs may carry credentials: they are sent only to the index's own
host, and every message names an index by its redacted URL.
"""

from __future__ import annotations

import hashlib
import html.parser
import os
import re
import subprocess
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple
from urllib.parse import urljoin, urlsplit, urlunsplit

from composer import state
from composer.model.urls import redact
from composer.errors import BuildError
from composer.requirements import canonical_name
from composer.settings import Settings

DEFAULT_INDEX = "https://pypi.org/simple"
_SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
_SDIST = re.compile(r"\.(tar\.gz|zip)\Z")


def _auth(url: str) -> Tuple[str, Optional[Tuple[str, str]]]:
    """(the URL without userinfo, (user, password) or None)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    from urllib.parse import unquote

    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment)), (
        unquote(parts.username or ""), unquote(parts.password or ""))


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: List[Tuple[str, str]] = []
        self._href: Optional[str] = None

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self._href = dict(attrs).get("href")
            self._text = ""

    def handle_data(self, data):
        if self._href is not None:
            self._text += data

    def handle_endtag(self, tag):
        if tag == "a" and self._href is not None:
            self.links.append((self._href, self._text.strip()))
            self._href = None


def _filename_version(name: str, filename: str) -> Optional[str]:
    """The version in a wheel or sdist file name of project name, or None."""
    if filename.endswith(".whl"):
        bits = filename[:-4].split("-")
        return bits[1] if len(bits) >= 5 and canonical_name(bits[0]) == name else None
    m = _SDIST.search(filename)
    if not m:
        return None
    stem = filename[: m.start()]
    for i in range(len(stem) - 1, 0, -1):
        if stem[i] == "-" and canonical_name(stem[:i]) == name:
            return stem[i + 1:]
    return None


class Index:
    """One simple-API index (PEP 503 HTML or PEP 691 JSON), queried with requests."""

    def __init__(self, url: str, settings: Settings):
        import requests

        self.url, self.auth = _auth(url.rstrip("/") + "/")
        self.host = urlsplit(self.url).netloc
        self.session = requests.Session()
        self.session.verify = settings.ca_bundle_path() or True
        self.session.trust_env = False  # no proxy or netrc from the environment decides where a credential goes

    def _get(self, url: str, **kw):
        import requests

        auth = self.auth if urlsplit(url).netloc == self.host else None  # never another host's
        try:
            resp = self.session.get(url, auth=auth, timeout=60, allow_redirects=True, **kw)
        except requests.RequestException as exc:
            raise BuildError(f"the package index {redact(self.url)} could not be reached ({type(exc).__name__})",
                             "check COMPOSER_INDEX_URL, the CA bundle and the network") from None
        return resp

    def files(self, name: str) -> List[dict]:
        """[{filename, url, sha256}] of a project, or [] when the index does not know it."""
        page = urljoin(self.url, f"{name}/")
        resp = self._get(page, headers={"Accept": f"{_SIMPLE_JSON}, text/html;q=0.1"})
        if resp.status_code == 404:
            return []
        if resp.status_code != 200:
            raise BuildError(f"the package index {redact(self.url)} answered {resp.status_code} for {name}",
                             "check COMPOSER_INDEX_URL and its credentials")
        out = []
        if resp.headers.get("Content-Type", "").startswith(_SIMPLE_JSON):
            try:
                entries = resp.json().get("files") or []
            except ValueError:
                entries = []
            for f in entries:
                if isinstance(f, dict) and isinstance(f.get("url"), str) and isinstance(f.get("hashes"), dict):
                    out.append({"filename": str(f.get("filename") or ""), "url": urljoin(resp.url, f["url"]),
                                "sha256": str(f["hashes"].get("sha256") or "").lower()})
        else:
            parser = _Links()
            parser.feed(resp.text)
            for href, text in parser.links:
                url = urljoin(resp.url, href)
                frag = urlsplit(url).fragment
                m = re.search(r"sha256=([0-9a-fA-F]{64})", frag)
                filename = text or urlsplit(url).path.rsplit("/", 1)[-1]
                out.append({"filename": filename, "url": url.split("#", 1)[0], "sha256": m.group(1).lower() if m else ""})
        return out

    def download(self, url: str, sha256: str, target: Path) -> None:
        tmp = target.with_name(f".tmp-{os.getpid()}-{target.name}")
        h = hashlib.sha256()
        try:
            with self._get(url, stream=True) as resp:
                if resp.status_code != 200:
                    raise BuildError(f"downloading {target.name} from {redact(self.url)} answered {resp.status_code}",
                                     "check the package index")
                with open(tmp, "wb") as f:
                    for chunk in resp.iter_content(1 << 20):
                        h.update(chunk)
                        f.write(chunk)
            if h.hexdigest() != sha256:
                raise BuildError(f"{target.name} from {redact(self.url)} does not match its locked hash",
                                 "the index serves other bytes than it indexed; do not use it")
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                tmp.unlink()


# -- which file fits the image ---------------------------------------------------------------
def target_tags(python_version: str, python_platform: str) -> List[str]:
    """Wheel tags the image's python accepts, best first (packaging's order)."""
    from packaging import tags

    major, minor = (int(x) for x in python_version.split(".")[:2])
    arch, _, rest = python_platform.partition("-")
    plats: List[str] = []
    m = re.match(r"^manylinux_(\d+)_(\d+)\Z", rest)
    if m:
        glibc_major, glibc_minor = int(m.group(1)), int(m.group(2))
        for v in range(glibc_minor, -1, -1):
            plats.append(f"manylinux_{glibc_major}_{v}_{arch}")
            legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}.get(v)
            if glibc_major == 2 and legacy and (v == 17 or arch in ("x86_64", "i686")):
                plats.append(f"{legacy}_{arch}")
    elif "musl" in rest:
        plats += [f"musllinux_1_{v}_{arch}" for v in range(2, -1, -1)]
    plats.append(f"linux_{arch}")
    out = list(tags.cpython_tags((major, minor), platforms=plats))
    out += list(tags.compatible_tags((major, minor), f"cp{major}{minor}", plats))
    return [str(t) for t in out]


def _wheel_rank(filename: str, ranks: Dict[str, int]) -> Optional[int]:
    bits = filename[:-4].split("-")
    if len(bits) < 5:
        return None
    found = [ranks[f"{i}-{a}-{p}"] for i in bits[-3].split(".") for a in bits[-2].split(".") for p in bits[-1].split(".")
             if f"{i}-{a}-{p}" in ranks]
    return min(found) if found else None


def choose(name: str, version: str, hashes: Iterable[str], files: List[dict], ranks: Dict[str, int]) -> Optional[dict]:
    """The locked file to install: the best-ranked wheel, else the sdist; only files whose sha256 the lock holds."""
    allowed = {h.split(":", 1)[1] for h in hashes if h.startswith("sha256:")}
    mine = [f for f in files if f["sha256"] in allowed and _filename_version(name, f["filename"]) is not None
            and canonical_name(_filename_version(name, f["filename"]) or "") == canonical_name(version)]
    wheels = [(r, f) for f in mine if f["filename"].endswith(".whl") for r in [_wheel_rank(f["filename"], ranks)] if r is not None]
    if wheels:
        return min(wheels, key=lambda x: x[0])[1]
    sdists = [f for f in mine if _SDIST.search(f["filename"])]
    return sdists[0] if sdists else None


_SAFE_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+!-]*\Z")


def fetch(settings: Settings, packages: List[dict], python_version: str, python_platform: str, dest: Path) -> List[str]:
    """Every package's file into dest, hash-checked (a host cache keeps them by sha256); returns
    the file names. An sdist's build requirements are fetched too (as wheels)."""
    dest.mkdir(parents=True, exist_ok=True)
    indexes = [Index(u, settings) for u in (settings.index_url or DEFAULT_INDEX, settings.extra_index_url) if u]
    ranks = {t: i for i, t in enumerate(target_tags(python_version, python_platform))}
    cache = state.state_dir() / "dists"
    cache.mkdir(parents=True, exist_ok=True)
    names, sdists = [], []
    for p in packages:
        chosen, source = None, None
        for index in indexes:
            chosen = choose(p["name"], p["version"], p.get("hashes") or (), index.files(p["name"]), ranks)
            if chosen is not None:
                source = index
                break
        if chosen is None or source is None:
            raise BuildError(f"no file of {p['name']}=={p['version']} with a locked hash fits python {python_version} "
                             f"on {python_platform}", "check the package index; the lock may be from another index")
        if not _SAFE_FILE.match(chosen["filename"]):
            raise BuildError(f"the package index names a file {chosen['filename'][:80]!r}", "check the package index")
        cached = _place(source, chosen, cache, dest)
        names.append(chosen["filename"])
        if not chosen["filename"].endswith(".whl"):
            sdists.append(cached)
    if sdists:
        names += fetch_build_requirements(settings, sdists, python_version, python_platform, dest, indexes, ranks, cache)
    return sorted(names)


def build_requirements(sdist: Path) -> List[str]:
    """[build-system].requires of an sdist, read as text (setuptools' defaults without one)."""
    import tomli

    text = None
    try:
        if sdist.name.endswith(".zip"):
            with zipfile.ZipFile(sdist) as z:
                cand = [n for n in z.namelist() if n.count("/") == 1 and n.endswith("/pyproject.toml")]
                text = z.read(cand[0]).decode("utf-8") if cand else None
        else:
            with tarfile.open(sdist) as t:
                cand = [m for m in t.getmembers() if m.isfile() and m.name.count("/") == 1 and m.name.endswith("/pyproject.toml")]
                f = t.extractfile(cand[0]) if cand else None
                text = f.read().decode("utf-8") if f else None
    except (OSError, tarfile.TarError, zipfile.BadZipFile, UnicodeDecodeError):
        raise BuildError(f"the sdist {sdist.name} cannot be read", "check the package index") from None
    default = ["setuptools>=40.8.0", "wheel"]
    if text is None:
        return default
    try:
        data = tomli.loads(text)
    except tomli.TOMLDecodeError:
        raise BuildError(f"the pyproject.toml of {sdist.name} is not valid TOML", "pick a version with a wheel") from None
    requires = (data.get("build-system") or {}).get("requires")
    if requires is None:
        return default
    if not isinstance(requires, list) or not all(isinstance(r, str) for r in requires):
        raise BuildError(f"the build requirements of {sdist.name} are malformed", "pick a version with a wheel")
    return list(requires) + ["wheel"]


def fetch_build_requirements(settings: Settings, sdists: List[Path], python_version: str, python_platform: str,
                             dest: Path, indexes: List[Index], ranks: Dict[str, int], cache: Path) -> List[str]:
    """Lock what the sdists need to build (uv, for the image's python and platform) and fetch it as wheels."""
    from composer.kinds.pip import parse_lock, uv_binary, uv_env
    from composer.requirements import parse_requirement

    wanted = sorted({str(parse_requirement(r, f"build requirements of {s.name}")) for s in sdists for r in build_requirements(s)})
    with tempfile.TemporaryDirectory(prefix="composer-buildreq-") as tmp:
        req = Path(tmp, "build.in")
        req.write_text("\n".join(wanted) + "\n", encoding="utf-8")
        proc = subprocess.run([uv_binary(), "pip", "compile", str(req), "--python-version", python_version,
                               "--python-platform", python_platform, "--only-binary", ":all:", "--generate-hashes",
                               "--no-header", "--no-annotate", "--quiet", "--color", "never"],
                              capture_output=True, text=True, env=uv_env(settings), timeout=600)
    if proc.returncode != 0:
        raise BuildError(f"the build requirements of {', '.join(s.name for s in sdists)} cannot be locked as wheels",
                         "pick versions with wheels for the image")
    names = []
    for p in parse_lock(proc.stdout):
        chosen = source = None
        for index in indexes:
            chosen = choose(p["name"], p["version"], p["hashes"], index.files(p["name"]), ranks)
            if chosen is not None and chosen["filename"].endswith(".whl"):
                source = index
                break
        if chosen is None or source is None or not _SAFE_FILE.match(chosen["filename"]):
            raise BuildError(f"no wheel of build requirement {p['name']}=={p['version']} fits the image", "pick a version with a wheel")
        _place(source, chosen, cache, dest)
        names.append(chosen["filename"])
    return names


def _place(source, chosen: dict, cache: Path, dest: Path) -> Path:
    """The chosen file in the host cache (downloaded and hash-checked unless it is there) and
    linked into dest; returns its place in the cache."""
    cached = cache / f"{chosen['sha256']}-{chosen['filename']}"
    if not (cached.is_file() and _sha256(cached) == chosen["sha256"]):
        source.download(chosen["url"], chosen["sha256"], cached)
    _link(cached, dest / chosen["filename"])
    return cached


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _link(src: Path, dst: Path) -> None:
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:
        import shutil

        shutil.copyfile(src, dst)
