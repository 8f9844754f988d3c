"""Training throughput of OminiX's real training path against ColossalAI's own LLaMA path, same run.

Both sides go through ``ominix.train.engine.build_engine``: the same ColossalAI plugin, optimizer
(HybridAdam on GPU), precision and micro-batch loop as ``ominix train launch``. The baseline swaps
OminiX's decoder for transformers' LlamaForCausalLM (4.51.3) of the same shape - what ColossalAI's
``examples/language/llama`` benchmark trains. Random tokens, ``--warmup`` untimed then ``--steps``
timed steps each. Prints tokens/s (total and per GPU), TFLOP/s per GPU, MFU and peak memory, and
saves the figures to ``bench/results/train_throughput_SIZE_PLUGIN[_NgpuS]_CARD.json`` (``--out`` to
override).

``--cli DATA`` adds a third row: the real ``ominix train launch`` of the same shape on prepared data
(its own process tree; logging every step, no evaluation, one checkpoint at the end), its tokens/s
taken from ``metrics.jsonl`` over the steps after the warm-up, and its ratio to the bench's OminiX row
(``cli_vs_bench``). ``--data DATA`` feeds the bench sides the training loop's loader over prepared data instead of
random token ids. ``--global-batch`` (sequences per GPU per step, a multiple of ``--micro-batch``)
makes every side accumulate gradients as the CLI does.

Each side runs in its own process (``torchrun`` with ``--nproc-per-node`` ranks, or one plain
process), one after the other: the host memory of the first engine (a 7B model's optimizer state
under Gemini or zero2_cpu lives there) is gone before the second is built.

    python bench/train_throughput.py tinyllama-1.1b --plugin gemini \\
        --micro-batch 4                 # -> bench/results/train_throughput_1.1b_gemini_h200.json
    python bench/train_throughput.py llama2-7b --nproc-per-node 4 --plugin gemini --micro-batch 16
    python bench/train_throughput.py tinyllama-1.1b --micro-batch 4 --global-batch 32 --no-baseline \
        --cli data/c4096 --out bench/results/train_throughput_1.1b_gemini_cli_h200.json
    python bench/train_throughput.py tiny --plugin ddp --steps 2      # CPU smoke run

``--profile N`` runs N more steps on every side after the timed ones under ``torch.profiler``
(the CLI through ``logging.profile_steps``), with the training loop's phases named: a Chrome trace and
a summary per side (GPU busy, the host's time per phase) in ``--profile-dir``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import childproc  # bench/childproc.py: this script's folder is on sys.path
from pathlib import Path


def _batches(cfg, engine, data: str | None):
    """Endless rank batches: random token ids, or the training loop's own loader over prepared ``data``."""
    import torch

    from ominix.train.loop import to_device

    layout = engine.layout
    if data:
        from ominix.data.loader import BlockLoader
        from ominix.data.store import PackedDataset

        loader = BlockLoader(PackedDataset(data, "train"), layout.rank_batch, engine.dp_rank, layout.dp)
        while True:
            yield to_device(next(loader), engine.device)
    gen = torch.Generator().manual_seed(engine.rank)
    while True:
        batch = torch.randint(0, cfg.model.vocab_size, (layout.rank_batch, cfg.data.seq_len + 1), generator=gen)
        yield batch.to(engine.device, non_blocking=True)


def _measure(cfg, hf_baseline: bool, warmup: int, steps: int, data: str | None = None,
             profile: int = 0, profile_dir: str | None = None) -> dict:
    import torch
    import torch.distributed as dist

    from ominix.train.engine import build_engine
    from ominix.train.loop import forward_backward, freeze_heap
    from ominix.train.step_profiler import StepProfiler

    engine = build_engine(cfg, lambda step: 1.0, hf_baseline=hf_baseline)
    layout = engine.layout
    batches = _batches(cfg, engine, data)
    cuda = engine.device.type == "cuda"
    # the training loop's profiler and phases, so a trace of the bench and one of the CLI compare
    window = (warmup + steps + 1, warmup + steps + profile) if profile else None  # after the timed steps
    profiler = StepProfiler(window, Path(profile_dir or "."), engine.rank == 0)
    done = 0

    def step() -> None:
        nonlocal done
        profiler.before(done + 1)
        with profiler.phase("data"):
            batch = next(batches)
        forward_backward(engine, batch, profiler.phase)  # the training loop's own step
        with profiler.phase("optimizer"):
            engine.clip_and_step(cfg.optim.grad_clip)
            engine.optimizer.zero_grad()
        done += 1
        if line := profiler.after(done):
            print(line, flush=True)

    engine.model.train()
    freeze_heap()  # as the training loop does once it is set up
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    dist.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    dist.barrier()
    seconds = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    for _ in range(profile):
        step()
    return {"seconds_per_step": seconds, "tokens_per_step": layout.tokens_per_step, "peak_mem_gib": peak}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("preset", help="config file or preset")
    ap.add_argument("--plugin", default=None)
    ap.add_argument("--micro-batch", type=int, default=None, help="sequences per GPU per step")
    ap.add_argument("--global-batch", type=int, default=None,
                    help="sequences per GPU per optimizer step (default: one micro batch)")
    ap.add_argument("--seq", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config override (repeatable)")
    ap.add_argument("--nproc-per-node", type=int, default=1, help="ranks of each side (torchrun when > 1)")
    ap.add_argument("--no-baseline", action="store_true", help="measure OminiX only")
    ap.add_argument("--data", help="prepared data for the bench sides (default: random token ids)")
    ap.add_argument("--cli", metavar="DATA", help="also run `ominix train launch` of this shape on DATA")
    ap.add_argument("--cli-run", metavar="DIR", help="the CLI run's directory, kept (default: a temporary one)")
    ap.add_argument("--cli-set", dest="cli_sets", action="append", default=[],
                    help="config override for the CLI run only, e.g. checkpoint.every=3 (repeatable)")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="profile N more steps after the timed ones, on every side (the CLI through "
                         "logging.profile_steps): traces and summaries in --profile-dir")
    ap.add_argument("--profile-dir", help="where the profiles go (default: beside --out, else ./profile)")
    ap.add_argument("--out", help="JSON results file (default: bench/results/train_throughput_SIZE_PLUGIN_CARD.json)")
    ap.add_argument("--side", choices=list(SIDES), help=argparse.SUPPRESS)  # a child: measure this side
    ap.add_argument("--side-out", help=argparse.SUPPRESS)  # where the child writes its row
    return ap.parse_args()


SIDES = {"ominix": "ominix", "baseline": "baseline: transformers LlamaForCausalLM"}


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b`` to 3 places; None where either side has no figure (not run, or failed)."""
    return round(a / b, 3) if a and b else None


def measure_side(args: argparse.Namespace) -> int:
    """The child: build one engine (OminiX's model or the baseline), time it, write its row."""
    import torch.distributed as dist

    from ominix.config import load_config
    from ominix.flops import device_name, flops_per_token, mfu, peak_flops
    from ominix.train import colossalai_patches
    from ominix.train.engine import init_distributed, one_process_env
    run = contextlib.ExitStack()  # the run's process-wide settings, kept until this process exits
    run.enter_context(one_process_env())
    run.enter_context(colossalai_patches.patched())
    init_distributed(seed=0)
    world = dist.get_world_size()
    sets = list(args.sets)
    if args.micro_batch:
        sets += [f"schedule.micro_batch_size={args.micro_batch}"]
    if args.seq:
        sets += [f"data.seq_len={args.seq}"]
    cfg = load_config(args.preset, sets, {"parallel.plugin": args.plugin})
    # the global batch is per GPU x GPUs: recompute it for this world size
    micro = cfg.schedule.micro_batch_size
    cfg.schedule.global_batch_size = (args.global_batch or micro) * world // (cfg.parallel.tp * cfg.parallel.pp) or micro

    fpt = flops_per_token(cfg.model, cfg.data.seq_len)
    peak = peak_flops(device_name())
    r = _measure(cfg, args.side == "baseline", args.warmup, args.steps, args.data, args.profile,
                 os.path.join(profile_dir(args), args.side))
    tps = r["tokens_per_step"] / r["seconds_per_step"]
    row = {"model": SIDES[args.side], "tokens_per_s": round(tps), "tokens_per_s_per_gpu": round(tps / world),
           "tflops_per_gpu": round(tps / world * fpt / 1e12, 1), "mfu": mfu(tps / world, fpt, peak),
           "peak_mem_gib": None if r["peak_mem_gib"] is None else round(r["peak_mem_gib"], 1),
           "pid": os.getpid()}
    if dist.get_rank() == 0:
        print(json.dumps(row), flush=True)
        accum = f" x accum {args.global_batch // micro}" if args.global_batch and args.global_batch > micro else ""
        meta = {"name": f"train throughput {cfg.model.name} seq {cfg.data.seq_len} micro {micro}{accum} "
                        f"{cfg.parallel.plugin} x{world}", "card": device_name(), "plugin": cfg.parallel.plugin, "gpus": world}
        with open(args.side_out, "w") as f:
            json.dump({"row": row, "meta": meta}, f)
    dist.destroy_process_group()
    return 0


def child_command(args: argparse.Namespace, side: str, out: str) -> list[str]:
    """This script for one side: under torchrun with several ranks, else one plain process."""
    argv = [args.preset, "--warmup", str(args.warmup), "--steps", str(args.steps), "--side", side, "--side-out", out]
    for flag, value in (("--plugin", args.plugin), ("--micro-batch", args.micro_batch), ("--seq", args.seq),
                        ("--global-batch", args.global_batch), ("--data", args.data),
                        ("--profile", args.profile or None), ("--profile-dir", profile_dir(args))):
        if value is not None:
            argv += [flag, str(value)]
    argv += [a for s in args.sets for a in ("--set", s)]
    if args.nproc_per_node > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={args.nproc_per_node}", __file__, *argv]
    return [sys.executable, __file__, *argv]


def profile_dir(args: argparse.Namespace) -> str:
    return args.profile_dir or os.path.join(os.path.dirname(os.path.abspath(args.out or ".")), "profile")


def cli_row(args: argparse.Namespace, data: str, run_dir: str) -> dict:
    """``ominix train launch`` of the bench's shape on ``data``: tokens/s, MFU and peak memory over
    the steps after the warm-up (one log line per step), and the final checkpoint's save time."""
    timed_end = args.warmup + args.steps
    total = timed_end + args.profile
    sets = [*args.sets, "logging.log_every=1", "schedule.eval_every=0", *args.cli_sets]  # cli_sets win
    if args.profile:
        sets.append(f"logging.profile_steps=[{timed_end + 1},{total}]")
    if args.micro_batch:
        sets.append(f"schedule.micro_batch_size={args.micro_batch}")
    per_gpu = args.global_batch or args.micro_batch
    if per_gpu:
        sets.append(f"schedule.global_batch_size={per_gpu * args.nproc_per_node}")
    if args.seq:
        sets.append(f"data.seq_len={args.seq}")
    cmd = [sys.executable, "-m", "ominix", "train", "launch", args.preset, "--data", data, "--out", run_dir,
           "--nodes", "1", "--nproc-per-node", str(args.nproc_per_node), "--max-steps", str(total),
           *(["--plugin", args.plugin] if args.plugin else []), *[a for x in sets for a in ("--set", x)]]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    train = [r for r in records if r["kind"] == "train"]
    before = [r for r in train if r["step"] <= args.warmup]
    if not before or before[-1]["step"] != args.warmup:
        sys.exit(f"the CLI logged no line at step {args.warmup}: its logging.log_every must divide --warmup")
    timed = [r for r in train if args.warmup < r["step"] <= timed_end]
    steps = [r["step"] - p["step"] for p, r in zip([before[-1], *timed], timed)]  # steps in each log window
    seconds = sum(r["step_time_s"] * n for r, n in zip(timed, steps))
    tokens = timed[-1]["tokens"] - before[-1]["tokens"]
    tps = tokens / seconds
    per_token_mfu = timed[0]["mfu"] / timed[0]["tokens_per_s"] if timed[0]["mfu"] else None
    saves = [r for r in records if r["kind"] == "checkpoint" and r.get("action") == "save"]
    if args.profile:  # the CLI's profile beside the bench sides'
        shutil.copytree(os.path.join(run_dir, "profile"), os.path.join(profile_dir(args), "cli"), dirs_exist_ok=True)
    return {"model": "ominix train launch", "tokens_per_s": round(tps),
            "tokens_per_s_per_gpu": round(tps / args.nproc_per_node),
            "mfu": per_token_mfu * tps if per_token_mfu else None,
            "peak_mem_gib": round(max(r["memory_gib"] for r in timed), 1),
            "timed_steps": sum(steps), "losses": [r["loss"] for r in records if r["kind"] == "train"],
            "checkpoint_saves": [{k: r[k] for k in ("step", "seconds", "bytes")} for r in saves]}


def main() -> int:
    args = parse_args()
    if args.side:
        return measure_side(args)
    if "LOCAL_RANK" in os.environ:
        sys.exit("run this script with python and --nproc-per-node N: it starts torchrun for each side itself")
    rows, meta = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for side in ("ominix",) if args.no_baseline else ("ominix", "baseline"):
            out = os.path.join(tmp, f"{side}.json")
            done = subprocess.run(child_command(args, side, out))
            if done.returncode != 0:  # an out-of-memory side is a result too: record it, go on
                rows.append({"model": SIDES[side], "tokens_per_s": None, "mfu": None,
                             "failed": f"exit {done.returncode} (see the output above)"})
                continue
            with open(out) as f:
                got = json.load(f)
            rows.append(got["row"])
            meta = got["meta"]
        if args.cli:
            rows.append(cli_row(args, args.cli, args.cli_run or os.path.join(tmp, "cli-run")))
    ours = rows[0]
    base = rows[1] if not args.no_baseline else {"tokens_per_s": None, "mfu": None}
    cli = rows[-1] if args.cli else None
    result = {
        **meta, "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(["bench/train_throughput.py", *sys.argv[1:]]),
        "value": ours["tokens_per_s"], "unit": "tokens/s", "mfu": ours["mfu"],
        "baseline": base["tokens_per_s"], "baseline_mfu": base["mfu"],
        "ratio": ratio(ours["tokens_per_s"], base["tokens_per_s"]),
        **({"cli": cli["tokens_per_s"], "cli_mfu": cli["mfu"],
            "cli_vs_bench": ratio(cli["tokens_per_s"], ours["tokens_per_s"])} if cli else {}),
        "rows": rows, "processes": "one per side, one after the other",
    }
    print(json.dumps(result, indent=1))
    gpus = f"_{meta['gpus']}gpu" if meta["gpus"] > 1 else ""
    out = args.out or childproc.result_path(
        f"train_throughput_{childproc.preset_size(args.preset)}_{meta['plugin']}{gpus}", meta["card"])
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
