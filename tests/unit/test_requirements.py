"""composer/requirements.py: strict reading of extras files and upstream pin lists."""

from __future__ import annotations

from pathlib import Path

import pytest

from composer.errors import UsageError
from composer.kinds import read_extras
from composer.requirements import MAX_EXTRAS_BYTES, canonical_name, parse_pinned


def write(tmp_path: Path, name: str, content) -> Path:
    p = tmp_path / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content, encoding="utf-8")
    return p


def usage_error(func, path: Path) -> UsageError:
    with pytest.raises(UsageError) as info:
        func(path)
    err = info.value
    assert "\n" not in err.one_line()
    assert err.exit_code == 2
    return err


# -- read_extras: requirements.txt -------------------------------------------------------
def test_requirements_txt_comments_continuations_blanks(tmp_path):
    p = write(tmp_path, "extras.txt", (
        "# the explainer's extras\n"
        "\n"
        "shap>=0.45   # explanations\n"
        "cattrs>=23.1,\\\n"
        "    <24.2\n"
        "   \n"
        "iniconfig==2.0.0\n"
        "pandas[performance] >= 2.2 ; python_version >= '3.9'\n"
    ))
    assert read_extras(p) == [
        "cattrs<24.2,>=23.1",
        "iniconfig==2.0.0",
        'pandas[performance]>=2.2; python_version >= "3.9"',
        "shap>=0.45",
    ]


def test_requirements_txt_sorted_and_deduplicated(tmp_path):
    p = write(tmp_path, "extras.txt", "zeta\nalpha>=1\nzeta\nalpha >= 1\n")
    assert read_extras(p) == ["alpha>=1", "zeta"]


def test_utf8_bom_is_accepted(tmp_path):
    p = write(tmp_path, "extras.txt", "\ufeffshap>=0.45\n".encode("utf-8"))
    assert read_extras(p) == ["shap>=0.45"]


def test_crlf_line_endings(tmp_path):
    p = write(tmp_path, "extras.txt", b"shap>=0.45\r\niniconfig\r\n")
    assert read_extras(p) == ["iniconfig", "shap>=0.45"]


def test_hash_inside_a_word_is_not_a_comment(tmp_path):
    # Only '#' at the start or after whitespace starts a comment.
    p = write(tmp_path, "extras.txt", "shap>=0.45#not-a-comment\n")
    with pytest.raises(UsageError):  # so the rest is part of the (invalid) requirement
        read_extras(p)


def test_requirement_names_are_normalised(tmp_path):
    p = write(tmp_path, "extras.txt", "Foo_Bar>=1\nfoo-bar>=1\n")
    assert read_extras(p) == ["foo-bar>=1"]


# -- read_extras: pyproject.toml -----------------------------------------------------------
def test_pyproject_dependencies(tmp_path):
    p = write(tmp_path, "pyproject.toml", (
        '[project]\nname = "explainer"\nversion = "0.1"\n'
        'dependencies = ["shap>=0.45", "cattrs >=23.1, <24.2", "shap>=0.45"]\n'
        '[project.optional-dependencies]\ndev = ["pytest"]\n'
    ))
    assert read_extras(p) == ["cattrs<24.2,>=23.1", "shap>=0.45"]


# -- read_extras: errors -------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, content, fragment",
    [
        ("extras.txt", "", "lists no requirements"),
        ("extras.txt", "# only a comment\n\n   # another\n", "lists no requirements"),
        ("extras.txt", b"shap\x00>=1\n", "binary file"),
        ("extras.txt", "shap\n".encode("utf-16"), "binary file"),  # UTF-16 text has NUL bytes
        ("extras.txt", "caf\u00e9\n".encode("latin-1"), "not UTF-8"),
        ("extras.txt", "shap\n-r other.txt\n", "option lines (-r)"),
        ("extras.txt", "--index-url https://user:pw@example.com/simple\nshap\n", "option lines (--index-url)"),
        ("extras.txt", "-e .\n", "option lines (-e)"),
        ("extras.txt", "shap>=0.45\nnot a requirement!\n", "not a valid requirement"),
        ("extras.txt", "shap===\n", "not a valid requirement"),
        ("extras.txt", "mypkg @ https://example.com/mypkg-1.0-py3-none-any.whl\n", "direct URL requirement"),
        ("extras.txt", "mypkg @ git+https://example.com/mypkg.git\n", "direct URL requirement"),
        ("pyproject.toml", '[project]\nname = "x"\n', "no [project] dependencies list"),
        ("pyproject.toml", '[tool.poetry.dependencies]\nshap = "^0.45"\n', "no [project] dependencies list"),
        ("pyproject.toml", '[project]\ndependencies = "shap"\n', "no [project] dependencies list"),
        ("pyproject.toml", '[project]\ndependencies = [1, 2]\n', "no [project] dependencies list"),
        ("pyproject.toml", '[project]\ndependencies = []\n', "lists no requirements"),
        ("pyproject.toml", "[project\ndependencies = [\n", "not valid TOML"),
        ("pyproject.toml", '[project]\ndependencies = ["shap>=", "x"]\n', "not a valid requirement"),
        ("pyproject.toml", '[project]\ndependencies = ["m @ https://e.com/m.whl"]\n', "direct URL requirement"),
    ],
)
def test_read_extras_errors(tmp_path, name, content, fragment):
    err = usage_error(read_extras, write(tmp_path, name, content))
    assert fragment in err.one_line()


def test_error_names_the_line_number(tmp_path):
    p = write(tmp_path, "extras.txt", "# header\nshap>=0.45\n\nnot valid!!\n")
    err = usage_error(read_extras, p)
    assert f"{p}:4:" in err.one_line()


def test_missing_file(tmp_path):
    err = usage_error(read_extras, tmp_path / "nope.txt")
    assert "does not exist" in err.one_line()


def test_directory_is_not_a_file(tmp_path):
    err = usage_error(read_extras, tmp_path)
    assert "does not exist" in err.one_line()


def test_file_over_one_mib(tmp_path):
    line = b"shap>=0.45  # padding padding padding padding padding padding\n"
    p = write(tmp_path, "extras.txt", line * (MAX_EXTRAS_BYTES // len(line) + 1))
    assert p.stat().st_size > MAX_EXTRAS_BYTES
    err = usage_error(read_extras, p)
    assert str(MAX_EXTRAS_BYTES) in err.one_line()


def test_file_of_exactly_one_mib_is_read(tmp_path):
    body = b"shap>=0.45\n"
    p = write(tmp_path, "extras.txt", body + b"#" * (MAX_EXTRAS_BYTES - len(body)))
    assert read_extras(p) == ["shap>=0.45"]


def test_invalid_requirement_message_is_one_line(tmp_path):
    # packaging's own messages span several lines (with a caret); only the first is kept.
    err = usage_error(read_extras, write(tmp_path, "extras.txt", "foo >= = 1\n"))
    assert "foo >= = 1" in err.one_line()


# -- parse_pinned ----------------------------------------------------------------------------
def test_parse_pinned_freeze_with_hashes(tmp_path):
    p = write(tmp_path, "freeze.txt", (
        "# generated\n"
        "--index-url https://pypi.org/simple\n"
        "attrs==23.1.0 \\\n"
        "    --hash=sha256:1f28b4522cdc2fb4256ac1a020c78acf9cba2c6b461ccd2c126f3aa8e8335d04 \\\n"
        "    --hash=sha256:6279836d581513a26f1bf235f9acd333bc9115683f14f7e8fae46c98fc50e015\n"
        "Packaging==23.2\n"
        "Foo_Bar.baz==1\n"
        "legacy===1.0-custom\n"
        "pywin32==306 ; sys_platform == 'win32'\n"
    ))
    assert parse_pinned(p) == [
        {"name": "attrs", "version": "23.1.0"},
        {"name": "foo-bar-baz", "version": "1"},
        {"name": "legacy", "version": "1.0-custom"},
        {"name": "packaging", "version": "23.2"},
        {"name": "pywin32", "version": "306"},
    ]


def test_parse_pinned_canonical_name(tmp_path):
    assert parse_pinned(write(tmp_path, "r.txt", "Foo_Bar==1\n")) == [{"name": "foo-bar", "version": "1"}]


@pytest.mark.parametrize("line", ["attrs", "attrs>=23", "attrs==23.*", "attrs==23.1,<24", "attrs~=23.1", "attrs!=1"])
def test_parse_pinned_rejects_unpinned(tmp_path, line):
    err = usage_error(parse_pinned, write(tmp_path, "r.txt", f"packaging==23.2\n{line}\n"))
    assert "not pinned to one version" in err.one_line()
    assert ":2:" in err.one_line()


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("", "pins nothing"),
        ("# nothing\n--hash=sha256:abc\n", "pins nothing"),
        ("mypkg @ file:///tmp/mypkg-1.0.tar.gz\n", "direct URL requirement"),
        (b"attrs==1\x00\n", "binary file"),
    ],
)
def test_parse_pinned_errors(tmp_path, content, fragment):
    err = usage_error(parse_pinned, write(tmp_path, "r.txt", content))
    assert fragment in err.one_line()


@pytest.mark.parametrize("name, expected", [("Foo_Bar", "foo-bar"), ("a.b-c__d", "a-b-c-d"), ("Django", "django")])
def test_canonical_name(name, expected):
    assert canonical_name(name) == expected
