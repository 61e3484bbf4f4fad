"""composer: compose container images for ML steps from an upstream run's environment plus extras.

    import composer
    image = composer.ref("explainer-modela-run42")   # REPO@sha256:...
    result = composer.build(upstream_run="TrainFlow/12", extra="reqs.txt", name="explainer-modela-run42")

The API functions are loaded on first use, so `import composer` (in every task of a flow)
costs nothing and importing one submodule does not load them all.
"""

from composer.version import __version__

__all__ = ["build", "pull", "record", "ref", "show", "__version__"]


def __getattr__(name: str):
    if name in ("build", "pull", "record", "ref", "show"):
        from composer import api

        return getattr(api, name)
    raise AttributeError(f"module 'composer' has no attribute {name!r}")
