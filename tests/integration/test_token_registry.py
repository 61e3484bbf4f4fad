"""Composer against a registry that works like the hosted ones: Debian's distribution registry 2.8
in token mode, with a token service of the test's own (tests/integration/token_service.py) that
grants exactly the requested scopes per user and whose tokens expire after 3 seconds. Builds here
take longer than that, so every token composer holds expires while it works.

Checked for real: a daemonless compose (base layers mounted across repositories), the Docker
20.10 engine's BuildKit build and push with `docker login` credentials (an identity token),
cache hit, ref, pull, gc, a read-only user, and interoperability with Debian's skopeo."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import time
import uuid

import pytest

from tests.conftest import one_error_line, run_cli
from tests.integration.token_service import TokenRegistry, TokenService

pytestmark = pytest.mark.integration

TTL = 3.0
USERS = {"ci": "ci-secret", "reader": "reader-secret"}
GRANTS = {"ci": {"*": "pull,push,delete"}, "reader": {"*": "pull"}}


@pytest.fixture(scope="module")
def lab(infra, model_a, tmp_path_factory):
    """The token service and registry, and model-a copied into it (by skopeo, as user ci)."""
    if not shutil.which("skopeo"):
        pytest.fail("skopeo is missing; run `make infra` (scripts/infra.sh installs it)")
    work = tmp_path_factory.mktemp("token-registry")
    tokens = TokenService(work, USERS, GRANTS, ttl=TTL)
    registry = TokenRegistry(work, tokens)
    try:
        model = f"{registry.host}/models/model-a:attrs23"
        copy = subprocess.run(["skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
                               "--dest-creds", f"ci:{USERS['ci']}", f"docker://{model_a}", f"docker://{model}"],
                              capture_output=True, text=True, timeout=300)
        assert copy.returncode == 0, copy.stderr
        yield registry, tokens, model, work
    finally:
        registry.stop()
        tokens.stop()


def _login(tmp_path, registry, user: str) -> str:
    """A DOCKER_CONFIG directory holding user's basic credentials for the token registry."""
    d = tmp_path / f"docker-{user}"
    d.mkdir()
    auth = base64.b64encode(f"{user}:{USERS[user]}".encode()).decode()
    (d / "config.json").write_text(json.dumps({"auths": {registry.host: {"auth": auth}}}))
    return str(d)


def _cli(env, *args):
    proc = run_cli(*args, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout) if "--json" in args else proc.stdout


def test_daemonless_compose_cache_ref_pull_gc_and_skopeo_through_expiring_tokens(lab, tmp_path, extras):
    registry, tokens, model, _ = lab
    prefix = f"t{uuid.uuid4().hex[:10]}"
    env = {"COMPOSER_REGISTRY": f"{registry.host}/{prefix}", "DOCKER_CONFIG": _login(tmp_path, registry, "ci"),
           "COMPOSER_BUILDER": "daemonless", "COMPOSER_LEASE_RENEW": "0.5"}
    _cli(env, "record", "--run", "TrainFlow/1", "--image", model, "--json")

    # The build itself (the real daemonless builder) starts only after every token composer got
    # so far has expired, and takes longer than a token lives: the lease is renewed meanwhile.
    import composer
    import composer.builders
    from composer.settings import load_settings

    real_build_image = composer.builders.build_image

    def slow_build_image(job):
        time.sleep(2 * TTL)
        return real_build_image(job)

    mp = pytest.MonkeyPatch()
    for key, value in env.items():
        mp.setenv(key, value)
    mp.setattr(composer.builders, "build_image", slow_build_image)  # pipeline imports it when it builds
    first = len(tokens.log)
    try:
        settings = load_settings()
        started = time.monotonic()
        result = composer.build("TrainFlow/1", str(extras), "explainer", settings=settings)
        took = time.monotonic() - started
        # One process, one client: a lookup after its token expired still works (refreshed once).
        time.sleep(TTL + 0.5)
        assert composer.ref("explainer", settings=settings) == result.ref
    finally:
        mp.undo()
    out = {"ref": result.ref, "digest": result.digest, "record": result.record}
    assert result.cached is False and result.builder == "daemonless"
    issued = tokens.log[first:]
    assert all(e["status"] == 200 and e["user"] == "ci" for e in issued)
    # The base layers were mounted from models/model-a: one token for both repositories.
    mount = [e for e in issued if f"repository:{prefix}/envs:pull,push" in e["scopes"]
             and "repository:models/model-a:pull" in e["scopes"]]
    assert mount, [e["scopes"] for e in issued]
    assert {"type": "repository", "name": "models/model-a", "actions": ["pull"]} in mount[0]["granted"]
    # The build outlived its tokens: the push scope was granted again and again, and it published.
    push_scope = [e for e in issued if e["scopes"] == [f"repository:{prefix}/envs:pull,push"]]
    assert took > 2 * TTL and len(push_scope) >= 3, (took, len(push_scope))

    again = _cli(env, "build", "--upstream-run", "TrainFlow/1", "--extra", str(extras), "--name", "explainer", "--json")
    assert again["cached"] is True and again["digest"] == out["digest"]
    assert _cli(env, "ref", "explainer").strip() == out["ref"]
    pulled = _cli(env, "pull", "explainer", "--no-docker", "--json")
    assert pulled["digest"] == out["digest"]
    assert _cli(env, "gc", "--keep", "1", "--older-than", "0", "--dry-run", "--json")["deleted"] == []

    # A user who may only pull reads everything and is refused writes, in one line.
    reader = {**env, "DOCKER_CONFIG": _login(tmp_path, registry, "reader")}
    assert _cli(reader, "ref", "explainer").strip() == out["ref"]
    refused = run_cli("alias", "stable", "explainer", env=reader)
    assert refused.returncode == 5, refused.stderr
    assert "refused access to repository:" in one_error_line(refused)

    # An independent client reads what composer wrote, through the same token service.
    creds = ["--creds", f"reader:{USERS['reader']}", "--tls-verify=false"]
    image = f"docker://{registry.host}/{prefix}/envs@{out['digest']}"
    inspect = subprocess.run(["skopeo", "inspect", *creds, image], capture_output=True, text=True, timeout=120)
    assert inspect.returncode == 0, inspect.stderr
    assert json.loads(inspect.stdout)["Digest"] == out["digest"]
    for digest in (out["digest"], out["record"]):
        dest = tmp_path / f"oci-{digest[7:19]}"
        copy = subprocess.run(["skopeo", "copy", "--src-creds", f"reader:{USERS['reader']}", "--src-tls-verify=false",
                               f"docker://{registry.host}/{prefix}/envs@{digest}", f"dir:{dest}"],
                              capture_output=True, text=True, timeout=300)
        assert copy.returncode == 0, copy.stderr
        manifest = (dest / "manifest.json").read_bytes()
        assert "sha256:" + hashlib.sha256(manifest).hexdigest() == digest  # the same bytes
        for layer in json.loads(manifest)["layers"]:
            assert (dest / layer["digest"][7:]).is_file()


def test_docker_engine_build_and_push_with_docker_login(lab, tmp_path):
    """The BuildKit path through Debian's Docker 20.10: `docker login` stores what the token service
    hands out (an identity token), the engine pushes with it, and composer uses it too. The engine
    keeps each token at least 60 s whatever its expiry, so its tokens live 65 s here (see
    token_service.py); composer's, in the same test, still live 3 s."""
    registry, tokens, model, _ = lab
    docker_cli = "/usr/bin/docker" if shutil.which("/usr/bin/docker") else "docker"
    config = tmp_path / "docker-login"
    config.mkdir()
    login = subprocess.run([docker_cli, "--config", str(config), "login", registry.host, "-u", "ci", "--password-stdin"],
                           input=USERS["ci"], capture_output=True, text=True, timeout=60)
    assert login.returncode == 0, login.stderr
    saved = json.loads((config / "config.json").read_text())["auths"][registry.host]
    assert "identitytoken" in saved or "auth" in saved

    prefix = f"t{uuid.uuid4().hex[:10]}"
    extras = tmp_path / "extras.txt"
    extras.write_text("iniconfig==2.0.0\n")
    env = {"COMPOSER_REGISTRY": f"{registry.host}/{prefix}", "DOCKER_CONFIG": str(config), "COMPOSER_BUILDER": "docker"}
    _cli(env, "record", "--run", "TrainFlow/2", "--image", model, "--json")
    first = len(tokens.log)
    out = _cli(env, "build", "--upstream-run", "TrainFlow/2", "--extra", str(extras), "--name", "via-engine", "--json")
    assert out["builder"] == "docker" and out["cached"] is False
    assert _cli(env, "ref", "via-engine").strip() == out["ref"]
    issued = tokens.log[first:]
    assert all(e["status"] == 200 for e in issued)
    if "identitytoken" in saved:  # composer used the refresh-token grant, never a password it does not have
        assert any(e["how"] == "POST refresh_token" for e in issued)
