"""Loss and perplexity of a causal LM on held-out packed blocks, overall and per source set.

``evaluate`` is what both ``ominix eval`` and the training loop's periodic evaluation call (it lives
below both, so training never imports ``ominix.eval``). The blocks are those of
:func:`ominix.data.loader.held_out_ids`: which blocks, and so the numbers, depend on the model and
the block count only, not on the plugin, the world size or the batch size. When ``world_size > 1``
each rank takes every ``world_size``-th block and the sums are all-reduced, so every rank returns
the same result. The loss comes from the model's chunked cross-entropy (``token_loss``): the fp32
logits of one chunk of tokens at a time, never of the whole batch (8.4 GB for the 7B preset's
micro batch).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import torch


class Blocks(Protocol):
    """What ``evaluate`` needs of a dataset (``ominix.data.store.PackedDataset`` has it)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...

    def source_of(self, index: int) -> str: ...


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset: Blocks,
    batch_size: int = 8,
    max_blocks: int | None = None,
    device: str | torch.device | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Mean next-token cross-entropy (nats/token) and perplexity of ``model`` on ``dataset``.

    Each block of ``seq_len + 1`` tokens gives ``seq_len`` predictions. ``max_blocks`` caps the
    blocks over all ranks together (None = the whole split); ``batch_size`` changes how many are
    scored at once, never which.
    Returns ``{"loss", "perplexity", "tokens", "blocks", "per_source": {name: {"loss",
    "perplexity", "tokens", "blocks"}}}``. ``progress(blocks_done, blocks)`` after each batch
    (this rank's). The model's mode (train/eval) is restored afterwards.
    """
    from ominix.data.loader import eval_batches, held_out_ids

    if device is None:
        device = next(model.parameters()).device
    chosen = held_out_ids(len(dataset), max_blocks)
    names = sorted({dataset.source_of(int(i)) for i in chosen})  # the same list on every rank
    index = {name: i for i, name in enumerate(names)}
    # per source: [sum of token losses, tokens, blocks], kept in float64 so long runs do not drift
    sums = torch.zeros(len(names), 3, dtype=torch.float64, device=device)
    mine, done = len(chosen[rank::world_size]), 0
    was_training = model.training
    model.eval()
    # padded: every rank makes as many forward passes (collective under Gemini / ZeRO-3)
    batches = eval_batches(dataset, batch_size, rank, world_size, max_blocks, pad=world_size > 1)
    for batch, sources in batches:
        batch = batch.to(device)
        token_loss = model(batch[:, :-1], labels=batch[:, 1:]).token_loss  # [batch, seq_len] fp32
        real = [k for k, s in enumerate(sources) if s is not None]  # padding rows count nothing
        if not real:
            continue
        token_loss = token_loss[real]
        rows = torch.tensor([index[sources[k]] for k in real], device=device)
        per_row = torch.stack(
            [token_loss.sum(1).double(), torch.full_like(rows, token_loss.shape[1], dtype=torch.float64),
             torch.ones_like(rows, dtype=torch.float64)], dim=1,
        )
        sums.index_add_(0, rows, per_row)
        done += len(real)
        if progress is not None:
            progress(done, mine)
    model.train(was_training)
    if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(sums)
    return _summary(names, sums.cpu())


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
