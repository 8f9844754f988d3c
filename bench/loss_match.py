"""Speed must not change the math: the same seeded run with and without the optimised model path.

Trains the same preset twice through ``ominix train launch`` (same data, seed, plugin, steps):
once plain (eager layers, unfused loss), once optimised (``model.compile=true`` and the chunked
lm_head + cross-entropy), and compares the per-step training losses. bf16 runs differ in rounding
(fused kernels round once where eager rounds per op) and the difference is chaotic step to step, so
the check is on the curve: the mean per-step |difference| and the difference of the last 10 steps'
mean loss must both be within ``--tol``; the largest single-step difference is reported too.

    python bench/loss_match.py --data prepared/tiny --plugin gemini --steps 50   # -> loss_match_tiny_gemini_CARD.json
    python bench/loss_match.py --summarize bench/results/loss_match_tiny_gemini_h200.json   # re-check saved losses

A comparison is written to ``bench/results/loss_match_SIZE_PLUGIN_CARD.json`` unless ``--out`` names
another file; a side trained alone (``--side``) is written only where ``--out`` says.

Controls: ``--compile-backend aot_eager`` traces the optimised side's compiled code but runs it with
eager kernels (tracing and hooks without fusion); ``--set model.compile=false --set model.loss_chunk=0
--optimised-set model.attn=cudnn`` runs eager on both sides with one change (another kernel's rounding).
``--control`` trains the plain run a second time (plus any ``--control-set``) and reports it against
the first the same way: the floor that the same code, run again, reaches (bf16 GPU kernels with
atomics are not bit-reproducible, and 200 steps amplify any difference).

One seed is one sample of a chaotic difference; ``--seed N`` picks the run's seed (``schedule.seed``:
initialisation and data order) and ``--combine`` checks the mean over several seeds' results files:

    for s in 7 42 1234; do python bench/loss_match.py ... --seed $s --control --out lm_$s.json; done
    python bench/loss_match.py --combine lm_7.json lm_42.json lm_1234.json --tol 0.02 --out lm.json

A side too long for one sitting (the 1.1B preset's own batch over 200 steps is ~7-9 minutes a side on
an H200) trains alone with ``--side plain|optimised``, and ``--pair`` compares two such files of the
same settings; two plain files make the control:

    python bench/loss_match.py ... --side plain --out plain.json      # one job
    python bench/loss_match.py ... --side optimised --out fast.json   # the next job
    python bench/loss_match.py --pair plain.json fast.json --tol 0.02 --out lm.json

``--stop-after N`` stops a side after N of its ``--steps`` (SIGTERM: the run saves and exits), so its
learning rate follows the whole run's schedule: the first N steps of a long match in less time.
``--time-limit S`` stops a side the same way after S seconds, so a run cut by a wall-clock limit (a
job's, or a reserved node's) still writes the steps it made. ``--pair`` of a stopped side and a whole
one compares the steps both have.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import childproc  # bench/childproc.py: this script's folder is on sys.path


def _train(args, run_dir: Path, side: str) -> dict[int, float]:
    """Train one side: ``plain``, ``optimised`` or ``control`` (plain with ``--control-set``)."""
    optimised = side == "optimised"
    sets = [f"model.compile={str(optimised).lower()}", f"model.loss_chunk={8192 if optimised else 0}",
            "schedule.eval_every=0", "logging.log_every=1", "checkpoint.every=0",
            *([f"schedule.seed={args.seed}"] if args.seed is not None else []), *args.sets,
            *(args.optimised_sets if optimised else []), *(args.control_sets if side == "control" else [])]
    cmd = [sys.executable, "-m", "ominix", "train", "launch", args.preset, "--data", args.data,
           "--run-dir", str(run_dir), "--plugin", args.plugin, "--nproc-per-node", str(args.nproc),
           "--max-steps", str(args.steps), *[x for s in sets for x in ("--set", s)]]
    env = {**childproc.GPU_ENV, **os.environ}
    if optimised and args.compile_backend:  # every torch.compile of the run's processes takes it
        site = run_dir.parent / "site-optimised"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(
            "import functools\nimport torch\n"
            f"torch.compile = functools.partial(torch.compile, backend={args.compile_backend!r})\n")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(cmd, env=env)
    deadline = time.monotonic() + args.time_limit if args.time_limit else None
    why = None
    while proc.poll() is None and why is None:
        if args.stop_after and len(_losses(run_dir)) >= args.stop_after:
            why = "after"
        elif deadline and time.monotonic() >= deadline:
            why = f"at the time limit ({args.time_limit:g} s), after"
        else:
            time.sleep(0.5)
    if why:
        proc.send_signal(signal.SIGTERM)  # the run finishes its step, saves a checkpoint and exits 143
    code = proc.wait()
    if code and not (why and code == 128 + signal.SIGTERM):
        raise subprocess.CalledProcessError(code, cmd)
    losses = {s: v for s, v in _losses(run_dir).items() if not args.stop_after or s <= args.stop_after}
    if not losses:
        raise SystemExit(f"error: the {side} run logged no training step")
    if why:
        print(f"loss_match: {side} stopped {why} step {len(losses)} of {args.steps} (SIGTERM)", file=sys.stderr)
    return losses


def _losses(run_dir: Path) -> dict[int, float]:
    """The training losses a run has logged so far (whole lines only: the run may be writing one)."""
    path = run_dir / "metrics.jsonl"
    text = path.read_text() if path.exists() else ""
    rows = [json.loads(x) for x in text[:text.rfind("\n") + 1].splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


def summarize(plain: list[float], fast: list[float], tol: float) -> dict:
    diffs = [b - a for a, b in zip(plain, fast)]
    worst = max(range(len(diffs)), key=lambda i: abs(diffs[i]))
    tail = min(10, len(diffs))
    mean_abs = sum(abs(d) for d in diffs) / len(diffs)
    final = sum(diffs[-tail:]) / tail
    return {
        "value": round(mean_abs, 5), "unit": "mean |loss difference| per step",
        "last10_mean_loss_diff": round(final, 5), "max_abs_diff": round(abs(diffs[worst]), 5),
        "max_abs_diff_step": worst + 1, "tolerance": tol,
        "check": "mean |diff| <= tolerance and |mean diff over the last 10 steps| <= tolerance",
        "ok": mean_abs <= tol and abs(final) <= tol,
        "first_loss": [plain[0], fast[0]], "last_loss": [plain[-1], fast[-1]],
    }


def combine(results: list[dict], tol: float) -> dict:
    """The check over several seeds: the mean of each seed's mean |diff| and of its last-10 signed
    difference (a systematic offset survives the mean, chaos of either sign averages out); each
    seed's figures, and the control's where every file has one, stay in the result."""
    def mean(values: list[float]) -> float:
        return round(sum(values) / len(values), 5)

    seeds = [r.get("seed") for r in results]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"error: --combine takes one results file per seed, got seeds {seeds}")
    names = {r["name"].split(", seed")[0] for r in results}
    if len(names) != 1:
        raise SystemExit(f"error: --combine takes results of one comparison, got {sorted(names)}")
    per_seed = [{"seed": r.get("seed"), "value": r["value"], "last10_mean_loss_diff": r["last10_mean_loss_diff"],
                 "max_abs_diff": r["max_abs_diff"], "control": r.get("control")} for r in results]
    value, final = mean([r["value"] for r in results]), mean([r["last10_mean_loss_diff"] for r in results])
    out = {
        "name": f"{names.pop()}, mean over {len(results)} seeds",
        "card": results[0].get("card"), "date": max(r.get("date", "") for r in results),
        "baseline": None, "ratio": None,
        "value": value, "unit": "mean over seeds of the mean |loss difference| per step",
        "last10_mean_loss_diff": final, "max_abs_diff": max(r["max_abs_diff"] for r in results),
        "tolerance": tol, "ok": value <= tol and abs(final) <= tol,
        "check": "mean over seeds of mean |diff| <= tolerance and |mean over seeds of the last-10 mean diff| <= tolerance",
        "seeds": seeds, "per_seed": per_seed, "commands": [r.get("command") or r.get("commands") for r in results],
    }
    if all(r.get("control") for r in results):
        controls = [r["control"] for r in results]
        out["control"] = {"value": mean([c["value"] for c in controls]),
                          "last10_mean_loss_diff": mean([c["last10_mean_loss_diff"] for c in controls]),
                          "settings": controls[0].get("settings")}
    return out


def data_id(path: str | None) -> str | None:
    """The prepared data's content: a hash of its shards' sha256s from the manifest (the manifest's own
    hash changes with its creation time, so a corpus prepared again on another machine keeps its id)."""
    if not path:
        return None
    from ominix.data.store import read_manifest

    splits = read_manifest(path)["splits"]
    shards = [shard["sha256"] for split in sorted(splits) for shard in splits[split]["shards"]]
    return hashlib.sha256("".join(shards).encode()).hexdigest()[:16]


def _key(args) -> dict:
    """What two runs must share to be compared: everything but the side-specific settings."""
    return {"preset": args.preset, "plugin": args.plugin, "nproc": args.nproc, "steps": args.steps,
            "seed": args.seed, "sets": args.sets, "data": data_id(args.data)}


def half(args, side: str, losses: dict[int, float]) -> dict:
    """The results file of one side trained alone (``--side``), for ``--pair``."""
    from ominix.flops import device_name

    return {"name": f"loss match {args.preset} {args.plugin} x{args.nproc}, one side: {side}", "side": side,
            "card": device_name(), "date": time.strftime("%Y-%m-%d"),
            "command": " ".join(["bench/loss_match.py", *sys.argv[1:]]), "key": _key(args),
            "stopped_after": len(losses) if len(losses) < args.steps else None,
            "side_settings": {"optimised_sets": args.optimised_sets, "compile_backend": args.compile_backend}
            if side == "optimised" else {}, "losses": {side: [losses[s] for s in sorted(losses)]}}


def _compared(key: dict, what: str, plain: list[float], other: list[float], other_name: str, tol: float) -> dict:
    """The comparison of two loss curves of the runs ``key`` describes (shared by one call and --pair)."""
    seed = f", seed {key['seed']}" if key["seed"] is not None else ""
    steps = f"{len(plain)} steps" if len(plain) >= key["steps"] else f"first {len(plain)} of {key['steps']} steps"
    return {"name": f"loss match {key['preset']} {key['plugin']} x{key['nproc']}, {steps}: {what}{seed}",
            "baseline": None, "ratio": None, "seed": key["seed"], **summarize(plain, other, tol),
            "losses": {"plain": plain, other_name: other}}


def _emit(result: dict, out: str | None, key: dict | None = None) -> None:
    """Print ``result`` without its loss curves; write it whole to ``out``, or, for a comparison of
    the runs ``key`` describes, to its stable name under bench/results/."""
    print(json.dumps({k: v for k, v in result.items() if k != "losses"}, indent=1))
    if not out and key:
        out = childproc.result_path(f"loss_match_{childproc.preset_size(key['preset'])}_{key['plugin']}",
                                    result.get("card") or "cpu")
    if out:
        Path(out).write_text(json.dumps(result, indent=1) + "\n")


def pair(first: dict, second: dict, tol: float) -> dict:
    """Two one-side files of the same settings compared as one run would compare them: plain against
    optimised, or plain against plain (the control: the same code trained twice)."""
    sides = (first.get("side"), second.get("side"))
    if None in sides or "optimised" == sides[0]:
        raise SystemExit(f"error: --pair takes a plain side first, then a plain or optimised one (got {sides})")
    if first["key"] != second["key"]:
        keys = {**first["key"], **second["key"]}
        changed = sorted(k for k in keys if first["key"].get(k) != second["key"].get(k))
        raise SystemExit(f"error: --pair takes two sides of the same settings; these differ in {', '.join(changed)}")
    optimised = sides[1] == "optimised"
    plain, other = first["losses"][sides[0]], second["losses"][sides[1]]
    steps = min(len(plain), len(other))  # a side stopped early (--stop-after, --time-limit): the steps both have
    result = _compared(first["key"], "optimised vs plain" if optimised else "plain vs plain (control)",
                       plain[:steps], other[:steps], sides[1] if optimised else "control", tol)
    return {"name": result.pop("name"), "card": first["card"], "date": max(first["date"], second["date"]),
            "commands": [first["command"], second["command"]], **result}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--data", help="prepared data directory")
    ap.add_argument("--plugin", default="gemini")
    ap.add_argument("--nproc", type=int, default=1)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--tol", type=float, default=0.05, help="allowed mean per-step and final loss difference")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--optimised-set", dest="optimised_sets", action="append", default=[],
                    help="a setting of the optimised side only (after --set); with --set model.compile=false "
                    "--set model.loss_chunk=0 it compares eager against eager with one change, e.g. "
                    "model.attn=cudnn: another kernel's rounding, the same math")
    ap.add_argument("--compile-backend", help="torch.compile backend of the optimised side (aot_eager: the "
                    "compiled region traced and run by eager kernels, which tells tracing from fusion)")
    ap.add_argument("--control", action="store_true", help="train the plain side again (with any --control-set) "
                    "and report it against the first: the floor of the same code run twice")
    ap.add_argument("--control-set", dest="control_sets", action="append", default=[],
                    help="a setting of the control run only (implies --control), e.g. model.attn=cudnn")
    ap.add_argument("--seed", type=int, help="the runs' seed (schedule.seed: initialisation and data order)")
    ap.add_argument("--summarize", help="re-check the losses saved in this results file (no training)")
    ap.add_argument("--combine", nargs="+", metavar="FILE", help="check the mean over these results files, one "
                    "per seed (no training)")
    ap.add_argument("--stop-after", type=int, metavar="N", help="stop each run after N of its --steps, "
                    "keeping the learning-rate schedule of --steps (SIGTERM: it saves and exits)")
    ap.add_argument("--time-limit", type=float, metavar="S", help="with --side: stop the run after S seconds "
                    "(SIGTERM) and write the steps it made")
    ap.add_argument("--side", choices=["plain", "optimised"], help="train this side alone and write it for --pair")
    ap.add_argument("--pair", nargs=2, metavar=("PLAIN", "OTHER"), help="compare two --side files of the same "
                    "settings: a plain one, then an optimised one (or a second plain one: the control)")
    ap.add_argument("--out", help="results file (default: bench/results/loss_match_SIZE_PLUGIN_CARD.json; "
                    "a --side file only where this says)")
    args = ap.parse_args()

    if args.pair:
        sides = [json.loads(Path(f).read_text()) for f in args.pair]
        result = pair(*sides, args.tol)
        _emit(result, args.out, sides[0]["key"])
        return 0 if result["ok"] else 1

    if args.combine:
        seeds = [json.loads(Path(f).read_text()) for f in args.combine]
        result = combine(seeds, args.tol)
        key = dict(zip(("preset", "plugin"), seeds[0]["name"].split()[2:4]))  # "loss match PRESET PLUGIN x1, ..."
        _emit(result, args.out, key)
        return 0 if result["ok"] else 1
    if args.summarize:
        result = json.loads(Path(args.summarize).read_text())
        result.update(summarize(result["losses"]["plain"], result["losses"]["optimised"], args.tol))
        Path(args.out or args.summarize).write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps({k: v for k, v in result.items() if k != "losses"}, indent=1))
        return 0 if result["ok"] else 1
    if not args.data:
        ap.error("--data is required (or --summarize FILE)")
    args.control = args.control or bool(args.control_sets)
    if args.time_limit and not args.side:
        ap.error("--time-limit bounds one run: use it with --side")
    if args.side:
        if args.control:
            ap.error("--control trains a third run; with --side, train --side plain twice and --pair them")
        with tempfile.TemporaryDirectory() as tmp:
            result = half(args, args.side, _train(args, Path(tmp) / args.side, args.side))
        _emit(result, args.out)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        plain = _train(args, Path(tmp) / "plain", "plain")
        fast = _train(args, Path(tmp) / "optimised", "optimised")
        control = _train(args, Path(tmp) / "control", "control") if args.control else None
    steps = sorted(plain)
    from ominix.flops import device_name

    result = _compared(_key(args), "optimised vs plain", [plain[s] for s in steps], [fast[s] for s in steps],
                       "optimised", args.tol)
    result = {"name": result.pop("name"), "card": device_name(), "date": time.strftime("%Y-%m-%d"),
              "command": " ".join(["bench/loss_match.py", *sys.argv[1:]]), **result}
    if control is not None:
        result["control"] = {
            **{k: v for k, v in summarize([plain[s] for s in steps], [control[s] for s in steps], args.tol).items()
               if k in ("value", "last10_mean_loss_diff", "max_abs_diff", "ok")},
            "settings": args.control_sets or "the plain run again"}
        result["losses"]["control"] = [control[s] for s in steps]
    _emit(result, args.out, _key(args))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
