"""``ominix data``: prepare a corpus into packed token shards, inspect a prepared directory, and show
the sequences a training step consumed."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import typer

from ominix.cli.common import CONFIG_OPTION, SET_OPTION, SHOW, is_preset, one_preset

app = typer.Typer(help="Prepare and inspect training data.", no_args_is_help=True)


@app.command("prepare")
def prepare(
    sources: list[str] = typer.Argument(
        None, metavar="[PRESET] [SOURCES]...", show_default=False,
        help="A preset or config file first (optional), then Hub dataset ids, files, directories, globs, "
        "save_to_disk dirs or @embedded (default: data.sources, cerebras/SlimPajama-627B).",
    ),
    out: Path = typer.Option(
        None, "--out", "-o", show_default=False,
        help="Output directory (written atomically); default data/DATASET-SPLIT, e.g. data/slimpajama-train-10pct.",
    ),
    config: str = CONFIG_OPTION,
    sets: list[str] = SET_OPTION,
    split: str = typer.Option(None, "--split", help="datasets split expression, e.g. 'train[:10%]'."),
    tokenizer: str = typer.Option(
        None, "--tokenizer", help="Hub id, tokenizer directory or tokenizer.json (default: the preset's, LLaMA-2's)."
    ),
    train_tokenizer: bool = typer.Option(
        None, "--train-tokenizer/--no-train-tokenizer", help="Train a byte-level BPE on the source."
    ),
    vocab_size: int = typer.Option(None, "--vocab-size", help="Vocabulary size of a trained tokenizer."),
    seq_len: int = typer.Option(None, "--seq-len", help="Tokens per training sequence (blocks hold seq_len+1)."),
    text_field: str = typer.Option(None, "--text-field", help="Record field holding the text (default: text)."),
    val_fraction: float = typer.Option(None, "--val-fraction", help="Fraction of documents held out."),
    seed: int = typer.Option(None, "--seed", help="Seed of the validation split."),
    num_proc: int = typer.Option(None, "--num-proc", help="Tokenizer threads (default: all cores)."),
    streaming: bool = typer.Option(
        None, "--streaming/--no-streaming", help="Stream hub files instead of downloading them to the cache."
    ),
    force: bool = typer.Option(False, "--force/--no-force", help="Replace an existing prepared OUT."),
    as_json: bool = typer.Option(False, "--json/--no-json", help="Print the manifest as JSON."),
) -> None:
    """Tokenize a corpus and pack it into checksummed shards of seq_len+1 token blocks.

    Writes OUT/manifest.json, DATA_CARD.md, tokenizer/, train/ and validation/. Sources, split,
    tokenizer and seq_len default to the preset's data section (`ominix config show PRESET` prints them).

    Examples:

      ominix data prepare tiny

      ominix data prepare @embedded --train-tokenizer --vocab-size 2048 --seq-len 128 --out data/tiny

      ominix data prepare --split 'train[:10%]'

      ominix data prepare cerebras/SlimPajama-627B --split 'train[:1%]' --tokenizer ./llama2-tokenizer --out data/sp1

      ominix data prepare 'corpus/*.jsonl.zst' --text-field content --train-tokenizer --vocab-size 32000 --out data/c
    """
    from ominix.cli.data_view import PrepareProgress, print_summary
    from ominix.config import load_config
    from ominix.data.prepare import prepare as run_prepare

    sources = list(sources or [])
    if sources and config is None and is_preset(sources[0]):
        config = sources.pop(0)  # `ominix data prepare tiny`: the preset, as every other command takes it
    cfg = load_config(one_preset(None, config), sets, {
        "data.sources": sources or None, "data.split": split, "data.tokenizer": tokenizer,
        "data.train_tokenizer": train_tokenizer, "data.vocab_size": vocab_size, "data.seq_len": seq_len,
        "data.text_field": text_field, "data.val_fraction": val_fraction, "data.seed": seed,
        "data.num_proc": num_proc, "data.streaming": streaming,
    }).data
    if tokenizer and train_tokenizer is None and cfg.train_tokenizer:
        cfg.train_tokenizer = False  # --tokenizer on the command line wins over a config's train_tokenizer
    log = (lambda line: typer.echo(line, err=True))
    out = out or default_out(cfg.sources, cfg.split)  # the summary names it
    progress = PrepareProgress() if not as_json and sys.stderr.isatty() else None
    manifest = run_prepare(cfg, out, force=force, progress=progress, log=log,
                           command=shlex.join(["ominix", *sys.argv[1:]]))
    if as_json:
        typer.echo(json.dumps({"path": str(out), **manifest}, indent=2))
    else:
        print_summary(manifest, str(out))


def default_out(sources: list[str], split: str) -> Path:
    """data/DATASET-SPLIT: ``cerebras/SlimPajama-627B`` and ``train[:10%]`` give
    data/slimpajama-train-10pct (a size suffix such as -627B dropped)."""
    first = sources[0].rstrip("/")
    if "*" in first:  # a glob: the directory it reads
        name = Path(first).parent.name
    elif Path(first).suffix in (".jsonl", ".json", ".parquet", ".txt", ".arrow", ".zst"):  # a file
        name = Path(first).name.split(".")[0]
    else:  # a Hub id, a directory or @embedded
        name = first.split("/")[-1]
    name = re.sub(r"-\d+(\.\d+)?[kmbt]$", "", name.lower().lstrip("@"))
    slug = re.sub(r"[^a-z0-9]+", "-", f"{name}-{split.lower().replace('%', 'pct')}").strip("-")
    return Path("data") / (slug + (f"-and-{len(sources) - 1}-more" if len(sources) > 1 else ""))


@app.command("inspect")
def inspect(
    path: Path = typer.Argument(..., help="A prepared data directory."),
    verify: bool = typer.Option(False, "--verify/--no-verify", help="Check every file's sha256."),
    sample: int = typer.Option(1, "--sample", help="Decode this many random training blocks."),
    as_json: bool = typer.Option(False, "--json/--no-json", help="Print the report as JSON."),
) -> None:
    """Show the sizes of a prepared directory, check its checksums, decode a sample. Exits 1 when
    --verify finds a problem.

    Examples:

      ominix data inspect data/tiny

      ominix data inspect data/sp1 --verify --json
    """
    from ominix.cli.data_view import print_report
    from ominix.data.summary import summarize

    report = summarize(path, verify=verify, samples=sample)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        print_report(report)
    if verify and report["problems"]:
        raise typer.Exit(1)


@app.command("batch")
def batch(
    path: Path = typer.Argument(..., help="A run directory or a release bundle (`ominix mof report`)."),
    step: int = typer.Option(..., "--step", help="The optimizer step (1 is the first)."),
    decode: bool = typer.Option(False, "--decode/--no-decode", help="Print each sequence as text."),
    data: Path = typer.Option(None, "--data", show_default=False,
                              help="The prepared data (default: the run's data.path, or the bundle's data/)."),
    as_json: bool = typer.Option(False, "--json/--no-json", help="Print the batch as JSON."),
) -> None:
    """Print the sequences one training step consumed, from the run's data-order ledger.

    Every sequence is a packed block of seq_len+1 token ids of the training split; the ledger
    (data_order.npy) records which blocks each step took, in the order the ranks took them.

    Examples:

      ominix data batch runs/tiny --step 3

      ominix data batch runs/tiny/release --step 200 --decode

      ominix data batch runs/tiny --step 1 --json
    """
    from ominix.cli.data_view import print_batch
    from ominix.data.ledger import step_batch

    result = step_batch(path, step, data, decode=decode)
    if as_json:
        typer.echo(json.dumps(result))
    else:
        print_batch(result)
