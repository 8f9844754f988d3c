"""Checkpoints written in the background (``checkpoint.async_save``).

The loop is blocked only while the state is taken to host memory: the booster gathers the model and
optimizer as it does for a synchronous save, but each tensor file it would write is kept as a host
copy instead (:func:`captured_writes`); the RNG, data position, scheduler and state.json are small
and written there and then. A thread then writes the captured files, hashes them into
integrity.json, renames the directory into place and only then replaces ``latest``, so the rules of
a synchronous save hold: a step directory under its final name has its record, and ``latest``
never names a checkpoint still being written. A process killed during the background write leaves
only the temporary directory, which the next save deletes; resume takes the previous checkpoint.

At most one write is in flight: the next save, the end of the run and a stop signal wait for it.
The host holds a copy of this rank's share of the checkpoint until it is written (at 7B with Adam
on one GPU about 100 GB), which is why ``async_save`` is off unless asked for.

Why not ColossalAI's own ``use_async``: in 0.5.0 it needs tensornvme's writer and pinned (CUDA)
memory, writes the optimizer in another format than the synchronous save, and records nothing;
the integrity record and ``latest`` would still have to wait for its writers.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ominix import colossalai_gate as gate

Pending = list[tuple[str, dict[str, Any], bool]]  # (file, host copy of its state dict, safetensors?)


@dataclass
class SaveTiming:
    """A finished background save: its directory, how long it blocked the loop, how long in all."""

    path: Path
    step: int
    blocked: float
    seconds: float


def _host_copy(value: Any) -> Any:
    import torch

    if torch.is_tensor(value):  # copy=True: a CPU tensor would otherwise be the live parameter
        return value.detach().to("cpu", copy=True)
    return value


@contextlib.contextmanager
def captured_writes() -> Iterator[Pending]:
    """For its length, ColossalAI's checkpoint writers (``save_state_dict``, behind every plugin's
    model and optimizer files) append each file's state dict, copied to host memory, to the yielded
    list instead of writing it; :func:`write_captured` writes them later. The index and param-group
    files are still written at once (they are small)."""
    from colossalai.checkpoint_io import utils
    from torch.utils._pytree import tree_map

    gate.require("checkpoint.async_save (the booster's files kept in host memory, written by a thread)",
                 (utils, "save_state_dict", "(state_dict, checkpoint_file_path, use_safetensors)"),
                 instead="set checkpoint.async_save=false")
    original = utils.save_state_dict
    pending: Pending = []

    def capture(state_dict: dict, checkpoint_file_path: str, use_safetensors: bool) -> None:
        pending.append((checkpoint_file_path, tree_map(_host_copy, state_dict), use_safetensors))

    # each plugin module imported the function by name: replace it wherever it is bound
    owners = [m for name, m in list(sys.modules.items())
              if name.startswith("colossalai") and getattr(m, "save_state_dict", None) is original]
    for module in owners:
        module.save_state_dict = capture
    try:
        yield pending
    finally:
        for module in owners:
            module.save_state_dict = original


def write_captured(pending: Pending) -> None:
    """Write the files :func:`captured_writes` kept, with ColossalAI's own writer."""
    from colossalai.checkpoint_io.utils import save_state_dict

    while pending:
        path, state_dict, safetensors = pending.pop(0)  # popped: each copy is freed once written
        save_state_dict(state_dict, path, safetensors)


class BackgroundSave:
    """The one checkpoint write in flight, on every rank, with the CPU (gloo) process group its
    threads synchronise through (the training's group stays the main thread's). Built by every rank
    after the process group is up."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.group = dist.new_group(backend="gloo") if dist.is_initialized() else None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._timing: SaveTiming | None = None

    def start(self, work: Callable[[Any], None], path: Path, step: int, began: float) -> None:
        """Run ``work(group)`` in a thread; ``began`` (perf_counter) is when the save was asked for."""
        blocked = time.perf_counter() - began

        def run() -> None:
            try:
                work(self.group)
                self._timing = SaveTiming(path, step, blocked, time.perf_counter() - began)
            except BaseException as exc:  # raised on the main thread, at wait()
                self._error = exc

        # not a daemon: an interpreter that exits (a step's error) lets the write finish first
        self._thread = threading.Thread(target=run, name=f"checkpoint-write-{step}")
        self._thread.start()

    def finished(self) -> SaveTiming | None:
        """The timing of a write that has completed since the last call (its error raises), else None."""
        if self._thread is None or self._thread.is_alive():
            return None
        return self.wait()

    def wait(self) -> SaveTiming | None:
        """Wait for the write in flight; its timing (None when there was none), or its error."""
        if self._thread is None:
            return None
        self._thread.join()
        self._thread = None
        error, self._error = self._error, None
        timing, self._timing = self._timing, None
        if error is not None:
            raise error
        return timing
