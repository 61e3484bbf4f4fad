"""Local state never reads back a torn, truncated or tampered entry as valid."""

import json

import pytest

from composer import state


@pytest.fixture(autouse=True)
def _state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPOSER_STATE_DIR", str(tmp_path))
    return tmp_path


def _entry_file(tmp_path):
    return next((tmp_path / "inputs").glob("*.json"))


def test_round_trip():
    state.write("inputs", "sha256:ab", {"spec_hash": "x", "lock": {"a": [1, 2]}})
    assert state.read("inputs", "sha256:ab") == {"spec_hash": "x", "lock": {"a": [1, 2]}}
    assert state.read("inputs", "sha256:cd") is None


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "tamper-body", "other-key", "other-format"])
def test_damaged_entries_are_absent_and_removed(tmp_path, damage):
    state.write("inputs", "sha256:ab", {"spec_hash": "x"})
    path = _entry_file(tmp_path)
    raw = path.read_bytes()
    doc = json.loads(raw)
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00\xff not json")
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "tamper-body":
        doc["body"]["spec_hash"] = "y"
        path.write_text(json.dumps(doc))
    elif damage == "other-key":
        doc["key"] = "sha256:zz"
        path.write_text(json.dumps(doc))
    else:
        doc["format"] = "composer.state/v0"
        path.write_text(json.dumps(doc))
    assert state.read("inputs", "sha256:ab") is None
    assert not path.exists()
    state.write("inputs", "sha256:ab", {"spec_hash": "x"})  # and it can be written afresh
    assert state.read("inputs", "sha256:ab") == {"spec_hash": "x"}


def test_a_crash_mid_write_leaves_only_a_temporary_file(tmp_path):
    state.write("inputs", "sha256:ab", {"spec_hash": "x"})
    (tmp_path / "inputs" / ".tmp-crashed").write_bytes(b'{"format": "composer.st')  # what a killed writer leaves
    assert state.read("inputs", "sha256:ab") == {"spec_hash": "x"}


def test_unwritable_state_dir_is_just_a_cold_cache(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    monkeypatch.setenv("COMPOSER_STATE_DIR", str(blocker))
    state.write("inputs", "sha256:ab", {"spec_hash": "x"})
    assert state.read("inputs", "sha256:ab") is None
