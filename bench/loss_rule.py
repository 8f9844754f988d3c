"""Whether a faster path trains as well as the plain one: arms of seeded runs, mean loss at the end.

Each arm is a set of ``--set`` overrides; each (arm, seed) trains through ``ominix train launch`` with
the same data, preset, plugin and steps, and its score is the mean training loss over the last
``--tail`` steps. The rule: the candidate arm's mean score over seeds is not worse than the baseline
arm's by more than ``--tol`` nats (one-sided: a faster path that ends lower passes). Both arms' seed
spread (min, max, standard deviation) is reported, so a pass within the spread reads as such.

    python bench/loss_rule.py --preset tinyllama-1.1b --data DIR --plugin gemini --steps 200 \\
        --set schedule.global_batch_size=8 --seeds 7 42 1234 --tol 0.02 \\
        --arm eager=model.compile=false --arm compiled=model.compile=true \\
        --baseline eager --candidate compiled --work runs/rule   # -> bench/results/loss_rule_compiled_h200.json

The corpus of the measured rules is one a 200-step run sees once, built from files on the machine by
``bench/source_corpus.py`` (BENCHMARKS.md's loss-rule note has the three commands).

Runs are independent processes: ``--parallel N`` trains N at once on one GPU (memory permitting;
bf16 results do not depend on it). A run whose losses are already in ``--work`` is not trained again,
so a rule too long for one sitting continues in the next call, and ``--arms-only A B`` trains only
those arms (then ``--summarize`` computes the rule from ``--work`` without training).
``--baseline-result FILE`` takes the baseline arm's scores from an earlier rule file of the same
settings (FP8 against the compiled bf16 arm of the compile rule, say).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import childproc  # bench/childproc.py: this script's folder is on sys.path


def _losses(run_dir: Path) -> dict[int, float]:
    path = run_dir / "metrics.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


def train(args, arm: str, sets: list[str], seed: int) -> dict:
    """One (arm, seed) run, or its saved result; returns ``{"losses", "tokens_per_s", "seconds"}``."""
    saved = Path(args.work) / f"{arm}_seed{seed}.json"
    if saved.exists():
        return json.loads(saved.read_text())
    run_dir = Path(args.work) / f"{arm}_seed{seed}"
    every = [f"schedule.seed={seed}", "schedule.eval_every=0", "logging.log_every=1", "checkpoint.every=0",
             "logging.figure=false", "checkpoint.resume=never", "checkpoint.save_optimizer=false",
             *args.sets, *sets]
    cmd = [sys.executable, "-m", "ominix", "train", "launch", args.preset, "--data", args.data,
           "--run-dir", str(run_dir), "--plugin", args.plugin, "--nproc-per-node", "1",
           "--max-steps", str(args.steps), *[x for s in every for x in ("--set", s)]]
    start = time.monotonic()
    with open(Path(args.work) / f"{arm}_seed{seed}.log", "w") as log:
        code = subprocess.run(cmd, env={**childproc.GPU_ENV, **os.environ}, stdout=log, stderr=subprocess.STDOUT).returncode
    losses = _losses(run_dir)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # the end-of-run save: GBs a run at 1.1B
    if code or len(losses) != args.steps:
        raise SystemExit(f"error: {arm} seed {seed} exited {code} after {len(losses)} steps "
                         f"(log {Path(args.work) / f'{arm}_seed{seed}.log'})")
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["tokens_per_s"] for r in rows if r["kind"] == "train" and r.get("tokens_per_s")]
    result = {"arm": arm, "seed": seed, "sets": sets, "command": cmd, "seconds": round(time.monotonic() - start, 1),
              "tokens_per_s": round(statistics.median(speeds[len(speeds) // 2:]), 1) if speeds else None,
              "losses": [losses[s] for s in sorted(losses)]}
    saved.write_text(json.dumps(result))
    print(f"loss_rule: {arm} seed {seed}: last-{args.tail} mean {_score(result, args.tail):.4f}, "
          f"{result['seconds']} s", file=sys.stderr, flush=True)
    return result


def _score(run: dict, tail: int) -> float:
    return statistics.fmean(run["losses"][-tail:])


def _arm_summary(runs: list[dict], tail: int) -> dict:
    scores = [_score(r, tail) for r in runs]
    return {"seeds": [r["seed"] for r in runs], f"last{tail}_mean_loss": [round(s, 5) for s in scores],
            "mean": round(statistics.fmean(scores), 5), "min": round(min(scores), 5), "max": round(max(scores), 5),
            "stdev": round(statistics.stdev(scores), 5) if len(scores) > 1 else None,
            "tokens_per_s": [r["tokens_per_s"] for r in runs], "sets": runs[0]["sets"]}


def rule(args, results: dict[str, list[dict]]) -> dict:
    cand = _arm_summary(results[args.candidate], args.tail)
    if args.baseline_result:  # the baseline arm as an earlier rule file measured it (same settings)
        earlier = json.loads(Path(args.baseline_result).read_text())
        if earlier["settings"] != args.sets or earlier["steps"] != args.steps:
            raise SystemExit(f"error: {args.baseline_result} was measured with other settings or steps")
        base = earlier["arms"][args.baseline]
    else:
        base = _arm_summary(results[args.baseline], args.tail)
    diff = round(cand["mean"] - base["mean"], 5)
    import torch

    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {
        "name": f"loss rule {args.preset} {args.plugin} x1, {args.steps} steps: {args.candidate} vs {args.baseline}, "
                f"{len(args.seeds)} seeds", "card": card, "date": time.strftime("%Y-%m-%d"),
        "value": diff, "unit": f"nats: {args.candidate} minus {args.baseline}, mean over seeds of the "
                               f"last-{args.tail}-step mean training loss",
        "tolerance": args.tol, "ok": diff <= args.tol,
        "check": f"{args.candidate}'s mean <= {args.baseline}'s mean + tolerance (one-sided)",
        "arms": {args.baseline: base, args.candidate: cand}, "steps": args.steps, "settings": args.sets,
        "commands": [r["command"] for arm in results for r in results[arm]],
        "baseline_from": args.baseline_result,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tinyllama-1.1b")
    ap.add_argument("--data", required=True)
    ap.add_argument("--plugin", default="gemini")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--tail", type=int, default=50, help="steps at the end whose mean loss is the score")
    ap.add_argument("--seeds", type=int, nargs="+", default=[7, 42, 1234])
    ap.add_argument("--set", dest="sets", action="append", default=[], help="override for every arm")
    ap.add_argument("--arm", action="append", required=True, help="NAME=KEY=VALUE[,KEY=VALUE...]")
    ap.add_argument("--baseline", required=True)
    ap.add_argument("--candidate", required=True)
    ap.add_argument("--baseline-result", help="take the baseline arm from this earlier rule file")
    ap.add_argument("--tol", type=float, default=0.02)
    ap.add_argument("--parallel", type=int, default=1, help="runs trained at once on the one GPU")
    ap.add_argument("--arms-only", nargs="+", help="train only these arms (the rule needs both)")
    ap.add_argument("--summarize", action="store_true", help="compute the rule from --work, train nothing")
    ap.add_argument("--work", required=True, help="run directories and per-run results")
    ap.add_argument("--out", help="results file (default: bench/results/loss_rule_CANDIDATE_CARD.json)")
    args = ap.parse_args()
    arms = {name: sets.split(",") for name, _, sets in (a.partition("=") for a in args.arm)}
    Path(args.work).mkdir(parents=True, exist_ok=True)
    wanted = args.arms_only or ([args.candidate] if args.baseline_result else list(arms))
    todo = [(a, s) for a in arms if a in wanted for s in args.seeds]
    if not args.summarize:
        with ThreadPoolExecutor(args.parallel) as pool:
            list(pool.map(lambda job: train(args, job[0], arms[job[0]], job[1]), todo))
    compared = [args.candidate] if args.baseline_result else [args.baseline, args.candidate]
    missing = [f"{a} seed {s}" for a in compared for s in args.seeds
               if not (Path(args.work) / f"{a}_seed{s}.json").exists()]
    if missing:
        print(f"loss_rule: not yet trained: {', '.join(missing)}", file=sys.stderr)
        return 0
    results = {a: [train(args, a, arms[a], s) for s in args.seeds] for a in compared}
    out = rule(args, results)
    text = json.dumps(out, indent=1)
    path = Path(args.out or childproc.result_path(f"loss_rule_{args.candidate}", out["card"]))
    path.write_text(text + "\n")
    print(f"wrote {path}", file=sys.stderr)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
