"""`composer check`: find rot before a rerun needs it.

Walks names -> their histories -> every version's image (manifest, config, layers) -> the
build records describing it -> the upstream's run record and image -> the environment's
own run records, and reports each thing that is missing or does not match its digest.
Manifests and records are always fetched and hashed; blobs are HEAD-checked for presence
and size, and with `deep` downloaded and hashed as well. A registry that cannot be reached
ends the check (exit 5): only what the registry *answered* is reported as a problem.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Set

from composer.catalog.listing import names as env_names
from composer.errors import NotFoundError, VerificationError
from composer.history import read_history
from composer.model.records import BUILD_RECORD_TYPE, BuildRecord
from composer.model.refs import parse_image_ref, run_tag
from composer.oci import connect
from composer.oci.artifacts import read_artifact
from composer.oci.client import DOCKER_LIST, OCI_INDEX, Descriptor
from composer.settings import Settings
from composer.store import envs_repository, read_run_record, runs_repository


class Checker:
    def __init__(self, settings: Settings, deep: bool):
        self.settings, self.deep = settings, deep
        self.reg = connect(settings).clone()  # a client of its own: what this command saw earlier is not evidence
        self.envs, self.runs = envs_repository(settings), runs_repository(settings)
        self.problems: List[dict] = []
        self.seen: Set[str] = set()
        self.counts: Dict[str, int] = {"names": 0, "images": 0, "blobs": 0, "records": 0, "run_records": 0}

    def problem(self, what: str, where: str, digest: str, kind: str, detail: str = "") -> None:
        self.problems.append({"what": what, "where": where, "digest": digest, "problem": kind, "detail": detail})

    def guarded(self, what: str, where: str, digest: str, fn):
        """fn(), with a missing or mismatching thing reported instead of raised."""
        try:
            return fn()
        except NotFoundError as exc:
            self.problem(what, where, digest, "missing", exc.message)
        except VerificationError as exc:
            self.problem(what, where, digest, "mismatch", exc.message)
        return None

    def name(self, name: str) -> None:
        self.counts["names"] += 1
        versions = self.guarded("history", f"{self.envs}:hist-{name}", "", lambda: read_history(self.reg, self.envs, name)) or []
        current = self.reg.head_manifest(self.envs, name)
        if current is None and not versions:
            self.problem("name", f"{self.envs}:{name}", "", "missing", f"no environment named {name!r}")
            return
        images = {v.image.digest for v in versions} | ({current.digest} if current else set())
        for v in versions:
            if v.record and self.reg.head_manifest(self.envs, v.record) is None:
                self.problem(f"build record of {name} version {v.number}", f"{self.envs}@{v.record}", v.record, "missing")
        targets = {name} | {v.alias_of for v in versions if v.alias_of}
        for digest in sorted(images):
            records = self.image(self.envs, digest, f"{name} ({digest[:19]})")
            if records is not None and not any(r.name in targets for r in records):
                self.problem(f"build record of {name}", f"{self.envs}@{digest}", digest, "missing",
                             "no build record describes this version")
        own = self.guarded(f"run record of {name}", f"{self.runs}:{run_tag(name)}", "",
                           lambda: read_run_record(self.reg, self.runs, run_tag(name)))
        if own is not None:
            self.run_record(own[0].run, own[1])

    def image(self, repo: str, digest: str, what: str, records: bool = True) -> Optional[List[BuildRecord]]:
        """Check an image and (records=True) its build records; returns the records found."""
        key = f"{repo}@{digest}"
        if key in self.seen and not records:
            return []
        self.seen.add(key)
        got = self.guarded(f"image {what}", key, digest, lambda: self.reg.get_manifest(repo, digest))
        if got is None:
            if not any(p["digest"] == digest for p in self.problems):
                self.problem(f"image {what}", key, digest, "missing")
            return None
        self.counts["images"] += 1
        body, desc = got
        manifest = json.loads(body)
        if desc.media_type in (OCI_INDEX, DOCKER_LIST):
            for child in manifest.get("manifests") or []:
                self.image(repo, Descriptor.from_dict(child).digest, f"{what} platform", records=False)
        else:
            for blob in [manifest.get("config"), *(manifest.get("layers") or [])]:
                if isinstance(blob, dict):
                    self.blob(repo, Descriptor.from_dict(blob), what)
        if not records:
            return []
        found: List[BuildRecord] = []
        for ref in self.guarded(f"referrers of {what}", key, digest, lambda: self.reg.referrers(repo, digest, BUILD_RECORD_TYPE)) or []:
            got_record = self.guarded(f"build record of {what}", f"{repo}@{ref.digest}", ref.digest,
                                      lambda: read_artifact(self.reg, repo, ref.digest, BUILD_RECORD_TYPE))
            if got_record is None:
                if not any(p["digest"] == ref.digest for p in self.problems):
                    self.problem(f"build record of {what}", f"{repo}@{ref.digest}", ref.digest, "missing",
                                 "listed in the image's referrers but gone")
                continue
            record = self.guarded(f"build record of {what}", f"{repo}@{ref.digest}", ref.digest,
                                  lambda: BuildRecord.from_json(got_record[0], f"build record {ref.digest[:19]}"))
            if record is None:
                continue
            self.counts["records"] += 1
            if record.image.digest != digest:
                self.problem(f"build record of {what}", f"{repo}@{ref.digest}", ref.digest, "mismatch",
                             f"it describes {record.image.digest}")
            found.append(record)
            self.run_record(record.upstream_run, record.upstream_record)
            base = parse_image_ref(record.base.pinned)
            if base.registry == self.reg.host:
                self.image(base.repository, base.digest or "", f"base of {what}", records=False)
        return found

    def blob(self, repo: str, desc: Descriptor, what: str) -> None:
        key = f"{repo}@{desc.digest}"
        if key in self.seen:
            return
        self.seen.add(key)
        self.counts["blobs"] += 1
        size = self.guarded(f"blob of {what}", key, desc.digest, lambda: self.reg.blob_size(repo, desc.digest))
        if size is None:
            if not any(p["where"] == key for p in self.problems):
                self.problem(f"blob of {what}", key, desc.digest, "missing")
            return
        if size != desc.size:
            self.problem(f"blob of {what}", key, desc.digest, "mismatch", f"{size} bytes, the manifest says {desc.size}")
            return
        if self.deep:
            with tempfile.TemporaryDirectory(prefix="composer-check-") as tmp:
                self.guarded(f"blob of {what}", key, desc.digest,
                             lambda: self.reg.download_blob(repo, desc.digest, Path(tmp, "blob")))

    def run_record(self, run_id: str, digest: str) -> None:
        key = f"{self.runs}@{digest}"
        if key in self.seen:
            return
        self.seen.add(key)
        got = self.guarded(f"run record of {run_id}", key, digest, lambda: read_run_record(self.reg, self.runs, digest))
        if got is None:
            if not any(p["where"] == key for p in self.problems):
                self.problem(f"run record of {run_id}", key, digest, "missing")
            return
        self.counts["run_records"] += 1
        image = parse_image_ref(got[0].image.pinned)
        if image.registry == self.reg.host:
            self.image(image.repository, image.digest or "", f"image of run {run_id}", records=False)


def check(settings: Settings, names: List[str], deep: bool = False) -> dict:
    settings.require_registry()
    c = Checker(settings, deep)
    for name in names or env_names(c.reg, c.envs):
        c.name(name)
    if not names:  # every run record too
        for tag in c.reg.tags(c.runs):
            if tag.startswith("run-"):
                got = c.guarded(f"run record {tag}", f"{c.runs}:{tag}", "", lambda: read_run_record(c.reg, c.runs, tag))
                if got is not None:
                    c.run_record(got[0].run, got[1])
    return {"registry": settings.registry, "ok": not c.problems, "problems": c.problems, "checked": c.counts, "deep": deep}
