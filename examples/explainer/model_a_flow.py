"""Model A: a least-squares linear model, trained with numpy 1.26 inside its own image.

The training step runs in the composed environment `train-model-a` (runtime image +
envs/model-a.txt). Its first line, composer.pull, checks that the task really runs in
that environment and registers it as task metadata: that is how a later
`composer build --upstream-run ModelAFlow/<id>` finds the environment of this run.
"""

from metaflow import FlowSpec, step

import composer
from local_kubernetes import kubernetes

ENV = "train-model-a"


class ModelAFlow(FlowSpec):
    @step
    def start(self):
        self.model_type = "model-a"
        self.next(self.train)

    @kubernetes(image=composer.ref(ENV))  # exists before the run: REPO@sha256:... right away
    @step
    def train(self):
        composer.pull(ENV)  # step start: verify the environment, link this task to it
        import numpy as np

        rng = np.random.default_rng(7)
        X = rng.normal(size=(256, 4))
        y = X @ np.array([3.0, -2.0, 0.5, 0.0]) + 1.0 + rng.normal(scale=0.1, size=256)
        coef, *_ = np.linalg.lstsq(np.hstack([X, np.ones((len(X), 1))]), y, rcond=None)
        # numpy objects: whoever loads them needs a numpy that can unpickle them.
        self.model = {"kind": "linear", "coef": coef}
        self.features, self.target = X, y
        self.numpy_version = np.__version__
        self.next(self.end)

    @step
    def end(self):
        print(f"{self.model_type} trained with numpy {self.numpy_version}")


if __name__ == "__main__":
    ModelAFlow()
