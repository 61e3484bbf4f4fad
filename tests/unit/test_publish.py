"""composer.publish against the in-memory registry: the order of writes, the cache (fail
closed), names and their own provenance (issue 16), --update, and run ids that are not ours."""

from __future__ import annotations

import dataclasses
import json

import pytest

from composer.catalog import resolve
from composer.errors import RegistryError, UsageError, VerificationError
from composer.history import read_history
from composer.model.records import BUILD_RECORD_TYPE
from composer.model.refs import referrers_tag, run_tag
from composer.oci import connect
from composer.oci.client import DOCKER_MANIFEST, OCI_MANIFEST
from composer.publish import cached_image, claim_tag, publish, spec_tag, unique_tag
from composer.publish.lease import lease_tag
from composer.upstream.runs import run_history
from composer.store import build_records_of, load_run_record, name_key, read_run_record, record_tag, spec_key

from tests.unit.conftest import UPSTREAM_RUN

NAME = "explainer"


def test_first_publish_builds_once_and_writes_record_spec_runs_history_then_name(lab):
    since = len(lab.fake.requests)
    result = lab.publish(NAME, run_id="ExplainerFlow/1")

    assert lab.builds == [NAME]
    spec = result.spec_hash
    assert (result.cached, result.builder, result.tag) == (False, "daemonless", unique_tag(NAME, spec))
    assert result.ref == f"{lab.host}/{lab.envs}@{result.digest}" and result.repository == f"{lab.host}/{lab.envs}"
    assert lab.manifest_puts(since) == [
        f"envs:{claim_tag(NAME)}",  # a new name: claimed, read back
        f"envs:{lease_tag(spec)}",  # one builder per spec
        f"envs:{unique_tag(NAME, spec)}",  # the builder's push
        f"envs:{record_tag(result.digest, name_key(NAME))}",  # the build record (subject: the image), at its own tags ...
        f"envs:{record_tag(result.digest, spec_key(spec))}",
        f"envs:{referrers_tag(result.digest)}",  # ... listed under the referrers tag schema (no referrers API)
        f"envs:{spec_tag(spec)}",  # what the cache looks up
        # so it can be an upstream, each listed in its run's history
        f"runs:{run_tag(NAME)}", f"runs:hist-{run_tag(NAME)}",
        f"runs:{run_tag('ExplainerFlow/1')}", f"runs:hist-{run_tag('ExplainerFlow/1')}",
        f"envs:hist-{NAME}",
        f"envs:{NAME}",  # last
    ]
    requests = lab.fake.requests[since:]
    deletes = [i for i, (method, target) in enumerate(requests) if method == "DELETE"]
    assert len(deletes) == 2 and all("/manifests/sha256:" in requests[d][1] for d in deletes)  # lease, claim: by digest
    lease_gone = deletes[0]
    history_put = requests.index(("PUT", f"/v2/{lab.envs}/manifests/hist-{NAME}"))
    assert lease_gone < history_put  # the lease is released once the record and spec tag are out
    assert lab.env_tags() == sorted([NAME, unique_tag(NAME, spec), f"hist-{NAME}", referrers_tag(result.digest), spec_tag(spec),
                                     record_tag(result.digest, name_key(NAME)), record_tag(result.digest, spec_key(spec))])

    # What was written is what a reader gets back, verified.
    (record, desc), = build_records_of(lab.reg, lab.envs, result.digest)
    assert desc.digest == result.record
    assert (record.name, record.spec_hash, record.image.digest, record.upstream_run) == (NAME, spec, result.digest, "TrainFlow/1")
    for key in (NAME, "ExplainerFlow/1"):
        run, _ = load_run_record(lab.reg, lab.runs, key)
        assert run.distributions_source == "composed" and run.image.digest == result.digest
        assert run.composed == {"name": NAME, "spec_hash": spec}
        assert run.pins == {"attrs": "23.1.0", "iniconfig": "2.0.0"}  # the upstream's and what was added
    (v1,) = read_history(lab.reg, lab.envs, NAME)
    assert (v1.number, v1.image.digest, v1.record, v1.spec_hash, v1.reason) == (1, result.digest, result.record, spec, "built")


@pytest.mark.parametrize("media_type", [OCI_MANIFEST, DOCKER_MANIFEST])
def test_second_publish_of_the_same_spec_is_a_cache_hit(lab, media_type):
    first = lab.publish(NAME, media_type=media_type)
    since = len(lab.fake.requests)
    second = lab.publish(NAME, media_type=media_type)

    assert lab.builds == [NAME]  # build_it not called again
    assert second.cached and second.builder is None
    assert (second.digest, second.record, second.tag, second.ref) == (first.digest, first.record, first.tag, first.ref)
    assert lab.manifest_puts(since) == []  # nothing to write: same record, same history, same tags
    assert not any("lease-" in target for _, target in lab.fake.requests[since:])  # a hit takes no lease
    assert [v.number for v in read_history(lab.reg, lab.envs, NAME)] == [1]


def test_a_cache_hit_with_a_new_run_id_becomes_that_runs_environment(lab):
    first = lab.publish(NAME, run_id="ExplainerFlow/1")
    since = len(lab.fake.requests)
    second = lab.publish(NAME, run_id="ExplainerFlow/2")

    assert second.cached and lab.builds == [NAME]
    assert lab.manifest_puts(since) == [f"runs:{run_tag('ExplainerFlow/2')}", f"runs:hist-{run_tag('ExplainerFlow/2')}"]
    run, digest = load_run_record(lab.reg, lab.runs, "ExplainerFlow/2")
    assert run.image.digest == first.digest and run.distributions_source == "composed"
    assert [(v["record"], v["reason"]) for v in run_history(lab.settings, "ExplainerFlow/2")] == [(digest, "composed")]


def test_a_moved_name_keeps_its_replaced_run_record_in_the_runs_history(lab):
    """A composed environment's run record is replaced when its name moves (--update): the old one
    stays listed in `composer history --run NAME`, as a re-recorded run's does."""
    lab.publish(NAME)
    _, old = load_run_record(lab.reg, lab.runs, NAME)
    lab.publish(NAME, packages=(("iniconfig", "2.0.0"), ("six", "1.17.0")), update=True)
    _, new = load_run_record(lab.reg, lab.runs, NAME)
    assert new != old
    assert [(v["record"], v["reason"]) for v in run_history(lab.settings, NAME)] == [(old, "composed"), (new, "composed")]


def test_the_same_spec_under_another_name_records_that_names_own_provenance(lab):
    """Issue 16: B, a cache hit on A's image, names its own upstream run, base tag and extras."""
    other = lab.base_image("t1/team/other", "v9")  # the same image as model-a:v1, under another tag
    assert other.digest == lab.base.digest
    _, r2_record = lab.record_run("R2", other)
    a = lab.publish("a", "TrainFlow/1", extra="a.txt")
    b = lab.publish("b", "R2", extra="b.txt")

    assert lab.builds == ["a"]
    assert b.cached and b.digest == a.digest and b.spec_hash == a.spec_hash and b.record != a.record
    _, rec_b, digest_b = resolve(lab.settings, "b")
    assert digest_b == b.record
    assert (rec_b.name, rec_b.upstream_run, rec_b.upstream_record) == ("b", "R2", r2_record)
    assert (rec_b.base.repository, rec_b.base.tag, rec_b.base.digest) == (f"{lab.host}/t1/team/other", "v9", other.digest)
    assert rec_b.inputs == {"extra": "b.txt"} and rec_b.image.tag == unique_tag("b", b.spec_hash)
    _, rec_a, digest_a = resolve(lab.settings, "a")  # A's record is untouched
    assert digest_a == a.record
    assert (rec_a.upstream_run, rec_a.upstream_record, rec_a.base, rec_a.inputs) == (
        "TrainFlow/1", lab.upstream_record, lab.base, {"extra": "a.txt"})
    assert {r.name for r, _ in build_records_of(lab.reg, lab.envs, a.digest)} == {"a", "b"}
    (v1,) = read_history(lab.reg, lab.envs, "b")
    assert (v1.reason, v1.record) == ("reused", b.record)
    run_b, _ = load_run_record(lab.reg, lab.runs, "b")
    assert run_b.image.digest == a.digest and run_b.composed["name"] == "b"


def test_republishing_a_name_from_another_upstream_moves_its_provenance(lab, monkeypatch):
    """The same content reached from another run: a new record for the name, which resolves to it."""
    other = lab.base_image("t1/team/other", "v9")
    _, r2_record = lab.record_run("R2", other)
    first = lab.publish(NAME, "TrainFlow/1")
    # Records are stamped to the second; a later second for the new one (the same second: see below).
    monkeypatch.setattr("composer.publish.utc_now", lambda: "2100-01-01T00:00:00Z")
    second = lab.publish(NAME, "R2", extra="other.txt")

    assert second.cached and second.digest == first.digest and second.record != first.record
    _, record, record_digest = resolve(lab.settings, NAME)
    assert record_digest == second.record
    assert (record.upstream_run, record.upstream_record, record.base.tag, record.inputs) == ("R2", r2_record, "v9",
                                                                                            {"extra": "other.txt"})


def test_republishing_from_another_upstream_within_the_same_second_resolves_to_the_new_record(lab, monkeypatch):
    other = lab.base_image("t1/team/other", "v9")
    lab.record_run("R2", other)
    stamp = "2030-01-01T00:00:00Z"  # both records made within one second, as a quick rerun's are
    lab.now = lambda: stamp
    monkeypatch.setattr("composer.publish.utc_now", lambda: stamp)
    lab.publish(NAME, "TrainFlow/1")
    second = lab.publish(NAME, "R2", extra="other.txt")
    _, record, record_digest = resolve(lab.settings, NAME)
    assert (record_digest, record.upstream_run) == (second.record, "R2")


def test_a_different_spec_under_an_existing_name_needs_update(lab):
    first = lab.publish(NAME)
    with pytest.raises(UsageError, match="already points to a different composition"):
        lab.publish(NAME, packages=[("iniconfig", "2.0.0"), ("six", "1.16.0")])
    assert lab.builds == [NAME]  # refused before anything was built
    assert lab.reg.head_manifest(lab.envs, NAME).digest == first.digest

    second = lab.publish(NAME, packages=[("iniconfig", "2.0.0"), ("six", "1.16.0")], update=True)
    assert lab.builds == [NAME, NAME] and not second.cached
    assert second.digest != first.digest and second.spec_hash != first.spec_hash
    assert lab.reg.head_manifest(lab.envs, NAME).digest == second.digest
    versions = read_history(lab.reg, lab.envs, NAME)
    assert [(v.number, v.image.digest, v.reason) for v in versions] == [(1, first.digest, "built"), (2, second.digest, "built")]
    # Going back to the first composition is a cache hit and a third version.
    third = lab.publish(NAME, update=True)
    assert third.cached and third.digest == first.digest and third.record == first.record
    assert [v.number for v in read_history(lab.reg, lab.envs, NAME)] == [1, 2, 3]
    assert lab.reg.head_manifest(lab.envs, NAME).digest == first.digest


@pytest.mark.parametrize("name, run_id", [("X", None), (NAME, "X")])
def test_a_name_or_run_id_that_is_a_recorded_run_is_refused_before_building(lab, name, run_id):
    """Issue 16: a composed environment never replaces a run the user recorded."""
    _, recorded = lab.record_run("X", lab.base)
    with pytest.raises(UsageError, match="already a recorded run"):
        lab.publish(name, run_id=run_id)
    assert lab.builds == []
    assert lab.env_tags() == []  # nothing was written
    _, digest = read_run_record(lab.reg, lab.runs, run_tag("X"))
    assert digest == recorded


@pytest.mark.parametrize("built_before", [False, True])
def test_a_registry_error_on_the_spec_tag_is_an_error_never_a_hit(lab, built_before):
    if built_before:
        lab.publish(NAME)
    lab.fake.fail_next("HEAD", "/manifests/spec-", 500, times=10)
    since = len(lab.fake.requests)
    with pytest.raises(RegistryError, match="HTTP 500"):
        lab.publish(NAME)
    assert lab.builds == ([NAME] if built_before else [])  # neither built nor taken as built
    assert lab.manifest_puts(since) == []


def test_a_registry_error_reading_the_records_is_an_error_never_a_miss(lab):
    lab.publish(NAME)
    lab.fake.fail_next("GET", "/manifests/sha256-", 503, times=10)  # the referrers tag index
    with pytest.raises(RegistryError):
        lab.publish("another-name")
    assert lab.builds == [NAME]


def test_a_spec_tag_whose_image_has_no_record_is_not_a_hit(lab):
    upstream, _ = lab.provenance("TrainFlow/1")
    spec = lab.composition(upstream).spec_hash
    orphan = lab.push_image(lab.envs, spec_tag(spec), on=lab.base, layers=[b"a publish that crashed"])
    assert cached_image(lab.reg, lab.envs, spec) is None

    result = lab.publish(NAME)
    assert lab.builds == [NAME] and not result.cached and result.digest != orphan.digest
    assert lab.reg.head_manifest(lab.envs, spec_tag(spec)).digest == result.digest  # the spec tag now has a record
    found = cached_image(lab.reg, lab.envs, spec)
    assert found is not None and found[0].digest == result.digest


def test_a_spec_tag_on_an_image_recorded_with_another_spec_is_not_a_hit(lab):
    other = lab.publish("other", packages=[("six", "1.16.0")])
    upstream, _ = lab.provenance("TrainFlow/1")
    spec = lab.composition(upstream).spec_hash
    lab.reg.tag(lab.envs, other.digest, spec_tag(spec))  # a spec tag that lies
    result = lab.publish(NAME)
    assert lab.builds == ["other", NAME] and not result.cached and result.digest != other.digest


def test_a_rerun_after_a_failure_completes_the_publish(lab):
    """A crash (here: the history write failing) leaves no name tag; the rerun is a hit that finishes."""
    lab.fake.fail_next("PUT", f"/manifests/hist-{NAME}", 500, times=2)
    with pytest.raises(RegistryError):
        lab.publish(NAME)
    assert NAME not in lab.env_tags() and lab.builds == [NAME]
    result = lab.publish(NAME)
    assert result.cached and lab.builds == [NAME]
    assert lab.reg.head_manifest(lab.envs, NAME).digest == result.digest
    assert [v.number for v in read_history(lab.reg, lab.envs, NAME)] == [1]


def test_an_image_that_does_not_start_with_the_base_layers_is_not_published(lab):
    upstream, provenance = lab.provenance("TrainFlow/1")
    comp = lab.composition(upstream)

    def build_it():
        desc = lab.push_image(lab.envs, unique_tag(NAME, comp.spec_hash), layers=[b"not on the base"])
        record = lab.build_record(NAME, comp, upstream, provenance, desc.digest)
        return record, record.image

    with pytest.raises(VerificationError, match="does not start with the upstream's layers"):
        lab.publish(NAME, build_it=build_it)
    assert lab.env_tags() == [unique_tag(NAME, comp.spec_hash)]  # no record, spec tag, history or name


def test_a_builder_reporting_an_image_the_registry_lacks_is_an_error(lab):
    upstream, provenance = lab.provenance("TrainFlow/1")
    comp = lab.composition(upstream)
    missing = "sha256:" + "ab" * 32

    def build_it():
        record = lab.build_record(NAME, comp, upstream, provenance, missing)
        return record, record.image

    with pytest.raises(VerificationError, match="does not have it"):
        lab.publish(NAME, build_it=build_it)
    assert lab.env_tags() == []


def test_build_records_are_oci_artifacts_about_the_image(lab):
    result = lab.publish(NAME)
    manifest = json.loads(lab.fake.manifest(lab.envs, result.record))
    assert manifest["artifactType"] == BUILD_RECORD_TYPE and manifest["subject"]["digest"] == result.digest
    assert manifest["annotations"]["dev.composer.spec-hash"] == result.spec_hash
    assert manifest["annotations"]["dev.composer.name"] == NAME


# -- concurrency (issue 11): no record lost, one owner per new name -------------------------------
def test_a_record_a_concurrent_writer_dropped_from_the_referrers_index_still_resolves(lab):
    first = lab.publish(NAME)
    other = lab.publish("other-name")  # the same composition under another name: a second record
    # A concurrent writer that read the index before either record was added writes it back empty.
    empty = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}
    lab.reg.put_manifest(lab.envs, referrers_tag(first.digest), json.dumps(empty).encode(), "application/vnd.oci.image.index.v1+json")
    assert build_records_of(lab.reg, lab.envs, first.digest) == []  # the shared view lost both
    for result in (first, other):
        ref, record, record_digest = resolve(lab.settings, result.name)
        assert (ref, record.name, record_digest) == (result.ref, result.name, result.record)
    # And the cache still finds the composition (the builder's own record tag): no rebuild.
    assert lab.publish("third-name").cached and lab.builds == [NAME]


def test_publish_puts_its_record_back_into_a_referrers_index_that_lost_it(lab):
    first = lab.publish(NAME)
    empty = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}
    lab.reg.put_manifest(lab.envs, referrers_tag(first.digest), json.dumps(empty).encode(), "application/vnd.oci.image.index.v1+json")
    second = lab.publish("other-name")
    listed = {d.digest for d in lab.reg.referrers(lab.envs, first.digest)}
    assert second.record in listed


def test_two_builds_of_different_compositions_under_one_new_name_one_fails(lab):
    """B starts while A builds: B's claim overwrites A's, so A (publishing first) fails with one
    line before writing anything under the name, and B owns it."""
    from composer.publish import CLAIM_TYPE
    from composer.oci.artifacts import push_artifact

    upstream, provenance = lab.provenance("TrainFlow/1")
    comp = lab.composition(upstream, (("iniconfig", "2.0.0"),))
    inner = lab.builder(NAME, comp, upstream, provenance, OCI_MANIFEST)

    def build_it():
        push_artifact(lab.reg, lab.envs, {"owner": "b", "name": NAME, "spec_hash": "sha256:" + "b" * 64}, CLAIM_TYPE, {},
                      tag=claim_tag(NAME))  # the other build staked its claim meanwhile
        return inner()

    with pytest.raises(UsageError, match="concurrent build of a different composition") as info:
        lab.publish(NAME, build_it=build_it)
    assert "--update" in info.value.one_line()
    assert NAME not in lab.env_tags() and f"hist-{NAME}" not in lab.env_tags()  # nothing under the name
    assert run_tag(NAME) not in lab.run_tags()


def test_a_build_that_finds_the_name_taken_meanwhile_fails(lab):
    lab.publish(NAME, packages=(("iniconfig", "2.0.0"),))
    # A second, different composition under NAME without --update fails at once ...
    with pytest.raises(UsageError, match="already points to a different composition"):
        lab.publish(NAME, packages=(("six", "1.16.0"),))
    assert [v.number for v in read_history(lab.reg, lab.envs, NAME)] == [1]


def test_a_cache_hit_asks_the_registry_only_what_it_must(lab):
    """Each round trip of a cache hit, as a new process makes it (a fresh client), and why."""
    lab.publish(NAME)
    upstream, provenance = lab.provenance(UPSTREAM_RUN)
    comp = lab.composition(upstream)
    fresh = dataclasses.replace(lab.settings, clients={})
    since = len(lab.fake.requests)
    publish(fresh, connect(fresh), lab.envs, name=NAME, spec=comp.spec_hash, update=False, run_id=None,
            provenance=provenance, upstream=upstream, comp=comp, build_it=lambda: pytest.fail("a hit builds nothing"))
    asked = [(method, target.split("/v2/", 1)[1].split("?")[0]) for method, target in lab.fake.requests[since:]]
    spec_hex = comp.spec_hash.split(":")[1]
    expected = [
        ("HEAD", f"{lab.envs}/manifests/spec-{spec_hex}"),  # is this content built?
        ("GET", None),  # the referrers API: none here (2.8), so ...
        ("GET", None),  # ... the referrers tag: the records of the image
        ("GET", None),  # the record itself (by digest)
        ("GET", None),  # its content (a blob): checked against the spec and the image
        ("GET", None),  # the name's own record tag (the index may have lost it to a concurrent writer)
        ("GET", None),  # the spec's own record tag (likewise)
        ("HEAD", f"{lab.envs}/manifests/{NAME}"),  # does the name point here already?
        ("GET", f"{lab.envs}/manifests/hist-{NAME}"),  # is this the name's newest version?
        ("HEAD", None),  # the unique tag ...
        ("HEAD", f"{lab.envs}/manifests/{NAME}"),  # ... and the name: both in place, nothing written
        ("GET", None),  # the referrers tag again: is our record still listed (a writer may have dropped it)?
    ]
    assert [m for m, _ in asked] == [m for m, _ in expected], asked
    assert all(t is None or t == got for (_, t), (_, got) in zip(expected, asked)), asked
    assert not any(m in ("PUT", "POST", "PATCH", "DELETE") for m, _ in asked)


def test_a_cache_hit_lists_its_record_again_when_a_writer_dropped_it(lab):
    """The shared referrers index is rewritten by every publisher of the image: one can drop
    another's record. A later publish of the name, a cache hit included, puts it back."""
    first = lab.publish(NAME)
    index = referrers_tag(first.digest)
    lab.fake.put_raw_manifest(lab.envs, index, json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                                                          "manifests": []}).encode(), "application/vnd.oci.image.index.v1+json")
    assert build_records_of(lab.reg.clone(), lab.envs, first.digest) == []  # gone from the index ...
    second = lab.publish(NAME)
    assert second.cached
    listed = build_records_of(lab.reg.clone(), lab.envs, first.digest)
    assert [d.digest for _, d in listed] == [first.record]  # ... and back, found through the index alone
