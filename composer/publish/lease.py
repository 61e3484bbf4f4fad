"""One builder per spec, across processes and machines that share a registry.

Registries have no compare-and-swap, so the lease is "last writer wins": a
builder writes its lease under lease-<spec hash> and reads it back; a builder
that sees another's live lease waits for the spec tag and then uses that image.
Builders that raced (both read back their own lease) both build, but only the
last writer publishes: each checks the lease again right before its record. The holder
renews the lease while it builds; a lease that a waiter has seen unchanged for the stale
time (by its own monotonic clock: no two machines' clocks are compared), or whose holder is
a dead process in the waiter's own pid namespace (not merely on a host of the same name),
is taken over. This keeps concurrent
identical builds to one image and one record without any local shared state.
"""

from __future__ import annotations

import contextvars
import os
import socket
import threading
import time
import uuid
from typing import Callable, Optional, Tuple, TypeVar

from composer.errors import BuildError, ComposerError, RegistryError
from composer.model.canonical import digest_hex
from composer.model.records import utc_now
from composer.oci.artifacts import push_artifact, read_artifact
from composer.oci.client import Registry
from composer.settings import Settings

LEASE_TYPE = "application/vnd.composer.lease.v1+json"
T = TypeVar("T")


def lease_tag(spec: str) -> str:
    return f"lease-{digest_hex(spec)}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pid_namespace() -> Optional[str]:
    """This process's pid namespace, as `<boot id>/<namespace inode>`: equal only for processes
    that share one pid namespace on one running kernel (a hostname is shared by containers
    with host networking, and reused across machines; this is not). None when unknown."""
    try:
        boot = open("/proc/sys/kernel/random/boot_id", encoding="ascii").read().strip()
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return f"{boot}/{ns}" if boot and ns else None


class Observations:
    """Staleness by local observation: a lease is stale once this process has seen the very
    same lease document (its manifest digest: every renewal writes a new one) for longer than
    the stale time, measured with this machine's monotonic clock. No other machine's clock
    is ever compared with ours, so a skewed clock can neither take a live lease nor keep a
    dead one."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.seen: Optional[Tuple[str, float]] = None

    def unchanged_for(self, digest: str) -> float:
        now = self.clock()
        if self.seen is None or self.seen[0] != digest:
            self.seen = (digest, now)
        return now - self.seen[1]


class _Lease:
    def __init__(self, reg: Registry, repo: str, spec: str, settings: Settings):
        self.reg, self.repo, self.spec, self.settings = reg, repo, spec, settings
        self.owner = uuid.uuid4().hex
        self.host = socket.gethostname()
        self.digest: Optional[str] = None
        self._stop = threading.Event()
        self._renewer: Optional[threading.Thread] = None
        self.taken_over = False  # another builder wrote the lease: its image is used
        self.failed: Optional[str] = None  # renewals failed for longer than a lease lives: why

    def _doc(self) -> dict:
        # renewed: for people reading the lease; staleness never compares it with a clock here.
        return {"owner": self.owner, "host": self.host, "pid": os.getpid(), "pid_namespace": pid_namespace(),
                "spec_hash": self.spec, "renewed": utc_now()}

    def read(self) -> Optional[dict]:
        got = read_artifact(self.reg, self.repo, lease_tag(self.spec), LEASE_TYPE)
        if not got or not isinstance(got[0], dict):
            return None
        return {**got[0], "_digest": got[1].digest}

    def write(self, reg: Optional[Registry] = None) -> None:
        desc = push_artifact(reg or self.reg, self.repo, self._doc(), LEASE_TYPE, {}, tag=lease_tag(self.spec))
        self.digest = desc.digest

    def stale(self, lease: dict, seen: Optional[Observations] = None) -> bool:
        """Is another builder's lease abandoned? Its holder is dead in our own pid namespace
        (checked only where the namespace is known to be shared: a hostname is not enough), or
        this process has watched the same lease document go unrenewed for the stale time."""
        ns = lease.get("pid_namespace")
        pid = lease.get("pid")
        if ns and ns == pid_namespace() and isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 \
                and pid != os.getpid() and not _pid_alive(pid):
            return True  # its holder died in this pid namespace: no need to wait out the clock
        seen = seen if seen is not None else Observations()
        return seen.unchanged_for(str(lease.get("_digest") or lease.get("owner"))) > self.settings.lease_stale

    def _renew(self) -> None:
        """Renew every lease_renew seconds. The clone keeps the client's credentials and fetches
        new tokens as they expire. A failed renewal is tried again at the next tick; once
        renewals have failed for longer than a lease stays live (another builder may have taken
        it over), the lease is lost and the build does not publish (confirm_ownership)."""
        reg = self.reg.clone()  # a client of its own: HTTP sessions are not shared across threads
        renewed = time.monotonic()
        while not self._stop.wait(self.settings.lease_renew):
            try:
                got = read_artifact(reg, self.repo, lease_tag(self.spec), LEASE_TYPE)
                if got is None or not isinstance(got[0], dict) or got[0].get("owner") != self.owner:
                    self.taken_over = True
                    return  # lost to another builder: never write over its lease
                self.write(reg)
                renewed = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - tried again at the next tick, until the lease would go stale
                if time.monotonic() - renewed > self.settings.lease_stale:
                    self.failed = exc.one_line() if isinstance(exc, ComposerError) else type(exc).__name__
                    return

    def hold(self) -> None:
        self._renewer = threading.Thread(target=self._renew, daemon=True)
        self._renewer.start()

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=30)
        try:
            if self.digest:
                self.reg.delete_manifest(self.repo, self.digest)
        except Exception:  # a lease left behind goes stale; it never decides anything alone
            pass


class LostLease(Exception):
    """Another builder took the lease over while this one was building."""


_ACTIVE: "contextvars.ContextVar[Optional[_Lease]]" = contextvars.ContextVar("composer_lease", default=None)


def confirm_ownership() -> None:
    """Called right before a build publishes its record: raise LostLease when another builder
    wrote the lease after this one (a race at the start). Its image is then not published;
    the winner's is used. Outside a lease this does nothing."""
    lease = _ACTIVE.get()
    if lease is None:
        return
    if lease.failed:
        raise RegistryError(
            f"lost the build lease for spec {lease.spec[:19]}: it could not be renewed for {lease.settings.lease_stale:g} s "
            f"({lease.failed.split(';')[0]}), so another builder may have taken over",
            "nothing was published; rerun the build once the registry answers",
        )
    current = lease.read()
    if current is None or current.get("owner") != lease.owner:
        raise LostLease()


def build_once(reg: Registry, repo: str, spec: str, find: Callable[[], Optional[T]], build: Callable[[], T],
               settings: Settings) -> Tuple[T, bool]:
    """find() or build() under the spec's lease: (result, True if this process built it).

    No settling pause on the way in: racing builders that both read back their own lease
    both start, and the ownership check before publishing (confirm_ownership) lets only
    the last writer publish; the others then wait for its spec tag.
    """
    deadline = time.monotonic() + settings.lease_wait
    poll = settings.lease_poll
    seen = Observations()
    while time.monotonic() < deadline:
        found = find()
        if found is not None:
            return found, False
        lease = _Lease(reg, repo, spec, settings)
        current = lease.read()
        if current is not None and not lease.stale(current, seen):
            time.sleep(poll)  # another builder holds it: wait for its spec tag
            continue
        lease.write()
        current = lease.read()
        if current is None or current.get("owner") != lease.owner:
            continue  # another builder wrote after us and won
        found = find()  # the previous holder may have finished just before we took over
        if found is not None:
            lease.release()
            return found, False
        lease.hold()
        token = _ACTIVE.set(lease)
        try:
            return build(), True
        except LostLease:
            continue
        finally:
            _ACTIVE.reset(token)
            lease.release()
    raise BuildError(f"waited too long for another build of spec {spec[:19]}", "check the other build, or rerun")
