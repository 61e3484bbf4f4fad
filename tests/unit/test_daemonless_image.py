"""composer/daemonless.py: media types, config and manifest of the composed image, and when
the daemonless builder steps aside for BuildKit."""

from __future__ import annotations

import json

import pytest

from composer.builders import daemonless as dl
from composer.kinds.pip import Lock
from composer.oci.client import DOCKER_MANIFEST, OCI_MANIFEST, Descriptor

DIFF = "sha256:" + "d" * 64
BASE_CONFIG = {
    "architecture": "amd64",
    "os": "linux",
    "created": "2026-01-02T03:04:05.123456789Z",
    "config": {"Env": ["PATH=/opt/venv/bin:/usr/bin", "LANG=C.UTF-8"], "Cmd": ["python3"], "Labels": {"keep": "me", "over": "old"}},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "1" * 64, "sha256:" + "2" * 64]},
    "history": [
        {"created": "2026-01-01T00:00:00Z", "comment": "Imported from -"},
        {"created": "2026-01-02T00:00:00Z", "created_by": "RUN pip install"},
        {"created": "2026-01-02T00:00:00Z", "created_by": "ENV PATH=...", "empty_layer": True},
    ],
}


# -- media types ---------------------------------------------------------------------------
def test_docker_base_gets_docker_gzip(monkeypatch):
    monkeypatch.setattr(dl, "zstd_module", lambda: "zstandard")
    assert dl.choose_compression(DOCKER_MANIFEST) == "gzip"
    assert dl.layer_media_type(DOCKER_MANIFEST, "gzip") == "application/vnd.docker.image.rootfs.diff.tar.gzip"
    with pytest.raises(ValueError):
        dl.layer_media_type(DOCKER_MANIFEST, "zstd")


def test_oci_base_zstd_only_with_a_module(monkeypatch):
    monkeypatch.delenv("COMPOSER_LAYER_COMPRESSION", raising=False)
    monkeypatch.setattr(dl, "zstd_module", lambda: None)
    assert dl.choose_compression(OCI_MANIFEST) == "gzip"
    assert dl.layer_media_type(OCI_MANIFEST, "gzip") == "application/vnd.oci.image.layer.v1.tar+gzip"
    monkeypatch.setattr(dl, "zstd_module", lambda: "zstandard")
    assert dl.choose_compression(OCI_MANIFEST) == "zstd"
    assert dl.layer_media_type(OCI_MANIFEST, "zstd") == "application/vnd.oci.image.layer.v1.tar+zstd"
    monkeypatch.setenv("COMPOSER_LAYER_COMPRESSION", "gzip")
    assert dl.choose_compression(OCI_MANIFEST) == "gzip"
    monkeypatch.setenv("COMPOSER_LAYER_COMPRESSION", "bzip2")
    with pytest.raises(dl.UsageError):
        dl.choose_compression(OCI_MANIFEST)


def test_zstd_layer_when_available():
    if dl.zstd_module() is None:
        pytest.skip("no zstd module on this machine")
    import io

    a, b = io.BytesIO(), io.BytesIO()
    entries = [dl.Entry("a/b.py", "file", 0o644, data=b"x" * 1000)]
    la = dl.write_layer(entries, a, "zstd", 0)
    lb = dl.write_layer(entries, b, "zstd", 0)
    assert a.getvalue() == b.getvalue() and la.digest == lb.digest
    assert a.getvalue()[:4] == b"\x28\xb5\x2f\xfd"


# -- config ----------------------------------------------------------------------------------
def _config(**kw):
    args = dict(diff_id=DIFF, created="2026-01-02T03:04:05.123456789Z", created_by="composer daemonless: x",
                labels={"over": "new", "dev.composer.spec-hash": "sha256:abc"}, env={"COMPOSER_SPEC_HASH": "sha256:abc", "LANG": "C"})
    args.update(kw)
    return dl.compose_config(BASE_CONFIG, **args)


def test_config_appends_diff_id_and_history():
    cfg = _config()
    assert cfg["rootfs"]["diff_ids"] == BASE_CONFIG["rootfs"]["diff_ids"] + [DIFF]
    assert cfg["rootfs"]["type"] == "layers"
    assert cfg["history"][:3] == BASE_CONFIG["history"]
    assert cfg["history"][3] == {"created": "2026-01-02T03:04:05.123456789Z", "created_by": "composer daemonless: x",
                                 "comment": dl.HISTORY_COMMENT}
    assert sum(1 for h in cfg["history"] if not h.get("empty_layer")) == len(cfg["rootfs"]["diff_ids"])
    assert BASE_CONFIG["rootfs"]["diff_ids"] == ["sha256:" + "1" * 64, "sha256:" + "2" * 64]  # base untouched


def test_config_labels_and_env_merged():
    inner = _config()["config"]
    assert inner["Labels"] == {"keep": "me", "over": "new", "dev.composer.spec-hash": "sha256:abc"}
    # LANG replaced in place, the new variable appended; PATH (the venv first) kept.
    assert inner["Env"] == ["PATH=/opt/venv/bin:/usr/bin", "LANG=C", "COMPOSER_SPEC_HASH=sha256:abc"]
    assert inner["Cmd"] == ["python3"]


def test_history_padded_when_the_base_has_none():
    base = dict(BASE_CONFIG, history=[])
    cfg = dl.compose_config(base, diff_id=DIFF, created="t", created_by="c", labels={}, env={})
    assert len(cfg["history"]) == 3 and cfg["history"][-1]["created_by"] == "c"
    assert cfg["config"]["Labels"] == BASE_CONFIG["config"]["Labels"]


def test_config_without_config_section():
    cfg = dl.compose_config({"rootfs": {"type": "layers", "diff_ids": []}}, diff_id=DIFF, created="t", created_by="c",
                            labels={"a": "b"}, env={"E": "1"})
    assert cfg["config"] == {"Labels": {"a": "b"}, "Env": ["E=1"]}
    assert cfg["rootfs"]["diff_ids"] == [DIFF]


def test_created_is_deterministic(monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert dl.created_time(BASE_CONFIG) == BASE_CONFIG["created"]
    assert dl.created_time({}) == "1980-01-01T00:00:00Z"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert dl.created_time(BASE_CONFIG) == "2023-11-14T22:13:20Z"


def test_same_inputs_same_config_bytes():
    assert dl.config_bytes(_config()) == dl.config_bytes(_config())
    assert dl.config_bytes(_config()) != dl.config_bytes(_config(env={"COMPOSER_SPEC_HASH": "sha256:other"}))


def test_merge_env_rejects_bad_names():
    with pytest.raises(ValueError):
        dl.merge_env([], {"A=B": "c"})


# -- manifest ----------------------------------------------------------------------------------
BASE_MANIFEST = {
    "schemaVersion": 2,
    "mediaType": DOCKER_MANIFEST,
    "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": "sha256:" + "c" * 64, "size": 9},
    "layers": [
        {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": "sha256:" + "a" * 64, "size": 100},
        {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": "sha256:" + "b" * 64, "size": 200},
    ],
}


def test_manifest_keeps_base_layers_first_and_its_family():
    cfg = Descriptor("application/vnd.docker.container.image.v1+json", "sha256:" + "e" * 64, 10)
    layer = Descriptor(dl.DOCKER_LAYER_GZIP, "sha256:" + "f" * 64, 20)
    m = json.loads(dl.compose_manifest(BASE_MANIFEST, DOCKER_MANIFEST, cfg, layer, {"x": "y"}))
    assert m["mediaType"] == DOCKER_MANIFEST and m["schemaVersion"] == 2
    assert m["layers"][:2] == BASE_MANIFEST["layers"]
    assert m["layers"][2] == {"mediaType": dl.DOCKER_LAYER_GZIP, "digest": "sha256:" + "f" * 64, "size": 20}
    assert m["config"]["digest"] == cfg.digest
    assert "annotations" not in m  # Docker manifests have none


def test_oci_manifest_carries_base_annotations():
    cfg = Descriptor(dl.OCI_CONFIG, "sha256:" + "e" * 64, 10)
    layer = Descriptor(dl.OCI_LAYER_GZIP, "sha256:" + "f" * 64, 20)
    body = dl.compose_manifest({"layers": []}, OCI_MANIFEST, cfg, layer, {"org.opencontainers.image.base.digest": "sha256:1"})
    assert body == dl.compose_manifest({"layers": []}, OCI_MANIFEST, cfg, layer, {"org.opencontainers.image.base.digest": "sha256:1"})
    m = json.loads(body)
    assert m["mediaType"] == OCI_MANIFEST
    assert m["annotations"] == {"org.opencontainers.image.base.digest": "sha256:1"}


# -- when to step aside ---------------------------------------------------------------------------
def _upstream(**over):
    up = {
        "python": {"executable": "/opt/venv/bin/python3", "version": "3.11.2", "implementation": "cpython", "prefix": "/opt/venv",
                   "kind": "venv", "site_packages": "/opt/venv/lib/python3.11/site-packages", "externally_managed": False},
        "platform": {"os": "linux", "architecture": "amd64", "python_platform": "x86_64-manylinux_2_36"},
    }
    for key, value in over.items():
        section, _, field = key.partition("__")
        up[section][field] = value
    return up


LOCK = Lock(requirements=["six"], packages=[{"name": "six", "version": "1.17.0", "hashes": ["sha256:" + "0" * 64]}],
            added=[{"name": "six", "version": "1.17.0", "hashes": ["sha256:" + "0" * 64]}])


def test_supported():
    assert dl.unsupported_reason(LOCK, _upstream()) is None
    debian = _upstream(python__executable="/usr/bin/python3", python__kind="system", python__externally_managed=True,
                       python__site_packages="/usr/local/lib/python3.11/dist-packages", python__prefix="/usr")
    assert dl.unsupported_reason(LOCK, debian) is None


@pytest.mark.parametrize("over, words", [
    ({"python__kind": "conda"}, "conda"),
    ({"platform__os": "windows"}, "windows"),
    ({"python__implementation": "pypy"}, "pypy"),
    ({"platform__python_platform": "x86_64-apple-darwin"}, "Linux"),
    ({"platform__python_platform": None}, "none"),
    ({"python__site_packages": "/usr/lib/python3/dist-packages"}, "site-packages"),
    ({"python__site_packages": "/lib/python3.11/site-packages"}, "/bin"),
    ({"python__executable": "python3"}, "absolute"),
    ({"python__version": "three"}, "version"),
])
def test_unsupported(over, words):
    reason = dl.unsupported_reason(LOCK, _upstream(**over))
    assert reason and words in reason


def test_unhashed_package_unsupported():
    lock = Lock(requirements=["six"], packages=[], added=[{"name": "six", "version": "1", "hashes": []}])
    assert "six" in dl.unsupported_reason(lock, _upstream())


def test_no_wheel_from_uv_output():
    up = _upstream()
    sdist_only = ("error: No solution found when resolving dependencies\n  cause: Because docopt==0.6.2 has no usable wheels and "
                  "you require docopt==0.6.2, we can conclude that your requirements are unsatisfiable.\n\n"
                  "hint: Wheels are required for `docopt` because building from source is disabled for all packages\n")
    reason = dl.no_wheel_reason(sdist_only, up)
    assert reason.startswith("docopt==0.6.2 has no wheel for x86_64-manylinux_2_36")
    abi = "  cause: Because pywin32==306 has no wheels with a matching Python ABI tag (e.g., `cp313`) and you require pywin32==306"
    assert dl.no_wheel_reason(abi, up).startswith("pywin32==306 has no wheel")
    assert dl.no_wheel_reason("error: Failed to download `numpy==2.1.3`\n  cause: Hash mismatch for `numpy==2.1.3`", up) is None


def test_needs_buildkit_is_a_build_error_with_its_reason():
    exc = dl.NeedsBuildKit("docopt has no wheel")
    assert isinstance(exc, dl.BuildError) and exc.exit_code == 6
    assert exc.reason == "docopt has no wheel"
    assert "BuildKit" in exc.one_line()
