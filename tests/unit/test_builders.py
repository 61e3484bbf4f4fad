"""composer/builders.py: finding the failing BuildKit step, and the builder command lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from composer.builders.buildkit import BuildctlBuilder, BuildRequest, BuildxBuilder, DockerBuilder, failing_step
from composer.model.refs import ImageRef

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


# -- command lines ------------------------------------------------------------------------------
SECRET_CONTENT = "-----BEGIN CERTIFICATE-----MIIsecretcontent"


@pytest.fixture
def request_(tmp_path) -> BuildRequest:
    ca = Path("/x/ca.pem")
    return BuildRequest(
        context=tmp_path / "context",
        target=ImageRef("127.0.0.1:5000", "ml/envs", "explainer-0123456789ab"),
        secrets={"ca": str(ca)},
        plain_http=True,
        progress="plain",
    )


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


def test_https_registry_is_not_marked_insecure(request_, tmp_path):
    request_.plain_http = False
    for builder in (BuildctlBuilder(None), BuildxBuilder("docker")):
        out = builder.command(request_, tmp_path / "m.json")
        assert "registry.insecure" not in " ".join(out)
        assert "push=true" in " ".join(out)


def test_secret_contents_never_reach_the_command_line(request_, tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text(SECRET_CONTENT)
    index = tmp_path / "index_url"
    index.write_text("https://user:s3cr3t@index.example.com/simple")
    request_.secrets = {"index_url": str(index), "ca": str(ca)}
    for cmd in (
        BuildctlBuilder(None).command(request_, tmp_path / "m.json"),
        BuildxBuilder("docker").command(request_, tmp_path / "m.json"),
        DockerBuilder("docker").command(request_),
    ):
        joined = " ".join(cmd)
        assert SECRET_CONTENT not in joined
        assert "s3cr3t" not in joined
        assert f"--secret id=ca,src={ca} --secret id=index_url,src={index}" in joined  # sorted by id
