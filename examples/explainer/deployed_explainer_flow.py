"""The explainer, deployable: event-triggered by the training flows, one environment per model.

    # deploy (Argo Workflows): runs whenever ModelAFlow or ModelBFlow finishes
    python deployed_explainer_flow.py --datastore=s3 argo-workflows create
    # or by hand, locally or on Argo, for any training runs
    python deployed_explainer_flow.py run --upstreams ModelAFlow/12,ModelBFlow/34
    python deployed_explainer_flow.py --trigger ModelAFlow/12 run        # as if ModelAFlow/12 just finished

start             the upstream runs: the run(s) whose end triggered this one (current.trigger),
                  else the --upstreams parameter; fans out, one branch per upstream run
build_environment composes  upstream run's environment + envs/explainer.txt  under the name
                  explainer-<branch index>-<this run>, e.g. explainer-1-DeployedExplainerFlow-argo-
                  deployedexplainerflow-x7k2p: one environment per branch
train_explainer   @kubernetes(image=composer.ref(ENV)). Under Metaflow's runtime the reference is
                  resolved when the branch's step is launched; compiled by argo-workflows create it
                  is  REGISTRY/envs:explainer-{{inputs.parameters.split-index}}-DeployedExplainerFlow-
                  argo-{{workflow.name}}, which Argo fills when it creates the branch's pod.
                  composer.pull at step start verifies the pod runs exactly that environment
join, end         collect what each branch found

The name may only use what is known when a pod is created: {run_id}, {index} (the foreach
branch) and constants. The model's type is read inside a step, so it cannot be in the name
(composer refuses it at deploy time); explainer_flow.py, run by Metaflow's runtime, can.
"""

import os

from metaflow import FlowSpec, Parameter, Run, current, environment, namespace, step, trigger_on_finish

import composer
from composer.metaflow_link import this_run
from explain import explain
from local_kubernetes import kubernetes

ENV = "explainer-{index}-{run_id}"  # index: the foreach branch (self.index); run_id: this run
EXTRAS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "envs", "explainer.txt")
# The steps that call composer reach the registry the image references name (set when deploying).
COMPOSER = {"COMPOSER_REGISTRY": os.environ.get("COMPOSER_REGISTRY", "")}


@trigger_on_finish(flows=["ModelAFlow", "ModelBFlow"])
class DeployedExplainerFlow(FlowSpec):
    upstreams = Parameter("upstreams", default="", help="training runs to explain when started by hand, "
                                                        "comma-separated: ModelAFlow/12,ModelBFlow/34")

    @step
    def start(self):
        trigger = current.get("trigger")
        if trigger is not None:  # started because training runs finished
            self.upstream_runs = [run.pathspec for run in trigger.runs]
        else:
            self.upstream_runs = [r.strip() for r in self.upstreams.split(",") if r.strip()]
        if not self.upstream_runs:
            raise ValueError("nothing to explain: pass --upstreams FLOW/RUN[,FLOW/RUN...] or --trigger FLOW/RUN")
        self.next(self.build_environment, foreach="upstream_runs")

    @environment(vars=COMPOSER)
    @step
    def build_environment(self):
        self.upstream = self.input
        namespace(None)
        self.model_type = Run(self.upstream).data.model_type
        # One environment per branch: the branch index and the run id make its name.
        result = composer.build(upstream_run=self.upstream, extra=EXTRAS, name=ENV,
                                variables={"index": self.index, "run_id": this_run()})
        self.env_name, self.env_ref = result.name, result.ref
        print(f"branch {self.index}: composed {result.name} -> {result.ref} ({'cache hit' if result.cached else 'built'})")
        self.next(self.train_explainer)

    @environment(vars=COMPOSER)
    @kubernetes(image=composer.ref(ENV))  # this run's, this branch's environment
    @step
    def train_explainer(self):
        pulled = composer.pull(self.env_name)  # the pod runs exactly that environment, and says so
        result = explain(self.upstream)
        self.explained = {"upstream": self.upstream, "model_type": self.model_type, "env": pulled["ref"],
                          "env_name": self.env_name, "index": self.index, **result}
        self.next(self.join)

    @step
    def join(self, inputs):
        self.explained = sorted((i.explained for i in inputs), key=lambda e: e["index"])
        self.next(self.end)

    @step
    def end(self):
        for e in self.explained:
            ranked = sorted(range(len(e["importances"])), key=lambda j: -e["importances"][j])
            print(f"{e['model_type']} ({e['upstream']}): feature importance order {ranked}; "
                  f"explained in {e['env_name']} = {e['env']} with numpy {e['numpy']}")


if __name__ == "__main__":
    DeployedExplainerFlow()
