"""Model B: a ridge regression on quadratic features, trained with numpy 2.2 in its own image.

Same pattern as model A with another dependency set: `train-model-b` is the runtime image
+ envs/model-b.txt. Arrays pickled by numpy 2 do not load under numpy 1, so whatever
works on this model has to run in (an extension of) this environment.
"""

from metaflow import FlowSpec, step

import composer
from local_kubernetes import kubernetes

ENV = "train-model-b"


class ModelBFlow(FlowSpec):
    @step
    def start(self):
        self.model_type = "model-b"
        self.next(self.train)

    @kubernetes(image=composer.ref(ENV))
    @step
    def train(self):
        composer.pull(ENV)
        import numpy as np

        rng = np.random.default_rng(11)
        X = rng.uniform(-2, 2, size=(256, 3))
        y = 2.0 * X[:, 0] ** 2 - X[:, 1] + 0.2 * rng.normal(size=256)
        design = np.hstack([X, X ** 2, np.ones((len(X), 1))])
        alpha = 0.1
        coef = np.linalg.solve(design.T @ design + alpha * np.eye(design.shape[1]), design.T @ y)
        self.model = {"kind": "quadratic", "coef": coef, "alpha": alpha}
        self.features, self.target = X, y
        self.numpy_version = np.__version__
        self.next(self.end)

    @step
    def end(self):
        print(f"{self.model_type} trained with numpy {self.numpy_version}")


if __name__ == "__main__":
    ModelBFlow()
