"""Fixtures for the unit tests of publish, lease, history, catalog, rebuild and pull.

They run against tests/fakes/registry.py: an in-memory distribution registry (a real HTTP
server on 127.0.0.1, no referrers API, like distribution 2.8). Nothing here needs Docker,
BuildKit, uv or a network beyond that server.

- `fake_registry`: a fresh FakeRegistry per test.
- `fake_settings`: Settings for `<fake>/t1` (environments in t1/envs, run records in t1/runs),
  with small lease timings and two registry attempts.
- `lab`: a `Lab` on both, with an upstream already in place: a base image at
  t1/models/model-a:v1 and run "TrainFlow/1" recorded as having run in it. Its helpers push
  tiny valid images (a config blob, layers, a Docker or OCI manifest), make valid run and
  build records and compositions, and publish with a stand-in builder (`lab.publish`).
"""

from __future__ import annotations

import dataclasses
import json
import platform as _platform
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import pytest

from composer.kinds.base import Composition
from composer.kinds.pip import Lock as PipLock
from composer.kinds.pip import PipKind
from composer.model.canonical import sha256_digest
from composer.model.records import (
    BuildRecord, Distribution, Image, Lock, LockedPackage, Platform, Python, RunRecord, utc_now,
)
from composer.model.spec import SPEC_VERSION, spec_document, spec_hash
from composer.oci import connect
from composer.oci.client import DOCKER_MANIFEST, OCI_MANIFEST, Descriptor
from composer.publish import BuildResult, Provenance, publish, unique_tag
from composer.settings import Settings, load_settings
from composer.store import envs_repository, runs_repository, write_run_record
from composer.upstream.runs import load_run
from composer.version import __version__
from tests.fakes import FakeRegistry, registry_fixture

fake_registry = pytest.fixture(registry_fixture)

PREFIX = "t1"
MODEL_REPO = f"{PREFIX}/models/model-a"
UPSTREAM_RUN = "TrainFlow/1"

_MEDIA = {  # manifest type -> (config type, layer type)
    DOCKER_MANIFEST: ("application/vnd.docker.container.image.v1+json", "application/vnd.docker.image.rootfs.diff.tar.gzip"),
    OCI_MANIFEST: ("application/vnd.oci.image.config.v1+json", "application/vnd.oci.image.layer.v1.tar+gzip"),
}


@pytest.fixture
def fake_settings(fake_registry: FakeRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))  # never the user's credentials
    monkeypatch.delenv("COMPOSER_SPEC_HASH", raising=False)
    monkeypatch.delenv("COMPOSER_TEST_CRASH_AT", raising=False)
    monkeypatch.chdir(tmp_path)  # no composer.toml from wherever pytest was started
    loaded = load_settings({"registry": f"{fake_registry.host}/{PREFIX}"}, env={})
    # lease_renew is longer than any build here, so a renewal never lands between the writes a test
    # checks the order of; the lease tests shorten it where they need renewals.
    # registry_backoff: retries still happen, without the wait
    return dataclasses.replace(loaded, registry_attempts=2, registry_backoff=0.001, lease_poll=0.02, lease_stale=30.0, lease_renew=5.0,
                               lease_wait=5.0)


class Lab:
    """The fake registry, settings for it, and helpers that put valid things into it."""

    def __init__(self, fake: FakeRegistry, settings: Settings):
        self.fake, self.settings = fake, settings
        self.reg = connect(settings)
        self.host = settings.registry_host
        self.envs = envs_repository(settings)  # t1/envs
        self.runs = runs_repository(settings)  # t1/runs
        self.builds: List[str] = []  # the name of every build the stand-in builder ran, in order
        self.base: Optional[Image] = None
        self.upstream_record: Optional[str] = None
        self.now: Callable[[], str] = utc_now  # the clock records are stamped with (second resolution)

    # -- images ----------------------------------------------------------------------------------
    def push_image(self, repo: str, tag: Optional[str] = None, *, layers: Sequence[bytes] = (b"base layer",),
                   on: Optional[Image] = None, media_type: str = DOCKER_MANIFEST) -> Descriptor:
        """A tiny valid image in repo: config blob, `on`'s layers first (blobs copied into repo),
        then `layers`; the manifest goes over HTTP, under tag (or by digest). Returns its descriptor."""
        config_type, layer_type = _MEDIA[media_type]
        descs: List[dict] = []
        if on is not None:
            on_repo = on.repository.split("/", 1)[1]
            body, _ = self.reg.get_manifest(on_repo, on.digest)
            for layer in json.loads(body)["layers"]:
                data = self.fake.blob(on_repo, layer["digest"])
                assert data is not None, f"{on.pinned} lacks its layer {layer['digest']}"
                self.fake.put_blob(repo, data)
                descs.append(layer)
        for data in layers:
            descs.append({"mediaType": layer_type, "digest": self.fake.put_blob(repo, data), "size": len(data)})
        config = json.dumps({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in descs]}}).encode()
        manifest = {"schemaVersion": 2, "mediaType": media_type,
                    "config": {"mediaType": config_type, "digest": self.fake.put_blob(repo, config), "size": len(config)},
                    "layers": descs}
        body = json.dumps(manifest, indent=2).encode()
        desc, _ = self.reg.put_manifest(repo, tag or sha256_digest(body), body, media_type)
        return desc

    def base_image(self, repo: str = MODEL_REPO, tag: str = "v1", layer: bytes = b"base layer",
                   media_type: str = DOCKER_MANIFEST) -> Image:
        """An upstream image: what a run record names."""
        desc = self.push_image(repo, tag, layers=[layer], media_type=media_type)
        return Image(f"{self.host}/{repo}", desc.digest, tag)

    # -- records ---------------------------------------------------------------------------------
    @staticmethod
    def python() -> Python:
        # The running interpreter's version, so that pull's in-image check can pass in this process.
        return Python("/opt/venv/bin/python", _platform.python_version(), prefix="/opt/venv", kind="venv",
                      site_packages=f"/opt/venv/lib/python{'.'.join(_platform.python_version_tuple()[:2])}/site-packages")

    @staticmethod
    def platform() -> Platform:
        return Platform("linux", "amd64", None, "glibc", "2.36", "x86_64-manylinux_2_36")

    def run_record(self, run: str, image: Image, *, distributions: Iterable[Tuple[str, str]] = (("attrs", "23.1.0"),),
                   source: str = "image") -> RunRecord:
        """A valid run record, checked by the strict reader like one read from a registry."""
        record = RunRecord(run=run, image=image, python=self.python(), platform=self.platform(),
                           distributions=tuple(Distribution(n, v) for n, v in sorted(distributions)),
                           distributions_source=source, created=self.now(), composer_version=__version__)
        return RunRecord.from_json(record.to_json())

    def record_run(self, run: str, image: Image, **kw) -> Tuple[RunRecord, str]:
        """Store a run record, as `composer record` does; returns it and its manifest digest."""
        record = self.run_record(run, image, **kw)
        return record, write_run_record(self.reg, self.runs, record)

    def composition(self, upstream: RunRecord, packages: Iterable[Tuple[str, str]] = (("iniconfig", "2.0.0"),),
                    requirements: Optional[Sequence[str]] = None) -> Composition:
        """A locked pip composition on upstream: the lock holds packages (hashes made up)."""
        locked = [{"name": n, "version": v, "hashes": [sha256_digest(f"{n}-{v}.whl".encode())]} for n, v in packages]
        reqs = sorted(requirements if requirements is not None else [f"{n}=={v}" for n, v in packages])
        lock = PipLock(requirements=list(reqs), packages=locked,
                       added=[p for p in locked if p["name"] not in upstream.pins])
        spec = spec_hash(spec_document(base_digest=upstream.image.digest, python=upstream.python.to_json(),
                                       platform=upstream.platform.to_json(), packages=locked, template="pip/1"))
        return Composition(kind=PipKind(), requirements=tuple(reqs), lock=lock, extra=None, template="pip/1", spec_hash=spec)

    def build_record(self, name: str, comp: Composition, upstream: RunRecord, provenance: Provenance, digest: str,
                     builder: str = "daemonless") -> BuildRecord:
        """The record a builder makes for the image it pushed (as composer.pipeline.build_and_record)."""
        record = BuildRecord(
            name=name, image=Image(f"{self.host}/{self.envs}", digest, unique_tag(name, comp.spec_hash)),
            base=provenance.base, upstream_run=provenance.upstream_run, upstream_record=provenance.upstream_record,
            python=upstream.python, platform=upstream.platform,
            lock=Lock(requirements=comp.requirements,
                      packages=tuple(LockedPackage(p["name"], p["version"], tuple(p["hashes"])) for p in comp.lock.packages),
                      added=tuple(p["name"] for p in comp.lock.added)),
            spec_hash=comp.spec_hash, spec_version=SPEC_VERSION, builder=builder,
            dockerfile=f"FROM {upstream.image.pinned}\nRUN install the lock\n", created=self.now(),
            composer_version=__version__, inputs=dict(provenance.inputs),
        )
        return BuildRecord.from_json(record.to_json())

    def builder(self, name: str, comp: Composition, upstream: RunRecord, provenance: Provenance,
                media_type: str = OCI_MANIFEST) -> Callable[[], Tuple[BuildRecord, Image]]:
        """A build_it for publish: pushes the composed image (the upstream image's layers, then one
        layer of its own, the same for the same spec, as the daemonless builder's) under the unique
        tag and returns its record."""

        def build_it() -> Tuple[BuildRecord, Image]:
            self.builds.append(name)
            desc = self.push_image(self.envs, unique_tag(name, comp.spec_hash), on=upstream.image,
                                   layers=[f"layer for {comp.spec_hash}".encode()], media_type=media_type)
            record = self.build_record(name, comp, upstream, provenance, desc.digest)
            return record, record.image

        return build_it

    # -- the upstream every test starts from, and publishing ------------------------------------
    def setup_upstream(self) -> None:
        self.base = self.base_image()
        _, self.upstream_record = self.record_run(UPSTREAM_RUN, self.base)

    def provenance(self, upstream_run: str, extra: str = "extras.txt") -> Tuple[RunRecord, Provenance]:
        upstream, digest = load_run(self.settings, upstream_run)
        return upstream, Provenance(upstream_run=upstream_run, upstream_record=digest, base=upstream.image,
                                    inputs={"extra": str(extra)})

    def publish(self, name: str, upstream_run: str = UPSTREAM_RUN, *,
                packages: Iterable[Tuple[str, str]] = (("iniconfig", "2.0.0"),),
                requirements: Optional[Sequence[str]] = None, update: bool = False, run_id: Optional[str] = None,
                extra: str = "extras.txt", build_it: Optional[Callable[[], Tuple[BuildRecord, Image]]] = None,
                media_type: str = OCI_MANIFEST) -> BuildResult:
        """composer build, from the upstream's record on, with the stand-in builder."""
        upstream, provenance = self.provenance(upstream_run, extra)
        comp = self.composition(upstream, packages, requirements)
        return publish(self.settings, self.reg, self.envs, name=name, spec=comp.spec_hash, update=update, run_id=run_id,
                       provenance=provenance, upstream=upstream, comp=comp,
                       build_it=build_it or self.builder(name, comp, upstream, provenance, media_type))

    # -- looking --------------------------------------------------------------------------------
    def manifest_puts(self, since: int = 0) -> List[str]:
        """The manifests PUT since request number `since`, as 'repo-leaf:reference'."""
        out = []
        for method, target in self.fake.requests[since:]:
            if method == "PUT" and "/manifests/" in target:
                repo, _, ref = target[len("/v2/"):].partition("/manifests/")
                out.append(f"{repo.rsplit('/', 1)[-1]}:{ref.split('?')[0]}")
        return out

    def env_tags(self) -> List[str]:
        return self.fake.tags(self.envs)

    def run_tags(self) -> List[str]:
        return self.fake.tags(self.runs)


@pytest.fixture
def lab(fake_registry: FakeRegistry, fake_settings: Settings) -> Lab:
    """A Lab with an upstream in place: model-a:v1 and run TrainFlow/1 recorded on it."""
    out = Lab(fake_registry, fake_settings)
    out.setup_upstream()
    return out


@pytest.fixture
def bare_lab(fake_registry: FakeRegistry, fake_settings: Settings) -> Lab:
    """A Lab on an empty registry."""
    return Lab(fake_registry, fake_settings)

