"""``ominix eval``: loss and perplexity on held-out packed data (and optional lm-eval tasks)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import typer


def eval_(
    model: Path = typer.Option(..., "--model", "-m", help="Run, checkpoint, export, or Hub id ORG/NAME."),
    data: Path = typer.Option(None, "--data", help="Prepared data directory; default the run's data.path."),
    split: str = typer.Option("validation", "--split", help="Split of the prepared data."),
    out: Path = typer.Option(None, "--out", "-o", help="Results file; default RUN_DIR/eval/eval_results.json."),
    batch_size: int = typer.Option(8, "--batch-size", help="Blocks per forward pass."),
    max_blocks: int = typer.Option(None, "--max-blocks", help="Read N held-out blocks, spread over "
                                   "the split (what a run with schedule.eval_blocks N reads); default "
                                   "the whole split."),
    max_batches: int = typer.Option(None, "--max-batches", hidden=True,
                                    help="Old form of --max-blocks: N x --batch-size blocks."),
    device: str = typer.Option("auto", "--device", help="auto (cuda if present), cpu or cuda[:N]."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16 or fp32."),
    tasks: str = typer.Option(None, "--tasks", help="Comma-separated lm-evaluation-harness task names "
                              "or local task YAML files (needs ominix[eval]; docs/DOWNSTREAM_EVAL.md)."),
    as_json: bool = typer.Option(False, "--json/--no-json", help="Print the results as JSON."),
    force: bool = typer.Option(False, "--force/--no-force",
                               help="Replace an existing --out file that an earlier `ominix eval` did not write."),
) -> None:
    """Loss and perplexity, overall and per source set; writes eval_results.json (MOF evaluation results).

    Examples:

      ominix eval --model runs/tiny

      ominix eval --model exports/tiny --data data/tiny --split validation --out eval_results.json

      ominix eval --model runs/tiny --max-blocks 80 --json

      ominix eval --model runs/tiny --tasks arc_easy,tasks/my_task.yaml
    """
    from ominix.cli.progress_view import shown_progress
    from ominix.errors import OminixError
    from ominix.eval.run import run_eval
    from ominix.infer.load import torch_dtype

    if dtype != "auto":
        torch_dtype(dtype)  # an unknown dtype is refused before anything is loaded
    if max_batches is not None:
        if max_blocks is not None:
            raise OminixError("--max-blocks and --max-batches both given", "give --max-blocks N only")
        if max_batches < 1:
            raise OminixError(f"--max-batches {max_batches} must be at least 1", "e.g. --max-blocks 80")
        max_blocks = max_batches * batch_size  # the blocks the old flag named
    task_list = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None
    with shown_progress(not as_json) as progress:
        results = run_eval(model, data, split, out, batch_size, max_blocks, device, dtype,
                           shlex.join(["ominix", *sys.argv[1:]]), task_list, progress, force)
    if as_json:
        typer.echo(json.dumps(results, indent=2))
        return
    p = results["perplexity"]
    typer.echo(f"{split}: loss {p['loss']:.4f}  perplexity {p['perplexity']:.2f}  ({p['tokens']:,} tokens)")
    for name, n in p["per_source"].items():
        typer.echo(f"  {name}: loss {n['loss']:.4f}  perplexity {n['perplexity']:.2f}  ({n['tokens']:,} tokens)")
    typer.echo(f"wrote {results['out']}")
