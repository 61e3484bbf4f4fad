"""composer's distribution on PyPI is `composer-envs`; its import name is `composer`.

MosaicML's Composer, a PyTorch training library, is the PyPI distribution `composer` and also
installs a top-level `composer` package, often into exactly the ML images composer works on.
Both cannot be imported as `composer` from one environment: whichever was installed last owns
the files. When this code runs, it won; `namesake_warning` says when the other one is there too.
"""

from __future__ import annotations

from importlib import metadata
from typing import Optional

OWN_DISTRIBUTION = "composer-envs"


def namesake_warning() -> Optional[str]:
    """One line when another distribution also provides the top-level `composer` package."""
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name in ("", OWN_DISTRIBUTION):
            continue
        top = (dist.read_text("top_level.txt") or "").split()
        files = dist.files or []
        if "composer" in top or any(str(f) == "composer/__init__.py" for f in files):
            return (f"another distribution, {dist.metadata['Name']} {dist.version} ({dist.metadata['Summary'] or 'no summary'}"[:160]
                    + "), also installs the import package 'composer' here; the two overwrite each other's files: "
                    f"keep {OWN_DISTRIBUTION} and {dist.metadata['Name']} in separate environments")
    return None
