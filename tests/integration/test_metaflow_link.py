"""Upstream runs straight from Metaflow: real flows run locally (local metadata and datastore in a
temporary directory), their steps in composed images (the example's local Docker stand-in for
@kubernetes), and composer composes on the environments those runs recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from tests.conftest import REGISTRY, ROOT, build_json, one_error_line, run_cli

pytestmark = pytest.mark.integration
pytest.importorskip("metaflow")

FLOWS = {
    # One environment, linked by `python -m composer pull` run from the step's code (the
    # environment variables from task_environment() tell it which task it belongs to).
    "OneEnvFlow": '''
        @kubernetes(image=composer.ref("step-env-one"))
        @step
        def start(self):
            import os, subprocess, sys
            from composer.metaflow_link import task_environment
            subprocess.run([sys.executable, "-m", "composer", "pull", "step-env-one"],
                           env={**os.environ, **task_environment()}, check=True)
            self.next(self.end)
    ''',
    # Two steps in two environments, linked by composer.pull() in the step.
    "TwoEnvFlow": '''
        @kubernetes(image=composer.ref("step-env-one"))
        @step
        def start(self):
            composer.pull("step-env-one")
            self.next(self.train)

        @kubernetes(image=composer.ref("step-env-two"))
        @step
        def train(self):
            composer.pull("step-env-two")
            self.next(self.end)
    ''',
    # Never used composer: every step on the host.
    "PlainFlow": '''
        @step
        def start(self):
            self.next(self.end)
    ''',
}


def _flow_source(name: str, body: str) -> str:
    return (f"from metaflow import FlowSpec, step\nimport composer\nfrom local_kubernetes import kubernetes\n\n"
            f"class {name}(FlowSpec):\n" + textwrap.indent(textwrap.dedent(body), "    ")
            + "\n    @step\n    def end(self):\n        pass\n\n"
            f"if __name__ == '__main__':\n    {name}()\n")


@pytest.fixture(scope="module")
def mf(infra, model_a, tmp_path_factory):
    """Two step environments composed on model_a, and one run of each flow above."""
    work = tmp_path_factory.mktemp("metaflow")
    env = {
        "COMPOSER_REGISTRY": f"{REGISTRY}/mf{uuid.uuid4().hex[:10]}",
        "METAFLOW_DEFAULT_METADATA": "local", "METAFLOW_DEFAULT_DATASTORE": "local",
        "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(work), "USERNAME": "composer-tests",
    }
    assert run_cli("record", "--run", "model-a-image", "--image", model_a, env=env).returncode == 0
    envs = {}
    for name, extra in (("step-env-one", "requests\ntomli\n"), ("step-env-two", "requests\ntomli\nsix==1.16.0\n")):
        path = work / f"{name}.txt"
        path.write_text(extra)  # composer and Metaflow run inside the step: they need requests and tomli
        envs[name] = build_json("--upstream-run", "model-a-image", "--extra", str(path), "--name", name, env=env)
    # The stand-in ships with the flows, as the example's does (a container sees the flow's directory).
    (work / "local_kubernetes.py").write_text((ROOT / "examples" / "explainer" / "local_kubernetes.py").read_text())
    runs = {}
    for flow, body in FLOWS.items():
        script = work / f"{flow.lower()}.py"
        script.write_text(_flow_source(flow, body))
        id_file = work / f"{flow}.run-id"
        proc = subprocess.run([sys.executable, str(script), "--no-pylint", "run", "--run-id-file", str(id_file)],
                              capture_output=True, text=True, cwd=work, env={**os.environ, "COMPOSER_PROGRESS": "quiet", **env},
                              timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        runs[flow] = f"{flow}/{id_file.read_text().strip()}"
    extra = work / "extra.txt"
    extra.write_text("iniconfig==2.0.0\n")
    return {"env": env, "envs": envs, "runs": runs, "extra": str(extra), "work": work}


def _show(name: str, env: dict) -> dict:
    proc = run_cli("show", name, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["record"]


def test_compose_on_a_metaflow_run_by_its_pathspec(mf):
    run = mf["runs"]["OneEnvFlow"]
    out = build_json("--upstream-run", run, "--extra", mf["extra"], "--name", "on-one", env=mf["env"])
    record = _show("on-one", mf["env"])
    assert record["upstream"]["run"] == run
    assert record["base"]["digest"] == mf["envs"]["step-env-one"]["digest"]  # the environment the step ran in
    assert "iniconfig" in record["lock"]["added"] and out["cached"] is False


def test_steps_in_different_environments_need_a_step(mf):
    run = mf["runs"]["TwoEnvFlow"]
    proc = run_cli("build", "--upstream-run", run, "--extra", mf["extra"], "--name", "two", env=mf["env"])
    assert proc.returncode == 2
    line = one_error_line(proc)
    for part in (run, "start: step-env-one", "train: step-env-two", "--upstream-step"):
        assert part in line, line

    build_json("--upstream-run", run, "--upstream-step", "train", "--extra", mf["extra"], "--name", "two-train", env=mf["env"])
    record = _show("two-train", mf["env"])
    assert record["base"]["digest"] == mf["envs"]["step-env-two"]["digest"]
    assert record["upstream"]["run"] == f"{run}/train"

    # The step in the pathspec is the same thing; same composition as on OneEnvFlow: a cache hit.
    out = build_json("--upstream-run", f"{run}/start", "--extra", mf["extra"], "--name", "two-start", env=mf["env"])
    assert _show("two-start", mf["env"])["base"]["digest"] == mf["envs"]["step-env-one"]["digest"]

    proc = run_cli("build", "--upstream-run", run, "--upstream-step", "nosuch", "--extra", mf["extra"], env=mf["env"])
    assert proc.returncode == 3 and "has no step 'nosuch'" in one_error_line(proc)
    proc = run_cli("build", "--upstream-run", f"{run}/start", "--upstream-step", "train", "--extra", mf["extra"], env=mf["env"])
    assert proc.returncode == 2 and "already names step" in one_error_line(proc)


def test_a_run_without_environment_says_how_to_record_one(mf, model_a):
    run = mf["runs"]["PlainFlow"]
    proc = run_cli("build", "--upstream-run", run, "--extra", mf["extra"], env=mf["env"])
    assert proc.returncode == 3
    line = one_error_line(proc)
    assert run in line and f"composer record --run {run}" in line and "composer.pull" in line

    # Recorded by hand, the run works: composer's own record comes first.
    assert run_cli("record", "--run", run, "--image", model_a, env=mf["env"]).returncode == 0
    build_json("--upstream-run", run, "--extra", mf["extra"], "--name", "on-plain", env=mf["env"])
    assert _show("on-plain", mf["env"])["upstream"]["run"] == run


def test_unknown_runs_and_misplaced_steps(mf):
    proc = run_cli("build", "--upstream-run", "NoSuchFlow/42", "--extra", mf["extra"], env=mf["env"])
    assert proc.returncode == 3
    line = one_error_line(proc)
    assert "NoSuchFlow/42" in line and "composer record" in line and "Metaflow" in line

    proc = run_cli("build", "--upstream-run", "model-a-image", "--upstream-step", "train", "--extra", mf["extra"], env=mf["env"])
    assert proc.returncode == 2 and "needs a run whose steps have environments" in one_error_line(proc)


def test_the_link_is_task_metadata(mf):
    """What the tasks registered, read back with Metaflow's client as any tool would."""
    script = textwrap.dedent(f"""
        import json
        from metaflow import Run, namespace
        namespace(None)
        out = {{}}
        for run in {sorted(mf['runs'].values())!r}:
            for step in Run(run):
                for task in step:
                    for m in task.metadata:
                        if m.type == "composer-environment":
                            out.setdefault(run + "/" + step.id, []).append(json.loads(m.value))
        print(json.dumps(out))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=mf["work"],
                          env={**os.environ, **mf["env"]})
    assert proc.returncode == 0, proc.stderr
    links = json.loads(proc.stdout)
    one, two = mf["runs"]["OneEnvFlow"], mf["runs"]["TwoEnvFlow"]
    assert sorted(links) == [f"{one}/start", f"{two}/start", f"{two}/train"]
    for key, name in ((f"{one}/start", "step-env-one"), (f"{two}/train", "step-env-two")):
        (value,) = links[key]
        built = mf["envs"][name]
        assert (value["name"], value["digest"], value["ref"], value["record"]) == (name, built["digest"], built["ref"], built["record"])
        assert value["run_record"].startswith("sha256:") and value["registry"] == mf["env"]["COMPOSER_REGISTRY"]
