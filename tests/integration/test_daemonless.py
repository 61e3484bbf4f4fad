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


def _spy(reg: Registry) -> list:
    """Every HTTP request this client makes: (method, url, body bytes)."""
    calls = []
    original = reg.session.request

    def request(method, url, **kw):
        data = kw.get("data")
        calls.append((method, url, len(data) if data is not None and hasattr(data, "__len__") else 0))
        return original(method, url, **kw)

    reg.session.request = request
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
    # The second build found everything in place: no blob sent at all.
    assert {t["action"] for t in reg.transfers} == {"present"}
    assert not [c for c in calls if c[0] in ("PUT", "PATCH") and "/blobs/" in c[1]]
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
