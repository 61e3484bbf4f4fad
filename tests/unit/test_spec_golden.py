"""Golden values for the spec hash (composer/spec.py).

The spec hash decides whether an image already exists for a composition: every
registry cache entry and every build record is keyed by it. These values are
pinned ON PURPOSE. If a test here fails, the hash of the same inputs changed,
which silently invalidates every cached image and record. A change to these
values is a deliberate, versioned act: bump SPEC_VERSION in composer/spec.py,
then paste the new values here in the same change.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from composer.model.canonical import canonical_json
from composer.model.spec import SPEC_VERSION, spec_document, spec_hash

ROOT = Path(__file__).resolve().parents[2]

BASE = "sha256:" + "1" * 64
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

INPUTS = {
    "amd64-two-packages": dict(
        base_digest=BASE,
        python={"executable": "/usr/local/bin/python3", "version": "3.11.7"},
        platform={"os": "linux", "architecture": "amd64", "python_platform": "x86_64-manylinux_2_28"},
        packages=[ATTRS, CATTRS],
        template="pip/1",
    ),
    "arm64-variant-empty-lock": dict(
        base_digest="sha256:" + "2" * 64,
        python={"executable": "/opt/venv/bin/python", "version": "3.12.1"},
        platform={"os": "linux", "architecture": "arm64", "variant": "v8", "python_platform": "aarch64-manylinux_2_28"},
        packages=[],
        template="pip/1",
    ),
    "no-hashes-extra-keys": dict(
        base_digest=BASE,
        # Keys the spec does not cover (externally_managed, paths, names) must not matter.
        python={"executable": "/usr/bin/python3", "version": "3.11.2", "externally_managed": True},
        platform={"os": "linux", "architecture": "amd64", "variant": None, "python_platform": "x86_64-manylinux_2_28"},
        packages=[{"name": "iniconfig", "version": "2.0.0"}, {"name": "shap", "version": "0.45.0", "hashes": []}],
        template="pip/1",
    ),
}

# Changing any of these is a deliberate, versioned act: bump SPEC_VERSION (see module docstring).
GOLDEN = {
    "amd64-two-packages": "sha256:0d9e35b8d902dbdbb373f78629c63063f5e0c89937810627f80aaa4beaae9ce1",
    "arm64-variant-empty-lock": "sha256:465fc63d91bffca79c0132155d744b012c63bc0539b4e99b0655c474d1ba21ee",
    "no-hashes-extra-keys": "sha256:c6f12593af1394f1cddc54f72a7ae7c8cc00bb19bf36b68e9f1c10f7d84d98a7",
}


def _hash(**kw) -> str:
    return spec_hash(spec_document(**kw))


def test_spec_version_is_pinned():
    assert SPEC_VERSION == "composer.spec/v1"  # the golden values below belong to this version


@pytest.mark.parametrize("case", sorted(INPUTS))
def test_golden_values(case):
    assert _hash(**INPUTS[case]) == GOLDEN[case]


def test_golden_bytes_of_the_document():
    # The exact canonical bytes behind GOLDEN["arm64-variant-empty-lock"], written out by hand,
    # so the golden hash is checked against something independent of composer's own code.
    expected = (
        b'{"base":"sha256:' + b"2" * 64 + b'","lock":[],'
        b'"platform":{"architecture":"arm64","os":"linux","python_platform":"aarch64-manylinux_2_28","variant":"v8"},'
        b'"python":{"executable":"/opt/venv/bin/python","version":"3.12.1"},'
        b'"spec":"composer.spec/v1","template":"pip/1"}'
    )
    assert canonical_json(spec_document(**INPUTS["arm64-variant-empty-lock"])) == expected
    assert "sha256:" + hashlib.sha256(expected).hexdigest() == GOLDEN["arm64-variant-empty-lock"]


def test_golden_values_are_distinct():
    assert len(set(GOLDEN.values())) == len(GOLDEN)


def test_document_shape():
    doc = spec_document(**INPUTS["no-hashes-extra-keys"])
    assert sorted(doc) == ["base", "lock", "platform", "python", "spec", "template"]
    assert doc["python"] == {"executable": "/usr/bin/python3", "version": "3.11.2"}
    assert doc["platform"]["variant"] == ""
    assert doc["lock"][0] == {"name": "iniconfig", "version": "2.0.0", "hashes": []}


# -- invariance: order and incidental structure never change the hash ----------------
def test_package_order_does_not_matter():
    kw = copy.deepcopy(INPUTS["amd64-two-packages"])
    kw["packages"] = list(reversed(kw["packages"]))
    assert _hash(**kw) == GOLDEN["amd64-two-packages"]


def test_hash_order_does_not_matter():
    kw = copy.deepcopy(INPUTS["amd64-two-packages"])
    kw["packages"][0]["hashes"].reverse()
    assert _hash(**kw) == GOLDEN["amd64-two-packages"]


def test_dict_key_order_does_not_matter():
    kw = copy.deepcopy(INPUTS["amd64-two-packages"])
    kw["packages"] = [dict(reversed(list(p.items()))) for p in kw["packages"]]
    kw["platform"] = dict(reversed(list(kw["platform"].items())))
    kw["python"] = dict(reversed(list(kw["python"].items())))
    assert _hash(**kw) == GOLDEN["amd64-two-packages"]


def test_packages_may_be_any_iterable():
    kw = copy.deepcopy(INPUTS["amd64-two-packages"])
    kw["packages"] = (p for p in kw["packages"])
    assert _hash(**kw) == GOLDEN["amd64-two-packages"]


def test_missing_and_empty_platform_fields_are_equal():
    kw = copy.deepcopy(INPUTS["amd64-two-packages"])
    kw["platform"]["variant"] = ""
    assert _hash(**kw) == GOLDEN["amd64-two-packages"]


# -- sensitivity: every input that decides the image's content changes the hash -------
def _changed(mutate) -> str:
    kw = copy.deepcopy(INPUTS["amd64-two-packages"])
    mutate(kw)
    return _hash(**kw)


@pytest.mark.parametrize(
    "what, mutate",
    [
        ("base digest", lambda kw: kw.update(base_digest="sha256:" + "3" * 64)),
        ("a version", lambda kw: kw["packages"][1].update(version="24.1.3")),
        ("a hash", lambda kw: kw["packages"][0]["hashes"].__setitem__(0, "sha256:" + "0" * 64)),
        ("a dropped hash", lambda kw: kw["packages"][0]["hashes"].pop()),
        ("an added package", lambda kw: kw["packages"].append({"name": "six", "version": "1.16.0", "hashes": []})),
        ("a package name", lambda kw: kw["packages"][1].update(name="cattrs2")),
        ("the architecture", lambda kw: kw["platform"].update(architecture="arm64")),
        ("the variant", lambda kw: kw["platform"].update(variant="v8")),
        ("the python platform", lambda kw: kw["platform"].update(python_platform="x86_64-manylinux_2_17")),
        ("the python version", lambda kw: kw["python"].update(version="3.11.8")),
        ("the python executable", lambda kw: kw["python"].update(executable="/opt/venv/bin/python")),
        ("the template", lambda kw: kw.update(template="pip/2")),
    ],
)
def test_hash_changes_when_content_changes(what, mutate):
    assert _changed(mutate) != GOLDEN["amd64-two-packages"], what


# -- stability across processes, hash seeds and working directories -------------------
_SCRIPT = """
import json, sys
from composer.model.canonical import canonical_json
from composer.model.spec import spec_document, spec_hash
inputs = json.loads(sys.stdin.read())
print(json.dumps({case: spec_hash(spec_document(**kw)) for case, kw in inputs.items()}))
"""


@pytest.mark.parametrize("seed", ["0", "12345"])
def test_same_value_in_another_process(tmp_path, seed):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(PYTHONHASHSEED=seed, PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT], input=json.dumps(INPUTS), capture_output=True, text=True,
        cwd=tmp_path, env=env, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == GOLDEN
