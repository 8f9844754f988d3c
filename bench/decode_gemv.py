"""Batch-1 products of a decoder layer, one matrix shape at a time: OminiX's ``gemv`` kernel against
cuBLAS (``F.linear`` on a [1, K] input) in the same run, as bytes streamed per second.

Each shape is timed over as many weight copies as the model has layers, called in turn inside one
CUDA graph, so every call reads its matrix from memory (a single 8 MB matrix would stay in the
H200's 60 MB L2 cache) and no launch gaps are counted. ``gemv`` also applies what it fuses in the
decoder (RMSNorm before qkv and gate/up, SwiGLU after gate/up, the residual add after o_proj and
down_proj); cuBLAS does the plain product only, so the comparison favours cuBLAS.

    python bench/decode_gemv.py --out bench/results/decode_gemv_h200.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def graph_time(calls, repeats: int = 20) -> float:
    """Seconds per call of ``calls`` (a list of closures), captured in one CUDA graph."""
    for call in calls:  # warm-up (and the autotuner's timing runs) outside the capture
        call()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / repeats / len(calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="tinyllama-1.1b")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from bench.decode import copy_bandwidth
    from ominix.config import load_config
    from ominix.flops import device_name
    from ominix.infer import _triton, kernels

    cfg = load_config(args.shape).model
    h, f, d = cfg.hidden_size, cfg.intermediate_size, cfg.hidden_size // cfg.num_attention_heads
    kv = cfg.num_key_value_heads or cfg.num_attention_heads
    products = {  # name: (N, K, what gemv fuses); N: the weight's rows
        "qkv (RMSNorm before)": (h + 2 * kv * d, h, "norm"),
        "o_proj (+ residual)": (h, h, "residual"),
        "gate/up (RMSNorm before, SwiGLU after)": (2 * f, h, "glu"),
        "down_proj (+ residual)": (h, f, "residual"),
    }
    kernels.register()
    bandwidth = copy_bandwidth("cuda")
    bf16 = dict(device="cuda", dtype=torch.bfloat16)
    rows = []
    for name, (n, k, fused) in products.items():
        weights = [torch.randn(n, k, **bf16) * 0.02 for _ in range(cfg.num_hidden_layers)]
        x = torch.randn(k, **bf16)
        g, r = torch.ones(k, **bf16), torch.randn(n, **bf16)
        flags = {"norm": {"norm": (g, 1e-5)}, "residual": {"residual": r},
                 "glu": {"norm": (g, 1e-5), "glu": True}}[fused]
        ours = graph_time([lambda w=w: kernels.gemv(w, x, **flags) for w in weights])
        theirs = graph_time([lambda w=w: F.linear(x.view(1, k), w) for w in weights])
        nbytes = n * k * 2
        config = _triton.gemv.best_config
        rows.append({
            "product": name, "n": n, "k": k, "ominix_us": round(ours * 1e6, 2),
            "ominix_tb_per_s": round(nbytes / ours / 1e12, 2), "cublas_us": round(theirs * 1e6, 2),
            "cublas_tb_per_s": round(nbytes / theirs / 1e12, 2),
            "ominix_fraction_of_copy_bandwidth": round(nbytes / ours / bandwidth, 3),
            "ominix_config": {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages},
        })
        print(json.dumps(rows[-1]), flush=True)
        del weights
    total = {key: sum(row[key] for row in rows) for key in ("ominix_us", "cublas_us")}
    layer_bytes = sum(row["n"] * row["k"] * 2 for row in rows)
    result = {
        "name": f"decode products per layer, batch 1, {args.shape} shape, bf16",
        "card": device_name(), "date": time.strftime("%Y-%m-%d"), "command": shlex.join(["python", *sys.argv]),
        "value": round(layer_bytes / (total["ominix_us"] * 1e-6) / 1e12, 2), "unit": "TB/s (one layer's products)",
        "baseline": round(layer_bytes / (total["cublas_us"] * 1e-6) / 1e12, 2),
        "baseline_name": "cuBLAS F.linear, unfused", "ratio": round(total["cublas_us"] / total["ominix_us"], 3),
        "copy_bandwidth_tb_per_s": round(bandwidth / 1e12, 2), "products": rows, "torch": torch.__version__,
    }
    print(json.dumps(result, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
