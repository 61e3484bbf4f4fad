"""Registry credentials come from the Docker config by Docker's own rules (the docker SDK resolves
them): DOCKER_CONFIG, credHelpers for the host, then credsStore, then auths (keys compared as
host names), identity tokens, Docker Hub's https://index.docker.io/v1/ key; credential helpers
are real programs on PATH, run as Docker would."""

import base64
import json
import os

import pytest

from composer.errors import RegistryError
from composer.oci.transport import Credential, docker_credentials


def _config(tmp_path, monkeypatch, cfg: dict):
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_auths_entry(tmp_path, monkeypatch):
    _config(tmp_path, monkeypatch, {"auths": {"reg.example:5000": {"auth": _b64("ci:pw")}}})
    cred = docker_credentials("reg.example:5000")
    assert (cred.username, cred.password, cred.basic()) == ("ci", "pw", _b64("ci:pw"))
    assert docker_credentials("other.example") is None
    assert docker_credentials("reg.example:5001") is None  # another port is another registry
    assert "pw" not in repr(cred)


def test_url_keys_are_compared_as_host_names(tmp_path, monkeypatch):
    _config(tmp_path, monkeypatch, {"auths": {"https://reg.example/v1/": {"auth": _b64("u:p")}}})
    assert docker_credentials("reg.example").username == "u"


def test_docker_hub_credentials_live_under_the_index_url(tmp_path, monkeypatch):
    _config(tmp_path, monkeypatch, {"auths": {"https://index.docker.io/v1/": {"auth": _b64("hub:pw")}}})
    for name in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        assert docker_credentials(name).username == "hub"


def test_identity_token(tmp_path, monkeypatch):
    _config(tmp_path, monkeypatch, {"auths": {"reg.example": {"auth": _b64("u:"), "identitytoken": "refresh-me"}}})
    cred = docker_credentials("reg.example")
    assert cred == Credential(identity_token="refresh-me") and cred.basic() is None


def test_no_config_file_means_no_credentials_not_the_home_one(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "empty"))
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".docker").mkdir()
    (tmp_path / ".docker" / "config.json").write_text(json.dumps({"auths": {"reg.example": {"auth": _b64("u:p")}}}))
    assert docker_credentials("reg.example") is None


def _helper(tmp_path, monkeypatch, name: str, script: str) -> None:
    """Put a real docker-credential-NAME program first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    helper = bin_dir / f"docker-credential-{name}"
    helper.write_text(script)
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


_ECHO = '#!/bin/sh\nread host\necho "{\\"Username\\": \\"u-$host\\", \\"Secret\\": \\"s3cret\\"}"\n'


def test_credential_helper_program(tmp_path, monkeypatch):
    _helper(tmp_path, monkeypatch, "composertest", _ECHO)
    _config(tmp_path, monkeypatch, {"credHelpers": {"reg.example": "composertest"}})
    assert docker_credentials("reg.example").basic() == _b64("u-reg.example:s3cret")


def test_a_credential_helper_comes_before_auths_as_in_docker(tmp_path, monkeypatch):
    _helper(tmp_path, monkeypatch, "composertest", _ECHO)
    _config(tmp_path, monkeypatch, {"auths": {"reg.example": {"auth": _b64("stale:old")}},
                                    "credHelpers": {"reg.example": "composertest"}})
    assert docker_credentials("reg.example").username == "u-reg.example"


def test_a_helper_identity_token(tmp_path, monkeypatch):
    _helper(tmp_path, monkeypatch, "tok", '#!/bin/sh\nread host\necho "{\\"Username\\": \\"<token>\\", \\"Secret\\": \\"idt\\"}"\n')
    _config(tmp_path, monkeypatch, {"credsStore": "tok"})
    assert docker_credentials("reg.example") == Credential(identity_token="idt")


def test_creds_store_and_a_failing_helper(tmp_path, monkeypatch):
    _helper(tmp_path, monkeypatch, "broken", "#!/bin/sh\necho 'credentials not found in native keychain'\nexit 1\n")
    _config(tmp_path, monkeypatch, {"credsStore": "broken"})
    assert docker_credentials("reg.example") is None  # no credentials: the registry's 401 then says what to do


def test_a_missing_helper_program_is_one_registry_error(tmp_path, monkeypatch):
    _config(tmp_path, monkeypatch, {"credsStore": "nosuchhelper"})
    with pytest.raises(RegistryError) as err:
        docker_credentials("reg.example")
    assert "cannot read the credentials for reg.example" in err.value.one_line() and err.value.exit_code == 5
