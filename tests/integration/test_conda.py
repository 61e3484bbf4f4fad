"""Conda environments end to end, on the real Docker engine, BuildKit and registry, against a
conda channel of the tests' own served over HTTP on loopback (tests/integration/conda_channel.py).

The upstream image has a conda prefix at /opt/conda made by py-rattler inside its own build;
composer records it, solves environment.yml extras on its pinned packages, installs them into
the prefix (py-rattler staging on the host: there is no micromamba here; a stand-in micromamba
checks the micromamba plumbing) and locks the pip part with uv on top."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from tests.conftest import BASE_REF, REGISTRY, build_json, get_manifest, one_error_line, registry_tags, run_cli
from tests.integration.conda_channel import PREFIX, ChannelServer, build_channel, make_conda_upstream

pytestmark = pytest.mark.integration

NO_BUILDER = {"COMPOSER_BUILDER": "buildctl", "BUILDKIT_HOST": "unix:///nonexistent.sock"}  # a build would fail


@pytest.fixture(scope="session")
def channel(tmp_path_factory):
    root = build_channel(tmp_path_factory.mktemp("conda-channel"))
    server = ChannelServer(root)
    yield server, root
    server.close()


@pytest.fixture(scope="session")
def conda_upstream(infra, channel):
    """An upstream training image whose environment is the conda prefix /opt/conda (python, tinycore
    1.0.0, tinyutil 0.1.0, libtiny 1.0.0), pushed under a tag of this session's own."""
    return make_conda_upstream(f"{REGISTRY}/models/conda-a:s{uuid.uuid4().hex[:10]}", BASE_REF, channel[0].url)


@pytest.fixture
def conda_run(env, conda_upstream):
    proc = run_cli("record", "--run", "CondaTrain/1", "--image", conda_upstream, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    return "CondaTrain/1"


def env_file(tmp_path: Path, url: str, deps: list, name: str = "environment.yml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"name": "explainer", "channels": [url], "dependencies": deps}))
    return path


def _repo(prefix: str, leaf: str) -> str:
    return f"{prefix.split('/', 1)[1]}/{leaf}"


def _run(ref: str, script: str) -> str:
    proc = subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "/bin/sh", ref, "-c", script],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# Every upstream file, named by its conda-meta record, with its sha256; and the records themselves.
_UPSTREAM_FILES = f"""
import hashlib, json, os
meta = "{PREFIX}/conda-meta"
out = {{}}
for f in sorted(os.listdir(meta)):
    if f.endswith(".json"):
        rec = json.load(open(os.path.join(meta, f)))
        for rel in ["conda-meta/" + f] + rec.get("files", []):
            p = os.path.join("{PREFIX}", rel)
            out[rel] = hashlib.sha256(open(p, "rb").read()).hexdigest() if os.path.isfile(p) else None
print(json.dumps(out))
"""


def _conda_files(ref: str) -> dict:
    return json.loads(_run(ref, f"python3 -c '{_UPSTREAM_FILES}'"))


def test_record_reads_the_conda_prefix(env, conda_run, channel):
    from composer.settings import load_settings
    from composer.upstream.runs import load_run

    record, _ = load_run(load_settings({"registry": env["COMPOSER_REGISTRY"]}), conda_run)

    record = record.to_json()
    assert record["python"]["executable"] == f"{PREFIX}/bin/python" and record["python"]["kind"] == "conda"
    assert record["python"]["site_packages"] == f"{PREFIX}/lib/python3.11/site-packages"
    section = record["conda"]
    assert section["prefix"] == PREFIX and section["packages_source"] == "image" and section["micromamba"] is None
    assert section["channels"] == [channel[0].url]
    # The explicit list is the channel's own: every sha256 as its repodata has it.
    index = {}
    for sub in ("noarch", "linux-64"):
        index.update(json.loads((channel[1] / sub / "repodata.json").read_text())["packages"])
    got = {p["name"]: p for p in section["packages"]}
    assert sorted(got) == ["libtiny", "python", "tinycore", "tinyutil"]
    for p in got.values():
        assert p["sha256"] == index[p["fn"]]["sha256"] and p["url"] == f"{channel[0].url}/{p['subdir']}/{p['fn']}"
    assert (got["tinycore"]["version"], got["tinycore"]["build"], got["tinycore"]["noarch"]) == ("1.0.0", "0", "python")
    # The conda-built Python package is also an installed distribution (its dist-info): a pin for uv.
    assert {"name": "tinycore", "version": "1.0.0"} in record["distributions"]


def test_environment_yml_composes_into_the_prefix(env, prefix, conda_run, conda_upstream, channel, tmp_path):
    url = channel[0].url
    extras = env_file(tmp_path, url, ["tinyshap", "tinyplot", {"pip": ["iniconfig==2.0.0"]}])
    out = build_json("--upstream-run", conda_run, "--extra", str(extras), "--name", "explainer-conda", env=env)
    assert out["cached"] is False and out["builder"] == "docker"

    # The upstream's conda packages are unchanged, file for file and record for record.
    before, after = _conda_files(conda_upstream), _conda_files(out["ref"])
    assert all(v is not None for v in before.values())
    assert {k: after.get(k) for k in before} == before

    # The extras are there: conda packages (module, entry point, relocated file) and the pip part.
    report = json.loads(_run(out["ref"], (
        "python -c 'import json, importlib.metadata as m, tinyshap, tinyplot, tinycore, iniconfig;"
        "print(json.dumps({\"v\": [tinyshap.__version__, tinyplot.__version__, tinycore.__version__, m.version(\"iniconfig\")],"
        "\"where\": iniconfig.__file__}))'"
    )))
    assert report["v"] == ["0.3.0", "1.0.0", "1.0.0", "2.0.0"]
    assert report["where"].startswith(f"{PREFIX}/lib/python3.11/site-packages/")
    assert _run(out["ref"], "tinyshap").strip() == "tinyshap 0.3.0"
    assert _run(out["ref"], f"cat {PREFIX}/etc/libtiny.conf") == f"prefix={PREFIX}\n"
    history = _run(out["ref"], f"cat {PREFIX}/conda-meta/history")
    assert f"+{url}::tinyshap-0.3.0-0" in history and out["spec_hash"] in history
    meta = json.loads(_run(out["ref"], f"cat {PREFIX}/conda-meta/tinyshap-0.3.0-0.json"))
    assert meta["url"] == f"{url}/noarch/tinyshap-0.3.0-0.tar.bz2" and "extracted_package_dir" not in meta

    # Nothing of the installer, the archives or the staging tree stays in the image.
    leftovers = ("find / -xdev \\( -name 'rattler*' -o -name 'micromamba*' -o -name '*.tar.bz2' -o -name 'stage.tar' "
                 "-o -name 'explicit.txt' \\) -print; find /tmp -type f -print")
    assert _run(out["ref"], leftovers) == _run(conda_upstream, leftovers) == ""

    # One new layer per install step on top of the upstream's layers, byte for byte.
    up = get_manifest("models/conda-a", conda_upstream.rsplit(":", 1)[1])
    composed = get_manifest(_repo(prefix, "envs"), out["digest"])
    up_layers = [l["digest"] for l in up["layers"]]
    assert [l["digest"] for l in composed["layers"]][: len(up_layers)] == up_layers
    assert len(composed["layers"]) == len(up_layers) + 2

    # The record covers the conda lock; the spec hash is in the image.
    shown = json.loads(run_cli("show", "explainer-conda", "--json", env=env).stdout)["record"]
    assert shown["conda"]["added"] == ["tinyplot", "tinyshap"] and shown["conda"]["installer"] == "py-rattler"
    assert shown["conda"]["prefix"] == PREFIX and shown["conda"]["requirements"] == ["tinyplot", "tinyshap"]
    assert {p["name"] for p in shown["conda"]["packages"]} == {"libtiny", "python", "tinycore", "tinyplot", "tinyshap", "tinyutil"}
    assert shown["lock"]["added"] == ["iniconfig"]
    assert shown["lock"]["requirements"] == [f"channel:{url}", "conda:tinyplot", "conda:tinyshap", "iniconfig==2.0.0"]
    assert "# composer-template: conda/2" in shown["dockerfile"]
    labels = json.loads(subprocess.run(["docker", "inspect", "--format", "{{json .Config.Labels}}", out["ref"]],
                                       capture_output=True, text=True, check=True).stdout)
    assert labels["dev.composer.spec-hash"] == out["spec_hash"] and labels["dev.composer.conda-prefix"] == PREFIX
    assert labels["dev.composer.python"] == f"{PREFIX}/bin/python"

    # Same inputs again: a cache hit that starts no build.
    again = build_json("--upstream-run", conda_run, "--extra", str(extras), "--name", "explainer-conda", env={**env, **NO_BUILDER})
    assert again["cached"] is True and again["digest"] == out["digest"]

    # The composed environment is itself a conda upstream: its new packages are pinned in turn.
    more = env_file(tmp_path, url, ["six"], name="more.yml")
    nxt = build_json("--upstream-run", "explainer-conda", "--extra", str(more), "--name", "second-conda", env=env)
    assert _run(nxt["ref"], "python -c 'import six, tinyshap, iniconfig; print(six.__version__ if hasattr(six, \"__version__\") else 0, tinyshap.__version__)'").split() == ["1.16.0", "0.3.0"]
    second = json.loads(run_cli("show", "second-conda", "--json", env=env).stdout)["record"]
    assert second["conda"]["added"] == ["six"]
    clash = env_file(tmp_path, url, ["tinyshap", "tinyplot >=2"], name="clash.yml")
    proc = run_cli("build", "--upstream-run", "explainer-conda", "--extra", str(clash), "--name", "third", env=env)
    assert proc.returncode == 4 and "upstream conda package tinyplot==1.0.0 (build 0) of run explainer-conda" in one_error_line(proc)


@pytest.mark.parametrize("deps, pinned, because", [
    (["tinyshap", "tinyplot >=2"], "tinycore==1.0.0", "tinyplot 2.0.0 requires tinycore >=2"),
    (["clashing"], "tinyutil==0.1.0", "clashing 1.0.0 requires tinyutil >=0.2"),
])
def test_conda_conflict_is_one_line_and_pushes_nothing(env, prefix, conda_run, channel, tmp_path, deps, pinned, because):
    extras = env_file(tmp_path, channel[0].url, deps)
    proc = run_cli("build", "--upstream-run", conda_run, "--extra", str(extras), "--name", "clash", env=env)
    assert proc.returncode == 4, proc.stderr
    line = one_error_line(proc)
    conflicting = next(d for d in deps if d.startswith(("tinyplot", "clashing")))
    assert f"extra conda requirement '{conflicting}'" in line and f"upstream conda package {pinned}" in line
    assert because in line and "of run CondaTrain/1" in line
    assert registry_tags(_repo(prefix, "envs")) == []


def test_a_new_package_never_replaces_an_upstream_file(env, prefix, conda_run, channel, tmp_path):
    extras = env_file(tmp_path, channel[0].url, ["overlap"])
    proc = run_cli("build", "--upstream-run", conda_run, "--extra", str(extras), "--name", "overlap", env=env)
    assert proc.returncode == 6, proc.stderr
    assert f"{PREFIX}/share/tinyutil/data.txt is already in the upstream image" in one_error_line(proc)
    assert "overlap" not in registry_tags(_repo(prefix, "envs"))


def test_pip_part_keeps_conda_python_packages(env, conda_run, channel, tmp_path):
    # six comes from the conda solve; the pip part may not move it (uv sees it as a pin).
    extras = env_file(tmp_path, channel[0].url, ["six", {"pip": ["six>=1.17"]}])
    proc = run_cli("build", "--upstream-run", conda_run, "--extra", str(extras), env=env)
    assert proc.returncode == 4, proc.stderr
    line = one_error_line(proc)
    assert "'six>=1.17'" in line and "conda package six==1.16.0 of the extras" in line


def test_unknown_conda_package_and_pip_upstream(env, conda_run, upstream_run, channel, tmp_path):
    proc = run_cli("build", "--upstream-run", conda_run, "--extra", str(env_file(tmp_path, channel[0].url, ["nosuch"])), env=env)
    assert proc.returncode == 2 and "extra conda requirement 'nosuch' was not found" in one_error_line(proc)
    # A pip (venv) upstream has no prefix to add conda packages to.
    proc = run_cli("build", "--upstream-run", upstream_run, "--extra", str(env_file(tmp_path, channel[0].url, ["tinyshap"])), env=env)
    assert proc.returncode == 2 and "has no conda prefix" in one_error_line(proc)


def test_requirements_txt_on_a_conda_upstream(env, conda_run, tmp_path):
    extras = tmp_path / "extras.txt"
    extras.write_text("iniconfig==2.0.0\n")
    out = build_json("--upstream-run", conda_run, "--extra", str(extras), "--name", "pip-on-conda", env=env)
    where = _run(out["ref"], "python -c 'import iniconfig, tinycore; print(iniconfig.__file__)'").strip()
    assert where.startswith(f"{PREFIX}/lib/python3.11/site-packages/")
    record = json.loads(run_cli("show", "pip-on-conda", "--json", env=env).stdout)["record"]
    assert record["conda"]["added"] == [] and record["lock"]["added"] == ["iniconfig"]


# A stand-in for micromamba: checks what composer hands it (an explicit list of archives that
# are there, with their md5), notes its arguments in the prefix, installs nothing.
FAKE_MICROMAMBA = r"""#!/bin/sh
set -e
prefix=""; file=""; args="$*"
while [ $# -gt 0 ]; do case "$1" in --prefix) prefix=$2; shift;; --file) file=$2; shift;; esac; shift; done
[ "$(head -n 1 "$file")" = "@EXPLICIT" ]
for u in $(grep '^file://' "$file"); do
  f=${u#file://}; f=${f%%#*}; want=${u##*#}
  [ "$(md5sum "$f" | cut -d' ' -f1)" = "$want" ] || { echo "bad archive $f" >&2; exit 1; }
  echo "$f" >> "$prefix/conda-meta/.stand-in"
done
echo "args: $args" >> "$prefix/conda-meta/.stand-in"
echo "root: $MAMBA_ROOT_PREFIX pkgs: $CONDA_PKGS_DIRS" >> "$prefix/conda-meta/.stand-in"
"""


def test_host_micromamba_is_bind_mounted_and_not_kept(env, conda_run, channel, tmp_path):
    fake = tmp_path / "micromamba"
    fake.write_text(FAKE_MICROMAMBA)
    fake.chmod(0o755)
    extras = env_file(tmp_path, channel[0].url, ["tinyshap"])
    out = build_json("--upstream-run", conda_run, "--extra", str(extras), "--name", "with-micromamba",
                     "--micromamba", str(fake), env=env)
    noted = _run(out["ref"], f"cat {PREFIX}/conda-meta/.stand-in").splitlines()
    assert "/tmp/composer/conda/pkgs/tinyshap-0.3.0-0.tar.bz2" in noted
    assert f"args: install --yes --offline --no-rc --always-copy --prefix {PREFIX} --file /tmp/composer/conda/explicit.txt" in noted
    root = next(l for l in noted if l.startswith("root: ")).split()[1]
    assert _run(out["ref"], f"ls -d {root} /tmp/composer/conda/micromamba 2>/dev/null || true").strip() == ""
    record = json.loads(run_cli("show", "with-micromamba", "--json", env=env).stdout)["record"]
    assert record["conda"]["installer"] == "micromamba-host"


def test_image_micromamba_and_python_discovery(env, conda_upstream, tmp_path):
    """An image with micromamba of its own is installed with it; and the probe finds the prefix's
    python through a label, $MAMBA_ROOT_PREFIX, or the prefix's site-packages on the path."""
    fake = tmp_path / "ctx" / "micromamba"
    fake.parent.mkdir()
    fake.write_text(FAKE_MICROMAMBA)
    fake.chmod(0o755)
    system_path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    variants = {
        # name: (Dockerfile lines, expected executable, kind, micromamba)
        "mm": (["COPY micromamba /usr/local/bin/micromamba"], f"{PREFIX}/bin/python", "conda", "/usr/local/bin/micromamba"),
        "label": ([f"ENV CONDA_PREFIX= PATH={system_path}", f"LABEL dev.composer.python={PREFIX}/bin/python"],
                  f"{PREFIX}/bin/python", "conda", None),
        "mamba-root": ([f"ENV CONDA_PREFIX= PATH={system_path} MAMBA_ROOT_PREFIX={PREFIX}"], f"{PREFIX}/bin/python", "conda", None),
        "pythonpath": ([f"ENV CONDA_PREFIX= PATH={system_path} PYTHONPATH={PREFIX}/lib/python3.11/site-packages"],
                       "/usr/bin/python3", "system", None),
    }
    refs = {}
    for name, (lines, *_rest) in variants.items():
        (tmp_path / "ctx" / "Dockerfile").write_text("\n".join([f"FROM {conda_upstream}"] + lines) + "\n")
        refs[name] = f"{REGISTRY}/models/conda-{name}:{conda_upstream.rsplit(':', 1)[1]}"
        subprocess.run(["docker", "build", "-q", "-t", refs[name], str(tmp_path / "ctx")], check=True, capture_output=True)
        subprocess.run(["docker", "push", refs[name]], check=True, capture_output=True)
    for name, (_, executable, kind, micromamba) in variants.items():
        proc = run_cli("record", "--run", f"Probe/{name}", "--image", refs[name], "--json", env=env)
        assert proc.returncode == 0, proc.stderr
        from composer.settings import load_settings
        from composer.upstream.runs import load_run

        record, _ = load_run(load_settings({"registry": env["COMPOSER_REGISTRY"]}), f"Probe/{name}")

        record = record.to_json()
        assert (record["python"]["executable"], record["python"]["kind"]) == (executable, kind), name
        assert record["conda"]["prefix"] == PREFIX and record["conda"]["micromamba"] == micromamba, name
    extras = tmp_path / "extras.yml"
    extras.write_text(yaml.safe_dump({"channels": [record["conda"]["channels"][0]], "dependencies": ["tinyplot"]}))
    out = build_json("--upstream-run", "Probe/mm", "--extra", str(extras), "--name", "image-micromamba", env=env)
    assert "/tmp/composer/conda/pkgs/tinyplot-1.0.0-0.tar.bz2" in _run(out["ref"], f"cat {PREFIX}/conda-meta/.stand-in")
    record = json.loads(run_cli("show", "image-micromamba", "--json", env=env).stdout)["record"]
    assert record["conda"]["installer"] == "micromamba-image"


def test_explicit_list_given_at_record(env, conda_upstream, channel, tmp_path):
    lock = tmp_path / "conda.lock"
    lock.write_text("@EXPLICIT\n" + "".join(
        f"{channel[0].url}/{sub}/{fn}#sha256:{rec['sha256']}\n"
        for sub in ("noarch", "linux-64")
        for fn, rec in json.loads((channel[1] / sub / "repodata.json").read_text())["packages"].items()
        if (rec["name"], rec["version"]) in {("python", "3.11.2"), ("tinycore", "1.0.0"), ("tinyutil", "0.1.0"), ("libtiny", "1.0.0")}
    ))
    proc = run_cli("record", "--run", "Explicit/1", "--image", conda_upstream, "--requirements", str(lock), "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    from composer.settings import load_settings
    from composer.upstream.runs import load_run

    record, _ = load_run(load_settings({"registry": env["COMPOSER_REGISTRY"]}), "Explicit/1")

    record = record.to_json()
    assert record["conda"]["packages_source"] == "explicit" and record["distributions_source"] == "image"
    assert sorted(p["name"] for p in record["conda"]["packages"]) == ["libtiny", "python", "tinycore", "tinyutil"]
