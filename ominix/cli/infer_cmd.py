"""``ominix infer``: generate text from a run, a checkpoint or an export."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer


def infer(
    model: Path = typer.Option(..., "--model", "-m", help="Run, checkpoint, export, or Hub id ORG/NAME."),
    prompt: str = typer.Option(None, "--prompt", "-p", help="One prompt; the completion is streamed."),
    prompts_file: Path = typer.Option(None, "--prompts-file", help='JSON Lines, one {"prompt": ...} per line.'),
    out: Path = typer.Option(None, "--out", "-o",
                             help="Output JSONL (with --prompts-file default RUN_DIR/samples.jsonl)."),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", help="Tokens to generate (infer.max_new_tokens)."),
    temperature: float = typer.Option(None, "--temperature", help="0 = greedy (infer.temperature)."),
    top_k: int = typer.Option(None, "--top-k", help="Keep the k most likely tokens; 0 = off."),
    top_p: float = typer.Option(None, "--top-p", help="Nucleus sampling mass in (0, 1]; 1 = off."),
    repetition_penalty: float = typer.Option(None, "--repetition-penalty",
                                             help="Penalty (> 0) on tokens already seen; 1 = off."),
    seed: int = typer.Option(None, "--seed", help="Sampling seed."),
    device: str = typer.Option(None, "--device", help="auto (cuda if present), cpu or cuda[:N]."),
    dtype: str = typer.Option(None, "--dtype", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16 or fp32."),
    compile: bool = typer.Option(True, "--compile/--no-compile", help="torch.compile the decode step (GPU)."),
    kernels: bool = typer.Option(None, "--kernels/--no-kernels",
                                 help="OminiX's Triton decode kernels (default: on a GPU with Triton)."),
    as_json: bool = typer.Option(False, "--json/--no-json",
                                 help="With --prompt: print the record as JSON, no streaming."),
    force: bool = typer.Option(False, "--force/--no-force",
                               help="Replace an existing --out file that an earlier `ominix infer` did not write."),
) -> None:
    """Generate text with a KV cache (CUDA-graph decode on a GPU); greedy at --temperature 0.

    Settings default to the run's infer section (config.yaml), flags override them.

    Examples:

      ominix infer --model runs/tiny --prompt "Once upon a time" --temperature 0

      ominix infer --model exports/tiny --prompt "The" --max-new-tokens 64 --top-p 0.9 --seed 1

      ominix infer --model runs/tiny --prompts-file prompts.jsonl --out runs/tiny/samples.jsonl
    """
    from ominix.errors import OminixError
    from ominix.infer import session as s

    if (prompt is None) == (prompts_file is None):
        raise OminixError("give exactly one of --prompt and --prompts-file",
                          'e.g. ominix infer --model runs/tiny --prompt "Once upon a time"')
    flags = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k, "top_p": top_p,
             "repetition_penalty": repetition_penalty, "seed": seed, "device": device, "dtype": dtype}
    source, sampling, settings = s.settings(model, flags)
    prompts = s.read_prompts(prompts_file) if prompts_file is not None else None
    if prompts is None and out is not None:  # one prompt, recorded in a file instead of streamed
        prompts = [{"prompt": prompt}]
    target = s.samples_out(source, out, force, prompts_file) if prompts is not None else None
    session = s.open_session(source, settings.device, settings.dtype, compile, kernels)
    if prompts is not None:
        def progress(i: int, record: dict) -> None:
            typer.echo(f"[{i + 1}/{len(prompts)}] {record['completion_tokens']} tokens "
                       f"({record['finish_reason']})", err=True)

        count = s.complete_file(session, prompts, sampling, target, progress)
        typer.echo(f"wrote {count} samples to {target}")
        return
    started = time.perf_counter()
    write = (lambda text: None) if as_json else (lambda text: (sys.stdout.write(text), sys.stdout.flush()))
    record = s.complete(session, prompt, sampling, write)
    seconds = time.perf_counter() - started
    if as_json:
        typer.echo(json.dumps(record, ensure_ascii=False, indent=2))
    else:
        typer.echo("")
        typer.echo(f"[{record['completion_tokens']} tokens in {seconds:.2f}s, {record['finish_reason']}, "
                   f"{session.device} {session.dtype}]", err=True)
