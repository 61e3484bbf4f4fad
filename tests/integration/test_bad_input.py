"""The bad-input catalogue: each case ends in one line that says what is wrong and how to
fix it, a non-zero exit code, and nothing written to the registry."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BASE_REF, REGISTRY, one_error_line, registry_tags, run_cli
from tests.integration.servers import RegistryProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory, model_a):
    """One recorded upstream run in a prefix of its own; every case runs against it."""
    import uuid

    prefix = f"{REGISTRY}/bad{uuid.uuid4().hex[:8]}"
    env = {"COMPOSER_REGISTRY": prefix}
    assert run_cli("record", "--run", "Up/1", "--image", model_a, env=env).returncode == 0
    return prefix, env, tmp_path_factory.mktemp("bad")


def _file(root: Path, name: str, content) -> str:
    p = root / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(p)


def _build(root, extra_content, *more, name="case"):
    return ["build", "--upstream-run", "Up/1", "--extra", _file(root, f"{name}.txt", extra_content), *more]


# (case id, argv builder(root), exit code, words the line must contain)
CASES = [
    ("binary-requirements", lambda r: _build(r, b"\x7fELF\x00\x01\x02"), 2, ["binary"]),
    ("non-utf8-requirements", lambda r: _build(r, "caf\xe9\n".encode("latin-1")), 2, ["UTF-8"]),
    ("malformed-requirement", lambda r: _build(r, "pandas>>=2\n"), 2, ["not a valid requirement"]),
    ("option-line", lambda r: _build(r, "-r other.txt\n"), 2, ["option lines", "COMPOSER_INDEX_URL"]),
    ("direct-url", lambda r: _build(r, "foo @ https://example.com/foo.whl\n"), 2, ["direct URL"]),
    ("empty-extras", lambda r: _build(r, ""), 2, ["lists no requirements"]),
    ("comments-only", lambda r: _build(r, "# nothing here\n\n"), 2, ["lists no requirements"]),
    ("huge-extras", lambda r: _build(r, "six\n" * 300_000), 2, ["bytes", "under"]),
    ("missing-extras", lambda r: ["build", "--upstream-run", "Up/1", "--extra", str(r / "nope.txt")], 2, ["does not exist"]),
    ("pyproject-without-deps", lambda r: ["build", "--upstream-run", "Up/1", "--extra",
                                          _file(r, "pyproject.toml", "[project]\nname='x'\n")], 2, ["dependencies"]),
    ("unknown-package", lambda r: _build(r, "no-such-package-composer-zz9\n"), 2, ["no-such-package-composer-zz9", "not found"]),
    ("conflicting-pin", lambda r: _build(r, "attrs==24.2.0\n"), 4, ["attrs==24.2.0", "attrs==23.1.0"]),
    ("unknown-run", lambda r: ["build", "--upstream-run", "Nope/0", "--extra", _file(r, "ok.txt", "six\n")], 3,
     ["Nope/0", "composer record"]),
    ("name-with-slash", lambda r: _build(r, "six\n", "--name", "a/b"), 2, ["not a valid OCI tag"]),
    ("name-with-space", lambda r: _build(r, "six\n", "--name", "a b"), 2, ["not a valid OCI tag"]),
    ("name-too-long", lambda r: _build(r, "six\n", "--name", "n" * 200), 2, ["characters long"]),
    ("name-template-missing-var", lambda r: _build(r, "six\n", "--name", "x-{model}"), 2, ["{model}", "--var model="]),
    ("malformed-var", lambda r: _build(r, "six\n", "--name", "x-{model}", "--var", "model"), 2, ["KEY=VALUE"]),
    ("reserved-name", lambda r: _build(r, "six\n", "--name", "spec-mine"), 2, ["reserves"]),
    ("unresolvable-base", lambda r: ["record", "--run", "R9", "--image", f"{REGISTRY}/bases/python:missing-tag"], 3,
     ["missing-tag", "not in registry"]),
    ("base-without-registry-host", lambda r: ["record", "--run", "R9", "--image", "python:3.11"], 2, ["names no registry"]),
    ("unpinned-upstream-requirements", lambda r: ["record", "--run", "R9", "--image", BASE_REF, "--requirements",
                                                  _file(r, "freeze.txt", "numpy>=1\n")], 2, ["not pinned"]),
    ("bad-registry-setting", lambda r: ["ref", "x", "--registry", "http://example.com"], 2, ["HOST[:PORT]"]),
    ("unknown-builder-setting", lambda r: ["ref", "x", "--config", _file(r, "composer.toml", 'builder = "kaniko"\n')], 2,
     ["unknown builder"]),
    ("invalid-config-toml", lambda r: ["ref", "x", "--config", _file(r, "bad.toml", "registry = \n")], 2, ["not valid TOML"]),
    ("missing-ca-bundle", lambda r: ["ref", "x", "--ca-bundle", str(r / "no-ca.pem")], 2, ["CA bundle", "does not exist"]),
    ("unknown-name", lambda r: ["ref", "never-built"], 3, ["never-built", "build it first"]),
    ("unreachable-registry", lambda r: ["ref", "x", "--registry", "127.0.0.1:1/x"], 5, ["127.0.0.1:1"]),
]


@pytest.mark.parametrize("case,argv,code,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input(catalogue, case, argv, code, words):
    prefix, env, root = catalogue
    before = (registry_tags(prefix.split("/", 1)[1] + "/envs"), registry_tags(prefix.split("/", 1)[1] + "/runs"))
    proc = run_cli(*argv(root), env={**env, "COMPOSER_REGISTRY_ATTEMPTS": "2"})
    assert proc.returncode == code, proc.stderr
    line = one_error_line(proc)
    for word in words:
        assert word in line, line
    assert ";" in line  # what is wrong; how to fix it
    after = (registry_tags(prefix.split("/", 1)[1] + "/envs"), registry_tags(prefix.split("/", 1)[1] + "/runs"))
    assert after == before  # nothing half-written


def test_catalogue_is_at_least_twenty_cases():
    assert len(CASES) >= 20


def test_wrong_platform(catalogue):
    """An image for another architecture is refused before anything runs or is recorded."""
    import requests

    prefix, env, _ = catalogue
    accept = {"Accept": "application/vnd.docker.distribution.manifest.v2+json"}
    manifest = requests.get(f"http://{REGISTRY}/v2/bases/python/manifests/3.11-bookworm", headers=accept).json()
    config = requests.get(f"http://{REGISTRY}/v2/bases/python/blobs/{manifest['config']['digest']}").json()
    config["architecture"] = "arm64"
    from composer.oci.client import Registry

    reg = Registry(REGISTRY)
    desc = reg.push_blob("bases/python", json.dumps(config).encode(), manifest["config"]["mediaType"])
    manifest["config"] = desc.to_dict()
    reg.put_manifest("bases/python", "arm64-claimed", json.dumps(manifest).encode(), manifest["mediaType"])

    proc = run_cli("record", "--run", "Arm/1", "--image", f"{REGISTRY}/bases/python:arm64-claimed", env=env)
    assert proc.returncode == 2
    assert "linux/arm64" in one_error_line(proc) and "linux/amd64" in one_error_line(proc)


def test_unauthorised_registry_and_credentials_from_docker_config(tmp_path):
    import bcrypt

    password = "pw-composer-test-91c2"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    reg = RegistryProcess(tmp_path / "reg", htpasswd=f"ci:{hashed}\n").start()
    try:
        env = {"COMPOSER_REGISTRY": f"{reg.addr}/ml", "DOCKER_CONFIG": str(tmp_path / "no-config")}
        proc = run_cli("ref", "anything", env=env)
        assert proc.returncode == 5
        assert "docker login" in one_error_line(proc)

        cfg = tmp_path / "docker"
        cfg.mkdir()
        auth = base64.b64encode(f"ci:{password}".encode()).decode()
        (cfg / "config.json").write_text(json.dumps({"auths": {reg.addr: {"auth": auth}}}))
        proc = run_cli("ref", "anything", env={**env, "DOCKER_CONFIG": str(cfg)})
        assert proc.returncode == 3, proc.stderr  # authenticated: the name simply does not exist
        assert password not in proc.stderr + proc.stdout and auth not in proc.stderr + proc.stdout
    finally:
        reg.stop()


def test_tls_is_verified_except_for_hosts_marked_insecure(tmp_path):
    host = socket.gethostname()
    try:
        if not socket.gethostbyname(host).startswith("127."):
            pytest.skip(f"{host} does not resolve to loopback here")
    except OSError:
        pytest.skip("no resolvable host name")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={host}",
                    "-addext", f"subjectAltName=DNS:{host}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    reg = RegistryProcess(tmp_path / "reg", tls=(cert, key)).start()
    try:
        addr = f"{host}:{reg.port}"
        env = {"COMPOSER_REGISTRY": f"{addr}/ml"}
        untrusted = run_cli("ref", "anything", env={**env, "COMPOSER_CA_BUNDLE": "none", "SSL_CERT_FILE": "",
                                                     "REQUESTS_CA_BUNDLE": ""})
        assert untrusted.returncode == 5
        assert "TLS verification failed" in one_error_line(untrusted)
        trusted = run_cli("ref", "anything", env={**env, "COMPOSER_CA_BUNDLE": str(cert)})
        assert trusted.returncode == 3, trusted.stderr  # TLS verified; the name just isn't there
        # Marking it insecure means plain HTTP, which a TLS-only registry refuses: never a silent downgrade.
        insecure = run_cli("ref", "anything", "--insecure-registry", addr, env=env)
        assert insecure.returncode == 5
    finally:
        reg.stop()
