"""The daemonless builder against the real registry, with the real Docker engine only to run
the result: no BuildKit, no container while composing, no base layer downloaded."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile

import pytest
import requests

from composer.builders import daemonless
from composer.builders.base import BuildJob, CannotBuild
from composer.kinds.pip import lock_extras
from composer.model.refs import parse_image_ref
from composer.oci import connect
from composer.oci.client import Registry
from composer.settings import load_settings
from composer.upstream.runs import load_run
from tests.conftest import BASE_REF, REGISTRY, build_json, get_manifest, registry_tags, run_cli

pytestmark = pytest.mark.integration

EXTRAS = ["cattrs>=23.1,<24.2", "iniconfig==2.0.0", "pyflakes==3.2.0"]  # pyflakes has a console script
LABELS = {"dev.composer.spec-hash": "sha256:" + "5" * 64, "dev.composer.builder": "daemonless"}
ENV = {"COMPOSER_SPEC_HASH": "sha256:" + "5" * 64}


def _repo(prefix: str, leaf: str) -> str:
    return f"{prefix.split('/', 1)[1]}/{leaf}"


def _spy(reg: Registry, calls: list = None) -> list:
    """Every HTTP request this client and its clones (the streamed layer upload) make: (method, url, body bytes)."""
    calls = [] if calls is None else calls
    original = reg.session.request
    clone = reg.clone

    def request(method, url, **kw):
        data = kw.get("data")
        calls.append((method, url, len(data) if data is not None and hasattr(data, "__len__") else 0))
        return original(method, url, **kw)

    def spied_clone():
        twin = clone()
        _spy(twin, calls)
        return twin

    reg.session.request = request
    reg.clone = spied_clone
    return calls


def _no_context(context):
    raise AssertionError("the daemonless builder writes no BuildKit context")


def _compose(prefix, run, extras=EXTRAS, tag="dl", reg=None):
    settings = load_settings({"registry": prefix, "progress": "quiet"})
    upstream, _ = load_run(settings, run)
    lock = lock_extras(settings, extras, upstream.pins, upstream.python.version, upstream.platform.python_platform, run)
    base = parse_image_ref(upstream.image.pinned)
    reg = reg or connect(settings)
    calls = _spy(reg)
    job = BuildJob(
        settings=settings, registry=reg, repository=settings.repository("envs"), tag=tag, base=base, upstream=upstream,
        kind="pip", lock=lock, spec_hash=ENV["COMPOSER_SPEC_HASH"], dockerfile="", prepare_context=_no_context,
        labels=LABELS, env=ENV,
    )
    digest = daemonless.DaemonlessBuilder().build(job)
    return digest, upstream, lock, reg, calls


def _run(ref: str, *cmd: str) -> str:
    proc = subprocess.run(["docker", "run", "--rm", "--network", "none", ref, *cmd], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_daemonless_image_runs_with_upstream_pins_and_extras(prefix, upstream_run, model_a):
    digest, upstream, lock, reg, calls = _compose(prefix, upstream_run)
    repo = _repo(prefix, "envs")
    ref = f"{prefix}/envs@{digest}"

    versions = json.loads(_run(ref, "python", "-c", (
        "import json, importlib.metadata as m, attrs, cattrs, iniconfig, pyflakes;"
        "print(json.dumps({p: m.version(p) for p in ('attrs', 'packaging', 'cattrs', 'iniconfig', 'pyflakes')}))"
    )))
    assert versions["attrs"] == "23.1.0" and versions["packaging"] == "23.2"
    assert versions["iniconfig"] == "2.0.0" and versions["pyflakes"] == "3.2.0"
    # The console script is on the image's PATH and runs with the image's python.
    assert _run(ref, "pyflakes", "--version").startswith("3.2.0")
    assert _run(ref, "head", "-n1", "/opt/venv/bin/pyflakes") == "#!" + upstream.python.executable
    assert _run(ref, "sh", "-c", "echo $COMPOSER_SPEC_HASH") == ENV["COMPOSER_SPEC_HASH"]
    # RECORD is right about the script: pip can uninstall the package cleanly.
    out = _run(ref, "sh", "-c", "pip uninstall -y -q pyflakes && ! test -e /opt/venv/bin/pyflakes && echo clean")
    assert out.endswith("clean")

    # The manifest: the upstream's layers, untouched, then exactly one layer; same family.
    up = get_manifest("models/model-a", model_a.rsplit(":", 1)[1])
    composed = get_manifest(repo, digest)
    assert composed["mediaType"] == up["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert composed["layers"][: len(up["layers"])] == up["layers"]
    assert len(composed["layers"]) == len(up["layers"]) + 1
    assert composed["layers"][-1]["mediaType"] == "application/vnd.docker.image.rootfs.diff.tar.gzip"
    config = json.loads(requests.get(f"http://{REGISTRY}/v2/{repo}/blobs/{composed['config']['digest']}", timeout=10).content)
    assert config["config"]["Labels"]["dev.composer.builder"] == "daemonless"
    assert config["history"][-1]["comment"] == daemonless.HISTORY_COMMENT
    assert registry_tags(repo) == ["dl"]

    # The base layers were mounted from the upstream's repository: never downloaded, never uploaded.
    base_digests = {l["digest"] for l in up["layers"]}
    actions = {t["digest"]: t["action"] for t in reg.transfers}
    assert {actions[d] for d in base_digests} == {"mounted"}
    assert actions[composed["layers"][-1]["digest"]] == "uploaded"
    for method, url, size in calls:
        assert not (method == "GET" and "/blobs/" in url and url.rsplit("/", 1)[-1] in base_digests), url
        assert not (method in ("PUT", "PATCH") and any(d in url for d in base_digests)), url
    uploaded = sum(size for method, url, size in calls if method in ("PUT", "PATCH") and "/blobs/" in url)
    assert uploaded == composed["layers"][-1]["size"] + composed["config"]["size"]


def test_same_inputs_same_image_digest(prefix, upstream_run, model_a):
    first, _, _, _, _ = _compose(prefix, upstream_run, tag="one")
    second, _, _, reg, calls = _compose(prefix, upstream_run, tag="two")
    assert first == second
    # The second build found the base layers and the config in place; the layer is streamed to
    # the registry while it is written, before its digest is known, so it is sent again (the
    # registry keeps one copy): the only blob bytes sent are the layer's, in PATCHes.
    layer = get_manifest(_repo(prefix, "envs"), "two")["layers"][-1]
    assert {t["action"] for t in reg.transfers} == {"present", "uploaded"}
    sent = [c for c in calls if c[0] in ("PUT", "PATCH", "POST") and "/blobs/" in c[1]]
    assert sum(size for method, _, size in sent if method == "PATCH") == layer["size"]
    assert not [c for c in sent if c[0] != "PATCH" and c[2]]
    # Another prefix (empty repository) converges on the same digest too.
    other = f"{prefix}x"
    assert run_cli("record", "--run", upstream_run, "--image", model_a, env={"COMPOSER_REGISTRY": other}).returncode == 0
    third, _, _, _, _ = _compose(other, upstream_run, tag="three")
    assert third == first
    repo = _repo(prefix, "envs")
    assert get_manifest(repo, "one")["layers"][-1] == get_manifest(_repo(other, "envs"), "three")["layers"][-1]


def test_base_on_another_registry_is_stream_copied(prefix, upstream_run, model_a):
    """localhost:5000 is the same server under another name: no mount is possible, so the base
    layers are copied (streamed, digest-checked); the image is the same."""
    same_host, _, _, _, _ = _compose(prefix, upstream_run, tag="here")
    target = Registry("localhost:" + REGISTRY.rsplit(":", 1)[1])
    other = f"{prefix}copy"
    assert run_cli("record", "--run", upstream_run, "--image", model_a, env={"COMPOSER_REGISTRY": other}).returncode == 0
    digest, _, _, reg, calls = _compose(other, upstream_run, tag="there", reg=target)
    assert digest == same_host
    up = get_manifest("models/model-a", model_a.rsplit(":", 1)[1])
    actions = {t["digest"]: t["action"] for t in reg.transfers}
    assert {actions[l["digest"]] for l in up["layers"]} == {"copied"}
    assert not [c for c in calls if "mount=" in c[1]]
    assert _run(f"{other}/envs@{digest}", "python", "-c", "import cattrs, iniconfig; print('ok')") == "ok"


def test_wheel_less_package_asks_for_buildkit_before_pushing(prefix, upstream_run):
    with pytest.raises(CannotBuild) as info:
        _compose(prefix, upstream_run, extras=["docopt==0.6.2"])  # sdist only
    assert "docopt" in info.value.reason and "no wheel" in info.value.reason
    assert registry_tags(_repo(prefix, "envs")) == []


def test_debian_system_python(prefix, infra):
    """On the plain base (Debian's python, externally managed) files go where uv's install
    in the image puts them: /usr/local/lib/python3.X/dist-packages and /usr/local/bin."""
    assert run_cli("record", "--run", "Sys/1", "--image", BASE_REF, env={"COMPOSER_REGISTRY": prefix}).returncode == 0
    digest, upstream, _, _, _ = _compose(prefix, "Sys/1", extras=["pyflakes==3.2.0"])
    assert upstream.python.site_packages == "/usr/local/lib/python3.11/dist-packages"
    ref = f"{prefix}/envs@{digest}"
    assert _run(ref, "pyflakes", "--version").startswith("3.2.0")
    assert _run(ref, "head", "-n1", "/usr/local/bin/pyflakes") == "#!/usr/bin/python3"
    assert _run(ref, "python3", "-c", "import pyflakes; print(pyflakes.__file__)").startswith("/usr/local/lib/python3.11/dist-packages/")


def _layer_files(repo: str, manifest: dict) -> dict:
    blob = requests.get(f"http://{REGISTRY}/v2/{repo}/blobs/{manifest['layers'][-1]['digest']}", timeout=60).content
    files = {}
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        for m in tar.getmembers():
            if m.isfile():
                files[m.name] = hashlib.sha256(tar.extractfile(m).read()).hexdigest()
    return files


def test_same_files_as_the_buildkit_path(prefix, env, upstream_run, tmp_path):
    """Same extras through composer's BuildKit path: the new layer has the same files with the
    same bytes (BuildKit's layer also carries uv's .lock file of the venv; nothing else differs)."""
    extras = tmp_path / "extras.txt"
    extras.write_text("\n".join(EXTRAS) + "\n")
    out = build_json("--upstream-run", upstream_run, "--extra", str(extras), "--builder", "docker", env=env)
    digest, _, _, _, _ = _compose(prefix, upstream_run)
    repo = _repo(prefix, "envs")
    buildkit = _layer_files(repo, get_manifest(repo, out["digest"]))
    ours = _layer_files(repo, get_manifest(repo, digest))
    buildkit.pop("opt/venv/.lock", None)
    assert ours == buildkit


def test_reproducible_across_cores_caches_and_umasks(model_a, tmp_path):
    """The whole CLI twice, as differently as a fleet would run it: one core (taskset) and two,
    its own state directory and uv cache each (the second downloads the wheels anew), umask 022
    and 077, its own registry prefix. The layer and the image digests are the same, and each
    build record names the encoder that made the layer."""
    import os
    import sys
    import uuid

    extras = tmp_path / "extras.txt"
    extras.write_text("\n".join(EXTRAS) + "\n")
    results = []
    for i, (cpus, umask) in enumerate(((["taskset", "-c", "0"], 0o022), ([], 0o077))):
        prefix = f"{REGISTRY}/t{uuid.uuid4().hex[:10]}"
        env = {**os.environ, "COMPOSER_REGISTRY": prefix, "COMPOSER_PROGRESS": "quiet",
               "COMPOSER_STATE_DIR": str(tmp_path / f"state-{i}"), "UV_CACHE_DIR": str(tmp_path / f"uv-{i}")}
        assert run_cli("record", "--run", "Repro/1", "--image", model_a, env=env).returncode == 0
        proc = subprocess.run([*cpus, sys.executable, "-m", "composer", "build", "--upstream-run", "Repro/1", "--extra",
                               str(extras), "--builder", "daemonless", "--name", "repro", "--json"],
                              capture_output=True, text=True, env=env, timeout=600, preexec_fn=lambda m=umask: os.umask(m))
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert out["cached"] is False and out["builder"] == "daemonless"
        layer = get_manifest(_repo(prefix, "envs"), out["digest"])["layers"][-1]
        shown = run_cli("show", "repro", "--json", env=env)
        assert shown.returncode == 0, shown.stderr
        results.append((out["digest"], layer["digest"], json.loads(shown.stdout)["record"].get("layer")))
    (image_a, layer_a, record_a), (image_b, layer_b, record_b) = results
    assert layer_a == layer_b and image_a == image_b
    assert record_a == record_b and record_a["encoder"] == "isal" and record_a["level"] == 2
