"""Does a code path bias the gradient, or only round it? One step of a small OminiX decoder in bf16,
eager and with compiled layers, against the same weights in fp64.

For each variant: the relative error of the whole gradient against fp64, and its projection onto
the fp64 gradient (<g, g64> / |g64|^2: 1 means no shrink or growth along the true direction; rounding
alone leaves it at 1 within ~1e-3). A path that learns more slowly for a numerical reason shows a
projection below eager's; one that only rounds differently shows a different error and the same
projection. Compiled layers take the hooked region's code (the path Gemini runs, hooks inactive).

    python bench/grad_bias.py --device cuda --out bench/results/grad_bias_h200.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def _shape(hidden: int, layers: int, seq: int) -> list[str]:
    return [f"model.hidden_size={hidden}", f"model.intermediate_size={hidden * 11 // 4}",
            f"model.num_hidden_layers={layers}", f"model.num_attention_heads={hidden // 64}",
            f"model.num_key_value_heads={hidden // 128}", "model.vocab_size=8192",
            f"model.max_position_embeddings={seq}", "model.attn=sdpa", f"data.seq_len={seq}"]


def gradients(args, compiled: bool, dtype: torch.dtype, state: dict | None):
    from ominix.config import load_config
    from ominix.model import build_model

    switches = [f"model.compile={str(compiled).lower()}",
                f"model.gradient_checkpointing={str(args.checkpointing).lower()}"]
    cfg = load_config("tiny", _shape(args.hidden, args.layers, args.seq) + switches, {})
    model = build_model(cfg.model, device=args.device, dtype=dtype, seed=0, wrapped_params=True)
    if state is not None:
        model.load_state_dict({k: v.to(dtype) for k, v in state.items()})
    model.train()
    gen = torch.Generator().manual_seed(args.seed)
    block = torch.randint(0, cfg.model.vocab_size, (args.batch, args.seq + 1), generator=gen).to(args.device)
    loss = model(block[:, :-1], labels=block[:, 1:]).loss
    loss.backward()
    grads = {n: p.grad.double().cpu() for n, p in model.named_parameters()}
    return grads, loss.item(), {k: v.detach().clone() for k, v in model.state_dict().items()}


def compare(g: dict, ref: dict) -> dict:
    sq = sum(float(r.norm() ** 2) for r in ref.values())
    err = sum(float((g[n] - r).norm() ** 2) for n, r in ref.items()) ** 0.5 / sq ** 0.5
    proj = sum(float((g[n] * r).sum()) for n, r in ref.items()) / sq
    per = {n: {"rel_error": float((g[n] - r).norm() / r.norm()), "projection": float((g[n] * r).sum() / r.norm() ** 2)}
           for n, r in ref.items()}
    return {"rel_error": err, "projection": proj, "parameters": per}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--checkpointing", action="store_true", help="gradient checkpointing on (the presets' setting)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    started = time.time()
    eager, loss_e, state = gradients(args, False, torch.bfloat16, None)
    eager2, loss_e2, _ = gradients(args, False, torch.bfloat16, state)
    comp, loss_c, _ = gradients(args, True, torch.bfloat16, state)
    ref, loss_r, _ = gradients(args, False, torch.float64, state)
    variants = {"eager": (eager, loss_e), "eager_again": (eager2, loss_e2), "compiled": (comp, loss_c)}
    result = {"name": "one-step gradient bias, bf16 against fp64", "card": torch.cuda.get_device_name()
              if args.device == "cuda" else "cpu", "date": time.strftime("%Y-%m-%d"),
              "command": "bench/grad_bias.py " + " ".join(sys.argv[1:]), "torch": torch.__version__,
              "loss_fp64": loss_r, "seconds": round(time.time() - started, 1),
              **{k: {"loss": loss, **compare(g, ref)} for k, (g, loss) in variants.items()}}
    for k in variants:
        print(f"{k:12s} loss {result[k]['loss']:.6f} (fp64 {loss_r:.6f})  relative error {result[k]['rel_error']:.3e}  "
              f"projection {result[k]['projection']:.5f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
