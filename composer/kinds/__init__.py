"""Kinds of environment: pip (composer/kinds/pip.py) and conda (composer/kinds/conda.py),
two implementations of one interface (composer/kinds/base.py) feeding one pipeline.

`choose` picks the kind: a file in a kind's own format (environment.yml) or an upstream
that must be extended the same way (a conda prefix) decides; pip otherwise. To add a
kind: implement EnvironmentKind, add a template to dockerfiles/, and list it in KINDS
(before pip, which takes whatever no other kind claims).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

from composer.kinds.base import Composition, EnvironmentKind
from composer.kinds.conda import CondaKind
from composer.kinds.pip import PipKind
from composer.model.records import RunRecord
from composer.requirements import read_requirement_list

KINDS: Tuple[EnvironmentKind, ...] = (CondaKind(), PipKind())

__all__ = ["Composition", "EnvironmentKind", "KINDS", "choose", "read_extras"]


def _for_file(path: Path) -> EnvironmentKind:
    return next((k for k in KINDS if k.claims_file(path)), KINDS[-1])


def read_extras(extra: Union[str, Path, Sequence[str]]) -> List[str]:
    """The extras as normalised requirement strings: a file, read by the kind whose format it is,
    or a list of requirement strings given inline."""
    if isinstance(extra, (str, Path)):
        return _for_file(Path(extra)).read_extras(Path(extra))
    return read_requirement_list(extra)


def choose(path: Optional[Path], upstream: RunRecord) -> EnvironmentKind:
    """path: the extras file, None for inline extras."""
    return next((k for k in KINDS if (path is not None and k.claims_file(path)) or k.claims_upstream(upstream)), KINDS[-1])
