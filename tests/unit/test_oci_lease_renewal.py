"""The build lease's renewer on a registry that stops answering: a renewal that fails is tried
again at the next tick (a token that expired meanwhile is fetched again by the client), and only
renewals failing for longer than a lease stays live lose it: the build then publishes nothing and
ends with one line."""

from __future__ import annotations

import dataclasses
import time

import pytest

from composer.errors import RegistryError
from composer.publish.lease import build_once, confirm_ownership, lease_tag

SPEC = "sha256:" + "c" * 64


def _settings(lab, **kw):
    return dataclasses.replace(lab.settings, lease_renew=0.05, registry_attempts=1, **kw)


def test_renewals_failing_past_the_stale_time_lose_the_lease_in_one_line(bare_lab):
    settings = _settings(bare_lab, lease_stale=0.2)
    published = []

    def build():
        bare_lab.fake.fail_next("GET", f"/manifests/{lease_tag(SPEC)}", 503, times=1000)
        time.sleep(0.6)  # the registry is down for longer than the lease lives
        confirm_ownership()  # what the pipeline does right before publishing
        published.append(True)
        return "built"

    with pytest.raises(RegistryError) as err:
        build_once(bare_lab.reg, bare_lab.envs, SPEC, lambda: None, build, settings)
    line = err.value.one_line()
    assert line.startswith(f"lost the build lease for spec {SPEC[:19]}: it could not be renewed for 0.2 s")
    assert "nothing was published" in line and err.value.exit_code == 5
    assert published == []


def test_a_renewal_that_fails_briefly_is_tried_again_and_the_build_publishes(bare_lab):
    settings = _settings(bare_lab, lease_stale=5.0)

    def build():
        bare_lab.fake.fail_next("GET", f"/manifests/{lease_tag(SPEC)}", 503, times=3)
        time.sleep(0.5)
        confirm_ownership()
        return "built"

    assert build_once(bare_lab.reg, bare_lab.envs, SPEC, lambda: None, build, settings) == ("built", True)
    renewals = [t for m, t in bare_lab.fake.requests if m == "PUT" and t.endswith(f"/manifests/{lease_tag(SPEC)}")]
    assert len(renewals) >= 3  # the first write, and renewals after the failures
