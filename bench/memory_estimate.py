"""Peak GPU memory of real training runs against the estimate the launcher checks them with.

Each case is one ``ominix train launch`` on prepared data, in its own process tree, for a few steps
(no evaluation, no checkpoint): its peak is the largest ``memory_gib`` of its metrics.jsonl
(``torch.cuda.max_memory_allocated``), its estimate ``ominix.train.memory.estimate`` of the config
the run resolved and wrote (RUN_DIR/config.yaml). The error is (estimate - peak) / peak.

A case is ``PRESET:PLUGIN:MICRO:ACCUM[:KEY=VALUE,...]`` (ACCUM micro batches per optimizer step on
each GPU; the overrides are ``--set`` items):

    python bench/memory_estimate.py --data data/c4096 --out bench/results/memory_estimate_h200.json
    python bench/memory_estimate.py --data data/c4096 --case tinyllama-1.1b:zero2:4:1 \\
        --case llama2-7b:gemini:16:2:model.compile=true
    python bench/memory_estimate.py --data data/tiny --case tiny:ddp:2:1 --steps 2     # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import childproc  # bench/childproc.py: this script's folder is on sys.path

# The shapes measured on one H200: the 1.1B preset through two plugins, the 7B preset as shipped
# (micro 16, full checkpointing, eager) and compiled at micro 8.
DEFAULT_CASES = (
    "tinyllama-1.1b:gemini:4:1",
    "tinyllama-1.1b:zero2:4:1",
    "llama2-7b:gemini:16:2",
)


def parse_case(text: str) -> dict:
    """``PRESET:PLUGIN:MICRO:ACCUM[:K=V,...]`` as a dict; a malformed case exits with its reason."""
    parts = text.split(":", 4)
    if len(parts) < 4 or not parts[2].isdigit() or not parts[3].isdigit():
        sys.exit(f"--case {text!r}: expected PRESET:PLUGIN:MICRO:ACCUM[:KEY=VALUE,...]")
    sets = [s for s in parts[4].split(",") if s] if len(parts) == 5 else []
    return {"preset": parts[0], "plugin": parts[1], "micro": int(parts[2]), "accum": int(parts[3]),
            "sets": sets}


def run_case(case: dict, data: str, steps: int, nproc: int, run_dir: Path) -> dict:
    """Train ``case`` for ``steps`` steps and compare its peak with the estimate of its config."""
    from ominix.config import load_config
    from ominix.train.parallel_layout import derive_layout
    from ominix.train.memory import estimate

    sets = [*case["sets"], f"schedule.micro_batch_size={case['micro']}",
            f"schedule.global_batch_size={case['micro'] * case['accum'] * nproc}",
            "logging.log_every=1", "schedule.eval_every=0", "checkpoint.every=0",
            "checkpoint.save_optimizer=false", "logging.figure=false"]
    cmd = [sys.executable, "-m", "ominix", "train", "launch", case["preset"], "--plugin", case["plugin"],
           "--data", data, "--out", str(run_dir), "--nodes", "1", "--nproc-per-node", str(nproc),
           "--max-steps", str(steps), *[a for s in sets for a in ("--set", s)]]
    print("+", " ".join(cmd), flush=True)
    began = time.perf_counter()
    done = subprocess.run(cmd)
    row = {"case": case, "command": " ".join(cmd[1:]), "exit_code": done.returncode,
           "seconds": round(time.perf_counter() - began, 1)}
    cfg = load_config(run_dir / "config.yaml")
    est = estimate(cfg, derive_layout(cfg, nproc))
    row["estimate_gib"] = round(est.total / 2**30, 2)
    row["estimate"] = est.describe()
    metrics = run_dir / "metrics.jsonl"
    train = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    train = [r for r in train if r["kind"] == "train"]
    if train:
        peak = max(r["memory_gib"] for r in train)
        row.update(peak_gib=round(peak, 2), steps_logged=len(train), error=round((est.total / 2**30 - peak) / peak, 3),
                   mfu=train[-1].get("mfu"), tokens_per_s=train[-1].get("tokens_per_s"))
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="prepared data directory (ominix data prepare)")
    ap.add_argument("--case", dest="cases", action="append", default=[],
                    help=f"PRESET:PLUGIN:MICRO:ACCUM[:K=V,...] (repeatable; default {', '.join(DEFAULT_CASES)})")
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps of each run")
    ap.add_argument("--nproc-per-node", type=int, default=1)
    ap.add_argument("--tolerance", type=float, default=0.10,
                    help="the pass rule: |estimate - peak| / peak at most this, for every case")
    ap.add_argument("--out", help="JSON results file (default: bench/results/memory_estimate_CARD.json)")
    args = ap.parse_args()
    cases = [parse_case(c) for c in args.cases or DEFAULT_CASES]
    rows = []
    for case in cases:
        with tempfile.TemporaryDirectory(prefix="ominix-mem-") as tmp:
            rows.append(run_case(case, args.data, args.steps, args.nproc_per_node, Path(tmp) / "run"))
        print(json.dumps(rows[-1]), flush=True)
    errors = [r["error"] for r in rows if "error" in r]
    result = {"benchmark": "memory estimate against measured peaks", "tolerance": args.tolerance,
              "device": _device(), "date": time.strftime("%Y-%m-%d"), "cases": rows,
              "max_abs_error": max((abs(e) for e in errors), default=None),
              "ok": len(errors) == len(rows) and all(abs(e) <= args.tolerance for e in errors)}
    out = Path(args.out or childproc.result_path("memory_estimate", result["device"]))
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    print(json.dumps({k: result[k] for k in ("max_abs_error", "ok")}))
    return 0 if result["ok"] else 1


def _device() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


if __name__ == "__main__":
    raise SystemExit(main())
