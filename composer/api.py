"""The Python API: what flows and CI scripts call. Settings come from the environment
and composer.toml unless given; every function returns digests, never bare tags."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

from composer import metaflow_link  # registers Metaflow as a run source and pull hook (no Metaflow import)
from composer.catalog import resolve
from composer.catalog.pull import pull as _pull
from composer.metaflow_link import ref_at_launch
from composer.pipeline import build as _build
from composer.publish import BuildResult
from composer.settings import Settings, load_settings
from composer.upstream.runs import record_run

__all__ = ["build", "metaflow_link", "pull", "record", "ref", "show"]

_REFS: Dict[Tuple[str, Optional[str]], str] = {}


def _settings(settings: Optional[Settings], registry: Optional[str]) -> Settings:
    """Settings for one call: registry clients of its own, so what one call's clients remember
    (content they read, by digest) never answers for a later call."""
    return settings.for_one_call() if settings is not None else load_settings({"registry": registry})


def build(
    upstream_run: str,
    extra: Union[str, Path, Sequence[str]],
    name: Optional[str] = None,
    *,
    variables: Optional[Dict[str, str]] = None,
    run_id: Optional[str] = None,
    update: bool = False,
    registry: Optional[str] = None,
    settings: Optional[Settings] = None,
    upstream_step: Optional[str] = None,
) -> BuildResult:
    """Compose (or find) the image for upstream_run + extra; see BuildResult for the fields.

    extra: a requirements.txt, pyproject.toml or environment.yml path, or requirement strings
    (["pandas>=2.2", "shap"]), as flytekit's ImageSpec(packages=...) takes them.

    upstream_run may be a Metaflow run pathspec (Flow/Run[/step]); upstream_step picks the step
    whose environment to use when the run's steps used different ones."""
    return _build(_settings(settings, registry), upstream_run, extra, name, variables, run_id, update,
                  upstream_step=upstream_step)


def ref(name: str, *, registry: Optional[str] = None, settings: Optional[Settings] = None) -> str:
    """REPO@sha256:... of the environment called name, checked against its record.

    Use it where a step's image is declared: @kubernetes(image=composer.ref("explainer-...")).
    A name template (with {placeholders}, e.g. "explainer-{model}-{run_id}") names an environment
    built later in the same run: it returns a LaunchRef, resolved when Metaflow launches the step
    (see composer/metaflow_link.py). The answer is kept for the life of the process: a name
    moved later (--update) is seen by the next process, and composer.pull still verifies at step start.
    """
    if "{" in name:  # Metaflow: resolved at launch
        return ref_at_launch(name, registry=registry, settings=settings)
    s = _settings(settings, registry)
    key = (name, s.registry)
    if key not in _REFS:  # once per process: a flow file is imported again in every task
        _REFS[key] = resolve(s, name)[0]
    return _REFS[key]


def pull(name: str, *, use_docker: bool = True, registry: Optional[str] = None, settings: Optional[Settings] = None) -> dict:
    """Step start: resolve name, verify its record; pull the image by digest (outside it) or check
    that this process runs in exactly the recorded environment (inside it)."""
    return _pull(_settings(settings, registry), name, use_docker=use_docker)


def show(name: str, *, registry: Optional[str] = None, settings: Optional[Settings] = None) -> dict:
    """The build record (digest manifest) of the environment called name."""
    _, record, _ = resolve(_settings(settings, registry), name)
    return record.to_json()


def record(run: str, image: str, requirements: Optional[str] = None, *, update: bool = False,
           registry: Optional[str] = None, settings: Optional[Settings] = None) -> dict:
    """Register the image run ran in; returns the run record with its digest under "record_digest".
    A run already recorded with another image needs update=True (the old record stays listed)."""
    rec, digest = record_run(_settings(settings, registry), run, image, requirements, update=update)
    return {**rec.to_json(), "record_digest": digest}
