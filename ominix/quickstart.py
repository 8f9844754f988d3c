"""``ominix quickstart``: the whole pipeline on the embedded corpus, on a CPU, in a few minutes.

data prepare -> train the first steps of the schedule (tiny preset, 2 processes through torchrun +
ColossalAI ddp, eval and checkpoints) -> resume from the last checkpoint to the schedule's end ->
infer -> eval -> checkpoint export (verified with transformers; its card carries the evaluation) ->
MOF report. Each stage calls the same library function as its ``ominix`` command, so the quickstart
proves the commands a user runs next. :func:`run` prints nothing: it reports each stage and its
outcome to an ``on_event`` callback (``ominix.cli.quickstart_view`` shows them) and returns the
summary. Everything goes into one
directory:

    OUT/data/  OUT/run/  OUT/run/export/  OUT/run/samples.jsonl  OUT/run/eval/eval_results.json
    OUT/release.yaml  OUT/TECHNICAL_REPORT.md + OUT/training.png (the run's figure, which the report
    shows)  OUT/release/  OUT/quickstart.json (written last)
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ominix import atomic
from ominix.errors import OminixError
from ominix.train.figure import FIGURE

if TYPE_CHECKING:
    from ominix.data.prepare import PrepareReporter

MARKER = atomic.MARKER  # written first: --force only ever deletes a directory whose marker says quickstart
SUMMARY = "quickstart.json"  # written last: a directory without it is an interrupted quickstart
NPROC = 2
RESUME_STEPS = 50  # the first launch trains all but the last this many steps; the second resumes there
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
    ("ominix train launch llama2-7b --data /shared/data/slimpajama --out /shared/runs/llama2-7b "
     "--hostfile hosts.txt --nodes 4 --nproc-per-node 8"),
    "ominix mof report /shared/runs/llama2-7b --release release.yaml --out /shared/release/llama2-7b",
]


def default_out() -> Path:
    return Path("runs") / time.strftime("quickstart-%Y%m%d-%H%M%S")


def claim_out(out: Path, force: bool) -> None:
    """Create ``out`` for a fresh quickstart; an existing one is replaced only with ``force`` and
    only when an earlier quickstart made it."""
    atomic.check_replaceable(out, "quickstart", force)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    atomic.write_marker(out, "quickstart")


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

    from ominix.data import embedded

    license_file = f"LICENSE-{embedded.LICENSE}.txt"
    shutil.copyfile(embedded.LICENSE_FILE, out / license_file)
    release = {
        "name": "ominix-quickstart-tiny",
        "producer": "ominix quickstart",
        "repository": "https://github.com/ominix/ominix",
        "licenses": {
            "code": {"name": "Apache-2.0"},
            "data": {"name": embedded.LICENSE, "path": license_file},
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
    """A short technical report generated from the run's measured numbers; ``facts["figure"]`` is
    the training figure's path relative to the report (None: there is none)."""
    m, curve = facts["model"], facts["loss_curve"]
    figure = (f"![Training and validation loss, learning rate and throughput per step]({facts['figure']})"
              if facts["figure"] else "(No training figure: matplotlib was not installed when the run trained.)")
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
through ColossalAI's ddp plugin: a first launch trained steps 1-{facts['resumed_from_step']} of the
{facts['steps']}-step schedule, then a relaunch resumed from its checkpoint and continued the same
learning-rate curve to step {facts['steps']}. Training loss
{curve[0]:.3f} -> {curve[-1]:.3f}.

{figure}

## Evaluation
Validation loss {facts['eval_loss']:.4f} nats/token (perplexity {facts['eval_perplexity']:.1f}), against
a unigram entropy of {facts['unigram_entropy']:.4f} nats/token on the training tokens: the model uses
context. Greedy samples (repetition penalty 1.3):

{samples}

## Limitations
A {facts['params']:,}-parameter model trained for minutes: a demonstration of the pipeline, not a
useful language model.
""")


Event = Callable[[str, dict[str, Any]], None]
"""``on_event(kind, info)`` of :func:`run`. Kinds and their info: ``stage`` (n, total, name, command:
a stage starts), ``entropy`` (entropy), ``export`` (out, max_abs_logit_diff), ``samples`` (samples),
``eval`` (loss, perplexity, entropy), ``bundle`` (label, bundle)."""


class Stages:
    """Numbers and times the stages, reporting each start as a ``stage`` event."""

    def __init__(self, on_event: Event, total: int) -> None:
        self.on_event, self.total, self.n, self.times = on_event, total, 0, {}

    def __call__(self, name: str, command: str) -> Stages:
        self.n += 1
        self.name = name
        self.on_event("stage", {"n": self.n, "total": self.total, "name": name, "command": command})
        return self

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.times[self.name] = round(time.perf_counter() - self.started, 1)


def run(out: Path | None = None, force: bool = False, steps: int = 200, *, on_event: Event | None = None,
        progress: PrepareReporter | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the pipeline into ``out`` (default runs/quickstart-TIMESTAMP); returns the summary that
    is also written, last, to OUT/quickstart.json. ``on_event`` hears of each stage and its outcome
    (see :data:`Event`); ``progress`` and ``log`` go to data preparation (``ominix.data.prepare``)."""
    from ominix.config import load_config
    from ominix.data.prepare import prepare
    from ominix.eval.run import run_eval
    from ominix.infer import session as infer_session
    from ominix.infer.export import export
    from ominix.release.bundle import make_bundle
    from ominix.launch.run import launch

    if steps < RESUME_STEPS + 10:  # the first launch needs a few steps before it stops
        raise OminixError(f"--steps {steps} is too few: the last {RESUME_STEPS} run after a resume",
                          f"use --steps {RESUME_STEPS + 10} or more")
    on_event = on_event or (lambda kind, info: None)
    out = (out or default_out()).absolute()
    claim_out(out, force)
    data, run_dir = out / "data", out / "run"
    stage = Stages(on_event, 7)

    with stage("data prepare", f"ominix data prepare --config tiny --out {data}"):
        cfg = load_config("tiny")
        prepare(cfg.data, data, progress=progress, log=log,
                command=f"ominix data prepare --config tiny --out {data}")
        entropy = unigram_entropy(data)
        on_event("entropy", {"entropy": entropy})

    flags = {"data.path": str(data), "logging.run_dir": str(run_dir), "launch.nproc_per_node": NPROC}
    first = steps - RESUME_STEPS
    launch_cmd = f"ominix train launch tiny --data {data} --out {run_dir} --nproc-per-node {NPROC}"
    # The first launch trains the first steps of the whole run's schedule (schedule.decay_steps), so
    # the relaunch resumes model, optimizer, data position and RNG from its last checkpoint and
    # continues the same learning-rate curve to its end.
    with stage(f"train steps 1-{first} of {steps} ({NPROC} processes, ddp)",
               f"{launch_cmd} --max-steps {first} --set schedule.decay_steps={steps}"):
        first_cfg = load_config("tiny", [], {**flags, "schedule.max_steps": first, "schedule.decay_steps": steps})
        _check(launch(first_cfg), "training")
    with stage(f"resume to step {steps}", f"{launch_cmd} --max-steps {steps} --resume auto"):
        _check(launch(load_config("tiny", [], {**flags, "schedule.max_steps": steps, "checkpoint.resume": "auto"})),
               "the resumed training")

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
        on_event("samples", {"samples": samples})

    with stage("eval", f"ominix eval --model {run_dir} --data {data}"):
        results = run_eval(run_dir, data, command=f"ominix eval --model {run_dir} --data {data}")
        p = results["perplexity"]
        on_event("eval", {"loss": p["loss"], "perplexity": p["perplexity"], "entropy": entropy})

    # after the eval, so the export's model card carries the evaluation (its Hub model-index)
    with stage("checkpoint export (verified with transformers)", f"ominix checkpoint export {run_dir}"):
        meta = export(run_dir, verify=True, command=f"ominix checkpoint export {run_dir}")
        on_event("export", {"out": meta["out"], "max_abs_logit_diff": meta["verify"]["max_abs_logit_diff"]})

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
    figure = run_dir / FIGURE  # drawn by training at its end (when matplotlib is installed)
    if figure.is_file():
        shutil.copyfile(figure, out / figure.name)  # next to the report, which links it
    facts["figure"] = figure.name if figure.is_file() else None
    technical_report(report, facts)
    release = release_yaml(out, report)
    bundle_dir = out / "release"
    with stage("mof report", f"ominix mof report {run_dir} --release {release} --out {bundle_dir}"):
        result, bundle = make_bundle(run_dir, bundle_dir, release,
                                     command=f"ominix mof report {run_dir} --release {release} --out {bundle_dir}")
        on_event("bundle", {"label": result.label, "bundle": str(bundle)})

    mfu = [r.get("mfu") for r in metrics if r["kind"] == "train"]
    tflops = [r["tflops_per_device"] for r in metrics if r["kind"] == "train" and r.get("tflops_per_device")]
    summary = {
        "out": str(out),
        "artifacts": {
            "data": str(data), "data_card": str(data / "DATA_CARD.md"), "run": str(run_dir),
            "metrics": str(run_dir / "metrics.jsonl"), "checkpoints": str(run_dir / "checkpoints"),
            "export": meta["out"], "samples": str(samples_path), "eval_results": results["out"],
            "technical_report": str(report), "release_yaml": str(release), "bundle": str(bundle),
            **({"figure": str(out / figure.name)} if facts["figure"] else {}),
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
    atomic.write_text(out / SUMMARY, json.dumps(summary, indent=2) + "\n")
    return summary


def _check(code: int, what: str) -> None:
    if code in (130, 143):  # the stage was stopped by Ctrl-C or SIGTERM (it saved and said so)
        raise KeyboardInterrupt
    if code:
        raise OminixError(f"{what} exited with code {code}", "see the log above; rerun with --force to start over")

