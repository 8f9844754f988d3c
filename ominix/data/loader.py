"""Batches of packed blocks for training (shuffled, rank-split, resumable) and for evaluation.

Order: epoch ``e`` visits the blocks in ``permutation(seed, e)``; the epochs are concatenated into
one endless stream. Each step consumes the next ``batch_size * world_size`` blocks of that stream
and rank ``r`` takes rows ``r * batch_size .. (r + 1) * batch_size`` of them, so ranks take disjoint
blocks of each epoch and the global order does not depend on the number of ranks. The position is
``(epoch, cursor)``; ``state_dict()`` saves it and ``load_state_dict()`` restores it exactly, also
under a different ``world_size`` as long as the global batch (``batch_size * world_size``) is the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ominix.data.store import PackedDataset
from ominix.errors import OminixError


def epoch_order(num_blocks: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """Block indices of one epoch: a permutation fixed by ``(seed, epoch)``, or 0..n-1."""
    if not shuffle:
        return np.arange(num_blocks, dtype=np.int64)
    return np.random.default_rng([seed, epoch]).permutation(num_blocks)


class BlockLoader:
    """Endless iterator of ``torch.LongTensor[batch_size, seq_len + 1]`` for one rank."""

    def __init__(
        self,
        dataset: PackedDataset,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        if len(dataset) == 0:
            raise OminixError(
                f"{dataset.path} has no {dataset.split} blocks",
                "prepare more text, or a smaller data.seq_len",
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.cursor = 0  # blocks of the current epoch already consumed by all ranks together
        self.step_blocks: np.ndarray | None = None  # every rank's blocks of the last step (the ledger's row)
        self._order = epoch_order(len(dataset), seed, 0, shuffle)

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    @property
    def steps_per_epoch(self) -> float:
        """Steps in one pass over the split (fractional: batches run on into the next epoch)."""
        return len(self.dataset) / self.global_batch

    def _take(self, count: int) -> np.ndarray:
        """The next ``count`` indices of the global stream, advancing the position."""
        parts = []
        while count:
            if self.cursor == len(self._order):
                self.epoch += 1
                self.cursor = 0
                self._order = epoch_order(len(self.dataset), self.seed, self.epoch, self.shuffle)
            part = self._order[self.cursor : self.cursor + count]
            self.cursor += len(part)
            count -= len(part)
            parts.append(part)
        return np.concatenate(parts)

    def next_indices(self) -> np.ndarray:
        """Block indices of this rank's next batch (advances the position of every rank alike)."""
        step = self.step_blocks = self._take(self.global_batch)
        return step[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def __next__(self) -> torch.Tensor:
        rows = [self.dataset[int(i)] for i in self.next_indices()]
        return torch.from_numpy(np.stack(rows))

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable position; restore it with ``load_state_dict``."""
        return {
            "epoch": self.epoch,
            "cursor": self.cursor,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "global_batch": self.global_batch,
            "num_blocks": len(self.dataset),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["num_blocks"] != len(self.dataset):
            raise OminixError(
                f"the saved data position is for {state['num_blocks']} blocks, the dataset has "
                f"{len(self.dataset)}",
                "resume with the same prepared data directory (data.path)",
            )
        if state["global_batch"] != self.global_batch:
            raise OminixError(
                f"the saved data position is for a global batch of {state['global_batch']} blocks, "
                f"this run uses {self.global_batch}",
                f"resume with --set schedule.global_batch_size={state['global_batch']} (the run's batch)",
            )
        self.seed = state["seed"]
        self.shuffle = state["shuffle"]
        self.epoch = state["epoch"]
        self.cursor = state["cursor"]
        self._order = epoch_order(len(self.dataset), self.seed, self.epoch, self.shuffle)


def held_out_ids(n: int, max_blocks: int | None = None) -> np.ndarray:
    """The held-out blocks an evaluation reads, of a split of ``n``: all of them, or ``max_blocks``
    spread evenly over the split (so every source set is represented). Depends on nothing else,
    so the trainer under any plugin and world size and ``ominix eval`` read the same blocks."""
    if max_blocks is None or max_blocks >= n:
        return np.arange(n)
    return np.arange(max_blocks) * n // max_blocks


def eval_batches(
    dataset: PackedDataset,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    max_blocks: int | None = None,
    pad: bool = False,
) -> Iterator[tuple[torch.Tensor, list[str | None]]]:
    """The blocks of :func:`held_out_ids` in a fixed order, rank ``r`` taking every
    ``world_size``-th one. Yields ``(LongTensor[b, seq_len + 1], source set names of the b rows)``.
    ``max_blocks`` caps the blocks over all ranks together (None = the whole split). ``pad``: every
    rank yields as many rows (and batches) as the rank with the most, repeating the first block with
    source None, so plugins whose forward pass is collective (Gemini, ZeRO-3) run the same number
    of passes on every rank; the caller gives those rows no weight."""
    chosen = held_out_ids(len(dataset), max_blocks)
    ids = [int(i) for i in chosen[rank::world_size]]
    real = len(ids)
    if pad and len(chosen):
        ids += [int(chosen[0])] * (-(-len(chosen) // world_size) - real)
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        batch = torch.from_numpy(np.stack([dataset[i] for i in chunk]).astype(np.int64))
        yield batch, [dataset.source_of(i) if start + k < real else None for k, i in enumerate(chunk)]
