"""How ``ominix data`` (and the quickstart) show data preparation: a rich progress bar while
preparing, the summary table after, and the report of ``ominix data inspect``."""

from __future__ import annotations

import time
from typing import Any

from ominix.data.prepare import PrepareReporter


class PrepareProgress(PrepareReporter):
    """A rich progress bar on stderr: phase, input bytes read, documents, tokens and their rates."""

    def __init__(self) -> None:
        self.docs = self.tokens = 0
        self._start = time.perf_counter()
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> PrepareProgress:
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
        self._progress.stop()

    def phase(self, description: str, total_bytes: int | None = None) -> None:
        self._start = time.perf_counter()
        self.docs = self.tokens = 0
        self._progress.reset(self._task, description=description, stats="", total=total_bytes)

    def file_done(self, nbytes: int) -> None:
        self._progress.advance(self._task, nbytes)

    def finish(self) -> None:
        task = self._progress.tasks[0]
        self._progress.update(self._task, completed=task.total or task.completed)

    def update(self, docs: int, tokens: int) -> None:
        self.docs += docs
        self.tokens += tokens
        dt = max(time.perf_counter() - self._start, 1e-9)
        stats = (f"{self.docs:,} docs ({self.docs / dt:,.0f}/s)  "
                 f"{self.tokens:,} tokens ({self.tokens / dt:,.0f}/s)")
        self._progress.update(self._task, stats=stats)


def _split_table(title: str | None = None) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for col in ("split", "source set", "documents", "tokens", "blocks"):
        table.add_column(col, justify="left" if col in ("split", "source set") else "right")
    return table


def print_summary(manifest: dict[str, Any], path: str) -> None:
    """The end-of-run table: documents, tokens and blocks per split and source set, and the speed."""
    from rich.console import Console

    table = _split_table(f"prepared {path}")
    for split, info in manifest["splits"].items():
        for name, c in info["per_source"].items():
            table.add_row(split, name, f"{c['documents']:,}", f"{c['tokens']:,}", f"{c['blocks']:,}")
        table.add_row(split, "all", f"{info['documents']:,}", f"{info['tokens']:,}", f"{info['blocks']:,}",
                      style="bold")
    console = Console()
    console.print(table)
    tok, timing = manifest["tokenizer"], manifest.get("timing", {})
    console.print(
        f"seq_len {manifest['seq_len']}, {manifest['dtype']}, tokenizer vocab {tok['vocab_size']:,} "
        f"(sha256 {tok['sha256'][:12]}), documents framed {manifest['framing']}; "
        f"{timing.get('tokens_per_second') or 0:,.0f} tokens/s, {timing.get('seconds', 0):.1f} s",
        highlight=False,
    )
    console.print(f"next: ominix train launch PRESET --data {path}", highlight=False, markup=False)


def print_report(r: dict[str, Any]) -> None:
    """The report of ``ominix data inspect`` (``ominix.data.summary.summarize``'s result)."""
    from rich.console import Console

    console = Console(highlight=False)
    console.print(f"[bold]{r['path']}[/]  manifest sha256 {r['manifest_sha256']}")
    console.print(f"created {r['created']} by ominix {r['ominix_version']}: {r['command']}", markup=False)
    console.print(f"sources: {', '.join(r['sources'])}", markup=False)
    t = r["tokenizer"]
    console.print(f"seq_len {r['seq_len']}, {r['dtype']}, tokenizer vocab {t['vocab_size']:,} "
                  f"eos {t['eos_token']!r} ({t['origin']}), sha256 {t['sha256'][:12]}; "
                  f"documents framed {r['framing']}")
    table = _split_table()
    for split, info in r["splits"].items():
        for name, c in info["per_source"].items():
            table.add_row(split, name, f"{c['documents']:,}", f"{c['tokens']:,}", f"{c['blocks']:,}")
        table.add_row(split, f"all ({info['shards']} shards, {info['bytes']:,} bytes)",
                      f"{info['documents']:,}", f"{info['tokens']:,}", f"{info['blocks']:,}", style="bold")
    console.print(table)
    if r["verified"] is not None:
        if r["verified"]:
            console.print("[green]verified:[/] every file matches its sha256")
        for problem in r["problems"]:
            console.print(f"[red]problem:[/] {problem}")
    for s in r["samples"]:
        console.print(f"[bold]train block {s['block']}[/] ({s['source_set']}):")
        console.print(s["text"], markup=False)


def print_batch(r: dict[str, Any]) -> None:
    """The sequences of one step (``ominix.data.ledger.step_batch``'s result): one line per block."""
    from rich.console import Console

    console = Console(highlight=False)
    how = "filled in from the loader's order" if r["derived"] else "as recorded by the run"
    console.print(f"[bold]step {r['step']}[/]: {r['global_batch']} blocks ({how})")
    for k, block in enumerate(r["blocks"]):
        body = r["texts"][k] if "texts" in r else " ".join(map(str, r["sequences"][k]))
        console.print(f"[bold]block {block}[/] ({r['sources'][k]}): ", end="")
        console.print(body, markup=False, soft_wrap=True)
