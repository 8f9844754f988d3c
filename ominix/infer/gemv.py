"""Batch-1 matrix-vector products for the decode step, as Triton kernels of our own.

A decoded token multiplies one activation vector by every weight matrix once, so each product
should stream its matrix at the memory bandwidth. Inductor's tuned reductions reach 1.2-3.6 TB/s
on an H200 depending on the shape (BENCHMARKS.md): its tuner walks from one starting block size and
stops in a local optimum. These kernels are the same multiply-and-sum, but Triton's autotuner times
every block shape listed below per matrix shape and keeps the fastest.

``gemv`` also applies what sits on either side of a product in a decoder layer, so a layer needs
no kernels besides its four products and its attention (with rotary and cache writes): the RMSNorm
before a product (each block of
rows recomputes the norm's statistics from the input, a few KB that stay in cache), the SwiGLU
before down_proj, and the residual add after it. It is one torch operator (``torch.library``), so a
compiled decode step keeps it in its graph and its CUDA graph. On a machine without Triton (or on
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
def register() -> None:
    """Define the kernel and register the operator ``torch.ops.ominix.gemv`` (once; Triton imports
    slowly, so not at import). Call it before compiling code that uses ``gemv``: the compiler
    traces the operator, not this function."""
    import triton
    import triton.language as tl

    if os.environ.get("TRITON_INTERPRET") == "1":  # the interpreter times nothing: one shape of each
        configs = [triton.Config({"BLOCK_N": 4, "BLOCK_K": 64})]
    else:
        configs = [
            triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
            for n, k, w in [(1, 1024, 4), (1, 2048, 8), (2, 512, 4), (2, 1024, 4), (4, 256, 4), (4, 512, 4),
                            (4, 1024, 8), (8, 256, 4), (8, 512, 8), (16, 128, 4), (16, 256, 8), (32, 128, 8)]
            for s in (2, 4)
        ]

    @triton.autotune(configs=configs, key=["N", "K", "NORM", "SWIGLU", "RESIDUAL"])
    @triton.jit
    def _gemv(w_ptr, x_ptr, g_ptr, r_ptr, y_ptr, N, K, eps, NORM: tl.constexpr, SWIGLU: tl.constexpr,
              RESIDUAL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        dtype = x_ptr.dtype.element_ty
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        scale = tl.full([], 1.0, tl.float32)
        if NORM:  # RMSNorm statistics over the whole input (a few KB, read again from cache below)
            squares = tl.zeros([BLOCK_K], dtype=tl.float32)
            for start in range(0, K, BLOCK_K):
                cols = start + tl.arange(0, BLOCK_K)
                v = tl.load(x_ptr + cols, mask=cols < K, other=0.0).to(tl.float32)
                squares += v * v
            scale = tl.math.rsqrt(tl.sum(squares, axis=0) / K + eps)
        acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        for start in range(0, K, BLOCK_K):
            cols = start + tl.arange(0, BLOCK_K)
            if SWIGLU:  # x = silu(gate) * up, gate and up side by side in x_ptr
                gate = tl.load(x_ptr + cols, mask=cols < K, other=0.0).to(tl.float32)
                up = tl.load(x_ptr + K + cols, mask=cols < K, other=0.0).to(tl.float32)
                x = (gate * tl.sigmoid(gate) * up).to(dtype).to(tl.float32)
            else:
                x = tl.load(x_ptr + cols, mask=cols < K, other=0.0).to(tl.float32)
            if NORM:  # rounded where the model's RMSNorm rounds: after normalising, after the weight
                x = (x * scale).to(dtype).to(tl.float32)
                x = (tl.load(g_ptr + cols, mask=cols < K, other=0.0).to(tl.float32) * x).to(dtype).to(tl.float32)
            mask = (rows[:, None] < N) & (cols[None, :] < K)
            w = tl.load(w_ptr + rows[:, None] * K + cols[None, :], mask=mask, other=0.0,
                        eviction_policy="evict_first")
            acc += w.to(tl.float32) * x[None, :]
        y = tl.sum(acc, axis=1)
        if RESIDUAL:  # the product is rounded before the residual add, as in the model
            y = y.to(dtype).to(tl.float32) + tl.load(r_ptr + rows, mask=rows < N, other=0.0).to(tl.float32)
        tl.store(y_ptr + rows, y.to(dtype), mask=rows < N)

    # an opaque operator: the compiler leaves it whole and the CUDA graph captures its launch
    @torch.library.custom_op("ominix::gemv", mutates_args=())
    def op(w: torch.Tensor, x: torch.Tensor, g: torch.Tensor, r: torch.Tensor, eps: float, norm: bool,
           swiglu: bool, residual: bool) -> torch.Tensor:
        n, k = w.shape
        y = torch.empty(n, device=x.device, dtype=x.dtype)
        _gemv[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)](
            w, x, g, r, y, n, k, eps, NORM=norm, SWIGLU=swiglu, RESIDUAL=residual)
        return y

    @op.register_fake
    def _(w: torch.Tensor, x: torch.Tensor, *args) -> torch.Tensor:
        return x.new_empty(w.shape[0])


def gemv(w: torch.Tensor, x: torch.Tensor, norm: tuple[torch.Tensor, float] | None = None,
         residual: torch.Tensor | None = None, swiglu: bool = False) -> torch.Tensor:
    """``w @ f(x) (+ residual)`` for ``w`` [N, K] and a vector ``x``, in ``x``'s dtype, where f is
    RMSNorm with ``norm`` = (weight, eps), or SwiGLU (``swiglu``: ``x`` is [gate, up], 2K long), or
    nothing."""
    w, x = w.contiguous(), x.reshape(-1).contiguous()
    g, eps = norm if norm is not None else (x, 0.0)
    r = residual.reshape(-1).contiguous() if residual is not None else x
    if not torch.compiler.is_compiling():
        register()
    return torch.ops.ominix.gemv(w, x, g, r, float(eps), norm is not None, swiglu, residual is not None)
