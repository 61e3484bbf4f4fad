"""composer.catalog.pull against the in-memory registry: the step-start fetch without Docker,
and the in-image check of the running environment against the record."""

from __future__ import annotations

import dataclasses
import platform
from importlib import metadata

import pytest

from composer.catalog import pull as pull_module
from composer.catalog import resolve
from composer.catalog.listing import set_alias
from composer.catalog.pull import SPEC_ENV, pull, verify_running
from composer.errors import NotFoundError, VerificationError

NAME = "explainer"
PYTEST = metadata.version("pytest")  # installed here: a locked package this process really has


@pytest.fixture(autouse=True)
def no_hooks(monkeypatch):
    """No integration hooks (Metaflow registers one when imported elsewhere in the session)."""
    monkeypatch.setattr(pull_module, "AFTER_PULL", [])


@pytest.fixture
def built(lab):
    return lab.publish(NAME, packages=[("pytest", PYTEST)])


def test_pull_outside_the_image_resolves_and_verifies_the_record(lab, built, monkeypatch):
    monkeypatch.setattr(pull_module, "pull_image", lambda ref, spec: pytest.fail("use_docker=False pulled"))
    got = pull(lab.settings, NAME, use_docker=False, in_image=False)
    assert got == {"name": NAME, "ref": built.ref, "digest": built.digest, "record": built.record,
                   "spec_hash": built.spec_hash, "pulled": False, "verified_running": False}


def test_pull_with_docker_pulls_the_recorded_digest(lab, built, monkeypatch):
    pulled = []
    monkeypatch.setattr(pull_module, "pull_image", lambda ref, spec, *progress: pulled.append((ref, spec)) or True)
    got = pull(lab.settings, NAME, in_image=False)
    assert pulled == [(built.ref, built.spec_hash)] and got["pulled"] is True


def test_pull_of_a_version_and_of_an_alias(lab, built):
    second = lab.publish(NAME, packages=[("pytest", PYTEST), ("six", "1.16.0")], update=True)
    set_alias(lab.settings, "stable", f"{NAME}@1")
    assert pull(lab.settings, f"{NAME}@1", use_docker=False, in_image=False)["digest"] == built.digest
    assert pull(lab.settings, NAME, use_docker=False, in_image=False)["digest"] == second.digest
    got = pull(lab.settings, "stable", use_docker=False, in_image=False)
    assert (got["digest"], got["record"], got["spec_hash"]) == (built.digest, built.record, built.spec_hash)


def test_pull_of_an_unknown_or_unrecorded_name_fails(lab):
    with pytest.raises(NotFoundError):
        pull(lab.settings, NAME, use_docker=False, in_image=False)
    lab.push_image(lab.envs, NAME, on=lab.base, layers=[b"no record"])
    with pytest.raises(VerificationError):
        pull(lab.settings, NAME, use_docker=False, in_image=False)


def test_in_the_image_the_running_environment_is_checked(lab, built, monkeypatch):
    monkeypatch.setenv(SPEC_ENV, built.spec_hash)
    got = pull(lab.settings, NAME, use_docker=False, in_image=True)
    assert got["verified_running"] is True and got["pulled"] is False


def test_in_image_is_detected_from_the_spec_hash_variable(lab, built, monkeypatch):
    monkeypatch.setattr(pull_module, "pull_image", lambda ref, spec: pytest.fail("pulled inside the image"))
    monkeypatch.setenv(SPEC_ENV, built.spec_hash)
    assert pull(lab.settings, NAME)["verified_running"] is True
    monkeypatch.delenv(SPEC_ENV)
    assert pull(lab.settings, NAME, use_docker=False)["verified_running"] is False


@pytest.mark.parametrize("running", ["sha256:" + "0" * 64, None])
def test_in_the_image_a_wrong_spec_hash_is_a_verification_error(lab, built, monkeypatch, running):
    if running:
        monkeypatch.setenv(SPEC_ENV, running)
    else:
        monkeypatch.delenv(SPEC_ENV, raising=False)
    with pytest.raises(VerificationError, match="runs in environment") as err:
        pull(lab.settings, NAME, use_docker=False, in_image=True)
    assert (running or "unknown")[:19] in err.value.message and err.value.exit_code == 7


@pytest.mark.parametrize("version", ["0.0.1", "99.0"])
def test_in_the_image_a_locked_version_not_installed_is_a_verification_error(lab, monkeypatch, version):
    built = lab.publish(NAME, packages=[("pytest", version)])
    monkeypatch.setenv(SPEC_ENV, built.spec_hash)
    with pytest.raises(VerificationError, match=f"pytest is {PYTEST} here but {NAME!r} recorded {version}"):
        pull(lab.settings, NAME, use_docker=False, in_image=True)


def test_in_the_image_a_locked_package_that_is_missing_is_a_verification_error(lab, monkeypatch):
    built = lab.publish(NAME, packages=[("pytest", PYTEST), ("surely-not-installed-here", "1.0")])
    monkeypatch.setenv(SPEC_ENV, built.spec_hash)
    with pytest.raises(VerificationError, match="surely-not-installed-here is missing here"):
        pull(lab.settings, NAME, use_docker=False, in_image=True)


def test_verify_running_checks_the_python_version(lab, built, monkeypatch):
    _, record, _ = resolve(lab.settings, NAME)
    monkeypatch.setenv(SPEC_ENV, record.spec_hash)
    verify_running(record, NAME)  # as recorded: passes
    other = dataclasses.replace(record, python=dataclasses.replace(record.python, version="2.7.18"))
    with pytest.raises(VerificationError, match=f"python {platform.python_version()} but"):
        verify_running(other, NAME)


def test_pull_hooks_see_the_result_and_add_to_it(lab, built, monkeypatch):
    seen = []
    monkeypatch.setattr(pull_module, "AFTER_PULL", [lambda settings, out: seen.append(dict(out)) or {"linked": True}])
    got = pull(lab.settings, NAME, use_docker=False, in_image=False)
    assert got["linked"] is True and seen[0]["digest"] == built.digest and seen[0]["name"] == NAME
