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


def test_explainer_example_for_two_models(infra, tmp_path):
    demo = _demo()
    env = demo.flow_env(tmp_path, {**os.environ, "COMPOSER_REGISTRY": f"{REGISTRY}/ex{uuid.uuid4().hex[:10]}",
                                   "COMPOSER_BASE_REF": BASE_REF})
    training = demo.prepare(env)

    results = {}
    for flow_file, model in (("model_a_flow.py", "model-a"), ("model_b_flow.py", "model-b")):
        upstream = demo.run_flow(flow_file, env=env, workdir=tmp_path)
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
