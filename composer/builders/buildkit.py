"""BuildKit builders, each driven as a subprocess on the rendered Dockerfile: buildctl, docker
buildx, or a Docker CLI with built-in BuildKit (DOCKER_BUILDKIT=1, Docker < 23). `detect` picks
what the machine has, unless the user named one (--builder, COMPOSER_BUILDER, composer.toml).

Each builder's `build(job)` writes the job's context into a private temporary directory,
turns the job into a BuildRequest (`request_for`), runs the builder's `command(...)` and
returns the digest the push reported.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from composer.builders.base import Builder, BuildJob
from composer.errors import BuildError, EnvironmentProblem
from composer.model.refs import DIGEST_RE, ImageRef
from composer.settings import Settings


@dataclass
class BuildRequest:
    """One BuildKit build as its command line sees it."""

    context: Path  # holds the Dockerfile and everything it binds
    target: ImageRef  # registry/repository:tag to push to
    secrets: Dict[str, str] = field(default_factory=dict)  # secret id -> file path
    plain_http: bool = False  # the registry speaks HTTP (loopback or marked insecure)
    progress: str = "auto"  # auto | plain | quiet
    timeout: int = 3600  # seconds the build may take (settings.build_timeout)


def request_for(job: BuildJob, workdir: Path) -> BuildRequest:
    """The job's build: its context written to workdir/context by job.prepare_context (which
    may keep secret files in workdir, outside the context), pushed to job.target."""
    context = workdir / "context"
    context.mkdir()
    secrets = job.prepare_context(context)
    return BuildRequest(
        context=context, target=job.target, secrets=dict(secrets),
        plain_http=job.registry.base.startswith("http:"), progress=job.settings.progress,
        timeout=job.settings.build_timeout,
    )


class BuildKitBuilder(Builder):
    """What the three BuildKit builders share: build(job) = context, command, push."""

    def build(self, job: BuildJob) -> str:
        with tempfile.TemporaryDirectory(prefix="composer-build-") as tmp:
            req = request_for(job, Path(tmp))
            return self.build_request(req, Path(tmp, "metadata.json"))

    def build_request(self, req: BuildRequest, metadata: Path) -> str:
        """Build req.context, push to req.target, return the pushed manifest digest."""
        run_build(self.command(req, metadata), req)
        return _metadata_digest(metadata)

    def command(self, req: BuildRequest, metadata: Path) -> List[str]:
        raise NotImplementedError


def _secret_args(req: BuildRequest) -> List[str]:
    args = []
    for sid, path in sorted(req.secrets.items()):
        args += ["--secret", f"id={sid},src={path}"]
    return args


def _output_arg(req: BuildRequest) -> str:
    out = f"type=image,name={req.target},push=true"
    return out + (",registry.insecure=true" if req.plain_http else "")


def _tty(req: BuildRequest) -> bool:
    return req.progress == "auto" and sys.stderr.isatty()


def run_build(cmd: List[str], req: BuildRequest, env: Optional[dict] = None) -> None:
    """Run a BuildKit command; on failure print the failing step's log and raise BuildError.

    The builder runs in a process group of its own, and the timeout (or an interrupt) kills
    that whole group, so no part of the build keeps running once composer has answered."""
    tty = _tty(req)
    lines: List[str] = []
    proc = subprocess.Popen(cmd, env=env, stdout=None if tty else subprocess.PIPE,
                            stderr=None if tty else subprocess.STDOUT, text=True, errors="replace",
                            start_new_session=True)
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        kill_group(proc)

    watchdog = threading.Timer(req.timeout, kill)
    watchdog.daemon = True
    watchdog.start()
    try:
        if proc.stdout is not None:
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))
                if req.progress == "plain":
                    print(line, end="", file=sys.stderr)
        code = proc.wait()
    except BaseException:
        kill_group(proc)
        raise
    finally:
        watchdog.cancel()
    if timed_out.is_set():
        raise _timed_out(req)
    if code and tty:
        raise BuildError(f"the image build failed (exit {code}; its log is above)", "fix the failing step and rerun")
    if code:
        step, log = failing_step(lines)
        if req.progress != "plain":
            sys.stderr.write("\n".join(log[-60:]) + "\n")
        raise BuildError(f"the image build failed at {_short(step, 70)}: {_short(failure_reason(log), 200)}",
                         "fix the failing step (its log is above) and rerun")


def kill_group(proc: "subprocess.Popen[str]") -> None:
    """SIGKILL the builder's whole process group (the CLI and whatever it started), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _timed_out(req: BuildRequest) -> BuildError:
    return BuildError(f"the image build took over {req.timeout}s and was stopped",
                      "fix what makes it slow, or raise COMPOSER_BUILD_TIMEOUT")


_STEP = re.compile(r"^#(\d+) ")


def failing_step(lines: List[str]) -> Tuple[str, List[str]]:
    """From BuildKit plain progress output: the name and the log lines of the step that failed."""
    steps: "OrderedDict[str, List[str]]" = OrderedDict()
    for line in lines:
        m = _STEP.match(line)
        steps.setdefault(m.group(1) if m else "", []).append(line)
    failed = next((n for n, ls in steps.items() if n and any(re.match(r"^#\d+ ERROR\b", l) for l in ls)), None)
    if failed is None:
        return "an unknown step", lines[-60:]
    log = steps[failed]
    title = next((_strip_step(l) for l in log if re.match(r"^#\d+ \[", l)), f"step #{failed}")
    tail = [l for l in lines if not _STEP.match(l) and l.strip()]
    return title, log + tail[-10:]


def failure_reason(log: List[str]) -> str:
    """The step's last line of its own output (timestamped), else BuildKit's ERROR line."""
    output = [_strip_step(l) for l in log if re.match(r"^#\d+ \d+\.\d+ ", l)]
    if output:
        # From the last line that announces an error to the end: uv and pip put the cause below it.
        start = max((i for i, l in enumerate(output) if re.match(r"^(error|ERROR|\w*Error)\b", l)), default=len(output) - 1)
        return " ".join(output[start:])
    return next((_strip_step(l) for l in reversed(log) if l.strip()), "no output")


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _strip_step(line: str) -> str:
    return re.sub(r"^#\d+ (?:\d+\.\d+ )?", "", line).strip()


def _metadata_digest(metadata: Path) -> str:
    try:
        data = json.loads(metadata.read_text())
        digest = data.get("containerimage.digest", "") if isinstance(data, dict) else ""
    except (OSError, ValueError):
        digest = ""
    if not DIGEST_RE.match(digest):
        raise BuildError("the builder reported no image digest", "check the BuildKit version (metadata file support)")
    return digest


class BuildctlBuilder(BuildKitBuilder):
    name = "buildctl"

    def __init__(self, addr: Optional[str]):
        self.addr = addr

    def command(self, req: BuildRequest, metadata: Path) -> List[str]:
        cmd = ["buildctl"] + (["--addr", self.addr] if self.addr else [])
        return cmd + [
            "build", "--frontend", "dockerfile.v0",
            "--local", f"context={req.context}", "--local", f"dockerfile={req.context}",
            "--output", _output_arg(req), "--metadata-file", str(metadata),
            "--progress", "tty" if _tty(req) else "plain", "--opt", "force-network-mode=none",
        ] + _secret_args(req)


class BuildxBuilder(BuildKitBuilder):
    name = "buildx"

    def __init__(self, docker: str):
        self.docker = docker

    def command(self, req: BuildRequest, metadata: Path) -> List[str]:
        return [
            self.docker, "buildx", "build", "--output", _output_arg(req), "--metadata-file", str(metadata),
            "--progress", "auto" if _tty(req) else "plain", "--network", "none", "-f", str(req.context / "Dockerfile"),
        ] + _secret_args(req) + [str(req.context)]


class DockerBuilder(BuildKitBuilder):
    """A Docker CLI whose built-in BuildKit builds into the engine; the docker SDK pushes."""

    name = "docker"

    def __init__(self, docker: str):
        self.docker = docker

    def command(self, req: BuildRequest, metadata: Optional[Path] = None) -> List[str]:
        return [
            self.docker, "build", "--progress", "auto" if _tty(req) else "plain", "--network", "none",
            "-f", str(req.context / "Dockerfile"), "-t", str(req.target),
        ] + _secret_args(req) + [str(req.context)]

    def build_request(self, req: BuildRequest, metadata: Path) -> str:
        run_build(self.command(req), req, env={**os.environ, "DOCKER_BUILDKIT": "1"})
        return push_with_sdk(req.target)


def push_with_sdk(target: ImageRef) -> str:
    import docker
    import docker.errors

    try:
        client = docker.from_env()
        digest = ""
        for event in client.images.push(target.name, tag=target.tag, stream=True, decode=True):
            if event.get("error"):
                raise BuildError(f"pushing {target} failed: {event['error']}", "check the registry and its credentials")
            aux = event.get("aux") or {}
            digest = aux.get("Digest") or digest
    except docker.errors.DockerException as exc:
        raise BuildError(f"pushing {target} failed ({exc})", "check the Docker engine and the registry") from exc
    if not DIGEST_RE.match(digest):
        raise BuildError(f"pushing {target} reported no digest", "check the Docker engine")
    return digest


# -- detection -------------------------------------------------------------------
def _docker_clis() -> List[str]:
    found = []
    for path in (shutil.which("docker"), "/usr/bin/docker"):
        if path and os.access(path, os.X_OK) and os.path.realpath(path) not in map(os.path.realpath, found):
            found.append(path)
    return found


def _quiet(cmd: List[str], env: Optional[dict] = None) -> "subprocess.CompletedProcess[str]":
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(cmd, 127, "", str(exc))


def _has_buildx(docker: str) -> bool:
    return _quiet([docker, "buildx", "version"]).returncode == 0


def _has_builtin_buildkit(docker: str) -> bool:
    """Docker CLIs before 23.0 build with BuildKit when DOCKER_BUILDKIT=1; later ones need buildx."""
    proc = _quiet([docker, "version", "--format", "{{.Client.Version}}|{{.Server.Version}}"])
    client, _, server = proc.stdout.strip().partition("|")
    m = re.match(r"^(\d+)\.", client)
    return proc.returncode == 0 and bool(server) and bool(m) and int(m.group(1)) < 23


def _buildctl(settings: Settings) -> Optional[BuildKitBuilder]:
    if not shutil.which("buildctl"):
        return None
    addr = settings.buildkit_host or os.environ.get("BUILDKIT_HOST")
    if addr or os.path.exists("/run/buildkit/buildkitd.sock"):
        return BuildctlBuilder(addr)
    return None


def detect(settings: Settings) -> BuildKitBuilder:
    """The BuildKit builder settings.builder names; for 'auto' (and 'daemonless', which builder
    selection never sends here) the first one found: buildctl, buildx, then a Docker CLI."""
    want = "auto" if settings.builder == "daemonless" else settings.builder
    if want in ("auto", "buildctl"):
        b = _buildctl(settings)
        if b:
            return b
        if want == "buildctl":
            raise EnvironmentProblem("builder 'buildctl' was asked for but buildctl or its daemon is missing",
                                     "install BuildKit and set BUILDKIT_HOST, or use --builder auto")
    clis = _docker_clis()
    if want in ("auto", "buildx"):
        for cli in clis:
            if _has_buildx(cli):
                return BuildxBuilder(cli)
        if want == "buildx":
            raise EnvironmentProblem("builder 'buildx' was asked for but no docker CLI has the buildx plugin",
                                     "install docker-buildx, or use --builder auto")
    for cli in clis:
        if _has_builtin_buildkit(cli):
            return DockerBuilder(cli)
    raise EnvironmentProblem(
        "no BuildKit builder found (buildctl with a daemon, docker buildx, or a Docker CLI < 23 with an engine)",
        "start the infrastructure (make infra) or install BuildKit",
    )
