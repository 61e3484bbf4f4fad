"""A name's history (hist-NAME, an OCI index) against the in-memory registry: numbering,
idempotence, aliases, rewriting for gc, and strict reading of what anyone could have pushed."""

from __future__ import annotations

import json

import pytest

from composer.errors import VerificationError
from composer.history import (
    A_ALIAS_OF, A_RECORD, A_SPEC, A_VERSION, A_VERSION_OLD, append_version, history_tag, read_history, rewrite_history,
)
from composer.model.canonical import canonical_json, sha256_digest
from composer.oci.client import OCI_INDEX, OCI_MANIFEST, Descriptor

NAME = "explainer"
SPEC = "sha256:" + "5e" * 32
RECORD = "sha256:" + "7c" * 32


@pytest.fixture
def images(bare_lab):
    """Three images in the environments repository."""
    return [bare_lab.push_image(bare_lab.envs, f"img{i}", layers=[f"layer {i}".encode()]) for i in range(3)]


def put_index(lab, name, entries, media_type=OCI_INDEX):
    body = canonical_json({"schemaVersion": 2, "mediaType": media_type, "manifests": entries})
    lab.reg.put_manifest(lab.envs, history_tag(name), body, media_type)


def entry(image, **annotations):
    return {"mediaType": image.media_type, "digest": image.digest, "size": image.size, "annotations": annotations}


def test_versions_are_numbered_from_one(bare_lab, images):
    got = [append_version(bare_lab.reg, bare_lab.envs, NAME, img, RECORD, SPEC, "built") for img in images]
    assert [v.number for v in got] == [1, 2, 3]
    versions = read_history(bare_lab.reg, bare_lab.envs, NAME)
    assert [(v.number, v.image.digest, v.record, v.spec_hash, v.reason, v.alias_of) for v in versions] == [
        (n, img.digest, RECORD, SPEC, "built", None) for n, img in zip((1, 2, 3), images)]
    assert all(v.created.endswith("Z") for v in versions)
    assert versions[0].to_json()["version"] == 1 and versions[0].to_json()["digest"] == images[0].digest
    # Stored as an OCI index at hist-NAME whose entries keep every version reachable.
    index = json.loads(bare_lab.fake.manifest(bare_lab.envs, history_tag(NAME)))
    assert index["mediaType"] == OCI_INDEX and [m["digest"] for m in index["manifests"]] == [i.digest for i in images]
    assert index["manifests"][2]["annotations"][A_VERSION] == "3"


def test_no_history_is_an_empty_list(bare_lab):
    assert read_history(bare_lab.reg, bare_lab.envs, "never-built") == []


def test_appending_the_newest_image_again_adds_nothing(bare_lab, images):
    first = append_version(bare_lab.reg, bare_lab.envs, NAME, images[0], RECORD, SPEC, "built")
    puts = len(bare_lab.manifest_puts())
    again = append_version(bare_lab.reg, bare_lab.envs, NAME, images[0], RECORD, SPEC, "reused")
    assert again == first and len(bare_lab.manifest_puts()) == puts  # nothing written
    # Only the newest counts: going back to an older image is a new version.
    append_version(bare_lab.reg, bare_lab.envs, NAME, images[1], RECORD, SPEC, "built")
    back = append_version(bare_lab.reg, bare_lab.envs, NAME, images[0], RECORD, SPEC, "reused")
    assert back.number == 3
    assert [v.image.digest for v in read_history(bare_lab.reg, bare_lab.envs, NAME)] == [
        images[0].digest, images[1].digest, images[0].digest]


def test_an_alias_entry_carries_alias_of(bare_lab, images):
    v1 = append_version(bare_lab.reg, bare_lab.envs, "stable", images[0], RECORD, SPEC, "alias", alias_of="explainer")
    assert (v1.number, v1.alias_of, v1.reason) == (1, "explainer", "alias")
    # The same image pointed at through another name is a move of the alias: a new entry.
    v2 = append_version(bare_lab.reg, bare_lab.envs, "stable", images[0], RECORD, SPEC, "alias", alias_of="other")
    assert (v2.number, v2.alias_of) == (2, "other")
    same = append_version(bare_lab.reg, bare_lab.envs, "stable", images[0], RECORD, SPEC, "alias", alias_of="other")
    assert same.number == 2
    index = json.loads(bare_lab.fake.manifest(bare_lab.envs, history_tag("stable")))
    assert [m["annotations"][A_ALIAS_OF] for m in index["manifests"]] == ["explainer", "other"]
    assert [v.alias_of for v in read_history(bare_lab.reg, bare_lab.envs, "stable")] == ["explainer", "other"]


def test_entries_written_with_the_old_version_key_are_still_read(bare_lab, images):
    """Before dev.composer.history.version, an entry's number was under dev.composer.version."""
    put_index(bare_lab, NAME, [entry(images[0], **{A_VERSION_OLD: "1", A_RECORD: RECORD, A_SPEC: SPEC}),
                               entry(images[1], **{A_VERSION_OLD: "2", A_RECORD: RECORD, A_SPEC: SPEC})])
    assert [v.number for v in read_history(bare_lab.reg, bare_lab.envs, NAME)] == [1, 2]
    v3 = append_version(bare_lab.reg, bare_lab.envs, NAME, images[2], RECORD, SPEC, "built")
    assert v3.number == 3
    index = json.loads(bare_lab.fake.manifest(bare_lab.envs, history_tag(NAME)))
    assert A_VERSION_OLD in index["manifests"][0]["annotations"]  # old entries are kept as they were
    assert index["manifests"][2]["annotations"][A_VERSION] == "3" and A_VERSION_OLD not in index["manifests"][2]["annotations"]


@pytest.mark.parametrize("annotations", [
    {A_VERSION: "two", A_RECORD: RECORD, A_SPEC: SPEC},  # non-numeric version
    {A_VERSION: "-1"},
    {A_RECORD: RECORD},  # no version at all
    {A_VERSION: "1", A_RECORD: "sha256:nothex"},  # bad record digest
    {A_VERSION: "1", A_SPEC: "md5:" + "0" * 32},  # bad spec hash
    {A_VERSION: "1", A_ALIAS_OF: "not a name/with spaces"},
], ids=["version-word", "version-negative", "version-missing", "record-digest", "spec-hash", "alias-of"])
def test_a_tampered_entry_is_a_verification_error(bare_lab, images, annotations):
    put_index(bare_lab, NAME, [entry(images[0], **annotations)])
    with pytest.raises(VerificationError, match="malformed entry"):
        read_history(bare_lab.reg, bare_lab.envs, NAME)
    with pytest.raises(VerificationError):  # and nothing is appended on top of it
        append_version(bare_lab.reg, bare_lab.envs, NAME, images[1], RECORD, SPEC, "built")


def test_an_entry_with_a_bad_image_digest_is_a_verification_error(bare_lab, images, monkeypatch):
    """The registry refuses an index naming an unknown manifest, so serve a tampered one instead."""
    tampered_index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": "sha256:XYZ", "size": 10, "annotations": {A_VERSION: "1"}}]}
    body = canonical_json(tampered_index)
    real = bare_lab.reg.get_manifest

    def tampered(repo, ref):
        if ref == history_tag(NAME):
            return body, Descriptor(OCI_INDEX, sha256_digest(body), len(body))
        return real(repo, ref)

    monkeypatch.setattr(bare_lab.reg, "get_manifest", tampered)
    with pytest.raises(VerificationError, match="malformed entry"):
        read_history(bare_lab.reg, bare_lab.envs, NAME)


@pytest.mark.parametrize("entry_value", [["not", "an", "object"], {"mediaType": OCI_MANIFEST}])
def test_an_entry_that_is_no_descriptor_is_a_verification_error(bare_lab, entry_value, monkeypatch):
    body = canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry_value]})
    monkeypatch.setattr(bare_lab.reg, "get_manifest",
                        lambda repo, ref: (body, Descriptor(OCI_INDEX, sha256_digest(body), len(body))))
    with pytest.raises(VerificationError):
        read_history(bare_lab.reg, bare_lab.envs, NAME)


def test_a_history_that_is_not_an_index_is_a_verification_error(bare_lab, images):
    bare_lab.reg.tag(bare_lab.envs, images[0].digest, history_tag(NAME))  # an image where the index should be
    with pytest.raises(VerificationError, match="not an OCI index"):
        read_history(bare_lab.reg, bare_lab.envs, NAME)


def test_a_history_whose_bytes_do_not_match_the_digest_is_a_verification_error(bare_lab, images, monkeypatch):
    append_version(bare_lab.reg, bare_lab.envs, NAME, images[0], RECORD, SPEC, "built")
    real = bare_lab.reg.transport.send

    def corrupt(method, url, **kw):  # a registry (or proxy) handing out other bytes than it stored
        resp = real(method, url, **kw)
        if method == "GET" and url.endswith(history_tag(NAME)):
            resp._content = resp.content.replace(b'"1"', b'"9"')
        return resp

    monkeypatch.setattr(bare_lab.reg.transport, "send", corrupt)
    with pytest.raises(VerificationError, match="does not match its digest"):
        read_history(bare_lab.reg, bare_lab.envs, NAME)


def test_rewrite_history_keeps_the_numbers(bare_lab, images):
    for img in images:
        append_version(bare_lab.reg, bare_lab.envs, NAME, img, RECORD, SPEC, "built")
    versions = read_history(bare_lab.reg, bare_lab.envs, NAME)
    rewrite_history(bare_lab.reg, bare_lab.envs, NAME, [versions[0], versions[2]])
    kept = read_history(bare_lab.reg, bare_lab.envs, NAME)
    assert [(v.number, v.image.digest, v.created, v.reason) for v in kept] == [
        (1, images[0].digest, versions[0].created, "built"), (3, images[2].digest, versions[2].created, "built")]
    assert append_version(bare_lab.reg, bare_lab.envs, NAME, images[1], RECORD, SPEC, "built").number == 4
