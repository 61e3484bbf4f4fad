"""composer/config.py: flags > COMPOSER_* environment > composer.toml, and validation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from composer.settings import Settings, load_settings
from composer.errors import UsageError


@pytest.fixture(autouse=True)
def _no_ambient_config(tmp_path, monkeypatch):
    # An empty working directory: no stray ./composer.toml is picked up.
    monkeypatch.chdir(tmp_path)


def toml(tmp_path: Path, text: str) -> str:
    p = tmp_path / "conf" / "composer.toml"
    p.parent.mkdir(exist_ok=True)
    p.write_text(text, encoding="utf-8")
    return str(p)


def error(**kw) -> UsageError:
    with pytest.raises(UsageError) as info:
        load_settings(**kw)
    assert "\n" not in info.value.one_line()
    return info.value


def test_defaults_with_nothing_configured():
    s = load_settings({}, env={})
    assert s == Settings()
    assert s.builder == "auto" and s.progress == "auto" and s.insecure_registries == []


def test_precedence_flags_over_env_over_file(tmp_path):
    path = toml(tmp_path, 'registry = "file.example.com/ml"\nbuilder = "docker"\nprogress = "quiet"\n')
    env = {"COMPOSER_REGISTRY": "env.example.com/ml", "COMPOSER_BUILDER": "buildx"}
    flags = {"registry": "flag.example.com/ml", "builder": None, "progress": None}
    s = load_settings(flags, env=env, config_path=path)
    assert s.registry == "flag.example.com/ml"  # flag wins
    assert s.builder == "buildx"  # None flag: env wins
    assert s.progress == "quiet"  # only in the file


def test_env_over_file(tmp_path):
    path = toml(tmp_path, 'registry = "file.example.com/ml"\n')
    assert load_settings({}, env={"COMPOSER_REGISTRY": "env.example.com"}, config_path=path).registry == "env.example.com"


def test_empty_env_value_does_not_override_file(tmp_path):
    path = toml(tmp_path, 'registry = "file.example.com/ml"\n')
    assert load_settings({}, env={"COMPOSER_REGISTRY": ""}, config_path=path).registry == "file.example.com/ml"


def test_config_path_from_env(tmp_path):
    path = toml(tmp_path, 'builder = "buildctl"\n')
    assert load_settings({}, env={"COMPOSER_CONFIG": path}).builder == "buildctl"


def test_composer_toml_in_working_directory(tmp_path):
    (tmp_path / "composer.toml").write_text('registry = "cwd.example.com/x"\n')
    assert load_settings({}, env={}).registry == "cwd.example.com/x"


def test_explicit_config_path_must_exist(tmp_path):
    err = error(flags={}, env={}, config_path=str(tmp_path / "missing.toml"))
    assert "does not exist" in err.message


def test_unknown_toml_key(tmp_path):
    err = error(flags={}, env={}, config_path=toml(tmp_path, 'registry = "r.example.com"\nregistery = "typo"\n'))
    assert "'registery'" in err.message
    assert "registry" in err.hint


def test_invalid_toml(tmp_path):
    err = error(flags={}, env={}, config_path=toml(tmp_path, 'registry = "unterminated\n'))
    assert "not valid TOML" in err.message


def test_non_utf8_toml(tmp_path):
    p = tmp_path / "composer.toml"
    p.write_bytes(b'registry = "caf\xe9"\n')
    assert "not valid TOML" in error(flags={}, env={}, config_path=str(p)).message


@pytest.mark.parametrize("where", ["flag", "env", "file"])
def test_bad_builder(tmp_path, where):
    kw = {"flags": {}, "env": {}}
    if where == "flag":
        kw["flags"] = {"builder": "kaniko"}
    elif where == "env":
        kw["env"] = {"COMPOSER_BUILDER": "kaniko"}
    else:
        kw["config_path"] = toml(tmp_path, 'builder = "kaniko"\n')
    assert "kaniko" in error(**kw).message


def test_bad_progress():
    assert "progress" in error(flags={"progress": "loud"}, env={}).message


@pytest.mark.parametrize(
    "registry",
    ["127.0.0.1:5000/ml", "127.0.0.1:5000", "localhost:5000/a/b", "registry.example.com", "r.example.com:443/team_a/ml",
     "[::1]:5000/ml"],
)
def test_good_registries(registry):
    assert load_settings({"registry": registry}, env={}).registry == registry


@pytest.mark.parametrize(
    "registry",
    ["http://x", "https://registry.example.com/ml", "127.0.0.1:5000/ML", "registry.example.com/Team", "reg istry.com",
     "127.0.0.1:5000/ml/", "127.0.0.1:5000//ml"],
)
def test_bad_registries(registry):
    assert "HOST[:PORT][/PREFIX]" in error(flags={"registry": registry}, env={}).message


def test_non_string_registry_in_toml_is_a_usage_error(tmp_path):
    error(flags={}, env={}, config_path=toml(tmp_path, "registry = 5000\n"))


def test_non_list_insecure_registries_in_toml_is_a_usage_error(tmp_path):
    error(flags={}, env={}, config_path=toml(tmp_path, "insecure_registries = 5\n"))


def test_insecure_registries_comma_string_from_env():
    s = load_settings({}, env={"COMPOSER_INSECURE_REGISTRIES": " reg.lab:5000, ,other.lab ,"})
    assert s.insecure_registries == ["reg.lab:5000", "other.lab"]


def test_insecure_registries_list_from_file_and_flag(tmp_path):
    path = toml(tmp_path, 'insecure_registries = ["a.lab:5000", "b.lab"]\n')
    assert load_settings({}, env={}, config_path=path).insecure_registries == ["a.lab:5000", "b.lab"]
    assert load_settings({"insecure_registries": ["c.lab"]}, env={}, config_path=path).insecure_registries == ["c.lab"]


def test_repository_with_and_without_prefix():
    s = load_settings({"registry": "127.0.0.1:5000/ml/team"}, env={})
    assert s.registry_host == "127.0.0.1:5000"
    assert s.registry_prefix == "ml/team"
    assert s.repository("envs") == "ml/team/envs"
    bare = load_settings({"registry": "127.0.0.1:5000"}, env={})
    assert bare.registry_prefix == ""
    assert bare.repository("envs") == "envs"


def test_no_registry_is_a_usage_error_when_needed():
    s = load_settings({}, env={})
    with pytest.raises(UsageError, match="no registry"):
        s.repository("envs")


def test_ca_bundle_none_disables(monkeypatch, tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # even an ambient bundle is ignored
    assert load_settings({"ca_bundle": "none"}, env={}).ca_bundle_path() is None


def test_ca_bundle_explicit_path(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert load_settings({}, env={"COMPOSER_CA_BUNDLE": str(ca)}).ca_bundle_path() == str(ca)


def test_ca_bundle_missing_file(tmp_path):
    err = error(flags={"ca_bundle": str(tmp_path / "nope.pem")}, env={})
    assert "CA bundle" in err.message and "'none'" in err.hint


def test_env_names(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    env = {
        "COMPOSER_REGISTRY": "r.example.com/ml", "COMPOSER_BUILDER": "docker", "COMPOSER_CA_BUNDLE": str(ca),
        "COMPOSER_INDEX_URL": "https://u:p@idx/simple", "COMPOSER_EXTRA_INDEX_URL": "https://x/simple",
        "COMPOSER_DOCKERFILE_SYNTAX": "docker/dockerfile:1.7", "BUILDKIT_HOST": "tcp://bk:1234",
        "COMPOSER_PROGRESS": "plain",
    }
    s = load_settings({}, env=env)
    assert (s.registry, s.builder, s.ca_bundle, s.index_url, s.extra_index_url, s.dockerfile_syntax, s.buildkit_host,
            s.progress) == ("r.example.com/ml", "docker", str(ca), "https://u:p@idx/simple", "https://x/simple",
                            "docker/dockerfile:1.7", "tcp://bk:1234", "plain")


@pytest.mark.parametrize("var,value", [
    ("COMPOSER_BUILD_TIMEOUT", "abc"), ("COMPOSER_REGISTRY_ATTEMPTS", "x"), ("COMPOSER_REGISTRY_ATTEMPTS", "0"),
    ("COMPOSER_GZIP_LEVEL", "11"), ("COMPOSER_LEASE_STALE", "soon"), ("COMPOSER_LAYER_COMPRESSION", "brotli"),
])
def test_bad_tuning_value_is_one_usage_line(var, value):
    with pytest.raises(UsageError, match=var):
        load_settings({}, env={var: value})


def test_tuning_values_are_parsed_once_into_settings():
    s = load_settings({}, env={"COMPOSER_BUILD_TIMEOUT": "60", "COMPOSER_REGISTRY_ATTEMPTS": "5", "COMPOSER_LEASE_POLL": "0.1"})
    assert (s.build_timeout, s.registry_attempts, s.lease_poll) == (60, 5, 0.1)


def test_import_never_reads_settings():
    """A bad value breaks the command that reads it (exit 2), never `import composer`."""
    import subprocess
    import sys

    env = {**os.environ, "COMPOSER_BUILD_TIMEOUT": "abc", "COMPOSER_REGISTRY_ATTEMPTS": "x"}
    proc = subprocess.run([sys.executable, "-c", "import composer, composer.cli, composer.pipeline, composer.builders"],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "composer", "ls", "--registry", "127.0.0.1:9/x"], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("composer: error:") == 1, proc.stderr
