"""Conda environments: an upstream whose environment is a conda prefix, and extras given
as an environment.yml (conda dependencies plus a `pip:` section).

The path, end to end:
  1. the upstream run record holds the prefix, its channels and the explicit package list
     (name, version, build, channel, sha256, ...), read from the prefix's conda-meta/ by the
     probe (composer/upstream/probe.py) or given as an @EXPLICIT list (`record --requirements`);
  2. the conda dependencies are solved with py-rattler (a real conda solver, the same on
     every machine) with every upstream conda package pinned; a clash is one line naming both
     sides. The pip part is then locked with uv on top (composer/kinds/pip.py), every upstream
     distribution and every Python conda package pinned;
  3. dockerfiles/conda.Dockerfile installs the locked conda packages into the upstream prefix:
     with micromamba when there is one (the image's, or the host's `--micromamba`/MAMBA_EXE,
     bind-mounted), offline from archives fetched and sha256-checked on the host; otherwise
     py-rattler links them on the host into a staging tree *for that prefix* (the prefix is
     patched into files and entry points as if installed there) and the build step unpacks
     the tree, refusing to replace any upstream file. No installer stays in the image;
  4. the spec hash covers the conda lock (composer/model/spec.py), the build record has a `conda`
     section, and the composed environment's run record keeps the prefix's new package list,
     so it can be the next build's upstream.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform as host_platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple
from urllib.parse import unquote, urlparse

from composer import state
from composer.dockerfile import checked_value, fill, label_value, load_template, shell_word, site_dir
from composer.errors import BuildError, EnvironmentProblem, LockConflictError, UsageError
from composer.kinds.base import Composition, EnvironmentKind
from composer.kinds.pip import Lock, lock_extras, lock_from_cache, lock_hash, secretless
from composer.model.canonical import canonical_json, sha256_digest
from composer.model.records import Distribution, RunRecord, utc_now
from composer.model.refs import ImageRef
from composer.requirements import canonical_name, parse_requirement, read_requirements, read_text
from composer.settings import Settings
from composer.model.urls import redact
from composer.progress import progress_bar
from composer.upstream.conda_meta import normalise_package, remember_channel, with_credentials
from composer.version import __version__

TEMPLATE_KIND = "conda"
ENV_FILE_SUFFIXES = (".yml", ".yaml")
SUBDIRS = {"amd64": "linux-64", "arm64": "linux-aarch64", "ppc64le": "linux-ppc64le", "s390x": "linux-s390x"}
STAGE_MTIME = 946684800  # 2000-01-01: the staged tree's files get one fixed time, so the tarball is reproducible


# -- environment.yml ----------------------------------------------------------------
@dataclass(frozen=True)
class EnvironmentFile:
    channels: Tuple[str, ...]  # in priority order
    conda: Tuple[str, ...]  # match specs, sorted
    pip: Tuple[str, ...]  # PEP 508 requirements, normalised, sorted

    def requirements(self) -> List[str]:
        """The extras as one flat list (what `read_extras` returns and the record keeps):
        channel:URL in order, then conda:SPEC, then the pip requirements."""
        return [f"channel:{redact(c)}" for c in self.channels] + [f"conda:{s}" for s in self.conda] + list(self.pip)


def is_environment_file(path: Optional[Path]) -> bool:
    return path is not None and path.suffix.lower() in ENV_FILE_SUFFIXES


def read_environment_file(path: Path) -> EnvironmentFile:
    """An environment.yml, strictly: channels, dependencies (conda match specs and one `pip:` list)."""
    text = read_text(path, "extras file")
    try:
        import yaml
    except ImportError as exc:
        raise EnvironmentProblem(f"PyYAML is not importable ({exc}), needed to read {path}", "pip install 'composer[conda]'") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"extras file {path} is not valid YAML ({first})", "fix the file") from exc
    if not isinstance(data, dict):
        raise UsageError(f"extras file {path} is not an environment file (no mapping at the top)", "write channels: and dependencies: keys")
    unknown = sorted(set(data) - {"name", "channels", "dependencies", "prefix"})
    if unknown:
        raise UsageError(f"{path}: key {unknown[0]!r} is not supported in extras", "keep name, channels and dependencies")
    channels = data.get("channels") or []
    if not isinstance(channels, list) or not all(isinstance(c, str) and c.strip() for c in channels):
        raise UsageError(f"{path}: channels must be a list of channel names or URLs", "e.g. channels: [conda-forge]")
    deps = data.get("dependencies")
    if not isinstance(deps, list):
        raise UsageError(f"{path} has no dependencies list", "add dependencies: [numpy, {pip: [shap]}]")
    conda: List[str] = []
    pip: List[str] = []
    for number, dep in enumerate(deps, 1):
        where = f"{path}: dependencies[{number}]"
        if isinstance(dep, str):
            conda.append(_match_spec(dep, where))
        elif isinstance(dep, dict) and list(dep) == ["pip"] and isinstance(dep["pip"], list):
            for item in dep["pip"]:
                if not isinstance(item, str):
                    raise UsageError(f"{where}: pip entry {item!r} is not a string", "write requirements as strings")
                if item.strip().startswith("-"):
                    raise UsageError(f"{where}: pip option lines ({item.split()[0]}) are not supported in extras",
                                     "list requirements only; set the index with COMPOSER_INDEX_URL")
                pip.append(str(parse_requirement(item.strip(), f"{where} (pip)")))
        else:
            raise UsageError(f"{where}: {str(dep)[:60]!r} is neither a conda match spec nor a pip: list", "fix the entry")
    if not conda and not pip:
        raise UsageError(f"extras file {path} lists no dependencies", "add at least one, e.g. - numpy or - pip: [shap]")
    names = [c.strip().rstrip("/") for c in channels if c.strip() != "nodefaults"]
    for name in names:
        remember_channel(name)  # a token in a channel URL is used to fetch, and stored nowhere
    return EnvironmentFile(tuple(dict.fromkeys(names)), tuple(sorted(set(conda))), tuple(sorted(set(pip))))


def _match_spec(text: str, where: str) -> str:
    spec = " ".join(text.split())
    if not spec:
        raise UsageError(f"{where}: an empty conda dependency", "remove the empty entry")
    try:
        _rattler().MatchSpec(spec)
    except EnvironmentProblem:
        raise
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"{where}: {spec[:80]!r} is not a conda match spec ({first})", "write it as name [version [build]], e.g. numpy >=1.26") from exc
    return spec


def _spec_name(spec: str) -> str:
    """The package name of a match spec: 'conda-forge::numpy >=1' -> numpy."""
    return re.split(r"[\s=<>!~\[]", spec.split("::")[-1], 1)[0].lower()


# -- py-rattler -------------------------------------------------------------------------
def _rattler():
    try:
        import rattler
        import rattler.exceptions  # noqa: F401  (not imported by the package itself)
    except ImportError as exc:
        raise EnvironmentProblem(f"py-rattler is not importable ({exc}); conda environments need it",
                                 "pip install 'composer[conda]' (Python 3.10 or newer)") from exc
    return rattler


class WorkerError(Exception):
    """An error py-rattler raised in the worker: its type name and message."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind, self.message = kind, message


def _worker_call(op: str, payload: dict, timeout: int = 3600, ca: Optional[str] = None):
    """Run one py-rattler operation (solve, install) in a worker process, see _worker().
    ca: composer's CA bundle; the worker's TLS uses the system roots, which honour SSL_CERT_FILE."""
    env = dict(os.environ)
    if ca:
        env["SSL_CERT_FILE"] = ca
    root = str(Path(__file__).resolve().parent.parent)  # composer importable there, installed or not
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.run([sys.executable, "-m", "composer.kinds.conda", "--worker"], input=json.dumps({"op": op, **payload}),
                              capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise EnvironmentProblem(f"py-rattler's {op} took over {timeout} s", "check the channels and the network") from exc
    try:
        answer = json.loads(proc.stdout)
    except ValueError as exc:
        tail = " ".join(proc.stderr.split())[-300:]
        raise EnvironmentProblem(f"the py-rattler worker ({op}) failed with exit {proc.returncode} ({tail or 'no output'})",
                                 "check that py-rattler works here: pip install 'composer[conda]'") from exc
    if "error" in answer:
        kind, message = answer["error"]["kind"], answer["error"]["message"]
        if kind == "EnvironmentProblem":
            raise EnvironmentProblem(message)
        raise WorkerError(kind, message)
    return answer["ok"]


def _worker() -> None:
    """`python -m composer.kinds.conda --worker`: one py-rattler operation, JSON in on stdin, JSON out.

    py-rattler's async runtime can crash the interpreter at exit after a solve or an install
    (SIGSEGV/SIGABRT in about one run in ten here, py-rattler 0.28), which would turn a
    composer exit code into a signal. So those calls run here, and this process leaves with
    os._exit once it has answered; the composer process only parses match specs."""
    try:
        request = json.loads(sys.stdin.read())
        answer = {"ok": _WORKER_OPS[request["op"]](request)}
    except EnvironmentProblem as exc:
        answer = {"error": {"kind": "EnvironmentProblem", "message": exc.one_line()}}
    except Exception as exc:  # noqa: BLE001  (carried to the parent, which decides)
        answer = {"error": {"kind": type(exc).__name__, "message": str(exc)}}
    sys.stdout.write(json.dumps(answer))
    sys.stdout.flush()
    os._exit(0)


def _op_solve(req: dict) -> List[dict]:
    import asyncio  # only in the worker process

    r = _rattler()
    client = _client()
    gateway = r.Gateway(cache_dir=Path(req["cache"]), **({"client": client} if client is not None else {}))
    vps = [r.GenericVirtualPackage(r.PackageName(n), r.Version(v), r.BuildString(b)) for n, v, b in req["virtual"]]
    solved = asyncio.run(r.solve(
        sources=req["channels"], specs=req["specs"], gateway=gateway, platforms=[req["subdir"], "noarch"],
        pinned_packages=[_repodata_record(p) for p in req["pinned"]], virtual_packages=vps,
    ))
    return [json.loads(rec.to_json()) for rec in solved]


def _op_install(req: dict) -> None:
    import asyncio  # only in the worker process

    r = _rattler()
    records = [_repodata_record(p, url=p.get("archive_url")) for p in req["records"]]
    asyncio.run(r.install(
        records, target_prefix=req["target"], cache_dir=Path(req["cache"]), ignored_packages=set(req["ignored"]),
        alternative_target_prefix=req["prefix"], platform=r.Subdir(req["subdir"]), execute_link_scripts=False,
        show_progress=False,
    ))


_WORKER_OPS = {"solve": _op_solve, "install": _op_install}


def cache_dir(kind: str) -> Path:
    path = state.state_dir() / "conda" / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def _repodata_record(p: dict, url: Optional[str] = None):
    r = _rattler()
    fn = p.get("fn") or f"{p['name']}-{p['version']}-{p['build']}.conda"
    record = r.PackageRecord(
        p["name"], p["version"], r.BuildString(p["build"]), int(p.get("build_number") or 0), p.get("subdir") or "noarch",
        noarch=p.get("noarch"), depends=list(p.get("depends") or []), constrains=list(p.get("constrains") or []),
        sha256=bytes.fromhex(p["sha256"]) if p.get("sha256") else None, md5=bytes.fromhex(p["md5"]) if p.get("md5") else None,
    )
    channel = p.get("channel") or "unknown"
    return r.RepoDataRecord(record, fn, url or p.get("url") or f"{channel}/{p.get('subdir') or 'noarch'}/{fn}", channel + "/")


def _channel_url(channel: str) -> str:
    if channel == "defaults":
        return "https://repo.anaconda.com/pkgs/main"
    if re.match(r"^[a-z][a-z0-9+.-]*://", channel):
        return channel.rstrip("/")
    if channel.startswith("/"):
        return Path(channel).resolve().as_uri()
    return f"https://conda.anaconda.org/{channel}"


def _virtual_packages(upstream: dict) -> list:
    """What the target machine offers, as the solver must see it: the image's glibc, not the host's."""
    plat = upstream["platform"]
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(plat.get("architecture") or "", plat.get("architecture") or "")
    kernel = re.match(r"^\d+(\.\d+)*", host_platform.release()) if host_platform.system() == "Linux" else None
    wanted = [("__unix", "0", "0"), ("__linux", kernel.group(0) if kernel else "0", "0"), ("__archspec", "1", arch or "0")]
    if plat.get("libc") == "glibc" and plat.get("libc_version"):
        wanted.append(("__glibc", plat["libc_version"], "0"))
    return [list(w) for w in wanted]


def _client():
    r = _rattler()
    try:  # the system's roots honour SSL_CERT_FILE (a corporate proxy's CA), rattler's bundled ones don't
        return r.Client.from_config(r.Config.from_toml('tls-root-certs = "native"'))
    except Exception:  # an older py-rattler: its default client
        return None


def subdir_of(upstream: dict) -> str:
    arch = upstream["platform"].get("architecture") or ""
    if arch not in SUBDIRS:
        raise UsageError(f"conda packages for architecture {arch!r} are not supported", f"use one of {', '.join(SUBDIRS)}")
    return SUBDIRS[arch]


# -- solving ----------------------------------------------------------------------------
@dataclass
class CondaLock:
    prefix: str  # the upstream prefix ("" when the upstream has none)
    channels: List[str] = field(default_factory=list)  # where the added packages were solved from
    requirements: List[str] = field(default_factory=list)  # the conda specs asked for
    packages: List[dict] = field(default_factory=list)  # the prefix after the build: upstream's + added, by name
    added: List[dict] = field(default_factory=list)  # what the new layer installs

    def spec_part(self) -> Optional[dict]:
        return {"prefix": self.prefix, "packages": self.packages} if self.prefix else None


def solve_extras(settings: Settings, env: EnvironmentFile, upstream: dict, run_id: str) -> CondaLock:
    """Solve the conda dependencies with every upstream conda package pinned (py-rattler)."""
    up = upstream.get("conda")
    if not env.conda:
        return CondaLock(prefix=up["prefix"] if up else "", packages=list(up["packages"]) if up else [])
    if not up:
        raise UsageError(f"the extras ask for conda packages ({', '.join(env.conda[:3])}) but upstream run {run_id} has no conda prefix",
                         "compose conda packages on an image with a conda environment, or move them to the pip: section")
    channels = list(env.channels) or list(up.get("channels") or [])
    if not channels:
        raise UsageError("the environment file lists no channels and the upstream records none", "add channels: to the environment file")
    _rattler()  # a clear error here when py-rattler is missing
    try:
        solved = _worker_call("solve", {
            "channels": [_channel_url(c) for c in channels], "specs": list(env.conda), "subdir": subdir_of(upstream),
            "pinned": up["packages"], "virtual": _virtual_packages(upstream), "cache": str(cache_dir("repodata")),
        }, ca=settings.ca_bundle_path())
    except WorkerError as exc:
        if exc.kind == "SolverError":
            raise explain_solve_failure(redact_text(exc.message), list(env.conda), up["packages"], run_id,
                                        [redact(c) for c in channels]) from exc
        cause = " ".join(exc.message.split())[:300]
        raise UsageError(f"the conda channels {', '.join(map(redact, channels))} could not be read ({exc.kind}: {redact_text(cause)})",
                         "check the channel names or URLs and the network") from exc
    upstream_by_name = {p["name"]: p for p in up["packages"]}
    added = []
    for rec in solved:
        p = normalise_package(rec)
        was = upstream_by_name.get(p["name"])
        if was is None:
            added.append(p)
        elif (was["version"], was["build"]) != (p["version"], p["build"]):  # pinned: this guards the guarantee itself
            raise LockConflictError(f"the conda solve moved upstream package {p['name']} {was['version']} {was['build']} "
                                    f"to {p['version']} {p['build']}", "report this; the upstream must not change")
    packages = sorted(list(up["packages"]) + added, key=lambda p: p["name"])
    return CondaLock(prefix=up["prefix"], channels=[redact(c) for c in channels], requirements=list(env.conda), packages=packages,
                     added=sorted(added, key=lambda p: p["name"]))


def redact_text(text: str) -> str:
    """A message that may quote a channel URL, with every URL in it redacted."""
    return re.sub(r"[a-z][a-z0-9+.-]*://[^\s'\"),]+", lambda m: redact(m.group(0)), text)


def explain_solve_failure(message: str, specs: List[str], upstream_packages: List[dict], run_id: str,
                          channels: List[str]) -> Exception:
    """py-rattler's solver report -> one line naming the extra and the upstream package it clashes with."""
    lines = [re.sub(r"^[\s│├└─]+", "", l).strip() for l in message.splitlines()]
    cause = "; ".join(l for l in lines if l).replace("Cannot solve the request because of: ", "")
    missing = re.search(r"No candidates were found for (\S+)", message)
    by_name = {_spec_name(s): s for s in specs}
    top = [re.sub(r"^[└├]─ ", "", l).split(" can be installed")[0].split(" cannot be installed")[0]
           for l in message.splitlines() if re.match(r"^[└├]─ ", l) and "is locked" not in l]
    asked = next((by_name[_spec_name(t)] for t in top if _spec_name(t) in by_name), specs[0] if len(specs) == 1 else None)
    if missing and _spec_name(missing.group(1)) in by_name:
        spec = by_name[_spec_name(missing.group(1))]
        return UsageError(f"extra conda requirement {spec!r} was not found in channels {', '.join(channels)}",
                          "fix the name or the channels")
    locked = re.findall(r"(\S+) (\S+) is locked", message)
    if locked:
        name, version = locked[0]
        pin = next((p for p in upstream_packages if p["name"] == name), {"version": version, "build": "?"})
        why = re.search(rf"(\S+ \S+) would require[\s│├└─]*({re.escape(name)}\b[^,\n]*)", message)
        because = f": {why.group(1)} requires {why.group(2).strip()}" if why else ""
        what = f"extra conda requirement {asked!r}" if asked else f"the conda extras ({', '.join(specs)})"
        return LockConflictError(
            f"{what} conflicts with upstream conda package {name}=={pin['version']} (build {pin['build']}) of run {run_id}{because}",
            "relax the extra requirement; upstream versions never move",
        )
    return LockConflictError(f"the conda extras cannot be solved on top of run {run_id} ({cause[:300]})", "relax the extra requirements")


def python_pins(conda_packages: List[dict], distributions: List[dict]) -> List[dict]:
    """Python conda packages as name==version pins for uv (those the probe did not already see
    as installed distributions): the pip part may add packages but never replace a conda one."""
    from packaging.version import InvalidVersion, Version

    have = {d["name"] for d in distributions}
    pins = {}
    for p in conda_packages:
        deps = {_spec_name(d) for d in p.get("depends") or []}
        if p["name"] in ("python", "python_abi") or not (p.get("noarch") == "python" or "python" in deps):
            continue
        name = canonical_name(p["name"])
        if not re.match(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\Z", name):
            continue  # not a Python distribution name (conda allows '+'): nothing uv could pin
        try:
            Version(p["version"])
        except InvalidVersion:
            continue
        if name not in have:
            pins[name] = {"name": name, "version": p["version"]}
    return sorted(pins.values(), key=lambda d: d["name"])


# -- installers and the build context ---------------------------------------------------
@dataclass(frozen=True)
class Installer:
    kind: str  # micromamba-host | micromamba-image | py-rattler
    path: Optional[str] = None  # micromamba's path: on the host (bind-mounted) or in the image


HOST_MICROMAMBA = "/tmp/composer/conda/micromamba"


def choose_installer(settings: Settings, upstream_conda: Optional[dict]) -> Installer:
    """The host's micromamba when one is named, else the image's, else py-rattler on the host."""
    if settings.micromamba:
        path = Path(settings.micromamba).expanduser()
        if not path.is_file() or not os.access(path, os.X_OK):
            raise UsageError(f"micromamba {path} does not exist or is not executable",
                             "fix --micromamba / MAMBA_EXE, or unset it to install with py-rattler")
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic != b"\x7fELF" and not magic.startswith(b"#!"):
            raise UsageError(f"micromamba {path} is not a Linux executable", "pass a Linux micromamba binary: the build step runs it")
        return Installer("micromamba-host", str(path))
    if upstream_conda and upstream_conda.get("micromamba"):
        return Installer("micromamba-image", upstream_conda["micromamba"])
    return Installer("py-rattler")


def _file_hash(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verified(path: Path, p: dict) -> bool:
    if not path.is_file():
        return False
    if p.get("sha256"):
        return _file_hash(path, "sha256") == p["sha256"]
    return bool(p.get("md5")) and _file_hash(path, "md5") == p["md5"]


def fetch_archives(settings: Settings, packages: List[dict]) -> Dict[str, Path]:
    """The locked archives in the host cache, each checked against its sha256 (md5 if that is all
    there is): {name: path}. A wrong or unreachable archive is an error before anything is built."""
    cache = cache_dir("pkgs")
    out = {}
    with progress_bar(settings, f"fetching {len(packages)} conda package(s)") as advance:
        for p in packages:
            out[p["name"]] = _fetch_archive(settings, p, cache, advance)
    return out


def _fetch_archive(settings: Settings, p: dict, cache: Path, advance) -> Path:
    """One locked archive in the host cache, fetched (with its channel's credentials) unless there."""
    import requests

    if not p.get("url") or not (p.get("sha256") or p.get("md5")):
        raise UsageError(f"conda package {p['name']} {p['version']} has no URL or hash in its lock", "solve it from a channel")
    target = cache / f"{(p.get('sha256') or p['md5'])[:16]}-{p['fn']}"
    if not _verified(target, p):
        tmp = target.with_name(f".tmp-{os.getpid()}-{target.name}")
        url = with_credentials(p["url"])  # the lock keeps it redacted; the channel as given has the token
        parsed = urlparse(url)
        try:
            if parsed.scheme == "file":
                shutil.copyfile(unquote(parsed.path), tmp)
            else:
                ca = settings.ca_bundle_path()
                with requests.get(url, stream=True, timeout=60, verify=ca or True) as resp:
                    resp.raise_for_status()
                    with open(tmp, "wb") as f:
                        for chunk in resp.iter_content(1 << 20):
                            f.write(chunk)
                            advance(len(chunk))
        except (OSError, requests.RequestException) as exc:
            tmp.unlink(missing_ok=True)
            raise UsageError(f"conda package {p['fn']} could not be fetched from {p['channel']} ({type(exc).__name__}: {redact_text(str(exc))})",
                             "check the channel and the network") from exc
        if not _verified(tmp, p):
            tmp.unlink(missing_ok=True)
            raise UsageError(f"conda package {p['fn']} from {p['channel']} does not match its locked hash",
                             "the channel serves other bytes than it indexed; fix the channel")
        os.replace(tmp, target)
    return target


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def prepare_conda_context(settings: Settings, context: Path, lock: CondaLock, installer: Installer,
                          upstream: dict, spec: str) -> None:
    """context/conda: what the conda step of the Dockerfile bind-mounts."""
    conda_dir = context / "conda"
    conda_dir.mkdir()
    if not lock.added:
        return
    archives = fetch_archives(settings, lock.added)
    if installer.kind.startswith("micromamba"):
        pkgs = conda_dir / "pkgs"
        pkgs.mkdir()
        lines = ["@EXPLICIT", "# composer: the locked conda packages, installed offline from the bind-mounted archives"]
        for p in lock.added:
            _link(archives[p["name"]], pkgs / p["fn"])
            lines.append(f"file:///tmp/composer/conda/pkgs/{p['fn']}" + (f"#{p['md5']}" if p.get("md5") else ""))
        (conda_dir / "explicit.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        if installer.kind == "micromamba-host":
            _link(Path(installer.path), conda_dir / "micromamba")
        return
    stage_with_rattler(lock, upstream, archives, conda_dir / "stage.tar")
    (conda_dir / "history").write_text(history_entry(lock, spec), encoding="utf-8")


def stage_with_rattler(lock: CondaLock, upstream: dict, archives: Dict[str, Path], out: Path) -> List[str]:
    """Link the added packages with py-rattler into a staging tree for the upstream prefix, and
    write the new files (and their conda-meta records) as a tarball; returns its members."""
    up_names = {p["name"] for p in upstream["conda"]["packages"]}
    records = [{**p, "archive_url": archives[p["name"]].resolve().as_uri()} for p in lock.added]
    records += list(upstream["conda"]["packages"])
    with tempfile.TemporaryDirectory(prefix="composer-conda-stage-") as tmp:
        stage = Path(tmp) / "prefix"
        try:
            _worker_call("install", {"records": records, "target": str(stage), "cache": str(cache_dir("extracted")),
                                     "ignored": sorted(up_names), "prefix": lock.prefix, "subdir": subdir_of(upstream)})
        except WorkerError as exc:
            raise BuildError(f"py-rattler could not link the conda packages for {lock.prefix} ({exc.kind}: "
                             f"{' '.join(exc.message.split())[:200]})", "check the packages of the lock") from exc
        members = []
        for p in lock.added:
            meta_rel = f"conda-meta/{p['name']}-{p['version']}-{p['build']}.json"
            meta_path = stage / meta_rel
            record = json.loads(meta_path.read_text(encoding="utf-8"))
            # Host details out, the channel's own URL back in: the record reads as if installed in the image.
            for key in ("extracted_package_dir", "package_tarball_full_path", "link"):
                record.pop(key, None)
            record.update(url=p["url"], channel=p["channel"], fn=p["fn"],
                          requested_specs=[s for s in lock.requirements if _spec_name(s) == p["name"]])
            meta_path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            members += [meta_rel] + list(record.get("files") or [])
        _write_stage_tar(stage, sorted(set(members)), out)
        return sorted(set(members))


def _write_stage_tar(stage: Path, members: List[str], out: Path) -> None:
    with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as tar:
        for rel in members:
            path = stage / rel
            if not os.path.lexists(path):
                if "__pycache__/" in rel:
                    continue  # byte code a record lists but the host could not compile: python writes it on import
                raise BuildError(f"the staged conda tree lacks {rel}", "report this with the lock")
            st = os.lstat(path)
            info = tarfile.TarInfo(rel)
            info.mtime, info.uid, info.gid, info.uname, info.gname = STAGE_MTIME, 0, 0, "", ""
            if os.path.islink(path):
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, os.readlink(path), 0o777
                tar.addfile(info)
            else:
                info.size, info.mode = st.st_size, st.st_mode & 0o7777
                with open(path, "rb") as f:
                    tar.addfile(info, f)


def history_entry(lock: CondaLock, spec: str) -> str:
    stamp = utc_now().replace("T", " ").rstrip("Z")
    lines = [f"==> {stamp} <==", f"# cmd: composer build (spec {spec})", f"# update specs: {json.dumps(lock.requirements)}"]
    lines += [f"+{p['channel']}::{p['name']}-{p['version']}-{p['build']}" for p in lock.added]
    return "\n".join(lines) + "\n"


# -- the Dockerfile -------------------------------------------------------------------
def render_conda(*, base_ref: str, base_name: str, base_digest: str, python: dict, prefix: str, installer: Installer,
                 spec_hash: str, syntax: Optional[str]) -> Tuple[str, str]:
    """The Dockerfile for dockerfiles/conda.Dockerfile, and its template id."""
    if "@sha256:" not in base_ref:
        raise ValueError("the base must be pinned by digest")
    if syntax and not re.match(r"^[A-Za-z0-9._/:@-]+$", syntax):
        raise UsageError(f"dockerfile syntax {syntax!r} is not an image reference", "e.g. docker/dockerfile:1.7")
    text, template = load_template(TEMPLATE_KIND)
    micromamba = {"micromamba-host": HOST_MICROMAMBA, "micromamba-image": installer.path}.get(installer.kind)
    values = {
        "syntax_line": f"# syntax={syntax}\n" if syntax else "",
        "base_ref": checked_value(base_ref, "the upstream image"),
        "base_name": label_value(base_name, "the upstream image's name"),
        "base_digest": checked_value(base_digest, "the upstream image's digest"),
        "prefix": shell_word(prefix, "the upstream's conda prefix") if prefix else "''",
        "micromamba": shell_word(micromamba, "the image's micromamba") if micromamba else "false",
        "python": shell_word(python["executable"], "the upstream's python executable"),
        "site": shell_word(site_dir(python), "the upstream's site-packages"),
        "install_flags": "--break-system-packages" if python.get("externally_managed") else "",
        "spec_hash": checked_value(spec_hash, "the spec hash"),
        "template": template,
        "python_label": label_value(python["executable"], "the upstream's python executable"),
        "prefix_label": label_value(prefix, "the upstream's conda prefix"),
        "composer_version": __version__,
    }
    return fill(text, values), template


# -- the kind -----------------------------------------------------------------------------
def lock_pip_part(settings: Settings, env: EnvironmentFile, upstream: RunRecord, conda_lock: CondaLock, run_id: str) -> Lock:
    """The pip part locked with uv on the upstream's distributions plus every Python conda package."""
    if not env.pip:
        return Lock(requirements=[], packages=[], added=[])
    pins = python_pins(conda_lock.packages, [d.to_json() for d in upstream.distributions])
    added = {p["name"] for p in conda_lock.added}
    conda_pins = {d["name"]: d["version"] for d in pins}
    all_pins = {**upstream.pins, **conda_pins}
    try:
        return lock_extras(settings, list(env.pip), all_pins, upstream.python.version,
                           upstream.platform.python_platform, run_id)
    except LockConflictError as exc:  # a clash with a conda package of the extras is named as such
        for name in sorted(added & set(conda_pins)):
            pin = f"{name}=={conda_pins[name]}"
            if getattr(exc, "clashing_pin", None) == pin:
                raise LockConflictError(exc.message.replace(f"upstream pin {pin} of run {run_id}", f"conda package {pin} of the extras"),
                                        exc.hint) from exc
        raise


class CondaKind(EnvironmentKind):
    name = TEMPLATE_KIND

    def claims_file(self, extra: Path) -> bool:
        return is_environment_file(extra)

    def claims_upstream(self, upstream: RunRecord) -> bool:
        return upstream.conda is not None

    def read_extras(self, path: Path) -> List[str]:
        return read_environment_file(path).requirements() if is_environment_file(path) else read_requirements(path)

    def _environment(self, path: Path, requirements: List[str]) -> EnvironmentFile:
        return read_environment_file(path) if is_environment_file(path) else EnvironmentFile((), (), tuple(requirements))

    def lock_inputs(self, settings: Settings, upstream: RunRecord, requirements: List[str]) -> dict:
        self.installer(settings, upstream)  # a bad --micromamba is bad input: refuse it before any work
        conda = upstream.conda or {}
        return {
            "inputs": "composer.conda-lock-inputs/v1",
            "pins": sorted(d.pin for d in upstream.distributions),
            "conda": sorted(f"{p['name']}={p['version']}={p['build']}/{p.get('subdir') or ''}/{p.get('sha256') or p.get('md5') or ''}"
                            for p in conda.get("packages") or []),
            "prefix": conda.get("prefix"), "channels": list(conda.get("channels") or []),
            "python": upstream.python.version, "platform": upstream.platform.python_platform,
            "subdir": subdir_of(upstream.to_json()), "requirements": sorted(requirements),
            "index_url": secretless(settings.index_url), "extra_index_url": secretless(settings.extra_index_url),
        }

    def lock(self, settings: Settings, upstream: RunRecord, requirements: List[str], path: Path,
             run_id: str) -> Tuple[Lock, "CondaLock"]:
        env = self._environment(path, requirements)
        conda_lock = solve_extras(settings, env, upstream.to_json(), run_id)
        return lock_pip_part(settings, env, upstream, conda_lock, run_id), conda_lock

    def cached(self, entry: dict, upstream: RunRecord) -> Optional[Tuple[Lock, "CondaLock"]]:
        try:
            conda_lock = CondaLock(**entry["conda"])
        except (TypeError, KeyError):
            return None
        pins = {**upstream.pins, **{d["name"]: d["version"] for d in python_pins(conda_lock.packages, [])}}
        lock = lock_from_cache(entry, pins)
        if lock is None or entry.get("conda_hash") != _conda_hash(conda_lock):
            return None
        return lock, conda_lock

    def to_cache(self, lock: Lock, extra: Optional[object]) -> dict:
        assert isinstance(extra, CondaLock)
        return {"lock": asdict(lock), "lock_hash": lock_hash(lock), "conda": asdict(extra), "conda_hash": _conda_hash(extra)}

    def spec_parts(self, extra: Optional[object]) -> dict:
        assert isinstance(extra, CondaLock)
        return {"conda": extra.spec_part()}

    def installer(self, settings: Settings, upstream: RunRecord) -> Installer:
        return choose_installer(settings, upstream.conda)

    def render(self, settings: Settings, base: ImageRef, upstream: RunRecord, comp: Composition) -> str:
        conda_lock = comp.extra
        assert isinstance(conda_lock, CondaLock)
        dockerfile, _ = render_conda(
            base_ref=base.pinned(), base_name=upstream.image.human_name, base_digest=base.digest or "",
            python=upstream.python.to_json(), prefix=conda_lock.prefix, installer=self.installer(settings, upstream),
            spec_hash=comp.spec_hash, syntax=settings.dockerfile_syntax,
        )
        return dockerfile

    def prepare_context(self, settings: Settings, context: Path, comp: Composition, upstream: RunRecord) -> None:
        assert isinstance(comp.extra, CondaLock)
        if not comp.lock.added:
            (context / "composer-extras.lock").write_text("", encoding="utf-8")  # the pip step then does nothing
        prepare_conda_context(settings, context, comp.extra, self.installer(settings, upstream), upstream.to_json(),
                              comp.spec_hash)

    def record_section(self, settings: Settings, comp: Composition, upstream: RunRecord) -> Optional[dict]:
        lock = comp.extra
        assert isinstance(lock, CondaLock)
        return {"prefix": lock.prefix, "channels": lock.channels, "requirements": lock.requirements,
                "packages": lock.packages, "added": [p["name"] for p in lock.added],
                "installer": self.installer(settings, upstream).kind}

    def composed_environment(self, comp: Composition, upstream: RunRecord) -> Tuple[List[Distribution], Optional[dict]]:
        lock = comp.extra
        assert isinstance(lock, CondaLock)
        dists = [Distribution(p["name"], p["version"]) for p in comp.lock.packages]
        dists += [Distribution(d["name"], d["version"])
                  for d in python_pins(lock.packages, [d.to_json() for d in upstream.distributions])]
        section = None
        if upstream.conda is not None:
            section = {**upstream.conda, "packages": lock.packages or upstream.conda["packages"], "packages_source": "composed"}
            section["channels"] = sorted({p["channel"] for p in section["packages"] if p.get("channel")})
        return dists, section


def _conda_hash(lock: CondaLock) -> str:
    return sha256_digest(canonical_json(asdict(lock)))


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    _worker()
