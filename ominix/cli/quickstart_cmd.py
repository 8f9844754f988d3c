"""``ominix quickstart``: the whole pipeline on the embedded corpus, CPU only, in a few minutes."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer


@contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send everything written to fd 1 (ours and torchrun's) to stderr, so --json stdout is clean."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def quickstart(
    out: Path = typer.Option(None, "--out", "-o", help="Output directory; default runs/quickstart-YYYYmmdd-HHMMSS."),
    force: bool = typer.Option(False, "--force/--no-force", help="Replace an existing quickstart directory OUT."),
    steps: int = typer.Option(200, "--steps", help="Optimizer steps (the last 50 run after a resume)."),
    as_json: bool = typer.Option(False, "--json/--no-json",
                                 help="Print the summary as JSON (progress goes to stderr)."),
) -> None:
    """Run the whole pipeline on the corpus shipped inside OminiX, CPU only, no internet, a few minutes:
    data prepare -> train (tiny, 2 processes, ColossalAI ddp) -> resume -> checkpoint export ->
    infer -> eval -> mof report (Class I). Ends with a summary: artifacts, loss curve, MFU, MOF class.

    Examples:

      ominix quickstart

      ominix quickstart --out runs/qs --force --steps 120

      ominix quickstart --json > quickstart.json
    """
    from rich.console import Console

    from ominix.cli.data_view import PrepareProgress
    from ominix.cli.quickstart_view import QuickstartView, print_summary
    from ominix.quickstart import run

    console = Console(stderr=as_json)
    view = QuickstartView(console)
    progress = PrepareProgress() if console.is_terminal else None
    if as_json:
        with _stdout_to_stderr():
            summary = run(out, force, steps, on_event=view, progress=progress, log=view.log)
        typer.echo(json.dumps(summary, indent=2))
    else:
        summary = run(out, force, steps, on_event=view, progress=progress, log=view.log)
        print_summary(summary, console)
