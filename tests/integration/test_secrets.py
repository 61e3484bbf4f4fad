"""No secret in an image: a token planted in every input a user might put one in
appears nowhere in the composed image, its record, or composer's output."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile

import pytest

from tests.conftest import REGISTRY, run_cli

pytestmark = pytest.mark.integration

TOKEN = "SECRETTOKEN-composer-planted-7f3a9c"


def _image_bytes(ref: str) -> bytes:
    """Everything `docker save` has for the image: every layer's files, config, history, labels."""
    subprocess.run(["docker", "pull", "-q", ref], check=True, capture_output=True)
    saved = subprocess.run(["docker", "save", ref], check=True, capture_output=True).stdout
    chunks = [saved]
    with tarfile.open(fileobj=io.BytesIO(saved)) as outer:
        for member in outer.getmembers():
            if member.name.endswith("layer.tar"):
                data = outer.extractfile(member).read()
                with tarfile.open(fileobj=io.BytesIO(data)) as layer:
                    for f in layer.getmembers():
                        if f.isfile():
                            chunks.append(f.name.encode() + layer.extractfile(f).read())
    return b"\n".join(chunks)


@pytest.mark.parametrize("builder", ["docker", "daemonless"])
def test_planted_token_appears_nowhere(env, prefix, upstream_run, tmp_path, builder):
    # The CA bundle is a real one with the token in a comment (PEM readers skip text outside blocks).
    ca = tmp_path / "ca.pem"
    ca.write_text(open("/etc/ssl/certs/ca-certificates.crt").read() + f"\n# {TOKEN}\n")
    extras = tmp_path / "extras.txt"
    extras.write_text("six==1.16.0\n")
    env = {
        **env,
        "COMPOSER_INDEX_URL": f"https://tokenuser:{TOKEN}@pypi.org/simple",
        "COMPOSER_CA_BUNDLE": str(ca),
        "COMPOSER_PROGRESS": "plain",
        "COMPOSER_BUILDER": builder,
    }
    proc = run_cli("build", "--upstream-run", upstream_run, "--extra", str(extras), "--name", "secret-check", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["builder"] == builder
    assert TOKEN not in proc.stdout and TOKEN not in proc.stderr  # logs, with the full build output

    shown = run_cli("show", "secret-check", "--json", env=env)
    assert shown.returncode == 0 and TOKEN not in shown.stdout  # the digest manifest

    blob = _image_bytes(out["ref"])
    assert b"six.py" in blob  # the scan does see the new layer's files
    assert TOKEN.encode() not in blob
    inspect = subprocess.run(["docker", "image", "inspect", out["ref"]], capture_output=True, text=True, check=True).stdout
    history = subprocess.run(["docker", "history", "--no-trunc", out["ref"]], capture_output=True, text=True, check=True).stdout
    assert TOKEN not in inspect and TOKEN not in history
