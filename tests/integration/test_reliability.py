"""Faults and concurrency with real processes: crashes at each publish step, a registry
that is killed and restarted, answers errors, resets connections or corrupts bytes, and
several builds of the same composition at once."""

from __future__ import annotations

import json
import subprocess
import sys
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import REGISTRY, build_json, one_error_line, registry_tags, run_cli
from tests.integration.servers import FaultProxy, RegistryProcess

pytestmark = pytest.mark.integration


def _path(prefix: str) -> str:
    return prefix.split("/", 1)[1]


@pytest.mark.parametrize("stage", ["after-image-push", "after-record", "after-spec-tag"])
def test_a_build_killed_at_any_step_leaves_no_name_and_a_rerun_completes(env, prefix, upstream_run, extras, stage):
    crashed = run_cli("build", "--upstream-run", upstream_run, "--extra", str(extras), "--name", "crashy",
                      env={**env, "COMPOSER_TEST_CRASH_AT": stage})
    assert crashed.returncode == 86, crashed.stderr
    tags = registry_tags(_path(prefix) + "/envs")
    assert "crashy" not in tags  # no name points at a missing or unrecorded image
    if stage != "after-spec-tag":
        assert not any(t.startswith("spec-") for t in tags)  # and no cache entry either
    missing = run_cli("ref", "crashy", env=env)
    assert missing.returncode == 3

    done = build_json("--upstream-run", upstream_run, "--extra", str(extras), "--name", "crashy", env=env)
    ref = run_cli("ref", "crashy", env=env)
    assert ref.returncode == 0 and ref.stdout.strip() == done["ref"]
    assert run_cli("show", "crashy", env=env).returncode == 0


def test_concurrent_identical_builds_end_with_one_image_and_one_record(env, prefix, upstream_run, extras, tmp_path):
    def one(i: int) -> subprocess.CompletedProcess:
        # Separate state per process (HOME, caches), as on separate machines sharing a registry.
        home = tmp_path / f"home{i}"
        home.mkdir()
        return run_cli("build", "--upstream-run", upstream_run, "--extra", str(extras), "--name", "together", "--json",
                       env={**env, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")})

    with ThreadPoolExecutor(3) as pool:
        procs = list(pool.map(one, range(3)))
    for p in procs:
        assert p.returncode == 0, p.stderr
    outs = [json.loads(p.stdout) for p in procs]
    assert len({o["digest"] for o in outs}) == 1
    assert len({o["record"] for o in outs}) == 1
    assert sorted(o["cached"] for o in outs) == [False, True, True]  # exactly one of them built
    index = json.loads(subprocess.run(
        ["curl", "-fsS", "-H", "Accept: application/vnd.oci.image.index.v1+json",
         f"http://{REGISTRY}/v2/{_path(prefix)}/envs/manifests/sha256-{outs[0]['digest'].split(':')[1]}"],
        capture_output=True, text=True, check=True).stdout)
    assert [m["digest"] for m in index["manifests"]] == [outs[0]["record"]]
    assert not any(t.startswith("lease-") for t in registry_tags(_path(prefix) + "/envs"))


def test_different_compositions_in_parallel_do_not_interfere(env, prefix, upstream_run, tmp_path):
    files = []
    for i, req in enumerate(["iniconfig==2.0.0\n", "six==1.16.0\n"]):
        f = tmp_path / f"e{i}.txt"
        f.write_text(req)
        files.append(f)
    with ThreadPoolExecutor(2) as pool:
        procs = list(pool.map(lambda i: run_cli("build", "--upstream-run", upstream_run, "--extra", str(files[i]),
                                                "--name", f"par{i}", "--json", env=env), range(2)))
    outs = [json.loads(p.stdout) for p in procs]
    assert outs[0]["digest"] != outs[1]["digest"]
    for i, out in enumerate(outs):
        assert run_cli("ref", f"par{i}", env=env).stdout.strip() == out["ref"]


def test_registry_killed_then_restarted(tmp_path, model_a, extras):
    reg = RegistryProcess(tmp_path / "reg").start()
    try:
        model = f"{reg.addr}/models/a:1"
        subprocess.run(["docker", "tag", model_a, model], check=True)
        subprocess.run(["docker", "push", model], check=True, capture_output=True)
        env = {"COMPOSER_REGISTRY": f"{reg.addr}/ml"}
        assert run_cli("record", "--run", "R", "--image", model, env=env).returncode == 0

        reg.stop()
        down = run_cli("build", "--upstream-run", "R", "--extra", str(extras), "--name", "n", env=env)
        assert down.returncode == 5
        assert reg.addr in one_error_line(down)

        reg.start()
        up = run_cli("build", "--upstream-run", "R", "--extra", str(extras), "--name", "n", "--json", env=env)
        assert up.returncode == 0, up.stderr
        assert run_cli("ref", "n", env=env).stdout.strip() == json.loads(up.stdout)["ref"]
    finally:
        reg.stop()


@pytest.mark.parametrize("mode", ["503", "reset"])
def test_transient_registry_errors_are_retried(env, prefix, upstream_run, extras, mode):
    out = build_json("--upstream-run", upstream_run, "--extra", str(extras), "--name", "flaky", env=env)
    proxy = FaultProxy(REGISTRY, mode, failures=2)
    try:
        via = {"COMPOSER_REGISTRY": f"{proxy.addr}/{_path(prefix)}", "COMPOSER_REGISTRY_ATTEMPTS": "3"}
        ref = run_cli("ref", "flaky", env=via)
        assert ref.returncode == 0, ref.stderr
        assert ref.stdout.strip() == out["ref"].replace(REGISTRY, proxy.addr)
        assert proxy.count > 2
    finally:
        proxy.close()


def test_persistent_registry_errors_end_in_one_clear_line(env, prefix, upstream_run, extras):
    build_json("--upstream-run", upstream_run, "--extra", str(extras), "--name", "down", env=env)
    proxy = FaultProxy(REGISTRY, "503", failures=10**6)
    try:
        via = {"COMPOSER_REGISTRY": f"{proxy.addr}/{_path(prefix)}", "COMPOSER_REGISTRY_ATTEMPTS": "3"}
        proc = run_cli("ref", "down", env=via)
        assert proc.returncode == 5
        line = one_error_line(proc)
        assert "3 attempt" in line and "503" in line
        assert proxy.count == 3
    finally:
        proxy.close()


def test_bytes_that_do_not_match_their_digest_are_refused(env, prefix, upstream_run, extras):
    build_json("--upstream-run", upstream_run, "--extra", str(extras), "--name", "tampered", env=env)
    proxy = FaultProxy(REGISTRY, "corrupt")
    try:
        via = {"COMPOSER_REGISTRY": f"{proxy.addr}/{_path(prefix)}"}
        for cmd in (["show", "tampered"], ["ref", "tampered"],
                    ["build", "--upstream-run", upstream_run, "--extra", str(extras), "--name", "tampered"]):
            proc = run_cli(*cmd, env=via)
            assert proc.returncode == 7, (cmd, proc.stderr)
            assert "does not match its digest" in one_error_line(proc)
    finally:
        proxy.close()


def test_a_local_cache_entry_that_lies_is_not_used(env, prefix, upstream_run, extras, tmp_path):
    env = {**env, "COMPOSER_STATE_DIR": str(tmp_path / "state")}
    first = build_json("--upstream-run", upstream_run, "--extra", str(extras), "--name", "honest", env=env)
    entry = next((tmp_path / "state" / "locks").glob("*.json"))
    # Rewrite the entry consistently (valid checksum) but with a lock that is not what was built.
    from composer.model.canonical import canonical_json, sha256_digest

    doc = json.loads(entry.read_text())
    for p in doc["body"]["lock"]["packages"]:
        if p["name"] == "iniconfig":
            p["version"] = "1.1.1"
    doc["checksum"] = sha256_digest(canonical_json(doc["body"]))
    entry.write_bytes(canonical_json(doc))
    again = build_json("--upstream-run", upstream_run, "--extra", str(extras), "--name", "honest", env=env)
    assert again["cached"] is True and again["digest"] == first["digest"] and again["spec_hash"] == first["spec_hash"]

    entry.write_bytes(b"{torn")  # a crash mid-write elsewhere: read as absent, never as valid
    third = build_json("--upstream-run", upstream_run, "--extra", str(extras), "--name", "honest", env=env)
    assert third["digest"] == first["digest"]


def test_a_builder_that_lost_the_start_race_publishes_nothing_and_uses_the_winner(prefix):
    """Two builders both read back their own lease (a write-write race): the one whose lease was
    overwritten finds out before publishing, publishes nothing, and waits for the winner."""
    import threading
    import time

    from composer.oci.client import Registry
    from composer.publish import lease as lease_mod
    from composer.settings import load_settings

    reg, repo, spec = Registry(REGISTRY), _path(prefix) + "/envs", "sha256:" + "ab" * 32
    settings = load_settings({"registry": prefix}, env={})
    published = []
    winner = {}

    def find():
        return winner.get("image")

    def build():
        # The race: another builder's lease lands after ours was read back.
        other = lease_mod._Lease(reg, repo, spec, settings)
        other.write()
        threading.Timer(1.0, lambda: winner.setdefault("image", "the winner's image")).start()
        lease_mod.confirm_ownership()  # what record_and_tag does before publishing
        published.append("loser published")
        return "the loser's image"

    start = time.monotonic()
    result, built = lease_mod.build_once(reg, repo, spec, find, build, settings)
    assert (result, built, published) == ("the winner's image", False, [])
    assert time.monotonic() - start >= 1.0
