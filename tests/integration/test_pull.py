"""Step start: `composer pull` resolves the name, verifies its record, pulls by digest outside
the image, and inside it checks that the step runs in exactly the recorded environment."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import ROOT, build_json, one_error_line, run_cli

pytestmark = pytest.mark.integration


def test_pull_outside_the_image_fetches_it_by_digest(env, upstream_run, extras):
    out = build_json("--upstream-run", upstream_run, "--extra", str(extras), "--name", "pulled", env=env)
    subprocess.run(["docker", "rmi", "-f", out["ref"]], capture_output=True)
    proc = run_cli("pull", "pulled", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert (got["ref"], got["record"], got["pulled"]) == (out["ref"], out["record"], True)
    inspect = subprocess.run(["docker", "image", "inspect", out["ref"]], capture_output=True, text=True)
    assert inspect.returncode == 0 and out["digest"] in inspect.stdout


def _run_in(ref: str, prefix: str, script: str) -> subprocess.CompletedProcess:
    # composer itself comes from the source tree; its few dependencies are in the composed extras.
    return subprocess.run(
        ["docker", "run", "--rm", "--network", "host", "-v", f"{ROOT}:/src:ro", "-e", "PYTHONPATH=/src",
         "-e", f"COMPOSER_REGISTRY={prefix}", "-e", "COMPOSER_STATE_DIR=/tmp/state", ref, "sh", "-c", script],
        capture_output=True, text=True, timeout=300,
    )


def test_pull_inside_the_image_checks_the_running_environment(env, prefix, upstream_run, tmp_path):
    extras = tmp_path / "step.txt"
    extras.write_text("requests\ntomli\npackaging\niniconfig==2.0.0\n")
    step = build_json("--upstream-run", upstream_run, "--extra", str(extras), "--name", "stepenv", env=env)
    other_extras = tmp_path / "other.txt"
    other_extras.write_text("six==1.16.0\n")
    build_json("--upstream-run", upstream_run, "--extra", str(other_extras), "--name", "otherenv", env=env)

    ok = _run_in(step["ref"], prefix, "python -m composer pull stepenv --json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["verified_running"] is True

    wrong = _run_in(step["ref"], prefix, "python -m composer pull otherenv")
    assert wrong.returncode == 7
    assert "this step runs in environment" in one_error_line(wrong)

    changed = _run_in(step["ref"], prefix,
                      "rm -rf /opt/venv/lib/python3.11/site-packages/iniconfig-*.dist-info && python -m composer pull stepenv")
    assert changed.returncode == 7
    assert "iniconfig is missing here" in one_error_line(changed)
