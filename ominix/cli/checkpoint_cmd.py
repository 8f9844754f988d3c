"""``ominix checkpoint``: list a run's checkpoints, export one to the Hugging Face format."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import typer

from ominix.errors import OminixError

app = typer.Typer(help="List checkpoints and export them to the Hugging Face format or GGUF.", no_args_is_help=True)


@app.command("export")
def export(
    source: Path = typer.Argument(..., help="Run directory (its latest checkpoint), checkpoint directory, or export."),
    out: Path = typer.Option(None, "--out", "-o", help="Output directory; default RUN_DIR/export."),
    fmt: str = typer.Option("hf", "--format", help="hf (transformers, vLLM, lm-eval) or gguf "
                            "(llama.cpp: OUT/model.gguf, default RUN_DIR/export-gguf)."),
    dtype: str = typer.Option(None, "--dtype", help="bf16, fp16 or fp32; default the run's training precision."),
    verify: bool = typer.Option(True, "--verify/--no-verify",
                                help="Load the export with transformers and compare logits (--format hf)."),
    force: bool = typer.Option(False, "--force/--no-force", help="Replace an existing output directory."),
    max_shard_size: str = typer.Option("5GB", "--max-shard-size",
                                       help="Largest safetensors shard (5GB, 500MB, 2GiB...); one "
                                       "model.safetensors when all fits (--format hf)."),
    as_json: bool = typer.Option(False, "--json/--no-json", help="Print the export metadata as JSON."),
) -> None:
    """Export a checkpoint to the Hugging Face format (config.json, generation_config.json,
    model.safetensors [+ index], tokenizer), loadable by transformers with no custom code; with
    --format gguf, one model.gguf that llama.cpp runs as it is (docs/EXPORT.md).

    Examples:

      ominix checkpoint export runs/tiny

      ominix checkpoint export runs/tiny/checkpoints/step_00000200 --out exports/tiny --dtype bf16

      ominix checkpoint export runs/tinyllama-1.1b --out /models/tl --force --max-shard-size 500MB

      ominix checkpoint export runs/tiny --format gguf --dtype fp16   # then: llama-cli -m OUT/model.gguf
    """
    from ominix.cli.progress_view import shown_progress
    from ominix.infer.export import export as do_export, parse_size

    if fmt not in ("hf", "gguf"):
        raise OminixError(f"--format {fmt!r} is not a format", "use --format hf or --format gguf")
    if fmt == "gguf":
        _export_gguf(source, out, dtype, force, as_json)
        return
    size = parse_size(max_shard_size)
    with shown_progress(not as_json) as progress:
        meta = do_export(source, out, dtype=dtype, verify=verify, force=force, max_shard_size=size,
                         command=shlex.join(["ominix", *sys.argv[1:]]), progress=progress)
    if as_json:
        typer.echo(json.dumps(meta, indent=2))
        return
    checked = f", verified (max |logit diff| {meta['verify']['max_abs_logit_diff']:.2g})" if "verify" in meta else ""
    typer.echo(f"exported {meta['source']} ({meta['dtype']}, {len(meta['files'])} weight file(s){checked})")
    typer.echo(f"-> {meta['out']}  sha256 {meta['model_sha256'][:16]}")


def _export_gguf(source: Path, out: Path | None, dtype: str | None, force: bool, as_json: bool) -> None:
    from ominix.infer.gguf_export import export_gguf

    meta = export_gguf(source, out, dtype=dtype, force=force, command=shlex.join(["ominix", *sys.argv[1:]]))
    if as_json:
        typer.echo(json.dumps(meta, indent=2))
        return
    tok = meta["tokenizer"]
    typer.echo(f"exported {meta['source']} to GGUF ({meta['dtype']}, tokenizer {tok['model']}, pre {tok['pre']})")
    typer.echo(f"-> {meta['out']}/model.gguf  sha256 {meta['files']['model.gguf'][:16]}")


@app.command("list")
def list_(
    run_dir: Path = typer.Argument(..., help="Run directory (logging.run_dir)."),
    as_json: bool = typer.Option(False, "--json/--no-json", help="Print a JSON list."),
) -> None:
    """List a run's checkpoints: step, tokens seen, loss, size, and why each is kept.

    Examples:

      ominix checkpoint list runs/tiny

      ominix checkpoint list runs/tiny --json
    """
    from ominix.checkpoint import list_checkpoints

    entries = list_checkpoints(run_dir)
    if as_json:
        typer.echo(json.dumps(entries, indent=2))
    elif not entries:
        typer.echo(f"{run_dir} has no checkpoints yet")
    else:
        typer.echo(format_table(entries))


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def format_table(entries: list[dict[str, Any]]) -> str:
    """The entries of ``list_checkpoints`` as an aligned text table."""
    rows = [("checkpoint", "step", "tokens", "loss", "size", "kept")]
    for e in entries:
        rows.append((
            e["name"], str(e["step"]),
            f"{e['tokens_seen']:,}" if e["tokens_seen"] is not None else "-",
            f"{e['loss']:.4f}" if e["loss"] is not None else "-",
            human_bytes(e["bytes"]), e["kept"] or "removed at next save",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
