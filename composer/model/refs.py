"""Names, tags and image references, checked against the OCI distribution grammar."""

from __future__ import annotations

import hashlib
import ipaddress
import re
import string
from dataclasses import dataclass
from typing import Mapping, Optional

from composer.errors import UsageError

# OCI distribution spec: tags and repository path components.
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}\Z")
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
REPOSITORY_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*\Z")
DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}\Z")
# The registry host part: a domain or IP with an optional port, or a single-label
# host with a port (a compose or Kubernetes service such as registry:5000).
HOST_RE = re.compile(
    r"^(?:(?:localhost|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+|\[[0-9a-fA-F:]+\])(?::[0-9]+)?|[A-Za-z0-9-]+:[0-9]+)\Z"
)
# Tags composer writes for itself in the environments repository.
RESERVED_PREFIXES = ("spec-", "sha256-", "run-", "hist-", "lease-")
# NAME-<12 hex> is the form of composer's unique tags; a name of that form could collide with one.
_UNIQUE_TAG_FORM = re.compile(r"-[0-9a-f]{12}\Z")

# Docker Hub: its names, the endpoint its API answers on, and the key Docker keeps its credentials under.
DOCKER_HUB = "docker.io"
DOCKER_HUB_NAMES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
DOCKER_HUB_ENDPOINT = "registry-1.docker.io"
DOCKER_HUB_CREDENTIALS = "https://index.docker.io/v1/"

# The unique tag is NAME-<spec hash prefix>; keep room for it inside 128 characters.
SPEC_TAG_CHARS = 12
MAX_NAME_LEN = 128 - 1 - SPEC_TAG_CHARS


@dataclass(frozen=True)
class ImageRef:
    """registry/repository plus a tag, a digest, or both (digest wins)."""

    registry: str
    repository: str
    tag: Optional[str] = None
    digest: Optional[str] = None

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str:
        """What goes after /manifests/ in the distribution API."""
        return self.digest or self.tag or "latest"

    def with_digest(self, digest: str) -> "ImageRef":
        return ImageRef(self.registry, self.repository, self.tag, digest)

    def pinned(self) -> str:
        if not self.digest:
            raise ValueError(f"{self} is not pinned to a digest")
        return f"{self.name}@{self.digest}"

    def __str__(self) -> str:
        if self.digest:
            return f"{self.name}@{self.digest}"
        return f"{self.name}:{self.tag or 'latest'}"


def parse_image_ref(text: str) -> ImageRef:
    """Parse REGISTRY/REPO[:TAG][@sha256:...]; the registry part is required.

    Composer talks to registries itself, so Docker Hub is not guessed for a reference without
    a host: an explicit host keeps records unambiguous. Docker Hub's own names are mapped as
    Docker maps them: index.docker.io is docker.io, and docker.io/python is
    docker.io/library/python.
    """
    original = text
    digest = None
    if "@" in text:
        text, digest = text.split("@", 1)
        if not DIGEST_RE.match(digest):
            raise UsageError(f"image reference {original!r} has a malformed digest", "use REPO@sha256:<64 hex digits>")
    tag = None
    slash = text.find("/")
    if slash < 0:
        raise UsageError(f"image reference {original!r} names no registry", "write it as HOST[:PORT]/REPOSITORY[:TAG]")
    last = text.rsplit("/", 1)[-1]
    if ":" in last:
        text, tag = text.rsplit(":", 1)
        if not TAG_RE.match(tag):
            raise UsageError(f"image reference {original!r} has an invalid tag {tag!r}", "tags are [A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
    registry, repository = text.split("/", 1)
    registry = canonical_registry(registry)
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"  # docker.io/python is docker.io/library/python
    if not HOST_RE.match(registry):
        raise UsageError(f"image reference {original!r} names no registry host", "write it as HOST[:PORT]/REPOSITORY[:TAG]")
    if not REPOSITORY_RE.match(repository):
        raise UsageError(
            f"image reference {original!r} has an invalid repository {repository!r}",
            "use lowercase letters, digits and . _ - separators",
        )
    return ImageRef(registry, repository, tag, digest)


def canonical_registry(host: str) -> str:
    """The name a registry is recorded under: Docker Hub's aliases are docker.io."""
    return DOCKER_HUB if host.lower() in DOCKER_HUB_NAMES else host


def registry_endpoint(host: str) -> str:
    """Where a registry's API answers: Docker Hub's is registry-1.docker.io, not docker.io."""
    return DOCKER_HUB_ENDPOINT if canonical_registry(host) == DOCKER_HUB else host


def credential_key(host: str) -> str:
    """The name a registry's credentials are looked up under in the Docker config; the docker
    SDK maps docker.io to Docker Hub's key, https://index.docker.io/v1/."""
    return canonical_registry(host)


def is_loopback(host: str) -> bool:
    """Whether host (a name or an IP, with or without a port) is this machine's loopback."""
    if host.startswith("["):
        name = host[1:host.index("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:
        name = host.rsplit(":", 1)[0]
    else:
        name = host
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_name(name: str) -> str:
    """A composed environment's name becomes a tag, so it must be a valid, short-enough tag."""
    if not name:
        raise UsageError("the environment name is empty", "pass --name NAME")
    if len(name) > MAX_NAME_LEN:
        raise UsageError(f"name {name[:40]!r}... is {len(name)} characters long", f"use at most {MAX_NAME_LEN}")
    if not TAG_RE.match(name):
        raise UsageError(
            f"name {name!r} is not a valid OCI tag",
            "use letters, digits, '_', '.' and '-' (not first), no '/' or spaces",
        )
    if name.startswith(RESERVED_PREFIXES):
        raise UsageError(f"name {name!r} uses a prefix composer reserves", f"pick a name not starting with {', '.join(RESERVED_PREFIXES)}")
    if _UNIQUE_TAG_FORM.search(name):
        raise UsageError(f"name {name!r} ends like one of composer's unique tags (-<12 hex digits>)", "change or drop that suffix")
    return name


def slug(text: str, limit: int = 60) -> str:
    """A tag-safe, human-readable rendering of arbitrary text (not unique by itself)."""
    out = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")
    return (out or "x")[:limit].rstrip("-.") or "x"


def render_name(template: str, values: Mapping[str, str]) -> str:
    """Fill {placeholders} in a name template, e.g. "explainer-{model}-{run_id}"."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise UsageError(f"name template {template!r} is malformed ({exc})", "use {key} placeholders, {{ for a brace") from exc
    missing = [f for f in fields if f not in values]
    if missing:
        raise UsageError(
            f"name template {template!r} uses {{{missing[0]}}} but no value was given",
            f"pass --var {missing[0]}=VALUE (known: {', '.join(sorted(values)) or 'none'})",
        )
    safe = {k: slug(str(v)) for k, v in values.items()}
    return check_name(template.format(**safe))


def run_tag(run_id: str) -> str:
    """Where run R's record lives: readable prefix plus a hash, so distinct runs never collide."""
    h = hashlib.sha256(run_id.encode("utf-8")).hexdigest()[:16]
    return f"run-{slug(run_id, 80)}-{h}"


def referrers_tag(digest: str) -> str:
    """The OCI referrers tag schema, for registries without the referrers API."""
    algo, _, hexpart = digest.partition(":")
    return f"{algo}-{hexpart}"[:128]
