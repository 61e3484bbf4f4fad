"""Metaflow integration: upstream runs by pathspec, the run -> environment link, launch-time refs.

Three pieces, all importing `metaflow` only when they are used (it is the optional
extra `composer-envs[metaflow]`):

1. **The link is written by composer itself.** When `composer.pull(NAME)` (or
   `python -m composer pull NAME`) verifies, inside a Metaflow task, that the task runs
   in environment NAME, it registers task metadata through Metaflow's metadata provider
   (the same `register_metadata` call Metaflow's own decorators make in task_pre_step):
   field and type `composer-environment`, value a JSON object naming the environment
   (`name`, `ref`, `digest`, `record`, `run_record`, `spec_hash`, `registry`).

2. **Upstream runs by pathspec.** `--upstream-run TrainFlow/1234` (or `Flow/Run/step`,
   or `--upstream-step step`) is looked up as composer's own run record for that id
   first (`composer record --run ...`, or a build with `--run-id`), and otherwise
   through Metaflow's client, with whatever metadata provider it is configured for:
   the environments the run's tasks registered. Steps with no environment recorded
   are ignored; when steps used different ones, `--upstream-step` picks one.

3. **Refs resolved at launch.** `composer.ref("explainer-{model}-{run_id}")` (a name
   *template*: braces never occur in a name) returns a `LaunchRef`, a `str` that
   Metaflow carries in a decorator attribute (`@kubernetes(image=...)`) untouched until
   it formats the step's command line, which it does in the launching process right
   before it starts the step, after the earlier steps have finished. At that point
   `str()` resolves it: `{run_id}` is this run (`Flow/RunId`), and the environment is
   the one composed for this run (`composer.build(..., run_id=this_run())`), checked
   against the template. See README ("Metaflow") for the reasons and the limits.

4. **Refs resolved at execution time, in deployments.** When the flow file is imported by
   `argo-workflows create`, the same `composer.ref(template)` returns the image reference
   `REGISTRY/PREFIX/envs:NAME` with Argo Workflows variables where the run's values go
   (`{run_id}` -> `Flow-argo-{{workflow.name}}`, `{index}` -> `{{inputs.parameters.split-index}}`):
   Argo fills them when it creates the step's pod, and the name tag (moved only by composer)
   is checked at step start by `composer.pull`. A placeholder nobody knows at pod creation
   is refused at deploy time, and so are schedulers whose images are fixed at deploy time
   (`step-functions create`, `airflow create`).
"""

from __future__ import annotations

import json
import os
import re
import string
import sys
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Tuple

from composer.catalog import resolve
from composer.catalog.pull import AFTER_PULL
from composer.errors import ComposerError, EnvironmentProblem, NotFoundError, UsageError, VerificationError
from composer.model.records import RunRecord
from composer.model.refs import check_name, render_name, run_tag, slug
from composer.oci import connect
from composer.settings import Settings, load_settings
from composer.store import envs_repository, read_run_record, runs_repository
from composer.upstream.runs import register_source
from composer.version import __version__

FIELD = "composer-environment"
PLACEHOLDER_PREFIX = "composer.at-launch/"
# Set in a process started by a task (see task_environment) so `composer pull` knows its task.
TASK_ENV = "COMPOSER_METAFLOW_TASK"
ATTEMPT_ENV = "COMPOSER_METAFLOW_ATTEMPT"
METADATA_ENV = "COMPOSER_METAFLOW_METADATA"
LINK_SWITCH_ENV = "COMPOSER_METAFLOW_LINK"  # "0": pull registers nothing

_FLOW = r"[A-Za-z_][A-Za-z0-9_]*"
_PATHSPEC = re.compile(rf"^({_FLOW})/([A-Za-z0-9][A-Za-z0-9_.:-]*)(?:/({_FLOW}))?\Z")
_STEP = re.compile(rf"^{_FLOW}\Z")


# --------------------------------------------------------------------------- pathspecs

def parse_pathspec(text: str) -> Optional[Tuple[str, str, Optional[str]]]:
    """(flow, run, step or None) for a Metaflow run pathspec `Flow/Run[/step]`, else None."""
    m = _PATHSPEC.match(text or "")
    return (m.group(1), m.group(2), m.group(3)) if m else None


def with_step(run: str, step: str) -> Optional[str]:
    """The upstream id for --upstream-step: `Flow/Run` + step -> `Flow/Run/step`; None when run is
    not a Metaflow pathspec (another source may know it)."""
    parsed = parse_pathspec(run)
    if parsed is None:
        return None
    if not _STEP.match(step):
        raise UsageError(f"--upstream-step {step!r} is not a Metaflow step name", "pass the step's name, e.g. train")
    flow, run_id, has = parsed
    if has and has != step:
        raise UsageError(f"the upstream {run!r} already names step {has!r} but --upstream-step says {step!r}",
                         "give the step once")
    return f"{flow}/{run_id}/{step}"


def _have_metaflow() -> bool:
    try:
        import metaflow  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def _all_namespaces() -> Iterator[None]:
    """A pathspec names one run whoever started it: look in the global namespace, then restore."""
    from metaflow import namespace
    from metaflow.client import core

    # The module's own state, not get_namespace(): that would resolve the default namespace,
    # which needs a user name (USERNAME) that a CI job may not have.
    before = getattr(core, "current_namespace", False)
    namespace(None)
    try:
        yield
    finally:
        core.current_namespace = before


def _metadata_str() -> str:
    from metaflow import get_metadata

    try:
        return get_metadata()
    except Exception:  # pragma: no cover - a misconfigured provider; only used in messages
        return "the configured metadata provider"


# --------------------------------------------------------------------------- lookups

def load_metaflow_run(settings: Settings, run_text: str) -> Optional[Tuple[RunRecord, str]]:
    """The run record of the environment Metaflow run `Flow/Run[/step]` ran in, and its digest.

    None when run_text is not a pathspec (the caller reports an unknown run). Raises
    NotFoundError when Metaflow does not know the run or it has no environment
    recorded, UsageError when its steps used different environments and no step was
    chosen. Only called after composer's own run record for run_text was not found.
    """
    parsed = parse_pathspec(run_text)
    if parsed is None:
        return None
    flow, run_id, step = parsed
    run_path = f"{flow}/{run_id}"
    how = (f"record one with: python -m composer record --run {run_text} --image REGISTRY/REPO:TAG, "
           f"or call composer.pull(NAME) at the start of the run's steps")
    if not _have_metaflow():
        raise NotFoundError(
            f"no environment is recorded for run {run_text!r} in {settings.registry} "
            f"(and metaflow is not installed to look it up as a Metaflow run)",
            f"{how}; or pip install 'composer-envs[metaflow]'",
        )
    from metaflow import Run
    from metaflow.exception import MetaflowException, MetaflowNotFound

    try:
        with _all_namespaces():
            run = Run(run_path)
            steps = {s.id: s for s in run}
            if step is not None and step not in steps:
                raise NotFoundError(f"Metaflow run {run_path} has no step {step!r} (its steps: {', '.join(sorted(steps))})",
                                    "pick one of its steps with --upstream-step")
            found = {name: _step_environments(s) for name, s in steps.items() if step is None or name == step}
    except MetaflowNotFound as exc:
        raise NotFoundError(
            f"no environment is recorded for run {run_text!r}: composer has no record of it and "
            f"Metaflow ({_metadata_str()}) does not know it",
            f"check the pathspec and METAFLOW_DEFAULT_METADATA / your Metaflow profile, or {how}",
        ) from exc
    except MetaflowException as exc:
        raise EnvironmentProblem(f"could not read Metaflow run {run_path} ({_metadata_str()}): {exc}",
                                 "check the Metaflow metadata provider (METAFLOW_DEFAULT_METADATA, profile)") from exc
    found = {name: envs for name, envs in found.items() if envs}
    if not found:
        where = f"step {step!r} of Metaflow run {run_path}" if step else f"Metaflow run {run_path}"
        raise NotFoundError(f"no environment is recorded for {where}: none of its tasks ran composer pull", how)
    distinct = {key for envs in found.values() for key in envs}
    if len(distinct) > 1:
        listing = "; ".join(f"{name}: {', '.join(_label(v) for v in envs.values())}" for name, envs in sorted(found.items()))
        if step is not None:
            raise UsageError(f"step {step!r} of Metaflow run {run_path} ran in several environments ({listing})",
                             "compose on one of them by name: --upstream-run NAME")
        raise UsageError(f"the steps of Metaflow run {run_path} used different environments ({listing})",
                         f"pick one with --upstream-step STEP (or --upstream-run {run_path}/STEP)")
    value = next(iter(next(iter(found.values())).values()))
    return _run_record_for(settings, value, run_text)


def _step_environments(step) -> Dict[Tuple[str, str], dict]:
    """{(name, digest): value} registered by the step's tasks (latest attempt of each)."""
    out: Dict[Tuple[str, str], dict] = {}
    for task in step:
        for datum in task.metadata:
            if datum.type != FIELD and datum.name != FIELD:
                continue
            try:
                value = json.loads(datum.value)
                key = (value["name"], value["digest"])
            except (ValueError, TypeError, KeyError):
                continue  # not written by composer: ignore rather than guess
            out[key] = value
    return out


def _label(value: dict) -> str:
    return f"{value['name']} ({value['digest'][:19]})"


def _run_record_for(settings: Settings, value: dict, run_text: str) -> Tuple[RunRecord, str]:
    """The composed environment's run record, as composer stored it when the task pulled it."""
    reg = connect(settings)
    repo = runs_repository(settings)
    got = None
    if value.get("run_record"):
        got = read_run_record(reg, repo, value["run_record"])
    if got is None:  # older link or record deleted: the record under the name, if it still matches
        got = read_run_record(reg, repo, run_tag(value["name"]))
    if got is None:
        elsewhere = value.get("registry") and value["registry"] != settings.registry
        raise NotFoundError(
            f"run {run_text!r} ran in environment {value['name']!r}, which is not recorded in {settings.registry}"
            + (f" (it was pulled from {value['registry']})" if elsewhere else ""),
            f"use --registry {value['registry']}" if elsewhere else "rebuild it, or record the run with composer record",
        )
    record, digest = got
    if record.image.digest != value["digest"]:
        raise VerificationError(
            f"run {run_text!r} ran in {value['name']!r} = {value['digest'][:19]} but its record now says "
            f"{record.image.digest[:19]} (the name moved)",
            f"record the run's image explicitly: python -m composer record --run {run_text} --image {value.get('ref', 'REPO@DIGEST')}",
        )
    return record, digest


# --------------------------------------------------------------------------- the link (pull)

def record_task_environment(settings: Settings, pulled: dict) -> Optional[str]:
    """Inside a Metaflow task: register that this task runs in the environment just verified.

    `pulled` is what pull() returns. Only an environment this process was verified to run
    in is registered (a pull outside the image says nothing about the task's own
    environment). Returns the task's pathspec, or None when not in a task.
    """
    if os.environ.get(LINK_SWITCH_ENV, "1") == "0" or not pulled.get("verified_running"):
        return None
    task = _running_task()
    if task is None:
        return None
    flow, run_id, step, task_id, attempt, metadata_str = task
    value = {
        "name": pulled["name"], "ref": pulled["ref"], "digest": pulled["digest"], "record": pulled["record"],
        "spec_hash": pulled["spec_hash"], "registry": settings.registry, "run_record": _env_run_record(settings, pulled),
        "composer_version": __version__,
    }
    try:
        from metaflow.metadata_provider import MetaDatum

        provider = _task_provider(flow, metadata_str)
        provider.register_metadata(run_id, step, task_id, [MetaDatum(
            field=FIELD, value=json.dumps(value, sort_keys=True), type=FIELD, tags=[f"attempt_id:{attempt}"],
        )])
    except ComposerError:
        raise
    except Exception as exc:
        raise EnvironmentProblem(
            f"could not register the environment of task {flow}/{run_id}/{step}/{task_id} with Metaflow "
            f"({metadata_str}): {type(exc).__name__}: {exc}",
            f"check the Metaflow metadata provider, or set {LINK_SWITCH_ENV}=0 to skip the link",
        ) from exc
    return f"{flow}/{run_id}/{step}/{task_id}"


def _env_run_record(settings: Settings, pulled: dict) -> Optional[str]:
    """Digest of the run record composer keeps under the environment's name, if it describes this image."""
    got = read_run_record(connect(settings), runs_repository(settings), run_tag(pulled["name"]))
    if got is None or got[0].image.digest != pulled["digest"]:
        return None
    return got[1]


def _running_task() -> Optional[Tuple[str, str, str, str, int, str]]:
    """(flow, run, step, task, attempt, metadata_str) of the Metaflow task this process belongs to."""
    explicit = os.environ.get(TASK_ENV)
    if explicit:
        parts = explicit.split("/")
        if len(parts) != 4 or not all(parts):
            raise UsageError(f"{TASK_ENV}={explicit!r} is not a task pathspec", "set it to Flow/Run/step/task")
        if not _have_metaflow():
            raise EnvironmentProblem(f"{TASK_ENV} is set but metaflow is not installed", "pip install 'composer-envs[metaflow]'")
        metadata_str = os.environ.get(METADATA_ENV) or _metadata_str()
        try:
            attempt = int(os.environ.get(ATTEMPT_ENV, "0"))
        except ValueError as exc:
            raise UsageError(f"{ATTEMPT_ENV} must be an integer", "set it to the task's retry count") from exc
        return (*parts, attempt, metadata_str)  # type: ignore[return-value]
    if "metaflow" not in sys.modules:  # not in a task: nothing imported Metaflow
        return None
    from metaflow import current

    if not current.is_running_flow or not current.task_id:
        return None
    return (current.flow_name, str(current.run_id), current.step_name, str(current.task_id),
            int(current.retry_count or 0), _task_metadata_str())


def _task_metadata_str() -> str:
    """TYPE@INFO of the running task's metadata provider (what the client also defaults to in a task)."""
    from metaflow import current

    return getattr(current, "_metadata_str", None) or _metadata_str()


def _task_provider(flow_name: str, metadata_str: str):
    """The task's metadata provider: the live one (Metaflow >= 2.19's system context) when this is
    the task process, else one made the way Metaflow's CLI makes it, from TYPE@INFO."""
    try:
        from metaflow.system_context import system_context

        live = system_context.metadata
        if live is not None and system_context.flow is not None and system_context.flow.name == flow_name \
                and live.metadata_str() == metadata_str:
            return live
    except ImportError:  # older Metaflow
        pass
    from types import SimpleNamespace

    from metaflow.metaflow_environment import MetaflowEnvironment
    from metaflow.plugins import METADATA_PROVIDERS

    kind, _, info = metadata_str.partition("@")
    matches = [p for p in METADATA_PROVIDERS if p.TYPE == kind]
    if not matches:
        raise EnvironmentProblem(f"Metaflow has no metadata provider {kind!r}", f"check {METADATA_ENV} / the task's metadata")
    cls = matches[0]
    if info:
        cls.INFO = info
    flow = SimpleNamespace(name=flow_name)
    return cls(MetaflowEnvironment(flow), flow, None, None)


def task_environment() -> Dict[str, str]:
    """Environment variables that let `python -m composer pull NAME`, started from this task's
    code (subprocess, container entrypoint), register the link for this task."""
    from metaflow import current

    if not current.is_running_flow or not current.task_id:
        raise UsageError("task_environment() is only meaningful inside a running Metaflow step", "call it from a step")
    return {TASK_ENV: current.pathspec, ATTEMPT_ENV: str(current.retry_count or 0), METADATA_ENV: _task_metadata_str()}


def this_run() -> str:
    """`Flow/RunId` of the run this process is part of: a task, or the process launching the run."""
    if not _have_metaflow():
        raise UsageError("this_run() needs metaflow", "pip install 'composer-envs[metaflow]'")
    run = _current_run()
    if not run:
        raise UsageError("not inside a Metaflow run (no flow name or run id yet)",
                         "call it from a step, or from a decorator attribute resolved when a step is launched")
    if os.environ.get("ARGO_WORKFLOW_NAME") and slug(run) != slug(run, len(run) + 1):
        # A name keeps 60 characters of a value; Argo cannot shorten {{workflow.name}} the same way.
        raise UsageError(f"run id {run!r} is longer than the {len(slug(run))} characters an environment name keeps "
                         f"of it, so the image Argo Workflows resolves for this run would not be found",
                         "give the workflow a shorter name (a shorter flow or @project name)")
    return run


# --------------------------------------------------------------------------- launch-time refs

def template_fields(template: str) -> List[str]:
    try:
        return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise UsageError(f"name template {template!r} is malformed ({exc})", "use {key} placeholders") from exc


class LaunchRef(str):
    """An image reference for a step decorator, resolved when Metaflow launches the step.

    The string value is a placeholder (`composer.at-launch/TEMPLATE`) that is not a valid
    image reference, so a scheduler that never asks for the value fails closed instead of
    running the wrong image. `str(ref)` (what Metaflow does when it writes the step's
    command line) resolves it to `REPO@sha256:...` inside a run, and returns the
    placeholder outside one.
    """

    template: str
    values: Dict[str, str]

    def __new__(cls, template: str, values: Optional[Dict[str, str]] = None, *,
                registry: Optional[str] = None, settings: Optional[Settings] = None):
        fields = template_fields(template)
        values = {k: str(v) for k, v in (values or {}).items()}
        if not fields:
            raise UsageError(f"{template!r} has no placeholder to fill at launch", "use composer.ref(NAME) for a fixed name")
        render_name(template, {f: "x" for f in fields})  # the grammar of the result, checked now
        obj = super().__new__(cls, PLACEHOLDER_PREFIX + template)
        obj.template, obj.values = template, values
        obj._registry, obj._settings = registry, settings
        obj._resolved: Dict[Tuple[str, Optional[str]], str] = {}
        return obj

    def __reduce__(self):  # copies and pickles keep the template, not the placeholder text
        return (_rebuild, (self.template, self.values, self._registry))

    def __repr__(self) -> str:
        return f"LaunchRef({self.template!r})"

    def __str__(self) -> str:
        run = _current_run()
        if not run:
            return str.__str__(self)
        try:
            return self.resolve(run)
        except ComposerError as exc:  # raised inside Metaflow's launcher: let it report a clean line
            from metaflow.exception import MetaflowException

            class ComposerLaunchError(MetaflowException):
                headline = "composer could not resolve the step's image"

            raise ComposerLaunchError(f"composer: error: {exc.one_line()}") from None

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def resolve(self, run: Optional[str] = None, index: Optional[int] = None) -> str:
        """REPO@sha256:... of the environment this template names for run (default: this run) and,
        for a template with {index}, foreach branch index (default: the step being launched)."""
        run = run or this_run()
        values = {"run_id": run, **self.values}
        if INDEX in template_fields(self.template) and INDEX not in values:
            index = _launch_index() if index is None else index
            if index is None:
                raise UsageError(f"{{{INDEX}}} in {self.template!r} is the foreach branch of the step being launched, "
                                 "and no step inside a foreach is being launched here",
                                 "use it in the decorator of a step inside a foreach, or pass index=")
            values[INDEX] = str(index)
        key = (run, values.get(INDEX))
        if key not in self._resolved:
            self._resolved[key] = self._resolve(run, values)
        return self._resolved[key]

    def _resolve(self, run: str, values: Dict[str, str]) -> str:
        settings = self._settings.for_one_call() if self._settings else load_settings({"registry": self._registry})
        fields = template_fields(self.template)
        if all(f in values for f in fields):
            return resolve(settings, render_name(self.template, values))[0]
        name, digest = _composed_for_run(settings, run, self.template)
        pattern = "".join(
            re.escape(literal) + ("" if field is None else
                                  re.escape(slug(values[field])) if field in values else r"[A-Za-z0-9_.-]+")
            for literal, field, _, _ in string.Formatter().parse(self.template)
        )
        if not re.fullmatch(pattern, name):
            raise UsageError(f"run {run} composed {name!r}, which does not fit {self.template!r}",
                             "use the same name template in composer.build(name=...) and composer.ref(...)")
        ref = resolve(settings, name)[0]
        if not ref.endswith("@" + digest):
            raise VerificationError(f"{name!r} moved since run {run} composed it ({digest[:19]})",
                                    "do not --update a name a running flow composed")
        return ref


def _rebuild(template: str, values: Dict[str, str], registry: Optional[str]) -> LaunchRef:
    return LaunchRef(template, values, registry=registry)


def ref_at_launch(template: str, *, registry: Optional[str] = None, settings: Optional[Settings] = None,
                  flow: Optional[str] = None, **values: str) -> str:
    """Like composer.ref(template), with constants for some placeholders: ref_at_launch("x-{model}-{run_id}", model="a").

    Under Metaflow's runtime: a LaunchRef. In a process deploying the flow with `argo-workflows create`:
    the execution-time reference (argo_image). Under `step-functions create` / `airflow create`, or for a
    placeholder Argo cannot fill: the deployment stops here with one error line (exit 2).
    flow: the flow's class name, when this is not called in the flow class's body."""
    command = deploy_command()
    if command is None:
        return LaunchRef(template, values, registry=registry, settings=settings)
    try:
        if command != "argo-workflows":
            refuse_deployment(command, template)
        return argo_image(settings or load_settings({"registry": registry}), template, values,
                          flow or _flow_being_defined())
    except ComposerError as exc:  # at import time of the flow file: no Metaflow CLI to report it yet
        print(f"composer: error: {exc.one_line()}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None


# --------------------------------------------------------------------------- execution-time refs (deployments)

# Argo Workflows variables (https://argo-workflows.readthedocs.io/en/latest/variables/) that the
# workflow controller substitutes in a container's `image` when it creates the pod:
ARGO_WORKFLOW_NAME = "{{workflow.name}}"  # Metaflow's run id on Argo is argo-{{workflow.name}}
ARGO_SPLIT_INDEX = "{{inputs.parameters.split-index}}"  # Metaflow's input to a foreach branch's steps
ARGO_RUN_PREFIX = "argo-"
INDEX = "index"  # the placeholder for the foreach branch: Metaflow's self.index
_DEPLOYERS = ("argo-workflows", "step-functions", "airflow")


class ExecutionRef(str):
    """The image reference written into a compiled Argo Workflows template: REGISTRY/PREFIX/envs:NAME
    with Argo variables where the run's values go. Its text is what Metaflow serialises."""

    template: str

    def __new__(cls, text: str, template: str):
        obj = super().__new__(cls, text)
        obj.template = template
        return obj

    def __reduce__(self):
        return (ExecutionRef, (str.__str__(self), self.template))

    def __repr__(self) -> str:
        return f"ExecutionRef({self.template!r}: {str.__str__(self)!r})"


def deploy_command(argv: Optional[List[str]] = None) -> Optional[str]:
    """The Metaflow scheduler this process compiles the flow for (`python flow.py ... argo-workflows
    create ...`; the Deployer API runs the same command line), or None."""
    args = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(args[:-1]):
        if arg in _DEPLOYERS and args[i + 1] == "create":
            return arg
    return None


def refuse_deployment(command: str, template: str) -> None:
    raise UsageError(
        f"`{command} create` fixes each step's image when the flow is deployed, so {template!r} (an environment "
        f"composed while the run runs) cannot be named there",
        "deploy with argo-workflows create (Argo resolves the image when it creates the pod), or name an "
        "environment that exists before deployment: composer.ref(NAME)",
    )


def argo_image(settings: Settings, template: str, values: Dict[str, str], flow: str) -> ExecutionRef:
    """REGISTRY/PREFIX/envs:NAME for a compiled Argo Workflows template, where NAME is the template
    filled as the build step fills it (render_name) except that the run's values are Argo variables:

        {run_id}  ->  FLOW-argo-{{workflow.name}}       (slug of FLOW/argo-{{workflow.name}}, Metaflow's run id)
        {index}   ->  {{inputs.parameters.split-index}}  (the foreach branch, self.index in the step)
        {key}     ->  slug(value) for constants given to ref_at_launch

    Anything else is only known inside a step, after the pod exists: refused, with what to use instead.
    The tag is the environment's name tag, which only composer moves; composer.pull at step start
    checks that the pod runs the environment the name's record describes."""
    values = {k: str(v) for k, v in values.items()}
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*\Z", flow or ""):
        raise UsageError(f"{flow!r} is not a Metaflow flow name", "pass flow='FlowClassName' to ref_at_launch")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise UsageError(f"name template {template!r} is malformed ({exc})", "use {key} placeholders") from exc
    # A workflow Metaflow starts is named after its template (the flow name, lower-cased) plus 6 characters.
    sample_workflow = f"{flow.lower()}-x0x0x"
    tag, sample = [], []
    for literal, field, spec, conversion in parsed:
        tag.append(literal)
        sample.append(literal)
        if field is None:
            continue
        if spec or conversion:
            raise UsageError(f"{{{field}}} in {template!r} has a format spec or conversion", "use plain {key} placeholders")
        if field in values:
            tag.append(slug(values[field]))
            sample.append(slug(values[field]))
        elif field == "run_id":
            run = f"{flow}/{ARGO_RUN_PREFIX}{sample_workflow}"
            if slug(run) != slug(run, len(run) + 1):
                raise UsageError(f"run ids of flow {flow} on Argo Workflows ({run!r}) are longer than the "
                                 f"{len(slug(run))} characters a name keeps of {{run_id}}",
                                 "use a shorter flow name")
            tag.append(f"{flow}-{ARGO_RUN_PREFIX}{ARGO_WORKFLOW_NAME}")
            sample.append(slug(run))
        elif field == INDEX:
            tag.append(ARGO_SPLIT_INDEX)
            sample.append("0")
        else:
            raise UsageError(
                f"{{{field}}} in {template!r} is only known while the run runs, but Argo Workflows fixes a step's "
                f"image when it creates the pod",
                f"name the environment with {{run_id}}, {{{INDEX}}} (the foreach branch) and constants only, "
                f"e.g. explainer-{{{INDEX}}}-{{run_id}}; constants: composer.metaflow_link.ref_at_launch(TEMPLATE, KEY=VALUE)",
            )
    if not any(f in ("run_id", INDEX) for _, f, _, _ in parsed if f is not None and f not in values):
        raise UsageError(f"{template!r} names the same environment in every run", "use composer.ref(NAME) for a fixed name")
    check_name("".join(sample))  # the names this reference will take (grammar, length, reserved forms)
    return ExecutionRef(f"{settings.registry_host}/{envs_repository(settings)}:{''.join(tag)}", template)


def _flow_being_defined() -> str:
    """The name of the flow class whose body is calling composer.ref (decorators are evaluated there)."""
    frame = sys._getframe(1)
    while frame is not None:
        if "__qualname__" in frame.f_locals and "__module__" in frame.f_locals:
            return frame.f_locals["__qualname__"].rsplit(".", 1)[-1]
        frame = frame.f_back
    raise UsageError("composer.ref(TEMPLATE) was not called in a flow class's body, so the flow's name "
                     "(part of the run id) is unknown while deploying",
                     "call it in the step's decorator, or use composer.metaflow_link.ref_at_launch(TEMPLATE, flow='FlowName')")


def _launch_index() -> Optional[int]:
    """self.index of the task Metaflow's runtime is launching, when str() is called from inside its
    launcher (a decorator's runtime_step_cli, or CLIArgs formatting the step's command line)."""
    try:
        from metaflow.runtime import CLIArgs
    except ImportError:
        return None
    frame = sys._getframe(1)
    for _ in range(40):
        if frame is None:
            return None
        for value in list(frame.f_locals.values()):
            if isinstance(value, CLIArgs):
                return task_index(value.task)
        frame = frame.f_back
    return None


def task_index(task) -> Optional[int]:
    """The innermost foreach index of a runtime Task: its split index when it starts a branch, else
    its parent's (a step inside a branch has the same index as the step before it)."""
    if task.split_index is not None:
        return int(task.split_index)
    if not task.input_paths:
        return None
    run_id, step, task_id = task.input_paths[0].split("/")[-3:]
    stack = task._flow_datastore.get_task_datastore(run_id, step, task_id)["_foreach_stack"]
    return int(stack[-1].index) if stack else None


def _current_run() -> Optional[str]:
    if "metaflow" not in sys.modules:
        return None
    from metaflow import current

    flow, run_id = current.get("flow_name"), current.get("run_id")
    return f"{flow}/{run_id}" if flow and run_id else None


def _composed_for_run(settings: Settings, run: str, template: str) -> Tuple[str, str]:
    """(name, image digest) of the environment composer.build(..., run_id=run) published."""
    got = read_run_record(connect(settings), runs_repository(settings), run_tag(run))
    composed = (got[0].composed or {}) if got else {}
    if not composed.get("name"):
        raise NotFoundError(
            f"no environment was composed for run {run} yet, so {template!r} cannot be resolved",
            "compose it in an earlier step: composer.build(..., name=TEMPLATE, run_id=composer.metaflow_link.this_run())",
        )
    return composed["name"], got[0].image.digest  # type: ignore[index]


def _link_task(settings: Settings, pulled: dict) -> dict:
    return {"metaflow_task": record_task_environment(settings, pulled)}


# composer's core knows nothing of Metaflow: this module plugs in as a run source (after
# composer's own records), a step qualifier for --upstream-step, and a pull hook.
register_source(load_metaflow_run, with_step)
if _link_task not in AFTER_PULL:
    AFTER_PULL.append(_link_task)
