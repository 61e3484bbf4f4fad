"""The daemonless builder's image: media types, config and manifest of the composed image
(composer/oci/mutate.py), the whole build against an in-memory registry (golden digests: the
same inputs must give the same image as before), and when the builder steps aside for BuildKit."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import os
import threading
import zlib
from pathlib import Path

import pytest

from composer.builders import daemonless as dl
from composer.builders.base import BuildJob, CannotBuild
from composer.builders.daemonless import install, tarball
from composer.builders.daemonless.layout import Entry
from composer.errors import BuildError, RegistryError, UsageError, VerificationError
from composer.kinds.pip import Lock
from composer.model.records import RunRecord
from composer.model.refs import ImageRef
from composer.oci import mutate
from composer.oci.client import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, Descriptor, Pieces
from composer.settings import Settings

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
def test_docker_base_gets_docker_gzip():
    assert mutate.choose_compression(DOCKER_MANIFEST, "auto", have_zstd=True) == "gzip"
    assert mutate.choose_compression(DOCKER_MANIFEST, "zstd", have_zstd=True) == "gzip"
    assert mutate.layer_media_type(DOCKER_MANIFEST, "gzip") == "application/vnd.docker.image.rootfs.diff.tar.gzip"
    with pytest.raises(ValueError):
        mutate.layer_media_type(DOCKER_MANIFEST, "zstd")


def test_oci_base_zstd_only_when_asked_for():
    """gzip stays the default (every engine unpacks it); zstd is opt-in, for OCI bases."""
    assert mutate.choose_compression(OCI_MANIFEST, "auto", have_zstd=False) == "gzip"
    assert mutate.layer_media_type(OCI_MANIFEST, "gzip") == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert mutate.choose_compression(OCI_MANIFEST, "auto", have_zstd=True) == "gzip"
    assert mutate.choose_compression(OCI_MANIFEST, "zstd", have_zstd=True) == "zstd"
    assert mutate.layer_media_type(OCI_MANIFEST, "zstd") == "application/vnd.oci.image.layer.v1.tar+zstd"
    assert mutate.choose_compression(OCI_MANIFEST, "gzip", have_zstd=True) == "gzip"  # COMPOSER_LAYER_COMPRESSION=gzip
    with pytest.raises(UsageError, match="zstandard module is not installed"):
        mutate.choose_compression(OCI_MANIFEST, "zstd", have_zstd=False)
    with pytest.raises(ValueError):
        mutate.choose_compression(OCI_MANIFEST, "bzip2", have_zstd=True)  # settings refuse it first (exit 2)


def test_zstd_layer_when_available():
    if tarball.zstd_module() is None:
        pytest.skip("no zstd module on this machine")
    a, b = io.BytesIO(), io.BytesIO()
    entries = [Entry("a/b.py", "file", 0o644, data=b"x" * 1000)]
    la = tarball.write_layer(entries, a, "zstd", 0)
    lb = tarball.write_layer(entries, b, "zstd", 0)
    assert a.getvalue() == b.getvalue() and la.digest == lb.digest
    assert a.getvalue()[:4] == b"\x28\xb5\x2f\xfd"


# -- config ----------------------------------------------------------------------------------
def _config(**kw):
    args = dict(diff_id=DIFF, created="2026-01-02T03:04:05.123456789Z", created_by="composer daemonless: x", comment=dl.HISTORY_COMMENT,
                labels={"over": "new", "dev.composer.spec-hash": "sha256:abc"}, env={"COMPOSER_SPEC_HASH": "sha256:abc", "LANG": "C"})
    args.update(kw)
    return mutate.compose_config(BASE_CONFIG, **args)


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
    cfg = mutate.compose_config(base, diff_id=DIFF, created="t", created_by="c", comment="k", labels={}, env={})
    assert len(cfg["history"]) == 3 and cfg["history"][-1]["created_by"] == "c"
    assert cfg["config"]["Labels"] == BASE_CONFIG["config"]["Labels"]


def test_config_without_config_section():
    cfg = mutate.compose_config({"rootfs": {"type": "layers", "diff_ids": []}}, diff_id=DIFF, created="t", created_by="c",
                                comment="k", labels={"a": "b"}, env={"E": "1"})
    assert cfg["config"] == {"Labels": {"a": "b"}, "Env": ["E=1"]}
    assert cfg["rootfs"]["diff_ids"] == [DIFF]


def test_created_is_deterministic(monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert dl.created_time(BASE_CONFIG) == BASE_CONFIG["created"]
    assert dl.created_time({}) == "1980-01-01T00:00:00Z"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert dl.created_time(BASE_CONFIG) == "2023-11-14T22:13:20Z"


def test_same_inputs_same_config_bytes():
    assert mutate.config_bytes(_config()) == mutate.config_bytes(_config())
    assert mutate.config_bytes(_config()) != mutate.config_bytes(_config(env={"COMPOSER_SPEC_HASH": "sha256:other"}))


def test_merge_env_rejects_bad_names():
    with pytest.raises(ValueError):
        mutate.merge_env([], {"A=B": "c"})


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
    layer = Descriptor(mutate.DOCKER_LAYER_GZIP, "sha256:" + "f" * 64, 20)
    m = json.loads(mutate.compose_manifest(BASE_MANIFEST, DOCKER_MANIFEST, cfg, layer, {"x": "y"}))
    assert m["mediaType"] == DOCKER_MANIFEST and m["schemaVersion"] == 2
    assert m["layers"][:2] == BASE_MANIFEST["layers"]
    assert m["layers"][2] == {"mediaType": mutate.DOCKER_LAYER_GZIP, "digest": "sha256:" + "f" * 64, "size": 20}
    assert m["config"]["digest"] == cfg.digest
    assert "annotations" not in m  # Docker manifests have none


def test_oci_manifest_carries_base_annotations():
    cfg = Descriptor(mutate.OCI_CONFIG, "sha256:" + "e" * 64, 10)
    layer = Descriptor(mutate.OCI_LAYER_GZIP, "sha256:" + "f" * 64, 20)
    body = mutate.compose_manifest({"layers": []}, OCI_MANIFEST, cfg, layer, {"org.opencontainers.image.base.digest": "sha256:1"})
    assert body == mutate.compose_manifest({"layers": []}, OCI_MANIFEST, cfg, layer, {"org.opencontainers.image.base.digest": "sha256:1"})
    m = json.loads(body)
    assert m["mediaType"] == OCI_MANIFEST
    assert m["annotations"] == {"org.opencontainers.image.base.digest": "sha256:1"}


# -- when to step aside ---------------------------------------------------------------------------
RUN_RECORD = {
    "schema": "composer.run-record/v1", "run": "Flow/1",
    "image": {"repository": "127.0.0.1:5000/models/a", "digest": "sha256:" + "a" * 64, "tag": "v1"},
    "python": {"executable": "/opt/venv/bin/python3", "version": "3.11.2", "implementation": "cpython", "prefix": "/opt/venv",
               "kind": "venv", "site_packages": "/opt/venv/lib/python3.11/site-packages", "externally_managed": False},
    "platform": {"os": "linux", "architecture": "amd64", "variant": None, "libc": "glibc", "libc_version": "2.36",
                 "python_platform": "x86_64-manylinux_2_36"},
    "distributions": [{"name": "attrs", "version": "23.1.0"}],
    "distributions_source": "image", "created": "2026-01-01T00:00:00Z", "composer_version": "0.1.0",
}
SPEC = "sha256:" + "5" * 64


def _upstream(**over) -> RunRecord:
    """The sample run record with python__FIELD / platform__FIELD replaced (unchecked, so the
    builder's own checks are what is tested)."""
    up = RunRecord.from_json(RUN_RECORD)
    python = {k.split("__", 1)[1]: v for k, v in over.items() if k.startswith("python__")}
    platform = {k.split("__", 1)[1]: v for k, v in over.items() if k.startswith("platform__")}
    return dataclasses.replace(up, python=dataclasses.replace(up.python, **python),
                               platform=dataclasses.replace(up.platform, **platform))


LOCK = Lock(requirements=["six"], packages=[{"name": "six", "version": "1.17.0", "hashes": ["sha256:" + "0" * 64]}],
            added=[{"name": "six", "version": "1.17.0", "hashes": ["sha256:" + "0" * 64]}])


def _job(upstream=None, *, lock=LOCK, kind="pip", settings=None, registry=None, base=None, labels=None, env=None) -> BuildJob:
    def prepare_context(context):
        raise AssertionError("the daemonless builder writes no BuildKit context")

    return BuildJob(
        settings=settings or Settings(registry="127.0.0.1:5000/ml", progress="quiet"),
        registry=registry if registry is not None else MemoryRegistry("127.0.0.1:5000"),
        repository="ml/envs", tag="t", base=base or ImageRef("127.0.0.1:5000", "models/a", "v1", "sha256:" + "a" * 64),
        upstream=upstream if upstream is not None else _upstream(), kind=kind, lock=lock, spec_hash=SPEC,
        dockerfile="FROM x\n", prepare_context=prepare_context, labels=labels or {}, env=env or {},
    )


def test_supported():
    assert dl.unsupported_reason(_job()) is None
    debian = _upstream(python__executable="/usr/bin/python3", python__kind="system", python__externally_managed=True,
                       python__site_packages="/usr/local/lib/python3.11/dist-packages", python__prefix="/usr")
    assert dl.unsupported_reason(_job(debian)) is None


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
    reason = dl.unsupported_reason(_job(_upstream(**over)))
    assert reason and words in reason


def test_conda_kind_unsupported():
    conda_upstream = _upstream(python__kind="conda", python__prefix="/opt/conda", python__executable="/opt/conda/bin/python",
                               python__site_packages="/opt/conda/lib/python3.11/site-packages")
    assert dl.unsupported_reason(_job(conda_upstream, kind="conda")).startswith("the upstream is a conda environment")
    # An environment.yml on a plain venv: still conda packages.
    assert dl.unsupported_reason(_job(kind="conda")).startswith("conda packages are not wheels")


def test_unsupported_job_is_refused_by_build_before_any_registry_call():
    with pytest.raises(CannotBuild) as info:
        dl.DaemonlessBuilder().build(_job(kind="conda", registry=object()))
    assert info.value.reason.startswith("conda packages are not wheels")


def test_unhashed_package_unsupported():
    lock = Lock(requirements=["six"], packages=[], added=[{"name": "six", "version": "1", "hashes": []}])
    assert "six" in dl.unsupported_reason(_job(lock=lock))


def test_no_wheel_from_uv_output():
    up = _upstream()
    sdist_only = ("error: No solution found when resolving dependencies\n  cause: Because docopt==0.6.2 has no usable wheels and "
                  "you require docopt==0.6.2, we can conclude that your requirements are unsatisfiable.\n\n"
                  "hint: Wheels are required for `docopt` because building from source is disabled for all packages\n")
    reason = install.no_wheel_reason(sdist_only, up)
    assert reason.startswith("docopt==0.6.2 has no wheel for x86_64-manylinux_2_36")
    abi = "  cause: Because pywin32==306 has no wheels with a matching Python ABI tag (e.g., `cp313`) and you require pywin32==306"
    assert install.no_wheel_reason(abi, up).startswith("pywin32==306 has no wheel")
    assert install.no_wheel_reason("error: Failed to download `numpy==2.1.3`\n  cause: Hash mismatch for `numpy==2.1.3`", up) is None


def test_cannot_build_is_a_build_error_with_its_reason():
    exc = CannotBuild("daemonless", "docopt has no wheel")
    assert isinstance(exc, BuildError) and exc.exit_code == 6
    assert exc.reason == "docopt has no wheel"
    assert "BuildKit" in exc.one_line()


# -- the whole build, against an in-memory registry ----------------------------------------------------
def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class MemoryRegistry:
    """The Registry methods the daemonless builder calls, over dicts; pushes are logged."""

    def __init__(self, host: str):
        self.host, self.base = host, f"http://{host}"
        self.blobs, self.manifests, self.pushed, self.transfers = {}, {}, [], []

    fail_stream = False

    def note_transfer(self, action, repo, digest, size):
        self.transfers.append((action, repo, digest))

    def get_manifest(self, repo, ref):
        got = self.manifests.get((repo, ref))
        return None if got is None else (got[0], Descriptor(got[1], _sha(got[0]), len(got[0])))

    def put_manifest(self, repo, ref, body, media_type):
        self.manifests[(repo, ref)] = self.manifests[(repo, _sha(body))] = (body, media_type)
        self.pushed.append(("manifest", ref, body))
        return Descriptor(media_type, _sha(body), len(body)), True

    def get_blob(self, repo, digest):
        return self.blobs[(repo, digest)]

    def blob_size(self, repo, digest):
        data = self.blobs.get((repo, digest))
        return None if data is None else len(data)

    def mount_blob(self, repo, digest, from_repo):
        if (from_repo, digest) not in self.blobs:
            return False
        self.blobs[(repo, digest)] = self.blobs[(from_repo, digest)]
        self.transfers.append(("mounted", repo, digest))
        return True

    def copy_blob(self, source, source_repo, digest, size, repo, media_type="application/octet-stream"):
        self.blobs[(repo, digest)] = source.blobs[(source_repo, digest)]
        self.transfers.append(("copied", repo, digest))

    def upload_blob(self, repo, digest, size, *, path=None, data=None, media_type="application/octet-stream"):
        if path is not None:
            self.transfers.append(("resent", repo, digest))
        data = Path(path).read_bytes() if data is None else data
        assert (_sha(data), len(data)) == (digest, size)
        self.blobs[(repo, digest)] = data
        self.pushed.append(("blob", media_type, data))
        return Descriptor(media_type, digest, size)

    def clone(self):
        twin = MemoryRegistry(self.host)
        twin.blobs, twin.manifests, twin.pushed = self.blobs, self.manifests, self.pushed
        twin.fail_stream = getattr(self, "fail_stream", False)
        return twin

    def upload_blob_chunks(self, repo, chunks, media_type="application/octet-stream", digest_of=None):
        data = b"".join(b"".join(c) if isinstance(c, Pieces) else c for c in chunks)
        if self.fail_stream:
            raise RegistryError("the stream broke", "retry")
        self.blobs[(repo, _sha(data))] = data
        self.pushed.append(("blob", media_type, data))
        return Descriptor(media_type, _sha(data), len(data))


def _seed_base(reg: MemoryRegistry, media_type: str, index: bool = False) -> str:
    """A two-layer base image in models/a; returns its digest (an index's, when index)."""
    layers, diff_ids = [], []
    for i in range(2):
        blob = f"layer {i}".encode() * 100
        reg.blobs[("models/a", _sha(blob))] = blob
        layers.append({"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip" if media_type == DOCKER_MANIFEST
                       else "application/vnd.oci.image.layer.v1.tar+gzip", "digest": _sha(blob), "size": len(blob)})
        diff_ids.append("sha256:" + f"{i}" * 64)
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": "2026-01-02T03:04:05.123456789Z",
        "config": {"Env": ["PATH=/opt/venv/bin:/usr/bin", "LANG=C.UTF-8"], "Cmd": ["python3"], "Labels": {"keep": "me"}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "2026-01-01T00:00:00Z", "created_by": "x"}],
    }).encode()
    reg.blobs[("models/a", _sha(config))] = config
    config_type = "application/vnd.docker.container.image.v1+json" if media_type == DOCKER_MANIFEST else mutate.OCI_CONFIG
    manifest = json.dumps({"schemaVersion": 2, "mediaType": media_type,
                           "config": {"mediaType": config_type, "digest": _sha(config), "size": len(config)},
                           "layers": layers}, indent=1).encode()
    reg.manifests[("models/a", _sha(manifest))] = (manifest, media_type)
    if not index:
        return _sha(manifest)
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": media_type, "digest": "sha256:" + "9" * 64, "size": 1, "platform": {"os": "linux", "architecture": "arm64"}},
        {"mediaType": media_type, "digest": _sha(manifest), "size": len(manifest),
         "platform": {"os": "linux", "architecture": "amd64"}}]}).encode()
    reg.manifests[("models/a", _sha(body))] = (body, OCI_INDEX)
    return _sha(body)


SCRIPT = b"# -*- coding: utf-8 -*-\nimport sys\nfrom pkg.cli import main\nsys.exit(main())\n"


def _fake_install(settings, lock, upstream, prefix: Path, lockfile: Path) -> None:
    """What uv leaves in the staging prefix for two packages: a console script with the host's
    python in its shebang (and RECORD naming it), a binary, data files, a symlink, bytecode."""
    site = prefix / "lib" / "python3.11" / "site-packages"
    (site / "pkg" / "__pycache__").mkdir(parents=True)
    (site / "pkg" / "__init__.py").write_text("x = 'é'\n")
    (site / "pkg" / "__pycache__" / "a.pyc").write_bytes(b"\0")
    (site / "pkg" / "big.bin").write_bytes(bytes(range(256)) * 9000 + b"tail")  # three gzip blocks
    (site / "pkg" / "link.py").symlink_to("__init__.py")
    (site / "pkg-1.0.dist-info").mkdir()
    (prefix / "bin").mkdir()
    script = b"#!/host/venv/bin/python\n" + SCRIPT
    (prefix / "bin" / "pkg-cli").write_bytes(script)
    os.chmod(prefix / "bin" / "pkg-cli", 0o755)
    (prefix / "bin" / "native").write_bytes(b"\x7fELF")
    record_hash = install_record_hash(script)
    (site / "pkg-1.0.dist-info" / "RECORD").write_text(
        f"pkg/__init__.py,sha256=abc,0\n../../../bin/pkg-cli,{record_hash},{len(script)}\npkg-1.0.dist-info/RECORD,,\n")
    (prefix / "share" / "jupyter").mkdir(parents=True)
    (prefix / "share" / "jupyter" / "k.json").write_text("{}")
    (prefix / ".lock").write_text("")


def install_record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


ADDED = [{"name": "six", "version": "1.17.0", "hashes": ["sha256:" + "0" * 64]},
         {"name": "pkg", "version": "1.0", "hashes": ["sha256:" + "1" * 64]}]
LABELS = {"dev.composer.spec-hash": SPEC, "dev.composer.builder": "daemonless", "org.opencontainers.image.base.name": "x"}

# The config digest depends on nothing but the inputs; the image digest also on the layer's
# encoder. The zlib cases were made by the daemonless builder before it was split by stage
# (composer/daemonless.py), with zlib 1.2.13: COMPOSER_LAYER_ENCODER=zlib must keep giving those
# bytes (a rebuild from an older record needs them). The isal cases pin the default encoder
# since issue 14 (isal 1.9.1, level 2, 1 MiB blocks): their digests changed then, on purpose.
GOLDEN_ZLIB = "1.2.13"
CONFIG = "sha256:be885890481a822a10377bdf6a2f9545639df9f61afd4913d6323d04970d3feb"
CONFIG_SDE = "sha256:96b7b9af31948a8d1561a01a750c97d6dd2da6c0d0c0330a0b8142adf8b06515"
ZLIB = {"layer_encoder": "zlib"}


@pytest.mark.parametrize("case, media_type, index, other, settings, sde, config, image", [
    ("zlib: docker", DOCKER_MANIFEST, False, False, ZLIB, None, CONFIG,
     "sha256:208d11ca69dfe756879c9163cebda57237c3a50502bc5f0962fc3010d16c5b3e"),
    ("zlib: source date epoch", DOCKER_MANIFEST, False, False, ZLIB, "1700000000", CONFIG_SDE,
     "sha256:30308becaf53f9b94f26ad6e7699398a187c9973eb2b0affff5823517b12fd30"),
    ("zlib: gzip level 4", DOCKER_MANIFEST, False, False, {**ZLIB, "gzip_level": 4}, None, CONFIG,
     "sha256:4cb8fa514ada8cad21ac8c9ffb4b7d29ea8496575e567f0a97e7ae3eda0252aa"),
    ("zlib: docker ignores zstd", DOCKER_MANIFEST, False, False, {**ZLIB, "layer_compression": "zstd"}, None, CONFIG,
     "sha256:208d11ca69dfe756879c9163cebda57237c3a50502bc5f0962fc3010d16c5b3e"),
    ("zlib: oci gzip", OCI_MANIFEST, False, False, {**ZLIB, "layer_compression": "gzip"}, None, CONFIG,
     "sha256:bf9abda2a9e536bac57da24e8b4113cc4bc2c916c27ebf1cebed889083a04098"),
    ("zlib: oci index, base on another registry", OCI_MANIFEST, True, True, {**ZLIB, "layer_compression": "gzip"}, None,
     CONFIG, "sha256:5b8704ba731c4e8c351843b2b9162dffda99015d41ae1945fba6e6623cb08aed"),
    ("isal: docker", DOCKER_MANIFEST, False, False, {}, None, CONFIG, "sha256:b05c2e51e3687a99facccaa256d9172697e6147912e7ed9312f6a1ec61f791ee"),
    ("isal: source date epoch", DOCKER_MANIFEST, False, False, {}, "1700000000", CONFIG_SDE, "sha256:d29f373e04bbaaf97e056dc244e6d17e1a92e353892b41d52c1ab494ddcefda7"),
    ("isal: level 3", DOCKER_MANIFEST, False, False, {"gzip_level": 3}, None, CONFIG, "sha256:97fefee37c5941e7aec269ed38d204818fe553fcd8abc125af8c15b0b5e20bec"),
    ("isal: oci", OCI_MANIFEST, False, False, {}, None, CONFIG, "sha256:56292a99c06bc795de56b9a5ab9cc76e7a877cac26f19c28c76275305dcb9e8a"),
    ("isal: oci index, base on another registry", OCI_MANIFEST, True, True, {}, None, CONFIG, "sha256:0a261dfd7773cd5070859bf0f8c9039cf2057a1b73379076232a4817558a2836"),
])
def test_build_gives_the_same_image_as_before(monkeypatch, case, media_type, index, other, settings, sde, config, image):
    if sde:
        monkeypatch.setenv("SOURCE_DATE_EPOCH", sde)
    else:
        monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    reg = MemoryRegistry("127.0.0.1:5000")
    base_reg = MemoryRegistry("other.example:5000") if other else reg
    digest = _seed_base(base_reg, media_type, index)
    connected = []
    monkeypatch.setattr(dl, "connect", lambda s, host: connected.append(host) or base_reg)
    monkeypatch.setattr(dl, "install_extras", _fake_install)
    record = json.loads(json.dumps(RUN_RECORD))
    record["image"] = {"repository": f"{base_reg.host}/models/a", "digest": digest, "tag": "v1"}
    job = _job(RunRecord.from_json(record), lock=Lock(requirements=["six", "pkg"], packages=ADDED, added=ADDED),
               settings=Settings(registry="127.0.0.1:5000/ml", progress="quiet", **settings), registry=reg,
               base=ImageRef(base_reg.host, "models/a", "v1", digest), labels=LABELS, env={"COMPOSER_SPEC_HASH": SPEC})

    got = dl.DaemonlessBuilder().build(job)

    (_, layer_type, layer), (_, config_type, config_body), (_, tag, manifest) = reg.pushed
    assert tag == "t" and _sha(config_body) == config
    assert layer_type == (mutate.DOCKER_LAYER_GZIP if media_type == DOCKER_MANIFEST else mutate.OCI_LAYER_GZIP)
    assert layer[:3] == b"\x1f\x8b\x08"
    assert connected == (["other.example:5000"] if other else [])
    actions = {action for action, repo, _ in reg.transfers}
    assert actions == ({"copied", "uploaded"} if other else {"mounted", "uploaded"})
    cfg = json.loads(config_body)
    assert cfg["config"]["Labels"] == {"keep": "me", **LABELS}
    assert cfg["config"]["Env"][-1] == f"COMPOSER_SPEC_HASH={SPEC}"
    assert cfg["history"][-1]["comment"] == dl.HISTORY_COMMENT
    assert cfg["history"][-1]["created_by"] == "composer daemonless: uv pip install --no-deps --require-hashes six==1.17.0 pkg==1.0"
    encoder = settings.get("layer_encoder", "isal")
    assert job.layer == {"compression": "gzip", "encoder": encoder, "version": tarball.encoder_version(encoder),
                         "level": settings.get("gzip_level", 6 if encoder == "zlib" else 2), "block": 1 << 20}
    if encoder == "isal" or zlib.ZLIB_RUNTIME_VERSION == GOLDEN_ZLIB:
        assert got == image, got
    assert got == _sha(manifest)


def test_a_failed_stream_is_resent_in_one_piece(monkeypatch):
    """The layer is streamed while it is written; when that upload fails, the builder writes the
    layer again (the same bytes) and pushes it with upload_blob (retried): the image is the same."""
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    reg = MemoryRegistry("127.0.0.1:5000")
    reg.fail_stream = True
    digest = _seed_base(reg, DOCKER_MANIFEST)
    monkeypatch.setattr(dl, "install_extras", _fake_install)
    record = json.loads(json.dumps(RUN_RECORD))
    record["image"]["digest"] = digest
    job = _job(RunRecord.from_json(record), lock=Lock(requirements=["six", "pkg"], packages=ADDED, added=ADDED), registry=reg,
               base=ImageRef(reg.host, "models/a", "v1", digest), labels=LABELS, env={"COMPOSER_SPEC_HASH": SPEC})
    assert dl.DaemonlessBuilder().build(job) == "sha256:b05c2e51e3687a99facccaa256d9172697e6147912e7ed9312f6a1ec61f791ee"
    assert [kind for kind, _, _ in reg.pushed] == ["blob", "blob", "manifest"]
    assert ("resent", "ml/envs", _sha(reg.pushed[0][2])) in reg.transfers


def _started_job(reg, digest):
    record = json.loads(json.dumps(RUN_RECORD))
    record["image"]["digest"] = digest
    return _job(RunRecord.from_json(record), lock=Lock(requirements=["six", "pkg"], packages=ADDED, added=ADDED), registry=reg,
                base=ImageRef(reg.host, "models/a", "v1", digest), labels=LABELS, env={"COMPOSER_SPEC_HASH": SPEC})


def test_a_build_started_ahead_installs_once_and_gives_the_same_image(monkeypatch):
    """start() installs while the lease is awaited; build() then uses that staging prefix (one
    install), the image is the one an unstarted build gives, and no staging directory is left."""
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    installs = []
    monkeypatch.setattr(dl, "install_extras", lambda *a: installs.append(a[3]) or _fake_install(*a))
    reg = MemoryRegistry("127.0.0.1:5000")
    digest = _seed_base(reg, DOCKER_MANIFEST)
    plain = dl.DaemonlessBuilder().build(_started_job(reg, digest))
    installs.clear()
    job = _started_job(reg, digest)
    dl.DaemonlessBuilder().start(job)
    assert job.started is not None
    assert dl.DaemonlessBuilder().build(job) == plain
    assert len(installs) == 1 and job.started is None
    for t in threading.enumerate():  # the staging directory goes in a thread of its own
        if t.name == "composer-staging-cleanup":
            t.join()
    assert not installs[0].parent.exists()


def test_a_failed_install_ahead_is_the_builds_error(monkeypatch):
    """A package without a wheel (CannotBuild: the caller falls back to BuildKit) or a failing uv:
    the build raises what the install begun ahead raised, without running uv again."""
    calls = []
    for error in (CannotBuild("daemonless", "pkg has no wheel for the platform"),
                  BuildError("uv could not install the extras for the new layer: boom", "check the package index")):
        def failing(*a, error=error):
            calls.append(a[3])
            raise error

        monkeypatch.setattr(dl, "install_extras", failing)
        reg = MemoryRegistry("127.0.0.1:5000")
        job = _started_job(reg, _seed_base(reg, DOCKER_MANIFEST))
        dl.DaemonlessBuilder().start(job)
        with pytest.raises(type(error)) as raised:
            dl.DaemonlessBuilder().build(job)
        assert raised.value is error
    assert len(calls) == 2  # once per build: ahead only


def test_build_with_zstd_when_available(monkeypatch):
    """An OCI base and COMPOSER_LAYER_COMPRESSION=zstd: a zstd layer, the same config as with gzip."""
    if tarball.zstd_module() is None:
        pytest.skip("no zstd module on this machine")
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    reg = MemoryRegistry("127.0.0.1:5000")
    digest = _seed_base(reg, OCI_MANIFEST)
    monkeypatch.setattr(dl, "install_extras", _fake_install)
    record = json.loads(json.dumps(RUN_RECORD))
    record["image"]["digest"] = digest
    job = _job(RunRecord.from_json(record), lock=Lock(requirements=["six", "pkg"], packages=ADDED, added=ADDED), registry=reg,
               base=ImageRef(reg.host, "models/a", "v1", digest), labels=LABELS, env={"COMPOSER_SPEC_HASH": SPEC},
               settings=Settings(registry="127.0.0.1:5000/ml", progress="quiet", layer_compression="zstd"))
    got = dl.DaemonlessBuilder().build(job)
    (_, layer_type, layer), (_, _, config_body), _ = reg.pushed
    assert layer_type == mutate.OCI_LAYER_ZSTD and layer[:4] == b"\x28\xb5\x2f\xfd"
    assert _sha(config_body) == CONFIG
    assert job.layer == {"compression": "zstd", "encoder": "zstandard", "version": "0.25.0", "level": 3, "block": 0}
    assert got == "sha256:05fe22b288f0ba3c9e93a8661f073129f193dfd13d0e851f8331a0638d08d2db", got  # zstandard 0.25.0 (pinned in the test extra), level 3, multi-threaded mode


def test_index_without_the_platform_cannot_build(monkeypatch):
    reg = MemoryRegistry("127.0.0.1:5000")
    digest = _seed_base(reg, OCI_MANIFEST, index=True)
    record = json.loads(json.dumps(RUN_RECORD))
    record["image"]["digest"] = digest
    record["platform"]["architecture"] = "s390x"
    job = _job(RunRecord.from_json(record), registry=reg, base=ImageRef(reg.host, "models/a", "v1", digest))
    with pytest.raises(CannotBuild, match="no manifest for linux/s390x"):
        dl.DaemonlessBuilder().build(job)
    assert reg.pushed == []


# -- the build record's layer section --------------------------------------------------------------
def _build_record(**over):
    from composer.model.records import BuildRecord, Image, Lock as RecordLock

    up = RunRecord.from_json(RUN_RECORD)
    return BuildRecord(
        name="env", image=Image("127.0.0.1:5000/ml/envs", "sha256:" + "e" * 64, "env-1"), base=up.image,
        upstream_run="Flow/1", upstream_record="sha256:" + "f" * 64, python=up.python, platform=up.platform,
        lock=RecordLock(requirements=("six",), packages=(), added=("six",)), spec_hash=SPEC, spec_version="1",
        builder="daemonless", dockerfile="FROM x\n", created="2026-01-01T00:00:00Z", composer_version="0.1.0", **over)


def test_record_keeps_the_layer_encoding_and_older_records_still_load():
    from composer.model.records import BuildRecord

    layer = tarball.layer_encoding().to_json()
    doc = _build_record(layer=layer).to_json()
    assert doc["layer"] == layer and BuildRecord.from_json(doc).layer == layer
    older = _build_record().to_json()
    assert "layer" not in older and BuildRecord.from_json(older).layer is None
    for bad in ({**layer, "level": "2"}, {**layer, "encoder": "ISAL; rm"}, {**layer, "block": -1},
                {k: v for k, v in layer.items() if k != "version"}):
        with pytest.raises(VerificationError):
            BuildRecord.from_json({**doc, "layer": bad})


def test_encoder_settings(tmp_path, monkeypatch):
    from composer.settings import load_settings

    monkeypatch.chdir(tmp_path)
    s = load_settings({"registry": "r:5000"}, env={})
    assert (s.layer_encoder, s.gzip_level, s.layer_compression) == (None, None, "auto")
    assert dl.encoding_for(s, "gzip") == tarball.layer_encoding("gzip", "isal", 2)
    s = load_settings({"registry": "r:5000"}, env={"COMPOSER_LAYER_ENCODER": "zlib", "COMPOSER_GZIP_LEVEL": "9"})
    assert dl.encoding_for(s, "gzip").to_json() == {"compression": "gzip", "encoder": "zlib", "version": zlib.ZLIB_RUNTIME_VERSION,
                                                 "level": 9, "block": 1 << 20}
    with pytest.raises(UsageError, match="COMPOSER_LAYER_ENCODER"):
        load_settings({"registry": "r:5000"}, env={"COMPOSER_LAYER_ENCODER": "pigz"})
    s = load_settings({"registry": "r:5000"}, env={"COMPOSER_GZIP_LEVEL": "6"})  # a zlib level, the isal encoder
    with pytest.raises(UsageError, match="isal encoder"):
        dl.encoding_for(s, "gzip")
