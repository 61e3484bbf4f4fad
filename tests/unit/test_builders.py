"""composer/builders/: which builder build_image picks and why, the BuildKit builders' command
lines and build(job) (with stand-in commands, no BuildKit), and finding the failing step."""

from __future__ import annotations

import json
import os
import time
import sys
from pathlib import Path
from typing import Dict, Optional

import pytest

from composer.builders import build_image, buildkit, daemonless
from composer.builders.base import BuildJob, CannotBuild
from composer.builders.buildkit import BuildctlBuilder, BuildRequest, BuildxBuilder, DockerBuilder, failing_step, request_for
from composer.errors import BuildError
from composer.kinds.pip import Lock
from composer.model.records import RunRecord
from composer.model.refs import ImageRef
from composer.oci.client import Registry
from composer.settings import Settings

DIGEST = "sha256:" + "c" * 64
RUN_TITLE = (
    "[2/2] RUN --mount=type=bind,source=composer-extras.lock,target=/tmp/composer/extras.lock "
    "--mount=type=bind,source=uv,target=/tmp/composer/uv --mount=type=secret,id=ca "
    "--mount=type=secret,id=index_url set -e; /tmp/composer/uv pip install --python /usr/local/bin/python3 "
    "--no-deps --require-hashes -r /tmp/composer/extras.lock"
)

# BuildKit `--progress plain` output of a build whose install step failed.
PLAIN_LOG = f"""\
#0 building with "default" instance using docker driver

#1 [internal] load build definition from Dockerfile
#1 transferring dockerfile: 1.52kB done
#1 DONE 0.0s

#2 [internal] load metadata for 127.0.0.1:5000/models/model-a@{DIGEST}
#2 DONE 0.1s

#3 [internal] load .dockerignore
#3 transferring context: 2B done
#3 DONE 0.0s

#4 [internal] load build context
#4 transferring context: 41.35MB 0.3s done
#4 DONE 0.4s

#5 [1/2] FROM 127.0.0.1:5000/models/model-a@{DIGEST}
#5 resolve 127.0.0.1:5000/models/model-a@{DIGEST} done
#5 CACHED

#6 {RUN_TITLE}
#6 0.223 error: Failed to download `shap==0.45.0`
#6 0.223   Caused by: Request failed after 3 retries
#6 0.223   Caused by: error sending request for url (https://pypi.org/simple/shap/)
#6 ERROR: process "/bin/sh -c set -e; /tmp/composer/uv pip install" did not complete successfully: exit code: 1
------
 > [2/2] RUN --mount=type=bind,source=composer-extras.lock,target=/tmp/composer/extras.lock ...:
0.223 error: Failed to download `shap==0.45.0`
------
Dockerfile:10
--------------------
  10 | >>> RUN --mount=type=bind,source=composer-extras.lock,target=/tmp/composer/extras.lock \\
--------------------
ERROR: failed to solve: process "/bin/sh -c set -e; /tmp/composer/uv pip install" did not complete successfully: exit code: 1
""".splitlines()


def test_failing_step_finds_the_run_step():
    title, log = failing_step(PLAIN_LOG)
    assert title == RUN_TITLE
    assert "#6 0.223 error: Failed to download `shap==0.45.0`" in log
    assert any(line.startswith("#6 ERROR: process") for line in log)
    assert not any(line.startswith(("#1 ", "#5 ")) for line in log)  # only the failing step's own lines
    assert log[-1].startswith("ERROR: failed to solve:")  # plus the summary BuildKit prints at the end


def test_failing_step_with_lowercase_error_summary():
    lines = PLAIN_LOG[:-1] + ['error: failed to solve: process "/bin/sh -c ..." did not complete successfully: exit code: 1']
    title, log = failing_step(lines)
    assert title == RUN_TITLE
    assert log[-1].startswith("error: failed to solve:")


def test_failing_step_keeps_only_the_last_ten_summary_lines():
    tail = [f"extra line {i}" for i in range(30)]
    _, log = failing_step(PLAIN_LOG + tail)
    assert log[-10:] == tail[-10:]
    assert "extra line 19" not in log


def test_failing_step_without_title_uses_the_step_number():
    title, log = failing_step(["#7 0.1 boom", "#7 ERROR: exit code: 2"])
    assert title == "step #7"
    assert log == ["#7 0.1 boom", "#7 ERROR: exit code: 2"]


def test_failing_step_when_no_step_failed():
    lines = [f"line {i}" for i in range(100)]
    title, log = failing_step(lines)
    assert title == "an unknown step"
    assert log == lines[-60:]


# -- jobs ---------------------------------------------------------------------------------------
RUN_RECORD = {
    "schema": "composer.run-record/v1", "run": "TrainFlow/12",
    "image": {"repository": "127.0.0.1:5000/models/model-a", "digest": DIGEST, "tag": "v1"},
    "python": {"executable": "/opt/venv/bin/python3", "version": "3.11.2", "implementation": "cpython", "prefix": "/opt/venv",
               "kind": "venv", "site_packages": "/opt/venv/lib/python3.11/site-packages", "externally_managed": False},
    "platform": {"os": "linux", "architecture": "amd64", "variant": None, "libc": "glibc", "libc_version": "2.36",
                 "python_platform": "x86_64-manylinux_2_36"},
    "distributions": [{"name": "attrs", "version": "23.1.0"}],
    "distributions_source": "image", "created": "2026-01-01T00:00:00Z", "composer_version": "0.1.0",
}
SIX = {"name": "six", "version": "1.17.0", "hashes": ["sha256:" + "0" * 64]}
SECRET_CONTENT = "-----BEGIN CERTIFICATE-----MIIsecretcontent"


def make_job(settings: Optional[Settings] = None, *, kind: str = "pip", registry: str = "127.0.0.1:5000",
             secrets: Optional[Dict[str, str]] = None, calls: Optional[list] = None, **python) -> BuildJob:
    """A BuildJob as the pipeline makes one: prepare_context writes a Dockerfile into the
    context it is given and returns the secret files (kept out of the context)."""
    record = json.loads(json.dumps(RUN_RECORD))
    record["python"].update(python)

    def prepare_context(context: Path) -> Dict[str, str]:
        (context / "Dockerfile").write_text("FROM scratch\n")
        if calls is not None:
            calls.append(context)
        return dict(secrets if secrets is not None else {"ca": "/x/ca.pem"})

    return BuildJob(
        settings=settings or Settings(registry=f"{registry}/ml"), registry=Registry(registry),
        repository="ml/envs", tag="explainer-0123456789ab",
        base=ImageRef("127.0.0.1:5000", "models/model-a", "v1", DIGEST), upstream=RunRecord.from_json(record),
        kind=kind, lock=Lock(requirements=["six"], packages=[SIX], added=[SIX]), spec_hash="sha256:" + "5" * 64,
        dockerfile="FROM scratch\n", prepare_context=prepare_context,
    )


# -- choosing the builder -------------------------------------------------------------------------
class FakeBuildKit:
    name = "buildx"

    def __init__(self):
        self.jobs = []

    def build(self, job):
        self.jobs.append(job)
        return "sha256:" + "b" * 64


@pytest.fixture
def builders(monkeypatch):
    """Stand-ins for both builders: the daemonless builder answers what `daemonless` says
    (a digest, or a CannotBuild); BuildKit records its jobs."""
    state = {"daemonless": "sha256:" + "d" * 64, "daemonless_jobs": [], "detected": []}
    kit = FakeBuildKit()

    class FakeDaemonless:
        def build(self, job):
            state["daemonless_jobs"].append(job)
            if isinstance(state["daemonless"], Exception):
                raise state["daemonless"]
            return state["daemonless"]

    def detect(settings):
        state["detected"].append(settings.builder)
        return kit

    monkeypatch.setattr(daemonless, "DaemonlessBuilder", FakeDaemonless)
    monkeypatch.setattr(buildkit, "detect", detect)
    state["buildkit"] = kit
    return state


def test_auto_picks_daemonless_when_it_can(builders, monkeypatch, capsys):
    monkeypatch.setattr(daemonless, "unsupported_reason", lambda job: None)
    job = make_job(Settings(registry="127.0.0.1:5000/ml", builder="auto"))
    assert build_image(job) == ("sha256:" + "d" * 64, "daemonless")
    assert builders["daemonless_jobs"] == [job] and builders["detected"] == []
    assert capsys.readouterr().err == ""


def test_auto_falls_back_to_buildkit_saying_why(builders, monkeypatch, capsys):
    monkeypatch.setattr(daemonless, "unsupported_reason", lambda job: "the platform is windows, not linux")
    job = make_job(Settings(registry="127.0.0.1:5000/ml", builder="auto"))
    assert build_image(job) == ("sha256:" + "b" * 64, "buildx")
    assert builders["daemonless_jobs"] == [] and builders["buildkit"].jobs == [job]
    assert capsys.readouterr().err == ("composer: building with BuildKit: the daemonless builder cannot "
                                       "(the platform is windows, not linux)\n")


def test_auto_falls_back_quietly_under_progress_quiet(builders, monkeypatch, capsys):
    monkeypatch.setattr(daemonless, "unsupported_reason", lambda job: "no")
    assert build_image(make_job(Settings(registry="127.0.0.1:5000/ml", progress="quiet")))[1] == "buildx"
    assert capsys.readouterr().err == ""


def test_auto_falls_back_when_the_daemonless_build_cannot_midway(builders, monkeypatch, capsys):
    monkeypatch.setattr(daemonless, "unsupported_reason", lambda job: None)
    builders["daemonless"] = CannotBuild("daemonless", "docopt==0.6.2 has no wheel for x86_64-manylinux_2_36")
    assert build_image(make_job()) == ("sha256:" + "b" * 64, "buildx")
    assert len(builders["daemonless_jobs"]) == 1
    assert "(docopt==0.6.2 has no wheel for x86_64-manylinux_2_36)" in capsys.readouterr().err


def test_conda_job_under_auto_goes_to_buildkit(builders, capsys):
    job = make_job(kind="conda")  # the real unsupported_reason
    assert build_image(job) == ("sha256:" + "b" * 64, "buildx")
    assert builders["daemonless_jobs"] == []
    assert "conda" in capsys.readouterr().err


def test_forced_daemonless_fails_in_one_line_when_unsupported(builders, capsys):
    job = make_job(Settings(registry="127.0.0.1:5000/ml", builder="daemonless"), kind="conda")
    with pytest.raises(BuildError) as info:
        build_image(job)
    line = info.value.one_line()
    assert "\n" not in line and line.startswith("--builder daemonless cannot build this image: ") and "conda" in line
    assert info.value.exit_code == 6
    assert builders["daemonless_jobs"] == [] and builders["detected"] == [] and builders["buildkit"].jobs == []
    assert capsys.readouterr().err == ""  # no fallback message: it does not fall back


def test_forced_daemonless_fails_in_one_line_when_it_cannot_midway(builders, monkeypatch):
    monkeypatch.setattr(daemonless, "unsupported_reason", lambda job: None)
    cannot = CannotBuild("daemonless", "docopt==0.6.2 has no wheel for x86_64-manylinux_2_36")
    builders["daemonless"] = cannot
    with pytest.raises(BuildError) as info:
        build_image(make_job(Settings(registry="127.0.0.1:5000/ml", builder="daemonless")))
    assert "--builder daemonless cannot build this image: docopt==0.6.2 has no wheel" in info.value.one_line()
    assert info.value.__cause__ is cannot
    assert builders["detected"] == [] and builders["buildkit"].jobs == []


@pytest.mark.parametrize("name", ["buildctl", "buildx", "docker"])
def test_a_named_buildkit_builder_skips_daemonless(builders, monkeypatch, name):
    monkeypatch.setattr(daemonless, "unsupported_reason", lambda job: pytest.fail("not asked"))
    build_image(make_job(Settings(registry="127.0.0.1:5000/ml", builder=name)))
    assert builders["detected"] == [name] and builders["daemonless_jobs"] == []


# -- from job to command line ----------------------------------------------------------------------
@pytest.fixture
def request_(tmp_path) -> BuildRequest:
    job = make_job(Settings(registry="127.0.0.1:5000/ml", progress="plain", build_timeout=123))
    return request_for(job, tmp_path)


def test_request_for_a_job(tmp_path):
    calls = []
    job = make_job(Settings(registry="127.0.0.1:5000/ml", progress="plain", build_timeout=123), calls=calls)
    req = request_for(job, tmp_path)
    assert calls == [tmp_path / "context"] and req.context == tmp_path / "context"
    assert (req.context / "Dockerfile").read_text() == "FROM scratch\n"
    assert str(req.target) == "127.0.0.1:5000/ml/envs:explainer-0123456789ab"
    assert req.secrets == {"ca": "/x/ca.pem"}
    assert (req.plain_http, req.progress, req.timeout) == (True, "plain", 123)


def test_https_registry_is_not_marked_insecure(tmp_path):
    req = request_for(make_job(registry="registry.example.com"), tmp_path)
    assert req.plain_http is False
    for builder in (BuildctlBuilder(None), BuildxBuilder("docker")):
        out = builder.command(req, tmp_path / "m.json")
        assert "registry.insecure" not in " ".join(out)
        assert "push=true" in " ".join(out)


def _assert_secret_args(cmd):
    i = cmd.index("--secret")
    assert cmd[i + 1] == "id=ca,src=/x/ca.pem"
    assert "--secret id=ca,src=/x/ca.pem" in " ".join(cmd)


def test_buildctl_command(request_, tmp_path):
    cmd = BuildctlBuilder("tcp://127.0.0.1:1234").command(request_, tmp_path / "meta.json")
    assert cmd[:3] == ["buildctl", "--addr", "tcp://127.0.0.1:1234"]
    assert "build" in cmd and "dockerfile.v0" in cmd
    out = cmd[cmd.index("--output") + 1]
    assert out == "type=image,name=127.0.0.1:5000/ml/envs:explainer-0123456789ab,push=true,registry.insecure=true"
    assert cmd[cmd.index("--metadata-file") + 1] == str(tmp_path / "meta.json")
    assert cmd[cmd.index("--progress") + 1] == "plain"
    assert f"context={request_.context}" in cmd and f"dockerfile={request_.context}" in cmd
    _assert_secret_args(cmd)


def test_buildctl_without_addr(request_, tmp_path):
    assert BuildctlBuilder(None).command(request_, tmp_path / "m.json")[:2] == ["buildctl", "build"]


def test_buildx_command(request_, tmp_path):
    cmd = BuildxBuilder("/usr/bin/docker").command(request_, tmp_path / "meta.json")
    assert cmd[:3] == ["/usr/bin/docker", "buildx", "build"]
    out = cmd[cmd.index("--output") + 1]
    assert "push=true" in out and "registry.insecure=true" in out
    assert cmd[cmd.index("-f") + 1] == str(request_.context / "Dockerfile")
    assert cmd[-1] == str(request_.context)
    _assert_secret_args(cmd)


def test_docker_command(request_):
    cmd = DockerBuilder("/usr/bin/docker").command(request_)
    assert cmd[:2] == ["/usr/bin/docker", "build"]
    assert cmd[cmd.index("-t") + 1] == "127.0.0.1:5000/ml/envs:explainer-0123456789ab"
    assert "--output" not in cmd  # the docker SDK pushes afterwards
    assert cmd[-1] == str(request_.context)
    _assert_secret_args(cmd)


def test_secret_contents_never_reach_the_command_line(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text(SECRET_CONTENT)
    index = tmp_path / "index_url"
    index.write_text("https://user:s3cr3t@index.example.com/simple")
    work = tmp_path / "work"
    work.mkdir()
    req = request_for(make_job(secrets={"index_url": str(index), "ca": str(ca)}), work)
    for cmd in (
        BuildctlBuilder(None).command(req, tmp_path / "m.json"),
        BuildxBuilder("docker").command(req, tmp_path / "m.json"),
        DockerBuilder("docker").command(req),
    ):
        joined = " ".join(cmd)
        assert SECRET_CONTENT not in joined
        assert "s3cr3t" not in joined
        assert f"--secret id=ca,src={ca} --secret id=index_url,src={index}" in joined  # sorted by id


# -- build(job), with a stand-in for the BuildKit client ---------------------------------------------
class ScriptBuilder(BuildctlBuilder):
    """buildctl's build(job) with a python script in place of the buildctl command."""

    def __init__(self, script: str):
        super().__init__(None)
        self.script = script
        self.seen: list = []

    def command(self, req, metadata):
        self.seen.append((req, metadata))
        return [sys.executable, "-c", self.script, str(metadata)]


WRITE_METADATA = f"import json, sys; json.dump({{'containerimage.digest': '{DIGEST}'}}, open(sys.argv[1], 'w'))"


def test_build_runs_the_command_on_the_prepared_context_and_cleans_up():
    calls = []
    builder = ScriptBuilder(WRITE_METADATA)
    assert builder.build(make_job(Settings(registry="127.0.0.1:5000/ml", progress="quiet"), calls=calls)) == DIGEST
    (req, metadata), = builder.seen
    assert calls == [req.context] and metadata.parent == req.context.parent  # metadata outside the context
    assert not req.context.parent.exists()  # the temporary directory is gone


def test_build_without_a_digest_fails():
    with pytest.raises(BuildError, match="no image digest"):
        ScriptBuilder("pass").build(make_job(Settings(registry="127.0.0.1:5000/ml", progress="quiet")))


def test_build_failure_names_the_failing_step(capsys):
    script = f"import sys; sys.stdout.write({chr(10).join(PLAIN_LOG)!r}); sys.exit(1)"
    with pytest.raises(BuildError) as info:
        ScriptBuilder(script).build(make_job(Settings(registry="127.0.0.1:5000/ml", progress="quiet")))
    line = info.value.one_line()
    assert line.startswith("the image build failed at [2/2] RUN --mount=type=bind")
    assert "error: Failed to download `shap==0.45.0`" in line
    assert "#6 0.223 error: Failed to download" in capsys.readouterr().err  # the step's log


def test_build_timeout_from_settings():
    slow = "import time; time.sleep(60)"
    with pytest.raises(BuildError, match="took over 1s"):
        ScriptBuilder(slow).build(make_job(Settings(registry="127.0.0.1:5000/ml", progress="quiet", build_timeout=1)))


def test_build_timeout_kills_the_builders_whole_process_group(tmp_path):
    """The watchdog kills the CLI and what it started (BuildKit's session, a helper), not only
    the CLI: nothing keeps building after composer has answered."""
    pidfile = tmp_path / "grandchild.pid"
    script = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              f"open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    start = time.monotonic()
    with pytest.raises(BuildError, match="took over 1s"):
        ScriptBuilder(script).build(make_job(Settings(registry="127.0.0.1:5000/ml", progress="quiet", build_timeout=1)))
    assert time.monotonic() - start < 10
    pid = int(pidfile.read_text())
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{pid}/stat") as f:
            if f.read().split()[2] == "Z":
                break  # killed, waiting for its (gone) parent's reaper
        time.sleep(0.05)
    else:
        pytest.fail(f"the builder's child {pid} outlived the timeout")
