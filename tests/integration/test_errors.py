"""Bad input and a failing registry: one line, a documented exit code, and no tag left behind."""

from __future__ import annotations

import http.server
import socketserver
import threading

import pytest
import requests

from tests.conftest import BASE_REF, REGISTRY, one_error_line, registry_tags, run_cli

pytestmark = pytest.mark.integration


def _envs_repo(prefix: str) -> str:
    return prefix.split("/", 1)[1] + "/envs"


def _assert_nothing_written(prefix: str) -> None:
    assert registry_tags(_envs_repo(prefix)) == []


def test_conflicting_extra_names_both_sides(env, prefix, upstream_run, tmp_path):
    extra = tmp_path / "extra.txt"
    extra.write_text("attrs==24.2.0\n")
    proc = run_cli("build", "--upstream-run", upstream_run, "--extra", str(extra), env=env)
    assert proc.returncode == 4
    line = one_error_line(proc)
    assert "attrs==24.2.0" in line and "attrs==23.1.0" in line
    _assert_nothing_written(prefix)


def test_unknown_run(env, prefix, extras):
    proc = run_cli("build", "--upstream-run", "NoSuchFlow/99", "--extra", str(extras), env=env)
    assert proc.returncode == 3
    line = one_error_line(proc)
    assert "NoSuchFlow/99" in line and "composer record" in line
    _assert_nothing_written(prefix)


@pytest.mark.parametrize("content", [b"\x00\x01binary\xff", b"pandas===\n", b"-r other.txt\n", b"# nothing\n", "caf\xe9".encode("latin-1")])
def test_malformed_requirements(env, prefix, upstream_run, tmp_path, content):
    extra = tmp_path / "extra.txt"
    extra.write_bytes(content)
    proc = run_cli("build", "--upstream-run", upstream_run, "--extra", str(extra), env=env)
    assert proc.returncode == 2, proc.stderr
    assert str(extra) in one_error_line(proc)
    _assert_nothing_written(prefix)


def test_unknown_package(env, prefix, upstream_run, tmp_path):
    extra = tmp_path / "extra.txt"
    extra.write_text("surely-no-such-package-composer-test-zz\n")
    proc = run_cli("build", "--upstream-run", upstream_run, "--extra", str(extra), env=env)
    assert proc.returncode == 2
    assert "surely-no-such-package-composer-test-zz" in one_error_line(proc)
    _assert_nothing_written(prefix)


def test_unreachable_registry(extras):
    proc = run_cli("build", "--upstream-run", "R", "--extra", str(extras), env={"COMPOSER_REGISTRY": "127.0.0.1:1/x"})
    assert proc.returncode == 5
    assert "127.0.0.1:1" in one_error_line(proc)


def test_invalid_name(env, prefix, upstream_run, extras):
    proc = run_cli("build", "--upstream-run", upstream_run, "--extra", str(extras), "--name", "../etc/passwd", env=env)
    assert proc.returncode == 2
    assert "not a valid OCI tag" in one_error_line(proc)
    _assert_nothing_written(prefix)


def test_record_unknown_image_and_image_without_python(env, prefix, infra, tmp_path):
    proc = run_cli("record", "--run", "R1", "--image", f"{REGISTRY}/bases/python:no-such-tag", env=env)
    assert proc.returncode == 3
    assert "no-such-tag" in one_error_line(proc)

    ref = f"{REGISTRY}/bases/nopython:1"
    (tmp_path / "Dockerfile").write_text(f"FROM {BASE_REF}\nRUN rm -f /usr/bin/python3*\n")
    import subprocess

    subprocess.run(["/usr/bin/docker", "build", "-q", "-t", ref, str(tmp_path)], check=True, capture_output=True,
                   env={"DOCKER_BUILDKIT": "1", "PATH": "/usr/bin:/bin"})
    subprocess.run(["docker", "push", ref], check=True, capture_output=True)
    subprocess.run(["docker", "rmi", ref], check=True, capture_output=True)  # record must pull it by digest
    proc = run_cli("record", "--run", "R2", "--image", ref, env=env)
    assert proc.returncode == 2
    assert "no python" in one_error_line(proc)
    assert registry_tags(prefix.split("/", 1)[1] + "/runs") == []


class _Failing500(http.server.BaseHTTPRequestHandler):
    """Forwards to the real registry, except that manifest reads of spec tags answer 500."""

    def _forward(self):
        if "/manifests/spec-" in self.path:
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        r = requests.request(self.command, f"http://{REGISTRY}{self.path}", headers=headers, data=body, allow_redirects=False)
        self.send_response(r.status_code)
        for k, v in r.headers.items():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(r.content)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(r.content)

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = _forward

    def log_message(self, *args):
        pass


def test_registry_answering_500_is_never_a_cache_hit(env, prefix, upstream_run, extras):
    # Build once for real, so the registry does hold a cached image for this spec.
    first = run_cli("build", "--upstream-run", upstream_run, "--extra", str(extras), "--name", "x", env=env)
    assert first.returncode == 0, first.stderr
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Failing500)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        via_proxy = {"COMPOSER_REGISTRY": f"127.0.0.1:{port}/{prefix.split('/', 1)[1]}", "COMPOSER_REGISTRY_ATTEMPTS": "2"}
        tags = registry_tags(_envs_repo(prefix))
        proc = run_cli("build", "--upstream-run", upstream_run, "--extra", str(extras), "--name", "y", env=via_proxy)
        assert proc.returncode == 5
        assert "500" in one_error_line(proc)
        assert registry_tags(_envs_repo(prefix)) == tags  # no build, no new name
    finally:
        server.shutdown()


def test_failing_build_step_shows_its_log_and_leaves_no_tag(env, prefix, infra, tmp_path, extras):
    # An upstream whose venv cannot take new packages: site-packages is a file, not a directory.
    ref = f"{REGISTRY}/models/broken-venv:1"
    (tmp_path / "Dockerfile").write_text(
        f"FROM {BASE_REF}\n"
        "RUN python3 -m venv --without-pip /opt/venv && rm -rf /opt/venv/lib/python3.11/site-packages"
        " && touch /opt/venv/lib/python3.11/site-packages\n"
        "ENV PATH=/opt/venv/bin:/usr/bin:/bin\n"
    )
    import subprocess

    subprocess.run(["/usr/bin/docker", "build", "-q", "-t", ref, str(tmp_path)], check=True, capture_output=True,
                   env={"DOCKER_BUILDKIT": "1", "PATH": "/usr/bin:/bin"})
    subprocess.run(["docker", "push", ref], check=True, capture_output=True)
    rec = run_cli("record", "--run", "Broken/1", "--image", ref, env=env)
    assert rec.returncode == 0, rec.stderr

    # BuildKit runs the install inside the image, where it fails (the daemonless builder never runs it).
    proc = run_cli("build", "--upstream-run", "Broken/1", "--extra", str(extras), env={**env, "COMPOSER_BUILDER": "docker"})
    assert proc.returncode == 6, proc.stderr
    line = one_error_line(proc)
    assert "build failed at" in line and "RUN" in line
    assert "uv pip install" in proc.stderr  # the failing step's own log is shown above the error
    _assert_nothing_written(prefix)
