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
    """One line when MosaicML's distribution (`composer` on PyPI) is installed here too. A lookup
    by name, not a scan of every installed distribution: this runs at every command's start."""
    try:
        dist = metadata.distribution("composer")
    except metadata.PackageNotFoundError:
        return None
    if (dist.metadata["Name"] or "").lower() == OWN_DISTRIBUTION:
        return None
    summary = (dist.metadata["Summary"] or "no summary")[:100]
    return (f"another distribution, {dist.metadata['Name']} {dist.version} ({summary}), also installs the import package "
            f"'composer' here; the two overwrite each other's files: keep {OWN_DISTRIBUTION} and "
            f"{dist.metadata['Name']} in separate environments")
