"""Deployed, event-triggered flows on Argo Workflows, without a cluster: Metaflow's real compiler
(`argo-workflows create --only-json`, its code package in a local S3 from moto) writes the
WorkflowTemplate; tests/argo_sim.py substitutes Argo's variables in each pod's image as the
controller would for a workflow named W; the build step's composer call runs for run id
`Flow/argo-W`; the substituted image is pulled from the real registry and composer's step-start
check runs inside it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid

import pytest
import requests

from tests import argo_sim
from tests.conftest import BASE_REF, REGISTRY, ROOT, one_error_line, run_cli

pytestmark = pytest.mark.integration
pytest.importorskip("metaflow")
pytest.importorskip("kubernetes")
boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")

EXAMPLE = ROOT / "examples" / "explainer"
PLACEHOLDER = "composer.at-launch/"  # composer's launch-time placeholder: never in a compiled template
FLOW = "DeployedExplainerFlow"


@pytest.fixture(scope="module")
def s3():
    """A local S3 endpoint (moto) for Metaflow's code package, and the bucket it writes to."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):  # listening?
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
               "METAFLOW_S3_ENDPOINT_URL": url, "METAFLOW_DATASTORE_SYSROOT_S3": "s3://metaflow-test/root"}
        boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="test",
                     aws_secret_access_key="test").create_bucket(Bucket="metaflow-test")
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def deploy_env(s3: dict, registry: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METAFLOW_", "COMPOSER_"))}
    env.update(s3)
    env.update({
        "METAFLOW_KUBERNETES_NAMESPACE": "default", "USERNAME": "deployer", "COMPOSER_REGISTRY": registry,
        "COMPOSER_PROGRESS": "quiet", "PYTHONPATH": str(ROOT),
        # @trigger_on_finish compiles once Argo Events is configured (any values: nothing is contacted)
        "METAFLOW_ARGO_EVENTS_EVENT": "metaflow-event", "METAFLOW_ARGO_EVENTS_EVENT_BUS": "default",
        "METAFLOW_ARGO_EVENTS_EVENT_SOURCE": "argo-events-webhook", "METAFLOW_ARGO_EVENTS_SERVICE_ACCOUNT": "operate-workflow-sa",
        "METAFLOW_ARGO_EVENTS_WEBHOOK_URL": "http://argo-events-webhook:12000/metaflow-event",
    })
    return env


def deploy(flow_file: str, env: dict, *command: str) -> subprocess.CompletedProcess:
    command = command or ("argo-workflows", "create", "--only-json")
    return subprocess.run([sys.executable, flow_file, "--no-pylint", "--datastore=s3", *command],
                          capture_output=True, text=True, env=env, cwd=EXAMPLE, timeout=300)


def template_of(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert PLACEHOLDER not in proc.stdout  # a pod with the placeholder would never start
    return json.loads(proc.stdout)


def test_deployed_flow_compiles_to_images_argo_resolves(s3):
    registry = f"{REGISTRY}/argo{uuid.uuid4().hex[:8]}"
    wt = template_of(deploy("deployed_explainer_flow.py", deploy_env(s3, registry)))
    images = {t["name"]: t["container"]["image"] for t in wt["spec"]["templates"] if "container" in t}
    assert images["train-explainer"] == (f"{registry}/envs:explainer-{{{{inputs.parameters.split-index}}}}-"
                                         f"{FLOW}-argo-{{{{workflow.name}}}}")
    inputs = {t["name"]: [p["name"] for p in t.get("inputs", {}).get("parameters", [])] for t in wt["spec"]["templates"]}
    assert "split-index" in inputs["train-explainer"]  # what Metaflow passes a foreach branch's last step
    triggers = json.loads(wt["metadata"]["annotations"]["metaflow/triggers"])
    # event-triggered by the end of either model flow
    assert {t["name"] for t in triggers} == {"metaflow.ModelAFlow.end", "metaflow.ModelBFlow.end"}
    # Two workflows, two branches each: four distinct names, all filled in.
    pods = {w: [p for p in argo_sim.pods(wt, w, {"start": {"num-splits": "[0, 1]", "task-id": "t-1"}})
                if p.template == "train-explainer"] for w in ("deployedexplainerflow-a1b2c", "deployedexplainerflow-d3e4f")}
    names = [p.image.rsplit(":", 1)[1] for ps in pods.values() for p in ps]
    assert names == [f"explainer-{i}-{FLOW}-argo-{w}" for w in pods for i in (0, 1)]


@pytest.mark.parametrize("flow_file, command, fragment", [
    # the model type is read inside a step: no pod creation can know it
    ("explainer_flow.py", ("argo-workflows", "create", "--only-json"), "{model} in 'explainer-{model}-{run_id}' is only known"),
    ("deployed_explainer_flow.py", ("step-functions", "create", "--only-json"), "`step-functions create` fixes each step's image"),
    ("deployed_explainer_flow.py", ("airflow", "create", "/dev/null"), "`airflow create` fixes each step's image"),
])
def test_deploy_time_refusals_are_one_line_and_write_no_template(s3, flow_file, command, fragment):
    proc = deploy(flow_file, deploy_env(s3, f"{REGISTRY}/argo-refused"), *command)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stdout == ""  # no template, not a broken one
    assert fragment in one_error_line(proc)


def _pull_and_check_inside(image: str, name: str, env: dict) -> subprocess.CompletedProcess:
    """What the pod does: the kubelet pulls the image (by the tag Argo filled in), then the step's
    first line, composer.pull(NAME), checks that it runs the environment NAME's record describes."""
    pulled = subprocess.run(["docker", "pull", "-q", image], capture_output=True, text=True, timeout=300)
    assert pulled.returncode == 0, pulled.stderr
    return subprocess.run([
        "docker", "run", "--rm", "--network", "host", "-v", f"{ROOT / 'composer'}:/opt/code/composer:ro",
        "-e", "PYTHONPATH=/opt/code", "-e", f"COMPOSER_REGISTRY={env['COMPOSER_REGISTRY']}", "-e", "HOME=/tmp", image,
        "python3", "-c", f"import json, composer; print(json.dumps(composer.pull({name!r})))",
    ], capture_output=True, text=True, timeout=300)


def _digest_of(image: str) -> str:
    out = subprocess.run(["docker", "image", "inspect", "--format", "{{json .RepoDigests}}", image],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0].split("@", 1)[1]


def test_argo_runs_resolve_each_branch_to_the_environment_its_build_step_composed(infra, s3, tmp_path):
    demo = __import__("tests.integration.test_explainer_example", fromlist=["_demo"])._demo()
    registry = f"{REGISTRY}/argo{uuid.uuid4().hex[:8]}"
    env = {**deploy_env(s3, registry), "COMPOSER_BASE_REF": BASE_REF}
    training = demo.prepare(env)  # train-model-a (numpy 1), train-model-b (numpy 2): the upstreams

    wt = template_of(deploy("deployed_explainer_flow.py", env))
    for flow_file in ("model_a_flow.py", "model_b_flow.py"):  # names that exist already: pinned digests
        image = next(t["container"]["image"] for t in template_of(deploy(flow_file, env))["spec"]["templates"]
                     if t["name"] == "train")
        model = "model-a" if "_a_" in flow_file else "model-b"
        assert image == training[model]["ref"]

    upstream_of_branch = ["train-model-a", "train-model-b"]  # what current.trigger / --upstreams would give
    digests = {}
    for workflow in ("deployedexplainerflow-a1b2c", "deployedexplainerflow-d3e4f"):
        run_id = f"{FLOW}/argo-{workflow}"  # Metaflow's run id on Argo
        pods = [p for p in argo_sim.pods(wt, workflow, {"start": {"num-splits": "[0, 1]", "task-id": "t-1"}})
                if p.template == "train-explainer"]
        assert [p.inputs["split-index"] for p in pods] == ["0", "1"]
        for pod in pods:
            index = int(pod.inputs["split-index"])
            # the build_environment step of that branch: composer.build(..., name=ENV, variables={index, run_id})
            proc = run_cli("build", "--upstream-run", upstream_of_branch[index], "--extra", str(EXAMPLE / "envs" / "explainer.txt"),
                           "--name", "explainer-{index}-{run_id}", "--var", f"index={index}", "--var", f"run_id={run_id}",
                           "--json", env=env)
            assert proc.returncode == 0, proc.stderr
            built = json.loads(proc.stdout)
            assert pod.image == f"{built['repository']}:{built['name']}"  # the pod names what the step composed
            check = _pull_and_check_inside(pod.image, built["name"], env)
            assert check.returncode == 0, check.stderr
            result = json.loads(check.stdout.strip().splitlines()[-1])
            assert result["verified_running"] and result["digest"] == built["digest"] == _digest_of(pod.image)
            digests[(workflow, index)] = (built["name"], built["digest"], pod.image)

    # one environment per branch (numpy 1 vs numpy 2), and per workflow a name of its own
    (n_a0, d_a0, img_a0), (n_a1, d_a1, _) = digests[("deployedexplainerflow-a1b2c", 0)], digests[("deployedexplainerflow-a1b2c", 1)]
    (n_b0, d_b0, _) = digests[("deployedexplainerflow-d3e4f", 0)]
    assert d_a0 != d_a1 and d_a0 == d_b0 and len({n for n, _, _ in digests.values()}) == 4

    # Someone moves a name tag outside composer (here: to the other branch's image). The pod then
    # runs whatever the tag names, and the step-start check refuses it: the tag has no record of
    # that name (exit 7).
    repo = f"{registry.split('/', 1)[1]}/envs"
    accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
    got = requests.get(f"http://{REGISTRY}/v2/{repo}/manifests/{d_a1}", headers={"Accept": accept}, timeout=10)
    got.raise_for_status()
    put = requests.put(f"http://{REGISTRY}/v2/{repo}/manifests/{n_a0}", data=got.content,
                       headers={"Content-Type": got.headers["Content-Type"]}, timeout=10)
    assert put.status_code == 201, put.text
    check = _pull_and_check_inside(img_a0, n_a0, env)
    assert check.returncode != 0 and "VerificationError" in check.stderr and "no composer record describes it" in check.stderr
    proc = run_cli("ref", n_a0, env=env)
    assert proc.returncode == 7 and "no composer record describes it" in one_error_line(proc)
