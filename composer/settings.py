"""Settings: command-line flags, then COMPOSER_* environment variables, then composer.toml.

composer.toml holds plain keys at the top level, e.g.

    registry = "registry.example.com/ml"
    builder = "auto"
    insecure_registries = ["registry.lab:5000"]

Credentials never belong here: registry logins come from the Docker config,
index credentials from COMPOSER_INDEX_URL (see README, "Secrets").

Every setting is read here, once, when a command starts (never at import time), and a bad
value is one line and exit 2. Tuning knobs (timeouts, retries, lease timing, compression)
come from the environment only; composer.toml holds the plain keys.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping, Optional

import tomli

from composer.errors import UsageError
from composer.model.refs import HOST_RE, REPOSITORY_RE

BUILDERS = ("auto", "daemonless", "buildctl", "buildx", "docker")
DEFAULT_CA_PATHS = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")


@dataclass
class Settings:
    registry: Optional[str] = None  # HOST[:PORT][/PREFIX]
    builder: str = "auto"
    ca_bundle: Optional[str] = None  # path; "none" disables
    index_url: Optional[str] = None  # may carry credentials: only ever passed as a secret
    extra_index_url: Optional[str] = None
    insecure_registries: list = field(default_factory=list)
    dockerfile_syntax: Optional[str] = None  # e.g. "docker/dockerfile:1.7"; off by default (air-gapped builders)
    buildkit_host: Optional[str] = None
    progress: str = "auto"  # auto | plain | quiet
    micromamba: Optional[str] = None  # host micromamba for conda builds (bind-mounted into the step, never kept)
    # -- tuning, from the environment only -------------------------------------
    registry_attempts: int = 5  # tries per registry call before an error
    registry_backoff: float = 0.5  # seconds before the first retry; doubled for each further one, with jitter
    registry_retry_time: float = 60.0  # seconds after which a registry operation is not retried any more
    build_timeout: int = 3600  # seconds a BuildKit build may take
    uv_timeout: int = 1800  # seconds the daemonless builder's uv install may take
    gzip_level: Optional[int] = None  # daemonless gzip layers; None: the encoder's default (isal 2, zlib 6)
    layer_compression: str = "auto"  # auto (gzip) | gzip | zstd (daemonless, OCI bases)
    layer_encoder: Optional[str] = None  # daemonless gzip layers: isal (default) | zlib (earlier builds' bytes)
    lease_stale: float = 60.0  # seconds without renewal after which a build lease is taken over
    lease_renew: float = 10.0
    lease_wait: float = 3600.0  # seconds a builder waits for another's build of the same spec
    lease_poll: float = 0.5
    # One registry client per host for the life of these settings (one command): its connection
    # pool and bearer tokens are reused instead of every step opening and authenticating anew.
    clients: dict = field(default_factory=dict, repr=False, compare=False)

    # -- derived locations -------------------------------------------------
    def for_one_call(self) -> "Settings":
        """The same settings with registry clients of their own (composer.oci.connect makes one
        per Settings and host), for one API call or one resolution in a long-lived process."""
        return replace(self, clients={})

    @property
    def registry_host(self) -> str:
        return self.require_registry().split("/", 1)[0]

    @property
    def registry_prefix(self) -> str:
        parts = self.require_registry().split("/", 1)
        return parts[1] if len(parts) > 1 else ""

    def repository(self, leaf: str) -> str:
        prefix = self.registry_prefix
        return f"{prefix}/{leaf}" if prefix else leaf

    def require_registry(self) -> str:
        if not self.registry:
            raise UsageError(
                "no registry is configured",
                "pass --registry HOST[:PORT]/PREFIX, set COMPOSER_REGISTRY, or put registry = \"...\" in composer.toml",
            )
        return self.registry

    def ca_bundle_path(self) -> Optional[str]:
        """The CA bundle handed to uv and to build steps (as a secret mount), if any."""
        if self.ca_bundle == "none":
            return None
        if self.ca_bundle:
            return self.ca_bundle
        env = os.environ.get("SSL_CERT_FILE")
        if env and Path(env).is_file():
            return env
        for candidate in DEFAULT_CA_PATHS:
            if Path(candidate).is_file():
                return candidate
        return None


_ENV = {
    "registry": "COMPOSER_REGISTRY",
    "builder": "COMPOSER_BUILDER",
    "ca_bundle": "COMPOSER_CA_BUNDLE",
    "index_url": "COMPOSER_INDEX_URL",
    "extra_index_url": "COMPOSER_EXTRA_INDEX_URL",
    "insecure_registries": "COMPOSER_INSECURE_REGISTRIES",
    "dockerfile_syntax": "COMPOSER_DOCKERFILE_SYNTAX",
    "buildkit_host": "BUILDKIT_HOST",
    "progress": "COMPOSER_PROGRESS",
    "micromamba": "MAMBA_EXE",
}


# name: (environment variable, parse, what a good value looks like)
_TUNING = {
    "registry_attempts": ("COMPOSER_REGISTRY_ATTEMPTS", int, "a whole number >= 1, e.g. 5", 1),
    "registry_backoff": ("COMPOSER_REGISTRY_BACKOFF", float, "seconds, e.g. 0.5", 0),
    "registry_retry_time": ("COMPOSER_REGISTRY_RETRY_TIME", float, "seconds, e.g. 60", 0),
    "build_timeout": ("COMPOSER_BUILD_TIMEOUT", int, "seconds, a whole number >= 1, e.g. 3600", 1),
    "uv_timeout": ("COMPOSER_UV_TIMEOUT", int, "seconds, a whole number >= 1, e.g. 1800", 1),
    "gzip_level": ("COMPOSER_GZIP_LEVEL", int, "0 to 3 with the isal encoder (default 2), 1 to 9 with zlib (default 6)", 0),
    "lease_stale": ("COMPOSER_LEASE_STALE", float, "seconds, e.g. 60", 0),
    "lease_renew": ("COMPOSER_LEASE_RENEW", float, "seconds, e.g. 10", 0),
    "lease_wait": ("COMPOSER_LEASE_WAIT", float, "seconds, e.g. 3600", 0),
    "lease_poll": ("COMPOSER_LEASE_POLL", float, "seconds, e.g. 0.5", 0),
}


def _tuning(env: Mapping[str, str]) -> dict:
    out: dict = {}
    for key, (var, kind, want, low) in _TUNING.items():
        raw = env.get(var)
        if not raw:
            continue
        try:
            value = kind(raw)
        except ValueError:
            value = None
        if value is None or value < low or value != value or (key == "gzip_level" and value > 9):
            raise UsageError(f"{var}={raw!r} is not valid", f"use {want}, or unset it")
        out[key] = value
    compression = env.get("COMPOSER_LAYER_COMPRESSION")
    if compression:
        if compression not in ("auto", "gzip", "zstd"):
            raise UsageError(f"COMPOSER_LAYER_COMPRESSION={compression!r} is not auto, gzip or zstd", "unset it or pick one of those")
        out["layer_compression"] = compression
    encoder = env.get("COMPOSER_LAYER_ENCODER")
    if encoder:
        if encoder not in ("isal", "zlib"):
            raise UsageError(f"COMPOSER_LAYER_ENCODER={encoder!r} is not isal or zlib", "unset it (isal) or pick one of those")
        out["layer_encoder"] = encoder
    return out


def _config_file(explicit: Optional[str], env: Mapping[str, str]) -> Optional[Path]:
    path = explicit or env.get("COMPOSER_CONFIG")
    if path:
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"config file {path} does not exist", "fix --config / COMPOSER_CONFIG or create the file")
        return p
    p = Path("composer.toml")
    return p if p.is_file() else None


def _read_toml(path: Path) -> dict:
    try:
        data = tomli.loads(path.read_text(encoding="utf-8"))
    except (tomli.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} is not valid TOML ({exc})", "fix the file or point --config elsewhere") from exc
    known = {f.name for f in fields(Settings)} - set(_TUNING) - {"layer_compression", "layer_encoder", "clients"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UsageError(f"{path}: unknown key {unknown[0]!r}", f"known keys: {', '.join(sorted(known))}")
    for key, value in data.items():
        if key == "insecure_registries":
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
            want = "a list of strings"
        else:
            ok, want = isinstance(value, str), "a string"
        if not ok:
            raise UsageError(f"{path}: {key} must be {want}, not {type(value).__name__}", f'e.g. {key} = {_EXAMPLE.get(key, chr(34) + "..." + chr(34))}')
    return data


_EXAMPLE = {"insecure_registries": '["registry.lab:5000"]', "registry": '"registry.example.com/ml"'}


def load_settings(
    flags: Optional[Mapping[str, Any]] = None,
    env: Optional[Mapping[str, str]] = None,
    config_path: Optional[str] = None,
) -> Settings:
    env = os.environ if env is None else env
    merged: dict = {}
    path = _config_file(config_path, env)
    if path:
        merged.update(_read_toml(path))
    for key, var in _ENV.items():
        if env.get(var):
            merged[key] = env[var]
    merged.update(_tuning(env))
    for key, value in (flags or {}).items():
        if value is not None:
            merged[key] = value
    if isinstance(merged.get("insecure_registries"), str):
        merged["insecure_registries"] = [h.strip() for h in merged["insecure_registries"].split(",") if h.strip()]
    settings = Settings(**merged)
    validate(settings)
    return settings


def validate(s: Settings) -> None:
    if s.builder not in BUILDERS:
        raise UsageError(f"unknown builder {s.builder!r}", f"choose one of {', '.join(BUILDERS)}")
    if s.progress not in ("auto", "plain", "quiet"):
        raise UsageError(f"unknown progress mode {s.progress!r}", "choose auto, plain or quiet")
    if s.registry:
        host, _, prefix = s.registry.partition("/")
        if not HOST_RE.match(host) or (prefix and not REPOSITORY_RE.match(prefix)):
            raise UsageError(
                f"registry {s.registry!r} is not HOST[:PORT][/PREFIX]",
                "e.g. --registry 127.0.0.1:5000/ml (lowercase prefix)",
            )
    if s.ca_bundle and s.ca_bundle != "none" and not Path(s.ca_bundle).is_file():
        raise UsageError(f"CA bundle {s.ca_bundle} does not exist", "fix COMPOSER_CA_BUNDLE / ca_bundle, or set it to 'none'")
