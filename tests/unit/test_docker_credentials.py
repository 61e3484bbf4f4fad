"""Registry credentials come from the Docker config by Docker's own rules: DOCKER_CONFIG,
auths, and credential helpers (a real helper program on PATH, run as Docker would)."""

import base64
import json
import os

from composer.oci.transport import docker_credentials


def _config(tmp_path, monkeypatch, cfg: dict):
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))


def test_auths_entry(tmp_path, monkeypatch):
    auth = base64.b64encode(b"ci:pw").decode()
    _config(tmp_path, monkeypatch, {"auths": {"reg.example:5000": {"auth": auth}}})
    assert docker_credentials("reg.example:5000") == auth
    assert docker_credentials("other.example") is None


def _helper(tmp_path, monkeypatch, name: str, script: str) -> None:
    """Put a real docker-credential-NAME program first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / f"docker-credential-{name}"
    helper.write_text(script)
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_credential_helper_program(tmp_path, monkeypatch):
    _helper(tmp_path, monkeypatch, "composertest",
            '#!/bin/sh\nread host\necho "{\\"Username\\": \\"u-$host\\", \\"Secret\\": \\"s3cret\\"}"\n')
    _config(tmp_path, monkeypatch, {"credHelpers": {"reg.example": "composertest"}})
    assert base64.b64decode(docker_credentials("reg.example")).decode() == "u-reg.example:s3cret"


def test_creds_store_and_a_failing_helper(tmp_path, monkeypatch):
    _helper(tmp_path, monkeypatch, "broken", "#!/bin/sh\necho 'credentials not found' >&2\nexit 1\n")
    _config(tmp_path, monkeypatch, {"credsStore": "broken"})
    assert docker_credentials("reg.example") is None  # no credentials: the registry's 401 then says what to do
