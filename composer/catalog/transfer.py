"""Surviving the loss of the registry: `export` (names, versions or runs into one OCI
image-layout archive), `import` (an archive into any registry) and `mirror` (registry to
registry, incrementally).

All three share one model, a *plan*: the manifests to carry, each with its *role* (`envs`,
`runs`, or `repo:PATH` for another repository of the source host, an upstream image), its
exact bytes and the tags it had. Blobs follow from the manifests. What a composed
environment needs is collected from the source registry:

    name -> its history (hist-NAME) -> every version's image (manifest, config, layers)
         -> the image's referrers (build records) and referrers index (sha256-<hex>)
         -> its unique and spec tags -> the upstream's run record, the run's history,
            the upstream image (when it lives in the same registry)
         -> the environment's own run records (under its name and run ids)

and written to the target in dependency order: blobs, image manifests, records, indexes,
then tags, names last. The same digests everywhere: manifests are written byte for byte.
A name or run that already points elsewhere in the target is refused before anything is
written, unless `update` (the name then moves, and the move is a new version of it).
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Set, Tuple

from composer.catalog.listing import names as env_names
from composer.errors import NotFoundError, UsageError, VerificationError
from composer.history import Version, append_version, history_index, history_tag, parse_history, read_history
from composer.model.canonical import canonical_json, sha256_digest
from composer.model.refs import REPOSITORY_RE, RESERVED_PREFIXES, TAG_RE, parse_image_ref, referrers_tag, run_tag
from composer.oci import connect
from composer.oci.client import DOCKER_LIST, OCI_EMPTY, OCI_INDEX, OCI_MANIFEST, Descriptor, Registry
from composer.oci.layout import REF_NAME, LayoutReader, LayoutWriter, oci_form
from composer.settings import Settings, validate
from composer.store import build_records_of, envs_repository, read_run_record, runs_repository

FORMAT = "composer.export/v1"
A_FORMAT = "dev.composer.export"
A_SOURCE = "dev.composer.export.source"
A_NAMES = "dev.composer.export.names"
A_WITHOUT_BASE = "dev.composer.export.without-base"
A_ROLE = "dev.composer.repository"
A_TAGS = "dev.composer.tags"
A_IMAGE = "dev.composer.image"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)


@dataclass
class Item:
    role: str  # envs | runs | repo:PATH
    digest: str
    media_type: str
    body: bytes
    tags: List[str] = field(default_factory=list)

    @property
    def doc(self) -> dict:
        doc = json.loads(self.body)
        return doc if isinstance(doc, dict) else {}

    @property
    def kind(self) -> str:
        """image | artifact | index: the order they are written in."""
        if self.media_type in INDEX_TYPES:
            return "index"
        doc = self.doc
        if doc.get("artifactType") or (doc.get("config") or {}).get("mediaType") == OCI_EMPTY:
            return "artifact"
        return "image"

    def blobs(self) -> List[dict]:
        if self.kind == "index":
            return []
        doc = self.doc
        return [d for d in [doc.get("config"), *(doc.get("layers") or [])] if isinstance(d, dict)]


@dataclass
class Plan:
    source: str  # HOST/PREFIX it was collected from
    items: Dict[Tuple[str, str], Item] = field(default_factory=dict)
    names: List[str] = field(default_factory=list)
    external: Set[str] = field(default_factory=set)  # blobs left out (--without-base)

    def add(self, role: str, digest: str, media_type: str, body: bytes, tag: Optional[str] = None) -> Item:
        item = self.items.get((role, digest))
        if item is None:
            item = self.items[(role, digest)] = Item(role, digest, media_type, body)
        if tag and tag not in item.tags:
            item.tags.append(tag)
        return item


# -- collecting from a registry ------------------------------------------------------------------
class Collector:
    def __init__(self, settings: Settings, without_base: bool = False):
        self.settings, self.without_base = settings, without_base
        self.reg = connect(settings)
        self.envs, self.runs = envs_repository(settings), runs_repository(settings)
        self.plan = Plan(settings.registry)
        self._runs_by_image: Optional[Dict[str, List[Tuple[str, str]]]] = None
        self._images_done: Dict[Tuple[str, str], bool] = {}  # -> with its records

    def role(self, path: str) -> str:
        return "envs" if path == self.envs else "runs" if path == self.runs else f"repo:{path}"

    def repo(self, role: str) -> str:
        return self.envs if role == "envs" else self.runs if role == "runs" else role[5:]

    def add(self, what: str) -> None:
        """A NAME, NAME@N or a run id."""
        name, _, version = what.partition("@")
        if TAG_RE.match(name) and not name.startswith(RESERVED_PREFIXES):
            current = self.reg.head_manifest(self.envs, name)
            versions = read_history(self.reg, self.envs, name)
            if current is not None or versions:
                return self.add_name(name, version, current, versions)
        got = read_run_record(self.reg, self.runs, run_tag(what))
        if got is None:
            raise NotFoundError(f"no environment, version or run {what!r} in {self.settings.registry}",
                                "see composer ls and composer history")
        self.add_run(what, got[1])

    def add_name(self, name: str, version: str, current: Optional[Descriptor], versions: List[Version]) -> None:
        if version:
            chosen = [v for v in versions if version.isdigit() and v.number == int(version)]
            if not chosen:
                raise NotFoundError(f"{name!r} has no version {version}", f"see composer history {name}")
            versions, head = chosen, chosen[0].image.digest
            body = history_index(name, chosen)
            self.plan.add("envs", sha256_digest(body), OCI_INDEX, body, history_tag(name))
        else:
            head = current.digest if current is not None else versions[-1].image.digest
            got = self.reg.get_manifest(self.envs, history_tag(name))
            if got is not None:
                self.plan.add("envs", got[1].digest, got[1].media_type, got[0], history_tag(name))
        for v in versions:
            self.add_image("envs", v.image.digest, records=True)
            if v.record:
                self.add_manifest("envs", v.record)
        self.add_image("envs", head, records=True)
        self.plan.items[("envs", head)].tags.append(name)
        self.plan.names.append(name)
        self.add_own_runs({v.image.digest for v in versions} | {head})

    def add_run(self, run_id: str, record_digest: str) -> None:
        self.add_manifest("runs", record_digest, run_tag(run_id))
        self.add_run_history(run_id)
        record, _ = read_run_record(self.reg, self.runs, record_digest) or (None, None)
        assert record is not None
        image = parse_image_ref(record.image.pinned)
        if image.registry == self.reg.host:
            self.add_image(self.role(image.repository), image.digest or "", records=image.repository == self.envs)

    def add_run_history(self, run_id: str) -> None:
        got = self.reg.get_manifest(self.runs, history_tag(run_tag(run_id)))
        if got is None:
            return
        self.plan.add("runs", got[1].digest, got[1].media_type, got[0], history_tag(run_tag(run_id)))
        for v in parse_history(got[0], run_tag(run_id)):
            self.add_manifest("runs", v.image.digest)

    def add_manifest(self, role: str, digest: str, tag: Optional[str] = None) -> Item:
        """A manifest and its blobs (records, run records: small documents)."""
        got = self.reg.get_manifest(self.repo(role), digest)
        if got is None:
            raise NotFoundError(f"{self.settings.registry_host}/{self.repo(role)}@{digest} is missing",
                                "run composer check; rebuild or re-record what lost it")
        return self.plan.add(role, digest, got[1].media_type, got[0], tag)

    def add_image(self, role: str, digest: str, records: bool) -> None:
        done = self._images_done.get((role, digest))
        if done is not None and (done or not records):
            return
        self._images_done[(role, digest)] = records
        repo = self.repo(role)
        item = self.add_manifest(role, digest)
        if item.kind == "index":  # a multi-platform image: every platform's manifest
            for child in item.doc.get("manifests") or []:
                self.add_image(role, Descriptor.from_dict(child).digest, records=False)
        if not records:
            return
        for desc in self.reg.referrers(repo, digest):
            self.add_manifest(role, desc.digest)
        index = self.reg.get_manifest(repo, referrers_tag(digest))
        if index is not None:
            self.plan.add(role, index[1].digest, index[1].media_type, index[0], referrers_tag(digest))
        for record, _ in build_records_of(self.reg, repo, digest):
            for tag in (record.image.tag, "spec-" + record.spec_hash.split(":", 1)[1]):
                current = self.reg.head_manifest(repo, tag) if tag else None
                if current is not None and current.digest == digest and tag not in item.tags:
                    item.tags.append(tag)
            upstream = self.reg.head_manifest(self.runs, run_tag(record.upstream_run))
            self.add_manifest("runs", record.upstream_record,
                              run_tag(record.upstream_run) if upstream and upstream.digest == record.upstream_record else None)
            self.add_run_history(record.upstream_run)
            base = parse_image_ref(record.base.pinned)
            if base.registry == self.reg.host:
                self.add_image(self.role(base.repository), base.digest or "", records=False)
            if self.without_base:
                base_item = self.plan.items.get((self.role(base.repository), base.digest or ""))
                for blob in (base_item.blobs() if base_item else []):
                    self.plan.external.add(blob["digest"])

    def add_own_runs(self, images: Set[str]) -> None:
        """Run records naming one of these images (composed environments: under the name, under run ids)."""
        if self._runs_by_image is None:
            self._runs_by_image = {}
            for tag in self.reg.tags(self.runs):
                if tag.startswith("run-"):
                    got = read_run_record(self.reg, self.runs, tag)
                    if got is not None:
                        self._runs_by_image.setdefault(got[0].image.digest, []).append((got[0].run, got[1]))
        for digest in images:
            for run_id, record_digest in self._runs_by_image.get(digest, []):
                self.add_manifest("runs", record_digest, run_tag(run_id))
                self.add_run_history(run_id)


def collect(settings: Settings, targets: List[str], without_base: bool = False) -> Plan:
    settings.require_registry()
    c = Collector(settings, without_base)
    for what in targets or env_names(c.reg, c.envs):
        c.add(what)
    c.plan.names = sorted(set(c.plan.names))
    return c.plan


# -- progress -------------------------------------------------------------------------------------
def reporter(settings: Settings) -> Callable[[str], None]:
    show = settings.progress == "plain" or (settings.progress == "auto" and sys.stderr.isatty())

    def say(line: str) -> None:
        if show:
            print(f"composer: {line}", file=sys.stderr, flush=True)
    return say


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


# -- export ---------------------------------------------------------------------------------------
def export(settings: Settings, targets: List[str], output: str, without_base: bool = False) -> dict:
    if not output:
        raise UsageError("export needs -o FILE", "e.g. composer export explainer-a -o explainer-a.tar")
    plan = collect(settings, targets, without_base)
    say = reporter(settings)
    c = Collector(settings)
    writer = LayoutWriter(Path(output))
    blobs = nbytes = 0
    try:
        entries: List[dict] = []
        with tempfile.TemporaryDirectory(prefix="composer-export-") as tmp:
            for item in plan.items.values():
                for blob in item.blobs():
                    digest = blob["digest"]
                    if writer.has(digest) or digest in plan.external:
                        continue
                    size = c.reg.download_blob(c.repo(item.role), digest, Path(tmp, "blob"))
                    writer.add_file(digest, Path(tmp, "blob"))
                    os.unlink(Path(tmp, "blob"))
                    blobs, nbytes = blobs + 1, nbytes + size
                    say(f"exported blob {digest[:19]} ({_mb(size)})")
                writer.add_bytes(item.body)
                desc = {"mediaType": item.media_type, "digest": item.digest, "size": len(item.body),
                        "annotations": {A_ROLE: item.role, A_TAGS: " ".join(item.tags)}}
                if item.doc.get("artifactType"):
                    desc["artifactType"] = item.doc["artifactType"]
                entries.append(desc)
            for (role, digest), item in plan.items.items():  # what skopeo and other tools open: the names
                for name in item.tags:
                    if role == "envs" and name in plan.names:
                        entries.append(tool_entry(writer, item, name))
        writer.close(entries, {A_FORMAT: FORMAT, A_SOURCE: plan.source, A_NAMES: " ".join(plan.names),
                               A_WITHOUT_BASE: str(without_base).lower()})
    except BaseException:
        writer.abort()
        raise
    return {"file": output, "names": plan.names, "manifests": len(plan.items), "blobs": blobs, "bytes": nbytes,
            "without_base": without_base, "source": plan.source,
            "runs": sorted({t for i in plan.items.values() if i.role == "runs" for t in i.tags if t.startswith("run-")})}


def tool_entry(writer: LayoutWriter, item: Item, name: str) -> dict:
    """index.json's entry for NAME, for other tools: the image itself when it is OCI, else its
    OCI form (the same config and layers; the registry digest is in dev.composer.image)."""
    converted = oci_form(item.body, item.media_type)
    if converted is None:
        return {"mediaType": item.media_type, "digest": item.digest, "size": len(item.body), "annotations": {REF_NAME: name}}
    return {"mediaType": OCI_MANIFEST, "digest": writer.add_bytes(converted), "size": len(converted),
            "annotations": {REF_NAME: name, A_IMAGE: item.digest}}


def read_plan(reader: LayoutReader) -> Plan:
    a = reader.annotations
    if a.get(A_FORMAT) != FORMAT:
        raise VerificationError(f"{reader.path} is not a composer export ({A_FORMAT}: {a.get(A_FORMAT, 'absent')})",
                                "give a file composer export wrote (other OCI archives: skopeo copy)")
    plan = Plan(a.get(A_SOURCE, ""))
    plan.names = [n for n in a.get(A_NAMES, "").split() if TAG_RE.match(n)]
    for entry in reader.index["manifests"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("annotations"), dict) or A_ROLE not in entry["annotations"]:
            continue  # a name's entry for other tools
        desc = Descriptor.from_dict(entry)
        role = str(entry["annotations"][A_ROLE])
        if role not in ("envs", "runs") and not (role.startswith("repo:") and REPOSITORY_RE.match(role[5:])):
            raise VerificationError(f"{reader.path}: repository {role[:80]!r} is not valid", "the archive is malformed")
        tags = str(entry["annotations"].get(A_TAGS, "")).split()
        if any(not TAG_RE.match(t) for t in tags):
            raise VerificationError(f"{reader.path}: a tag of {desc.digest} is not valid", "the archive is malformed")
        body = reader.read(desc.digest)
        for tag in tags:
            plan.add(role, desc.digest, desc.media_type, body, tag)
        plan.add(role, desc.digest, desc.media_type, body)
    return plan


# -- writing a plan to a registry -----------------------------------------------------------------
BlobSource = Callable[[Registry, str, str, int, str, str], str]  # (target, repo, digest, size, type, role) -> action


def archive_source(reader: LayoutReader) -> BlobSource:
    def fetch(reg: Registry, repo: str, digest: str, size: int, media_type: str, role: str) -> str:
        if not reader.has(digest):
            raise NotFoundError(f"blob {digest} is neither in {reader.path} (exported --without-base?) nor in {reg.host}/{repo}",
                                "import or mirror the base image into the target first, or export without --without-base")
        with tempfile.TemporaryDirectory(prefix="composer-import-") as tmp:
            path = Path(tmp, "blob")
            with open(path, "wb") as out:
                got = reader.extract(digest, out)
            if got != size:
                raise VerificationError(f"blob {digest} in {reader.path} has {got} bytes, its descriptor {size}", "the archive is corrupt")
            reg.upload_blob(repo, digest, size, path=path, media_type=media_type)
        return "uploaded"
    return fetch


def registry_source(source: Registry, repo_of: Callable[[str], str]) -> BlobSource:
    def fetch(reg: Registry, repo: str, digest: str, size: int, media_type: str, role: str) -> str:
        from_repo = repo_of(role)
        if source.host == reg.host and reg.mount_blob(repo, digest, from_repo):
            return "mounted"
        reg.copy_blob(source, from_repo, digest, size, repo, media_type)
        return "copied"
    return fetch


_UNIQUE = re.compile(r"-[0-9a-f]{12}\Z")


def _is_name(tag: str) -> bool:
    """A name or alias, as composer ls lists them: not bookkeeping, not a unique tag."""
    return not tag.startswith(RESERVED_PREFIXES) and not _UNIQUE.search(tag)


class Writer:
    def __init__(self, settings: Settings, plan: Plan, fetch: BlobSource, update: bool):
        settings.require_registry()
        self.settings, self.plan, self.fetch, self.update = settings, plan, fetch, update
        self.reg = connect(settings)
        self.envs, self.runs = envs_repository(settings), runs_repository(settings)
        self.say = reporter(settings)
        self.report = {"registry": settings.registry, "names": plan.names, "manifests": {"written": 0, "present": 0},
                       "blobs": {"uploaded": 0, "mounted": 0, "copied": 0, "present": 0}, "bytes": 0,
                       "tags": {"set": [], "kept": [], "moved": []}}
        self.placed: Dict[str, str] = {}  # blob digest -> a target repository that has it

    def repo(self, role: str) -> str:
        return self.envs if role == "envs" else self.runs if role == "runs" else role[5:]

    def preflight(self) -> None:
        """Names and runs pointing elsewhere are refused before anything is written."""
        for item in self.plan.items.values():
            for tag in item.tags:
                named = (item.role == "envs" and _is_name(tag)) or (item.role == "runs" and tag.startswith("run-"))
                if not named:
                    continue
                current = self.reg.head_manifest(self.repo(item.role), tag)
                if current is not None and current.digest != item.digest and not self.update:
                    what = "name" if item.role == "envs" else "run record"
                    raise UsageError(f"{what} {tag!r} already points to {current.digest[:19]} in {self.settings.registry}, "
                                     f"the archive has {item.digest[:19]}",
                                     "pass --update to move it (the move is recorded), or import into another prefix")

    def run(self) -> dict:
        self.preflight()
        order = {"image": 0, "artifact": 1, "index": 2}
        items = sorted(self.plan.items.values(), key=lambda i: order[i.kind])
        for item in items:
            if item.kind == "index" and any(t.startswith(("hist-", "sha256-")) for t in item.tags):
                continue  # merged with the target's own, below
            self.put(item)
        tags = [(i, t) for i in items for t in i.tags]
        rank = lambda t: 0 if t.startswith("run-") else 1 if t.startswith("sha256-") else 2 if t.startswith("spec-") \
            else 4 if t.startswith("hist-") else 5 if _is_name(t) else 3  # noqa: E731
        for item, tag in sorted(tags, key=lambda it: rank(it[1])):
            self.tag(item, tag)
        return self.report

    def put(self, item: Item) -> None:
        repo = self.repo(item.role)
        if self.reg.head_manifest(repo, item.digest) is not None:
            self.report["manifests"]["present"] += 1
            return
        for blob in item.blobs():
            self.blob(repo, item.role, Descriptor.from_dict(blob))
        self.reg.put_manifest(repo, item.digest, item.body, item.media_type)
        self.report["manifests"]["written"] += 1

    def blob(self, repo: str, role: str, desc: Descriptor) -> None:
        have = self.reg.blob_size(repo, desc.digest)
        if have is not None:
            if have != desc.size:
                raise VerificationError(f"{self.reg.host}/{repo} holds {desc.digest} with {have} bytes, expected {desc.size}",
                                        "the target registry is inconsistent")
            self.report["blobs"]["present"] += 1
            self.placed.setdefault(desc.digest, repo)
            return
        elsewhere = self.placed.get(desc.digest)
        candidates = [elsewhere] if elsewhere else []
        candidates += [self.repo(r) for r, _ in self.plan.items if r.startswith("repo:")]
        for other in candidates:
            if other != repo and self.reg.mount_blob(repo, desc.digest, other):
                self.report["blobs"]["mounted"] += 1
                self.placed[desc.digest] = repo
                return
        action = self.fetch(self.reg, repo, desc.digest, desc.size, desc.media_type, role)
        self.report["blobs"][action] += 1
        if action != "mounted":
            self.report["bytes"] += desc.size
        self.placed[desc.digest] = repo
        self.say(f"{action} {desc.digest[:19]} to {repo} ({_mb(desc.size)})")

    def tag(self, item: Item, tag: str) -> None:
        repo = self.repo(item.role)
        if tag.startswith("hist-"):
            return self.merge_history(item, repo, tag)
        if tag.startswith("sha256-"):
            return self.merge_referrers(item, repo, tag)
        current = self.reg.head_manifest(repo, tag)
        if current is not None and current.digest == item.digest:
            return
        named = (item.role == "envs" and _is_name(tag)) or (item.role == "runs" and tag.startswith("run-"))
        if current is not None and not (named and self.update):
            self.report["tags"]["kept"].append(f"{repo}:{tag}")  # a cache or unique tag the target already answers
            return
        if current is not None and item.role == "envs":  # --update moves a name: a new version of it
            hist = self.archive_history(tag)
            match = [v for v in hist if v.image.digest == item.digest]
            image = self.reg.head_manifest(repo, item.digest)
            assert image is not None
            append_version(self.reg, repo, tag, image, match[-1].record if match else "",
                           match[-1].spec_hash if match else "", "imported")
            self.report["tags"]["moved"].append(f"{repo}:{tag}")
        self.reg.tag(repo, item.digest, tag)
        self.report["tags"]["set"].append(f"{repo}:{tag}")

    def archive_history(self, name: str) -> List[Version]:
        for item in self.plan.items.values():
            if item.role == "envs" and history_tag(name) in item.tags:
                return parse_history(item.body, name)
        return []

    def merge_history(self, item: Item, repo: str, tag: str) -> None:
        """Keep every version either side has: the archive's history where it extends the
        target's, the target's where it already holds the archive's; diverged ones stay as
        they are (a moved name appends its new version)."""
        name = tag[len("hist-"):]
        got = self.reg.get_manifest(repo, tag)
        if got is not None and got[1].digest == item.digest:
            return
        ours = parse_history(item.body, name)
        theirs = parse_history(got[0], name) if got else []
        key = lambda vs: {(v.number, v.image.digest) for v in vs}  # noqa: E731
        if key(theirs) <= key(ours):
            self.reg.put_manifest(repo, tag, item.body, item.media_type)
            self.report["tags"]["set"].append(f"{repo}:{tag}")
        else:
            self.report["tags"]["kept"].append(f"{repo}:{tag}")

    def merge_referrers(self, item: Item, repo: str, tag: str) -> None:
        got = self.reg.get_manifest(repo, tag)
        if got is not None and got[1].digest == item.digest:
            return
        ours = item.doc.get("manifests") or []
        theirs = (json.loads(got[0]).get("manifests") or []) if got else []
        known = {m.get("digest") for m in theirs}
        if got is None or known <= {m.get("digest") for m in ours}:
            body = item.body  # the archive's index holds the target's: the same bytes as the source
        else:
            body = canonical_json({**json.loads(got[0]), "manifests": theirs + [m for m in ours if m.get("digest") not in known]})
        self.reg.put_manifest(repo, tag, body, OCI_INDEX)
        self.report["tags"]["set"].append(f"{repo}:{tag}")


def import_archive(settings: Settings, path: str, update: bool = False) -> dict:
    reader = LayoutReader(Path(path))
    try:
        plan = read_plan(reader)
        out = Writer(settings, plan, archive_source(reader), update).run()
    finally:
        reader.close()
    return {"file": path, "source": plan.source, **out}


def mirror(settings: Settings, to: str, targets: List[str], update: bool = False) -> dict:
    """Copy what the target lacks: manifests HEAD-checked first, blobs mounted (same host) or streamed."""
    if not to:
        raise UsageError("mirror needs --to HOST/PREFIX", "e.g. composer mirror --to backup.example.com/ml")
    plan = collect(settings, targets)
    target = replace(settings, registry=to)
    validate(target)
    if target.registry == settings.registry:
        raise UsageError(f"mirror --to {to} is the source registry", "give another registry or prefix")
    c = Collector(settings)
    out = Writer(target, plan, registry_source(c.reg, c.repo), update).run()
    return {"source": settings.registry, "to": target.registry, **out}
