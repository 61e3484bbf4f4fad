"""Run the explainer example end to end on this machine:

  1. the runtime image (python + a venv with what composer and Metaflow need inside a
     step), made with scripts/make-upstream.sh and recorded with `composer record`;
  2. the two training environments, composed on it: train-model-a (numpy 1.26),
     train-model-b (numpy 2.2);
  3. ModelAFlow and ModelBFlow, whose train steps run in those images (local Docker);
  4. ExplainerFlow for each of them: it composes  model env + numexpr  under
     explainer-<model>-ExplainerFlow-<run id>  and trains the explainer in it.

    COMPOSER_REGISTRY=127.0.0.1:5000/example python examples/explainer/demo.py [WORKDIR]

Metaflow runs with its local metadata and datastore in WORKDIR (default: a new
temporary directory). Needs the Docker engine and the registry (make infra).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RUNTIME_RUN = "examples/runtime-py311"


def _requirements(path: Path) -> list:
    return [l.split("#", 1)[0].strip() for l in path.read_text().splitlines() if l.split("#", 1)[0].strip()]


def flow_env(workdir: Path, base: dict | None = None) -> dict:
    """Environment for running the flows: local Metaflow state in workdir, composer quiet."""
    env = dict(os.environ if base is None else base)
    env.update({
        "METAFLOW_DEFAULT_METADATA": "local", "METAFLOW_DEFAULT_DATASTORE": "local",
        "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(workdir), "USERNAME": env.get("USERNAME") or "explainer-demo",
        "COMPOSER_PROGRESS": env.get("COMPOSER_PROGRESS") or "quiet",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    })
    return env


def composer_cli(*args: str, env: dict) -> dict:
    proc = subprocess.run([sys.executable, "-m", "composer", *args, "--json"], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"composer {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def prepare(env: dict, runtime_image: str | None = None, base_image: str | None = None) -> dict:
    """Runtime image, its run record and the two training environments. Returns their refs."""
    registry_host = env["COMPOSER_REGISTRY"].split("/", 1)[0]
    base_image = base_image or env.get("COMPOSER_BASE_REF") or f"{registry_host}/bases/python:3.11-bookworm"
    runtime_image = runtime_image or f"{registry_host}/examples/runtime:py311"
    subprocess.run([str(ROOT / "scripts" / "make-base.sh"), base_image], check=True, env=env, capture_output=True)
    subprocess.run([str(ROOT / "scripts" / "make-upstream.sh"), runtime_image, base_image,
                    *_requirements(HERE / "envs" / "runtime.txt")], check=True, env=env, capture_output=True)
    composer_cli("record", "--run", RUNTIME_RUN, "--image", runtime_image, env=env)
    return {model: composer_cli("build", "--upstream-run", RUNTIME_RUN, "--extra", str(HERE / "envs" / f"{model}.txt"),
                                "--name", f"train-{model}", env=env)
            for model in ("model-a", "model-b")}


def run_flow(flow_file: str, *args: str, env: dict, workdir: Path, top: tuple = ()) -> str:
    """`python FLOW [TOP] run ARGS` with local Metaflow state; returns the run's pathspec. TOP: options
    of the flow's command (`--trigger RUN` starts it as if RUN had just finished: @trigger_on_finish)."""
    run_id_file = workdir / f"run-id-{flow_file}-{os.getpid()}-{len(list(workdir.glob('run-id-*')))}"
    proc = subprocess.run([sys.executable, str(HERE / flow_file), "--metadata", "local", "--datastore", "local",
                           "--no-pylint", *top, "run", "--run-id-file", str(run_id_file), *args],
                          capture_output=True, text=True, env=env, cwd=workdir, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{flow_file} run failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    flow = {"model_a_flow.py": "ModelAFlow", "model_b_flow.py": "ModelBFlow", "explainer_flow.py": "ExplainerFlow",
            "deployed_explainer_flow.py": "DeployedExplainerFlow"}[flow_file]
    return f"{flow}/{run_id_file.read_text().strip()}"


def main(argv: list) -> int:
    if not os.environ.get("COMPOSER_REGISTRY"):
        print("set COMPOSER_REGISTRY, e.g. 127.0.0.1:5000/example", file=sys.stderr)
        return 2
    workdir = Path(argv[0]) if argv else Path(tempfile.mkdtemp(prefix="explainer-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    env = flow_env(workdir)
    for model, built in prepare(env).items():
        print(f"train-{model}: {built['ref']}")
    for flow_file in ("model_a_flow.py", "model_b_flow.py"):
        upstream = run_flow(flow_file, env=env, workdir=workdir)
        explainer = run_flow("explainer_flow.py", "--upstream", upstream, env=env, workdir=workdir)
        print(f"{upstream} explained by {explainer}")
    print(f"Metaflow state in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
