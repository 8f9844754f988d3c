"""Batch-1 matrix-vector products for the decode step, as Triton kernels of our own.

A decoded token multiplies one activation vector by every weight matrix once, so each product
should stream its matrix at the memory bandwidth. Inductor's tuned reductions reach 1.2-3.6 TB/s
on an H200 depending on the shape (BENCHMARKS.md): its tuner walks from one starting block size and
stops in a local optimum. These kernels are the same multiply-and-sum, but Triton's autotuner times
every block shape listed below per matrix shape and keeps the fastest.

``gemv(w, x)`` is ``w @ x`` (``w``: [N, K], ``x``: [K]) and ``gemv_swiglu(w, gate_up)`` is
``w @ (silu(gate) * up)`` with ``gate_up`` the two halves side by side, so the feed-forward block's
activation is computed while its input is read. Both are torch operators (``torch.library``), so a
compiled decode step keeps them in its graph and its CUDA graph. On a machine without Triton (or on
the CPU, unless ``TRITON_INTERPRET=1``) ``available()`` is False and the caller keeps the compiler's
products.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch


def available(device: torch.device | str) -> bool:
    """Whether the kernels can run on ``device``: Triton installed, and a CUDA device (or the CPU
    under Triton's interpreter, which the tests use)."""
    if importlib.util.find_spec("triton") is None:
        return False
    kind = torch.device(device).type
    return kind == "cuda" or (kind == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


@functools.cache
def _ops():
    """Define the kernels and register the operators (once, on first use: Triton imports slowly)."""
    import triton
    import triton.language as tl
    from torch.library import triton_op, wrap_triton

    if os.environ.get("TRITON_INTERPRET") == "1":  # the interpreter times nothing: one shape of each
        configs = [triton.Config({"BLOCK_N": 4, "BLOCK_K": 64})]
    else:
        configs = [
            triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
            for n, k, w in [(1, 1024, 4), (1, 2048, 8), (2, 512, 4), (2, 1024, 4), (4, 256, 4), (4, 512, 4),
                            (4, 1024, 8), (8, 256, 4), (8, 512, 8), (16, 128, 4), (16, 256, 8), (32, 128, 8)]
            for s in (2, 4)
        ]

    @triton.autotune(configs=configs, key=["N", "K"])
    @triton.jit
    def _gemv(w_ptr, x_ptr, y_ptr, N, K, SWIGLU: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        for start in range(0, K, BLOCK_K):
            cols = start + tl.arange(0, BLOCK_K)
            if SWIGLU:  # x = silu(gate) * up, gate and up side by side in x_ptr
                gate = tl.load(x_ptr + cols, mask=cols < K, other=0.0).to(tl.float32)
                up = tl.load(x_ptr + K + cols, mask=cols < K, other=0.0).to(tl.float32)
                x = gate * tl.sigmoid(gate) * up
                x = x.to(x_ptr.dtype.element_ty).to(tl.float32)  # rounded as the unfused path hands it on
            else:
                x = tl.load(x_ptr + cols, mask=cols < K, other=0.0).to(tl.float32)
            mask = (rows[:, None] < N) & (cols[None, :] < K)
            w = tl.load(w_ptr + rows[:, None] * K + cols[None, :], mask=mask, other=0.0,
                        eviction_policy="evict_first")
            acc += w.to(tl.float32) * x[None, :]
        tl.store(y_ptr + rows, tl.sum(acc, axis=1).to(y_ptr.dtype.element_ty), mask=rows < N)

    def launch(w: torch.Tensor, x: torch.Tensor, k: int, swiglu: bool) -> torch.Tensor:
        n = w.shape[0]
        y = torch.empty(n, device=x.device, dtype=x.dtype)
        wrap_triton(_gemv)[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)](w, x, y, n, k, SWIGLU=swiglu)
        return y

    @triton_op("ominix::gemv", mutates_args={})
    def gemv(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return launch(w, x, w.shape[1], False)

    @triton_op("ominix::gemv_swiglu", mutates_args={})
    def gemv_swiglu(w: torch.Tensor, gate_up: torch.Tensor) -> torch.Tensor:
        return launch(w, gate_up, w.shape[1], True)

    return gemv, gemv_swiglu


def gemv(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``w @ x`` for ``w`` [N, K] (contiguous) and ``x`` [K]; the result has ``x``'s dtype."""
    return _ops()[0](w, x.contiguous())


def gemv_swiglu(w: torch.Tensor, gate_up: torch.Tensor) -> torch.Tensor:
    """``w @ (silu(gate) * up)`` for ``w`` [N, K] and ``gate_up`` [2K] (gate first)."""
    return _ops()[1](w, gate_up.contiguous())
