"""tests/fakes/registry.py: composer's own registry client against the fake, and the fake's
answers checked directly with requests (the ones it was built to imitate from distribution
2.8: 404/400 error codes, Accept negotiation, upload sessions, mounts, pagination, referrers)."""

from __future__ import annotations

import hashlib
import json

import pytest
import requests

from composer.errors import NotFoundError, RegistryError
from composer.oci.client import OCI_EMPTY, OCI_INDEX, OCI_MANIFEST, Descriptor, Registry
from tests.fakes import FakeRegistry, registry_fixture

fake_registry = pytest.fixture(registry_fixture)

LAYER = "application/vnd.oci.image.layer.v1.tar"
RECORD = "application/vnd.composer.record.v1+json"
ACCEPT = {"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def manifest(config: bytes = b"{}", layers=(), **extra) -> bytes:
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
           "config": {"mediaType": OCI_EMPTY, "digest": digest(config), "size": len(config)},
           "layers": [{"mediaType": LAYER, "digest": digest(l), "size": len(l)} for l in layers], **extra}
    return json.dumps(doc).encode()


def index(*manifests: bytes) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": digest(m), "size": len(m)} for m in manifests]}).encode()


def push_image(fake: FakeRegistry, repo: str, tag: str, layer: bytes = b"layer") -> bytes:
    """An image stored in the fake without HTTP (blobs) and over HTTP (its manifest)."""
    fake.put_blob(repo, b"{}")
    fake.put_blob(repo, layer)
    body = manifest(layers=[layer])
    r = requests.put(f"{fake.url}/v2/{repo}/manifests/{tag}", data=body, headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 201, r.text
    return body


def codes(resp: requests.Response) -> list:
    return [e["code"] for e in resp.json()["errors"]]


@pytest.fixture
def client(fake_registry, tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    return Registry(fake_registry.host, attempts=2)


# -- composer's client against the fake ------------------------------------------------------

def test_client_push_and_read_back(fake_registry, client, tmp_path):
    repo = "envs/team"
    cfg = client.push_blob(repo, b"{}", OCI_EMPTY)
    path = tmp_path / "layer"
    path.write_bytes(b"layer bytes" * 1000)
    layer = client.upload_blob(repo, digest(path.read_bytes()), 11000, path=path, media_type=LAYER)
    assert fake_registry.blob(repo, layer.digest) == path.read_bytes()
    assert client.get_blob(repo, cfg.digest) == b"{}" and client.blob_size(repo, layer.digest) == 11000

    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg.to_dict(),
                       "layers": [layer.to_dict()]}).encode()
    desc, subject_processed = client.put_manifest(repo, "v1", body, OCI_MANIFEST)
    assert desc == Descriptor(OCI_MANIFEST, digest(body), len(body)) and subject_processed is False
    assert client.head_manifest(repo, "v1") == desc
    assert client.get_manifest(repo, desc.digest) == (body, desc)
    assert fake_registry.manifest(repo, "v1") == body and client.tags(repo) == ["v1"]

    fake_registry.requests.clear()
    client.push_blob(repo, b"{}", OCI_EMPTY)  # this client pushed it: no request at all
    assert fake_registry.requests == []
    client.clone().push_blob(repo, b"{}", OCI_EMPTY)  # another client: one HEAD, no upload
    assert [m for m, _ in fake_registry.requests] == ["HEAD"]


def test_client_sees_absence_as_none(fake_registry, client):
    assert client.head_manifest("envs", "nope") is None
    assert client.get_manifest("envs", digest(b"x")) is None
    assert client.tags("envs") == [] and client.blob_size("envs", digest(b"x")) is None
    with pytest.raises(NotFoundError):
        client.get_blob("envs", digest(b"x"))


def test_client_empty_blob_goes_chunked(fake_registry, client):
    desc = client.push_blob("envs", b"", "application/octet-stream")  # requests streams a 0-length body chunked
    assert fake_registry.blob("envs", desc.digest) == b""


def test_client_tag_copies_exact_bytes(fake_registry, client):
    body = push_image(fake_registry, "envs", "v1")
    client.tag("envs", digest(body), "spec-abc", "latest")
    assert fake_registry.manifest("envs", "latest") == body and fake_registry.tags("envs") == ["latest", "spec-abc", "v1"]
    fake_registry.requests.clear()
    client.tag("envs", digest(body), "latest")  # already there: no PUT
    assert [m for m, _ in fake_registry.requests] == ["HEAD"]
    with pytest.raises(NotFoundError):
        client.tag("envs", digest(b"missing"), "x")


def test_client_put_manifest_refused_for_missing_content(fake_registry):
    client = Registry(fake_registry.host, attempts=1)  # more attempts would only wait for the blob
    fake_registry.put_blob("envs", b"{}")
    with pytest.raises(RegistryError, match="MANIFEST_BLOB_UNKNOWN"):
        client.put_manifest("envs", "v1", manifest(layers=[b"never pushed"]), OCI_MANIFEST)
    with pytest.raises(RegistryError, match="MANIFEST_BLOB_UNKNOWN"):
        client.put_manifest("envs", "hist", index(manifest()), OCI_INDEX)
    assert fake_registry.tags("envs") == []


def test_client_mount(fake_registry, client):
    blob = fake_registry.put_blob("bases/python", b"base layer")
    assert client.mount_blob("envs", blob, "bases/python") is True
    assert fake_registry.blob("envs", blob) == b"base layer"
    assert client.mount_blob("envs", digest(b"elsewhere"), "bases/python") is False
    assert fake_registry.upload_sessions() == 0  # the declined mount's session was cancelled
    assert fake_registry.blob("envs", digest(b"elsewhere")) is None


def test_client_delete_manifest(fake_registry, client):
    body = push_image(fake_registry, "envs", "v1")
    client.tag("envs", digest(body), "latest")
    client.delete_manifest("envs", digest(body))
    assert fake_registry.tags("envs") == [] and client.head_manifest("envs", "v1") is None
    assert client.tags("envs") == []  # 2.8 answers {"tags": null} once the last tag is gone
    client.delete_manifest("envs", digest(body))  # already gone is fine
    with FakeRegistry(delete_enabled=False) as locked:
        push_image(locked, "envs", "v1")
        with pytest.raises(RegistryError, match="does not allow deletes"):
            Registry(locked.host, attempts=1).delete_manifest("envs", digest(body))


def _record(subject: bytes) -> bytes:
    return manifest(artifactType=RECORD, annotations={"dev.composer.kind": "build"},
                    subject={"mediaType": OCI_MANIFEST, "digest": digest(subject), "size": len(subject)})


def test_client_referrers_by_tag_schema(fake_registry, client):
    image = push_image(fake_registry, "envs", "v1")
    record = _record(image)
    desc, subject_processed = client.put_manifest("envs", digest(record), record, OCI_MANIFEST)
    assert subject_processed is False  # distribution 2.8: no referrers API
    assert client.referrers("envs", digest(image)) == []
    referrer = Descriptor(OCI_MANIFEST, desc.digest, desc.size, RECORD, {"dev.composer.kind": "build"})
    client.add_referrer_to_tag("envs", digest(image), referrer)
    client.add_referrer_to_tag("envs", digest(image), referrer)  # idempotent
    assert "sha256-" + digest(image)[7:] in fake_registry.tags("envs")
    assert client.referrers("envs", digest(image)) == [referrer]
    assert client.referrers("envs", digest(image), artifact_type="other/type") == []
    assert ("GET", f"/v2/envs/referrers/{digest(image)}") in fake_registry.requests


def test_client_referrers_api():
    with FakeRegistry(referrers_api=True) as fake:
        reg = Registry(fake.host, attempts=1)
        image = push_image(fake, "envs", "v1")
        record = _record(image)
        desc, subject_processed = reg.put_manifest("envs", digest(record), record, OCI_MANIFEST)
        assert subject_processed is True
        expected = Descriptor(OCI_MANIFEST, desc.digest, desc.size, RECORD, {"dev.composer.kind": "build"})
        assert reg.referrers("envs", digest(image)) == [expected]
        assert reg.referrers("envs", digest(image), artifact_type=RECORD) == [expected]
        assert fake.tags("envs") == ["v1"]  # no referrers tag needed


def test_client_retries_and_faults(fake_registry, client):
    body = push_image(fake_registry, "envs", "v1")
    fake_registry.fail_next("HEAD", "/manifests/", status=503)
    assert client.head_manifest("envs", "v1").digest == digest(body)  # one retry
    fake_registry.fail_next("HEAD", "/manifests/", status=500, times=2)
    with pytest.raises(RegistryError, match="failed after 2 attempt"):  # a 5xx is never "absent"
        client.head_manifest("envs", "v1")
    fake_registry.fail_next("GET", status=None)  # connection dropped
    assert client.get_manifest("envs", "v1")[0] == body
    fake_registry.fail_next(status=401)
    with pytest.raises(RegistryError, match="refused access"):
        client.tags("envs")

    fake_registry.requests.clear()
    fake_registry.fail_next("PUT", "/blobs/uploads/", status=500)
    client.push_blob("envs", b"retried", LAYER)  # the upload restarts with a new session
    # The last PUT's Docker-Content-Digest says what was stored: no HEAD to ask again.
    assert [m for m, _ in fake_registry.requests] == ["HEAD", "POST", "PUT", "HEAD", "POST", "PUT"]
    assert fake_registry.blob("envs", digest(b"retried")) == b"retried"


def test_client_with_relative_locations():
    with FakeRegistry(absolute_locations=False) as fake:
        desc = Registry(fake.host, attempts=1).push_blob("envs", b"data", LAYER)
        assert fake.blob("envs", desc.digest) == b"data"


# -- the fake's own answers ----------------------------------------------------------------

def test_not_found_answers(fake_registry):
    base = fake_registry.url
    assert requests.get(f"{base}/v2/").status_code == 200
    r = requests.get(f"{base}/v2/envs/manifests/v1", headers=ACCEPT)
    assert r.status_code == 404 and codes(r) == ["MANIFEST_UNKNOWN"]
    r = requests.head(f"{base}/v2/envs/manifests/v1", headers=ACCEPT)
    assert r.status_code == 404 and r.content == b""
    r = requests.get(f"{base}/v2/envs/blobs/{digest(b'x')}")
    assert r.status_code == 404 and codes(r) == ["BLOB_UNKNOWN"]
    r = requests.get(f"{base}/v2/envs/tags/list")
    assert r.status_code == 404 and codes(r) == ["NAME_UNKNOWN"]
    r = requests.get(f"{base}/v2/envs/referrers/{digest(b'x')}")  # distribution 2.8: no such route
    assert r.status_code == 404 and r.text == "404 page not found\n"


def test_manifest_answers(fake_registry):
    base, body = fake_registry.url, push_image(fake_registry, "a/b/c", "v1")
    r = requests.get(f"{base}/v2/a/b/c/manifests/v1", headers=ACCEPT)
    assert r.content == body and r.headers["Content-Type"] == OCI_MANIFEST
    assert r.headers["Docker-Content-Digest"] == digest(body) and r.headers["Content-Length"] == str(len(body))
    r = requests.get(f"{base}/v2/a/b/c/manifests/v1")  # 2.8 hides OCI content from clients that don't Accept it
    assert r.status_code == 404 and codes(r) == ["MANIFEST_UNKNOWN"]

    put = lambda ref, data, ctype=OCI_MANIFEST: requests.put(f"{base}/v2/a/b/c/manifests/{ref}", data=data,
                                                              headers={"Content-Type": ctype})
    r = put(digest(b"other"), body)
    assert r.status_code == 400 and codes(r) == ["DIGEST_INVALID"]
    r = put("v2", manifest(layers=[b"absent", b"absent too"]))
    assert r.status_code == 400 and codes(r) == ["MANIFEST_BLOB_UNKNOWN"] * 2
    assert r.json()["errors"][0]["detail"] == digest(b"absent")
    r = put("idx", index(body, manifest(config=b"[]")), OCI_INDEX)
    assert r.status_code == 400 and codes(r) == ["MANIFEST_BLOB_UNKNOWN"]
    assert put("v3", body, OCI_INDEX).status_code == 400 and put("v3", b"{", OCI_MANIFEST).status_code == 400
    r = put(digest(body), body)
    assert r.status_code == 201 and r.headers["Location"].endswith(f"/v2/a/b/c/manifests/{digest(body)}")

    assert requests.put(f"{base}/v2/a/b/c/manifests/idx", data=index(body), headers={"Content-Type": OCI_INDEX}).ok
    r = requests.delete(f"{base}/v2/a/b/c/manifests/v1")
    assert r.status_code == 400 and codes(r) == ["DIGEST_INVALID"]  # 2.8 cannot untag
    assert requests.delete(f"{base}/v2/a/b/c/manifests/{digest(body)}").status_code == 202
    assert fake_registry.tags("a/b/c") == ["idx"] and fake_registry.manifest("a/b/c", "v1") is None
    assert requests.delete(f"{base}/v2/a/b/c/manifests/{digest(body)}").status_code == 404


def test_tags_pagination(fake_registry):
    body = push_image(fake_registry, "envs", "t0")
    for i in range(1, 5):
        requests.put(f"{fake_registry.url}/v2/envs/manifests/t{i}", data=body, headers={"Content-Type": OCI_MANIFEST})
    r = requests.get(f"{fake_registry.url}/v2/envs/tags/list")
    assert r.json() == {"name": "envs", "tags": ["t0", "t1", "t2", "t3", "t4"]} and "Link" not in r.headers
    pages, url = [], f"{fake_registry.url}/v2/envs/tags/list?n=2"
    while url:
        r = requests.get(url)
        pages.append(r.json()["tags"])
        url = f"{fake_registry.url}{r.links['next']['url']}" if "next" in r.links else None
    assert pages == [["t0", "t1"], ["t2", "t3"], ["t4"]]
    assert requests.get(f"{fake_registry.url}/v2/envs/tags/list?n=x").status_code == 400
    requests.delete(f"{fake_registry.url}/v2/envs/manifests/{digest(body)}")
    assert requests.get(f"{fake_registry.url}/v2/envs/tags/list").json() == {"name": "envs", "tags": None}


def test_upload_sessions(fake_registry):
    base = fake_registry.url
    r = requests.post(f"{base}/v2/envs/blobs/uploads/")
    assert r.status_code == 202 and r.headers["Range"] == "0-0" and r.headers["Docker-Upload-UUID"]
    first = r.headers["Location"]
    assert first.startswith(f"{base}/v2/envs/blobs/uploads/{r.headers['Docker-Upload-UUID']}?_state=")
    r = requests.patch(first, data=b"abc")
    assert r.status_code == 202 and r.headers["Range"] == "0-2"
    second = r.headers["Location"]
    r = requests.put(f"{first}&digest={digest(b'abcdef')}", data=b"def")  # stale state
    assert r.status_code == 404 and codes(r) == ["BLOB_UPLOAD_INVALID"]
    r = requests.put(second.split("?")[0] + f"?digest={digest(b'abcdef')}")  # no state at all
    assert r.status_code == 404 and codes(r) == ["BLOB_UPLOAD_INVALID"]
    r = requests.put(second, data=b"def")  # no digest: refused, session kept
    assert r.status_code == 400 and codes(r) == ["DIGEST_INVALID"]
    r = requests.put(f"{second}&digest={digest(b'abcdef')}", data=b"def")
    assert r.status_code == 201 and r.headers["Docker-Content-Digest"] == digest(b"abcdef")
    assert fake_registry.blob("envs", digest(b"abcdef")) == b"abcdef"

    loc = requests.post(f"{base}/v2/envs/blobs/uploads/").headers["Location"]
    r = requests.put(f"{loc}&digest={digest(b'other')}", data=b"data")
    assert r.status_code == 400 and codes(r) == ["DIGEST_INVALID"]
    assert requests.put(f"{loc}&digest={digest(b'data')}", data=b"data").status_code == 404  # session ended
    loc = requests.post(f"{base}/v2/envs/blobs/uploads/").headers["Location"]
    assert requests.delete(loc).status_code == 204 and fake_registry.upload_sessions() == 0

    r = requests.post(f"{base}/v2/envs/blobs/uploads/?digest={digest(b'mono')}", data=b"mono")
    assert r.status_code == 202 and fake_registry.blob("envs", digest(b"mono")) is None  # 2.8 ignores it
    with FakeRegistry(monolithic_post=True) as spec:
        r = requests.post(f"{spec.url}/v2/envs/blobs/uploads/?digest={digest(b'mono')}", data=b"mono")
        assert r.status_code == 201 and spec.blob("envs", digest(b"mono")) == b"mono"


def test_mount_answers(fake_registry):
    base, blob = fake_registry.url, fake_registry.put_blob("src", b"shared")
    r = requests.post(f"{base}/v2/dst/blobs/uploads/?mount={blob}&from=src")
    assert r.status_code == 201 and r.headers["Docker-Content-Digest"] == blob
    assert r.headers["Location"] == f"{base}/v2/dst/blobs/{blob}"
    for query in (f"mount={digest(b'no')}&from=src", f"mount={blob}&from=elsewhere", f"mount={blob}"):
        r = requests.post(f"{base}/v2/other/blobs/uploads/?{query}")
        assert r.status_code == 202 and "/blobs/uploads/" in r.headers["Location"]
    fake_registry.delete_blob("src", blob)
    assert requests.head(f"{base}/v2/src/blobs/{blob}").status_code == 404
    r = requests.head(f"{base}/v2/dst/blobs/{blob}")  # each repository holds its own link
    assert r.status_code == 200 and r.headers["Content-Length"] == "6"


def test_referrers_api_answers():
    with FakeRegistry(referrers_api=True) as fake:
        image = push_image(fake, "envs", "v1")
        record, other = _record(image), manifest(artifactType="x/other", subject=json.loads(_record(image))["subject"])
        r = requests.put(f"{fake.url}/v2/envs/manifests/{digest(record)}", data=record, headers={"Content-Type": OCI_MANIFEST})
        assert r.headers["OCI-Subject"] == digest(image)
        requests.put(f"{fake.url}/v2/envs/manifests/{digest(other)}", data=other, headers={"Content-Type": OCI_MANIFEST})
        r = requests.get(f"{fake.url}/v2/envs/referrers/{digest(image)}")
        assert r.headers["Content-Type"] == OCI_INDEX
        assert sorted(m["artifactType"] for m in r.json()["manifests"]) == [RECORD, "x/other"]
        r = requests.get(f"{fake.url}/v2/envs/referrers/{digest(image)}", params={"artifactType": RECORD})
        assert r.headers["OCI-Filters-Applied"] == "artifactType"
        assert r.json()["manifests"] == [{"mediaType": OCI_MANIFEST, "digest": digest(record), "size": len(record),
                                          "artifactType": RECORD, "annotations": {"dev.composer.kind": "build"}}]
        assert requests.get(f"{fake.url}/v2/envs/referrers/{digest(b'none')}").json()["manifests"] == []


def test_keep_alive_faults_and_log(fake_registry):
    url = f"{fake_registry.url}/v2/"
    with requests.Session() as s:
        for _ in range(5):
            assert s.get(url).status_code == 200
        assert len(fake_registry._server.connections) == 1  # one kept-alive connection
        fake_registry.fail_next("GET", "/v2/", status=429, times=2)
        assert [s.get(url).status_code for _ in range(3)] == [429, 429, 200]
        fake_registry.fail_next(status=None)
        with pytest.raises(requests.ConnectionError):
            s.get(url)
        assert s.get(url).status_code == 200
    assert fake_registry.requests == [("GET", "/v2/")] * 10


def test_client_remembers_content_by_digest_until_it_deletes_it(fake_registry, client):
    body = push_image(fake_registry, "envs", "v1")
    d = digest(body)
    assert client.get_manifest("envs", d)[0] == body
    fake_registry.requests.clear()
    assert client.get_manifest("envs", d)[0] == body  # content-addressed: the same bytes, not asked again
    assert fake_registry.requests == []
    client.delete_manifest("envs", d)
    assert client.get_manifest("envs", d) is None  # forgotten with the delete: the registry is asked
    assert [m for m, _ in fake_registry.requests] == ["DELETE", "GET"]
    assert client.head_manifest("envs", "v1") is None  # tags are never remembered


def test_what_a_client_wrote_is_read_back_from_the_registry(fake_registry, client):
    """A manifest this client PUT is not taken from memory: verifying a push must ask."""
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": client.push_blob("envs", b"{}", OCI_EMPTY).to_dict(),
                       "layers": []}).encode()
    desc, _ = client.put_manifest("envs", "v1", body, OCI_MANIFEST)
    fake_registry.requests.clear()
    assert client.get_manifest("envs", desc.digest)[0] == body
    assert [m for m, _ in fake_registry.requests] == ["GET"]
