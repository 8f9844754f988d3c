"""Options shared by several commands (Typer only; nothing heavy is imported here)."""

from __future__ import annotations

import typer

SET_OPTION = typer.Option(
    [],
    "--set",
    "-s",
    help="Override a setting, typed as YAML: --set optim.lr=1e-4 (repeatable).",
)
