"""The one owner of a process's console output outside the Typer commands: an ``OminixError`` as an
``error:`` line and a ``hint:`` line on stderr, and the plain lines a worker prints for the user or
for the process that started it. The CLI and every worker (``python -m ominix.train``, the node
guard, the SLURM job wrapper, the collective check) write through here.
"""

from __future__ import annotations

import os
import sys

from ominix.errors import OminixError


def debug_enabled() -> bool:
    """Tracebacks wanted (``--debug`` or ``OMINIX_DEBUG=1``; ``0``, ``false``, ``no``, ``off`` mean
    off)."""
    return os.environ.get("OMINIX_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")


def out(line: str) -> None:
    """``line`` on stdout, flushed at once: a launcher reading a worker's pipe sees it as it
    comes."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def err(line: str) -> None:
    """``line`` on stderr, flushed at once."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def report_error(exc: OminixError, rank: int | str | None = None) -> int:
    """Print ``exc`` as two lines on stderr and return its exit code; ``rank`` names the worker
    that raised it (``error (rank N): ...``, the line the multi-node launcher quotes)."""
    from rich.console import Console
    from rich.markup import escape

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    label = "error:" if rank is None else f"error (rank {rank}):"
    # the texts are plain: "pip install 'ominix[eval]'" or "[user@]host" must print as written
    console.print(f"[bold red]{escape(label)}[/] {escape(exc.message)}", markup=True)
    if exc.hint:
        console.print(f"[bold]hint:[/] {escape(exc.hint)}", markup=True)
    return exc.exit_code
