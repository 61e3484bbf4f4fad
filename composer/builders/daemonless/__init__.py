"""The daemonless builder: compose an image by appending one layer, with no Docker daemon.

The composed image is the upstream image plus one layer holding exactly the locked extras,
so it can be made without running anything inside the image. By stage:

  1. install.py: uv installs the added packages (wheels only, hash-checked, no dependency
     resolution) for the image's platform and python into a staging prefix on this machine,
     from uv's persistent cache; begun (with step 2) while the build waits for its lease
     (`DaemonlessBuilder.start`), since it writes nothing but a temporary directory;
  2. layout.py: the staging prefix is mapped onto the image's own layout: site-packages to
     the upstream's site-packages, scripts to its scripts directory with the image's python
     in their shebangs, data files to the scheme's base, just as `uv pip install --python
     <image python>` lays them out inside the image (the BuildKit path);
  3. tarball.py: it becomes a reproducible tar (sorted, fixed mtimes, root-owned,
     normalised modes, no bytecode), compressed deterministically (ISA-L's threaded gzip by
     default; the encoder and its settings go into the build record), so the same inputs give
     the same layer and the same image digest. The compressed bytes are streamed to the
     registry (a chunked upload in another thread) while the tar is still being written, and
     the base layers are put in place (HEAD / mount) at the same time;
  4. composer/oci/mutate.py: the image config is the base's config plus the layer's
     diff_id, a history entry, labels and environment; the manifest the base's plus the layer;
  5. here, the push: the base layers reach the target repository without being downloaded:
     already there (HEAD), else a cross-repository mount on the same registry, else (another
     registry) a streamed, digest-checked copy; then the layer, the config and the manifest,
     in the base manifest's family.

`unsupported_reason(job)` says beforehand when this cannot work (a conda environment, a
non-Linux platform, ...); a package that turns out to have no wheel for the platform makes
`DaemonlessBuilder.build` raise CannotBuild, and builder selection (composer/builders/
__init__.py) falls back to BuildKit or, under `--builder daemonless`, fails with the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from composer.builders.base import Builder, BuildJob, CannotBuild
from composer.builders.daemonless.install import install_extras
from composer.builders.daemonless.layout import find_site_packages, fix_scripts, layout_for, scheme_base, stage_entries
from composer.builders.daemonless.tarball import (DEFAULT_EPOCH, Layer, LayerEncoding, layer_encoding, source_date_epoch,
                                                  write_layer, zstd_module)
from composer.errors import BuildError, NotFoundError, UsageError, VerificationError
from composer.kinds.pip import Lock
from composer.model.records import RunRecord
from composer.model.refs import ImageRef
from composer.oci import connect, mutate
from composer.progress import progress_bar
from composer.oci.client import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, Descriptor, Pieces, Registry

__all__ = ["DaemonlessBuilder", "HISTORY_COMMENT", "StreamedUpload", "base_manifest", "created_time", "encoding_for", "place_base_layers",
           "unsupported_reason"]

HISTORY_COMMENT = "composer.daemonless.v1"  # the comment of the history entry of the layer it adds

_VERSION = re.compile(r"^\d+\.\d+(?:\.\d+)?")


def unsupported_reason(job: BuildJob) -> Optional[str]:
    """None when the daemonless builder can compose this job; else a short reason it cannot.
    Whether every package has a wheel for the platform is only known when uv installs them:
    DaemonlessBuilder.build raises CannotBuild then."""
    python, plat = job.upstream.python, job.upstream.platform
    if python.kind == "conda":
        return "the upstream is a conda environment (its packages are not wheels)"
    if job.kind == "conda":
        return "conda packages are not wheels (the daemonless builder installs wheels only)"
    if job.kind != "pip":
        return f"it composes pip environments only, not {job.kind}"
    if (plat.os or "linux") != "linux":
        return f"the platform is {plat.os}, not linux"
    if (python.implementation or "cpython") != "cpython":
        return f"the python is {python.implementation}, not CPython (wheel tags are not known)"
    pp = plat.python_platform or ""
    if "linux" not in pp:
        return f"no Linux python platform is recorded for the upstream ({pp or 'none'})"
    if not _VERSION.match(str(python.version or "")):
        return f"the upstream's python version {python.version!r} is not X.Y[.Z]"
    exe = str(python.executable or "")
    if not exe.startswith("/") or "\n" in exe:
        return f"the upstream's python executable {exe!r} is not an absolute path"
    site = str(python.site_packages or "").rstrip("/")
    base = scheme_base(site)
    if base is None:
        return f"site-packages {site!r} is not <prefix>/lib/pythonX.Y/site-packages"
    if base == "/":
        return "the install scheme's base is / (scripts would go to /bin, a symlink on merged-/usr systems)"
    unhashed = [p["name"] for p in job.lock.added if not p.get("hashes")]
    if unhashed:
        return f"the lock has no artifact hash for {unhashed[0]}"
    return None


def created_time(base_config: dict) -> str:
    """SOURCE_DATE_EPOCH when set, else the base's own creation time: never the clock, so the
    same inputs give the same config and the same image digest."""
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return mutate.rfc3339(source_date_epoch())
    return str(base_config.get("created") or mutate.rfc3339(DEFAULT_EPOCH))


# -- the base image ---------------------------------------------------------------------------
_ARCH_ALIASES = {"x86_64": "amd64", "aarch64": "arm64"}


def base_manifest(base_reg: Registry, base: ImageRef, upstream: RunRecord) -> Tuple[dict, str]:
    """The base's image manifest (an index is narrowed to the upstream's platform) and its type."""
    got = base_reg.get_manifest(base.repository, base.digest or base.reference)
    if got is None:
        raise NotFoundError(f"the upstream image {base} is gone from its registry", "re-record the upstream run")
    body, desc = got
    manifest = json.loads(body)
    media_type = desc.media_type
    if media_type in (OCI_INDEX, DOCKER_LIST):
        plat = upstream.platform
        arch = _ARCH_ALIASES.get(plat.architecture or "", plat.architecture)
        match = [m for m in manifest.get("manifests", [])
                 if (m.get("platform") or {}).get("os") == (plat.os or "linux")
                 and (m.get("platform") or {}).get("architecture") == arch
                 and (not plat.variant or (m.get("platform") or {}).get("variant") == plat.variant)]
        if not match:
            raise CannotBuild("daemonless", f"the upstream index {base} has no manifest for {plat.os}/{arch}")
        got = base_reg.get_manifest(base.repository, match[0]["digest"])
        if got is None:
            raise NotFoundError(f"manifest {match[0]['digest']} of {base} is missing", "re-record the upstream run")
        body, desc = got
        manifest = json.loads(body)
        media_type = desc.media_type
    if media_type not in (DOCKER_MANIFEST, OCI_MANIFEST):
        raise CannotBuild("daemonless",
                          f"the upstream's manifest type {media_type or 'unknown'} is not an image manifest composer can extend")
    if "config" not in manifest or "layers" not in manifest:
        raise UsageError(f"{base} is not a container image manifest", "record an image, not an artifact")
    return manifest, media_type


def place_base_layers(reg: Registry, repo: str, base_reg: Registry, base: ImageRef, layers: List[dict]) -> Dict[str, int]:
    """Make every base layer present in repo without downloading it when the registry allows:
    HEAD, then a cross-repository mount (same registry), then a streamed copy. Returns counts."""
    counts = {"present": 0, "mounted": 0, "copied": 0}
    seen = set()
    same_host = base_reg.host == reg.host
    for layer in layers:
        digest, size = layer["digest"], int(layer["size"])
        if digest in seen:
            continue
        seen.add(digest)
        have = reg.blob_size(repo, digest)
        if have is not None:
            if have != size:
                raise VerificationError(f"{reg.host}/{repo} holds base layer {digest} with {have} bytes, the manifest says {size}",
                                        "the registry is inconsistent")
            reg.note_transfer("present", repo, digest, size)
            counts["present"] += 1
            continue
        if same_host and reg.mount_blob(repo, digest, base.repository):
            if reg.blob_size(repo, digest) != size:
                raise VerificationError(f"the mounted base layer {digest} in {reg.host}/{repo} is not {size} bytes",
                                        "the registry is inconsistent")
            counts["mounted"] += 1
            continue
        reg.copy_blob(base_reg, base.repository, digest, size, repo, layer.get("mediaType") or "application/octet-stream")
        counts["copied"] += 1
    return counts


# -- the layer, streamed ---------------------------------------------------------------------------
UPLOAD_CHUNK = 8 << 20  # bytes per PATCH of the streamed layer upload
_ABORT = object()


class StreamedUpload:
    """A sink for the compressed layer: in UPLOAD_CHUNK pieces, it goes to a chunked upload that
    runs in another thread with a client of its own (reg.clone()), so the upload overlaps the tar
    and the compression. Memory is bounded (a queue of a few chunks). A failed stream stops taking
    chunks and never blocks the writer; finish() then answers None and the caller writes the
    layer again (the same bytes: it is reproducible) to a file and pushes that with upload_blob
    (retried), so the stream only ever saves time, never correctness. Nothing goes to disk on
    the way: hundreds of MB written and removed again on every build."""

    def __init__(self, reg: Registry, repo: str, media_type: str, chunk: int = UPLOAD_CHUNK, depth: int = 4):
        self.chunk = chunk
        self.client = reg.clone()
        self.queue: "queue.Queue" = queue.Queue(maxsize=depth)
        self.digest = ""  # the layer's, given to finish() by the writer that hashed it
        self.parts: List[bytes] = []  # the compressed pieces of the next chunk (the encoder's own bytes objects)
        self.size = 0
        self.result: Optional[Descriptor] = None
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, args=(repo, media_type), name="composer-layer-upload", daemon=True)
        self.thread.start()

    def _chunks(self):
        while True:
            item = self.queue.get()
            if item is None:
                return
            if item is _ABORT:
                raise BuildError("the layer was not written to the end", "see the error that stopped it")
            yield item

    def _run(self, repo: str, media_type: str) -> None:
        try:
            self.result = self.client.upload_blob_chunks(repo, self._chunks(), media_type, digest_of=lambda: self.digest)
        except BaseException as exc:  # noqa: BLE001  # reported by finish(); the caller falls back
            self.error = exc

    def _put(self, item) -> None:
        while self.thread.is_alive():
            try:
                self.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def write(self, data) -> int:
        if self.thread.is_alive():
            self.parts.append(bytes(data))  # no copy for bytes, which the encoders write
            self.size += len(data)
            if self.size >= self.chunk:
                self._put(Pieces(self.parts))
                self.parts, self.size = [], 0
        return len(data)

    def flush(self) -> None:
        pass

    def finish(self, digest: str = "", complete: bool = True) -> Optional[Descriptor]:
        """Wait for the upload of the blob whose digest is digest; its descriptor, or None when
        it failed (see `error`). Not complete (the layer could not be written): the upload is
        abandoned before its PUT."""
        self.digest = digest
        if self.parts and complete:
            self._put(Pieces(self.parts))
        self.parts, self.size = [], 0
        self._put(None if complete else _ABORT)
        self.thread.join()
        return self.result if self.error is None else None


def encoding_for(settings, compression: str) -> LayerEncoding:
    """The layer encoding the settings ask for: zstd by zstandard; gzip by COMPOSER_LAYER_ENCODER
    (isal by default) at COMPOSER_GZIP_LEVEL (the encoder's default when unset)."""
    if compression == "zstd":
        return layer_encoding("zstd", None, None)
    return layer_encoding("gzip", settings.layer_encoder, settings.gzip_level)


class _Counted:
    """A writer that reports how many bytes went through it (the progress bar)."""

    def __init__(self, sink, advance):
        self.sink, self.advance = sink, advance

    def write(self, data) -> int:
        self.advance(len(data))
        return self.sink.write(data)

    def flush(self) -> None:
        self.sink.flush()


def _stream_layer(reg: Registry, repo: str, layer_type: str, entries, encoding: LayerEncoding,
                  settings=None) -> Tuple[Layer, StreamedUpload]:
    """Write the layer and stream it to repo at the same time (see StreamedUpload)."""
    with progress_bar(settings, "writing and pushing the layer") as advance:
        stream = StreamedUpload(reg, repo, layer_type)
        try:
            layer = write_layer(entries, _Counted(stream, advance), encoding=encoding)
        except BaseException:
            stream.finish(complete=False)
            raise
        stream.finish(layer.digest)
    return layer, stream


def _layer_pushed(reg: Registry, repo: str, layer_type: str, layer: Layer, stream: StreamedUpload, entries,
                  tmp: Path, verbose: bool) -> Tuple[Descriptor, str]:
    """The layer's descriptor once it is in repo: streamed, or (the stream failed) written again
    to a file under tmp and sent from there."""
    got = stream.result if stream.error is None else None
    if got is not None and (got.digest, got.size) == (layer.digest, layer.size):
        reg.note_transfer("uploaded", repo, layer.digest, layer.size)
        return got, "streamed"
    if verbose:
        why = stream.error if stream.error is not None else f"it stored {got.digest if got else '?'}"
        sys.stderr.write(f"composer: daemonless: the streamed layer upload failed ({why}); pushing it again in one piece\n")
    path = tmp / "layer"
    with open(path, "wb") as out:
        again = write_layer(entries, out, encoding=layer.encoding)
    if (again.digest, again.size) != (layer.digest, layer.size):
        raise BuildError(f"the layer came out as {again.digest} the second time, {layer.digest} the first",
                         "a staged file changed while the layer was written; rerun the build")
    return reg.upload_blob(repo, layer.digest, layer.size, path=path, media_type=layer_type), "resent"

# -- the staging prefix ---------------------------------------------------------------------------
class _Staging:
    """A temporary directory holding the staging prefix uv installs into, and the layer's entries
    once the prefix is mapped onto the image's layout."""

    def __init__(self):
        self.dir = tempfile.TemporaryDirectory(prefix="composer-daemonless-")
        self.root = Path(self.dir.name)
        self.prefix = self.root / "prefix"
        self.entries: List = []

    def remove_later(self) -> None:
        # Unlinking thousands of files takes a tenth of a second: a thread does it while the
        # build is published. Not a daemon thread, so it ends before the process does.
        threading.Thread(target=self.dir.cleanup, name="composer-staging-cleanup").start()


def _stage(settings, lock: Lock, upstream: RunRecord) -> _Staging:
    """Install, point the scripts at the image's python, and list the layer's entries."""
    staging = _Staging()
    try:
        install_extras(settings, lock, upstream, staging.prefix, staging.root / "extras.lock")
        layout = layout_for(upstream)
        fix_scripts(staging.prefix, find_site_packages(staging.prefix), layout.executable)
        staging.entries = stage_entries(staging.prefix, layout)
    except BaseException:
        staging.remove_later()
        raise
    return staging


# -- the whole job ------------------------------------------------------------------------------
class DaemonlessBuilder(Builder):
    name = "daemonless"

    def start(self, job: BuildJob) -> None:
        """Install the packages into a staging prefix in another thread while the build waits for
        the lease: it writes nothing but its own temporary directory."""
        if unsupported_reason(job) is None:
            pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="composer-stage")
            job.started = pool.submit(_stage, job.settings, job.lock, job.upstream)
            pool.shutdown(wait=False)

    def build(self, job: BuildJob) -> str:
        """Compose and push to job.target; return the image manifest digest (sha256:...).

        Raises CannotBuild when this image needs a BuildKit builder, RegistryError /
        VerificationError when the registry fails or disagrees, BuildError when uv fails."""
        reason = unsupported_reason(job)
        if reason:
            raise CannotBuild(self.name, reason)
        settings, reg, repo, base, upstream = job.settings, job.registry, job.repository, job.base, job.upstream
        lock: Lock = job.lock  # type: ignore[assignment]  # BuildJob.lock is the pip kind's Lock
        base_reg = reg if base.registry == reg.host else connect(settings, base.registry)
        manifest, media_type = base_manifest(base_reg, base, upstream)
        base_config = json.loads(base_reg.get_blob(base.repository, manifest["config"]["digest"]))
        n_layers = len(manifest["layers"])
        if len((base_config.get("rootfs") or {}).get("diff_ids") or []) != n_layers:
            raise VerificationError(f"the config of {base} lists {len(base_config['rootfs'].get('diff_ids') or [])} layers, "
                                    f"its manifest {n_layers}", "the upstream image is malformed; re-record it")
        compression = mutate.choose_compression(media_type, settings.layer_compression, zstd_module() is not None)
        layer_type = mutate.layer_media_type(media_type, compression)
        encoding = encoding_for(settings, compression)
        verbose = settings.progress == "plain" or (settings.progress == "auto" and sys.stderr.isatty())

        started, job.started = job.started, None
        with progress_bar(settings, f"installing {len(lock.added)} package(s) with uv", total=1, unit_bytes=False) as done:
            # What start() began, or its error as the build's own (the same install would fail the same way).
            staging = started.result() if started is not None else _stage(settings, lock, upstream)
            done(1)
        try:
            entries = staging.entries
            # The base layers go into place (HEAD / mount) while the layer is being written.
            with ThreadPoolExecutor(max_workers=1) as pool:
                placing = pool.submit(place_base_layers, reg, repo, base_reg, base, manifest["layers"])
                layer, stream = _stream_layer(reg, repo, layer_type, entries, encoding, settings)
                counts = placing.result()
            # reg is this thread's again (placing is done): resend the layer if the stream failed.
            layer_desc, how = _layer_pushed(reg, repo, layer_type, layer, stream, entries, staging.root, verbose)
        finally:
            staging.remove_later()
        job.layer = encoding.to_json()

        added = " ".join(f"{p['name']}=={p['version']}" for p in lock.added)
        config = mutate.compose_config(
            base_config, diff_id=layer.diff_id, created=created_time(base_config),
            created_by=f"composer daemonless: uv pip install --no-deps --require-hashes {added}".rstrip(),
            comment=HISTORY_COMMENT, labels=job.labels, env=job.env,
        )
        cfg = mutate.config_bytes(config)
        config_desc = reg.upload_blob(repo, "sha256:" + hashlib.sha256(cfg).hexdigest(), len(cfg), data=cfg,
                                      media_type=mutate.config_media_type(manifest, media_type))
        annotations = {"org.opencontainers.image.base.name": base.name, "org.opencontainers.image.base.digest": base.digest or ""}
        body = mutate.compose_manifest(manifest, media_type, config_desc, layer_desc, annotations)
        desc, _ = reg.put_manifest(repo, job.tag, body, media_type)
        if verbose:
            sys.stderr.write(
                f"composer: daemonless: {len(lock.added)} package(s), {len(entries)} entries, "
                f"layer {layer.size} bytes ({encoding.encoder} {encoding.compression} level {encoding.level}, {how}); base layers: {counts['present']} present, "
                f"{counts['mounted']} mounted, {counts['copied']} copied; {reg.host}/{repo}@{desc.digest}\n"
            )
        return desc.digest
