"""Names over time (versions, --update, aliases), ls, gc, and CI rebuilds driven by each trigger."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import BASE_REF, REGISTRY, ROOT, build_json, one_error_line, registry_tags, run_cli

pytestmark = pytest.mark.integration
NO_BUILDER = {"COMPOSER_BUILDER": "buildctl", "BUILDKIT_HOST": "unix:///nonexistent.sock"}


def _json(*args, env, cwd=None) -> dict:
    proc = run_cli(*args, "--json", env=env, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _extras(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_versions_aliases_ls_and_gc(env, prefix, upstream_run, tmp_path):
    v = [build_json("--upstream-run", upstream_run, "--extra", _extras(tmp_path, f"e{i}.txt", req), "--name", "model",
                    *(["--update"] if i else []), env=env)
         for i, req in enumerate(["iniconfig==2.0.0\n", "six==1.16.0\n", "six==1.16.0\niniconfig==2.0.0\n"])]
    hist = _json("history", "model", env=env)["versions"]
    assert [(h["version"], h["digest"]) for h in hist] == [(i + 1, out["digest"]) for i, out in enumerate(v)]
    for i, out in enumerate(v):  # every version stays resolvable
        assert run_cli("ref", f"model@{i + 1}", env=env).stdout.strip() == out["ref"]

    alias = _json("alias", "stable", "model@1", env=env)
    assert (alias["alias_of"], alias["version"]) == ("model", 1)
    assert run_cli("ref", "stable", env=env).stdout.strip() == v[0]["ref"]
    assert _json("history", "stable", env=env)["versions"][0]["alias_of"] == "model"
    listed = {e["name"]: e for e in _json("ls", env=env)["environments"]}
    assert set(listed) == {"model", "stable"}
    assert listed["model"]["digest"] == v[2]["digest"] and listed["stable"]["alias_of"] == "model"
    assert listed["model"]["upstream_run"] == upstream_run and listed["model"]["size"] > 10_000_000

    dry = _json("gc", "--keep", "1", "--older-than", "0", "--dry-run", env=env)
    assert dry["deleted"] == [v[1]["digest"]]  # v1: the alias holds it; v3: current
    assert run_cli("ref", "model@2", env=env).returncode == 0  # a dry run deletes nothing
    done = _json("gc", "--keep", "1", "--older-than", "0", env=env)
    assert done["deleted"] == [v[1]["digest"]]
    assert run_cli("ref", "model@2", env=env).returncode == 3
    assert run_cli("ref", "model@1", env=env).stdout.strip() == v[0]["ref"]
    assert run_cli("ref", "model", env=env).stdout.strip() == v[2]["ref"]
    assert [h["version"] for h in _json("history", "model", env=env)["versions"]] == [1, 3]
    assert _json("gc", "--keep", "1", "--older-than", "0", env=env)["deleted"] == []  # nothing more to retire


def test_alias_errors(env, upstream_run, extras):
    build_json("--upstream-run", upstream_run, "--extra", str(extras), "--name", "real", env=env)
    proc = run_cli("alias", "real", "real", env=env)
    assert proc.returncode == 2 and "itself" in one_error_line(proc)
    proc = run_cli("alias", "latest", "nothing-here", env=env)
    assert proc.returncode == 3


def test_rebuild_on_each_trigger(env, prefix, tmp_path, model_a):
    model = f"{REGISTRY}/models/rebuild-{prefix.rsplit('/', 1)[1]}:1"
    subprocess.run(["docker", "tag", model_a, model], check=True)
    subprocess.run(["docker", "push", model], check=True, capture_output=True)
    assert run_cli("record", "--run", "Train/1", "--image", model, env=env).returncode == 0
    extra = _extras(tmp_path, "extras.txt", "iniconfig==2.0.0\n")
    first = build_json("--upstream-run", "Train/1", "--extra", extra, "--name", "expl", env=env)
    first_base = _json("show", "expl", env=env)["record"]["base"]["digest"]

    # Nothing changed: nothing is built (no builder is even available), and it says so.
    calm = _json("rebuild", env={**env, **NO_BUILDER}, cwd=tmp_path)
    assert [(r["name"], r["status"]) for r in calm["results"]] == [("expl", "up-to-date")] and not calm["changed"]
    assert run_cli("rebuild", "--dry-run", env=env, cwd=tmp_path).returncode == 0

    # Trigger 1: the extras file changed.
    with open(extra, "a") as f:
        f.write("six==1.16.0\n")
    assert run_cli("rebuild", "--dry-run", env=env, cwd=tmp_path).returncode == 10
    r1 = _json("rebuild", "expl", env=env, cwd=tmp_path)["results"][0]
    assert r1["status"] == "rebuilt" and "extras file" in r1["reasons"][0]
    assert run_cli("ref", "expl", env=env).stdout.strip() == r1["ref"] != first["ref"]

    # Trigger 2: a base tag that now points at a new digest (a security rebuild, same packages).
    (tmp_path / "Dockerfile").write_text(f"FROM {model}\nRUN echo patched > /etc/security-patch\n")
    subprocess.run(["/usr/bin/docker", "build", "-q", "-t", model, str(tmp_path)], check=True, capture_output=True,
                   env={"DOCKER_BUILDKIT": "1", "PATH": "/usr/bin:/bin"})
    subprocess.run(["docker", "push", model], check=True, capture_output=True)
    r2 = _json("rebuild", env=env, cwd=tmp_path)["results"][0]
    assert r2["status"] == "rebuilt" and "base tag 1 now points" in r2["reasons"][0]
    shown = _json("show", "expl", env=env)["record"]
    assert shown["base"]["digest"] != first_base and shown["base"]["tag"] == "1"
    out = subprocess.run(["docker", "run", "--rm", r2["ref"], "cat", "/etc/security-patch"], capture_output=True, text=True)
    assert out.stdout.strip() == "patched"

    # Trigger 3: a new upstream run recorded under the same id.
    upstream2 = f"{REGISTRY}/models/rebuild-{prefix.rsplit('/', 1)[1]}:2"
    subprocess.run([str(ROOT / "scripts" / "make-upstream.sh"), upstream2, BASE_REF, "attrs==23.2.0", "packaging==23.2"],
                   check=True, capture_output=True)
    assert run_cli("record", "--run", "Train/1", "--image", upstream2, env=env).returncode == 2  # another image: --update
    assert run_cli("record", "--run", "Train/1", "--image", upstream2, "--update", env=env).returncode == 0
    r3 = _json("rebuild", env=env, cwd=tmp_path)["results"][0]
    assert r3["status"] == "rebuilt" and "re-recorded" in r3["reasons"][0]
    attrs = subprocess.run(["docker", "run", "--rm", r3["ref"], "python", "-c",
                            "import importlib.metadata as m; print(m.version('attrs'), m.version('six'))"],
                           capture_output=True, text=True)
    assert attrs.stdout.strip() == "23.2.0 1.16.0"

    # And idempotent again.
    assert _json("rebuild", env={**env, **NO_BUILDER}, cwd=tmp_path)["results"][0]["status"] == "up-to-date"
    assert len(_json("history", "expl", env=env)["versions"]) == 4
