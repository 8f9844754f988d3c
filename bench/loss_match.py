"""Speed must not change the math: the same seeded run with and without the optimised model path.

Trains the same preset twice through ``ominix train launch`` (same data, seed, plugin, steps):
once plain (eager layers, unfused loss), once optimised (``model.compile=true`` and the chunked
lm_head + cross-entropy), and compares the per-step training losses. bf16 runs differ in rounding
(fused kernels round once where eager rounds per op), so the check is a tolerance, reported with
the largest and the mean per-step difference.

    python bench/loss_match.py --data prepared/tiny --plugin gemini --steps 50 \\
        --out bench/results/loss_match_tiny_gemini.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _train(args, run_dir: Path, optimised: bool) -> dict[int, float]:
    sets = [f"model.compile={str(optimised).lower()}", f"model.loss_chunk={8192 if optimised else 0}",
            "schedule.eval_every=0", "logging.log_every=1", "checkpoint.every=0", *args.sets]
    cmd = [sys.executable, "-m", "ominix", "train", "launch", args.preset, "--data", args.data,
           "--run-dir", str(run_dir), "--plugin", args.plugin, "--nproc-per-node", str(args.nproc),
           "--max-steps", str(args.steps), *[x for s in sets for x in ("--set", s)]]
    subprocess.run(cmd, check=True)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--data", required=True, help="prepared data directory")
    ap.add_argument("--plugin", default="gemini")
    ap.add_argument("--nproc", type=int, default=1)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--tol", type=float, default=0.05, help="largest allowed per-step loss difference")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--out")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        plain = _train(args, Path(tmp) / "plain", optimised=False)
        fast = _train(args, Path(tmp) / "optimised", optimised=True)
    steps = sorted(plain)
    diffs = [abs(plain[s] - fast[s]) for s in steps]
    from ominix.flops import device_name

    result = {
        "name": f"loss match {args.preset} {args.plugin} x{args.nproc}, {len(steps)} steps: optimised vs plain",
        "card": device_name(), "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(["bench/loss_match.py", *sys.argv[1:]]),
        "value": round(max(diffs), 5), "unit": "max |loss difference| per step",
        "mean_abs_diff": round(sum(diffs) / len(diffs), 5), "tolerance": args.tol,
        "baseline": None, "ratio": None,
        "first_loss": [plain[steps[0]], fast[steps[0]]], "last_loss": [plain[steps[-1]], fast[steps[-1]]],
        "losses": {"plain": [plain[s] for s in steps], "optimised": [fast[s] for s in steps]},
        "ok": max(diffs) <= args.tol,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "losses"}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
