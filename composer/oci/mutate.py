"""Image mutation as pure functions: append one layer to an image's config and manifest.

Like go-containerregistry's `mutate.Append`: bytes and dicts in, bytes and dicts out, no I/O,
no clock and no environment, so the same inputs always give the same config and manifest
bytes (hence the same image digest). The daemonless builder (composer/builders/daemonless/)
supplies the inputs and does the pushing.
"""

from __future__ import annotations

import datetime as _dt
import json
from typing import List, Mapping, Optional

from composer.errors import UsageError
from composer.oci.client import DOCKER_MANIFEST, OCI_MANIFEST, Descriptor

DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"

COMPRESSIONS = ("auto", "gzip", "zstd")


def choose_compression(manifest_media_type: str, wanted: str = "auto", have_zstd: bool = False) -> str:
    """gzip unless zstd is asked for (wanted "zstd") on an OCI-family base: "auto" is gzip, which
    every engine unpacks. zstd layers need containerd >= 1.5 or Docker >= 23 (Docker 20.10, the
    engine here, cannot unpack them), and a Docker-family manifest cannot carry them at all: there
    the layer stays gzip. zstd asked for on an OCI base without the zstandard module is an error."""
    if wanted not in COMPRESSIONS:
        raise ValueError(f"layer compression {wanted!r} is not one of {', '.join(COMPRESSIONS)}")
    if manifest_media_type != OCI_MANIFEST or wanted != "zstd":
        return "gzip"
    if not have_zstd:
        raise UsageError("zstd layers were asked for (COMPOSER_LAYER_COMPRESSION=zstd) but the zstandard module is not installed",
                         "pip install 'composer[zstd]', or unset COMPOSER_LAYER_COMPRESSION")
    return "zstd"


def layer_media_type(manifest_media_type: str, compression: str) -> str:
    if manifest_media_type == DOCKER_MANIFEST:
        if compression != "gzip":
            raise ValueError("Docker image manifests only carry gzip layers")
        return DOCKER_LAYER_GZIP
    if manifest_media_type == OCI_MANIFEST:
        return {"gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD}[compression]
    raise ValueError(f"not an image manifest media type: {manifest_media_type}")


def config_media_type(base_manifest: dict, manifest_media_type: str) -> str:
    """The config's media type: the base's own, else the one of the manifest's family."""
    given = (base_manifest.get("config") or {}).get("mediaType")
    return given or (DOCKER_CONFIG if manifest_media_type == DOCKER_MANIFEST else OCI_CONFIG)


def rfc3339(epoch: int) -> str:
    return _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_env(env_list: Optional[List[str]], env: Mapping[str, str]) -> List[str]:
    """Config.Env with env applied: a variable already there is replaced in place, new ones
    are appended in name order."""
    out = list(env_list or [])
    index = {item.split("=", 1)[0]: i for i, item in enumerate(out)}
    for key in sorted(env):
        if "=" in key or not key:
            raise ValueError(f"invalid environment variable name {key!r}")
        item = f"{key}={env[key]}"
        if key in index:
            out[index[key]] = item
        else:
            index[key] = len(out)
            out.append(item)
    return out


def compose_config(base_config: dict, *, diff_id: str, created: str, created_by: str, comment: str,
                   labels: Mapping[str, str], env: Mapping[str, str]) -> dict:
    """base_config (left untouched) plus one layer: its diff_id, a history entry (created,
    created_by, comment), the labels merged over the base's and env applied to its Env."""
    cfg = json.loads(json.dumps(base_config))
    rootfs = cfg.get("rootfs") or {}
    diff_ids = list(rootfs.get("diff_ids") or [])
    history = list(cfg.get("history") or [])
    missing = len(diff_ids) - sum(1 for h in history if not h.get("empty_layer"))
    if missing > 0:
        # Keep history aligned with the layers (one non-empty entry each), as BuildKit does.
        history = [{"created_by": "(no history recorded in the base image)"} for _ in range(missing)] + history
    history.append({"created": created, "created_by": created_by, "comment": comment})
    cfg["rootfs"] = {**rootfs, "type": rootfs.get("type") or "layers", "diff_ids": diff_ids + [diff_id]}
    cfg["history"] = history
    inner = dict(cfg.get("config") or {})
    merged_labels = dict(inner.get("Labels") or {})
    merged_labels.update(labels)
    if merged_labels:
        inner["Labels"] = merged_labels
    if env or inner.get("Env"):
        inner["Env"] = merge_env(inner.get("Env"), env)
    cfg["config"] = inner
    cfg["created"] = created
    return cfg


def config_bytes(config: dict) -> bytes:
    """The canonical bytes of a config or manifest: sorted keys, no spaces, UTF-8."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def compose_manifest(base_manifest: dict, media_type: str, config: Descriptor, layer: Descriptor,
                     annotations: Optional[Mapping[str, str]] = None) -> bytes:
    """The manifest bytes: base_manifest's layers, then layer, with config; in the base's family
    (media_type). Annotations are kept only on OCI manifests (Docker manifests have none)."""
    manifest = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": config.media_type, "digest": config.digest, "size": config.size},
        "layers": [dict(l) for l in base_manifest.get("layers", [])]
                  + [{"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}],
    }
    if media_type == OCI_MANIFEST and annotations:
        manifest["annotations"] = dict(annotations)
    return config_bytes(manifest)
