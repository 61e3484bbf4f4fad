"""composer.catalog.rebuild against the in-memory registry: the three triggers, read from each
name's own provenance (issue 16), and rebuild's report, with the real build replaced."""

from __future__ import annotations

import json

import pytest

from composer.catalog import rebuild as rebuild_module
from composer.catalog import resolve
from composer.catalog.listing import set_alias
from composer.catalog.rebuild import rebuild, triggers

NAME = "explainer"


@pytest.fixture
def extras(tmp_path):
    path = tmp_path / "extras.txt"
    path.write_text("iniconfig==2.0.0  # what the explainer needs\n")
    return path


@pytest.fixture
def no_builds(monkeypatch):
    """rebuild must not build in a dry run (the real build needs uv and a builder)."""

    def build(*args, **kwargs):
        raise AssertionError(f"rebuild built {args[1:]} {kwargs}")

    monkeypatch.setattr(rebuild_module, "build", build)


def record_of(lab, name):
    return resolve(lab.settings, name)[1]


def test_nothing_changed_means_no_trigger(lab, extras):
    lab.publish(NAME, extra=str(extras))
    assert triggers(lab.settings, record_of(lab, NAME)) == ([], None)


def test_a_re_recorded_upstream_run_is_a_trigger(lab, extras):
    lab.publish(NAME, extra=str(extras))
    retrained = lab.base_image(tag="v2", layer=b"retrained model")
    lab.record_run("TrainFlow/1", retrained)
    reasons, moved = triggers(lab.settings, record_of(lab, NAME))
    assert reasons == ["upstream run TrainFlow/1 was re-recorded"] and moved is None


def test_a_moved_base_tag_is_a_trigger(lab, extras):
    lab.publish(NAME, extra=str(extras))
    rebuilt = lab.base_image(tag="v1", layer=b"security update")  # v1 now points elsewhere
    reasons, moved = triggers(lab.settings, record_of(lab, NAME))
    assert reasons == [f"base tag v1 now points at {rebuilt.digest[:19]}"]
    assert moved == f"{lab.host}/t1/models/model-a:v1"


def test_a_deleted_base_tag_is_no_trigger(lab, extras):
    lab.publish(NAME, extra=str(extras))
    lab.fake.delete_manifest("t1/models/model-a", lab.base.digest)  # tag gone with it
    assert triggers(lab.settings, record_of(lab, NAME)) == ([], None)


def test_an_extras_file_asking_for_something_else_is_a_trigger(lab, extras):
    lab.publish(NAME, extra=str(extras))
    extras.write_text("iniconfig==2.0.0\nsix>=1.16\n")
    reasons, moved = triggers(lab.settings, record_of(lab, NAME))
    assert reasons == [f"extras file {extras} changed"] and moved is None


def test_an_extras_file_saying_the_same_differently_is_no_trigger(lab, extras):
    lab.publish(NAME, extra=str(extras))
    extras.write_text("# reformatted\nIniConfig == 2.0.0\n\n")  # normalises to the same requirement
    assert triggers(lab.settings, record_of(lab, NAME)) == ([], None)


def test_all_triggers_at_once(lab, extras):
    lab.publish(NAME, extra=str(extras))
    lab.record_run("TrainFlow/1", lab.base_image(tag="v2", layer=b"retrained"))
    extras.write_text("six\n")
    lab.base_image(tag="v1", layer=b"security update")
    reasons, moved = triggers(lab.settings, record_of(lab, NAME))
    assert [r.split(" ")[0] for r in reasons] == ["upstream", "extras", "base"] and moved is not None


def test_triggers_follow_each_names_own_provenance(lab, tmp_path):
    """Issue 16: B reused A's image from run R2 on team/other:v9; B reacts to R2 and v9, A does not."""
    a_txt, b_txt = tmp_path / "a.txt", tmp_path / "b.txt"
    a_txt.write_text("iniconfig==2.0.0\n")
    b_txt.write_text("iniconfig==2.0.0\n")
    other = lab.base_image("t1/team/other", "v9")
    lab.record_run("R2", other)
    lab.publish("a", "TrainFlow/1", extra=str(a_txt))
    assert lab.publish("b", "R2", extra=str(b_txt)).cached

    moved = lab.base_image("t1/team/other", "v9", layer=b"other moved")
    assert triggers(lab.settings, record_of(lab, "a")) == ([], None)
    reasons, where = triggers(lab.settings, record_of(lab, "b"))
    assert reasons == [f"base tag v9 now points at {moved.digest[:19]}"] and where == f"{lab.host}/t1/team/other:v9"

    lab.base_image("t1/team/other", "v9")  # back where it was
    lab.record_run("R2", lab.base_image("t1/team/other", "v10", layer=b"R2 retrained"))
    assert triggers(lab.settings, record_of(lab, "a")) == ([], None)
    assert triggers(lab.settings, record_of(lab, "b"))[0] == ["upstream run R2 was re-recorded"]

    b_txt.write_text("six\n")
    assert triggers(lab.settings, record_of(lab, "a")) == ([], None)
    assert f"extras file {b_txt} changed" in triggers(lab.settings, record_of(lab, "b"))[0]


def test_rebuild_dry_run_reports_without_building(lab, extras, tmp_path, no_builds):
    stale_txt = tmp_path / "stale.txt"
    stale_txt.write_text("six==1.16.0\n")
    lab.publish("fresh", extra=str(extras))
    stale = lab.publish("stale", packages=[("six", "1.16.0")], extra=str(stale_txt))
    set_alias(lab.settings, "stable", "fresh")
    stale_txt.write_text("six==1.17.0\n")
    since = len(lab.fake.requests)

    report = rebuild(lab.settings, [], dry_run=True)
    by_name = {r["name"]: r for r in report["results"]}
    assert sorted(by_name) == ["fresh", "stable", "stale"]
    assert by_name["fresh"]["status"] == "up-to-date" and by_name["fresh"]["reasons"] == []
    assert by_name["stale"]["status"] == "stale" and by_name["stale"]["reasons"] == [f"extras file {stale_txt} changed"]
    assert by_name["stale"]["before"] == stale.digest
    assert by_name["stable"]["status"] == "alias"
    assert report["dry_run"] and report["changed"] and report["errors"] == 0
    assert not any(m in ("PUT", "DELETE", "POST") for m, _ in lab.fake.requests[since:])  # nothing written

    only = rebuild(lab.settings, ["fresh"], dry_run=True)
    assert [r["name"] for r in only["results"]] == ["fresh"] and not only["changed"]


def test_rebuild_reports_errors_per_name(lab, tmp_path, no_builds):
    gone = tmp_path / "gone.txt"
    gone.write_text("iniconfig==2.0.0\n")
    lab.publish(NAME, extra=str(gone))
    gone.unlink()
    report = rebuild(lab.settings, [NAME, "unknown"], dry_run=True)
    by_name = {r["name"]: r for r in report["results"]}
    assert by_name[NAME]["status"] == "error" and "is not in this directory" in by_name[NAME]["error"]
    assert by_name["unknown"]["status"] == "error" and by_name["unknown"]["exit_code"] == 3
    assert report["errors"] == 2 and not report["changed"]


def test_rebuild_rebuilds_only_what_is_stale_with_the_names_own_inputs(lab, extras, tmp_path, monkeypatch):
    calls = []

    def build(settings, upstream_run, extra, name=None, update=False, base_update=None):
        calls.append((upstream_run, extra, name, update, base_update))
        return lab.publish(name, upstream_run, extra=extra, update=update)  # the stand-in builder

    monkeypatch.setattr(rebuild_module, "build", build)
    other_txt = tmp_path / "other.txt"
    other_txt.write_text("iniconfig==2.0.0\n")
    first = lab.publish(NAME, extra=str(extras))
    lab.publish("other", extra=str(other_txt))  # the same composition: a cache hit

    lab.record_run("TrainFlow/1", lab.base_image(tag="v2", layer=b"retrained"))
    report = rebuild(lab.settings, [NAME], dry_run=False)
    (entry,) = report["results"]
    assert calls == [("TrainFlow/1", str(extras), NAME, True, None)]
    assert entry["status"] == "rebuilt" and entry["before"] == first.digest and entry["after"] != first.digest
    assert entry["cached"] is False and report["changed"]
    assert resolve(lab.settings, NAME)[0] == entry["ref"]
    assert triggers(lab.settings, record_of(lab, NAME)) == ([], None)  # up to date now

    calls.clear()
    lab.base_image(tag="v2", layer=b"security update of v2")
    rebuild(lab.settings, [NAME], dry_run=False)
    assert calls[0][4] == f"{lab.host}/t1/models/model-a:v2"  # composed on what the tag points at now


# -- a record's inputs.extra is registry data (issue 11) --------------------------------------
@pytest.mark.parametrize("where", ["/etc/passwd", "../outside.txt", "sub/../../outside.txt"])
def test_rebuild_never_reads_a_path_outside_its_directory(lab, tmp_path, no_builds, monkeypatch, where):
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "outside.txt").write_text("SECRET-LINE-NEVER-ECHOED==1\n")
    monkeypatch.chdir(work)
    lab.publish(NAME, extra=where)  # a record pushed by someone else, naming a path of their choice
    opened = []
    real_open = open

    def spy(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy)
    report = rebuild(lab.settings, [NAME], dry_run=True)
    (entry,) = report["results"]
    assert entry["status"] == "error" and "is not in this directory" in entry["error"]
    assert not any("passwd" in p or "outside" in p for p in opened)
    assert rebuild_module.extras_file(where, work) is None


def test_an_unreadable_extras_file_is_named_never_quoted(lab, tmp_path, no_builds):
    extras = tmp_path / "extras.txt"
    extras.write_text("iniconfig==2.0.0\n")
    lab.publish(NAME, extra="extras.txt")
    extras.write_text("root:x:0:0:SECRET-LINE-NEVER-ECHOED:/root:/bin/bash\n")  # not an extras file any more
    report = rebuild(lab.settings, [NAME], dry_run=True)
    (entry,) = report["results"]
    assert entry["status"] == "error" and "extras.txt" in entry["error"]
    assert "SECRET-LINE" not in json.dumps(report)
