"""URLs that may carry credentials (an index URL with a token, a conda channel with /t/<token>/
or user:password@): what may be stored or printed of them, and nothing more."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit


def redact(url: str) -> str:
    """A URL as it may appear in a log or a record: no user, password, query or /t/<token>/ part."""
    if "://" not in url:
        return url  # a channel name (conda-forge) or a path: nothing secret in it
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
    except ValueError:
        return "<an unparsable URL>"
    path = re.sub(r"/t/[^/]+(/|\Z)", r"/t/<token>\1", parts.path)
    return urlunsplit((parts.scheme, host, path, "", ""))
