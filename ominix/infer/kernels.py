"""The decode step's kernels, written in Triton (``_triton.py``): batch-1 products and attention.

A decoded token multiplies one activation vector by every weight matrix once, so each product
should stream its matrix at the memory bandwidth. Inductor's tuned reductions reach 1.2-3.6 TB/s
on an H200 depending on the shape (BENCHMARKS.md): its tuner walks from one starting block size and
stops in a local optimum. ``gemv`` is the same multiply-and-sum, but Triton's autotuner times every
block shape in ``_triton.CONFIGS`` per matrix shape and keeps the fastest. It also applies what sits
on either side of a product in a decoder layer: the RMSNorm before it (each block of rows
recomputes the norm's statistics from the input, a few KB that stay in cache), the SwiGLU after
gate/up (each block computes matching gate and up rows, so down_proj reads a ready activation),
and the residual add after it.

``attend`` is the rest of the layer in one kernel per query head: rotary on the new query and key,
the new key and value written into the cache, and attention over the filled positions (read up to
the current one only, not the whole cache).

Both are opaque torch operators (``torch.library``), so a compiled decode step keeps them whole in
its graph and its CUDA graph: a decoder layer is five kernels. On a machine without Triton (or on the
CPU, unless ``TRITON_INTERPRET=1``) ``available()`` is False and the caller keeps the compiler's code.
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


def supports(head_dim: int) -> bool:
    """Whether ``attend`` takes this head size: it holds a head in one Triton block, whose sizes
    are powers of two (every preset's are)."""
    return head_dim > 0 and head_dim & (head_dim - 1) == 0


@functools.cache
def register() -> None:
    """Register the operators ``torch.ops.ominix.gemv`` and ``torch.ops.ominix.attend`` (once;
    Triton imports slowly, so not at import). Call it before compiling code that uses them: the
    compiler traces the operators, not this function. Each is opaque to the compiler, which leaves
    it whole, and the CUDA graph captures its launch."""
    import triton

    from ominix.infer import _triton

    @torch.library.custom_op("ominix::gemv", mutates_args=())
    def op(w: torch.Tensor, x: torch.Tensor, g: torch.Tensor, r: torch.Tensor, eps: float, norm: bool,
           glu: bool, residual: bool) -> torch.Tensor:
        n, k = w.shape[0] // (2 if glu else 1), w.shape[1]
        y = torch.empty(n, device=x.device, dtype=x.dtype)
        _triton.gemv[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)](
            w, x, g, r, y, n, k, eps, NORM=norm, GLU=glu, RESIDUAL=residual)
        return y

    @op.register_fake
    def _(w: torch.Tensor, x: torch.Tensor, g: torch.Tensor, r: torch.Tensor, eps: float, norm: bool,
          glu: bool, residual: bool) -> torch.Tensor:
        return x.new_empty(w.shape[0] // (2 if glu else 1))

    @torch.library.custom_op("ominix::attend", mutates_args=("k_cache", "v_cache"))
    def attend_op(qkv: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cos: torch.Tensor,
                  sin: torch.Tensor, pos: torch.Tensor, heads: int) -> torch.Tensor:
        _, kv_heads, max_len, dim = k_cache.shape
        out = torch.empty(heads * dim, device=qkv.device, dtype=qkv.dtype)
        _triton.attend[(heads,)](qkv, k_cache, v_cache, cos, sin, pos, out, max_len, dim**-0.5,
                                 KV_HEADS=kv_heads, GROUPS=heads // kv_heads, DIM=dim, BLOCK_T=64, num_warps=4)
        return out

    @attend_op.register_fake
    def _(qkv: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cos: torch.Tensor,
          sin: torch.Tensor, pos: torch.Tensor, heads: int) -> torch.Tensor:
        return qkv.new_empty(heads * k_cache.shape[-1])


def gemv(w: torch.Tensor, x: torch.Tensor, norm: tuple[torch.Tensor, float] | None = None,
         residual: torch.Tensor | None = None, glu: bool = False) -> torch.Tensor:
    """``w @ f(x) (+ residual)`` for ``w`` [N, K] and a vector ``x``, in ``x``'s dtype, where f is
    RMSNorm with ``norm`` = (weight, eps), or nothing. ``glu``: ``w`` is [gate; up], 2N x K, and
    the result is SwiGLU of the two products, ``silu(gate @ f(x)) * (up @ f(x))``."""
    w, x = w.contiguous(), x.reshape(-1).contiguous()
    g, eps = norm if norm is not None else (x, 0.0)
    r = residual.reshape(-1).contiguous() if residual is not None else x
    if not torch.compiler.is_compiling():
        register()
    return torch.ops.ominix.gemv(w, x, g, r, float(eps), norm is not None, glu, residual is not None)


def attend(qkv: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cos: torch.Tensor,
           sin: torch.Tensor, pos: torch.Tensor, heads: int) -> torch.Tensor:
    """Attention output [heads * head_dim] of one new token at position ``pos`` (a 1-element
    tensor) from its fused q/k/v projection ``qkv``; writes its rotated key and its value into
    ``k_cache``/``v_cache`` [1, kv_heads, max_len, head_dim] at ``pos``. ``cos``/``sin``: the
    rotary tables [max_len, head_dim]."""
    if not torch.compiler.is_compiling():
        register()
    return torch.ops.ominix.attend(qkv.reshape(-1).contiguous(), k_cache, v_cache, cos, sin, pos, heads)
