"""The two record formats composer writes, as typed values with one strict reader each.

A *run record* (composer.run-record/v1) says what environment run R ran in:
the image digest, its python, its platform and the distributions installed.
It lives at REGISTRY/PREFIX/runs:run-<slug>-<hash of R>, so any machine finds it.

A *build record* (composer.record/v1), the "digest manifest", says what one
composition is: image digest, base digest, upstream run and record digest,
the full lock, the spec hash, the builder and the Dockerfile. It is an OCI
artifact whose subject is the composed image (composer/oci/artifacts.py).

Records come from a registry many people can write to, and run records from
probing images other teams made: `from_json` is the one place where a record
is validated, field by field, before any value reaches a command line, a
Dockerfile or a path. A bad field is a VerificationError naming it (exit 7).
`to_json` gives back the documented JSON (README, "Record format").
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Mapping, Optional, Tuple

from packaging.version import InvalidVersion, Version

from composer.errors import VerificationError
from composer.model.refs import DIGEST_RE, HOST_RE, REPOSITORY_RE, TAG_RE

RUN_RECORD_SCHEMA = "composer.run-record/v1"
BUILD_RECORD_SCHEMA = "composer.record/v1"
RUN_RECORD_TYPE = "application/vnd.composer.run-record.v1+json"
BUILD_RECORD_TYPE = "application/vnd.composer.record.v1+json"

ANNOTATION_NAME = "dev.composer.name"
ANNOTATION_SPEC = "dev.composer.spec-hash"
ANNOTATION_RUN = "dev.composer.run"
ANNOTATION_CREATED = "org.opencontainers.image.created"

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PEP503 = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\Z")
_PY_VERSION = re.compile(r"^\d+\.\d+(?:\.\d+)?(?:[a-z]+\d*)?\+?\Z")
_ARTIFACT_HASH = re.compile(r"^(?:sha256|sha384|sha512|md5):[a-f0-9]+\Z")


def utc_now() -> str:
    """RFC 3339 UTC with microseconds: a name's newest record is the one created last, and two
    records of one name can be written within the same second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


# -- reading untrusted JSON, one field at a time -----------------------------------------------
class _Fields:
    """A JSON object being read strictly; errors name the record and the field's path."""

    def __init__(self, data: Any, what: str, path: str = ""):
        if not isinstance(data, dict):
            raise VerificationError(f"{what}: {path or 'the record'} is not a JSON object", _HINT)
        self.data, self.what, self.path = data, what, path

    def _where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def bad(self, key: str, why: str) -> VerificationError:
        return VerificationError(f"{self.what}: field {self._where(key)} {why}", _HINT)

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def text(self, key: str, *, optional: bool = False, pattern: "Optional[re.Pattern[str]]" = None,
             multiline: bool = False, limit: int = 4096) -> Optional[str]:
        value = self.data.get(key)
        if value is None:
            if optional:
                return None
            raise self.bad(key, "is missing")
        if not isinstance(value, str):
            raise self.bad(key, f"is {type(value).__name__}, not a string")
        if len(value) > limit:
            raise self.bad(key, f"is longer than {limit} characters")
        if _CONTROL.search(value.replace("\n", "").replace("\t", "") if multiline else value):
            raise self.bad(key, "contains control characters")
        if pattern is not None and not pattern.match(value):
            raise self.bad(key, f"is not valid ({value[:80]!r})")
        return value

    def flag(self, key: str, default: bool = False) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.bad(key, "is not true or false")
        return value

    def obj(self, key: str, *, optional: bool = False) -> Optional["_Fields"]:
        value = self.data.get(key)
        if value is None and optional:
            return None
        return _Fields(value, self.what, self._where(key))

    def items(self, key: str, *, optional: bool = False) -> List[Any]:
        value = self.data.get(key)
        if value is None and optional:
            return []
        if not isinstance(value, list):
            raise self.bad(key, "is not a list")
        return value


_HINT = "the record is malformed or was tampered with; re-record or rebuild it, and check who can push to the registry"


def checked_path(f: _Fields, key: str, *, optional: bool = False) -> Optional[str]:
    """An absolute POSIX path inside an image: no control characters, no '..' parts."""
    value = f.text(key, optional=optional)
    if value is None:
        return None
    if not value.startswith("/") or "/../" in value + "/" or "//" in value:
        raise f.bad(key, f"is not an absolute, normalised path ({value[:80]!r})")
    return value


def checked_version(f: _Fields, key: str) -> str:
    value = f.text(key, limit=128)
    try:
        Version(value or "")
    except InvalidVersion:
        raise f.bad(key, f"is not a PEP 440 version ({(value or '')[:40]!r})") from None
    return value or ""


def _image_name(f: _Fields, key: str) -> str:
    value = f.text(key) or ""
    host, _, repo = value.partition("/")
    if not HOST_RE.match(host) or not REPOSITORY_RE.match(repo):
        raise f.bad(key, f"is not HOST/REPOSITORY ({value[:80]!r})")
    return value


# -- the parts both records share --------------------------------------------------------------
@dataclass(frozen=True)
class Image:
    repository: str  # HOST/REPOSITORY
    digest: str
    tag: Optional[str] = None  # for humans only

    @classmethod
    def read(cls, f: _Fields) -> "Image":
        return cls(_image_name(f, "repository"), f.text("digest", pattern=DIGEST_RE) or "",
                   f.text("tag", optional=True, pattern=TAG_RE))

    def to_json(self) -> dict:
        return {"repository": self.repository, "digest": self.digest, "tag": self.tag}

    @property
    def pinned(self) -> str:
        return f"{self.repository}@{self.digest}"

    @property
    def human_name(self) -> str:
        return self.repository + (f":{self.tag}" if self.tag else "")


@dataclass(frozen=True)
class Python:
    executable: str
    version: str
    implementation: str = "cpython"
    prefix: Optional[str] = None
    kind: str = "system"  # system | venv | conda
    site_packages: Optional[str] = None
    externally_managed: bool = False

    @classmethod
    def read(cls, f: _Fields) -> "Python":
        kind = f.text("kind", optional=True) or "system"
        if kind not in ("system", "venv", "conda"):
            raise f.bad("kind", f"is {kind[:20]!r}, not system, venv or conda")
        return cls(
            executable=checked_path(f, "executable") or "",
            version=f.text("version", pattern=_PY_VERSION) or "",
            implementation=f.text("implementation", optional=True, pattern=re.compile(r"^[a-z0-9_]+\Z")) or "cpython",
            prefix=checked_path(f, "prefix", optional=True),
            kind=kind,
            site_packages=checked_path(f, "site_packages", optional=True),
            externally_managed=f.flag("externally_managed"),
        )

    def to_json(self) -> dict:
        return {"executable": self.executable, "version": self.version, "implementation": self.implementation,
                "prefix": self.prefix, "kind": self.kind, "site_packages": self.site_packages,
                "externally_managed": self.externally_managed}


_WORD = re.compile(r"^[A-Za-z0-9_.+-]*\Z")


@dataclass(frozen=True)
class Platform:
    os: str = "linux"
    architecture: str = ""
    variant: Optional[str] = None
    libc: Optional[str] = None
    libc_version: Optional[str] = None
    python_platform: str = ""  # what uv locks for, e.g. x86_64-manylinux_2_36

    @classmethod
    def read(cls, f: _Fields) -> "Platform":
        return cls(*(f.text(k, optional=True, pattern=_WORD, limit=64) for k in
                     ("os", "architecture", "variant", "libc", "libc_version", "python_platform")))

    def to_json(self) -> dict:
        return {"os": self.os or "linux", "architecture": self.architecture or "", "variant": self.variant, "libc": self.libc,
                "libc_version": self.libc_version, "python_platform": self.python_platform or ""}


@dataclass(frozen=True)
class Distribution:
    name: str  # PEP 503 normalised
    version: str  # PEP 440

    @classmethod
    def read(cls, f: _Fields) -> "Distribution":
        return cls(f.text("name", pattern=_PEP503, limit=200) or "", checked_version(f, "version"))

    def to_json(self) -> dict:
        return {"name": self.name, "version": self.version}

    @property
    def pin(self) -> str:
        return f"{self.name}=={self.version}"


@dataclass(frozen=True)
class LockedPackage:
    name: str
    version: str
    hashes: Tuple[str, ...] = ()

    @classmethod
    def read(cls, f: _Fields) -> "LockedPackage":
        hashes = f.items("hashes", optional=True)
        for h in hashes:
            if not isinstance(h, str) or not _ARTIFACT_HASH.match(h):
                raise f.bad("hashes", f"holds {str(h)[:80]!r}, not ALGORITHM:HEX")
        return cls(f.text("name", pattern=_PEP503, limit=200) or "", checked_version(f, "version"), tuple(sorted(hashes)))

    def to_json(self) -> dict:
        return {"name": self.name, "version": self.version, "hashes": list(self.hashes)}


def _list(f: _Fields, key: str, reader, *, optional: bool = False) -> list:
    return [reader(_Fields(item, f.what, f"{f._where(key)}[{i}]")) for i, item in enumerate(f.items(key, optional=optional))]


def _strings(f: _Fields, key: str, *, optional: bool = False, limit: int = 1000) -> Tuple[str, ...]:
    out = []
    for item in f.items(key, optional=optional):
        if not isinstance(item, str) or _CONTROL.search(item) or len(item) > limit:
            raise f.bad(key, f"holds {str(item)[:80]!r}, not a one-line string")
        out.append(item)
    return tuple(out)


# -- conda sections (composer/kinds/conda.py reads and writes them) -----------------------------
_CONDA_NAME = re.compile(r"^[a-z0-9_][a-z0-9_.+-]*\Z")
_CONDA_KEYS = ("name", "version", "build", "build_number", "channel", "subdir", "url", "fn", "sha256", "md5",
               "depends", "constrains", "noarch")


def read_conda_package(f: _Fields) -> dict:
    """One conda package record, every string field checked; kept as a dict (its shape is conda's)."""
    out: Dict[str, Any] = {}
    for key in _CONDA_KEYS:
        if key in ("depends", "constrains"):
            out[key] = list(_strings(f, key, optional=True))
        elif key == "build_number":
            value = f.data.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise f.bad(key, "is not an integer")
            out[key] = value
        else:
            pattern = {"name": _CONDA_NAME, "sha256": re.compile(r"^[a-f0-9]{64}\Z"),
                       "md5": re.compile(r"^[a-f0-9]{32}\Z")}.get(key)
            out[key] = f.text(key, optional=key != "name", pattern=pattern, limit=2048)
    return out


def read_conda_section(f: Optional[_Fields]) -> Optional[dict]:
    if f is None:
        return None
    out = dict(f.data)
    out["prefix"] = checked_path(f, "prefix")
    out["packages"] = _list(f, "packages", read_conda_package)
    out["channels"] = list(_strings(f, "channels", optional=True))
    if "micromamba" in f.data:
        out["micromamba"] = checked_path(f, "micromamba", optional=True)
    for key in ("packages_source", "installer"):
        if key in f.data:
            out[key] = f.text(key, optional=True, pattern=re.compile(r"^[a-z-]+\Z"))
    if "requirements" in f.data:
        out["requirements"] = list(_strings(f, "requirements", optional=True))
    if "added" in f.data:
        out["added"] = list(_strings(f, "added", optional=True))
    return out


# -- run records ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunRecord:
    """What environment a run ran in."""

    run: str
    image: Image
    python: Python
    platform: Platform
    distributions: Tuple[Distribution, ...]
    distributions_source: str  # image | requirements | composed
    created: str
    composer_version: str
    composed: Optional[Dict[str, str]] = None  # composed environments: name, spec_hash
    conda: Optional[dict] = None  # a conda prefix: prefix, channels, packages, micromamba, packages_source

    @classmethod
    def from_json(cls, data: Any, what: str = "run record") -> "RunRecord":
        f = _Fields(data, what)
        if f.data.get("schema") != RUN_RECORD_SCHEMA:
            raise f.bad("schema", f"is {str(f.data.get('schema'))[:40]!r}, not {RUN_RECORD_SCHEMA}")
        source = f.text("distributions_source", optional=True) or "image"
        if source not in ("image", "requirements", "composed"):
            raise f.bad("distributions_source", "is not image, requirements or composed")
        composed = None
        c = f.obj("composed", optional=True)
        if c is not None:
            composed = {"name": c.text("name", pattern=TAG_RE) or "", "spec_hash": c.text("spec_hash", pattern=DIGEST_RE) or ""}
        return cls(
            run=f.text("run", limit=512) or "",
            image=Image.read(f.obj("image")),  # type: ignore[arg-type]
            python=Python.read(f.obj("python")),  # type: ignore[arg-type]
            platform=Platform.read(f.obj("platform")),  # type: ignore[arg-type]
            distributions=tuple(_list(f, "distributions", Distribution.read)),
            distributions_source=source,
            created=f.text("created", optional=True, limit=64) or "",
            composer_version=f.text("composer_version", optional=True, limit=64) or "",
            composed=composed,
            conda=read_conda_section(f.obj("conda", optional=True)),
        )

    def to_json(self) -> dict:
        out = {
            "schema": RUN_RECORD_SCHEMA, "run": self.run, "image": self.image.to_json(), "python": self.python.to_json(),
            "platform": self.platform.to_json(), "distributions": [d.to_json() for d in self.distributions],
            "distributions_source": self.distributions_source, "composer_version": self.composer_version,
            "created": self.created,
        }
        if self.composed is not None:
            out["composed"] = dict(self.composed)
        if self.conda is not None:
            out["conda"] = self.conda
        return out

    @property
    def pins(self) -> Dict[str, str]:
        return {d.name: d.version for d in self.distributions}

    def with_image(self, image: Image) -> "RunRecord":
        return replace(self, image=image)

    def with_distributions(self, extra: "List[Distribution]") -> "RunRecord":
        dists = {d.name: d for d in self.distributions}
        dists.update({d.name: d for d in extra})
        return replace(self, distributions=tuple(sorted(dists.values(), key=lambda d: d.name)))


# -- the layer's encoding (daemonless builds) -------------------------------------------------------
_LAYER_WORD = re.compile(r"^[a-z][a-z0-9._-]{0,31}\Z")


def read_layer_section(f: Optional[_Fields]) -> Optional[dict]:
    """The build record's optional `layer` section: how the daemonless builder compressed the
    layer ({compression, encoder, version, level, block}), so a rebuild can ask for the same
    bytes. Absent in records of BuildKit builds and of builds before it existed."""
    if f is None:
        return None
    out = {"compression": f.text("compression", pattern=_LAYER_WORD), "encoder": f.text("encoder", pattern=_LAYER_WORD),
           "version": f.text("version", pattern=re.compile(r"^[0-9A-Za-z.+-]{1,64}\Z"))}
    for key in ("level", "block"):
        value = f.data.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= (1 << 30):
            raise f.bad(key, "is not a whole number from 0 to 2^30")
        out[key] = value
    return out


# -- build records -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Lock:
    requirements: Tuple[str, ...]  # the extras as asked for (normalised)
    packages: Tuple[LockedPackage, ...]  # the full resolution
    added: Tuple[str, ...]  # names of what the new layer installs

    @classmethod
    def read(cls, f: _Fields) -> "Lock":
        return cls(_strings(f, "requirements"), tuple(_list(f, "packages", LockedPackage.read)),
                   tuple(_strings(f, "added", optional=True)))

    def to_json(self) -> dict:
        return {"requirements": list(self.requirements), "packages": [p.to_json() for p in self.packages],
                "added": list(self.added)}


@dataclass(frozen=True)
class BuildRecord:
    """What one composition is (content) and how this name came to it (provenance)."""

    name: str
    image: Image
    base: Image  # the upstream image it starts from; tag: the one the upstream was recorded with
    upstream_run: str
    upstream_record: str  # digest of the run record used
    python: Python
    platform: Platform
    lock: Lock
    spec_hash: str
    spec_version: str
    builder: str
    dockerfile: str
    created: str
    composer_version: str
    inputs: Dict[str, Any] = field(default_factory=dict)  # provenance for `rebuild`: extra (path)
    conda: Optional[dict] = None
    layer: Optional[dict] = None  # daemonless: the layer's encoding (read_layer_section)

    @classmethod
    def from_json(cls, data: Any, what: str = "build record") -> "BuildRecord":
        f = _Fields(data, what)
        if f.data.get("schema") != BUILD_RECORD_SCHEMA:
            raise f.bad("schema", f"is {str(f.data.get('schema'))[:40]!r}, not {BUILD_RECORD_SCHEMA}")
        up = f.obj("upstream")
        assert up is not None
        base = f.obj("base")
        inputs = f.obj("inputs", optional=True)
        return cls(
            name=f.text("name", pattern=TAG_RE) or "",
            image=Image.read(f.obj("image")),  # type: ignore[arg-type]
            base=Image.read(base),  # type: ignore[arg-type]
            upstream_run=up.text("run", limit=512) or "",
            upstream_record=up.text("record", pattern=DIGEST_RE) or "",
            python=Python.read(f.obj("python")),  # type: ignore[arg-type]
            platform=Platform.read(f.obj("platform")),  # type: ignore[arg-type]
            lock=Lock.read(f.obj("lock")),  # type: ignore[arg-type]
            spec_hash=f.text("spec_hash", pattern=DIGEST_RE) or "",
            spec_version=f.text("spec_version", limit=64) or "",
            builder=f.text("builder", pattern=re.compile(r"^[a-z]+\Z")) or "",
            dockerfile=f.text("dockerfile", multiline=True, limit=1 << 20) or "",
            created=f.text("created", optional=True, limit=64) or "",
            composer_version=f.text("composer_version", optional=True, limit=64) or "",
            inputs={"extra": inputs.text("extra", optional=True)} if inputs is not None else {},
            conda=read_conda_section(f.obj("conda", optional=True)),
            layer=read_layer_section(f.obj("layer", optional=True)),
        )

    def to_json(self) -> dict:
        out = {
            "schema": BUILD_RECORD_SCHEMA, "name": self.name, "image": self.image.to_json(),
            "base": self.base.to_json(), "upstream": {"run": self.upstream_run, "record": self.upstream_record},
            "inputs": dict(self.inputs), "python": self.python.to_json(), "platform": self.platform.to_json(),
            "lock": self.lock.to_json(), "spec_hash": self.spec_hash, "spec_version": self.spec_version,
            "builder": self.builder, "dockerfile": self.dockerfile, "composer_version": self.composer_version,
            "created": self.created,
        }
        if self.conda is not None:
            out["conda"] = self.conda
        if self.layer is not None:
            out["layer"] = dict(self.layer)
        return out

    def renamed(self, name: str, tag: str) -> "BuildRecord":
        return replace(self, name=name, image=replace(self.image, tag=tag), created=utc_now())


def annotations_for(record: "BuildRecord") -> Mapping[str, str]:
    return {ANNOTATION_NAME: record.name, ANNOTATION_SPEC: record.spec_hash, ANNOTATION_CREATED: record.created}
