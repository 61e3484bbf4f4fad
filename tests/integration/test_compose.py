"""The main job end to end, on the real Docker engine, BuildKit and registry."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import REGISTRY, build_json, get_manifest, one_error_line, registry_tags, run_cli

pytestmark = pytest.mark.integration


def _repo(prefix: str, leaf: str) -> str:
    return f"{prefix.split('/', 1)[1]}/{leaf}"


def _in_image(ref: str, code: str) -> str:
    proc = subprocess.run(["docker", "run", "--rm", "--network", "none", ref, "python", "-c", code],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.mark.parametrize("builder", ["docker", "daemonless"])
def test_composed_image_has_upstream_pins_and_extras(env, prefix, upstream_run, extras, model_a, tmp_path, builder):
    env = {**env, "COMPOSER_BUILDER": builder}
    out = build_json("--upstream-run", upstream_run, "--extra", str(extras), "--name", "explainer-a", env=env)
    assert out["builder"] == builder
    repo = _repo(prefix, "envs")
    assert out["cached"] is False
    assert out["ref"] == f"{prefix}/envs@{out['digest']}"
    assert out["tag"].startswith("explainer-a-") and out["record"].startswith("sha256:")

    # The step's image: upstream package at exactly its pinned version, plus the extras.
    versions = json.loads(_in_image(out["ref"], (
        "import json, importlib.metadata as m, attrs, cattrs, iniconfig;"
        "print(json.dumps({p: m.version(p) for p in ('attrs', 'packaging', 'cattrs', 'iniconfig')}))"
    )))
    assert versions["attrs"] == "23.1.0" and versions["packaging"] == "23.2"
    assert versions["iniconfig"] == "2.0.0"

    # Its layers start with the upstream image's layers, byte for byte (same digests).
    up = get_manifest("models/model-a", model_a.rsplit(":", 1)[1])
    composed = get_manifest(repo, out["digest"])
    up_layers = [l["digest"] for l in up["layers"]]
    assert [l["digest"] for l in composed["layers"]][: len(up_layers)] == up_layers
    assert len(composed["layers"]) == len(up_layers) + 1

    # ref(name) is the pushed digest, from the CLI and from Python.
    ref = run_cli("ref", "explainer-a", env=env)
    assert ref.returncode == 0 and ref.stdout.strip() == out["ref"]
    import composer
    from composer.settings import load_settings

    assert composer.ref("explainer-a", settings=load_settings({"registry": prefix})) == out["ref"]

    # show returns the record; the record's subject is the image.
    shown = run_cli("show", "explainer-a", "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    shown = json.loads(shown.stdout)
    record = shown["record"]
    assert shown["record_digest"] == out["record"]
    assert record["schema"] == "composer.record/v1"
    assert record["image"] == {"repository": f"{prefix}/envs", "tag": out["tag"], "digest": out["digest"]}
    assert record["upstream"]["run"] == upstream_run and record["upstream"]["record"].startswith("sha256:")
    assert record["base"]["digest"] == get_manifest_digest("models/model-a", model_a.rsplit(":", 1)[1])
    assert record["spec_hash"] == out["spec_hash"]
    assert {"name": "attrs", "version": "23.1.0"}.items() <= next(p for p in record["lock"]["packages"] if p["name"] == "attrs").items()
    assert sorted(record["lock"]["added"]) == ["cattrs", "iniconfig"]
    assert f"FROM {record['base']['repository']}@{record['base']['digest']}" in record["dockerfile"]
    record_manifest = get_manifest(repo, out["record"])
    assert record_manifest["subject"]["digest"] == out["digest"]
    assert record_manifest["artifactType"] == "application/vnd.composer.record.v1+json"
    # The referrers tag schema lists it (distribution 2.8 has no referrers API).
    index = get_manifest(repo, "sha256-" + out["digest"].split(":")[1])
    assert out["record"] in [m["digest"] for m in index["manifests"]]

    # It is a plain OCI artifact: oras pulls the record as record.json.
    import oras.client

    pulled = oras.client.OrasClient(hostname=REGISTRY, insecure=True).pull(
        target=f"{prefix}/envs@{out['record']}", outdir=str(tmp_path))
    assert [p.rsplit("/", 1)[-1] for p in pulled] == ["record.json"]
    assert json.loads(open(pulled[0]).read()) == record

    # The image carries its spec hash, so a step can check it runs in the recorded environment.
    assert _in_image(out["ref"], "import os; print(os.environ['COMPOSER_SPEC_HASH'])") == out["spec_hash"]


def get_manifest_digest(repo: str, ref: str) -> str:
    import requests

    r = requests.head(f"http://{REGISTRY}/v2/{repo}/manifests/{ref}",
                      headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"}, timeout=10)
    r.raise_for_status()
    return r.headers["Docker-Content-Digest"]


def test_identical_build_is_a_cache_hit_that_starts_no_build(env, prefix, upstream_run, extras):
    first = build_json("--upstream-run", upstream_run, "--extra", str(extras), "--name", "same", env=env)
    tags = registry_tags(_repo(prefix, "envs"))
    # No builder exists under this setting: if a build were started, the command would fail.
    again = build_json("--upstream-run", upstream_run, "--extra", str(extras), "--name", "same",
                       env={**env, "COMPOSER_BUILDER": "buildctl", "BUILDKIT_HOST": "unix:///nonexistent.sock"})
    assert again["cached"] is True and again["builder"] is None
    assert (again["digest"], again["record"], again["ref"]) == (first["digest"], first["record"], first["ref"])
    assert registry_tags(_repo(prefix, "envs")) == tags

    # The same composition under another name reuses the image and records the new name.
    other = build_json("--upstream-run", upstream_run, "--extra", str(extras), "--name", "same-other",
                       env={**env, "COMPOSER_BUILDER": "buildctl", "BUILDKIT_HOST": "unix:///nonexistent.sock"})
    assert other["cached"] is True and other["digest"] == first["digest"] and other["record"] != first["record"]
    assert run_cli("ref", "same-other", env=env).stdout.strip() == first["ref"]


def test_a_name_moves_only_with_update(env, prefix, upstream_run, extras, tmp_path):
    first = build_json("--upstream-run", upstream_run, "--extra", str(extras), "--name", "pinned", env=env)
    changed = tmp_path / "changed.txt"
    changed.write_text("iniconfig==2.0.0\n")
    proc = run_cli("build", "--upstream-run", upstream_run, "--extra", str(changed), "--name", "pinned", env=env)
    assert proc.returncode == 2
    assert "already points to a different composition" in one_error_line(proc)
    assert run_cli("ref", "pinned", env=env).stdout.strip() == first["ref"]

    moved = build_json("--upstream-run", upstream_run, "--extra", str(changed), "--name", "pinned", "--update", env=env)
    assert moved["digest"] != first["digest"]
    assert run_cli("ref", "pinned", env=env).stdout.strip() == moved["ref"]


def test_name_template_and_composed_env_as_upstream(env, prefix, upstream_run, extras, tmp_path):
    out = build_json("--upstream-run", upstream_run, "--extra", str(extras), "--name", "explainer-{model}-{run_id}",
                     "--var", "model=ModelA", "--run-id", "ExplainFlow/7", env=env)
    assert out["name"] == "explainer-ModelA-ExplainFlow-7"
    # The composed environment is itself an upstream: by name and by the run id that built it.
    more = tmp_path / "more.txt"
    more.write_text("six==1.16.0\n")
    for upstream in (out["name"], "ExplainFlow/7"):
        nxt = build_json("--upstream-run", upstream, "--extra", str(more), "--name", "second-level", env=env)
        versions = _in_image(nxt["ref"], "import importlib.metadata as m; print(m.version('attrs'), m.version('iniconfig'), m.version('six'))")
        assert versions == "23.1.0 2.0.0 1.16.0"


def test_a_reused_composition_is_still_recorded_for_the_new_run_id(env, upstream_run, extras, tmp_path):
    first = build_json("--upstream-run", upstream_run, "--extra", str(extras), "--name", "fixed", "--run-id", "Expl/1", env=env)
    again = build_json("--upstream-run", upstream_run, "--extra", str(extras), "--name", "fixed", "--run-id", "Expl/2", env=env)
    assert again["cached"] is True and again["digest"] == first["digest"]
    more = tmp_path / "more.txt"
    more.write_text("six==1.16.0\n")
    nxt = build_json("--upstream-run", "Expl/2", "--extra", str(more), "--name", "on-expl-2", env=env)
    assert nxt["digest"] != first["digest"]
