"""Options shared by several commands (Typer only; nothing heavy is imported here).

Conventions every command follows: a preset is taken positionally and as ``--config/-c`` (the
same thing twice is fine, two different ones are refused); an output directory or file is
``--out/-o``; help names ``ominix config show PRESET`` for the defaults a preset sets.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ominix.errors import OminixError

SHOW = "`ominix config show PRESET` prints every default it sets"

SET_OPTION = typer.Option(
    [],
    "--set",
    "-s",
    help="Override a setting, typed as YAML: --set optim.lr=1e-4 (repeatable).",
)
PRESET_ARGUMENT = typer.Argument(
    None, metavar="PRESET", show_default=False,
    help=f"Config file or preset (tiny, tinyllama-1.1b, llama2-7b, ...); omitted = the defaults. {SHOW}.",
)
CONFIG_OPTION = typer.Option(
    None, "--config", "-c", show_default=False,
    help=f"The same as PRESET: a config file or preset name. {SHOW}.",
)


def is_preset(name: str) -> bool:
    """``name`` is a shipped preset (and no file or directory of that name is here), or a YAML file."""
    from ominix.config.loading import PRESETS_DIR  # here: `ominix --help` does not load the config package

    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        return True
    return (PRESETS_DIR / f"{name}.yaml").is_file() and not path.exists()


def one_preset(positional: str | None, option: str | None) -> str | None:
    """The preset given positionally or with ``--config``; two different ones are refused."""
    if positional and option and positional != option:
        raise OminixError(f"two configs given: {positional} and --config {option}",
                          "give the preset once, positionally or with --config")
    return positional or option
