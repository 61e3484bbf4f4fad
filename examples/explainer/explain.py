"""What the explainer computes, shared by explainer_flow.py and deployed_explainer_flow.py:
permutation importances of an upstream model, with numexpr (the explainer's extra) on the
model's own numpy (the upstream environment's)."""

from __future__ import annotations


def predict(model, X):
    import numpy as np

    if model["kind"] == "linear":
        return np.hstack([X, np.ones((len(X), 1))]) @ model["coef"]
    if model["kind"] == "quadratic":
        return np.hstack([X, X ** 2, np.ones((len(X), 1))]) @ model["coef"]
    raise ValueError(f"unknown model kind {model['kind']!r}")


def explain(upstream: str) -> dict:
    """Load the model the training run `upstream` stored and rank its features by how much
    shuffling each one hurts. Needs the model's numpy: arrays pickled by numpy 2 do not load
    under numpy 1."""
    import numexpr
    import numpy as np
    from metaflow import Run, namespace

    namespace(None)  # the upstream run may belong to another user or a production namespace
    data = Run(upstream).data
    model, X, y = data.model, data.features, data.target
    rng = np.random.default_rng(0)
    base_error = float(numexpr.evaluate("(y - p) ** 2", local_dict={"y": y, "p": predict(model, X)}).mean())
    importances = []
    for j in range(X.shape[1]):
        shuffled = X.copy()
        shuffled[:, j] = rng.permutation(shuffled[:, j])
        p = predict(model, shuffled)
        importances.append(float(numexpr.evaluate("(y - p) ** 2", local_dict={"y": y, "p": p}).mean()) - base_error)
    return {"importances": importances, "numpy": np.__version__, "numexpr": numexpr.__version__,
            "upstream_numpy": data.numpy_version}
