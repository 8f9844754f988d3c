"""What a person sees while data is prepared (progress with docs/s and tokens/s) and after (tables)."""

from __future__ import annotations

import time
from typing import Any


class PrepareProgress:
    """A rich progress bar on stderr: phase, input bytes read, documents, tokens and their rates."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.docs = self.tokens = 0
        self._start = time.perf_counter()
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> PrepareProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._progress.start()
            self._task = self._progress.add_task("starting", stats="", total=None)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()

    def phase(self, description: str, total_bytes: int | None = None) -> None:
        """Start a pass over the input (``total_bytes`` of source files)."""
        self._start = time.perf_counter()
        self.docs = self.tokens = 0
        if self._progress is not None:
            self._progress.reset(self._task, description=description, stats="", total=total_bytes)

    def file_done(self, nbytes: int) -> None:
        """One source file of ``nbytes`` read through (called from the reader thread)."""
        if self._progress is not None:
            self._progress.advance(self._task, nbytes)

    def finish(self) -> None:
        if self._progress is not None:
            task = self._progress.tasks[0]
            self._progress.update(self._task, completed=task.total or task.completed)

    def update(self, docs: int, tokens: int) -> None:
        self.docs += docs
        self.tokens += tokens
        if self._progress is not None:
            dt = max(time.perf_counter() - self._start, 1e-9)
            stats = (f"{self.docs:,} docs ({self.docs / dt:,.0f}/s)  "
                     f"{self.tokens:,} tokens ({self.tokens / dt:,.0f}/s)")
            self._progress.update(self._task, stats=stats)


def summary_rows(manifest: dict[str, Any]) -> list[list[str]]:
    rows = []
    for split, info in manifest["splits"].items():
        for name, c in info["per_source"].items():
            rows.append([split, name, f"{c['documents']:,}", f"{c['tokens']:,}", f"{c['blocks']:,}"])
        rows.append([split, "all", f"{info['documents']:,}", f"{info['tokens']:,}", f"{info['blocks']:,}"])
    return rows


def print_summary(manifest: dict[str, Any], path: str) -> None:
    """The end-of-run table: documents, tokens and blocks per split and source set, and the speed."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"prepared {path}")
    for col in ("split", "source set", "documents", "tokens", "blocks"):
        table.add_column(col, justify="left" if col in ("split", "source set") else "right")
    for row in summary_rows(manifest):
        table.add_row(*row, style="bold" if row[1] == "all" else None)
    console = Console()
    console.print(table)
    tok, timing = manifest["tokenizer"], manifest.get("timing", {})
    console.print(
        f"seq_len {manifest['seq_len']}, {manifest['dtype']}, tokenizer vocab {tok['vocab_size']:,} "
        f"(sha256 {tok['sha256'][:12]}); "
        f"{timing.get('tokens_per_second') or 0:,.0f} tokens/s, {timing.get('seconds', 0):.1f} s",
        highlight=False,
    )
    console.print(f"next: ominix train launch PRESET --data {path}", highlight=False, markup=False)
