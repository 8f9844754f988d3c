"""``ominix config``: show the resolved config, print the JSON Schema, list presets."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ominix.cli.common import CONFIG_OPTION, PRESET_ARGUMENT, SET_OPTION, one_preset

app = typer.Typer(help="Inspect configurations and presets.", no_args_is_help=True)


@app.command("show")
def show(
    source: str = PRESET_ARGUMENT,
    config: str = CONFIG_OPTION,
    sets: list[str] = SET_OPTION,
    as_json: bool = typer.Option(False, "--json/--no-json", help="Print JSON instead of YAML."),
) -> None:
    """Print the resolved config (defaults < PRESET or FILE < --set): every default a preset sets.

    Examples:

      ominix config show tiny

      ominix config show --config llama2-7b

      ominix config show llama2-7b --set schedule.micro_batch_size=8 --json
    """
    from ominix.config import dump_json, dump_yaml, load_config

    cfg = load_config(one_preset(source, config), sets)
    for notice in cfg.notices():  # an old key name: the output shows the new one
        typer.echo(notice, err=True)
    typer.echo(dump_json(cfg) if as_json else dump_yaml(cfg), nl=False)


@app.command("schema")
def print_schema(
    out: Path = typer.Option(None, "--out", "-o", help="Write to this file instead of stdout."),
    force: bool = typer.Option(False, "--force/--no-force",
                               help="Replace an existing file that an earlier `config schema` did not write."),
) -> None:
    """Print the JSON Schema of the config file.

    Examples:

      ominix config schema --out ominix-schema.json

      ominix config schema --out schema.json --force   # replace a file of another origin
    """
    from ominix.config import schema, write_schema

    if out is None:
        typer.echo(json.dumps(schema(), indent=2))
        return
    typer.echo(f"wrote {write_schema(out, force)}")


@app.command("presets")
def presets(
    as_json: bool = typer.Option(False, "--json/--no-json", help="Print a JSON list."),
) -> None:
    """List the shipped presets.

    Example:

      ominix config presets
    """
    from ominix.config import preset_names

    names = preset_names()
    typer.echo(json.dumps(names) if as_json else "\n".join(names))
