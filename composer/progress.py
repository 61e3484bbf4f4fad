"""Progress for long transfers and installs: bars on a terminal (rich), nothing otherwise.

    with progress_bar(settings, "pulling explainer-a", total=size) as advance:
        advance(n)           # n more bytes (or steps) done

Quiet when stderr is not a terminal, with --progress quiet / -q, or when rich is missing:
logs and CI output stay clean. Progress goes to stderr; stdout keeps the command's answer.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

from composer.settings import Settings


def wanted(settings: Optional[Settings]) -> bool:
    return settings is not None and settings.progress != "quiet" and (settings.progress == "plain" or sys.stderr.isatty())


@contextmanager
def progress_bar(settings: Optional[Settings], description: str, total: Optional[int] = None,
                 unit_bytes: bool = True) -> Iterator[Callable[..., None]]:
    """Yields advance(n=0, total=None): n more done; total, when it becomes known."""
    if not wanted(settings):
        yield lambda n=0, total=None: None
        return
    try:
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, Progress, TaskProgressColumn, TextColumn,
                                   TimeRemainingColumn, TransferSpeedColumn)
    except ImportError:  # a declared dependency; without it, no bars and nothing else lost
        yield lambda n=0, total=None: None
        return
    columns = [TextColumn("{task.description}"), BarColumn(), TaskProgressColumn()]
    columns += [DownloadColumn(), TransferSpeedColumn()] if unit_bytes else []
    columns += [TimeRemainingColumn()]
    console = Console(file=sys.stderr)
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(description, total=total)

        def advance(n: int = 0, total: Optional[int] = None) -> None:
            if total is not None:
                bar.update(task, total=total)
            if n:
                bar.advance(task, n)

        yield advance
