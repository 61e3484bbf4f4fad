"""Concurrent publishers never lose a record (issue 11): eight processes build one composition
under eight names while two build different compositions under one name, in rounds. After
each round every name resolves with its own record, its history lists its version, and
exactly one of the two conflicting builds succeeded (the other failed with one line)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import one_error_line, run_cli

pytestmark = pytest.mark.integration


def _start(args, env):
    full = {**os.environ, "COMPOSER_PROGRESS": "quiet", **env}
    return subprocess.Popen([sys.executable, "-m", "composer", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=full)


def test_concurrency_soak(env, upstream_run, tmp_path):
    env = {**env, "COMPOSER_BUILDER": "daemonless", "COMPOSER_LEASE_POLL": "0.2"}
    shared = tmp_path / "shared.txt"
    shared.write_text("iniconfig==2.0.0\n")
    left, right = tmp_path / "left.txt", tmp_path / "right.txt"
    left.write_text("six==1.16.0\n")
    right.write_text("six==1.15.0\n")
    start = time.monotonic()
    for round_ in range(2):
        names = [f"soak{round_}-{i}" for i in range(8)]
        contested = f"contested{round_}"
        procs = {n: _start(["build", "--upstream-run", upstream_run, "--extra", str(shared), "--name", n, "--json"], env)
                 for n in names}
        pair = [_start(["build", "--upstream-run", upstream_run, "--extra", str(x), "--name", contested, "--json"], env)
                for x in (left, right)]
        outs = {n: p.communicate(timeout=120) for n, p in procs.items()}
        pair_outs = [p.communicate(timeout=120) for p in pair]
        for n, p in procs.items():
            assert p.returncode == 0, (n, outs[n][1])
        digests = {json.loads(outs[n][0])["digest"] for n in names}
        assert len(digests) == 1  # one composition, one image
        # Every name resolves with its own record, and its history lists its version.
        for n in names:
            shown = run_cli("show", n, "--json", env=env)
            assert shown.returncode == 0, shown.stderr
            assert json.loads(shown.stdout)["record"]["name"] == n
            hist = run_cli("history", n, "--json", env=env)
            assert hist.returncode == 0, hist.stderr
            assert [v["digest"] for v in json.loads(hist.stdout)["versions"]] == list(digests)
        # Exactly one of the conflicting builds succeeded; the other failed with one line.
        codes = sorted(p.returncode for p in pair)
        assert codes == [0, 2], [o[1] for o in pair_outs]
        loser = next(subprocess.CompletedProcess([], p.returncode, o[0], o[1]) for p, o in zip(pair, pair_outs) if p.returncode)
        line = one_error_line(loser)
        assert "different composition" in line and "--update" in line
        winner = json.loads(next(o[0] for p, o in zip(pair, pair_outs) if p.returncode == 0))
        ref = run_cli("ref", contested, env=env)
        assert ref.returncode == 0 and ref.stdout.strip() == winner["ref"]
        hist = json.loads(run_cli("history", contested, "--json", env=env).stdout)["versions"]
        assert [v["digest"] for v in hist] == [winner["digest"]]  # the loser left no version
    assert time.monotonic() - start < 90
