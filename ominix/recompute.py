"""What activation recompute keeps for backward (``model.recompute_policy``, with
``model.recompute_activations``).

``full``: only each decoder layer's input; the whole layer runs again in backward (about a third
more compute, the least memory). ``selective``: the outputs of the matmuls and of attention are
kept, and only the cheap memory-bound ops (RMSNorm, rotary, SwiGLU, residual adds, casts) run
again: almost no extra compute, for the memory of those outputs. It uses torch's selective
activation checkpointing (``create_selective_checkpoint_contexts``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

_ATEN = torch.ops.aten
_KEPT_NAMES = (
    "mm", "addmm", "bmm", "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu",
    "_flash_attention_forward", "_efficient_attention_forward",
)
# the overloads this torch has (a name missing from an older build is skipped)
KEPT = frozenset(getattr(_ATEN, name).default for name in _KEPT_NAMES if hasattr(_ATEN, name))


def _keep_matmuls(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    if op in KEPT or str(op).startswith("flash_attn"):  # flash-attn's own forward op, when installed
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def run_checkpointed(fn: Callable[..., torch.Tensor], *args: Any, policy: str = "full") -> torch.Tensor:
    """``fn(*args)`` under activation checkpointing with ``policy`` (full or selective)."""
    if policy == "selective":
        context = functools.partial(create_selective_checkpoint_contexts, _keep_matmuls)
        return checkpoint(fn, *args, use_reentrant=False, context_fn=context)
    return checkpoint(fn, *args, use_reentrant=False)
