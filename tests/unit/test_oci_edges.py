"""The registry client on the edges a production registry shows: credentials and a foreign upload
Location, paginated lists (tags, catalog, referrers) where any failing page fails the listing,
oversized and malformed documents (exit 7, one line), 429 with Retry-After inside a bounded retry
budget, token scopes, and Docker Hub's names. Against the in-memory registry of tests/fakes."""

from __future__ import annotations

import base64
import json

import pytest

from composer.errors import RegistryError, VerificationError
from composer.model.refs import parse_image_ref
from composer.oci import transport as transport_mod
from composer.oci.client import OCI_INDEX, OCI_MANIFEST, Registry, next_link
from composer.oci.transport import RetryPolicy, covers, parse_challenge, safe_for_credentials
from tests.fakes import FakeRegistry

from tests.unit.test_oci_transport import _image, clock  # noqa: F401 - the fake clock fixture


def _login(tmp_path, monkeypatch, host: str, user_pw: str) -> None:
    auth = base64.b64encode(user_pw.encode()).decode()
    (tmp_path / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))


# -- credentials go to their own origin only ---------------------------------------------------
def test_a_foreign_upload_location_gets_no_credentials(tmp_path, monkeypatch, clock):
    with FakeRegistry(basic_auth="ci:pw") as fake:
        port = fake.host.rsplit(":", 1)[1]
        fake.location_host = f"localhost:{port}"  # the same server under another name: another origin
        _login(tmp_path, monkeypatch, fake.host, "ci:pw")
        reg = Registry(fake.host)
        with pytest.raises(RegistryError) as err:
            reg.push_blob("envs", b"secret-free", "x/y")
        assert err.value.exit_code == 5 and "refused access" in err.value.one_line()
        foreign = [a for m, t, host, a in fake.authorizations if host == f"localhost:{port}"]
        own = [a for m, t, host, a in fake.authorizations if host == fake.host]
        assert foreign and all(a == [] for a in foreign)  # the PUT to the other host carried nothing
        assert [f"Basic {base64.b64encode(b'ci:pw').decode()}"] in own


def test_credentials_only_over_tls_or_to_loopback():
    assert safe_for_credentials("https://reg.example/v2/")
    assert safe_for_credentials("http://127.0.0.1:5000/v2/") and safe_for_credentials("http://[::1]:5000/v2/")
    assert safe_for_credentials("http://localhost:5000/v2/")
    assert not safe_for_credentials("http://reg.lab:5000/v2/")
    t = transport_mod.Transport("reg.example", "https://reg.example")
    assert t.own("https://reg.example/v2/x") and t.own("https://reg.example:443/v2/x")
    assert not t.own("http://reg.example/v2/x")  # https -> http: never
    assert not t.own("https://reg.example:8443/v2/x") and not t.own("https://cdn.example/blob")


def test_an_insecure_non_loopback_registry_asking_for_credentials_gets_none(tmp_path, monkeypatch, clock):
    with FakeRegistry(basic_auth="ci:pw") as fake:
        _login(tmp_path, monkeypatch, fake.host, "ci:pw")
        t = transport_mod.Transport("reg.lab:5000", fake.url)
        monkeypatch.setattr(transport_mod, "safe_for_credentials", lambda url: False)  # as for http://reg.lab
        with pytest.raises(RegistryError) as err:
            t.request("GET", "/v2/envs/tags/list", scope="repository:envs:pull")
        assert "asks for credentials over plain HTTP" in err.value.one_line()
        assert all(a == [] for *_, a in fake.authorizations)


# -- pagination ---------------------------------------------------------------------------
def test_every_page_of_tags_catalog_and_referrers_is_read(clock):
    with FakeRegistry(page_size=2, referrers_api=True) as fake:
        reg = Registry(fake.host)
        body = _image(fake)
        for tag in ("a", "b", "c", "d", "e"):
            reg.put_manifest("envs", tag, body, OCI_MANIFEST)
        reg.put_manifest("other", "x", _image(fake, "other"), OCI_MANIFEST)
        reg.put_manifest("third", "x", _image(fake, "third"), OCI_MANIFEST)
        assert reg.tags("envs") == ["a", "b", "c", "d", "e"]
        assert len([t for m, t in fake.requests if "/tags/list" in t]) == 3
        assert reg.catalog() == ["envs", "other", "third"]
        subject = reg.head_manifest("envs", "a")
        from composer.oci.artifacts import push_artifact

        for i in range(3):
            push_artifact(reg, "envs", {"i": i}, "application/x-test", {"i": str(i)}, subject=subject)
        assert len(reg.referrers("envs", subject.digest, "application/x-test")) == 3


def test_a_failing_later_page_fails_the_whole_listing(clock):
    with FakeRegistry(page_size=2) as fake:
        reg = Registry(fake.host, attempts=2)
        for tag in ("a", "b", "c"):
            reg.put_manifest("envs", tag, _image(fake), OCI_MANIFEST)
        fake.fail_next("GET", "last=", 503, times=2)
        with pytest.raises(RegistryError, match="failed after 2 attempts"):
            reg.tags("envs")
        fake.fail_next("GET", "last=", 404, times=10)  # a later page that vanished is no "empty"
        with pytest.raises(RegistryError, match="HTTP 404"):
            reg.tags("envs")


def test_link_headers():
    assert next_link('</v2/x/tags/list?n=2&last=b>; rel="next"') == "/v2/x/tags/list?n=2&last=b"
    assert next_link('<https://a/b>; rel="prev", <https://a/c>; rel=next') == "https://a/c"
    assert next_link(None) is None and next_link('<x>; rel="last"') is None


# -- sizes and malformed documents --------------------------------------------------------------
def test_an_oversized_manifest_is_refused_before_it_is_read_whole(clock):
    with FakeRegistry() as fake:
        big = json.dumps({"schemaVersion": 2, "pad": "x" * (5 << 20)}).encode()
        fake.put_raw_manifest("envs", "big", big)
        with pytest.raises(VerificationError) as err:
            Registry(fake.host).get_manifest("envs", "big")
        assert err.value.exit_code == 7 and "larger than 4 MiB" in err.value.one_line()


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_malformed_manifest_json_is_one_verification_error(clock, body):
    with FakeRegistry() as fake:
        fake.put_raw_manifest("envs", "bad", body)
        with pytest.raises(VerificationError) as err:
            Registry(fake.host).get_manifest("envs", "bad")
        assert err.value.exit_code == 7 and "manifest envs:bad" in err.value.one_line()


def test_a_malformed_referrers_index_is_a_verification_error(clock):
    with FakeRegistry() as fake:
        subject = "sha256:" + "a" * 64
        fake.put_raw_manifest("envs", "sha256-" + "a" * 64, json.dumps({"manifests": "nope"}).encode(), OCI_INDEX)
        with pytest.raises(VerificationError, match="malformed manifests list"):
            Registry(fake.host).referrers("envs", subject)


# -- retries ---------------------------------------------------------------------------------
def test_429_waits_what_retry_after_asks(clock):
    with FakeRegistry() as fake:
        reg = Registry(fake.host)
        reg.put_manifest("envs", "v1", _image(fake), OCI_MANIFEST)
        fake.fail_next("GET", "/tags/list", 429, times=2, headers={"Retry-After": "7"})
        assert reg.tags("envs") == ["v1"]
        assert clock.sleeps == [7.0, 7.0]


def test_retries_stop_at_the_time_budget_with_one_line(clock):
    with FakeRegistry() as fake:
        reg = Registry(fake.host, retry=RetryPolicy(attempts=10, backoff=1.0, budget=5.0))
        fake.fail_next("GET", "/tags/list", 503, times=3)
        with pytest.raises(RegistryError) as err:
            reg.tags("envs")
        assert clock.sleeps == [1.0, 2.0]  # a third wait (4 s) would pass the 5 s budget
        assert "failed after 3 attempts: HTTP 503" in err.value.one_line() and "retry budget" in err.value.one_line()
        fake.fail_next("GET", "/tags/list", 429, times=1, headers={"Retry-After": "3600"})
        with pytest.raises(RegistryError, match="it asked to wait 3600 s"):
            reg.tags("envs")


# -- tokens and Docker Hub -----------------------------------------------------------------------
def test_challenges_and_scope_coverage():
    kind, params = parse_challenge('Bearer realm="https://auth.example/token",service="reg",scope="repository:a:pull,push",'
                                   'error="insufficient_scope"')
    assert kind == "bearer" and params == {"realm": "https://auth.example/token", "service": "reg",
                                           "scope": "repository:a:pull,push", "error": "insufficient_scope"}
    assert covers(["repository:a:pull,push"], ["repository:a:pull"])
    assert not covers(["repository:a:pull"], ["repository:a:pull,push"])
    assert not covers(["repository:a:pull,push"], ["repository:a:pull,push", "repository:b:pull"])
    assert covers(["repository:a:pull,push", "repository:b:pull"], ["repository:b:pull"])


def test_docker_hub_names_map_as_docker_maps_them():
    assert parse_image_ref("docker.io/python:3.11").name == "docker.io/library/python"
    assert parse_image_ref("index.docker.io/org/img@sha256:" + "b" * 64).name == "docker.io/org/img"
    assert parse_image_ref("registry.example/python:3.11").name == "registry.example/python"
    reg = Registry("docker.io")
    assert reg.host == "docker.io" and reg.base == "https://registry-1.docker.io"
