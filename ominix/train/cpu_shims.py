"""Shims that let ColossalAI 0.5.0's ZeRO (LowLevelZero) and tensor/pipeline-parallel code run on its
CPU accelerator (gloo), so those plugins are tested on CPU machines. Applied only without a GPU.

On a CPU every operation is synchronous, so CUDA streams and synchronisation are no-ops; ColossalAI's
``CpuAccelerator`` raises on them instead. Each patch below replaces one such raising method (or one
check that only admits CUDA/NPU) and nothing else.
"""

from __future__ import annotations

import contextlib


class _CpuStream:
    """A stream on which everything has already happened."""

    def wait_stream(self, other) -> None:
        pass

    def synchronize(self) -> None:
        pass


def torch_compat() -> None:
    """ColossalAI's pipeline p2p calls ``torch.distributed.is_hccl_available``, which newer torch
    releases (2.13 here) no longer have; HCCL (Ascend NPUs) is never available where it is missing."""
    import torch.distributed as dist

    if not hasattr(dist, "is_hccl_available"):
        dist.is_hccl_available = lambda: False


def apply() -> None:
    import torch
    from colossalai.accelerator import get_accelerator
    from colossalai.accelerator.cpu_accelerator import CpuAccelerator
    from colossalai.zero.low_level.low_level_optim import LowLevelZeroOptimizer

    if get_accelerator().name != "cpu" or getattr(CpuAccelerator, "_ominix_shims", False):
        return
    CpuAccelerator._ominix_shims = True
    CpuAccelerator.Stream = lambda self, *args, **kwargs: _CpuStream()
    CpuAccelerator.current_stream = lambda self, device=None: _CpuStream()
    CpuAccelerator.default_stream = lambda self, device=None: _CpuStream()
    CpuAccelerator.stream = lambda self, stream_: contextlib.nullcontext()
    CpuAccelerator.synchronize = lambda self, device=None: None
    # torch.get_rng_state takes no device argument; ColossalAI passes one
    CpuAccelerator.get_rng_state = lambda self, device=None: torch.get_rng_state()
    CpuAccelerator.get_rng_state_all = lambda self: [torch.get_rng_state()]
    CpuAccelerator.set_rng_state_all = lambda self, states: torch.set_rng_state(states[0])
    CpuAccelerator.manual_seed = lambda self, seed: torch.manual_seed(seed)
    CpuAccelerator.manual_seed_all = lambda self, seed: torch.manual_seed(seed)

    # LowLevelZeroOptimizer refuses any accelerator but CUDA/NPU before its dtype checks
    dtype_checks = LowLevelZeroOptimizer._sanity_checks

    def sanity_checks(self) -> None:
        accelerator = get_accelerator()
        accelerator._name = "cuda"
        try:
            dtype_checks(self)
        finally:
            accelerator._name = "cpu"

    LowLevelZeroOptimizer._sanity_checks = sanity_checks
