"""Untrusted upstreams (issue 11): an image's probe output, a run record in the registry and the
upstream's own interpreter are the upstream's word, never instructions to composer."""

from __future__ import annotations

import http.server
import json
import subprocess
import threading
import uuid

import pytest

from composer.model.records import RUN_RECORD_TYPE
from composer.model.refs import run_tag
from composer.oci import connect
from composer.oci.artifacts import push_artifact
from composer.settings import load_settings
from tests.conftest import BASE_REF, REGISTRY, one_error_line, registry_tags, run_cli

pytestmark = pytest.mark.integration

TOKEN = "SECRETTOKEN-untrusted-upstream-51c2"


def _image(tmp_path, name: str, dockerfile: str, files: dict) -> str:
    ctx = tmp_path / name
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(dockerfile.replace("BASE", BASE_REF))
    for fname, text in files.items():
        (ctx / fname).write_text(text)
    ref = f"{REGISTRY}/untrusted/{name}:{uuid.uuid4().hex[:8]}"
    subprocess.run(["docker", "build", "-q", "-t", ref, str(ctx)], check=True, capture_output=True)
    subprocess.run(["docker", "push", ref], check=True, capture_output=True)
    return ref


class Trap:
    """An HTTP server nobody configured: it counts every request that reaches it."""

    def __init__(self):
        hits = self.hits = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                hits.append(self.path)
                self.send_response(404)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def trap():
    t = Trap()
    yield t
    t.server.shutdown()


FAKE_PYTHON = "#!/bin/sh\ncat <<'JSON'\n" + json.dumps({
    "executable": "/usr/bin/python3\nFROM 127.0.0.1:5000/x\nRUN --mount=type=secret,id=index_url cat /run/secrets/index_url",
    "version": "3.11.2", "implementation": "cpython", "prefix": "/usr", "kind": "system",
    "site_packages": "/usr/lib/python3/dist-packages", "externally_managed": False, "machine": "x86_64",
    "libc": "glibc", "libc_version": "2.36",
    "distributions": [{"name": "numpy", "version": "1.26.4\n--extra-index-url TRAP"}], "conda": None,
}) + "\nJSON\n"


def test_crafted_probe_output_is_refused(env, prefix, tmp_path, trap):
    ref = _image(tmp_path, "fake-python", "FROM BASE\nCOPY python3 /usr/local/bin/python3\nRUN chmod +x /usr/local/bin/python3\n",
                 {"python3": FAKE_PYTHON.replace("TRAP", trap.url)})
    proc = run_cli("record", "--run", "Evil/1", "--image", ref, env=env)
    assert proc.returncode == 7, proc.stderr
    line = one_error_line(proc)
    assert "contains control characters" in line and "\n" not in line
    leaf = prefix.split("/", 1)[1]
    assert registry_tags(f"{leaf}/runs") == [] and registry_tags(f"{leaf}/envs") == []  # nothing pushed
    assert trap.hits == []


CRAFTED_METADATA = """Metadata-Version: 2.1
Name: evilpkg
Version: 1.0
 --extra-index-url TRAP
"""


def test_crafted_metadata_is_refused(env, prefix, tmp_path, trap):
    dist = "/usr/lib/python3/dist-packages/evilpkg-1.0.dist-info"
    ref = _image(tmp_path, "folded-metadata", f"FROM BASE\nRUN mkdir -p {dist}\nCOPY METADATA {dist}/METADATA\n",
                 {"METADATA": CRAFTED_METADATA.replace("TRAP", trap.url)})
    proc = run_cli("record", "--run", "Evil/2", "--image", ref, env=env)
    assert proc.returncode == 7, proc.stderr
    assert "distributions" in one_error_line(proc)
    assert registry_tags(f"{prefix.split('/', 1)[1]}/runs") == []
    assert trap.hits == []


def test_crafted_run_record_is_refused_before_uv_runs(env, prefix, upstream_run, tmp_path, trap):
    settings = load_settings({"registry": prefix}, env={})
    reg = connect(settings)
    runs = settings.repository("runs")
    from composer.store import load_run_record

    record, _ = load_run_record(reg, runs, upstream_run)
    doc = record.to_json()
    doc["run"] = "Evil/3"
    doc["distributions"] = [{"name": "attrs", "version": f"23.1.0\n--extra-index-url {trap.url}"}]
    push_artifact(reg, runs, doc, RUN_RECORD_TYPE, {}, tag=run_tag("Evil/3"))
    extras = tmp_path / "extras.txt"
    extras.write_text("iniconfig==2.0.0\n")
    before = registry_tags(f"{prefix.split('/', 1)[1]}/envs")
    proc = run_cli("build", "--upstream-run", "Evil/3", "--extra", str(extras), "--name", "evil", env=env)
    assert proc.returncode == 7, proc.stderr
    assert "control characters" in one_error_line(proc)
    assert registry_tags(f"{prefix.split('/', 1)[1]}/envs") == before  # nothing pushed
    assert trap.hits == []


# The upstream's interpreter runs in the build step (uv asks it where to install): a .pth file
# (upstream code, run at every interpreter start) looks for secrets and the network there.
SNOOP_PTH = (
    "import os, socket; exec(\"try:\\n s=socket.create_connection(('1.1.1.1',443),2); net='REACHED'\\n"
    "except Exception as e:\\n net='no network: '+type(e).__name__\\n"
    "secrets=sorted(os.listdir('/run/secrets')) if os.path.isdir('/run/secrets') else []\\n"
    "env=' '.join(k+'='+v for k,v in os.environ.items())\\n"
    "ca=open('/run/secrets/ca').read()[-200:] if os.path.exists('/run/secrets/ca') else ''\\n"
    "open('/opt/snoop.txt','a').write(repr((net,secrets,env,ca))+chr(10))\")\n"
)


def test_upstream_interpreter_finds_no_secret_and_no_network(env, prefix, tmp_path):
    ref = _image(tmp_path, "snooping-python", "FROM BASE\nCOPY snoop.pth /usr/lib/python3/dist-packages/zz-snoop.pth\n",
                 {"snoop.pth": SNOOP_PTH})
    assert run_cli("record", "--run", "Snoop/1", "--image", ref, env=env).returncode == 0
    ca = tmp_path / "ca.pem"
    ca.write_text(open("/etc/ssl/certs/ca-certificates.crt").read() + f"\n# {TOKEN}\n")
    extras = tmp_path / "extras.txt"
    extras.write_text("six==1.16.0\n")
    build_env = {**env, "COMPOSER_BUILDER": "docker", "COMPOSER_CA_BUNDLE": str(ca),
                 "COMPOSER_INDEX_URL": f"https://user:{TOKEN}@pypi.org/simple",
                 "COMPOSER_EXTRA_INDEX_URL": f"https://user:{TOKEN}x@pypi.org/simple"}
    proc = run_cli("build", "--upstream-run", "Snoop/1", "--extra", str(extras), "--name", "snooped", "--json", env=build_env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["builder"] == "docker"
    seen = subprocess.run(["docker", "run", "--rm", "--entrypoint", "cat", out["ref"], "/opt/snoop.txt"],
                          capture_output=True, text=True, check=True).stdout
    assert seen.strip(), "the upstream's interpreter ran in the build step"
    assert TOKEN not in seen and "REACHED" not in seen and "no network" in seen
    assert "[]" in seen  # no secret mounted
    assert TOKEN not in proc.stdout + proc.stderr
