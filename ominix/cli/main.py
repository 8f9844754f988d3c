"""The ``ominix`` Typer app: command groups, --version, --debug; errors go to ``ominix.console``."""

from __future__ import annotations

import os
import sys

import typer

from ominix import __version__
from ominix.cli import checkpoint_cmd, config_cmd, data_cmd, eval_cmd, infer_cmd, mof_cmd, train_cmd
from ominix.cli import quickstart_cmd
from ominix.cli import release_cmd
from ominix.console import debug_enabled, report_error
from ominix.cli.flag_aliases import RootGroup
from ominix.errors import OminixError, os_error
from ominix.warning_filter import filter_third_party_warnings

app = typer.Typer(
    name="ominix",
    help=(
        "Open, reproducible pretraining of LLaMA-style models through ColossalAI.\n\n"
        "Pipeline: data prepare -> train launch -> checkpoint export -> infer / eval -> mof report. "
        "Presets: `ominix config presets`; what one sets: `ominix config show PRESET`."
    ),
    cls=RootGroup,  # a flag spelled as colossalai run / torchrun spell it: one line naming ours
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    # Markdown, not rich markup: '[user@]host [slots=N]' and "pip install 'ominix[eval]'" print as written
    rich_markup_mode="markdown",
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
        False, "--debug/--no-debug", help="Show tracebacks and third-party warnings (same as OMINIX_DEBUG=1)."
    ),
) -> None:
    """OminiX command line."""
    if debug:
        os.environ["OMINIX_DEBUG"] = "1"
    filter_third_party_warnings()  # tensornvme, apex, bitsandbytes...: shown with --debug


def run() -> None:
    """Console-script entry point."""
    try:
        app()
    except OminixError as exc:
        if debug_enabled():
            raise
        sys.exit(report_error(exc))
    except OSError as exc:  # a permission, a name too long, a full disk: anywhere a command touches a path
        if debug_enabled():
            raise
        sys.exit(report_error(os_error(exc)))
    except KeyboardInterrupt:
        if debug_enabled():
            raise
        print("interrupted", file=sys.stderr)
        sys.exit(130)
