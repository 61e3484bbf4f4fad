"""composer: compose container images for ML steps from an upstream run's environment plus extras.

    import composer
    image = composer.ref("explainer-modela-run42")   # REPO@sha256:...
    result = composer.build(upstream_run="TrainFlow/12", extra="reqs.txt", name="explainer-modela-run42")
"""

__version__ = "0.1.0"

from .api import build, pull, record, ref, show  # noqa: E402

__all__ = ["build", "pull", "record", "ref", "show", "__version__"]
