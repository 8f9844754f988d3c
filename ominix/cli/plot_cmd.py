"""``ominix train plot``: draw a run's training figure again from its metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add ``plot`` to the ``train`` command group."""
    app.command("plot")(plot)


def plot(
    run_dir: Path = typer.Argument(..., help="Run directory (holds metrics.jsonl)."),
    out: Path = typer.Option(None, "--out", "-o", help="PNG file to write; default RUN_DIR/plots/training.png."),
    force: bool = typer.Option(False, "--force/--no-force",
                               help="Replace an existing --out file that is not a figure OminiX drew."),
) -> None:
    """Draw a run's training figure (loss, learning rate, throughput) from its metrics.jsonl.

    Training draws the same figure into RUN_DIR/plots/training.png at each evaluation and at the end.

    Examples:

      ominix train plot runs/tiny

      ominix train plot runs/tiny --out tiny.png
    """
    from ominix.train.figure import draw

    typer.echo(f"wrote {draw(run_dir, out, force)}")
