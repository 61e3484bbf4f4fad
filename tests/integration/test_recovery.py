"""Surviving the loss of the registry, with real registries: compose in A, export, kill A and
delete its storage, import into an empty B; skopeo reads the archive; mirror copies only
what is missing; check finds rot; build --from-record gives the same image digest."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import requests

from composer.oci.client import Registry
from tests.conftest import REGISTRY, build_json, run_cli
from tests.integration.servers import FaultProxy, RegistryProcess

pytestmark = pytest.mark.integration

DAEMONLESS = {"COMPOSER_BUILDER": "daemonless"}


def _ok(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _copy_image(src: Registry, dst: Registry, repo: str, tag: str) -> None:
    body, desc = src.get_manifest(repo, tag)
    manifest = json.loads(body)
    for blob in [manifest["config"], *manifest["layers"]]:
        dst.copy_blob(src, repo, blob["digest"], blob["size"], repo, blob["mediaType"])
    dst.put_manifest(repo, tag, body, desc.media_type)


def _docker_run(ref: str, *cmd: str) -> str:
    proc = subprocess.run(["docker", "run", "--rm", "--network", "none", ref, *cmd], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_export_lose_the_registry_import_into_an_empty_one(tmp_path, model_a, extras):
    a = RegistryProcess(tmp_path / "a").start()
    archive = tmp_path / "backup.tar"
    try:
        # The upstream image lives in A too: A is the whole world that is lost.
        _copy_image(Registry(REGISTRY), Registry(a.addr), "models/model-a", "attrs23")
        env_a = {"COMPOSER_REGISTRY": f"{a.addr}/ml", **DAEMONLESS}
        assert run_cli("record", "--run", "TrainFlow/1", "--image", f"{a.addr}/models/model-a:attrs23", env=env_a).returncode == 0
        built = build_json("--upstream-run", "TrainFlow/1", "--extra", str(extras), "--name", "explainer",
                           "--run-id", "ExplainerFlow/1", env=env_a)
        assert not built["cached"] and built["builder"] == "daemonless"
        out = _ok(run_cli("export", "explainer", "-o", str(archive), "--json", env=env_a))
        assert out["names"] == ["explainer"] and out["bytes"] > 1_000_000
        assert len(out["runs"]) == 3  # the upstream's run record, the environment's (its name, its run id)

        # Independent tools read the archive: the image under its name (in its OCI form when the
        # registry has it as Docker schema 2: the same config and layers).
        manifest = json.loads(Registry(a.addr).get_manifest("ml/envs", built["digest"])[0])
        inspect = subprocess.run(["skopeo", "inspect", f"oci-archive:{archive}:explainer"], capture_output=True, text=True)
        assert inspect.returncode == 0, inspect.stderr
        assert json.loads(inspect.stdout)["Layers"] == [l["digest"] for l in manifest["layers"]]
        config = subprocess.run(["skopeo", "inspect", "--config", f"oci-archive:{archive}:explainer"], capture_output=True, text=True)
        assert json.loads(config.stdout)["config"]["Labels"]["dev.composer.spec-hash"] == built["spec_hash"]
        copied = subprocess.run(["skopeo", "copy", f"oci-archive:{archive}:explainer", f"oci:{tmp_path / 'layout'}:copy"],
                                capture_output=True, text=True)
        assert copied.returncode == 0, copied.stderr
        index = json.loads((tmp_path / "layout" / "index.json").read_text())
        copy = json.loads((tmp_path / "layout" / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]).read_text())
        assert [l["digest"] for l in copy["layers"]] == [l["digest"] for l in manifest["layers"]]
        assert copy["config"]["digest"] == manifest["config"]["digest"]
    finally:
        a.stop()
        shutil.rmtree(tmp_path / "a")

    b = RegistryProcess(tmp_path / "b").start()
    try:
        env_b = {"COMPOSER_REGISTRY": f"{b.addr}/restored", **DAEMONLESS}
        assert run_cli("ref", "explainer", env=env_b).returncode == 3  # B starts empty
        restored = _ok(run_cli("import", str(archive), "--json", env=env_b))
        assert restored["blobs"]["uploaded"] > 0 and restored["names"] == ["explainer"]
        ref = run_cli("ref", "explainer", env=env_b)
        assert ref.returncode == 0, ref.stderr
        assert ref.stdout.strip() == f"{b.addr}/restored/envs@{built['digest']}"
        assert run_cli("ref", "explainer@1", env=env_b).stdout.strip() == ref.stdout.strip()
        assert run_cli("history", "--run", "TrainFlow/1", env=env_b).returncode == 0  # the run's history came along
        pulled = _ok(run_cli("pull", "explainer", "--json", env=env_b))
        assert pulled["pulled"] and pulled["digest"] == built["digest"] and pulled["record"] == built["record"]
        versions = json.loads(_docker_run(ref.stdout.strip(), "python", "-c", (
            "import json, importlib.metadata as m;"
            "print(json.dumps({p: m.version(p) for p in ('attrs', 'packaging', 'cattrs', 'iniconfig')}))")))
        assert versions["attrs"] == "23.1.0" and versions["packaging"] == "23.2" and versions["iniconfig"] == "2.0.0"
        assert versions["cattrs"].startswith(("23.", "24.1"))
        again = build_json("--upstream-run", "TrainFlow/1", "--extra", str(extras), "--name", "explainer",
                           "--run-id", "ExplainerFlow/1", env=env_b)
        assert again["cached"] and again["digest"] == built["digest"] and again["record"] == built["record"]
        check = run_cli("check", "--json", env=env_b)
        assert check.returncode == 0, check.stdout
        # Importing twice changes nothing; a name pointing elsewhere is refused unless --update.
        twice = _ok(run_cli("import", str(archive), "--json", env=env_b))
        assert twice["manifests"]["written"] == 0 and twice["bytes"] == 0
    finally:
        b.stop()
        subprocess.run(["docker", "rmi", "-f", ref.stdout.strip()], capture_output=True)


def test_mirror_copies_only_what_is_missing(env, prefix, upstream_run, extras, tmp_path):
    built = build_json("--upstream-run", upstream_run, "--extra", str(extras), "--name", "mirrored",
                       env={**env, **DAEMONLESS})
    c = RegistryProcess(tmp_path / "c").start()
    proxy = FaultProxy(c.addr, "pass", keep_host=True)  # counts every byte sent to C
    try:
        first = _ok(run_cli("mirror", "--to", f"{proxy.addr}/copy", "--json", env=env))
        sent_first = proxy.bytes_up
        assert first["bytes"] > 1_000_000 and sent_first >= first["bytes"]
        ref = run_cli("ref", "mirrored", env={"COMPOSER_REGISTRY": f"{proxy.addr}/copy"})
        assert ref.returncode == 0 and ref.stdout.strip().endswith(built["digest"]), ref.stderr

        second = _ok(run_cli("mirror", "--to", f"{proxy.addr}/copy", "--json", env=env))
        assert second["bytes"] == 0 and second["manifests"]["written"] == 0
        assert second["blobs"]["uploaded"] == second["blobs"]["copied"] == 0
        assert proxy.bytes_up == sent_first  # not one byte sent the second time
    finally:
        proxy.close()
        c.stop()


def test_check_finds_a_deleted_layer_and_a_deleted_record(env, prefix, upstream_run, extras):
    built = build_json("--upstream-run", upstream_run, "--extra", str(extras), "--name", "rotting",
                       env={**env, **DAEMONLESS})
    healthy = run_cli("check", "--json", env=env)
    assert healthy.returncode == 0, healthy.stdout
    assert json.loads(healthy.stdout)["checked"]["records"] >= 1

    repo = prefix.split("/", 1)[1] + "/envs"
    manifest = requests.get(f"http://{REGISTRY}/v2/{repo}/manifests/{built['digest']}",
                            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"}, timeout=10).json()
    layer = manifest["layers"][-1]["digest"]
    assert requests.delete(f"http://{REGISTRY}/v2/{repo}/blobs/{layer}", timeout=10).status_code == 202
    assert requests.delete(f"http://{REGISTRY}/v2/{repo}/manifests/{built['record']}", timeout=10).status_code == 202

    rotten = run_cli("check", "--json", env=env)
    assert rotten.returncode == 7, rotten.stderr
    problems = json.loads(rotten.stdout)["problems"]
    assert {"missing"} == {p["problem"] for p in problems}
    assert any(p["digest"] == layer for p in problems)
    assert any(p["digest"] == built["record"] for p in problems)
    human = run_cli("check", "rotting", env=env)
    assert human.returncode == 7 and layer in human.stdout and built["record"] in human.stdout


def test_build_from_record_in_a_fresh_registry_gives_the_same_image(env, prefix, upstream_run, extras, tmp_path):
    built = build_json("--upstream-run", upstream_run, "--extra", str(extras), "--name", "kept-in-git",
                       env={**env, **DAEMONLESS})
    record = tmp_path / "record.json"
    record.write_text(run_cli("show", "kept-in-git", "--json", env=env).stdout)
    d = RegistryProcess(tmp_path / "d").start()
    try:
        fresh = {"COMPOSER_REGISTRY": f"{d.addr}/fresh", **DAEMONLESS}
        out = _ok(run_cli("build", "--from-record", str(record), "--json", env=fresh))
        assert out["digest"] == built["digest"] and out["identical"] and not out["cached"]
        assert out["builder"] == "daemonless" and out["spec_hash"] == built["spec_hash"]
        assert run_cli("ref", "kept-in-git", env=fresh).stdout.strip() == f"{d.addr}/fresh/envs@{built['digest']}"
        assert _ok(run_cli("build", "--from-record", str(record), "--json", env=fresh))["cached"]
    finally:
        d.stop()
