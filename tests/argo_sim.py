"""What the Argo Workflows controller does with a container's `image` when it creates a pod,
for tests that have no cluster: substitute the *simple* template tags
(https://argo-workflows.readthedocs.io/en/latest/variables/) in a WorkflowTemplate that
Metaflow's `argo-workflows create` wrote, for a workflow named W submitted from it.

Tags substituted (Argo's "Global" and "Input" variables, and `item` in a withParam loop):

    {{workflow.name}}              the workflow's name (W)
    {{workflow.namespace}}         its namespace
    {{workflow.parameters.NAME}}   spec.arguments.parameters (the submitted value, else the template's)
    {{inputs.parameters.NAME}}     the parameters the calling DAG task passes to the template
    {{tasks.T.outputs.parameters.NAME}}  outputs of an earlier DAG task (given by the test: what
                                   the pods would write, e.g. Metaflow's num-splits `[0, 1]`)
    {{item}}                       one element of a task's withParam list (a foreach's branches)

The controller walks the DAG from the entrypoint; a task with `withParam` runs once per item.
An image tag that no variable fills is an error here (the controller would leave the tag in the
image, which is not a valid reference, and the pod would not start). Expression tags
(`{{=...}}`) are not simulated and are an error in an image.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Dict, List, Optional

TAG = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")


class Unresolved(AssertionError):
    pass


def substitute(text: str, scope: Dict[str, str], strict: bool = True) -> str:
    def one(match: "re.Match[str]") -> str:
        key = match.group(1)
        if key.startswith("="):
            if strict:
                raise Unresolved(f"expression tag {match.group(0)!r} is not simulated")
            return match.group(0)
        if key in scope:
            return scope[key]
        if strict:
            raise Unresolved(f"no variable fills {match.group(0)!r} in {text!r}")
        return match.group(0)

    return TAG.sub(one, text)


@dataclass
class Pod:
    template: str
    inputs: Dict[str, str]
    image: str


def pods(workflow_template: dict, workflow_name: str, outputs: Optional[Dict[str, Dict[str, str]]] = None,
         parameters: Optional[Dict[str, str]] = None, namespace: str = "default") -> List[Pod]:
    """Every container pod the controller creates for workflow W, with its image substituted."""
    spec = workflow_template["spec"]
    templates = {t["name"]: t for t in spec["templates"]}
    given = parameters or {}
    scope = {"workflow.name": workflow_name, "workflow.namespace": namespace}
    for p in spec.get("arguments", {}).get("parameters", []):
        scope[f"workflow.parameters.{p['name']}"] = given.get(p["name"], p.get("value", ""))
    out: List[Pod] = []

    def run(name: str, inputs: Dict[str, str]) -> None:
        t = templates[name]
        local = {**scope, **{f"inputs.parameters.{k}": v for k, v in inputs.items()}}
        if "container" in t:
            out.append(Pod(name, inputs, substitute(t["container"]["image"], local)))
            return
        if "dag" not in t:
            return
        for task in t["dag"]["tasks"]:
            for key, value in (outputs or {}).get(task["name"], {}).items():
                local[f"tasks.{task['name']}.outputs.parameters.{key}"] = value
        for task in t["dag"]["tasks"]:
            items = [None]
            if "withParam" in task:
                items = json.loads(substitute(task["withParam"], local))
            for item in items:
                s = dict(local) if item is None else {**local, "item": str(item)}
                args = {p["name"]: substitute(p.get("value", ""), s, strict=False)
                        for p in task.get("arguments", {}).get("parameters", [])}
                run(task["template"], args)

    run(spec["entrypoint"], {})
    return out
