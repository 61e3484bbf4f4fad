"""Shared fixtures. Integration tests run against the real Docker engine (BuildKit) and a
real distribution registry that scripts/infra.sh starts; nothing here fakes them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = os.environ.get("COMPOSER_TEST_REGISTRY_ADDR", "127.0.0.1:5000")
BASE_REF = os.environ.get("COMPOSER_BASE_REF", f"{REGISTRY}/bases/python:3.11-bookworm")


def run_cli(*args: str, env: dict | None = None, cwd: str | Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run `python -m composer ARGS` as a user would, with env layered on os.environ."""
    full_env = {**os.environ, "COMPOSER_PROGRESS": "quiet", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "composer", *args], capture_output=True, text=True,
        env=full_env, cwd=cwd, timeout=timeout,
    )


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The single line an error must end with: assert it is the only composer line on stderr."""
    lines = [l for l in proc.stderr.splitlines() if l.startswith("composer:")]
    assert len(lines) == 1, f"expected one composer error line, got: {proc.stderr!r}"
    assert lines[0].startswith("composer: error: "), lines[0]
    return lines[0]


def registry_tags(repo: str) -> list:
    r = requests.get(f"http://{REGISTRY}/v2/{repo}/tags/list", timeout=10)
    if r.status_code == 404:
        return []
    r.raise_for_status()
    return sorted(r.json().get("tags") or [])


def get_manifest(repo: str, ref: str) -> dict:
    accept = ", ".join([
        "application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.index.v1+json",
    ])
    r = requests.get(f"http://{REGISTRY}/v2/{repo}/manifests/{ref}", headers={"Accept": accept}, timeout=10)
    r.raise_for_status()
    return r.json()


@pytest.fixture(scope="session")
def infra():
    """Fail (not skip) when the engine or registry is missing: these tests are the product's proof."""
    try:
        requests.get(f"http://{REGISTRY}/v2/", timeout=5).raise_for_status()
    except requests.RequestException as exc:
        pytest.fail(f"no registry at {REGISTRY} ({exc}); run `make infra` (scripts/infra.sh start)")
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.fail("no Docker engine; run `make infra` (scripts/infra.sh start)")
    subprocess.run([str(ROOT / "scripts" / "make-base.sh"), BASE_REF], check=True)
    return REGISTRY


@pytest.fixture(scope="session")
def model_a(infra):
    """An upstream training image: base + venv with attrs 23.1.0 and packaging 23.2."""
    ref = f"{REGISTRY}/models/model-a:attrs23"
    subprocess.run([str(ROOT / "scripts" / "make-upstream.sh"), ref, BASE_REF, "attrs==23.1.0", "packaging==23.2"],
                   check=True, capture_output=True)
    return ref


@pytest.fixture
def prefix(infra):
    """A registry prefix of this test's own: no state is shared between tests or runs."""
    return f"{REGISTRY}/t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def env(prefix):
    return {"COMPOSER_REGISTRY": prefix}


@pytest.fixture
def upstream_run(env, model_a):
    """Run 'TrainFlow/1' recorded as having run in model_a."""
    proc = run_cli("record", "--run", "TrainFlow/1", "--image", model_a, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    return "TrainFlow/1"


@pytest.fixture
def extras(tmp_path):
    p = tmp_path / "extras.txt"
    p.write_text("cattrs>=23.1,<24.2  # needs attrs, which the upstream pins\niniconfig==2.0.0\n")
    return p


def build_json(*args: str, env: dict) -> dict:
    proc = run_cli("build", *args, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)
