"""Patches (shims) over ColossalAI 0.5.0 for the length of a run: ``patched()`` applies them and restores what
they replaced on exit. Each one passes ``ominix.colossalai_gate`` first (its targets exist with the
signatures they were written against): the CPU accelerator's and the side-stream reduction's refuse
another ColossalAI, the two speed-ups (the logger, the chunk norms) are skipped with a notice.

- On its CPU accelerator (gloo), ZeRO (LowLevelZero) and tensor/pipeline-parallel code run, so those
  plugins are tested on CPU machines. On a CPU every operation is synchronous, so CUDA streams and
  synchronisation are no-ops; ColossalAI's ``CpuAccelerator`` raises on them instead. Each patch
  replaces one such raising method (or one check that only admits CUDA/NPU) and nothing else.
- Its logger's ``debug`` checks the level before it builds the record's call site (below).
- Gemini keeps each gradient chunk's norm on the device instead of reading it back per chunk (below).
- Gemini's reduction on a side stream frees a gathered chunk only once that stream (and its
  collective) has read it (below).
- Its pipeline code finds ``torch.distributed.is_hccl_available`` on torch releases without it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from ominix import colossalai_gate as gate

_MISSING = object()


class _CpuStream:
    """A stream on which everything has already happened."""

    def wait_stream(self, other) -> None:
        pass

    def synchronize(self) -> None:
        pass


@contextlib.contextmanager
def _replaced(owner: Any, **attrs: Any) -> Iterator[None]:
    """Set ``attrs`` on ``owner`` (a class or module) and put back what was there on exit."""
    saved = {name: owner.__dict__.get(name, _MISSING) for name in attrs}
    for name, value in attrs.items():
        setattr(owner, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, value)


def _torch_compat() -> contextlib.AbstractContextManager:
    """ColossalAI's pipeline p2p calls ``torch.distributed.is_hccl_available``, which newer torch
    releases (2.13 here) no longer have; HCCL (Ascend NPUs) is never available where it is missing."""
    import torch.distributed as dist

    if hasattr(dist, "is_hccl_available"):
        return contextlib.nullcontext()
    return _replaced(dist, is_hccl_available=lambda: False)


def _debug_checks_level(notices: list[str]) -> contextlib.AbstractContextManager:
    """ColossalAI's ``DistributedLogger.debug`` finds its caller with ``inspect.stack()`` before the
    logger drops the record (its level is INFO). Gemini calls it after every backward: 3-5 ms from a
    script, 26-50 ms in the worker on the H200 host, where ``python -m``'s frozen runpy frames make
    ``inspect`` search every loaded module for each call. That was the training CLI's ~10% gap to
    the bench at 1.1B with 8 micro batches per step."""
    import logging

    from colossalai.logging.logger import DistributedLogger

    notice = gate.skipped("the level check before ColossalAI's debug log calls",
                          (DistributedLogger, "debug", "(self, message, ranks=None)"))
    if notice:
        notices.append(notice)
        return contextlib.nullcontext()
    debug = DistributedLogger.debug

    def checked(self, message: str, ranks: list[int] | None = None) -> None:
        if self._logger.isEnabledFor(logging.DEBUG):
            debug(self, message, ranks)

    return _replaced(DistributedLogger, debug=checked)


def _chunk_norms_on_device(notices: list[str]) -> contextlib.AbstractContextManager:
    """With gradient clipping on, Gemini records each reduced gradient chunk's squared L2 norm as a
    Python float (``.item()``): one host sync per chunk per micro batch, 24 per micro batch at 1.1B
    and 384 of the 402 syncs in two profiled steps. Each one drains the
    GPU's queue, which then waits while Gemini's hooks refill it. The norm now stays a device tensor;
    ``GeminiOptimizer._calc_global_norm`` adds them up and its ``math.sqrt`` reads the total once per
    step (the chunk norms of earlier micro batches, overwritten by the last, are never read).
    Those reads were also what kept Gemini's async reduce safe; ``_reduce_frees_after_reads`` does
    that now."""
    from colossalai.zero.gemini.chunk.chunk import Chunk

    notice = gate.skipped("keeping Gemini's chunk norms on the device", (Chunk, "set_l2_norm", "(self)"))
    if notice:
        notices.append(notice)
        return contextlib.nullcontext()

    def set_l2_norm(self) -> None:
        assert self.l2_norm is None, "you are calculating the l2 norm twice"
        valid = self.cuda_global_chunk[: self.utilized_size] if self.is_gathered else self.cuda_shard[: self.valid_end]
        self.l2_norm = valid.data.float().norm(2).square()

    return _replaced(Chunk, set_l2_norm=set_l2_norm)


def _side_stream(tensor: Any) -> Any:
    """The current CUDA stream if ``tensor`` is on a GPU and that stream is not the default one."""
    import torch

    if not (isinstance(tensor, torch.Tensor) and tensor.is_cuda):
        return None
    stream = torch.cuda.current_stream(tensor.device)
    return None if stream == torch.cuda.default_stream(tensor.device) else stream


def frees_after_reads(reduce: Any, free: Any) -> tuple[Any, Any]:
    """``Chunk.reduce`` (``reduce``) and the chunk module's ``free_storage`` (``free``), changed so
    that a reduction on a side stream frees GPU memory only after that stream has read it.

    Gemini's async reduce runs a chunk's reduction on a side stream: a copy into the shard on one
    GPU, a reduce-scatter (on NCCL's own stream) on several. Right after enqueueing it, the host
    frees the gathered chunk, which the allocator gives back to the compute stream it was allocated
    on, with no record that the side stream still reads it: the next allocation can take it, and at
    7B micro 16 (memory reused and unmapped near the card's limit) the late read faulted. Here each
    free of a GPU tensor inside ``reduce`` on a side stream is held until the reduction is enqueued;
    then the stream waits for the chunk's collective, and each held tensor is recorded on the stream
    (``record_stream``) and freed: the allocator hands the memory out again only once the stream has
    passed this point. Any other free on a side stream (Gemini releasing a parameter chunk there,
    copying it into its shard first) is recorded on that stream and freed at once. The host never
    waits. Returns the new ``reduce`` and ``free_storage``."""
    holding = threading.local()  # the frees held by the reduction running in this thread

    def free_storage(tensor: Any) -> None:
        stream = _side_stream(tensor) if tensor.untyped_storage().size() else None  # else nothing to free
        if stream is not None:
            held = getattr(holding, "held", None)
            if held is not None:
                held.append(tensor)
                return
            tensor.record_stream(stream)
        free(tensor)

    def reduce_then_free(self, async_op: bool = False) -> None:
        stream = _side_stream(self.cuda_global_chunk) if self.is_gathered else None
        if stream is None:
            return reduce(self, async_op)
        holding.held = held = []
        try:
            reduce(self, async_op)
        finally:
            holding.held = None
            self.wait_async_reduce()  # this stream waits for the collective (the host does not)
            for tensor in held:
                tensor.record_stream(stream)
                free(tensor)

    return reduce_then_free, free_storage


@contextlib.contextmanager
def _reduce_frees_after_reads() -> Iterator[None]:
    from colossalai.zero.gemini.chunk import chunk as chunk_module

    gate.require("Gemini's reduction on a side stream (a chunk freed only after that stream read it)",
                 (chunk_module.Chunk, "reduce", "(self, async_op=False)"),
                 (chunk_module.Chunk, "wait_async_reduce", "(self)"),
                 (chunk_module, "free_storage", "(tensor)"))
    reduce, free_storage = frees_after_reads(chunk_module.Chunk.reduce, chunk_module.free_storage)
    with _replaced(chunk_module, free_storage=free_storage), _replaced(chunk_module.Chunk, reduce=reduce):
        yield


# what the CPU accelerator shim replaces, with the parameters of ColossalAI 0.5.0's methods
_CPU_ACCELERATOR = {
    "Stream": "(self, device=None, priority=0, **kwargs)", "current_stream": "(self, device=None)",
    "default_stream": "(self, device=None)", "stream": "(self, stream_)", "synchronize": "(self, device=None)",
    "get_rng_state": "(self, device=None)", "get_rng_state_all": "(self)",
    "set_rng_state_all": "(self, new_states)", "manual_seed": "(self, seed)", "manual_seed_all": "(self, seed)",
}


@contextlib.contextmanager
def _cpu_accelerator() -> Iterator[None]:
    import torch
    from colossalai.accelerator import get_accelerator
    from colossalai.accelerator.cpu_accelerator import CpuAccelerator
    from colossalai.zero.low_level.low_level_optim import LowLevelZeroOptimizer

    if get_accelerator().name != "cpu":
        yield
        return
    gate.require("training on a CPU (ColossalAI's CPU accelerator raises on streams and seeds)",
                 *[(CpuAccelerator, name, params) for name, params in _CPU_ACCELERATOR.items()],
                 (LowLevelZeroOptimizer, "_sanity_checks", "(self)"), instead="train on a GPU machine")
    # LowLevelZeroOptimizer refuses any accelerator but CUDA/NPU before its dtype checks
    dtype_checks = LowLevelZeroOptimizer._sanity_checks

    def sanity_checks(self) -> None:
        accelerator = get_accelerator()
        accelerator._name = "cuda"
        try:
            dtype_checks(self)
        finally:
            accelerator._name = "cpu"

    with _replaced(
        CpuAccelerator,
        Stream=lambda self, *args, **kwargs: _CpuStream(),
        current_stream=lambda self, device=None: _CpuStream(),
        default_stream=lambda self, device=None: _CpuStream(),
        stream=lambda self, stream_: contextlib.nullcontext(),
        synchronize=lambda self, device=None: None,
        # torch.get_rng_state takes no device argument; ColossalAI passes one
        get_rng_state=lambda self, device=None: torch.get_rng_state(),
        get_rng_state_all=lambda self: [torch.get_rng_state()],
        set_rng_state_all=lambda self, states: torch.set_rng_state(states[0]),
        manual_seed=lambda self, seed: torch.manual_seed(seed),
        manual_seed_all=lambda self, seed: torch.manual_seed(seed),
    ), _replaced(LowLevelZeroOptimizer, _sanity_checks=sanity_checks):
        yield


@contextlib.contextmanager
def patched() -> Iterator[list[str]]:
    """The shims a run needs (the CPU accelerator ones only without a GPU), undone on exit; yields
    the notices (one line each) of the speed-ups skipped under another ColossalAI. A shim needed
    for correctness whose target changed raises an OminixError, and nothing stays patched."""
    import torch

    notices: list[str] = []
    cpu = _cpu_accelerator() if not torch.cuda.is_available() else contextlib.nullcontext()
    with _torch_compat(), _debug_checks_level(notices), _chunk_norms_on_device(notices), \
            _reduce_frees_after_reads(), cpu:
        yield notices
