"""The Triton kernels behind ``ominix.infer.kernels`` (imported on first use: Triton is slow to
import, and absent on machines without it)."""

import inspect
import os

import triton
import triton.language as tl

if os.environ.get("TRITON_INTERPRET") == "1":  # the interpreter times nothing: one shape of each
    CONFIGS = [triton.Config({"BLOCK_N": 4, "BLOCK_K": 64})]
else:
    CONFIGS = [
        triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
        for n, k, w in [(1, 1024, 4), (1, 2048, 8), (2, 512, 4), (2, 1024, 4), (4, 256, 4), (4, 512, 4),
                        (4, 1024, 8), (8, 256, 4), (8, 512, 8), (16, 128, 4), (16, 256, 8), (32, 128, 8)]
        for s in (2, 4)
    ]


# cache_results: the choice per shape is kept in Triton's cache directory (~/.triton/cache), so
# later runs of `ominix infer` reuse it instead of timing every shape again (Triton >= 3.2)
CACHE = {"cache_results": True} if "cache_results" in inspect.signature(triton.autotune).parameters else {}


@triton.autotune(configs=CONFIGS, key=["N", "K", "NORM", "GLU", "RESIDUAL"], **CACHE)
@triton.jit
def gemv(w_ptr, x_ptr, g_ptr, r_ptr, y_ptr, N, K, eps, NORM: tl.constexpr, GLU: tl.constexpr,
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
    if GLU:  # the up projection's rows sit N rows below the gate's
        acc_up = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for start in range(0, K, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + cols, mask=cols < K, other=0.0).to(tl.float32)
        if NORM:  # rounded where the model's RMSNorm rounds: after normalising, after the weight
            x = (x * scale).to(dtype).to(tl.float32)
            x = (tl.load(g_ptr + cols, mask=cols < K, other=0.0).to(tl.float32) * x).to(dtype).to(tl.float32)
        mask = (rows[:, None] < N) & (cols[None, :] < K)
        offsets = rows[:, None] * K + cols[None, :]
        w = tl.load(w_ptr + offsets, mask=mask, other=0.0, eviction_policy="evict_first")
        acc += w.to(tl.float32) * x[None, :]
        if GLU:
            w_up = tl.load(w_ptr + N * K + offsets, mask=mask, other=0.0, eviction_policy="evict_first")
            acc_up += w_up.to(tl.float32) * x[None, :]
    y = tl.sum(acc, axis=1)
    if GLU:  # SwiGLU, rounded as the model rounds: each product, silu(gate), then silu(gate) * up
        gate = y.to(dtype).to(tl.float32)
        up = tl.sum(acc_up, axis=1).to(dtype).to(tl.float32)
        y = (gate * tl.sigmoid(gate)).to(dtype).to(tl.float32) * up
    if RESIDUAL:  # the product is rounded before the residual add, as in the model
        y = y.to(dtype).to(tl.float32) + tl.load(r_ptr + rows, mask=rows < N, other=0.0).to(tl.float32)
    tl.store(y_ptr + rows, y.to(dtype), mask=rows < N)


@triton.jit
def rotary(ptr, d, partner, sign, cos, sin, dtype):
    """One head's vector at ``ptr`` rotated as the model's ``apply_rotary`` rounds it."""
    x = tl.load(ptr + d).to(tl.float32)
    turned = tl.load(ptr + partner).to(tl.float32) * sign  # rotate_half: (-x2, x1)
    return ((x * cos).to(dtype).to(tl.float32) + (turned * sin).to(dtype).to(tl.float32)).to(dtype)


@triton.jit
def attend(qkv_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, pos_ptr, out_ptr, max_len, scale,
           KV_HEADS: tl.constexpr, GROUPS: tl.constexpr, DIM: tl.constexpr, BLOCK_T: tl.constexpr):
    head = tl.program_id(0)  # a query head; heads are grouped onto k/v heads as in repeat_kv
    kv = head // GROUPS
    dtype = qkv_ptr.dtype.element_ty
    pos = tl.load(pos_ptr)
    d = tl.arange(0, DIM)
    partner = (d + DIM // 2) % DIM
    sign = tl.where(d < DIM // 2, -1.0, 1.0)
    cos = tl.load(cos_ptr + pos * DIM + d).to(tl.float32)
    sin = tl.load(sin_ptr + pos * DIM + d).to(tl.float32)
    q = rotary(qkv_ptr + head * DIM, d, partner, sign, cos, sin, dtype).to(tl.float32)
    k_new = rotary(qkv_ptr + (KV_HEADS * GROUPS + kv) * DIM, d, partner, sign, cos, sin, dtype)
    v_new = tl.load(qkv_ptr + (KV_HEADS * GROUPS + KV_HEADS + kv) * DIM + d)
    rows = kv * max_len * DIM
    first = d < tl.where(head % GROUPS == 0, DIM, 0)  # one query head per k/v head writes the cache
    tl.store(k_ptr + rows + pos * DIM + d, k_new, mask=first)
    tl.store(v_ptr + rows + pos * DIM + d, v_new, mask=first)
    # the new position from registers (other programs may not have written it yet), then the
    # cached ones before it, with an online softmax
    top = tl.sum(q * k_new.to(tl.float32), axis=0) * scale
    total = tl.full([], 1.0, tl.float32)
    acc = v_new.to(tl.float32)
    for start in range(0, pos, BLOCK_T):
        t = start + tl.arange(0, BLOCK_T)
        seen = t < pos
        offsets = rows + t[:, None] * DIM + d[None, :]
        keys = tl.load(k_ptr + offsets, mask=seen[:, None], other=0.0).to(tl.float32)
        scores = tl.where(seen, tl.sum(keys * q[None, :], axis=1) * scale, float("-inf"))
        new_top = tl.maximum(top, tl.max(scores, axis=0))
        shrink = tl.exp(top - new_top)
        p = tl.exp(scores - new_top)
        values = tl.load(v_ptr + offsets, mask=seen[:, None], other=0.0).to(tl.float32)
        acc = acc * shrink + tl.sum(p[:, None] * values, axis=0)
        total = total * shrink + tl.sum(p, axis=0)
        top = new_top
    tl.store(out_ptr + head * DIM + d, (acc / total).to(dtype))
