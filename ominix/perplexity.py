"""Loss and perplexity of a causal LM on held-out packed blocks, overall and per source set.

``evaluate`` is what both ``ominix eval`` and the training loop's periodic evaluation call (it lives
below both, so training never imports ``ominix.eval``). It reads
blocks in index order (no shuffling, so two evaluations of the same model give the same numbers),
and when ``world_size > 1`` each rank takes every ``world_size``-th block and the sums are
all-reduced, so every rank returns the same result.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
import torch.nn.functional as F


class Blocks(Protocol):
    """What ``evaluate`` needs of a dataset (``ominix.data.store.PackedDataset`` has it)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...

    def source_of(self, index: int) -> str: ...


def _limit(n: int, batch_size: int, max_batches: int | None, world_size: int) -> int:
    return n if max_batches is None else min(n, max_batches * batch_size * world_size)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset: Blocks,
    batch_size: int = 8,
    max_batches: int | None = None,
    device: str | torch.device | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, Any]:
    """Mean next-token cross-entropy (nats/token) and perplexity of ``model`` on ``dataset``.

    Each block of ``seq_len + 1`` tokens gives ``seq_len`` predictions. ``max_batches`` caps the
    micro batches per rank (None = the whole split). Returns ``{"loss", "perplexity", "tokens",
    "blocks", "per_source": {name: {"loss", "perplexity", "tokens", "blocks"}}}``. The model's mode
    (train/eval) is restored afterwards.
    """
    if device is None:
        device = next(model.parameters()).device
    limit = _limit(len(dataset), batch_size, max_batches, world_size)
    names = sorted({dataset.source_of(i) for i in range(limit)})  # the same list on every rank
    index = {name: i for i, name in enumerate(names)}
    # per source: [sum of token losses, tokens, blocks], kept in float64 so long runs do not drift
    sums = torch.zeros(len(names), 3, dtype=torch.float64, device=device)
    ids = list(range(rank, limit, world_size))
    was_training = model.training
    model.eval()
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        batch = torch.stack([torch.as_tensor(_as_int64(dataset[i])) for i in chunk]).to(device)
        logits = model(batch[:, :-1]).logits
        token_loss = F.cross_entropy(
            logits.float().transpose(1, 2), batch[:, 1:], reduction="none"
        )  # [batch, seq_len]
        rows = torch.tensor([index[dataset.source_of(i)] for i in chunk], device=device)
        per_row = torch.stack(
            [token_loss.sum(1).double(), torch.full_like(rows, token_loss.shape[1], dtype=torch.float64),
             torch.ones_like(rows, dtype=torch.float64)], dim=1,
        )
        sums.index_add_(0, rows, per_row)
    model.train(was_training)
    if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(sums)
    return _summary(names, sums.cpu())


def _as_int64(block: Any) -> Any:
    import numpy as np

    return np.asarray(block, dtype=np.int64)


def _numbers(loss_sum: float, tokens: float, blocks: float) -> dict[str, float | int]:
    loss = loss_sum / tokens if tokens else float("nan")
    return {
        "loss": loss,
        "perplexity": math.exp(loss) if tokens else float("nan"),
        "tokens": int(tokens),
        "blocks": int(blocks),
    }


def _summary(names: list[str], sums: torch.Tensor) -> dict[str, Any]:
    total = sums.sum(0).tolist()
    result: dict[str, Any] = _numbers(*total)
    result["per_source"] = {
        name: _numbers(*sums[i].tolist()) for i, name in enumerate(names) if sums[i, 2] > 0
    }
    return result
