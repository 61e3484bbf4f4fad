"""Everyday use (issue 15) through the real CLI, registry and engine: diff, dry runs, lineage,
global flags, tables, show, completion, inline extras from Python, progress on a terminal."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest

from tests.conftest import build_json, one_error_line, registry_tags, run_cli

pytestmark = pytest.mark.integration


def _json(*args: str, env: dict) -> dict:
    proc = run_cli(*args, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_dry_run_builds_nothing_then_says_cache_hit(env, prefix, upstream_run, extras):
    repo = prefix.split("/", 1)[1] + "/envs"
    plan = _json("build", "--upstream-run", upstream_run, "--extra", str(extras), "--name", "dry", "--dry-run", env=env)
    assert plan["cached"] is False and plan["builder"] == "daemonless" and plan["digest"] is None
    assert {p["name"] for p in plan["added"]} >= {"cattrs", "iniconfig"}
    assert registry_tags(repo) == []  # nothing built, nothing pushed
    built = build_json("--upstream-run", upstream_run, "--extra", str(extras), "--name", "dry", env=env)
    assert built["spec_hash"] == plan["spec_hash"] and built["tag"] == plan["tag"]
    again = _json("build", "--upstream-run", upstream_run, "--extra", str(extras), "--name", "dry", "--dry-run", env=env)
    assert again["cached"] is True and again["digest"] == built["digest"] and again["builder"] is None
    text = run_cli("build", "--upstream-run", upstream_run, "--extra", str(extras), "--name", "dry", "--dry-run", env=env)
    assert text.returncode == 0 and text.stdout.startswith("dry: cache hit: ")


def test_diff_versions_and_a_run_lineage_and_tables(env, prefix, upstream_run, extras, tmp_path):
    first = build_json("--upstream-run", upstream_run, "--extra", str(extras), "--name", "exp", env=env)
    more = tmp_path / "more.txt"
    more.write_text("cattrs>=23.1,<24.2\niniconfig==1.1.1\nsix==1.16.0\n")
    second = build_json("--upstream-run", upstream_run, "--extra", str(more), "--name", "exp", "--update", env=env)
    assert first["digest"] != second["digest"]

    d = _json("diff", "exp@1", "exp@2", env=env)
    assert d["base"] is None and d["python"] is None
    assert d["packages"]["added"] == [{"name": "six", "version": "1.16.0"}]
    assert d["packages"]["downgraded"] == [{"name": "iniconfig", "from": "2.0.0", "to": "1.1.1"}]
    text = run_cli("diff", "exp@1", "exp@2", env=env).stdout
    assert "six" in text and "1 added, 0 removed, 0 upgraded, 1 downgraded" in text

    # A run and the environment composed on it: what the composition added, the base moved.
    d = _json("diff", upstream_run, "exp", env=env)
    assert d["a"]["kind"] == "run" and d["b"]["kind"] == "composed"
    assert {p["name"] for p in d["packages"]["added"]} >= {"cattrs", "six"} and not d["packages"]["removed"]
    assert d["base"] is None  # the run's image is the composition's base

    # A composition on a composition: the lineage is image -> run -> env -> env-run -> env.
    top = tmp_path / "top.txt"
    top.write_text("tomli==2.0.1\n")
    build_json("--upstream-run", "exp", "--extra", str(top), "--name", "exp-top", env=env)
    graph = _json("lineage", "exp-top", env=env)
    kinds = [n["kind"] for n in graph["nodes"]]
    assert kinds == ["image", "run", "environment", "run", "environment"], graph["nodes"]
    assert [n["label"] for n in graph["nodes"]][-3:] == ["exp", "exp", "exp-top"]
    assert any("tomli 2.0.1" in e["label"] for e in graph["edges"])
    mermaid = run_cli("lineage", "exp-top", env=env).stdout
    assert mermaid.startswith("flowchart TD") and "exp-top" in mermaid
    svg = tmp_path / "lineage.svg"
    assert run_cli("lineage", "exp-top", "--format", "svg", "-o", str(svg), env=env).returncode == 0
    assert ET.parse(svg).getroot().tag.endswith("svg")

    # Global flags before the command; tables with a header row, as wide as the longest name.
    proc = run_cli("--json", "--registry", env["COMPOSER_REGISTRY"], "ls", env={})
    assert proc.returncode == 0, proc.stderr
    assert {e["name"] for e in json.loads(proc.stdout)["environments"]} == {"exp", "exp-top"}
    lines = run_cli("ls", env=env).stdout.splitlines()
    assert lines[0].split()[:3] == ["name", "digest", "upstream"] and len(lines) == 3
    hist = run_cli("history", "exp", env=env).stdout.splitlines()
    assert hist[0].split()[:2] == ["version", "digest"] and len(hist) == 3
    shown = run_cli("show", "exp", env=env).stdout
    assert "name:      exp" in shown and "added:" in shown and "six 1.16.0" in shown


def test_flags_errors_verbose_quiet_and_completion(env, upstream_run, extras):
    proc = run_cli("build", env=env)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "composer: error: composer" not in line and "--upstream-run" in line
    assert "examples:" in run_cli("build", "--help", env=env).stdout
    proc = run_cli("ls", "--builder", "docker", env=env)  # build-only flags are not on ls
    assert proc.returncode == 2

    quiet = run_cli("-q", "build", "--upstream-run", upstream_run, "--extra", str(extras), "--name", "q", env=env)
    assert quiet.returncode == 0 and quiet.stderr == ""
    loud = run_cli("-v", "ref", "q", env=env)
    assert loud.returncode == 0 and "composer: request: " in loud.stderr and "/manifests/q" in loud.stderr

    script = run_cli("completion", "bash", env=env).stdout
    probe = script + '\nCOMP_WORDS=(composer bu); COMP_CWORD=1; _composer; echo "${COMPREPLY[@]}"\n' \
                     'COMP_WORDS=(composer build --ups); COMP_CWORD=2; _composer; echo "${COMPREPLY[@]}"\n'
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True).stdout.splitlines()
    assert out == ["build", "--upstream-run --upstream-step"]


def test_inline_extras_from_python_and_ref_once_per_process(env, upstream_run):
    code = (
        "import json, composer\n"
        f"r = composer.build(upstream_run={upstream_run!r}, extra=['iniconfig==2.0.0'], name='inline')\n"
        "from composer.catalog import resolve\n"
        "import composer.api as api\n"
        "calls = []\n"
        "orig = api.resolve\n"
        "api.resolve = lambda s, n: calls.append(n) or orig(s, n)\n"
        "a = composer.ref('inline'); b = composer.ref('inline')\n"
        "print(json.dumps({'ref': r.ref, 'a': a, 'b': b, 'calls': len(calls),"
        " 'show': composer.show('inline')['inputs']}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "COMPOSER_PROGRESS": "quiet", **env})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["a"] == out["b"] == out["ref"] and out["calls"] == 1
    assert out["show"] == {"extra": None}
    # Inline extras have no file to watch; rebuild composes the recorded requirements again.
    states = _json("rebuild", "--dry-run", "inline", env=env)["results"]
    assert states[0]["status"] == "up-to-date"


def run_in_pty(args, env: dict, timeout: float = 180):
    """python -m composer ARGS on a pseudo-terminal, as a person runs it: (exit code, screen)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child
        os.environ.update({**env, "COMPOSER_PROGRESS": "auto", "COLUMNS": "120"})
        os.execv(sys.executable, [sys.executable, "-m", "composer", *args])
    screen, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            screen += chunk
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), screen.decode("utf-8", "replace")


def test_pull_and_build_show_progress_on_a_terminal(env, upstream_run, extras):
    out = build_json("--upstream-run", upstream_run, "--extra", str(extras), "--name", "tty", env=env)
    subprocess.run(["docker", "rmi", "-f", out["ref"]], capture_output=True)
    code, text = run_in_pty(["pull", "tty"], env)
    assert code == 0, text
    assert "pulling tty" in text and out["ref"] in text, text
    # Not a terminal: no bar.
    subprocess.run(["docker", "rmi", "-f", out["ref"]], capture_output=True)
    proc = run_cli("pull", "tty", env={**env, "COMPOSER_PROGRESS": "auto"})
    assert proc.returncode == 0 and "pulling" not in proc.stderr

    # A daemonless build: the install and the layer's bytes as they are written and pushed.
    more = extras.parent / "more-tty.txt"
    more.write_text(extras.read_text() + "six==1.16.0\n")
    code, text = run_in_pty(["build", "--upstream-run", upstream_run, "--extra", str(more), "--name", "tty2"], env)
    assert code == 0, text
    assert "installing 3 package(s) with uv" in text and "writing and pushing the layer" in text, text
    quiet = run_cli("build", "--upstream-run", upstream_run, "--extra", str(more), "--name", "tty3",
                    env={**env, "COMPOSER_PROGRESS": "auto"})
    assert quiet.returncode == 0 and "writing and pushing" not in quiet.stderr
