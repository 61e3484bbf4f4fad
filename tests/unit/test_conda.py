"""composer/conda.py without Docker: environment.yml, explicit lists, run-record sections, the
solve on pinned upstream packages against a channel of the tests' own (file://), the uv pins,
the installer choice, the host staging tree, the Dockerfile and the spec hash's conda key."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from composer.kinds import conda
from composer.upstream import conda_meta
from composer.settings import Settings, load_settings
from composer.errors import EnvironmentProblem, LockConflictError, UsageError
from composer.kinds import read_extras
from composer.model.spec import spec_document, spec_hash
from tests.integration.conda_channel import PLACEHOLDER, build_channel

BASE = "sha256:" + "1" * 64
PYTHON = {"executable": "/opt/conda/bin/python", "version": "3.11.2", "externally_managed": False}
PLATFORM = {"os": "linux", "architecture": "amd64", "libc": "glibc", "libc_version": "2.36",
            "python_platform": "x86_64-manylinux_2_36"}


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- environment.yml -------------------------------------------------------------------
def test_environment_file_channels_conda_and_pip(tmp_path):
    path = write(tmp_path, "environment.yml", """
name: explainer
channels: [conda-forge, https://example.org/ch/, nodefaults]
dependencies:
  - tinyshap >=0.3
  - tinyplot
  - pip:
    - Shap_Lite>=0.1
    - iniconfig==2.0.0
""")
    env = conda.read_environment_file(path)
    assert env.channels == ("conda-forge", "https://example.org/ch")
    assert env.conda == ("tinyplot", "tinyshap >=0.3")
    assert env.pip == ("iniconfig==2.0.0", "shap-lite>=0.1")
    # read_extras gives one flat list: what the build record keeps and `rebuild` compares.
    assert read_extras(path) == ["channel:conda-forge", "channel:https://example.org/ch", "conda:tinyplot",
                                 "conda:tinyshap >=0.3", "iniconfig==2.0.0", "shap-lite>=0.1"]


@pytest.mark.parametrize("text, words", [
    ("channels: [x]\ndependencies: [a, {pip: [-r other.txt]}]\n", "option lines"),
    ("dependencies: [a]\nvariables: {A: 1}\n", "'variables' is not supported"),
    ("dependencies: ['numpy >=>1']\n", "is not a conda match spec"),
    ("dependencies: [{pip: ['not a req ~~']}]\n", "is not a valid requirement"),
    ("dependencies: []\n", "lists no dependencies"),
    ("channels: conda-forge\ndependencies: [a]\n", "channels must be a list"),
    ("name: x\n", "has no dependencies list"),
    ("dependencies: [a\n", "is not valid YAML"),
    ("- a\n- b\n", "not an environment file"),
    ("dependencies: [{conda: [a]}]\n", "neither a conda match spec nor a pip: list"),
    ("dependencies: [{pip: [git+https://x.org/a.git]}]\n", "is not a valid requirement"),
])
def test_environment_file_bad_input_is_one_clear_error(tmp_path, text, words):
    with pytest.raises(UsageError) as err:
        conda.read_environment_file(write(tmp_path, "environment.yml", text))
    assert words in err.value.one_line()
    assert "\n" not in err.value.one_line()


def test_environment_file_suffixes():
    assert conda.is_environment_file(Path("env.yml")) and conda.is_environment_file(Path("x/ENV.YAML"))
    assert not conda.is_environment_file(Path("requirements.txt"))


# -- explicit lists and run-record sections ----------------------------------------------
EXPLICIT = """# This file may be used to create an environment using:
# $ conda create --name <env> --file <this file>
@EXPLICIT
https://conda.anaconda.org/conda-forge/linux-64/libzlib-1.3.1-hb9d3cd8_2.conda#{sha}
https://conda.anaconda.org/conda-forge/noarch/tzdata-2024b-hc8b5060_0.conda#{md5}
file:///srv/channel/noarch/tiny-core-1.0.0-py_0.tar.bz2
"""


def test_explicit_list(tmp_path):
    path = write(tmp_path, "env.lock", EXPLICIT.format(sha="sha256:" + "a" * 64, md5="b" * 32))
    assert conda_meta.is_explicit_file(path)
    assert not conda_meta.is_explicit_file(write(tmp_path, "r.txt", "attrs==23.1.0\n"))
    pkgs = {p["name"]: p for p in conda_meta.parse_explicit(path)}
    assert pkgs["libzlib"] == {
        "name": "libzlib", "version": "1.3.1", "build": "hb9d3cd8_2", "subdir": "linux-64",
        "channel": "https://conda.anaconda.org/conda-forge", "fn": "libzlib-1.3.1-hb9d3cd8_2.conda",
        "url": "https://conda.anaconda.org/conda-forge/linux-64/libzlib-1.3.1-hb9d3cd8_2.conda",
        "sha256": "a" * 64, "md5": None,
    }
    assert pkgs["tzdata"]["md5"] == "b" * 32 and pkgs["tzdata"]["sha256"] is None
    assert pkgs["tiny-core"]["version"] == "1.0.0" and pkgs["tiny-core"]["channel"] == "file:///srv/channel"


def test_explicit_list_bad_line(tmp_path):
    with pytest.raises(UsageError, match="is not a package URL"):
        conda_meta.parse_explicit(write(tmp_path, "env.lock", "@EXPLICIT\nhttps://example.org/numpy.whl\n"))
    with pytest.raises(UsageError, match="names no package"):
        conda_meta.parse_explicit(write(tmp_path, "env.lock", "@EXPLICIT\n"))


def test_explicit_packages_need_a_prefix():
    with pytest.raises(UsageError, match="has no conda prefix"):
        conda_meta.with_explicit_packages({"conda": None}, [], "img@sha256:1")
    probe = {"conda": {"prefix": "/opt/conda", "packages": [{"name": "x"}], "micromamba": None}}
    got = conda_meta.with_explicit_packages(probe, [{"name": "y"}], "img")
    assert got["conda"] == {"prefix": "/opt/conda", "packages": [{"name": "y"}], "micromamba": None, "packages_source": "explicit"}


def test_run_record_section_normalises_conda_meta():
    # As conda / micromamba / rattler write conda-meta/*.json: channel with or without the subdir.
    found = {"prefix": "/opt/conda", "micromamba": "/bin/micromamba", "packages": [
        {"name": "NumPy", "version": "1.26.4", "build": "py311h_0", "build_number": 0,
         "channel": "https://conda.anaconda.org/conda-forge/linux-64", "subdir": "linux-64",
         "url": "https://conda.anaconda.org/conda-forge/linux-64/numpy-1.26.4-py311h_0.conda",
         "sha256": "AB" * 32, "depends": ["python >=3.11,<3.12.0a0"], "noarch": None},
        {"name": "tzdata", "version": "2024b", "build": "h0", "channel": "conda-forge",
         "url": "https://conda.anaconda.org/conda-forge/noarch/tzdata-2024b-h0.conda", "noarch": {"type": "generic"}},
    ]}
    section = conda_meta.run_record_section(found)
    assert section["prefix"] == "/opt/conda" and section["micromamba"] == "/bin/micromamba"
    assert section["channels"] == ["conda-forge", "https://conda.anaconda.org/conda-forge"]
    numpy, tzdata = section["packages"]
    assert numpy["name"] == "numpy" and numpy["channel"] == "https://conda.anaconda.org/conda-forge"
    assert numpy["sha256"] == "ab" * 32 and numpy["fn"] == "numpy-1.26.4-py311h_0.conda"
    assert tzdata["subdir"] == "noarch" and tzdata["noarch"] == "generic" and tzdata["depends"] == []
    assert section["packages_source"] == "image"


# -- the probe (composer/resolver.py), run on this host ---------------------------------------
def _fake_prefix(root: Path) -> Path:
    meta = root / "conda-meta"
    meta.mkdir(parents=True)
    (meta / "tinycore-1.0.0-0.json").write_text(json.dumps({"name": "tinycore", "version": "1.0.0", "build": "0",
                                                            "files": ["x"], "sha256": "c" * 64, "noarch": "python"}))
    (meta / "history").write_text("==> 2024 <==\n")
    (meta / "broken.json").write_text("{")
    return root


def test_probe_reads_conda_meta_of_the_active_prefix(tmp_path):
    from composer.upstream.probe import PROBE_SCRIPT

    prefix = _fake_prefix(tmp_path / "env")
    env = {**os.environ, "CONDA_PREFIX": str(prefix), "MAMBA_EXE": "/nonexistent"}
    out = subprocess.run([sys.executable, "-c", PROBE_SCRIPT], capture_output=True, text=True, env=env, timeout=60)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["conda"]["prefix"] == str(prefix)
    assert [p["name"] for p in report["conda"]["packages"]] == ["tinycore"]
    assert report["conda"]["packages"][0]["sha256"] == "c" * 64
    assert report["kind"] in ("system", "venv")  # this interpreter does not live in that prefix
    env.pop("CONDA_PREFIX")
    out = subprocess.run([sys.executable, "-c", PROBE_SCRIPT], capture_output=True, text=True, env=env, timeout=60)
    assert json.loads(out.stdout.strip().splitlines()[-1])["conda"] is None


def _fake_python(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho {path}\n")
    path.chmod(0o755)


@pytest.mark.parametrize("env, expected", [
    ({"CONDA_PREFIX": "{t}/active"}, "{t}/active/bin/python"),
    ({"MAMBA_ROOT_PREFIX": "{t}/mamba"}, "{t}/mamba/bin/python"),
    ({"MAMBA_ROOT_PREFIX": "{t}/mamba", "ENV_NAME": "base"}, "{t}/mamba/bin/python"),
    ({"MAMBA_ROOT_PREFIX": "{t}/mamba", "ENV_NAME": "work"}, "{t}/mamba/envs/work/bin/python"),
    ({"COMPOSER_PYTHON": "{t}/label/python", "CONDA_PREFIX": "{t}/active"}, "{t}/label/python"),
    ({}, "{t}/path/python3"),
])
def test_find_python_order(tmp_path, env, expected):
    from composer.upstream.probe import FIND_PYTHON

    for p in ("active/bin/python", "mamba/bin/python", "mamba/envs/work/bin/python", "label/python", "path/python3"):
        _fake_python(tmp_path / p)
    env = {k: v.format(t=tmp_path) for k, v in env.items()}
    full = {"PATH": f"{tmp_path}/path:/usr/bin:/bin", **env}
    out = subprocess.run(["/bin/sh", "-c", FIND_PYTHON, "ignored"], capture_output=True, text=True, env=full, timeout=30)
    assert out.stdout.strip() == expected.format(t=tmp_path)


# -- solving on pinned upstream packages ---------------------------------------------------
@pytest.fixture(scope="module")
def channel(tmp_path_factory):
    return build_channel(tmp_path_factory.mktemp("channel"))


@pytest.fixture(scope="module")
def upstream(channel):
    """An upstream run record whose prefix holds python, tinycore 1.0.0, tinyutil 0.1.0, libtiny,
    as they stand in the channel's own repodata."""
    packages = []
    for sub in ("noarch", "linux-64"):
        repodata = json.loads((channel / sub / "repodata.json").read_text())
        for fn, rec in repodata["packages"].items():
            if (rec["name"], rec["version"]) in {("python", "3.11.2"), ("tinycore", "1.0.0"), ("tinyutil", "0.1.0"), ("libtiny", "1.0.0")}:
                packages.append({**rec, "fn": fn, "url": f"{channel.as_uri()}/{sub}/{fn}", "channel": channel.as_uri()})
    return {
        "python": dict(PYTHON), "platform": dict(PLATFORM), "distributions": [{"name": "tinycore", "version": "1.0.0"}],
        "conda": conda_meta.run_record_section({"prefix": "/opt/conda", "packages": packages}),
    }


def env_of(channel: Path, *specs: str, pip=()) -> conda.EnvironmentFile:
    return conda.EnvironmentFile((channel.as_uri(),), tuple(sorted(specs)), tuple(pip))


@pytest.fixture(autouse=True)
def _state(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPOSER_STATE_DIR", str(tmp_path / "state"))


def test_solve_adds_packages_and_keeps_every_upstream_one(channel, upstream):
    lock = conda.solve_extras(Settings(), env_of(channel, "tinyshap", "tinyplot"), upstream, "Train/1")
    assert [p["name"] for p in lock.added] == ["tinyplot", "tinyshap"]
    assert {p["name"]: p["version"] for p in lock.added} == {"tinyplot": "1.0.0", "tinyshap": "0.3.0"}
    up = {p["name"]: p for p in upstream["conda"]["packages"]}
    for p in lock.packages:
        if p["name"] in up:
            assert p == up[p["name"]]  # exactly the upstream's record, untouched
    assert [p["name"] for p in lock.packages] == ["libtiny", "python", "tinycore", "tinyplot", "tinyshap", "tinyutil"]
    assert all(p["sha256"] and p["url"].startswith(channel.as_uri()) for p in lock.added)
    assert lock.prefix == "/opt/conda" and lock.requirements == ["tinyplot", "tinyshap"]


@pytest.mark.parametrize("spec, pinned, because", [
    ("tinyplot >=2", "tinycore==1.0.0 (build 0)", "tinyplot 2.0.0 requires tinycore >=2"),
    ("clashing", "tinyutil==0.1.0 (build 0)", "clashing 1.0.0 requires tinyutil >=0.2"),
    ("tinycore >=2", "tinycore==1.0.0 (build 0)", ""),
])
def test_conflict_is_one_line_naming_both_sides(channel, upstream, spec, pinned, because):
    with pytest.raises(LockConflictError) as err:
        conda.solve_extras(Settings(), env_of(channel, spec, "tinyshap"), upstream, "Train/1")
    line = err.value.one_line()
    assert f"extra conda requirement '{spec}'" in line and f"upstream conda package {pinned} of run Train/1" in line
    assert because in line and "\n" not in line
    assert err.value.exit_code == 4


def test_unknown_package_is_bad_input(channel, upstream):
    with pytest.raises(UsageError, match="extra conda requirement 'nosuch >=1' was not found in channels"):
        conda.solve_extras(Settings(), env_of(channel, "nosuch >=1"), upstream, "Train/1")


def test_unreachable_channel(upstream):
    env = conda.EnvironmentFile(("http://127.0.0.1:9/none",), ("tinyshap",), ())
    with pytest.raises(UsageError, match="could not be read"):
        conda.solve_extras(Settings(), env, upstream, "Train/1")


def test_channels_default_to_the_upstream_ones(channel, upstream):
    lock = conda.solve_extras(Settings(), conda.EnvironmentFile((), ("tinyplot",), ()), upstream, "Train/1")
    assert lock.channels == [channel.as_uri()] and [p["name"] for p in lock.added] == ["tinyplot"]


def test_conda_packages_need_a_conda_upstream(channel, upstream):
    pip_upstream = {k: v for k, v in upstream.items() if k != "conda"}
    with pytest.raises(UsageError, match="has no conda prefix"):
        conda.solve_extras(Settings(), env_of(channel, "tinyshap"), pip_upstream, "Train/1")
    # Without conda dependencies nothing is solved, and a pip upstream gets an empty conda lock.
    assert conda.solve_extras(Settings(), env_of(channel, pip=["x"]), pip_upstream, "T").spec_part() is None
    same = conda.solve_extras(Settings(), env_of(channel, pip=["x"]), upstream, "T")
    assert same.added == [] and same.packages == upstream["conda"]["packages"]


def test_python_pins_are_the_python_conda_packages():
    pkgs = [
        {"name": "python", "version": "3.11.2", "depends": []},
        {"name": "numpy", "version": "1.26.4", "depends": ["python >=3.11,<3.12.0a0", "libblas"]},
        {"name": "tinyshap", "version": "0.3.0", "noarch": "python", "depends": []},
        {"name": "openssl", "version": "3.3.2", "depends": ["ca-certificates"]},
        {"name": "tzdata", "version": "2024b", "noarch": "generic", "depends": []},
        {"name": "weird", "version": "1.0.0_custom!", "noarch": "python", "depends": []},
        {"name": "Typing_Extensions", "version": "4.12.2", "noarch": "python", "depends": ["python >=3.8"]},
    ]
    pins = conda.python_pins(pkgs, [{"name": "numpy", "version": "1.26.4"}])
    assert pins == [{"name": "tinyshap", "version": "0.3.0"}, {"name": "typing-extensions", "version": "4.12.2"}]


def test_explain_solve_failure_without_a_lock_line():
    err = conda.explain_solve_failure("Cannot solve the request because of: something else\n", ["a"], [], "R", ["c"])
    assert isinstance(err, LockConflictError) and "something else" in err.one_line()


# -- installers, the staging tree and the Dockerfile -------------------------------------------
def test_installer_choice(tmp_path, monkeypatch):
    assert conda.choose_installer(Settings(), {"micromamba": None}).kind == "py-rattler"
    assert conda.choose_installer(Settings(), None).kind == "py-rattler"
    assert conda.choose_installer(Settings(), {"micromamba": "/bin/micromamba"}) == conda.Installer("micromamba-image", "/bin/micromamba")
    host = tmp_path / "micromamba"
    host.write_bytes(b"\x7fELF" + b"\0" * 60)
    host.chmod(0o755)
    # The host's wins over the image's: it was asked for. MAMBA_EXE is the same setting.
    assert conda.choose_installer(Settings(micromamba=str(host)), {"micromamba": "/bin/micromamba"}).kind == "micromamba-host"
    monkeypatch.setenv("MAMBA_EXE", str(host))
    assert load_settings({}, env=dict(os.environ)).micromamba == str(host)
    with pytest.raises(UsageError, match="does not exist or is not executable"):
        conda.choose_installer(Settings(micromamba=str(tmp_path / "none")), None)
    macho = tmp_path / "mac-micromamba"
    macho.write_bytes(b"\xcf\xfa\xed\xfe" + b"\0" * 60)
    macho.chmod(0o755)
    with pytest.raises(UsageError, match="not a Linux executable"):
        conda.choose_installer(Settings(micromamba=str(macho)), None)


def test_staging_tree_for_the_prefix(channel, upstream, tmp_path):
    lock = conda.solve_extras(Settings(), env_of(channel, "tinyshap"), upstream, "Train/1")
    archives = conda.fetch_archives(Settings(), lock.added)
    assert {n: hashlib.sha256(p.read_bytes()).hexdigest() for n, p in archives.items()} == {p["name"]: p["sha256"] for p in lock.added}
    out = tmp_path / "stage.tar"
    members = conda.stage_with_rattler(lock, upstream, archives, out)
    assert members == sorted(members)
    assert "conda-meta/tinyshap-0.3.0-0.json" in members
    assert "lib/python3.11/site-packages/tinyshap/__init__.py" in members and "bin/tinyshap" in members
    assert not any(m.startswith(("conda-meta/tinycore", "conda-meta/history", "CACHEDIR")) for m in members)  # upstream's own
    with tarfile.open(out) as tar:
        names = tar.getnames()
        assert names == members
        assert all(m.uid == 0 and m.gid == 0 and m.mtime == conda.STAGE_MTIME for m in tar.getmembers())
        script = tar.extractfile("bin/tinyshap").read().decode()
        record = json.loads(tar.extractfile("conda-meta/tinyshap-0.3.0-0.json").read())
        assert tar.getmember("bin/tinyshap").mode & 0o111
    assert script.startswith("#!/opt/conda/bin/python")  # linked for the image's prefix, not the staging dir
    assert record["url"] == lock.added[0]["url"] and record["channel"] == lock.added[0]["channel"]
    assert record["requested_specs"] == ["tinyshap"]
    text = json.dumps(record)
    assert "extracted_package_dir" not in text and str(tmp_path) not in text and "composer-conda-stage" not in text
    # The same lock gives the same bytes: the tarball is reproducible.
    again = tmp_path / "again.tar"
    conda.stage_with_rattler(lock, upstream, archives, again)
    assert again.read_bytes() == out.read_bytes()


def test_placeholder_is_patched_with_the_prefix(channel, upstream, tmp_path):
    pkgs = [p for p in upstream["conda"]["packages"] if p["name"] != "libtiny"]
    up = {**upstream, "conda": {**upstream["conda"], "packages": pkgs}}
    lock = conda.solve_extras(Settings(), env_of(channel, "libtiny"), up, "Train/1")
    out = tmp_path / "stage.tar"
    conda.stage_with_rattler(lock, up, conda.fetch_archives(Settings(), lock.added), out)
    with tarfile.open(out) as tar:
        assert tar.extractfile("etc/libtiny.conf").read().decode() == "prefix=/opt/conda\n"
        assert PLACEHOLDER in json.loads(tar.extractfile("conda-meta/libtiny-1.0.0-h0.json").read())["paths_data"]["paths"][0]["prefix_placeholder"]


def test_fetch_refuses_other_bytes(channel, upstream):
    bad = dict(upstream["conda"]["packages"][0], sha256="0" * 64)
    with pytest.raises(UsageError, match="does not match its locked hash"):
        conda.fetch_archives(Settings(), [bad])


def test_micromamba_context(channel, upstream, tmp_path):
    lock = conda.solve_extras(Settings(), env_of(channel, "tinyshap"), upstream, "Train/1")
    host = tmp_path / "mm"
    host.write_text("#!/bin/sh\n")
    host.chmod(0o755)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    conda.prepare_conda_context(Settings(), ctx, lock, conda.Installer("micromamba-host", str(host)), upstream, "sha256:" + "2" * 64)
    explicit = (ctx / "conda" / "explicit.txt").read_text().splitlines()
    assert explicit[0] == "@EXPLICIT"
    urls = [l for l in explicit if l.startswith("file://")]
    assert urls == [f"file:///tmp/composer/conda/pkgs/{p['fn']}#{p['md5']}" for p in lock.added]
    assert sorted(os.listdir(ctx / "conda" / "pkgs")) == sorted(p["fn"] for p in lock.added)
    assert (ctx / "conda" / "micromamba").read_text() == "#!/bin/sh\n"
    assert not (ctx / "conda" / "stage.tar").exists()


def test_nothing_added_leaves_an_empty_conda_dir(upstream, tmp_path):
    lock = conda.CondaLock(prefix="/opt/conda", packages=upstream["conda"]["packages"])
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    conda.prepare_conda_context(Settings(), ctx, lock, conda.Installer("py-rattler"), upstream, "sha256:" + "2" * 64)
    assert os.listdir(ctx / "conda") == []


def _render(installer, prefix="/opt/conda", syntax=None):
    return conda.render_conda(base_ref=f"127.0.0.1:5000/m/a@{BASE}", base_name="127.0.0.1:5000/m/a:1", base_digest=BASE,
                              python=PYTHON, prefix=prefix, installer=installer, spec_hash="sha256:" + "3" * 64, syntax=syntax)


def test_render_conda_template():
    text, template = _render(conda.Installer("py-rattler"))
    assert template == "conda/2" and text.startswith("# composer-template: conda/2\n")
    assert f"FROM 127.0.0.1:5000/m/a@{BASE}" in text
    assert "P=/opt/conda;" in text and "false install --yes --offline" in text  # no micromamba: that branch never runs
    assert "--python /opt/conda/bin/python" in text and "--break-system-packages" not in text
    assert 'dev.composer.python="/opt/conda/bin/python"' in text and 'dev.composer.conda-prefix="/opt/conda"' in text
    assert "${" not in text.replace("${MAMBA", "").replace("$(", "")  # every placeholder filled
    host, _ = _render(conda.Installer("micromamba-host", "/usr/local/bin/micromamba"))
    assert f"{conda.HOST_MICROMAMBA} install --yes --offline" in host and "/usr/local/bin/micromamba" not in host
    image, _ = _render(conda.Installer("micromamba-image", "/bin/micromamba"))
    assert "/bin/micromamba install --yes --offline" in image
    weird, _ = _render(conda.Installer("py-rattler"), prefix="/opt/my env")
    assert "P='/opt/my env';" in weird
    assert _render(conda.Installer("py-rattler"), syntax="docker/dockerfile:1.7")[0].startswith("# syntax=docker/dockerfile:1.7\n")
    with pytest.raises(UsageError):
        _render(conda.Installer("py-rattler"), syntax="bad syntax;rm")


def test_history_entry():
    lock = conda.CondaLock(prefix="/opt/conda", requirements=["tinyshap"],
                           added=[{"name": "tinyshap", "version": "0.3.0", "build": "0", "channel": "http://ch"}])
    text = conda.history_entry(lock, "sha256:" + "4" * 64)
    lines = text.splitlines()
    assert lines[0].startswith("==> ") and lines[0].endswith(" <==")
    assert lines[-1] == "+http://ch::tinyshap-0.3.0-0" and '# update specs: ["tinyshap"]' in lines


# -- the spec hash ---------------------------------------------------------------------
def _doc(**kw):
    base = dict(base_digest=BASE, python=PYTHON, platform=PLATFORM, packages=[], template="conda/1")
    return spec_document(**{**base, **kw})


PKG = {"name": "tinyshap", "version": "0.3.0", "build": "0", "subdir": "noarch", "sha256": "5" * 64, "url": "http://a/x"}


def test_spec_conda_key_only_when_present():
    assert "conda" not in _doc() and "conda" not in _doc(conda=None)
    doc = _doc(conda={"prefix": "/opt/conda", "packages": [PKG]})
    assert doc["conda"] == {"prefix": "/opt/conda", "packages": [
        {"name": "tinyshap", "version": "0.3.0", "build": "0", "subdir": "noarch", "hash": "sha256:" + "5" * 64}]}


def test_spec_conda_lock_sensitivity_and_invariance():
    one = spec_hash(_doc(conda={"prefix": "/opt/conda", "packages": [PKG, dict(PKG, name="a")]}))
    # Order, URLs and channels are incidental: the bytes are named by their sha256.
    assert one == spec_hash(_doc(conda={"prefix": "/opt/conda", "packages": [dict(PKG, name="a"), dict(PKG, url="http://mirror/x", channel="m")]}))
    for changed in (dict(PKG, version="0.3.1"), dict(PKG, build="1"), dict(PKG, sha256="6" * 64), dict(PKG, subdir="linux-64")):
        assert spec_hash(_doc(conda={"prefix": "/opt/conda", "packages": [changed, dict(PKG, name="a")]})) != one
    assert spec_hash(_doc(conda={"prefix": "/opt/other", "packages": [PKG, dict(PKG, name="a")]})) != one
    assert spec_hash(_doc(conda={"prefix": "/opt/conda", "packages": [PKG]})) != one
    md5_only = dict(PKG, sha256=None, md5="7" * 32)
    assert _doc(conda={"prefix": "/p", "packages": [md5_only]})["conda"]["packages"][0]["hash"] == "md5:" + "7" * 32


def test_worker_reports_missing_rattler_as_environment_problem(monkeypatch):
    # The worker is a separate interpreter; a broken one is a clear error, not a traceback.
    monkeypatch.setattr(conda.sys, "executable", "/bin/false")
    with pytest.raises(EnvironmentProblem, match="py-rattler worker"):
        conda._worker_call("solve", {})


def test_channel_credentials_are_used_to_fetch_and_stored_nowhere(channel, upstream, tmp_path):
    """A /t/<token>/ channel and a user:password@ channel: solved and fetched with the token,
    and the token is in no lock, requirement, record section, history entry or message."""
    import dataclasses

    from tests.integration.conda_channel import ChannelServer

    token = "tk-SECRET-4242"
    served = tmp_path / "served"
    (served / "t").mkdir(parents=True)
    (served / "t" / token).symlink_to(channel)
    server = ChannelServer(served)
    try:
        for url in (f"{server.url}/t/{token}", server.url.replace("://", f"://user:{token}@") + f"/t/{token}"):
            env_file = tmp_path / "environment.yml"
            env_file.write_text(f"channels: ['{url}']\ndependencies: [tinyshap]\n")
            env = conda.read_environment_file(env_file)
            assert all(token not in r for r in env.requirements())
            lock = conda.solve_extras(Settings(), env, upstream, "Train/1")
            stored = json.dumps(dataclasses.asdict(lock)) + conda.history_entry(lock, "sha256:" + "0" * 64)
            assert token not in stored and "<token>" in stored
            archives = conda.fetch_archives(Settings(), lock.added)  # the token comes back only here
            assert sorted(archives) == ["tinyshap"]
            assert token not in json.dumps(conda_meta.run_record_section({"prefix": "/opt/conda", "packages": lock.packages}))
        bad = tmp_path / "bad.yml"
        bad.write_text(f"channels: ['{server.url}/t/{token}/nothere']\ndependencies: [tinyshap]\n")
        with pytest.raises(UsageError) as err:
            conda.solve_extras(Settings(), conda.read_environment_file(bad), upstream, "Train/1")
        assert token not in err.value.one_line()
    finally:
        server.close()
