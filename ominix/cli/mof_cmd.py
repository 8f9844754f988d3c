"""``ominix mof``: classify a MOF model file, write a run's MOF release bundle, write release.yaml."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import typer

from ominix.cli.progress_view import shown_progress

app = typer.Typer(
    help="Model Openness Framework: the release bundle of a run and its MOF class (as MOT rates it).",
    no_args_is_help=True,
)

STYLE = {"type-appropriate": "green", "open": "yellow", "unlicensed": "red", "invalid": "red", "absent": "dim"}


def _print(result, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from ominix.release.cards import STATUS_TEXT, missing_reasons
    from ominix.release.mof import ROMAN

    console = Console(highlight=False)
    table = Table(title=f"MOF components of {title}", title_justify="left")
    for col in ("component", "class", "required", "present", "license", "acceptable"):
        table.add_column(col)
    for c in result.components:
        style = STYLE[c.status]
        table.add_row(c.name, ROMAN[c.mof_class], "yes" if c.required else "optional",
                      "yes" if c.present else "no", c.license or "-", f"[{style}]{STATUS_TEXT[c.status]}[/]")
    console.print(table)
    progress = "  ".join(f"Class {ROMAN[c]}: {result.progress[c]:.1f} %" for c in (3, 2, 1))
    console.print(f"[bold]{result.label}[/]   {progress}", soft_wrap=True)
    nxt = result.next_class()
    if nxt is not None:
        console.print(f"Missing for Class {ROMAN[nxt]}:")
        for name, why in missing_reasons(result, nxt):
            console.print(f"  - {name}: {why}", markup=False, soft_wrap=True)
    for note in result.notes:
        console.print(f"note: {note}", markup=False, soft_wrap=True)
    for c in result.components:
        if c.status == "open":
            console.print(f"[yellow]warning:[/] {c.name}: {c.license} is open but not a type-appropriate "
                          f"{c.content_type} license", soft_wrap=True)


@app.command("check")
def check(
    file: Path = typer.Argument(..., help="A release bundle (its directory, or the mof.yml inside it: every "
                                "file is checked against SHA256SUMS), or a lone MOF model file (*.yml, as MOT)."),
    verify: bool = typer.Option(True, "--verify/--no-verify",
                                help="Hash every file of a bundle; --no-verify checks presence and sizes only."),
    as_json: bool = typer.Option(False, "--json/--no-json", help="Print MOT's classification shape as JSON "
                                 "(with a bundle: and what the check found under 'bundle')."),
) -> None:
    """Classify a MOF model file the way the Model Openness Tool does; for a bundle, also check every
    file against SHA256SUMS. Exits 1 when a file is missing, changed or not listed (one line each).

    Examples:

      ominix mof check runs/tiny/release

      ominix mof check runs/tiny/release --no-verify

      ominix mof check model.yml --json
    """
    from ominix.release.bundle import locate, verify_bundle
    from ominix.release.mof import classify, load_model_file

    mof_file, bundle = locate(file)
    document = load_model_file(mof_file)
    result = classify(document["release"])
    found = None
    if bundle is not None:
        with shown_progress(not as_json) as progress:
            found = verify_bundle(bundle, verify=verify, progress=progress)
    if as_json:
        extra = {"bundle": found.to_json()} if found is not None else {}
        typer.echo(json.dumps({**result.to_json(), **extra}, indent=2))
    else:
        _print(result, document["release"]["name"])
        if found is not None and not found.problems:
            typer.echo(f"verified: every file of {bundle} matches SHA256SUMS" if verify else
                       f"present: every file of {bundle} listed in SHA256SUMS, sizes as released (not hashed)")
        for problem in found.problems if found is not None else []:
            typer.echo(f"problem: {problem}", err=True)
    if found is not None and found.problems:
        raise typer.Exit(1)


@app.command("report")
def report(
    run_dir: Path = typer.Argument(..., help="Run directory (logging.run_dir of a training run)."),
    out: Path = typer.Option(None, "--out", "-o", help="Bundle directory; default RUN_DIR/release."),
    release: Path = typer.Option(None, "--release", help="release.yaml (see `ominix mof init`); "
                                 "default: the release section of the run's config."),
    name: str = typer.Option(None, "--name", help="Model name (overrides the release file)."),
    producer: str = typer.Option(None, "--producer", help="Producer (overrides the release file)."),
    data: Path = typer.Option(None, "--data", help="Prepared data directory; default: the run's data.path."),
    data_mode: str = typer.Option(
        None, "--data-mode", help="How the prepared data goes in (overrides release.data): copy, link (hard "
        "links where possible), reference (source, prepare command, checksums), auto (link when on the "
        "same filesystem or under 2 GiB, else reference)."),
    optimizer_state: bool = typer.Option(
        None, "--optimizer-state/--no-optimizer-state",
        help="Also put the optimizer and scheduler state in the bundle (overrides release.optimizer_state)."),
    force: bool = typer.Option(False, "--force/--no-force", help="Replace an existing bundle."),
    as_json: bool = typer.Option(False, "--json/--no-json", help="Print the classification as JSON."),
) -> None:
    """Write the self-contained MOF release bundle of a run (the final model in Hugging Face format,
    declared checkpoints, tokenizer, code, configs, logs, eval results, data, cards, licenses, one
    SHA256SUMS) and print its class and what the next class needs.

    Examples:

      ominix mof report runs/tiny --release release.yaml --out release-tiny

      ominix mof report runs/tiny --data-mode reference --force --json
    """
    from ominix.release.bundle import make_bundle

    with shown_progress(not as_json) as progress:
        result, bundle = make_bundle(run_dir, out, release, name=name, producer=producer, data_dir=data,
                                     data_mode=data_mode,
                                     optimizer_state=optimizer_state, force=force,
                                     command=shlex.join(["ominix", *sys.argv[1:]]), progress=progress)
    if as_json:
        typer.echo(json.dumps({**result.to_json(), "bundle": str(bundle)}, indent=2))
    else:
        _print(result, str(bundle))
        typer.echo(f"wrote {bundle} (verify with: ominix mof check {shlex.quote(str(bundle))}, "
                   f"or cd there and run sha256sum -c SHA256SUMS)")


@app.command("init")
def init(
    out: Path = typer.Option(Path("release.yaml"), "--out", "-o", help="Where to write the template."),
    force: bool = typer.Option(False, "--force/--no-force", help="Overwrite an existing file."),
) -> None:
    """Write a commented release.yaml template (release metadata for `mof report`).

    Examples:

      ominix mof init

      ominix mof init --out configs/release.yaml --force
    """
    from ominix.release.template import write

    typer.echo(f"wrote {write(out, force)}")
