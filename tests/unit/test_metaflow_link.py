"""Metaflow integration, pure logic: pathspecs, launch-time refs, and the two Metaflow
behaviours launch-time refs rely on (pinned against the installed Metaflow)."""

from __future__ import annotations

import copy
import pickle

import pytest

import composer
from composer import metaflow_link as ml
from composer.settings import Settings
from composer.errors import NotFoundError, UsageError, VerificationError

SETTINGS = Settings(registry="127.0.0.1:5000/unit")
DIGEST = "sha256:" + "ab" * 32
REF = f"127.0.0.1:5000/unit/envs@{DIGEST}"


@pytest.mark.parametrize("text, expected", [
    ("TrainFlow/1234", ("TrainFlow", "1234", None)),
    ("TrainFlow/1234/train", ("TrainFlow", "1234", "train")),
    ("Flow_2/argo-flow-abc.12/end", ("Flow_2", "argo-flow-abc.12", "end")),
    ("explainer-model-a-ExplainerFlow-1", None),  # a composed environment's name
    ("TrainFlow", None),
    ("TrainFlow/", None),
    ("Train-Flow/1", None),
    ("TrainFlow/1/train/7", None),  # a task, not a run or step
    ("TrainFlow/1/tr ain", None),
    ("TrainFlow/1\n", None),
])
def test_parse_pathspec(text, expected):
    assert ml.parse_pathspec(text) == expected


def test_with_step():
    from composer.upstream.runs import with_step  # the core asks the step qualifiers Metaflow registered

    assert with_step("TrainFlow/12", None) == "TrainFlow/12"
    assert with_step("TrainFlow/12", "train") == "TrainFlow/12/train"
    assert with_step("TrainFlow/12/train", "train") == "TrainFlow/12/train"
    with pytest.raises(UsageError, match="already names step"):
        with_step("TrainFlow/12/train", "end")
    with pytest.raises(UsageError, match="needs a run whose steps have environments"):
        with_step("explainer-a-1", "train")
    with pytest.raises(UsageError, match="not a Metaflow step name"):
        with_step("TrainFlow/12", "a/b")


def test_non_pathspec_is_not_looked_up_in_metaflow():
    assert ml.load_metaflow_run(SETTINGS, "explainer-model-a-ExplainerFlow-1") is None


def test_ref_of_a_template_is_a_launch_ref_and_touches_nothing():
    ref = composer.ref("explainer-{model}-{run_id}", registry="127.0.0.1:1/nothing-listens")
    assert isinstance(ref, ml.LaunchRef) and isinstance(ref, str)
    assert ref.template == "explainer-{model}-{run_id}"
    # Outside a run the value is a placeholder that is not an image reference: a scheduler that
    # never asks for the value fails closed.
    assert str(ref) == "composer.at-launch/explainer-{model}-{run_id}" == f"{ref}" == "%s" % ref
    assert repr(ref) == "LaunchRef('explainer-{model}-{run_id}')"


@pytest.mark.parametrize("template, fragment", [
    ("no-placeholder", "no placeholder"),
    ("bad-{", "malformed"),
    ("has space-{run_id}", "not a valid OCI tag"),
])
def test_launch_ref_checks_the_template_at_once(template, fragment):
    with pytest.raises(UsageError, match=fragment):
        ml.LaunchRef(template)


def test_launch_ref_survives_copies_and_pickles():
    ref = ml.ref_at_launch("env-{model}-{run_id}", model="a", registry="127.0.0.1:5000/x")
    for other in (copy.copy(ref), copy.deepcopy(ref), pickle.loads(pickle.dumps(ref))):
        assert isinstance(other, ml.LaunchRef)
        assert (other.template, other.values) == ("env-{model}-{run_id}", {"model": "a"})


@pytest.fixture
def in_run(monkeypatch):
    """As in the process launching a step of run Flow/7, with a registry that knows one name."""
    names = {}
    calls = []

    def fake_resolve(settings, name):
        calls.append(name)
        if name not in names:
            raise NotFoundError(f"no environment named {name!r}")
        return names[name], {}, "sha256:" + "cd" * 32

    monkeypatch.setattr(ml, "_current_run", lambda: "ExplainerFlow/7")
    monkeypatch.setattr(ml, "resolve", fake_resolve)
    return names, calls


def test_launch_ref_with_every_value_renders_the_name(in_run):
    names, calls = in_run
    names["env-a-ExplainerFlow-7"] = REF
    ref = ml.ref_at_launch("env-{model}-{run_id}", model="a", settings=SETTINGS)
    assert str(ref) == REF and ref.resolve() == REF
    assert calls == ["env-a-ExplainerFlow-7"]  # resolved once per run, then remembered


def test_launch_ref_finds_the_environment_composed_for_the_run(in_run, monkeypatch):
    names, _ = in_run
    names["explainer-model-b-ExplainerFlow-7"] = REF
    monkeypatch.setattr(ml, "_composed_for_run", lambda s, run, t: ("explainer-model-b-ExplainerFlow-7", DIGEST))
    assert str(ml.LaunchRef("explainer-{model}-{run_id}", settings=SETTINGS)) == REF


def test_launch_ref_refuses_a_name_that_does_not_fit(in_run, monkeypatch):
    monkeypatch.setattr(ml, "_composed_for_run", lambda s, run, t: ("other-ExplainerFlow-7", DIGEST))
    with pytest.raises(UsageError, match="does not fit"):
        ml.LaunchRef("explainer-{model}-{run_id}", settings=SETTINGS).resolve()


def test_launch_ref_refuses_a_name_that_moved(in_run, monkeypatch):
    names, _ = in_run
    names["explainer-a-ExplainerFlow-7"] = REF
    monkeypatch.setattr(ml, "_composed_for_run", lambda s, run, t: ("explainer-a-ExplainerFlow-7", "sha256:" + "ef" * 32))
    with pytest.raises(VerificationError, match="moved"):
        ml.LaunchRef("explainer-{model}-{run_id}", settings=SETTINGS).resolve()


def test_metaflow_keeps_the_launch_ref_until_it_writes_the_command_line(in_run):
    """What launch-time resolution relies on, checked against the installed Metaflow: @kubernetes
    keeps the attribute object through init() and runtime_step_cli(), and the launcher turns
    option values into text with str()."""
    pytest.importorskip("metaflow")
    from types import SimpleNamespace

    from metaflow.plugins.kubernetes.kubernetes_decorator import KubernetesDecorator
    from metaflow.util import to_unicode

    names, _ = in_run
    names["env-a-ExplainerFlow-7"] = REF
    ref = ml.ref_at_launch("env-{model}-{run_id}", model="a", settings=SETTINGS)
    deco = KubernetesDecorator(attributes={"image": ref})
    deco.init()
    assert deco.attributes["image"] is ref
    deco.run_time_limit = 60
    cli_args = SimpleNamespace(commands=[], command_args=[], command_options={}, entrypoint=["python", "flow.py"])
    deco.runtime_step_cli(cli_args, 0, 0, None)
    assert cli_args.command_options["image"] is ref
    assert to_unicode(cli_args.command_options["image"]) == REF


def test_outside_a_task_pull_registers_nothing(monkeypatch):
    monkeypatch.delenv(ml.TASK_ENV, raising=False)
    pulled = {"verified_running": True, "name": "n", "ref": REF, "digest": DIGEST, "record": DIGEST, "spec_hash": DIGEST}
    assert ml.record_task_environment(SETTINGS, pulled) is None  # no Metaflow task in this process
    assert ml.record_task_environment(SETTINGS, {**pulled, "verified_running": False}) is None


def test_a_malformed_task_variable_is_bad_input(monkeypatch):
    monkeypatch.setenv(ml.TASK_ENV, "Flow/1/step")
    pulled = {"verified_running": True}
    with pytest.raises(UsageError, match="not a task pathspec"):
        ml.record_task_environment(SETTINGS, pulled)


def test_link_can_be_switched_off(monkeypatch):
    monkeypatch.setenv(ml.TASK_ENV, "Flow/1/step")  # would be an error if it were read
    monkeypatch.setenv(ml.LINK_SWITCH_ENV, "0")
    assert ml.record_task_environment(SETTINGS, {"verified_running": True}) is None


def test_in_a_run_an_unresolvable_ref_stops_the_launch_with_one_clean_line(in_run):
    pytest.importorskip("metaflow")
    from metaflow.exception import MetaflowException

    with pytest.raises(MetaflowException, match="composer: error: no environment named 'env-ExplainerFlow-7'") as info:
        str(ml.LaunchRef("env-{run_id}", settings=SETTINGS))
    assert info.value.headline == "composer could not resolve the step's image"


# --------------------------------------------------------------------------- one environment per foreach branch

def _cli_args_for(task):
    """A real metaflow.runtime.CLIArgs (what the launcher formats a step's command line with) for task."""
    from metaflow.runtime import CLIArgs

    cli_args = CLIArgs.__new__(CLIArgs)
    cli_args.task = task
    return cli_args


def test_index_is_the_branch_of_the_step_being_launched(in_run):
    """{index} comes from the task Metaflow's launcher is formatting a command line for: found as a
    CLIArgs in the frames that call str() (the real launcher's get_args, a decorator's runtime_step_cli)."""
    pytest.importorskip("metaflow")
    from types import SimpleNamespace

    names, calls = in_run
    names["env-0-ExplainerFlow-7"], names["env-1-ExplainerFlow-7"] = REF, REF.replace("ab", "cd")
    ref = composer.ref("env-{index}-{run_id}", settings=SETTINGS)

    def launch(cli_args):  # like runtime_step_cli: the CLIArgs is a local of a calling frame
        return str(ref)

    assert launch(_cli_args_for(SimpleNamespace(split_index="1", input_paths=["7/start/1"]))) == names["env-1-ExplainerFlow-7"]
    assert launch(_cli_args_for(SimpleNamespace(split_index=0, input_paths=["7/start/1"]))) == REF
    assert calls == ["env-1-ExplainerFlow-7", "env-0-ExplainerFlow-7"]  # remembered per (run, branch)
    assert ref.resolve(index=1) == names["env-1-ExplainerFlow-7"]
    with pytest.raises(UsageError, match="no step inside a foreach is being launched"):
        ref.resolve()


def test_index_of_a_later_step_in_the_branch_is_its_parents(monkeypatch):
    """A step after the branch's first one has no split index of its own: it is in its parent's branch."""
    from collections import namedtuple
    from types import SimpleNamespace

    Frame = namedtuple("Frame", "step index num_splits value")
    seen = []

    class Datastores:
        def get_task_datastore(self, run_id, step, task_id):
            seen.append((run_id, step, task_id))
            return {"_foreach_stack": [Frame("start", 3, 4, None)]}

    task = SimpleNamespace(split_index=None, input_paths=["7/build_environment/12"], _flow_datastore=Datastores())
    assert ml.task_index(task) == 3 and seen == [("7", "build_environment", "12")]
    assert ml.task_index(SimpleNamespace(split_index=None, input_paths=[], _flow_datastore=None)) is None


def test_metaflow_launcher_formats_options_inside_cli_args():
    """What {index} relies on, pinned against the installed Metaflow: the launcher turns the step's
    options into text in CLIArgs.get_args (so a CLIArgs is on the stack when str() runs), and a
    runtime Task carries split_index, input_paths and its flow datastore."""
    pytest.importorskip("metaflow")
    import inspect

    from metaflow.runtime import CLIArgs, Task

    assert "to_unicode(vv)" in inspect.getsource(CLIArgs.get_args)
    init = inspect.getsource(Task.__init__)
    for attribute in ("self.split_index = split_index", "self.input_paths = input_paths",
                      "self._flow_datastore = flow_datastore"):
        assert attribute in init


# --------------------------------------------------------------------------- deployments

@pytest.mark.parametrize("argv, expected", [
    (["--datastore=s3", "argo-workflows", "create", "--only-json"], "argo-workflows"),
    (["argo-workflows", "--name", "x", "create"], None),  # an option in between: not Metaflow's form
    (["step-functions", "create"], "step-functions"),
    (["airflow", "create", "dag.py"], "airflow"),
    (["argo-workflows", "trigger"], None),
    (["run", "--upstream", "argo-workflows"], None),
    (["step", "train", "--run-id", "argo-x"], None),
])
def test_deploy_command(argv, expected):
    assert ml.deploy_command(argv) == expected


def test_argo_image_names_the_environment_with_argo_variables():
    image = ml.argo_image(SETTINGS, "explainer-{index}-{run_id}", {}, "ExplainerFlow")
    assert image == ("127.0.0.1:5000/unit/envs:explainer-{{inputs.parameters.split-index}}-"
                     "ExplainerFlow-argo-{{workflow.name}}")
    assert isinstance(image, ml.ExecutionRef) and image.template == "explainer-{index}-{run_id}"
    assert pickle.loads(pickle.dumps(image)) == image and copy.deepcopy(image).template == image.template
    # filled as the build step's render_name fills it: Argo's values are tag-safe already
    from composer.model.refs import render_name

    filled = image.replace("{{inputs.parameters.split-index}}", "1").replace("{{workflow.name}}", "explainerflow-x7k2p")
    assert filled.split(":", 2)[-1] == render_name("explainer-{index}-{run_id}",
                                                   {"index": 1, "run_id": "ExplainerFlow/argo-explainerflow-x7k2p"})
    # constants are slugged as the build slugs them
    assert ml.argo_image(SETTINGS, "x-{team}-{run_id}", {"team": "ML Ops"}, "F").endswith(":x-ML-Ops-F-argo-{{workflow.name}}")


@pytest.mark.parametrize("template, flow, fragment", [
    ("explainer-{model}-{run_id}", "ExplainerFlow", "only known while the run runs"),
    ("explainer-{upstream_run}", "ExplainerFlow", "only known while the run runs"),
    ("explainer-{index!r}-{run_id}", "ExplainerFlow", "format spec or conversion"),
    ("explainer-{team}", "ExplainerFlow", "only known while the run runs"),
    ("e-{run_id}", "F" * 40, "longer than the 60 characters"),
    ("e-{run_id}", "not a flow", "not a Metaflow flow name"),
    ("{run_id}" + "x" * 80, "ExplainerFlow", "characters long"),
])
def test_argo_image_refuses_what_no_pod_creation_can_know(template, flow, fragment):
    with pytest.raises(UsageError, match=fragment):
        ml.argo_image(SETTINGS, template, {}, flow)


def test_deploying_finds_the_flow_from_the_class_body(monkeypatch):
    monkeypatch.setattr(ml, "deploy_command", lambda argv=None: "argo-workflows")

    class ExplainerFlow:  # noqa: F841 - as Metaflow evaluates a decorator's arguments
        image = composer.ref("e-{index}-{run_id}", settings=SETTINGS)

    assert ExplainerFlow.image.endswith(":e-{{inputs.parameters.split-index}}-ExplainerFlow-argo-{{workflow.name}}")


def test_deploying_refuses_at_import_with_one_line(monkeypatch, capsys):
    """At import time of the flow file nothing would report a ComposerError: one line, exit 2."""
    monkeypatch.setattr(ml, "deploy_command", lambda argv=None: "argo-workflows")
    with pytest.raises(SystemExit) as exc:
        class ExplainerFlow:  # noqa: F841
            image = composer.ref("explainer-{model}-{run_id}", settings=SETTINGS)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("composer: error: {model} in 'explainer-{model}-{run_id}'")
    assert "explainer-{index}-{run_id}" in err[0]
    with pytest.raises(SystemExit):  # no flow class around: the flow name is unknown
        composer.ref("e-{run_id}", settings=SETTINGS)
    assert "flow='FlowName'" in capsys.readouterr().err
    assert ml.ref_at_launch("e-{run_id}", settings=SETTINGS, flow="F").endswith(":e-F-argo-{{workflow.name}}")


@pytest.mark.parametrize("command", ["step-functions", "airflow"])
def test_schedulers_with_fixed_images_are_refused_at_deploy_time(monkeypatch, capsys, command):
    monkeypatch.setattr(ml, "deploy_command", lambda argv=None: command)
    with pytest.raises(SystemExit) as exc:
        composer.ref("explainer-{index}-{run_id}", settings=SETTINGS)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"composer: error: `{command} create` fixes each step's image") and "\n" not in err


def test_argo_run_ids_longer_than_a_name_keeps_are_refused_in_the_build_step(monkeypatch):
    monkeypatch.setattr(ml, "_have_metaflow", lambda: True)
    monkeypatch.setattr(ml, "_current_run", lambda: "ExplainerFlow/argo-" + "w" * 60)
    monkeypatch.setenv("ARGO_WORKFLOW_NAME", "w" * 60)
    with pytest.raises(UsageError, match="longer than the 60 characters"):
        ml.this_run()
    monkeypatch.setattr(ml, "_current_run", lambda: "ExplainerFlow/argo-explainerflow-x7k2p")
    assert ml.this_run() == "ExplainerFlow/argo-explainerflow-x7k2p"
