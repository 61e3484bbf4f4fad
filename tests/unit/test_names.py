"""composer/names.py: tags, environment names, image references, name templates, run tags."""

from __future__ import annotations

import pytest

from composer.errors import UsageError
from composer.model.refs import (
    MAX_NAME_LEN, TAG_RE, ImageRef, check_name, parse_image_ref, referrers_tag, render_name, run_tag, slug,
)

DIGEST = "sha256:" + "ab" * 32


# -- TAG grammar ----------------------------------------------------------------
@pytest.mark.parametrize("tag", ["a", "A", "0", "_", "latest", "v1.2.3", "my_tag-1.0", "_private", "a" * 128])
def test_valid_tags(tag):
    assert TAG_RE.match(tag)


@pytest.mark.parametrize(
    "tag",
    ["", "a" * 129, ".hidden", "-dash", "a/b", "has space", " lead", "trail ", "tab\tin", "colon:x", "at@x", "é"],
)
def test_invalid_tags(tag):
    assert not TAG_RE.match(tag)


def test_tag_with_trailing_newline_is_invalid():
    assert not TAG_RE.match("abc\n")


# -- check_name -----------------------------------------------------------------
@pytest.mark.parametrize("name", ["explainer-modela-run42", "A.b_c-1", "x", "a" * MAX_NAME_LEN, "runner", "spec"])
def test_check_name_accepts_and_returns_name(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["spec-abc", "sha256-abc", "run-abc"])
def test_check_name_rejects_reserved_prefixes(name):
    with pytest.raises(UsageError, match="reserves"):
        check_name(name)


def test_check_name_rejects_too_long_with_length_in_message():
    name = "a" * (MAX_NAME_LEN + 1)
    with pytest.raises(UsageError) as info:
        check_name(name)
    assert str(MAX_NAME_LEN + 1) in info.value.message
    assert str(MAX_NAME_LEN) in info.value.hint


def test_max_name_len_leaves_room_for_unique_tag_suffix():
    # NAME-<12 hex of the spec hash> must still be a valid tag.
    assert TAG_RE.match("a" * MAX_NAME_LEN + "-" + "0" * 12)


@pytest.mark.parametrize("name", ["", "Bad Name", "a/b", ".dot", "-dash", "ünï"])
def test_check_name_rejects_invalid(name):
    with pytest.raises(UsageError) as info:
        check_name(name)
    assert "\n" not in info.value.one_line()


def test_check_name_rejects_trailing_newline():
    with pytest.raises(UsageError):
        check_name("abc\n")


# -- parse_image_ref --------------------------------------------------------------
def test_parse_host_port_repo_tag():
    ref = parse_image_ref("127.0.0.1:5000/models/model-a:attrs23")
    assert ref == ImageRef("127.0.0.1:5000", "models/model-a", "attrs23", None)
    assert ref.name == "127.0.0.1:5000/models/model-a"
    assert ref.reference == "attrs23"
    assert str(ref) == "127.0.0.1:5000/models/model-a:attrs23"


def test_parse_digest_wins_over_tag():
    ref = parse_image_ref(f"registry.example.com/ml/base:3.11@{DIGEST}")
    assert ref.registry == "registry.example.com"
    assert ref.repository == "ml/base"
    assert ref.tag == "3.11"
    assert ref.digest == DIGEST
    assert ref.reference == DIGEST
    assert ref.pinned() == f"registry.example.com/ml/base@{DIGEST}"
    assert str(ref) == f"registry.example.com/ml/base@{DIGEST}"


def test_parse_without_tag_defaults_to_latest_reference():
    ref = parse_image_ref("localhost:5000/base")
    assert ref.tag is None and ref.digest is None
    assert ref.reference == "latest"
    with pytest.raises(ValueError):
        ref.pinned()
    assert ref.with_digest(DIGEST).pinned() == f"localhost:5000/base@{DIGEST}"


def test_parse_ipv6_host():
    assert parse_image_ref("[::1]:5000/x/y:1").registry == "[::1]:5000"


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("python:3.11", "names no registry"),  # no slash at all
        ("library/python:3.11", "names no registry host"),  # Docker Hub's implicit host is not guessed
        ("127.0.0.1:5000/Models/A:1", "invalid repository"),
        ("127.0.0.1:5000/models/a:.bad", "invalid tag"),
        ("127.0.0.1:5000/models/a@sha256:abc", "malformed digest"),
        (f"127.0.0.1:5000/models/a@{DIGEST.upper()}", "malformed digest"),
        ("127.0.0.1:5000/models/a@md5:" + "a" * 32, "malformed digest"),
        ("127.0.0.1:5000/", "invalid repository"),
        ("http://127.0.0.1:5000/a", "names no registry host"),
    ],
)
def test_parse_rejects(text, fragment):
    with pytest.raises(UsageError) as info:
        parse_image_ref(text)
    assert fragment in info.value.message
    assert "\n" not in info.value.one_line()


def test_parse_rejects_digest_with_trailing_newline():
    with pytest.raises(UsageError):
        parse_image_ref(f"127.0.0.1:5000/models/a@{DIGEST}\n")


def test_parse_single_label_host_with_port():
    assert parse_image_ref("registry:5000/ml/base:1").registry == "registry:5000"


# -- render_name / slug -------------------------------------------------------------
def test_render_name_fills_and_slugifies():
    got = render_name("explainer-{model}-{run_id}", {"model": "modelA", "run_id": "TrainFlow/12"})
    assert got == "explainer-modelA-TrainFlow-12"


def test_render_name_slug_of_upstream_run():
    assert render_name("compose-{upstream_run}", {"upstream_run": "TrainFlow/12"}) == "compose-TrainFlow-12"


def test_render_name_without_placeholders():
    assert render_name("fixed-name", {}) == "fixed-name"


def test_render_name_missing_variable_names_it():
    with pytest.raises(UsageError) as info:
        render_name("explainer-{model}-{run_id}", {"model": "a"})
    line = info.value.one_line()
    assert "{run_id}" in line
    assert "--var run_id=VALUE" in line
    assert "known: model" in line


def test_render_name_malformed_template():
    with pytest.raises(UsageError, match="malformed"):
        render_name("explainer-{model", {"model": "a"})


def test_render_name_result_is_checked():
    with pytest.raises(UsageError, match="reserves"):
        render_name("run-{x}", {"x": "1"})


@pytest.mark.parametrize(
    "text, expected",
    [("TrainFlow/12", "TrainFlow-12"), ("a  b", "a-b"), ("//x//", "x"), ("", "x"), ("...", "x"), ("ok_1.2", "ok_1.2")],
)
def test_slug(text, expected):
    assert slug(text) == expected


def test_slug_limit_does_not_end_in_separator():
    assert slug("a" * 9 + "-b", limit=10) == "a" * 9


# -- run_tag / referrers_tag --------------------------------------------------------
def test_run_tag_is_deterministic_and_valid():
    assert run_tag("TrainFlow/12") == run_tag("TrainFlow/12")
    assert run_tag("TrainFlow/12").startswith("run-TrainFlow-12-")
    for run_id in ["TrainFlow/12", "x", "", "a b/c:d@e", "ü" * 10, "x" * 1000, "-.-"]:
        tag = run_tag(run_id)
        assert TAG_RE.match(tag), tag
        assert len(tag) <= 128


def test_run_tag_distinct_even_when_slugs_collide():
    ids = ["TrainFlow/12", "TrainFlow-12", "TrainFlow 12", "TrainFlow/13", "trainflow/12"]
    tags = {run_tag(i) for i in ids}
    assert len(tags) == len(ids)
    long_a, long_b = "x" * 200 + "a", "x" * 200 + "b"  # same 80-char slug prefix
    assert run_tag(long_a) != run_tag(long_b)


def test_referrers_tag():
    assert referrers_tag(DIGEST) == "sha256-" + "ab" * 32
    assert TAG_RE.match(referrers_tag(DIGEST))
