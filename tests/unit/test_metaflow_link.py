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
