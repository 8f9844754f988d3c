"""What a batch-1 decode step costs under each compiler setting: the levers behind `bench/decode.py`.

Builds a model of a preset's shape with random weights on the GPU and, for each variant, times the
decode step alone as back-to-back CUDA-graph replays (the ceiling of `ominix infer`'s greedy loop).
The fastest variant's kernels are then profiled (GPU time per kernel name per step), which shows
what is left between it and the memory-bandwidth limit.

    python bench/decode_levers.py --out bench/results/decode_levers_h200.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

CDT = {"coordinate_descent_tuning": True}
VARIANTS = {  # name: (compile, attention, inductor options, OminiX's matrix-vector kernels)
    "eager step, CUDA graph": (False, "sdpa", {}, False),
    "compiled, cuBLAS GEMV": (True, "dot", {}, False),
    "compiled, tuned reductions": (True, "dot", CDT, False),
    "compiled, tuned reductions, SDPA": (True, "sdpa", CDT, False),
    "compiled, tuned reductions, wider search": (True, "dot", {
        **CDT, "coordinate_descent_check_all_directions": True, "coordinate_descent_search_radius": 2}, False),
    "compiled, tuned reductions, aggressive fusion": (True, "dot", {**CDT, "aggressive_fusion": True}, False),
    "compiled, tuned reductions and pointwise": (True, "dot", {**CDT, "max_autotune_pointwise": True}, False),
    "compiled, OminiX kernels": (True, "dot", CDT, True),
}


def replay_rate(decoder, steps: int) -> float:
    decoder._pos.zero_()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        decoder._graph.replay()
    torch.cuda.synchronize()
    return steps / (time.perf_counter() - started)


def kernel_table(decoder, steps: int = 20, top: int = 14) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    decoder._pos.zero_()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            decoder._graph.replay()
        torch.cuda.synchronize()
    rows = []
    for event in prof.key_averages():
        gpu = getattr(event, "device_time_total", 0) or getattr(event, "cuda_time_total", 0)
        if gpu > 0:
            rows.append({"kernel": event.key[:120], "us_per_step": round(gpu / steps, 2),
                         "calls_per_step": event.count / steps})
    rows.sort(key=lambda r: -r["us_per_step"])
    return rows[:top] + [{"kernel": "(all)", "us_per_step": round(sum(r["us_per_step"] for r in rows), 1),
                          "calls_per_step": sum(r["calls_per_step"] for r in rows)}]


def _headline(results: list[dict]) -> dict:
    """The fastest variant against the compiled step with cuBLAS products (the design before the
    tuned reductions), when both ran."""
    best = max(results, key=lambda r: r["tokens_per_s"])
    base = next((r for r in results if r["variant"] == "compiled, cuBLAS GEMV"), None)
    return {"value": best["tokens_per_s"], "value_variant": best["variant"],
            "baseline": base and base["tokens_per_s"], "baseline_name": base and base["variant"],
            "ratio": base and round(best["tokens_per_s"] / base["tokens_per_s"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="tinyllama-1.1b")
    parser.add_argument("--layers", type=int, default=None, help="override the preset's layer count")
    parser.add_argument("--max-len", type=int, default=272, help="KV-cache length (prompt + new tokens)")
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--only", default=None, help="semicolon-separated variant names to run")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from ominix.config import load_config
    from ominix.flops import device_name
    from ominix.infer.generate import StaticDecoder
    from ominix.model import build_model
    from bench.decode import copy_bandwidth

    flags = {"model.attn": "sdpa"}
    if args.layers:
        flags["model.num_hidden_layers"] = args.layers
    cfg = load_config(args.shape, flags=flags)
    model = build_model(cfg.model, device="cuda", dtype=torch.bfloat16, seed=0).eval().requires_grad_(False)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    limit = copy_bandwidth("cuda") / weight_bytes
    chosen = args.only.split(";") if args.only else list(VARIANTS)
    results, best = [], None
    for name in chosen:
        compiled, attention, options, kernels = VARIANTS[name]
        torch._dynamo.reset()
        started = time.perf_counter()
        decoder = StaticDecoder(model, args.max_len, compile=compiled, cuda_graph=True, attention=attention,
                                inductor=options, kernels=kernels)
        ready = time.perf_counter() - started
        rate = max(replay_rate(decoder, args.steps) for _ in range(3))
        row = {"variant": name, "inductor": options, "kernels": kernels, "attention": attention, "tokens_per_s": round(rate, 1),
               "ms_per_token": round(1e3 / rate, 3), "fraction_of_bandwidth_limit": round(rate / limit, 3),
               "compile_and_capture_s": round(ready, 1)}
        print(json.dumps(row), flush=True)
        results.append(row)
        if best is None or rate > best[0]:
            best = (rate, name, kernel_table(decoder))
        del decoder
        torch.cuda.empty_cache()
        result = {  # rewritten after every variant: a run cut short keeps what it measured
            "name": f"decode step levers, batch 1, {args.shape} shape, bf16, cache {args.max_len}",
            "card": device_name(), "date": time.strftime("%Y-%m-%d"), "command": shlex.join(["python", *sys.argv]),
            "unit": "tokens/s (graph replays)", **_headline(results),
            "weight_bytes": weight_bytes, "bandwidth_limit": round(limit, 1), "variants": results, "profiled": best[1], "kernels": best[2], "torch": torch.__version__,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(best[2], indent=1))


if __name__ == "__main__":
    main()
