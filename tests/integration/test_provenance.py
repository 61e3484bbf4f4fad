"""Provenance that stays true (issue 16), on the real registry and engine: a name records its
own upstream even when its image is reused, rebuild watches that name's own triggers, and a
recorded run is never replaced silently."""

from __future__ import annotations

import json

import pytest

from composer.oci.client import Registry
from composer.model.refs import parse_image_ref
from tests.conftest import BASE_REF, REGISTRY, build_json, one_error_line, run_cli

pytestmark = pytest.mark.integration


def copy_image(source: str, target: str) -> str:
    """Put source's exact manifest under target (another repository and tag): same digest."""
    src, dst = parse_image_ref(source), parse_image_ref(target)
    reg = Registry(REGISTRY)
    body, desc = reg.get_manifest(src.repository, src.reference)
    manifest = json.loads(body)
    for blob in [manifest["config"], *manifest["layers"]]:
        assert reg.mount_blob(dst.repository, blob["digest"], src.repository)
    reg.put_manifest(dst.repository, dst.tag, body, desc.media_type)
    return desc.digest


def show(name: str, env: dict) -> dict:
    proc = run_cli("show", name, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["record"]


def rebuild_dry(env: dict, cwd) -> dict:
    proc = run_cli("rebuild", "--dry-run", "--json", env=env, cwd=cwd)  # where the extras are: rebuild reads no other
    assert proc.returncode in (0, 10), proc.stderr
    return {r["name"]: r for r in json.loads(proc.stdout)["results"]}


def test_a_reused_composition_keeps_each_names_own_provenance(env, prefix, model_a, extras, tmp_path):
    trainer, other = f"{prefix}/team/trainer:v1", f"{prefix}/team/other:v9"
    digest = copy_image(model_a, trainer)
    assert copy_image(model_a, other) == digest
    for run, image in (("R1", trainer), ("R2", other)):
        assert run_cli("record", "--run", run, "--image", image, env=env).returncode == 0
    extras_b = tmp_path / "b.txt"
    extras_b.write_text(extras.read_text())

    a = build_json("--upstream-run", "R1", "--extra", str(extras), "--name", "A", env=env)
    b = build_json("--upstream-run", "R2", "--extra", str(extras_b), "--name", "B", env=env)
    assert b["cached"] is True and b["digest"] == a["digest"]  # reuse is keyed by content

    rec_a, rec_b = show("A", env), show("B", env)
    assert rec_b["upstream"]["run"] == "R2" and rec_a["upstream"]["run"] == "R1"
    assert (rec_b["base"]["repository"], rec_b["base"]["tag"]) == (f"{prefix}/team/other", "v9")
    assert (rec_a["base"]["repository"], rec_a["base"]["tag"]) == (f"{prefix}/team/trainer", "v1")
    assert rec_b["inputs"]["extra"] == str(extras_b) and rec_a["inputs"]["extra"] == str(extras)
    assert rec_b["spec_hash"] == rec_a["spec_hash"]

    # B's base tag moves: only B is stale, for its own tag.
    copy_image(BASE_REF, other)
    states = rebuild_dry(env, tmp_path)
    assert states["A"]["status"] == "up-to-date", states["A"]
    assert states["B"]["status"] == "stale" and any("v9" in r for r in states["B"]["reasons"]), states["B"]

    # R1 is re-recorded (same image, its pins given): only A is stale for it.
    pins = tmp_path / "pins.txt"
    pins.write_text("attrs==23.1.0\npackaging==23.2\n")
    assert run_cli("record", "--run", "R1", "--image", trainer, "--requirements", str(pins), env=env).returncode == 0
    states = rebuild_dry(env, tmp_path)
    assert states["A"]["status"] == "stale" and any("R1" in r for r in states["A"]["reasons"]), states["A"]
    assert not any("R1" in r for r in states["B"]["reasons"]), states["B"]


def test_a_build_never_replaces_a_recorded_run(env, model_a, extras):
    assert run_cli("record", "--run", "X", "--image", model_a, env=env).returncode == 0
    before = json.loads(run_cli("history", "--run", "X", "--json", env=env).stdout)["versions"]

    proc = run_cli("build", "--upstream-run", "X", "--extra", str(extras), "--name", "X", env=env)
    assert proc.returncode == 2
    assert "already a recorded run" in one_error_line(proc)
    proc = run_cli("build", "--upstream-run", "X", "--extra", str(extras), "--name", "env-x", "--run-id", "X", env=env)
    assert proc.returncode == 2 and "already a recorded run" in one_error_line(proc)

    after = json.loads(run_cli("history", "--run", "X", "--json", env=env).stdout)["versions"]
    assert after == before and len(after) == 1
    # ... and the run is still the upstream it was: a build on it under another name works.
    build_json("--upstream-run", "X", "--extra", str(extras), "--name", "env-x", env=env)
    assert show("env-x", env)["upstream"]["record"] == after[0]["record"]


def test_re_recording_a_run_with_another_image_needs_update_and_keeps_the_old_record(env, model_a):
    assert run_cli("record", "--run", "Y", "--image", model_a, env=env).returncode == 0
    proc = run_cli("record", "--run", "Y", "--image", BASE_REF, env=env)
    assert proc.returncode == 2
    assert "--update" in one_error_line(proc)

    proc = run_cli("record", "--run", "Y", "--image", BASE_REF, "--update", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    versions = json.loads(run_cli("history", "--run", "Y", "--json", env=env).stdout)["versions"]
    assert [v["reason"] for v in versions] == ["recorded", "re-recorded"]
    assert versions[-1]["record"] == json.loads(proc.stdout)["record"]
    # The old record is still in the registry, by its digest.
    old = Registry(REGISTRY).get_manifest(f"{env['COMPOSER_REGISTRY'].split('/', 1)[1]}/runs", versions[0]["record"])
    assert old is not None
