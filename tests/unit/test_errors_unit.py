"""composer/errors.py: one actionable line per error, a distinct exit code per kind.

(Named *_unit so it does not clash with tests/integration/test_errors.py: the test
folders have no __init__.py, so module basenames must be unique.)
"""

from __future__ import annotations

import pytest

from composer import errors
from composer.errors import (
    BuildError, ComposerError, EnvironmentProblem, LockConflictError, NotFoundError, RegistryError, UsageError,
    VerificationError,
)

KINDS = [UsageError, NotFoundError, LockConflictError, RegistryError, BuildError, VerificationError, EnvironmentProblem]


def test_one_line_joins_message_and_hint():
    assert UsageError("bad thing", "do this").one_line() == "bad thing; do this"
    assert UsageError("bad thing").one_line() == "bad thing"
    assert UsageError("bad thing", "").one_line() == "bad thing"


def test_one_line_collapses_newlines_and_whitespace():
    err = RegistryError("first\nsecond\r\nthird\t tab", "hint\n  more\n")
    assert err.one_line() == "first second third tab; hint more"


def test_message_and_hint_are_kept():
    err = BuildError("m", "h")
    assert (err.message, err.hint, str(err)) == ("m", "h", "m")


def test_exit_codes_are_distinct_and_documented():
    codes = [k.exit_code for k in KINDS]
    assert len(set(codes)) == len(codes)
    assert ComposerError.exit_code == errors.EXIT_INTERNAL == 1
    assert errors.EXIT_OK == 0
    assert {
        UsageError: 2, NotFoundError: 3, LockConflictError: 4, RegistryError: 5, BuildError: 6, VerificationError: 7,
        EnvironmentProblem: 8,
    } == {k: k.exit_code for k in KINDS}
    assert errors.EXIT_OK not in codes and errors.EXIT_INTERNAL not in codes


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_is_a_composer_error(kind):
    assert issubclass(kind, ComposerError)
    assert "\n" not in kind("a\nb", "c\nd").one_line()
