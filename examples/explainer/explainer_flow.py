"""The explainer flow: explain any upstream model, in that model's own environment plus
the explainer's extra packages, composed while the flow runs.

    python explainer_flow.py run --upstream ModelAFlow/<run id>

start             reads the upstream run's model type (Metaflow client)
build_environment composes  upstream run's environment + envs/explainer.txt  under the
                  name  explainer-<model type>-<this run>, e.g.
                  explainer-model-a-ExplainerFlow-1732...; the environment is found
                  through the upstream run's task metadata (composer pull wrote it)
train_explainer   declares  @kubernetes(image=composer.ref(ENV))  with ENV the name
                  *template*: the image is resolved when the step is launched, after
                  build_environment has run; composer.pull at its start verifies that
                  the task runs in exactly that environment and links the task to it
"""

from metaflow import FlowSpec, Parameter, Run, namespace, step

import composer
from composer.metaflow_link import this_run
from explain import explain
from local_kubernetes import kubernetes

ENV = "explainer-{model}-{run_id}"  # run_id: this run (Flow/Id); model: the upstream's type
EXTRAS = __file__.rsplit("/", 1)[0] + "/envs/explainer.txt"


class ExplainerFlow(FlowSpec):
    upstream = Parameter("upstream", required=True, help="the training run to explain, e.g. ModelAFlow/1732...")

    @step
    def start(self):
        namespace(None)  # the upstream run may belong to another user or a production namespace
        self.model_type = Run(self.upstream).data.model_type
        self.next(self.build_environment)

    @step
    def build_environment(self):
        result = composer.build(upstream_run=self.upstream, extra=EXTRAS, name=ENV,
                                variables={"model": self.model_type}, run_id=this_run())
        self.env_name, self.env_ref = result.name, result.ref
        print(f"composed {result.name} -> {result.ref} ({'cache hit' if result.cached else 'built'})")
        self.next(self.train_explainer)

    @kubernetes(image=composer.ref(ENV))  # a name template: resolved when this step is launched
    @step
    def train_explainer(self):
        pulled = composer.pull(self.env_name)  # this task runs in exactly that environment, and says so
        result = explain(self.upstream)  # needs the model's numpy and the explainer's numexpr
        self.importances = result["importances"]
        self.explained = {"upstream": self.upstream, "model_type": self.model_type, "env": pulled["ref"],
                          "numpy": result["numpy"], "numexpr": result["numexpr"],
                          "upstream_numpy": result["upstream_numpy"]}
        self.next(self.end)

    @step
    def end(self):
        ranked = sorted(range(len(self.importances)), key=lambda j: -self.importances[j])
        print(f"{self.model_type} ({self.upstream}): feature importance order {ranked}; "
              f"explained in {self.explained['env']} with numpy {self.explained['numpy']}")


if __name__ == "__main__":
    ExplainerFlow()
