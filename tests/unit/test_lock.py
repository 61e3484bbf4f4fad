"""composer/lock.py: reading uv's lock output and explaining uv's failures in one line."""

from __future__ import annotations

import pytest

from composer.errors import LockConflictError, UsageError
from composer.kinds.pip import Lock, _explain_failure, parse_lock

UV_OUTPUT = """\
attrs==23.1.0 \\
    --hash=sha256:1f28b4522cdc2fb4256ac1a020c78acf9cba2c6b461ccd2c126f3aa8e8335d04 \\
    --hash=sha256:6279836d581513a26f1bf235f9acd333bc9115683f14f7e8fae46c98fc50e015
cattrs==24.1.2 \\
    --hash=sha256:67c7495b760168d931a10233f979b28dc04daf853b30752246f4f8471c6d68d0
"""

ATTRS = {
    "name": "attrs",
    "version": "23.1.0",
    "hashes": [
        "sha256:1f28b4522cdc2fb4256ac1a020c78acf9cba2c6b461ccd2c126f3aa8e8335d04",
        "sha256:6279836d581513a26f1bf235f9acd333bc9115683f14f7e8fae46c98fc50e015",
    ],
}
CATTRS = {
    "name": "cattrs",
    "version": "24.1.2",
    "hashes": ["sha256:67c7495b760168d931a10233f979b28dc04daf853b30752246f4f8471c6d68d0"],
}

CONFLICT = """\
error: No solution found when resolving dependencies
  cause: Because you require attrs==24.2.0 and attrs==23.1.0, we can conclude that your requirements are unsatisfiable.
"""

NOT_FOUND = """\
error: No solution found when resolving dependencies
  cause: Because nonexistent-pkg-zzz-qq was not found in the package registry and you require nonexistent-pkg-zzz-qq, we can conclude that your requirements are unsatisfiable.
"""


# -- parse_lock --------------------------------------------------------------------------
def test_parse_lock_uv_output():
    assert parse_lock(UV_OUTPUT) == [ATTRS, CATTRS]


def test_parse_lock_sorts_hashes_and_packages_and_normalises_names():
    text = (
        "Zope.Interface==6.0 --hash=sha256:bb --hash=sha256:aa\n"
        "# a comment\n"
        "\n"
        "Foo_Bar[extra]==1.0 ; python_version >= '3.8' \\\n"
        "    --hash=sha256:cc\n"
    )
    assert parse_lock(text) == [
        {"name": "foo-bar", "version": "1.0", "hashes": ["sha256:cc"]},
        {"name": "zope-interface", "version": "6.0", "hashes": ["sha256:aa", "sha256:bb"]},
    ]


def test_parse_lock_empty_output():
    assert parse_lock("") == []


@pytest.mark.parametrize("line", ["attrs>=23", "--index-url https://x/simple", "-e ./local", "attrs @ https://x/a.whl"])
def test_parse_lock_rejects_unreadable_lines(line):
    with pytest.raises(UsageError, match="cannot read") as info:
        parse_lock(UV_OUTPUT + line + "\n")
    assert "\n" not in info.value.one_line()


# -- Lock.added_lock_text ----------------------------------------------------------------------
def test_added_lock_text_format():
    lock = Lock(requirements=["cattrs>=24"], packages=[ATTRS, CATTRS], added=[CATTRS, ATTRS])
    assert lock.added_lock_text() == (
        "cattrs==24.1.2 --hash=sha256:67c7495b760168d931a10233f979b28dc04daf853b30752246f4f8471c6d68d0\n"
        "attrs==23.1.0 --hash=sha256:1f28b4522cdc2fb4256ac1a020c78acf9cba2c6b461ccd2c126f3aa8e8335d04"
        " --hash=sha256:6279836d581513a26f1bf235f9acd333bc9115683f14f7e8fae46c98fc50e015\n"
    )


def test_added_lock_text_roundtrips_through_parse_lock():
    lock = Lock(requirements=[], packages=[ATTRS, CATTRS], added=[ATTRS, CATTRS])
    assert parse_lock(lock.added_lock_text()) == [ATTRS, CATTRS]


def test_added_lock_text_without_hashes_has_no_trailing_space():
    lock = Lock(requirements=[], packages=[], added=[{"name": "six", "version": "1.16.0", "hashes": []}])
    assert lock.added_lock_text() == "six==1.16.0\n"


# -- _explain_failure --------------------------------------------------------------------------
def test_conflict_with_upstream_pin_names_both_sides():
    err = _explain_failure(CONFLICT, ["attrs==24.2.0"], {"attrs": "23.1.0", "packaging": "23.2"}, "TrainFlow/1")
    assert isinstance(err, LockConflictError)
    line = err.one_line()
    assert "'attrs==24.2.0'" in line
    assert "attrs==23.1.0" in line
    assert "TrainFlow/1" in line
    assert "packaging" not in line.split("(")[0]  # only the clashing pin is named before the cause
    assert "\n" not in line
    assert err.exit_code == 4


def test_conflict_keeps_uv_cause_on_the_same_line():
    line = _explain_failure(CONFLICT, ["attrs==24.2.0"], {"attrs": "23.1.0"}, "r").one_line()
    assert "we can conclude that your requirements are unsatisfiable" in line
    assert "error:" not in line and "cause:" not in line


def test_package_not_found_is_a_usage_error_naming_it():
    err = _explain_failure(NOT_FOUND, ["nonexistent-pkg-zzz-qq", "shap>=0.45"], {"attrs": "23.1.0"}, "TrainFlow/1")
    assert type(err) is UsageError
    line = err.one_line()
    assert "'nonexistent-pkg-zzz-qq'" in line
    assert "not found on the package index" in line
    assert "\n" not in line


def test_package_not_found_matches_a_versioned_requirement():
    err = _explain_failure(NOT_FOUND, ["Nonexistent_Pkg_Zzz_Qq>=1"], {}, "r")
    assert "'Nonexistent_Pkg_Zzz_Qq>=1'" in err.one_line()


def test_unsatisfiable_without_an_upstream_pin_is_a_conflict():
    stderr = (
        "error: No solution found when resolving dependencies\n"
        "  cause: Because shap==0.45.0 depends on numpy>=2 and you require numpy<2, we can conclude ...\n"
    )
    err = _explain_failure(stderr, ["shap==0.45.0", "numpy<2"], {"attrs": "23.1.0"}, "TrainFlow/1")
    assert isinstance(err, LockConflictError)
    assert "cannot be locked on top of run TrainFlow/1" in err.one_line()


def test_other_uv_failures_are_one_line_usage_errors():
    stderr = "warning: something minor\nerror: Failed to fetch: `https://idx/simple/shap/`\n  Caused by: connection refused\n"
    err = _explain_failure(stderr, ["shap"], {}, "r")
    assert type(err) is UsageError
    line = err.one_line()
    assert "uv could not lock the extras" in line
    assert "warning" not in line
    assert "\n" not in line


def test_empty_stderr():
    assert "no message" in _explain_failure("", ["shap"], {}, "r").one_line()
