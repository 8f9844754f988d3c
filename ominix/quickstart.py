"""``ominix quickstart``: the whole pipeline on the embedded corpus, on a CPU, in a few minutes.

data prepare -> train (tiny preset, 2 processes through torchrun + ColossalAI ddp, eval and checkpoints)
-> resume from the last checkpoint -> checkpoint export (verified with transformers) -> infer -> eval
-> MOF report. Each stage calls the same library function as its ``ominix`` command, so the
quickstart proves the commands a user runs next. Everything goes into one directory:

    OUT/data/  OUT/run/  OUT/run/export/  OUT/run/samples.jsonl  OUT/run/eval/eval_results.json
    OUT/release.yaml  OUT/TECHNICAL_REPORT.md  OUT/release/  OUT/quickstart.json (written last)
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ominix.errors import OminixError

MARKER = ".ominix-quickstart"  # written first: --force only ever deletes a directory that holds it
SUMMARY = "quickstart.json"  # written last: a directory without it is an interrupted quickstart
NPROC = 2
RESUME_STEPS = 50  # the first launch stops this many steps early; the second resumes from there
PROMPTS = [
    "The for statement is used to",
    "Return a new list containing",
    "This module provides functions for",
    "Raise ValueError if the",
    "The with statement",
]
SPARK = "▁▂▃▄▅▆▇█"
GPU_COMMANDS = [
    ("ominix data prepare --config llama2-7b cerebras/SlimPajama-627B --tokenizer ./llama2-tokenizer "
     "--out /shared/data/slimpajama"),
    "ominix train check-hosts llama2-7b --hostfile hosts.txt --nodes 4",
    ("ominix train launch llama2-7b --data /shared/data/slimpajama --run-dir /shared/runs/llama2-7b "
     "--hostfile hosts.txt --nodes 4 --nproc-per-node 8"),
    "ominix mof report /shared/runs/llama2-7b --release release.yaml --out /shared/release/llama2-7b",
]


def default_out() -> Path:
    return Path("runs") / time.strftime("quickstart-%Y%m%d-%H%M%S")


def claim_out(out: Path, force: bool) -> None:
    """Create ``out`` for a fresh quickstart; an existing one is replaced only with ``force`` and
    only when an earlier quickstart made it."""
    if out.exists():
        if not force:
            raise OminixError(f"{out} already exists", "pass --force to replace it, or choose another --out")
        if not (out / MARKER).is_file() and any(out.iterdir()):
            raise OminixError(f"{out} is not a quickstart directory; --force only replaces one",
                              "choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("written by `ominix quickstart`; quickstart.json marks a finished run\n")


def unigram_entropy(data_dir: Path, split: str = "train") -> float:
    """Entropy in nats of the token frequencies of a prepared split: the loss of the best model that
    ignores context. A model below it has learned from context."""
    import numpy as np

    manifest = json.loads((data_dir / "manifest.json").read_text())
    counts = sum(np.bincount(np.fromfile(data_dir / s["file"], dtype=manifest["dtype"]).astype(np.int64),
                             minlength=manifest["tokenizer"]["vocab_size"])
                 for s in manifest["splits"][split]["shards"])
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def sparkline(values: list[float], width: int = 40) -> str:
    if not values:
        return ""
    if len(values) > width:  # average into `width` buckets
        values = [sum(b) / len(b) for b in (values[i * len(values) // width:(i + 1) * len(values) // width]
                                            for i in range(width)) if b]
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    return "".join(SPARK[min(int((v - lo) / span * len(SPARK)), len(SPARK) - 1)] for v in values)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def release_yaml(out: Path, report: Path) -> Path:
    """The release metadata the quickstart declares: OminiX's code license, the corpus' license
    for data, CC-BY-4.0 for the documents it generates, and its technical report as the paper."""
    import yaml

    corpus = Path(__file__).parent / "data" / "corpus" / "LICENSE-PSF-2.0.txt"
    shutil.copyfile(corpus, out / "LICENSE-Python-2.0.txt")
    release = {
        "name": "ominix-quickstart-tiny",
        "producer": "ominix quickstart",
        "repository": "https://github.com/ominix/ominix",
        "licenses": {
            "code": {"name": "Apache-2.0"},
            # The corpus is CPython's documentation under CPython's LICENSE file (PSF License 2.0
            # and the history licenses before it): SPDX Python-2.0. MOT rates PSF-2.0 alone invalid.
            "data": {"name": "Python-2.0", "path": "LICENSE-Python-2.0.txt"},
            "document": {"name": "CC-BY-4.0"},
        },
        "technical_report": report.name,
        "research_paper": report.name,
    }
    path = out / "release.yaml"
    path.write_text("# Written by `ominix quickstart` (see `ominix mof init` for every field).\n"
                    + yaml.safe_dump(release, sort_keys=False))
    return path


def technical_report(path: Path, facts: dict[str, Any]) -> None:
    """A short technical report generated from the run's measured numbers."""
    m, curve = facts["model"], facts["loss_curve"]
    samples = "\n".join(f"- **{s['prompt']}** {' '.join(s['completion'].split())[:160]}" for s in facts["samples"])
    path.write_text(f"""# Technical report: OminiX quickstart ({facts['created']})

Generated by `ominix quickstart` from the numbers of this run; every number below is measured.

## Data
The corpus embedded in OminiX (CPython 3.11.7 reference topics and standard-library docstrings,
Python-2.0 license), tokenized with a byte-level BPE of {m['vocab_size']} tokens trained on it and
packed into blocks of {facts['seq_len']} tokens: {facts['train_tokens']:,} training and
{facts['val_tokens']:,} validation tokens (see DATA_CARD.md).

## Model and training
LLaMA decoder `tiny`: hidden {m['hidden_size']}, {m['num_hidden_layers']} layers,
{m['num_attention_heads']} heads, {facts['params']:,} parameters. Trained for {facts['steps']} steps of
{facts['global_batch_size']} sequences with AdamW and a cosine schedule, on {NPROC} CPU processes
through ColossalAI's ddp plugin: a first launch to step {facts['resumed_from_step']}, then a relaunch that
resumed from that checkpoint (cosine schedule stretched to {facts['steps']} steps). Training loss
{curve[0]:.3f} -> {curve[-1]:.3f}.

## Evaluation
Validation loss {facts['eval_loss']:.4f} nats/token (perplexity {facts['eval_perplexity']:.1f}), against
a unigram entropy of {facts['unigram_entropy']:.4f} nats/token on the training tokens: the model uses
context. Greedy samples (repetition penalty 1.3):

{samples}

## Limitations
A {facts['params']:,}-parameter model trained for minutes: a demonstration of the pipeline, not a
useful language model.
""")


class Stages:
    """Prints a header per stage and times it."""

    def __init__(self, console: Any, total: int) -> None:
        self.console, self.total, self.n, self.times = console, total, 0, {}

    def __call__(self, name: str, command: str) -> Stages:
        self.n += 1
        self.name = name
        self.console.rule(f"[bold]{self.n}/{self.total} {name}")
        self.console.print(f"[dim]$ {command}[/]", soft_wrap=True, highlight=False)
        return self

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.times[self.name] = round(time.perf_counter() - self.started, 1)


def run(out: Path | None = None, force: bool = False, steps: int = 200, console: Any = None,
        log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the pipeline into ``out`` (default runs/quickstart-TIMESTAMP); returns the summary that
    is also written, last, to OUT/quickstart.json."""
    from rich.console import Console

    from ominix.config import load_config
    from ominix.data.prepare import prepare
    from ominix.eval.run import run_eval
    from ominix.infer import session as infer_session
    from ominix.infer.export import export
    from ominix.release.bundle import make_bundle
    from ominix.launch.run import launch

    if steps <= RESUME_STEPS:
        raise OminixError(f"--steps {steps} leaves nothing to resume", f"use --steps > {RESUME_STEPS}")
    console = console or Console()
    out = (out or default_out()).absolute()
    claim_out(out, force)
    data, run_dir = out / "data", out / "run"
    stage = Stages(console, 7)

    with stage("data prepare", f"ominix data prepare --config tiny --out {data}"):
        cfg = load_config("tiny")
        prepare(cfg.data, data, progress=console.is_terminal, log=log,
                command=f"ominix data prepare --config tiny --out {data}")
        entropy = unigram_entropy(data)
        console.print(f"unigram entropy of the training tokens: {entropy:.4f} nats/token")

    flags = {"data.path": str(data), "logging.run_dir": str(run_dir), "launch.nproc_per_node": NPROC}
    first = steps - RESUME_STEPS
    launch_cmd = f"ominix train launch tiny --data {data} --run-dir {run_dir} --nproc-per-node {NPROC}"
    with stage(f"train to step {first} ({NPROC} processes, ddp)", f"{launch_cmd} --max-steps {first}"):
        _check(launch(load_config("tiny", [], {**flags, "schedule.max_steps": first})), "training")
    # A relaunch with more steps resumes model, optimizer, data position and RNG from the latest
    # checkpoint; its learning-rate schedule is stretched to the new max_steps.
    with stage(f"resume to step {steps}", f"{launch_cmd} --max-steps {steps} --resume auto"):
        _check(launch(load_config("tiny", [], {**flags, "schedule.max_steps": steps, "checkpoint.resume": "auto"})),
               "the resumed training")

    with stage("checkpoint export (verified with transformers)", f"ominix checkpoint export {run_dir}"):
        meta = export(run_dir, verify=True, command=f"ominix checkpoint export {run_dir}")
        console.print(f"exported to {meta['out']}; max |logit diff| vs transformers "
                      f"{meta['verify']['max_abs_logit_diff']:.2g}")

    prompts = out / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    samples_path = run_dir / "samples.jsonl"
    with stage("infer", f"ominix infer --model {run_dir} --prompts-file {prompts} --temperature 0 "
                        f"--repetition-penalty 1.3 --out {samples_path}"):
        source, sampling, settings = infer_session.settings(run_dir, {"temperature": 0.0, "repetition_penalty": 1.3,
                                                                       "device": "cpu"})
        session = infer_session.open_session(source, settings.device, settings.dtype, compile=False)
        infer_session.complete_file(session, infer_session.read_prompts(prompts), sampling, samples_path)
        samples = [json.loads(line) for line in samples_path.read_text().splitlines()]
        for s in samples:
            console.print(f"[bold]{s['prompt']}[/]{s['completion']}", highlight=False, markup=True)

    with stage("eval", f"ominix eval --model {run_dir} --data {data}"):
        results = run_eval(run_dir, data, command=f"ominix eval --model {run_dir} --data {data}")
        p = results["perplexity"]
        console.print(f"validation loss {p['loss']:.4f} (perplexity {p['perplexity']:.1f}) vs unigram "
                      f"entropy {entropy:.4f}")

    metrics = read_metrics(run_dir)
    curve = [r["loss"] for r in metrics if r["kind"] == "train"]
    resumed = [line for line in (run_dir / "train.log").read_text().splitlines() if line.startswith("resumed from")]
    run_cfg = load_config(str(run_dir / "config.yaml"))
    manifest = json.loads((data / "manifest.json").read_text())
    from ominix.flops import num_params

    facts = {
        "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": run_cfg.model.model_dump(), "params": num_params(run_cfg.model), "steps": steps,
        "global_batch_size": run_cfg.schedule.global_batch_size, "seq_len": run_cfg.data.seq_len,
        "train_tokens": manifest["splits"]["train"]["tokens"],
        "val_tokens": manifest["splits"]["validation"]["tokens"], "resumed_from_step": first,
        "loss_curve": curve, "eval_loss": p["loss"], "eval_perplexity": p["perplexity"],
        "unigram_entropy": entropy, "samples": samples,
    }
    report = out / "TECHNICAL_REPORT.md"
    technical_report(report, facts)
    release = release_yaml(out, report)
    bundle_dir = out / "release"
    with stage("mof report", f"ominix mof report {run_dir} --release {release} --out {bundle_dir}"):
        result, bundle = make_bundle(run_dir, bundle_dir, release,
                                     command=f"ominix mof report {run_dir} --release {release} --out {bundle_dir}")
        console.print(f"{result.label}; bundle {bundle}")

    mfu = [r.get("mfu") for r in metrics if r["kind"] == "train"]
    tflops = [r["tflops_per_device"] for r in metrics if r["kind"] == "train" and r.get("tflops_per_device")]
    summary = {
        "out": str(out),
        "artifacts": {
            "data": str(data), "data_card": str(data / "DATA_CARD.md"), "run": str(run_dir),
            "metrics": str(run_dir / "metrics.jsonl"), "checkpoints": str(run_dir / "checkpoints"),
            "export": meta["out"], "samples": str(samples_path), "eval_results": results["out"],
            "technical_report": str(report), "release_yaml": str(release), "bundle": str(bundle),
        },
        "steps": steps, "resumed": {"from_step": first, "log": resumed},
        "loss_curve": {"first": curve[0], "last": curve[-1], "sparkline": sparkline(curve)},
        "eval_loss": p["loss"], "eval_perplexity": p["perplexity"], "unigram_entropy": entropy,
        "learned": p["loss"] < entropy,
        "mfu": mfu[-1] if mfu and mfu[-1] is not None else None,
        "mfu_note": None if mfu and mfu[-1] is not None else
        "n/a: MFU needs the peak FLOP/s of the device; OminiX's table has GPUs only, and a CPU's "
        "peak depends on its cores, clock and vector units",
        "tflops_per_device": tflops[-1] if tflops else None,
        "mof": {"class": result.mof_class, "label": result.label},
        "stage_seconds": stage.times,
        "gpu_cluster": GPU_COMMANDS,
    }
    tmp = out / f".{SUMMARY}.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(out / SUMMARY)
    return summary


def _check(code: int, what: str) -> None:
    if code:
        raise OminixError(f"{what} exited with code {code}", "see the log above; rerun with --force to start over")


def print_summary(summary: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    console.rule("[bold]summary")
    table = Table(show_header=False, box=None)
    for name, path in summary["artifacts"].items():
        table.add_row(name, path)
    console.print(table)
    c = summary["loss_curve"]
    console.print(f"train loss  {c['first']:.3f} {c['sparkline']} {c['last']:.3f}", highlight=False)
    verdict = "learned from context" if summary["learned"] else "NOT below the unigram entropy"
    console.print(f"eval loss   {summary['eval_loss']:.4f} (perplexity {summary['eval_perplexity']:.1f}) vs "
                  f"unigram entropy {summary['unigram_entropy']:.4f}: {verdict}", highlight=False)
    console.print(f"resumed     from step {summary['resumed']['from_step']} ({len(summary['resumed']['log'])} resume)")
    tf = summary["tflops_per_device"]
    mfu = f"{summary['mfu']:.1%}" if summary["mfu"] is not None else summary["mfu_note"]
    console.print(f"MFU         {mfu}" + (f" ({tf:.3f} TFLOP/s per process measured)" if tf else ""), soft_wrap=True)
    console.print(f"MOF         [bold]{summary['mof']['label']}[/]")
    times = ", ".join(f"{k} {v:.0f}s" for k, v in summary["stage_seconds"].items())
    console.print(f"stages      {times}", soft_wrap=True)
    console.print("\nThe same on a GPU cluster (llama2-7b preset, 4 nodes x 8 GPUs; add --dry-run to see the plan):")
    for cmd in summary["gpu_cluster"]:
        console.print(f"  {cmd}", highlight=False, soft_wrap=True)
    console.print(f"\ndone: {os.path.join(summary['out'], SUMMARY)}")
