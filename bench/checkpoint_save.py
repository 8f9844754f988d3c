"""How long a checkpoint save blocks the training loop, synchronous against ``checkpoint.async_save``.

Builds the preset's engine (random weights, one optimizer step so the Adam state exists) and saves
through ``ominix.checkpoint.save_checkpoint`` into a temporary run directory: first synchronously
(the baseline, in the same run), then in the background, where it also runs training steps while
the write goes on. ``blocked_s`` is the time the save call held the loop; ``total_s`` the time
until ``latest`` named the checkpoint. Prints (and with --out writes) one JSON object.

    python bench/checkpoint_save.py tiny --plugin ddp --set model.hidden_size=1024 \
        --set model.intermediate_size=2816 --set model.num_hidden_layers=8 \
        --set model.vocab_size=32000 --set model.num_attention_heads=16 \
        --set model.num_key_value_heads=16                                     # CPU, ~135M
    python bench/checkpoint_save.py llama2-7b --plugin gemini --precision bf16 \\
        --micro-batch 1 --seq-len 2048 --out $OUT/checkpoint_save_7b.json      # one GPU
    torchrun --nproc-per-node 8 bench/checkpoint_save.py llama2-7b --plugin gemini --precision bf16

The host must hold a copy of each rank's share of the checkpoint while it is written, and the disk
two checkpoints (7B with its Adam state: ~94 GB each); ``--set checkpoint.save_optimizer=false``
measures the weights alone (7B: ~27 GB of fp32 weights under gemini).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import childproc  # bench/childproc.py: this script's folder is on sys.path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class _Data:
    """What a save reads from the data: the framing of the documents and a tokenizer (none here)."""

    framing = "doc+eos"
    tokenizer_dir = Path("/nonexistent")


class _Loader:
    """The data position a save records; the bench trains on random tokens."""

    dataset = _Data()

    def state_dict(self) -> dict:
        return {"position": 0}


def _step(engine, cfg, layout) -> None:
    import torch

    from ominix.train.loop import forward_backward

    batch = torch.randint(0, cfg.model.vocab_size, (layout.rank_batch, layout.seq_len + 1), device=engine.device)
    forward_backward(engine, batch)
    engine.clip_and_step(cfg.optim.grad_clip)
    engine.optimizer.zero_grad()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("preset", help="config preset (tiny, tinyllama-1.1b, llama2-7b, ...)")
    ap.add_argument("--plugin", default=None, help="parallel.plugin (default: the preset's)")
    ap.add_argument("--precision", default=None, help="parallel.precision (default: the preset's)")
    ap.add_argument("--micro-batch", type=int, default=1, help="schedule.micro_batch_size")
    ap.add_argument("--seq-len", type=int, default=None, help="data.seq_len (default: the preset's)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="any other config override, e.g. model.hidden_size=1024 (repeatable)")
    ap.add_argument("--steps", type=int, default=3, help="training steps run while the background write goes on")
    ap.add_argument("--dir", default=None, help="where the checkpoints go (default: a temporary directory)")
    ap.add_argument("--out", default=None, help="results file (default: bench/results/checkpoint_save_CARD.json, "
                    "or checkpoint_save_SIZE_CARD.json for a preset other than tiny)")
    args = ap.parse_args()

    import torch
    import torch.distributed as dist

    from ominix import checkpoint as ckpt
    from ominix.config import dump_yaml, load_config
    from ominix.flops import device_name
    from ominix.train import colossalai_patches
    from ominix.train.engine import build_engine, init_distributed, one_process_env
    from ominix.train.parallel_layout import derive_layout, with_global_batch

    flags = {"parallel.plugin": args.plugin, "parallel.precision": args.precision, "data.seq_len": args.seq_len,
             "schedule.micro_batch_size": args.micro_batch}
    cfg = load_config(args.preset, args.sets, {k: v for k, v in flags.items() if v is not None})
    with one_process_env(), colossalai_patches.patched(), tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        init_distributed(cfg.schedule.seed)
        world = dist.get_world_size()
        cfg.schedule.global_batch_size = None
        layout = derive_layout(cfg, world)
        cfg = with_global_batch(cfg, layout)
        engine = build_engine(cfg, lambda step: 1.0)
        _step(engine, cfg, layout)  # the optimizer state exists from the first step on
        run, loader = Path(tmp) / "run", _Loader()
        info = {"loop": {}, "step": 1, "world_size": world, "plugin": cfg.parallel.plugin}
        keep = {"config_yaml": dump_yaml(cfg), "keep_last": 1, "keep_every": 0,
                "save_optimizer": cfg.checkpoint.save_optimizer}

        began = time.perf_counter()
        path = ckpt.save_checkpoint(engine, loader, run, info, **keep)
        sync_s = time.perf_counter() - began
        size = sum(f.stat().st_size for f in ckpt.files_under(path))

        background = ckpt.BackgroundSave()
        info["step"] = 2
        began = time.perf_counter()
        ckpt.save_checkpoint(engine, loader, run, info, **keep, background=background)
        blocked_s = time.perf_counter() - began
        steps_began = time.perf_counter()
        for _ in range(args.steps):  # the loop goes on while the thread writes
            _step(engine, cfg, layout)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        steps_s = time.perf_counter() - steps_began
        timing = background.wait()
        latest = ckpt.latest_checkpoint(run)
    result = {
        "name": f"checkpoint save {args.preset} {cfg.parallel.plugin} x{world}: loop blocked, async vs sync",
        "card": device_name(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "host": platform.node(),
        "checkpoint_bytes": size, "sync_s": sync_s, "blocked_s": blocked_s, "total_s": timing.seconds,
        "steps_during_write": args.steps, "steps_s": steps_s, "with_optimizer": cfg.checkpoint.save_optimizer,
        "value": blocked_s, "unit": "s", "baseline": sync_s, "ratio": blocked_s / sync_s,
        "latest_ok": latest is not None and latest.name == "step_00000002",
    }
    if engine.rank == 0:
        text = json.dumps(result, indent=2)
        print(text)
        size = "" if args.preset == "tiny" else f"_{childproc.preset_size(args.preset)}"
        out = Path(args.out or childproc.result_path(f"checkpoint_save{size}", result["card"]))
        out.write_text(text + "\n")
        print(f"wrote {out}", file=sys.stderr)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
