"""composer.catalog against the in-memory registry: resolve (NAME, NAME@N, aliases), ls,
history, set_alias and gc."""

from __future__ import annotations

import json

import pytest

from composer.catalog import resolve
from composer.catalog.listing import gc, history, ls, names, set_alias
from composer.errors import NotFoundError, UsageError, VerificationError
from composer.history import read_history, rewrite_history
from composer.model.refs import referrers_tag
from composer.oci.artifacts import push_artifact
from composer.publish import spec_tag, unique_tag
from composer.publish.lease import LEASE_TYPE, lease_tag
from composer.store import build_records_of

NAME = "explainer"
SIX = [("iniconfig", "2.0.0"), ("six", "1.16.0")]
NUMPY = [("iniconfig", "2.0.0"), ("numpy", "1.26.4")]


def three_versions(lab, name=NAME, **kw):
    return [lab.publish(name, **kw), lab.publish(name, packages=SIX, update=True),
            lab.publish(name, packages=NUMPY, update=True)]


# -- resolve ------------------------------------------------------------------------------------

def test_resolve_a_name(lab):
    built = lab.publish(NAME)
    ref, record, record_digest = resolve(lab.settings, NAME)
    assert ref == built.ref == f"{lab.host}/{lab.envs}@{built.digest}"
    assert record_digest == built.record
    assert (record.name, record.spec_hash, record.image.digest) == (NAME, built.spec_hash, built.digest)


def test_resolve_name_at_version(lab):
    v1, v2, v3 = three_versions(lab)
    for n, built in ((1, v1), (2, v2), (3, v3)):
        ref, record, record_digest = resolve(lab.settings, f"{NAME}@{n}")
        assert (ref, record_digest, record.spec_hash) == (built.ref, built.record, built.spec_hash)
    assert resolve(lab.settings, NAME)[0] == v3.ref
    with pytest.raises(NotFoundError, match="no version 4"):
        resolve(lab.settings, f"{NAME}@4")
    with pytest.raises(UsageError, match="not a number"):
        resolve(lab.settings, f"{NAME}@latest")


def test_resolve_an_alias(lab):
    v1, v2 = lab.publish(NAME), lab.publish(NAME, packages=SIX, update=True)
    moved = set_alias(lab.settings, "stable", f"{NAME}@1")
    assert moved == {"alias": "stable", "ref": v1.ref, "alias_of": NAME, "version": 1, "record": v1.record}
    ref, record, record_digest = resolve(lab.settings, "stable")
    assert (ref, record.name, record_digest) == (v1.ref, NAME, v1.record)  # the target's record

    moved = set_alias(lab.settings, "stable", NAME)  # moves only when asked
    assert (moved["ref"], moved["version"]) == (v2.ref, 2)
    assert resolve(lab.settings, "stable")[0] == v2.ref
    assert resolve(lab.settings, "stable@1")[0] == v1.ref  # an alias has versions too
    assert [(h["version"], h["digest"], h["alias_of"]) for h in history(lab.settings, "stable")] == [
        (1, v1.digest, NAME), (2, v2.digest, NAME)]


def test_resolve_a_name_whose_image_has_no_record_is_a_verification_error(lab):
    lab.push_image(lab.envs, "orphan", on=lab.base, layers=[b"pushed by hand"])
    with pytest.raises(VerificationError, match="no composer record describes it"):
        resolve(lab.settings, "orphan")


def test_resolve_a_name_pointing_at_another_names_image_is_a_verification_error(lab):
    built = lab.publish(NAME)
    lab.reg.tag(lab.envs, built.digest, "impostor")  # a tag, not a composer build: no record names it
    with pytest.raises(VerificationError):
        resolve(lab.settings, "impostor")


def test_resolve_unknown_is_not_found(lab):
    with pytest.raises(NotFoundError, match="no environment named 'nothing'"):
        resolve(lab.settings, "nothing")
    lab.publish(NAME)
    with pytest.raises(NotFoundError):
        resolve(lab.settings, "nothing")
    with pytest.raises(NotFoundError):
        resolve(lab.settings, "nothing@1")


@pytest.mark.parametrize("bad", ["spec-x", "a/b", "", "x-0123456789ab"])
def test_resolve_refuses_names_that_are_no_names(lab, bad):
    with pytest.raises(UsageError):
        resolve(lab.settings, bad)


# -- ls, names, history -------------------------------------------------------------------------

def test_ls_lists_names_and_aliases_not_composers_own_tags(lab):
    a = lab.publish(NAME, run_id="ExplainerFlow/1")
    b = lab.publish("other", packages=SIX)
    set_alias(lab.settings, "stable", NAME)
    # Bookkeeping a crash or a concurrent build can leave behind, and a tag of the unique form.
    push_artifact(lab.reg, lab.envs, {"owner": "x"}, LEASE_TYPE, {}, tag=lease_tag("sha256:" + "1" * 64))
    lab.reg.tag(lab.envs, a.digest, "run-leftover")
    tags = lab.env_tags()
    for t in (spec_tag(a.spec_hash), referrers_tag(a.digest), f"hist-{NAME}", unique_tag(NAME, a.spec_hash),
              unique_tag("other", b.spec_hash), "hist-stable", "run-leftover"):
        assert t in tags

    assert names(lab.reg, lab.envs) == sorted([NAME, "other", "stable"])
    listed = {e["name"]: e for e in ls(lab.settings)}
    assert sorted(listed) == sorted([NAME, "other", "stable"])
    e = listed[NAME]
    assert (e["ref"], e["digest"], e["record"], e["alias_of"], e["upstream_run"], e["base_digest"]) == (
        a.ref, a.digest, a.record, None, "TrainFlow/1", lab.base.digest)
    manifest = json.loads(lab.fake.manifest(lab.envs, a.digest))
    assert e["size"] == manifest["config"]["size"] + sum(l["size"] for l in manifest["layers"])
    assert listed["stable"]["alias_of"] == NAME and listed["stable"]["digest"] == a.digest
    assert listed["other"]["digest"] == b.digest


def test_ls_of_an_empty_registry(bare_lab):
    assert ls(bare_lab.settings) == []


def test_history_lists_every_version(lab):
    v1, v2, v3 = three_versions(lab)
    got = history(lab.settings, NAME)
    assert [(h["version"], h["digest"], h["record"], h["spec_hash"], h["reason"]) for h in got] == [
        (1, v1.digest, v1.record, v1.spec_hash, "built"), (2, v2.digest, v2.record, v2.spec_hash, "built"),
        (3, v3.digest, v3.record, v3.spec_hash, "built")]
    with pytest.raises(NotFoundError):
        history(lab.settings, "nothing")


# -- aliases ------------------------------------------------------------------------------------

def test_set_alias_refuses_an_environment_name(lab):
    lab.publish(NAME)
    lab.publish("other", packages=SIX)
    before = lab.reg.head_manifest(lab.envs, "other").digest
    with pytest.raises(UsageError, match="is an environment name"):
        set_alias(lab.settings, "other", NAME)
    assert lab.reg.head_manifest(lab.envs, "other").digest == before
    assert [v.alias_of for v in read_history(lab.reg, lab.envs, "other")] == [None]


def test_set_alias_refuses_itself_and_unknown_targets(lab):
    lab.publish(NAME)
    with pytest.raises(UsageError, match="cannot point at itself"):
        set_alias(lab.settings, NAME, f"{NAME}@1")
    with pytest.raises(NotFoundError):
        set_alias(lab.settings, "stable", "nothing")
    assert "stable" not in lab.env_tags() and "hist-stable" not in lab.env_tags()


# -- gc -----------------------------------------------------------------------------------------

def manifests(lab, *digests):
    return [lab.fake.manifest(lab.envs, d) is not None for d in digests]


def test_gc_deletes_old_versions_beyond_keep_and_their_records(lab):
    v1, v2, v3 = three_versions(lab)
    report = gc(lab.settings, keep=1, older_than_days=0, dry_run=False)
    assert report["deleted"] == sorted([v1.digest, v2.digest]) and report["names"] == [NAME]
    assert manifests(lab, v1.digest, v2.digest, v3.digest) == [False, False, True]
    assert manifests(lab, v1.record, v2.record, v3.record) == [False, False, True]  # records go with them
    tags = lab.env_tags()
    for gone in (spec_tag(v1.spec_hash), spec_tag(v2.spec_hash), referrers_tag(v1.digest), unique_tag(NAME, v1.spec_hash)):
        assert gone not in tags
    assert spec_tag(v3.spec_hash) in tags and NAME in tags
    assert [v.number for v in read_history(lab.reg, lab.envs, NAME)] == [3]  # numbers stay
    assert resolve(lab.settings, NAME)[0] == v3.ref
    with pytest.raises(NotFoundError):
        resolve(lab.settings, f"{NAME}@1")
    # A deleted composition is built again, not found in a stale cache.
    again = lab.publish(NAME, update=True)
    assert not again.cached


def test_gc_dry_run_deletes_nothing(lab):
    v1, v2, v3 = three_versions(lab)
    since = len(lab.fake.requests)
    report = gc(lab.settings, keep=1, older_than_days=0, dry_run=True)
    assert report["dry_run"] and report["deleted"] == sorted([v1.digest, v2.digest])
    assert not any(m in ("PUT", "DELETE", "POST", "PATCH") for m, _ in lab.fake.requests[since:])
    assert manifests(lab, v1.digest, v2.digest, v3.digest, v1.record) == [True] * 4
    assert len(read_history(lab.reg, lab.envs, NAME)) == 3


def test_gc_keeps_versions_younger_than_older_than(lab):
    three_versions(lab)
    report = gc(lab.settings, keep=1, older_than_days=1, dry_run=False)
    assert report["deleted"] == []
    assert len(read_history(lab.reg, lab.envs, NAME)) == 3


def test_gc_deletes_only_versions_both_beyond_keep_and_old(lab):
    v1, v2, v3 = three_versions(lab)
    versions = read_history(lab.reg, lab.envs, NAME)
    old = [versions[0].__class__(**{**versions[0].__dict__, "created": "2020-01-01T00:00:00Z"}),
           versions[1], versions[2]]  # only version 1 is old
    rewrite_history(lab.reg, lab.envs, NAME, old)
    assert gc(lab.settings, keep=1, older_than_days=30, dry_run=False)["deleted"] == [v1.digest]
    assert manifests(lab, v1.digest, v2.digest, v3.digest) == [False, True, True]
    # keep=3 protects all of them however old
    assert gc(lab.settings, keep=3, older_than_days=0, dry_run=True)["deleted"] == []


def test_gc_never_deletes_an_image_a_run_record_names(lab):
    v1 = lab.publish(NAME, run_id="ExplainerFlow/1")  # a run ran in version 1
    v2 = lab.publish(NAME, packages=SIX, update=True)
    v3 = lab.publish(NAME, packages=NUMPY, update=True)
    report = gc(lab.settings, keep=1, older_than_days=0, dry_run=False)
    assert report["deleted"] == [v2.digest]
    assert manifests(lab, v1.digest, v2.digest, v3.digest) == [True, False, True]
    assert resolve(lab.settings, f"{NAME}@1")[0] == v1.ref  # still resolvable: its history entry stays


def test_gc_never_deletes_the_base_of_a_kept_composition(lab):
    a1 = lab.publish("a")
    b = lab.publish("b", "a")  # composed on a's version 1 (the run record written under the name a)
    _, record_b, _ = resolve(lab.settings, "b")
    assert record_b.base.digest == a1.digest
    a2 = lab.publish("a", packages=SIX, update=True)
    a3 = lab.publish("a", packages=NUMPY, update=True)
    report = gc(lab.settings, keep=1, older_than_days=0, dry_run=False)
    assert report["deleted"] == [a2.digest]
    assert manifests(lab, a1.digest, a2.digest, a3.digest, b.digest) == [True, False, True, True]


def test_gc_never_deletes_what_an_alias_points_at(lab):
    v1, v2, v3 = three_versions(lab)
    set_alias(lab.settings, "stable", f"{NAME}@1")
    report = gc(lab.settings, keep=1, older_than_days=0, dry_run=False)
    assert report["deleted"] == [v2.digest] and sorted(report["names"]) == [NAME, "stable"]
    assert resolve(lab.settings, "stable")[0] == v1.ref


def test_gc_refuses_keep_zero(lab):
    with pytest.raises(UsageError):
        gc(lab.settings, keep=0, older_than_days=0, dry_run=True)


def test_gc_keeps_records_of_other_names_on_a_kept_image(lab):
    a = lab.publish("a")
    b = lab.publish("b")  # the same composition under another name: one image, two records
    lab.publish("a", packages=SIX, update=True)
    gc(lab.settings, keep=1, older_than_days=0, dry_run=False)
    assert {r.name for r, _ in build_records_of(lab.reg, lab.envs, a.digest)} == {"a", "b"}
    assert resolve(lab.settings, "b")[1].name == "b" and b.digest == a.digest


def test_gc_never_deletes_the_base_of_a_base_that_is_kept(lab):
    a1 = lab.publish("a")
    b1 = lab.publish("b", "a", packages=[("iniconfig", "2.0.0"), ("pluggy", "1.5.0")])  # on a@1
    lab.publish("c", "b", packages=[("iniconfig", "2.0.0"), ("pytz", "2024.1")])  # on b@1: keeps b@1
    lab.publish("a", packages=SIX, update=True)
    lab.publish("b", "a", packages=SIX, update=True)  # on a@2
    report = gc(lab.settings, keep=1, older_than_days=0, dry_run=True)
    assert b1.digest not in report["deleted"]  # protected: c's base
    assert a1.digest not in report["deleted"]  # b@1 is kept, so its base must be too


def test_gc_protects_a_base_whose_record_the_referrers_index_lost(lab):
    """The base of a kept composition is found through the name's own record tag too."""
    import json

    from composer.model.refs import referrers_tag

    a1 = lab.publish("a")
    b1 = lab.publish("b", "a", packages=[("iniconfig", "2.0.0"), ("pluggy", "1.5.0")])  # on a@1
    lab.publish("a", packages=SIX, update=True)  # a@1 is now old: only b@1's record protects it
    empty = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}
    lab.reg.put_manifest(lab.envs, referrers_tag(b1.digest), json.dumps(empty).encode(), "application/vnd.oci.image.index.v1+json")
    report = gc(lab.settings, keep=1, older_than_days=0, dry_run=True)
    assert a1.digest not in report["deleted"]
