"""Rendering Dockerfiles from the templates in dockerfiles/ (one per kind of environment)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from composer.version import __version__
from composer.errors import UsageError, VerificationError

TEMPLATE_HEADER = re.compile(r"^(?:\$\{syntax_line\})?# composer-template: (\S+)$", re.M)


def templates_dir() -> Path:
    # A source checkout has dockerfiles/ beside the package; a wheel ships it as composer/dockerfiles.
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "dockerfiles", here / "dockerfiles"):
        if candidate.is_dir():
            return candidate
    import importlib.resources

    return Path(str(importlib.resources.files("composer.dockerfiles")))


def load_template(kind: str) -> "tuple[str, str]":
    """(template text, template id such as 'pip/1'); the id enters the spec hash."""
    path = templates_dir() / f"{kind}.Dockerfile"
    text = path.read_text(encoding="utf-8")
    m = TEMPLATE_HEADER.search(text)
    if not m:
        raise RuntimeError(f"{path} has no '# composer-template: KIND/VERSION' header")
    return text, m.group(1)


# A Dockerfile instruction ends at a newline (BuildKit's parser splits on \n; \r and the
# Unicode line breaks are refused too), whatever the shell would make of the quoting.
_LINE_BREAKING = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


def checked_value(value: str, what: str) -> str:
    """A value that is about to be written into a Dockerfile: one line, or a VerificationError.
    Records are validated when read (composer/model/records.py); this is the last line."""
    if not isinstance(value, str) or _LINE_BREAKING.search(value):
        raise VerificationError(f"{what} {str(value)[:60]!r} cannot be written into a Dockerfile (it spans lines)",
                                "re-record the upstream run; check who can push to the registry")
    return value


def shell_word(value: str, what: str) -> str:
    """One shell word inside a RUN instruction (shell form): one line, shell-quoted."""
    return shlex.quote(checked_value(value, what))


def label_value(value: str, what: str = "a label value") -> str:
    """The inside of a double-quoted LABEL value: one line; backslash, quote and $ escaped
    (the Dockerfile substitutes $VAR in LABEL)."""
    return checked_value(value, what).replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")




def render_pip(*, base_ref: str, base_name: str, base_digest: str, python: dict, spec_hash: str, syntax: str | None) -> "tuple[str, str]":
    """The Dockerfile that layers the locked extras on the upstream image, and its template id."""
    if "@sha256:" not in base_ref:
        raise ValueError("the base must be pinned by digest")  # never a tag: the build must be reproducible
    checked_value(base_ref, "the upstream image")
    checked_value(spec_hash, "the spec hash")
    text, template = load_template("pip")
    if syntax and not re.match(r"^[A-Za-z0-9._/:@-]+$", syntax):
        raise UsageError(f"dockerfile syntax {syntax!r} is not an image reference", "e.g. docker/dockerfile:1.7")
    flags = "--break-system-packages" if python.get("externally_managed") else ""
    values = {
        "syntax_line": f"# syntax={syntax}\n" if syntax else "",
        "base_ref": base_ref,
        "base_name": label_value(base_name, "the upstream image's name"),
        "base_digest": checked_value(base_digest, "the upstream image's digest"),
        "python": shell_word(python["executable"], "the upstream's python executable"),
        "site": shell_word(site_dir(python), "the upstream's site-packages"),
        "install_flags": flags,
        "spec_hash": spec_hash,
        "template": template,
        "composer_version": __version__,
    }
    return fill(text, values), template


def site_dir(python: dict) -> str:
    """Where the install step looks for what uv just wrote: site-packages, else the prefix."""
    return python.get("site_packages") or python.get("prefix") or "/"


_PLACEHOLDER = re.compile(r"\$\{([a-z_]+)\}")


def fill(text: str, values: dict) -> str:
    """Replace ${lower_case} placeholders; shell syntax ($VAR, $(...), ${UPPER}) passes through."""

    def one(m: "re.Match[str]") -> str:
        if m.group(1) not in values:
            raise KeyError(f"template placeholder ${{{m.group(1)}}} has no value")
        return values[m.group(1)]

    return _PLACEHOLDER.sub(one, text)
