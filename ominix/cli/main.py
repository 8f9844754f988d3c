"""The ``ominix`` Typer app: command groups, --version, --debug; errors go to ``cli.render``."""

from __future__ import annotations

import os
import sys

import typer

from ominix import __version__
from ominix.cli import checkpoint_cmd, config_cmd, data_cmd, eval_cmd, infer_cmd, mof_cmd, train_cmd
from ominix.cli import quickstart_cmd
from ominix.cli import release_cmd
from ominix.cli.render import debug_enabled, report_error
from ominix.errors import OminixError

app = typer.Typer(
    name="ominix",
    help=(
        "Open, reproducible pretraining of LLaMA-style models through ColossalAI.\n\n"
        "Pipeline: data prepare -> train launch -> checkpoint export -> infer / eval -> mof report."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},  # every command inherits it
)
app.add_typer(config_cmd.app, name="config")
app.add_typer(data_cmd.app, name="data")
app.add_typer(checkpoint_cmd.app, name="checkpoint")
app.add_typer(train_cmd.app, name="train")
app.add_typer(mof_cmd.app, name="mof")
app.add_typer(release_cmd.app, name="release")
app.command("infer")(infer_cmd.infer)
app.command("eval")(eval_cmd.eval_)
app.command("quickstart")(quickstart_cmd.quickstart)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ominix {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(
        False, "--debug/--no-debug", help="Show tracebacks (same as OMINIX_DEBUG=1)."
    ),
) -> None:
    """OminiX command line."""
    if debug:
        os.environ["OMINIX_DEBUG"] = "1"


def run() -> None:
    """Console-script entry point."""
    try:
        app()
    except OminixError as exc:
        if debug_enabled():
            raise
        sys.exit(report_error(exc))
    except KeyboardInterrupt:
        if debug_enabled():
            raise
        print("interrupted", file=sys.stderr)
        sys.exit(130)
