"""Measure the model-level speed levers one at a time, on one GPU, in one process.

Plain PyTorch (no ColossalAI): bf16 weights, fused AdamW, random tokens; each variant runs
``--warmup`` then ``--steps`` timed training steps. The baseline is transformers'
LlamaForCausalLM (SDPA) of the same shape, measured in the same run. This answers "which lever
is worth what" cheaply; ``bench/train_throughput.py`` measures the real training path.

    python bench/model_levers.py --preset tinyllama-1.1b --batch 4 --seq 4096
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time

import torch

from ominix.config import load_config
from ominix.flops import device_name, flops_per_token, mfu, peak_flops
from ominix.model import build_model, hf_config

VARIANTS = {
    # name: (attn, compile, loss_chunk)
    "ominix eager sdpa, unfused loss": ("sdpa", False, 0),
    "ominix eager sdpa, chunked loss": ("sdpa", False, 8192),
    "ominix eager cudnn, chunked loss": ("cudnn", False, 8192),
    "ominix compiled sdpa, chunked loss": ("sdpa", True, 8192),
    "ominix compiled cudnn, chunked loss": ("cudnn", True, 8192),
}


def _time(step, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def run_variant(name: str, model, batch: torch.Tensor, hf: bool, warmup: int, steps: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step() -> None:
        if hf:
            loss = model(input_ids=batch[:, :-1], labels=batch[:, :-1]).loss
        else:
            loss = model(batch[:, :-1], labels=batch[:, 1:]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return _time(step, warmup, steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="tinyllama-1.1b")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--only", nargs="*", help="variant names to run (default all)")
    ap.add_argument("--out", help="write the JSON results here")
    args = ap.parse_args()

    cfg = load_config(args.preset).model.model_copy(update={"max_position_embeddings": max(args.seq, 4096)})
    tokens = args.batch * args.seq
    fpt = flops_per_token(cfg, args.seq)
    peak = peak_flops(device_name())
    batch = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1), device="cuda")
    results = []

    def record(name: str, seconds: float) -> None:
        tps = tokens / seconds
        row = {"variant": name, "tokens_per_s": round(tps), "mfu": mfu(tps, fpt, peak),
               "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)}
        results.append(row)
        print(json.dumps(row), flush=True)

    from transformers import LlamaForCausalLM as HFLlama

    torch.manual_seed(0)
    hf = HFLlama(hf_config(cfg, attn_implementation="sdpa", torch_dtype=torch.bfloat16)).to("cuda", torch.bfloat16)
    torch.cuda.reset_peak_memory_stats()
    record("transformers LlamaForCausalLM sdpa (baseline)", run_variant("hf", hf, batch, True, args.warmup, args.steps))
    del hf
    gc.collect()
    torch.cuda.empty_cache()

    for name, (attn, compile_, chunk) in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        mcfg = cfg.model_copy(update={"attn": attn, "compile": compile_, "loss_chunk": chunk})
        model = build_model(mcfg, device="cuda", dtype=torch.bfloat16, seed=0)
        torch.cuda.reset_peak_memory_stats()
        record(name, run_variant(name, model, batch, False, args.warmup, args.steps))
        del model
        gc.collect()
        torch.cuda.empty_cache()

    base = results[0]["tokens_per_s"]
    for row in results:
        row["ratio_vs_baseline"] = round(row["tokens_per_s"] / base, 3)
    best = max(results, key=lambda r: r["tokens_per_s"])
    summary = {"name": f"model levers, plain PyTorch step, {args.preset} shape, seq {args.seq}, batch {args.batch}, bf16",
               "card": device_name(), "date": time.strftime("%Y-%m-%d"), "command": " ".join(["python", *sys.argv]),
               "value": best["tokens_per_s"], "unit": "tokens/s", "variant": best["variant"],
               "baseline": base, "baseline_name": results[0]["variant"], "ratio": best["ratio_vs_baseline"],
               "mfu": best["mfu"], "baseline_mfu": results[0]["mfu"], "results": results}
    print(json.dumps(summary, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
