"""One forward and backward of a small OminiX decoder that saves every parameter's gradient: the probe
behind ``tests/gpu/test_compiled_gemini.py``, one process (or one torchrun rank) per variant.

``--mode gemini``: the decoder trained through ``build_engine`` under ColossalAI's Gemini (bf16, as
Gemini computes); the gradients are the tensors Gemini's per-parameter gradient hook receives, before
its reduction. ``--mode plain``: the decoder alone in fp32 on the GPU (TF32 off); compiled layers take
the hooked region's code path, whose hooks are inactive outside a plugin. ``--compile`` picks eager
layers, the hooked compiled region with Inductor (the product), or the same region traced by AOT
autograd but run by eager kernels (``aot_eager``: what the region routes, not what Inductor fuses).

    python tests/gpu/grad_probe.py --mode gemini --compile inductor --out /tmp/g.pt
    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/gpu/grad_probe.py \\
        --mode gemini --compile eager --out /tmp/g.pt        # writes /tmp/g.pt.rank0, .rank1

``--loss-chunk N`` sets ``model.loss_chunk`` (0: the plain cross-entropy over the whole logits); the
result also holds the process's peak of allocated GPU memory.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys

import torch

# a small decoder of the real layout (GQA, SwiGLU, tied nothing), fast to compile
SHAPE = ["model.hidden_size=256", "model.intermediate_size=688", "model.num_hidden_layers=3",
         "model.num_attention_heads=4", "model.num_key_value_heads=2", "model.vocab_size=2048",
         "model.max_position_embeddings=256", "model.attn=sdpa", "data.seq_len=256",
         "model.recompute_activations=false"]
MICRO = 4


def _config(compiled: bool, precision: str, world: int, loss_chunk: int | None = None):
    from ominix.config import load_config

    chunk = [] if loss_chunk is None else [f"model.loss_chunk={loss_chunk}"]
    sets = [*SHAPE, *chunk, f"model.compile={str(compiled).lower()}", f"parallel.precision={precision}",
            f"schedule.micro_batch_size={MICRO}", f"schedule.global_batch_size={MICRO * world}"]
    return load_config("tiny", sets, {"parallel.plugin": "gemini"})


def _batch(cfg, rank: int, device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1234 + rank)
    return torch.randint(0, cfg.model.vocab_size, (MICRO, cfg.data.seq_len + 1), generator=gen).to(device)


def gemini_grads(compiled: bool, loss_chunk: int | None = None) -> tuple[dict[str, torch.Tensor], float, int]:
    """Gradients as Gemini's gradient hook receives them, after one micro batch."""
    import torch.distributed as dist
    from colossalai.zero.gemini.gemini_ddp import GeminiDDP

    from ominix.train import colossalai_patches
    from ominix.train.engine import build_engine, init_distributed, one_process_env

    grads: dict[str, torch.Tensor] = {}
    original = GeminiDDP.grad_handle

    def recording(grad, *args, **kwargs):
        grads[kwargs["param2name"][kwargs["p"]]] = grad.detach().float().cpu().clone()
        return original(grad, *args, **kwargs)

    GeminiDDP.grad_handle = staticmethod(recording)  # bound into each parameter's hook when boosted
    run = contextlib.ExitStack()
    run.enter_context(one_process_env())
    run.enter_context(colossalai_patches.patched())
    init_distributed(seed=0)
    world, rank = dist.get_world_size(), dist.get_rank()
    cfg = _config(compiled, "bf16", world, loss_chunk)
    engine = build_engine(cfg, lambda step: 1.0)
    engine.model.train()
    with engine.autocast():
        loss = engine.loss(_batch(cfg, rank, engine.device))
    engine.booster.backward(loss, engine.optimizer)
    torch.cuda.synchronize()
    return grads, loss.item(), rank


def plain_grads(compiled: bool, loss_chunk: int | None = None) -> tuple[dict[str, torch.Tensor], float, int]:
    """fp32 gradients of the decoder alone (no plugin), TF32 off."""
    from ominix.model import build_model

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cfg = _config(compiled, "bf16", 1, loss_chunk)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: to try the probe without a GPU
    model = build_model(cfg.model, device=device, dtype=torch.float32, seed=0, wrapped_params=True)
    block = _batch(cfg, 0, device)
    loss = model(block[:, :-1], labels=block[:, 1:]).loss
    loss.backward()
    return {n: p.grad.detach().float().cpu().clone() for n, p in model.named_parameters()}, loss.item(), 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("gemini", "plain"), required=True)
    ap.add_argument("--compile", choices=("eager", "inductor", "aot_eager"), required=True)
    ap.add_argument("--loss-chunk", type=int, help="model.loss_chunk (default: the config's)")
    ap.add_argument("--out", required=True, help="file for {'grads', 'loss'} (with several ranks: OUT.rankN)")
    args = ap.parse_args()
    if args.compile == "aot_eager":  # the compiled region is built with torch.compile: trace it, run eagerly
        torch.compile = functools.partial(torch.compile, backend="aot_eager")
    compiled = args.compile != "eager"
    grads, loss, rank = (gemini_grads if args.mode == "gemini" else plain_grads)(compiled, args.loss_chunk)
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
    torch.save({"grads": grads, "loss": loss, "peak_bytes": peak}, args.out if world == 1 else f"{args.out}.rank{rank}")
    print(f"rank {rank}: loss {loss:.6f}, {len(grads)} gradients -> {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
