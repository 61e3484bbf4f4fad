"""composer/dockerfile.py: rendering the pip template."""

from __future__ import annotations

import re

import pytest

from composer import __version__
from composer.dockerfile import fill, load_template, render_pip
from composer.errors import UsageError

BASE_DIGEST = "sha256:" + "a" * 64
SPEC = "sha256:" + "b" * 64
BASE_REF = f"127.0.0.1:5000/models/model-a@{BASE_DIGEST}"


def render(python=None, syntax=None, base_ref=BASE_REF, base_name="127.0.0.1:5000/models/model-a:attrs23"):
    return render_pip(
        base_ref=base_ref, base_name=base_name, base_digest=BASE_DIGEST,
        python=python or {"executable": "/usr/local/bin/python3", "version": "3.11.7"},
        spec_hash=SPEC, syntax=syntax,
    )


def test_template_id():
    _, template = load_template("pip")
    assert template == "pip/2"
    assert render()[1] == "pip/2"


def test_without_syntax_first_instruction_is_from_after_header_comments():
    text, _ = render()
    lines = text.splitlines()
    assert lines[0] == "# composer-template: pip/2"
    assert not any(line.startswith("# syntax=") for line in lines)
    first = next(line for line in lines if line.strip() and not line.startswith("#"))
    assert first == f"FROM {BASE_REF}"


def test_with_syntax_it_is_the_first_line():
    text, _ = render(syntax="docker/dockerfile:1.7")
    lines = text.splitlines()
    assert lines[0] == "# syntax=docker/dockerfile:1.7"
    assert lines[1] == "# composer-template: pip/2"


@pytest.mark.parametrize("syntax", ["docker/dockerfile:1.7\nRUN evil", "x y", "$(id)", "a;b"])
def test_bad_syntax_is_refused(syntax):
    with pytest.raises(UsageError, match="not an image reference"):
        render(syntax=syntax)


@pytest.mark.parametrize("base_ref", ["127.0.0.1:5000/models/model-a:attrs23", "127.0.0.1:5000/models/model-a"])
def test_refuses_a_base_not_pinned_by_digest(base_ref):
    with pytest.raises(ValueError, match="pinned by digest"):
        render(base_ref=base_ref)


def test_python_path_is_shell_quoted():
    text, _ = render(python={"executable": "/opt/my venv/bin/python; rm -rf /", "version": "3.11"})
    assert "--python '/opt/my venv/bin/python; rm -rf /' --offline" in text


def test_plain_python_path_is_left_as_is():
    assert "--python /usr/local/bin/python3 --offline" in render()[0]


def test_break_system_packages_only_when_externally_managed():
    managed = render(python={"executable": "/usr/bin/python3", "version": "3.11", "externally_managed": True})[0]
    plain = render(python={"executable": "/usr/bin/python3", "version": "3.11", "externally_managed": False})[0]
    assert "--require-hashes --break-system-packages" in managed
    assert "--break-system-packages" not in plain
    assert "--break-system-packages" not in render()[0]


def test_labels_and_env():
    text, _ = render(base_name='127.0.0.1:5000/models/a:"odd"\\tag')
    assert f"ENV COMPOSER_SPEC_HASH={SPEC}" in text
    assert 'org.opencontainers.image.base.name="127.0.0.1:5000/models/a:\\"odd\\"\\\\tag"' in text
    assert f'org.opencontainers.image.base.digest="{BASE_DIGEST}"' in text
    assert f'dev.composer.spec-hash="{SPEC}"' in text
    assert 'dev.composer.template="pip/2"' in text
    assert f'dev.composer.version="{__version__}"' in text


def test_all_placeholders_are_filled_and_shell_syntax_survives():
    text, _ = render()
    assert re.search(r"\$\{[a-z_]+\}", text) is None
    assert "--no-index --find-links /tmp/composer/dists" in text


def test_nothing_secret_looking_is_rendered():
    text, _ = render(syntax="docker/dockerfile:1.7")
    assert "ca-certificates" not in text
    assert "://" not in text  # no index URL, no credentials
    assert "@" not in text.replace(f"@{BASE_DIGEST}", "")  # no user@host
    # The step runs the upstream's interpreter: no secret, no shared cache is mounted into it.
    assert "type=secret" not in text and "type=cache" not in text and "/run/secrets" not in text
    assert "--mount=type=tmpfs,target=/tmp/composer/uv-cache" in text


BAD_VALUES = [
    "/usr/bin/python3\nFROM 127.0.0.1:5000/x@sha256:" + "c" * 64,
    "/usr/bin/python3\rRUN id", "/usr/bin/py\x00thon", "/usr/bin/python3\u2028RUN id", "/usr/bin/python3\x85",
]


@pytest.mark.parametrize("value", BAD_VALUES)
def test_no_value_can_start_an_instruction(value):
    from composer.errors import VerificationError

    with pytest.raises(VerificationError, match="cannot be written into a Dockerfile"):
        render(python={"executable": value, "version": "3.11"})
    with pytest.raises(VerificationError, match="cannot be written into a Dockerfile"):
        render(base_name="127.0.0.1:5000/models/a:" + value)


def test_label_values_escape_substitution():
    text, _ = render(base_name="127.0.0.1:5000/models/a:${COMPOSER_SPEC_HASH}$HOME")
    assert 'base.name="127.0.0.1:5000/models/a:\\${COMPOSER_SPEC_HASH}\\$HOME"' in text


def test_render_is_deterministic():
    assert render() == render()


# -- fill ----------------------------------------------------------------------------------
def test_fill_leaves_shell_syntax_untouched():
    text = 'A=${a} B="$(cat x)" C=$VAR D=${UPPER} E=${Mixed} F=$$ G=${a}'
    assert fill(text, {"a": "1"}) == 'A=1 B="$(cat x)" C=$VAR D=${UPPER} E=${Mixed} F=$$ G=1'


def test_fill_unknown_placeholder_is_a_key_error():
    with pytest.raises(KeyError, match="nope"):
        fill("x ${nope} y", {"a": "1"})


def test_fill_does_not_rescan_values():
    assert fill("${a}", {"a": "${b}", "b": "no"}) == "${b}"
    assert fill("${a}", {"a": r"\1 \g<0>"}) == r"\1 \g<0>"
