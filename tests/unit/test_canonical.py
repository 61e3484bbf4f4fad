"""composer/canonical.py: canonical JSON bytes and sha256 digests."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import pytest

from composer.model.canonical import canonical_json, digest_hex, sha256_digest


def test_key_order_does_not_matter():
    a = {"b": 1, "a": {"y": [1, 2], "x": "s"}}
    b = OrderedDict([("a", OrderedDict([("x", "s"), ("y", [1, 2])])), ("b", 1)])
    assert canonical_json(a) == canonical_json(b) == b'{"a":{"x":"s","y":[1,2]},"b":1}'


def test_list_order_matters():
    assert canonical_json([1, 2]) != canonical_json([2, 1])


def test_compact_form_and_scalars():
    assert canonical_json({"k": [None, True, False, 0, -7, "s"]}) == b'{"k":[null,true,false,0,-7,"s"]}'
    assert canonical_json((1, "a")) == canonical_json([1, "a"])


def test_unicode_is_raw_utf8_and_stable():
    out = canonical_json({"name": "modèle-ü", "emoji": "🐍"})
    assert out == '{"emoji":"🐍","name":"modèle-ü"}'.encode("utf-8")
    assert b"\\u" not in out
    assert canonical_json({"name": "modèle-ü", "emoji": "🐍"}) == out


@pytest.mark.parametrize(
    "value, fragment",
    [
        (1.5, "floats"),
        ({"a": [1, 2.0]}, "$.a[1]: floats"),
        ({"s": {1, 2}}, "set"),
        ({"b": b"bytes"}, "bytes"),
        ({1: "x"}, "keys must be strings"),
        ({"a": {("t",): 1}}, "keys must be strings"),
        (object(), "object"),
    ],
)
def test_rejects_ambiguous_types(value, fragment):
    with pytest.raises(TypeError, match=fragment.replace("$", r"\$").replace("[", r"\[").replace("]", r"\]")):
        canonical_json(value)


def test_sha256_digest():
    assert sha256_digest(b"") == "sha256:" + hashlib.sha256(b"").hexdigest()
    assert sha256_digest(b"{}") == "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


def test_digest_hex_roundtrip():
    d = sha256_digest(b"composer")
    assert digest_hex(d) == d.split(":", 1)[1]


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "sha256:",
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 65,
        "sha256:" + "A" * 64,
        "sha256:" + "g" * 64,
        "sha512:" + "a" * 64,
        "a" * 64,
        "sha256-" + "a" * 64,
    ],
)
def test_digest_hex_rejects_malformed(bad):
    with pytest.raises(ValueError):
        digest_hex(bad)
