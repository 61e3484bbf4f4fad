"""Export, import, mirror and check on in-memory registries (the logic; tests/integration/
test_recovery.py does the same with real registries, skopeo and Docker)."""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile

import pytest

from composer.catalog import resolve
from composer.catalog.check import check
from composer.catalog.listing import history
from composer.catalog.transfer import export, import_archive, mirror
from composer.errors import UsageError, VerificationError
from composer.store import load_run_record
from tests.fakes import FakeRegistry


@pytest.fixture
def other(fake_settings):
    """A second, empty registry and settings for it."""
    with FakeRegistry() as fake:
        yield fake, dataclasses.replace(fake_settings, registry=f"{fake.host}/t2", clients={})


def _digest(ref: str) -> str:
    return ref.split("@", 1)[1]


def test_export_then_import_into_an_empty_registry_keeps_every_digest(lab, other, tmp_path):
    first = lab.publish("env-a", run_id="Explain/1")
    second = lab.publish("env-a", packages=(("iniconfig", "2.0.0"), ("six", "1.16.0")), update=True)
    out = export(lab.settings, ["env-a"], str(tmp_path / "a.tar"))
    assert out["names"] == ["env-a"] and out["blobs"] >= 4
    fake, settings = other
    result = import_archive(settings, str(tmp_path / "a.tar"))
    assert result["manifests"]["written"] > 0

    ref, record, record_digest = resolve(settings, "env-a")
    assert _digest(ref) == second.digest and record_digest == second.record
    assert _digest(resolve(settings, "env-a@1")[0]) == first.digest
    assert [v["digest"] for v in history(settings, "env-a")] == [first.digest, second.digest]
    from composer.oci import connect
    from composer.store import runs_repository
    for run in ("TrainFlow/1", "Explain/1", "env-a"):
        assert load_run_record(connect(settings), runs_repository(settings), run) is not None, run
    # The upstream image came along, at its own repository path.
    assert fake.manifest("t1/models/model-a", lab.base.digest) is not None
    assert check(settings, [])["ok"]

    again = import_archive(settings, str(tmp_path / "a.tar"))
    assert again["manifests"]["written"] == 0 and again["bytes"] == 0


def test_a_name_pointing_elsewhere_is_refused_before_anything_is_written_unless_update(lab, tmp_path):
    lab.publish("env-a")
    export(lab.settings, ["env-a"], str(tmp_path / "a.tar"))
    moved = lab.publish("env-a", packages=(("six", "1.16.0"),), update=True)
    before = len(lab.fake.requests)
    with pytest.raises(UsageError, match="already points to"):
        import_archive(lab.settings, str(tmp_path / "a.tar"))
    assert lab.manifest_puts(before) == []
    out = import_archive(lab.settings, str(tmp_path / "a.tar"), update=True)
    assert out["tags"]["moved"] == ["t1/envs:env-a"]
    versions = history(lab.settings, "env-a")
    assert [v["reason"] for v in versions] == ["built", "built", "imported"]
    assert versions[-1]["digest"] == versions[0]["digest"] != moved.digest


def test_export_of_one_version_carries_only_it(lab, other, tmp_path):
    first = lab.publish("env-a")
    lab.publish("env-a", packages=(("six", "1.16.0"),), update=True)
    export(lab.settings, ["env-a@1"], str(tmp_path / "v1.tar"))
    fake, settings = other
    import_archive(settings, str(tmp_path / "v1.tar"))
    assert _digest(resolve(settings, "env-a")[0]) == first.digest
    assert [v["version"] for v in history(settings, "env-a")] == [1]


def test_a_corrupt_archive_is_refused(lab, other, tmp_path):
    lab.publish("env-a")
    path = tmp_path / "a.tar"
    export(lab.settings, ["env-a"], str(path))
    bad = tmp_path / "bad.tar"
    with tarfile.open(path) as src, tarfile.open(bad, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None
            if data and member.name.startswith("blobs/") and data.startswith(b"layer for"):
                data = b"X" + data[1:]  # other bytes than the digest says
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    with pytest.raises(VerificationError, match="does not match its digest"):
        import_archive(other[1], str(bad))


def test_export_writes_nothing_on_failure(lab, tmp_path):
    with pytest.raises(Exception):
        export(lab.settings, ["no-such-env"], str(tmp_path / "x.tar"))
    assert list(tmp_path.glob("x.tar*")) == []


def test_mirror_is_incremental(lab, other):
    lab.publish("env-a")
    fake, settings = other
    first = mirror(lab.settings, settings.registry, [])
    assert first["bytes"] > 0 and first["blobs"]["copied"] > 0
    lab.publish("env-b", packages=(("six", "1.16.0"),))
    second = mirror(lab.settings, settings.registry, [])
    # only env-b's own: its layer, config, build record and run record; the base is there already
    assert second["blobs"]["copied"] == 4 and second["blobs"]["present"] > 0
    third = mirror(lab.settings, settings.registry, [])
    assert third["bytes"] == 0 and third["manifests"]["written"] == 0
    assert _digest(resolve(settings, "env-b")[0]) == _digest(resolve(lab.settings, "env-b")[0])


def test_check_reports_missing_layers_records_and_run_records(lab):
    built = lab.publish("env-a")
    assert check(lab.settings, [])["ok"]
    manifest = json.loads(lab.fake.manifest(lab.envs, built.digest))
    layer = manifest["layers"][-1]["digest"]
    lab.fake.delete_manifest(lab.runs, lab.upstream_record)
    out = check(lab.settings, ["env-a"])
    assert [p["digest"] for p in out["problems"]] == [lab.upstream_record]  # named by the build record
    lab.fake.delete_blob(lab.envs, layer)
    lab.fake.delete_manifest(lab.envs, built.record)
    out = check(lab.settings, ["env-a"])
    missing = {p["digest"] for p in out["problems"] if p["problem"] == "missing"}
    assert {layer, built.record} <= missing and not out["ok"]
