"""composer/cli.py: bad input ends in one stderr line and the documented exit code."""

from __future__ import annotations

import os

import pytest

from composer import __version__
from composer.cli import main


@pytest.fixture(autouse=True)
def _clean_environment(tmp_path, monkeypatch):
    """No ambient settings: no COMPOSER_* variables, no ./composer.toml."""
    for var in list(os.environ):
        if var.startswith("COMPOSER_") or var == "BUILDKIT_HOST":
            monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)


def one_error_line(capsys) -> str:
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("composer: error: ")
    assert out == ""
    return lines[0]


def test_build_without_required_args(capsys):
    assert main(["build"]) == 2
    line = one_error_line(capsys)
    assert "--upstream-run" in line and "--extra" in line


def test_no_command(capsys):
    assert main([]) == 2
    assert "no command given" in one_error_line(capsys)


def test_unknown_command(capsys):
    assert main(["frobnicate"]) == 2
    one_error_line(capsys)


def test_bad_builder_choice(capsys):
    assert main(["ref", "x", "--builder", "kaniko"]) == 2
    one_error_line(capsys)


def test_ref_with_bad_name_fails_before_any_registry_access(capsys, monkeypatch):
    # A registry where nothing listens: reaching it would be exit 5, not 2.
    monkeypatch.setenv("COMPOSER_REGISTRY", "127.0.0.1:1")
    monkeypatch.setenv("COMPOSER_REGISTRY_ATTEMPTS", "1")
    assert main(["ref", "Bad Name"]) == 2
    assert "'Bad Name' is not a valid OCI tag" in one_error_line(capsys)


def test_ref_with_trailing_newline_in_name_fails_before_registry_access(capsys, monkeypatch):
    monkeypatch.setenv("COMPOSER_REGISTRY", "127.0.0.1:1")
    monkeypatch.setenv("COMPOSER_REGISTRY_ATTEMPTS", "1")
    assert main(["ref", "abc\n"]) == 2


def test_ref_with_bad_name_and_no_registry(capsys):
    assert main(["ref", "Bad Name"]) == 2
    one_error_line(capsys)


def test_ref_without_registry(capsys):
    assert main(["ref", "somename"]) == 2
    assert "no registry is configured" in one_error_line(capsys)


def test_bad_registry_flag(capsys):
    assert main(["ref", "somename", "--registry", "http://x"]) == 2
    one_error_line(capsys)


def test_bad_var(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("COMPOSER_REGISTRY", "127.0.0.1:1")
    extras = tmp_path / "extras.txt"
    extras.write_text("shap\n")
    assert main(["build", "--upstream-run", "T/1", "--extra", str(extras), "--var", "no-equals"]) == 2
    assert "KEY=VALUE" in one_error_line(capsys)


def test_unreachable_registry_is_exit_5(capsys, monkeypatch):
    monkeypatch.setenv("COMPOSER_REGISTRY", "127.0.0.1:1")
    monkeypatch.setenv("COMPOSER_REGISTRY_ATTEMPTS", "1")
    assert main(["ref", "somename"]) == 5
    line = one_error_line(capsys)
    assert "127.0.0.1:1" in line


def test_json_error_output(capsys):
    import json

    assert main(["ref", "Bad Name", "--json"]) == 2
    out, err = capsys.readouterr()
    assert len(err.splitlines()) == 1
    body = json.loads(out)
    assert body["exit_code"] == 2 and "\n" not in body["error"]


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"composer {__version__}"


def test_lineage_formats_are_the_renderers():
    """The parser lists the formats without importing the renderers (a command imports what it runs)."""
    from composer import cli
    from composer.catalog import compare

    assert list(cli.LINEAGE_FORMATS) == sorted(compare.RENDERERS)
