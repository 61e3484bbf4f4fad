"""The fast paths of issue 14 through the real CLI and registry: a cold daemonless build that
installs while it takes its lease and leaves no staging directory behind, a cache hit that only
reads (and few requests), and the run records a composed environment gets, with their history."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import build_json, run_cli

pytestmark = pytest.mark.integration

REQUEST = re.compile(r'"(GET|HEAD|POST|PUT|PATCH|DELETE) (\S+) HTTP/1\.1" (\d{3})')


def _requests(stderr: str):
    return [(m.group(1), m.group(2), int(m.group(3))) for m in REQUEST.finditer(stderr)]


def test_cold_build_leaves_no_staging_and_a_hit_only_reads(env, upstream_run, extras, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    local = {**env, "TMPDIR": str(tmp), "COMPOSER_BUILDER": "daemonless"}
    args = ("--upstream-run", upstream_run, "--extra", str(extras), "--name", "fast", "--run-id", "FastFlow/1")

    cold = run_cli("-v", "build", *args, "--json", env=local)
    assert cold.returncode == 0, cold.stderr
    built = json.loads(cold.stdout)
    assert built["cached"] is False and built["builder"] == "daemonless"
    assert list(tmp.iterdir()) == []  # the staging prefix (removed in a thread) is gone once the process is
    cold_requests = _requests(cold.stderr)
    assert any(m == "PATCH" for m, _, _ in cold_requests)  # the layer, streamed
    assert all(status < 500 for _, _, status in cold_requests)

    hit = run_cli("-v", "build", *args, "--json", env=local)
    assert hit.returncode == 0, hit.stderr
    again = json.loads(hit.stdout)
    assert again["cached"] is True and again["digest"] == built["digest"]
    asked = _requests(hit.stderr)
    assert asked and {m for m, _, _ in asked} <= {"GET", "HEAD"}  # everything in place: nothing written
    # 17: the upstream's run record, the spec tag, the image's records, the name and its history,
    # and (--run-id) that the run id's record is this image's (the name checked first).
    assert len(asked) <= 17, asked
    assert list(tmp.iterdir()) == []


def test_composed_run_records_are_listed_in_their_runs_history(env, upstream_run, extras, tmp_path):
    first = build_json("--upstream-run", upstream_run, "--extra", str(extras), "--name", "hist", env=env)
    more = tmp_path / "more.txt"
    more.write_text("cattrs>=23.1,<24.2\niniconfig==2.0.0\nsix==1.16.0\n")
    second = build_json("--upstream-run", upstream_run, "--extra", str(more), "--name", "hist", "--update", env=env)
    assert first["digest"] != second["digest"]

    proc = run_cli("history", "--run", "hist", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    versions = json.loads(proc.stdout)["versions"]
    assert [v["reason"] for v in versions] == ["composed", "composed"]  # the replaced run record stays listed
    assert len({v["record"] for v in versions}) == 2
    shown = run_cli("show", "hist", "--json", env=env)
    assert shown.returncode == 0 and json.loads(shown.stdout)["ref"].endswith(second["digest"])
