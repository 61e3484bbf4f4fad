"""`@kubernetes` for this example: Metaflow's own on a cluster, a local Docker run here.

There is no Kubernetes on the machines this example runs on, and Metaflow's @kubernetes
needs a cloud datastore. So, unless EXAMPLE_ON_KUBERNETES=1, `kubernetes(image=...)`
is a small step decorator that does what @kubernetes does, with `docker run`:

* in the launching process, right before the step starts (`runtime_step_cli`, the hook
  @kubernetes uses), it turns the image attribute into a string. That is when a
  `composer.ref("explainer-{model}-{run_id}")` (a LaunchRef) is resolved: after the
  earlier steps, including the one that composed the environment, have finished;
* it replaces the task's command `python flow.py ... step NAME ...` by the same command
  inside that image. Like a Kubernetes pod, the container gets Metaflow's and composer's
  code from outside the image (Metaflow ships itself in its code package) and reaches
  the datastore and metadata (here: the local ones, bind-mounted at the same paths).

Only what the example uses of @kubernetes is honoured (`image`); resources are ignored.
"""

from __future__ import annotations

import os
import shlex

from metaflow.decorators import StepDecorator, _base_step_decorator
from metaflow.exception import MetaflowException

_PASS_ENV_PREFIXES = ("METAFLOW_", "COMPOSER_")
_PASS_ENV = ("USERNAME", "USER")
# Paths on this machine mean nothing in the container.
_KEEP_OUT = ("METAFLOW_DATASTORE_SYSROOT_LOCAL", "COMPOSER_CA_BUNDLE", "COMPOSER_CONFIG", "COMPOSER_STATE_DIR")


class LocalKubernetesDecorator(StepDecorator):
    name = "local_kubernetes"
    defaults = {"image": None, "cpu": None, "memory": None, "disk": None}

    def step_init(self, flow, graph, step, decos, environment, flow_datastore, logger):
        if not self.attributes["image"]:
            raise MetaflowException(f"@kubernetes on step {step} needs image=...")
        if flow_datastore.TYPE != "local":
            raise MetaflowException("the local @kubernetes stand-in runs with --datastore=local; "
                                    "set EXAMPLE_ON_KUBERNETES=1 to use Metaflow's @kubernetes")
        self._sysroot = os.path.dirname(flow_datastore.datastore_root)  # .../.metaflow -> its parent

    def runtime_step_cli(self, cli_args, retry_count, max_user_code_retries, ubf_context):
        if retry_count > max_user_code_retries:
            return  # like @kubernetes: a @catch fallback after the last attempt runs locally
        import composer
        import metaflow

        # str() is where a LaunchRef resolves; @kubernetes does the same when it writes --image.
        image = str(self.attributes["image"])
        script = os.path.abspath(cli_args.entrypoint[-1])
        flow_dir = os.path.dirname(script)
        code = "/opt/metaflow-task-code"
        cmd = [
            "docker", "run", "--rm", "--network", "host", "--user", f"{os.getuid()}:{os.getgid()}",
            "-v", f"{os.path.dirname(metaflow.__file__)}:{code}/metaflow:ro",
            "-v", f"{os.path.dirname(composer.__file__)}:{code}/composer:ro",
            "-v", f"{self._sysroot}:{self._sysroot}",
            "-v", f"{flow_dir}:{flow_dir}", "-w", flow_dir,
            "-e", f"PYTHONPATH={code}", "-e", "PYTHONUNBUFFERED=x", "-e", "PYTHONDONTWRITEBYTECODE=1",
            "-e", "HOME=/tmp", "-e", f"METAFLOW_DATASTORE_SYSROOT_LOCAL={self._sysroot}",
        ]
        for key in sorted(os.environ):
            if (key.startswith(_PASS_ENV_PREFIXES) or key in _PASS_ENV) and key not in _KEEP_OUT:
                cmd += ["-e", key]  # the value comes from the launching process's environment
        cmd += ["-e", "METAFLOW_RUN_ID"]  # set by Metaflow's runtime for each task
        cli_args.entrypoint = cmd + [image, "python3", script]
        if os.environ.get("EXAMPLE_DEBUG"):
            print("local @kubernetes:", " ".join(shlex.quote(c) for c in cli_args.entrypoint))


def kubernetes(*args, **kwargs):
    """@kubernetes(image=...): Metaflow's with EXAMPLE_ON_KUBERNETES=1, else a local Docker run."""
    # Metaflow's own when asked, when deploying (argo-workflows create compiles @kubernetes), and in
    # the pods a deployment starts.
    from composer.metaflow_link import deploy_command

    if os.environ.get("EXAMPLE_ON_KUBERNETES") == "1" or deploy_command() or os.environ.get("METAFLOW_KUBERNETES_WORKLOAD"):
        from metaflow import kubernetes as metaflow_kubernetes

        return metaflow_kubernetes(*args, **kwargs)
    return _base_step_decorator(LocalKubernetesDecorator, *args, **kwargs)
