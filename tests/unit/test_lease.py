"""composer.publish.lease against the in-memory registry: one builder per spec, waiting for a
live lease, taking over a stale one, and losing a race (confirm_ownership)."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from composer.errors import BuildError
from composer.model.records import utc_now
from composer.oci.artifacts import push_artifact, read_artifact
from composer.publish.lease import (
    LEASE_TYPE, LostLease, Observations, build_once, confirm_ownership, lease_tag, pid_namespace,
)

SPEC = "sha256:" + "5e" * 32


def foreign_lease(lab, *, owner: str = "someone-else", host: str = "build-host-2", pid: int = 4242,
                  renewed: str = "", pid_ns: "str | None" = "other-boot/pid:[1]") -> None:
    """Another builder's lease, as its _Lease.write would store it."""
    doc = {"owner": owner, "host": host, "pid": pid, "pid_namespace": pid_ns, "spec_hash": SPEC,
           "renewed": renewed or utc_now()}
    push_artifact(lab.reg, lab.envs, doc, LEASE_TYPE, {}, tag=lease_tag(SPEC))


def current_lease(lab):
    got = read_artifact(lab.reg, lab.envs, lease_tag(SPEC), LEASE_TYPE)
    return got[0] if got else None


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


class Calls:
    """find/build stand-ins that count their calls; find answers `result` once it is published."""

    def __init__(self):
        self.found = None
        self.finds = self.builds = 0

    def find(self):
        self.finds += 1
        return self.found

    def build(self):
        self.builds += 1
        return "built"


def test_build_once_builds_once_and_releases_the_lease(bare_lab):
    calls = Calls()
    seen = []

    def build():
        seen.append(current_lease(bare_lab))  # held while building
        return calls.build()

    assert build_once(bare_lab.reg, bare_lab.envs, SPEC, calls.find, build, bare_lab.settings) == ("built", True)
    assert calls.builds == 1
    (held,) = seen
    assert held["spec_hash"] == SPEC and held["pid"] == os.getpid() and held["host"] == socket.gethostname()
    assert current_lease(bare_lab) is None and lease_tag(SPEC) not in bare_lab.env_tags()  # released


def test_a_result_found_first_takes_no_lease(bare_lab):
    calls = Calls()
    calls.found = "already there"
    assert build_once(bare_lab.reg, bare_lab.envs, SPEC, calls.find, calls.build, bare_lab.settings) == ("already there", False)
    assert calls.builds == 0
    assert not any("lease-" in target for _, target in bare_lab.fake.requests)


def test_a_live_foreign_lease_makes_the_caller_wait_and_use_its_result(bare_lab):
    foreign_lease(bare_lab)  # renewed just now, on another host
    calls = Calls()

    def other_builder_finishes():
        time.sleep(0.15)
        calls.found = "theirs"

    threading.Thread(target=other_builder_finishes, daemon=True).start()
    start = time.monotonic()
    assert build_once(bare_lab.reg, bare_lab.envs, SPEC, calls.find, calls.build, bare_lab.settings) == ("theirs", False)
    assert time.monotonic() - start >= 0.12 and calls.finds > 2  # polled while waiting
    assert calls.builds == 0
    assert current_lease(bare_lab)["owner"] == "someone-else"  # never written over


def test_a_live_lease_held_by_a_running_process_on_this_host_is_waited_for(bare_lab):
    foreign_lease(bare_lab, host=socket.gethostname(), pid=os.getpid())
    settings = dataclasses.replace(bare_lab.settings, lease_wait=0.15)
    calls = Calls()
    with pytest.raises(BuildError, match="waited too long"):
        build_once(bare_lab.reg, bare_lab.envs, SPEC, calls.find, calls.build, settings)
    assert calls.builds == 0


def test_a_lease_seen_unchanged_for_the_stale_time_is_taken_over(bare_lab):
    foreign_lease(bare_lab)  # stamped now: the stamp is not what decides
    settings = dataclasses.replace(bare_lab.settings, lease_stale=0.3)
    calls = Calls()
    start = time.monotonic()
    assert build_once(bare_lab.reg, bare_lab.envs, SPEC, calls.find, calls.build, settings) == ("built", True)
    assert 0.3 <= time.monotonic() - start < 3  # watched for the stale time, by this machine's clock


def test_a_dead_holder_in_our_own_pid_namespace_is_taken_over_at_once(bare_lab):
    foreign_lease(bare_lab, host=socket.gethostname(), pid=dead_pid(), pid_ns=pid_namespace())
    calls = Calls()
    seen = []

    def build():
        seen.append(current_lease(bare_lab)["owner"])
        return calls.build()

    start = time.monotonic()
    assert build_once(bare_lab.reg, bare_lab.envs, SPEC, calls.find, build, bare_lab.settings) == ("built", True)
    assert time.monotonic() - start < 2  # no waiting out the clock
    assert calls.builds == 1 and seen[0] != "someone-else"


@pytest.mark.parametrize("pid_ns", [None, "other-boot/pid:[4026531836]"])
def test_a_reused_hostname_is_not_a_shared_pid_namespace(bare_lab, pid_ns):
    """Containers with host networking (or another machine) share the hostname, not the pids:
    a pid that is dead here says nothing about a holder there, which keeps its lease."""
    foreign_lease(bare_lab, host=socket.gethostname(), pid=dead_pid(), pid_ns=pid_ns)
    settings = dataclasses.replace(bare_lab.settings, lease_wait=0.4)
    calls = Calls()
    with pytest.raises(BuildError, match="waited too long"):
        build_once(bare_lab.reg, bare_lab.envs, SPEC, calls.find, calls.build, settings)
    assert calls.builds == 0 and current_lease(bare_lab)["owner"] == "someone-else"


@pytest.mark.parametrize("stamp", ["2020-01-01T00:00:00Z", "2099-01-01T00:00:00Z", "not a time"])
def test_skewed_clocks_decide_nothing(bare_lab, stamp):
    """A holder whose clock is years behind (or ahead) but who keeps renewing keeps its lease; the
    same stamp left unrenewed goes stale after the stale time of local observation, not never."""
    settings = dataclasses.replace(bare_lab.settings, lease_stale=0.4, lease_wait=1.0, lease_poll=0.05)
    stop = threading.Event()

    def holder_renews():
        n = 0
        while not stop.wait(0.1):
            n += 1
            foreign_lease(bare_lab, owner=f"someone-else", renewed=stamp, pid=4242 + n)  # a new document each time

    foreign_lease(bare_lab, renewed=stamp)
    renewer = threading.Thread(target=holder_renews, daemon=True)
    renewer.start()
    calls = Calls()
    try:
        with pytest.raises(BuildError, match="waited too long"):
            build_once(bare_lab.reg, bare_lab.envs, SPEC, calls.find, calls.build, settings)
    finally:
        stop.set()
        renewer.join()
    assert calls.builds == 0  # a live lease is never taken, whatever its stamp says
    settings = dataclasses.replace(settings, lease_wait=5.0)
    start = time.monotonic()
    assert build_once(bare_lab.reg, bare_lab.envs, SPEC, calls.find, calls.build, settings) == ("built", True)
    assert 0.4 <= time.monotonic() - start < 3  # the abandoned one is taken after the stale time


def test_observations_restart_when_the_lease_changes():
    now = [0.0]
    seen = Observations(clock=lambda: now[0])
    assert seen.unchanged_for("sha256:a") == 0
    now[0] = 50
    assert seen.unchanged_for("sha256:a") == 50
    assert seen.unchanged_for("sha256:b") == 0  # renewed: watched afresh
    now[0] = 70
    assert seen.unchanged_for("sha256:b") == 20


def test_confirm_ownership_raises_lost_lease_when_another_builder_overwrote_it(bare_lab):
    """A race at the start: both read back their own lease; the one overwritten publishes nothing
    and uses the winner's result."""
    calls = Calls()
    outcomes = []

    def build():
        calls.builds += 1
        confirm_ownership()  # still ours: nothing happens
        foreign_lease(bare_lab, owner="winner", host=socket.gethostname(), pid=os.getpid())
        try:
            confirm_ownership()
        except LostLease:
            outcomes.append("lost")
            calls.found = "winner's"  # the winner publishes
            raise
        return "ours"

    got = build_once(bare_lab.reg, bare_lab.envs, SPEC, calls.find, build, bare_lab.settings)
    assert got == ("winner's", False) and outcomes == ["lost"] and calls.builds == 1


def test_confirm_ownership_raises_when_the_lease_is_gone(bare_lab):
    def build():
        (desc,) = [d for d in [bare_lab.reg.head_manifest(bare_lab.envs, lease_tag(SPEC))] if d]
        bare_lab.reg.delete_manifest(bare_lab.envs, desc.digest)
        with pytest.raises(LostLease):
            confirm_ownership()
        return "checked"

    assert build_once(bare_lab.reg, bare_lab.envs, SPEC, lambda: None, build, bare_lab.settings) == ("checked", True)


def test_confirm_ownership_outside_a_lease_does_nothing(bare_lab):
    confirm_ownership()
    assert bare_lab.fake.requests == []


def test_the_holder_renews_its_lease_while_building(bare_lab):
    settings = dataclasses.replace(bare_lab.settings, lease_renew=0.04)

    def build():
        time.sleep(0.25)  # several renewal periods
        assert current_lease(bare_lab)["pid"] == os.getpid()
        return "built"

    assert build_once(bare_lab.reg, bare_lab.envs, SPEC, lambda: None, build, settings) == ("built", True)
    writes = [t for m, t in bare_lab.fake.requests if m == "PUT" and t.endswith(f"/manifests/{lease_tag(SPEC)}")]
    assert len(writes) >= 3  # the first write and renewals
    assert current_lease(bare_lab) is None


def test_the_renewer_stops_once_the_lease_is_lost(bare_lab):
    settings = dataclasses.replace(bare_lab.settings, lease_renew=0.1)

    def build():
        # Overwritten at once, well before the first renewal is due (no read-then-write race).
        foreign_lease(bare_lab, owner="winner", host=socket.gethostname(), pid=os.getpid())
        time.sleep(0.35)  # several renewal periods
        return "built"

    build_once(bare_lab.reg, bare_lab.envs, SPEC, lambda: None, build, settings)
    assert current_lease(bare_lab)["owner"] == "winner"  # never written over, nor deleted
