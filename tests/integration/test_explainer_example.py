"""examples/explainer end to end, for two upstream models with different dependency sets:
the training flows run their train step in their own composed images; the explainer flow
composes  upstream environment + numexpr  under a name tied to its run id and the model
type, and its train_explainer step (image = a name template, resolved at launch) runs in
that environment, which it verifies and links at step start."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import uuid
from types import SimpleNamespace

import pytest

from tests.conftest import BASE_REF, REGISTRY, ROOT, run_cli

pytestmark = pytest.mark.integration
pytest.importorskip("metaflow")

EXAMPLE = ROOT / "examples" / "explainer"


def _demo():
    spec = importlib.util.spec_from_file_location("explainer_demo", EXAMPLE / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _client(script: str, env: dict, cwd) -> dict:
    """Run a few lines with Metaflow's client (in a fresh process, on the test's local metadata)."""
    head = "import json\nfrom metaflow import Run, namespace\nnamespace(None)\n"
    proc = subprocess.run([sys.executable, "-c", head + script], capture_output=True, text=True, env=env, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def example(infra, tmp_path_factory):
    """The runtime image, the two training environments and one training run of each model."""
    tmp = tmp_path_factory.mktemp("explainer")
    demo = _demo()
    env = demo.flow_env(tmp, {**os.environ, "COMPOSER_REGISTRY": f"{REGISTRY}/ex{uuid.uuid4().hex[:10]}",
                              "COMPOSER_BASE_REF": BASE_REF})
    training = demo.prepare(env)
    upstreams = {model: demo.run_flow(flow_file, env=env, workdir=tmp)
                 for flow_file, model in (("model_a_flow.py", "model-a"), ("model_b_flow.py", "model-b"))}
    return SimpleNamespace(demo=demo, env=env, tmp=tmp, training=training, upstreams=upstreams)


def test_explainer_example_for_two_models(example):
    demo, env, tmp_path, training = example.demo, example.env, example.tmp, example.training
    results = {}
    for model, upstream in example.upstreams.items():
        explainer = demo.run_flow("explainer_flow.py", "--upstream", upstream, env=env, workdir=tmp_path)
        results[model] = (upstream, explainer)

    for model, (upstream, explainer) in results.items():
        got = _client(f"""
run = Run({explainer!r})
links = {{s.id: [json.loads(m.value) for t in s for m in t.metadata if m.type == "composer-environment"] for s in run}}
d = run.data
print(json.dumps({{"ok": run.successful, "links": links, "env_name": d.env_name, "env_ref": d.env_ref,
                   "explained": d.explained, "importances": d.importances,
                   "upstream_numpy": Run({upstream!r}).data.numpy_version}}))
""", env, tmp_path)
        flow, run_id = explainer.split("/")
        name = f"explainer-{model}-{flow}-{run_id}"
        assert got["ok"] and got["env_name"] == name
        # train_explainer ran in the environment build_environment composed, and said so.
        assert [v["name"] for v in got["links"]["train_explainer"]] == [name]
        assert got["links"]["train_explainer"][0]["ref"] == got["env_ref"] == got["explained"]["env"]
        assert got["links"]["build_environment"] == [] and got["links"]["start"] == []
        # ...which is the upstream's environment (same numpy, so its model loaded) plus numexpr.
        assert got["explained"]["numpy"] == got["upstream_numpy"] == {"model-a": "1.26.4", "model-b": "2.2.6"}[model]
        assert got["explained"]["numexpr"]

        proc = run_cli("show", name, "--json", env=env)
        assert proc.returncode == 0, proc.stderr
        record = json.loads(proc.stdout)["record"]
        assert record["upstream"]["run"] == upstream  # found through the upstream run's task metadata
        assert record["base"]["digest"] == training[model]["digest"]
        assert record["lock"]["added"] == ["numexpr"]

        # The explainer run is an upstream too: composer's own record for it, written by the build.
        proc = subprocess.run([sys.executable, "-c", (
            "import sys; import composer.metaflow_link; from composer.settings import load_settings\n"
            "from composer.upstream.runs import load_run\n"
            "print(load_run(load_settings({}), sys.argv[1])[0].image.digest)"), explainer],
            capture_output=True, text=True, env=env, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert got["env_ref"].endswith("@" + proc.stdout.strip())

    # The importances make sense: model A's target ignores feature 3, model B's ignores feature 2.
    imp_a = _client(f"print(json.dumps(Run({results['model-a'][1]!r}).data.importances))", env, tmp_path)
    imp_b = _client(f"print(json.dumps(Run({results['model-b'][1]!r}).data.importances))", env, tmp_path)
    assert imp_a.index(max(imp_a)) == 0 and abs(imp_a[3]) < 0.01
    assert imp_b.index(max(imp_b)) == 0 and abs(imp_b[2]) < 0.05


def test_deployed_explainer_triggered_by_both_models_one_environment_per_branch(example):
    """The deployable flow under Metaflow's runtime, started as the training runs' end would start
    it (`--trigger`, what @trigger_on_finish delivers as current.trigger): it fans out over the two
    upstream runs and each branch's train_explainer runs in its own composed environment."""
    demo, env = example.demo, example.env
    up_a, up_b = example.upstreams["model-a"], example.upstreams["model-b"]
    run = demo.run_flow("deployed_explainer_flow.py", env=env, workdir=example.tmp,
                        top=("--trigger", up_a, "--trigger", up_b))
    flow, run_id = run.split("/")
    got = _client(f"""
run = Run({run!r})
links = [(t.index, [json.loads(m.value) for m in t.metadata if m.type == "composer-environment"])
         for t in run["train_explainer"]]
print(json.dumps({{"ok": run.successful, "explained": run.data.explained, "links": links,
                   "numpy": {{u: Run(u).data.numpy_version for u in {[up_a, up_b]!r}}}}}))
""", env, example.tmp)
    assert got["ok"]
    explained = got["explained"]
    assert [e["index"] for e in explained] == [0, 1]
    assert sorted(e["upstream"] for e in explained) == sorted([up_a, up_b])  # from current.trigger
    links = {index: values for index, values in got["links"]}
    for e in explained:
        name = f"explainer-{e['index']}-{flow}-{run_id}"
        assert e["env_name"] == name
        # the branch's step ran in the branch's environment (resolved at launch), verified and linked
        assert [v["name"] for v in links[e["index"]]] == [name] and links[e["index"]][0]["ref"] == e["env"]
        assert e["numpy"] == got["numpy"][e["upstream"]]  # that upstream's own numpy: its model loaded
        proc = run_cli("show", name, "--json", env=env)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["record"]["upstream"]["run"] == e["upstream"]
    assert explained[0]["env"] != explained[1]["env"]  # numpy 1 and numpy 2: two environments


def test_deployed_explainer_started_by_hand(example):
    """Without a trigger the upstream runs come from the --upstreams parameter."""
    up_b = example.upstreams["model-b"]
    run = example.demo.run_flow("deployed_explainer_flow.py", "--upstreams", up_b, env=example.env, workdir=example.tmp)
    got = _client(f"print(json.dumps(Run({run!r}).data.explained))", example.env, example.tmp)
    assert [(e["index"], e["upstream"], e["env_name"]) for e in got] == [(0, up_b, f"explainer-0-{run.replace('/', '-')}")]
