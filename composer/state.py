"""Local state: a cache that only speeds things up and never decides alone.

Entries are JSON files written atomically (temporary file, fsync, rename), each
carrying a checksum of its own content and the key it was written for. A torn,
truncated or tampered entry fails those checks and is treated as absent (and
removed); callers also re-derive what they can and compare. Whatever an entry
says is still confirmed against the registry before it is used.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Optional

from composer.model.canonical import canonical_json, sha256_digest

FORMAT = "composer.state/v1"


def state_dir() -> Path:
    explicit = os.environ.get("COMPOSER_STATE_DIR")
    if explicit:
        return Path(explicit)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "composer"


def _path(kind: str, key: str) -> Path:
    return state_dir() / kind / f"{key.replace(':', '-')}.json"


def read(kind: str, key: str) -> Optional[dict]:
    path = _path(kind, key)
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    try:
        doc = json.loads(raw)
        body = doc["body"]
        valid = doc.get("format") == FORMAT and doc.get("key") == key and doc.get("checksum") == sha256_digest(canonical_json(body))
    except (ValueError, KeyError, TypeError):
        valid = False
    if not valid:
        try:
            path.unlink()  # never read back as valid; the next write replaces it
        except OSError:
            pass
        return None
    return body


def write(kind: str, key: str, body: dict) -> None:
    """Atomically store body; failures are ignored (a cache that can't be written is just cold)."""
    path = _path(kind, key)
    doc = {"format": FORMAT, "key": key, "checksum": sha256_digest(canonical_json(body)), "body": body}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(canonical_json(doc))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        pass
