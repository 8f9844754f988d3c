"""A rich progress bar on stderr for long library calls that report ``progress(stage, done, total)``
(export: bytes written, pieces verified; eval: blocks evaluated; a release bundle: bytes placed,
hashed, verified). Shown only on a terminal."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# stage -> (description, whether done/total count bytes)
STAGES = {
    "write": ("writing weights", True),
    "verify": ("verifying layer by layer", False),
    "eval": ("evaluating blocks", False),
    "placing files": ("placing files", True),
    "hashing": ("hashing", True),
    "verifying": ("verifying", True),
}


class StageProgress:
    """Call it as the library's ``progress``; one bar per stage, in the order they start."""

    def __init__(self) -> None:
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> StageProgress:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[count]}"),
                                  TimeElapsedColumn(), console=Console(stderr=True))
        self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.stop()

    def __call__(self, stage: str, done: int, total: int) -> None:
        description, in_bytes = STAGES.get(stage, (stage, False))
        count = f"{done / 2**30:.2f}/{total / 2**30:.2f} GiB" if in_bytes else f"{done}/{total}"
        if stage not in self._tasks:
            self._tasks[stage] = self._progress.add_task(description, total=total, count=count)
        self._progress.update(self._tasks[stage], completed=done, total=total, count=count)


@contextmanager
def shown_progress(enabled: bool) -> Iterator[StageProgress | None]:
    """``with shown_progress(not as_json) as progress:``: a running :class:`StageProgress` when
    ``enabled`` and stderr is a terminal, else None (pass it on to the library as is)."""
    if not (enabled and sys.stderr.isatty()):
        yield None
        return
    with StageProgress() as progress:
        yield progress
