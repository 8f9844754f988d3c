"""Token generation with a preallocated (static) KV cache.

The prompt runs through the model's own forward, which fills the cache. Each new token then runs
through ``StaticDecoder.step``: the same modules, but every shape is fixed (the cache is read over its
full length under a mask of the filled positions, and the position is a tensor), so on a GPU the
step is compiled with ``torch.compile`` and captured once in a CUDA graph. A decode step is then one
graph replay instead of hundreds of kernel launches, which is what batch-1 decoding is bound by.

With ``prefill_graphs`` the prompt's forward is a CUDA graph too: the prompt is padded to a power of
two (``prefill_size``) and one graph per size is captured on first use. Padding is exact: attention is
causal, so the real positions never see the pads, and decoding writes each cache row it reads before
reading it (the pads' rows are past the position being decoded).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ominix.errors import OminixError
from ominix.infer import kernels as triton_kernels
from ominix.model import KVCache, LlamaForCausalLM
from ominix.ops import apply_rotary
from ominix.ops import swiglu as model_swiglu


@dataclass
class Sampling:
    """How the next token is picked; ``temperature == 0`` is greedy (argmax)."""

    max_new_tokens: int = 128
    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


PREFILL_MIN = 16  # the smallest padded prompt of a prefill graph


def prefill_size(length: int, max_len: int) -> int:
    """The padded length of a ``length``-token prompt's prefill graph: the next power of two (at least
    ``PREFILL_MIN``), never past the cache."""
    return min(max(PREFILL_MIN, 1 << (length - 1).bit_length()), max_len)


# Inductor options for the compiled decode step. With coordinate-descent tuning on, Inductor also
# rewrites each batch-1 matrix-vector product as a multiply-and-sum that it generates and tunes
# itself (instead of a cuBLAS call), so the norms before it and the residual add after it fuse in.
INDUCTOR: dict = {"coordinate_descent_tuning": True}


class StaticDecoder:
    """Batch-1 decoding over a KV cache of ``max_len`` positions, with fixed-shape decode steps.

    The q/k/v and gate/up projections of each layer are fused into one matrix each (one
    matrix-vector product instead of several small ones); the model's own weights become views into
    those matrices, so the model keeps working and no memory is added. Use it on inference models.

    Each step also takes the argmax and advances its own token and position buffers, so greedy
    decoding can replay the CUDA graph back to back (``greedy``) without waiting for the host.
    """

    def __init__(self, model: LlamaForCausalLM, max_len: int, compile: bool = False,
                 cuda_graph: bool = False, attention: str | None = None,
                 inductor: dict | None = None, kernels: bool = False, prefill_graphs: bool = False) -> None:
        """``attention``: "sdpa" (torch's kernel) or "dot" (plain products and sums, which the
        compiler fuses: faster on a GPU when compiled); None picks "dot" when ``compile``.
        ``inductor``: options for the compiler (default ``INDUCTOR``). ``kernels``: the layers run
        as OminiX's Triton kernels (``ominix.infer.kernels``: products with their norms, SwiGLU and
        residual adds, and attention with rotary and cache writes); ``attention`` is then unused.
        ``prefill_graphs``: run the prompt as a CUDA graph of its padded length (with ``cuda_graph``)."""
        if kernels:
            if not triton_kernels.available(model.lm_head.weight.device):
                raise OminixError("the decode kernels need Triton and a CUDA device", "leave them off")
            if not triton_kernels.supports(model.config.head_dim):
                raise OminixError(f"the decode kernels take power-of-two head sizes, this model's is "
                                  f"{model.config.head_dim}", "leave them off (--no-kernels)")
            triton_kernels.register()
        self.kernels = kernels
        self.model = model
        self.attention = attention or ("dot" if compile else "sdpa")
        cfg = model.config
        self.max_len = max_len
        param = model.lm_head.weight
        self.device, self.dtype = param.device, param.dtype
        self.cache = KVCache(cfg, 1, max_len, self.device, self.dtype)
        self.groups = cfg.num_attention_heads // cfg.kv_heads
        self.positions = torch.arange(max_len, device=self.device)
        self.cos, self.sin = (t[0] for t in model.model.rotary_emb(self.positions[None], self.dtype))
        self.qkv, self.gate_up = [], []
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.qkv.append(_fuse(attn.q_proj, attn.k_proj, attn.v_proj))
            self.gate_up.append(_fuse(mlp.gate_proj, mlp.up_proj))
        self._token = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        self._pos = torch.zeros(1, dtype=torch.long, device=self.device)
        options = INDUCTOR if inductor is None else inductor
        self._step = (torch.compile(self._decode, fullgraph=True, dynamic=False, options=options)
                      if compile else self._decode)
        self._graph: torch.cuda.CUDAGraph | None = None
        # padded prompt length -> (graph, its token ids, index of the last real position, its logits)
        self._prefills: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        if cuda_graph and self.device.type == "cuda":
            self._capture()  # before any prefill: the warm-up steps write cache rows the prompt overwrites
        self.prefill_graphs = prefill_graphs and self._graph is not None

    @property
    def use_graph(self) -> bool:
        return self._graph is not None

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """Run the prompt ``ids`` [1, T] from an empty cache; returns the last position's logits."""
        self.cache.pos = 0
        if not self.prefill_graphs:
            logits = self.model(ids.to(self.device), cache=self.cache).logits
            return logits[:, -1].float()
        t = ids.shape[1]
        graph, tokens, last, logits = self.prefill_graph(t)
        tokens.zero_()
        tokens[:, :t].copy_(ids)
        last.fill_(t - 1)
        graph.replay()
        self.cache.pos = t
        return logits.to(torch.float32, copy=True)  # the graph's buffer is reused by the next replay

    def prefill_graph(self, length: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The prefill graph that takes a ``length``-token prompt, captured on first use (callers may
        capture ahead of time: two eager forwards and the capture)."""
        size = prefill_size(length, self.max_len)
        if size not in self._prefills:
            tokens = torch.zeros(1, size, dtype=torch.long, device=self.device)
            last = torch.zeros(1, dtype=torch.long, device=self.device)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream), torch.no_grad():  # warm up outside the graph
                for _ in range(2):
                    self._prompt_logits(tokens, last)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), torch.no_grad():
                logits = self._prompt_logits(tokens, last)
            self._prefills[size] = (graph, tokens, last, logits)
        return self._prefills[size]

    def _prompt_logits(self, tokens: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """The prompt ``tokens`` from an empty cache; logits [1, vocab] at position ``last`` alone."""
        self.cache.pos = 0
        hidden = self.model.model(tokens, cache=self.cache)
        return self.model.lm_head(hidden.index_select(1, last))[:, 0]

    @torch.no_grad()
    def step(self, token: int, pos: int) -> torch.Tensor:
        """Logits [1, vocab] after feeding ``token`` at position ``pos`` (cache holds 0..pos-1)."""
        self._token.fill_(token)
        self._pos.fill_(pos)
        if self._graph is None:
            return self._step(self._token, self._pos)[0].float()
        self._graph.replay()
        return self._out[0].to(torch.float32, copy=True)  # the graph's buffer is reused by the next replay

    @torch.no_grad()
    def greedy(self, token: int, pos: int, count: int, ahead: int = 2) -> Iterator[int]:
        """Yield ``count`` greedy tokens following ``token`` at ``pos``, keeping ``ahead`` graph
        replays queued in front of the host (a caller that stops early wasted at most that many)."""
        self._token.fill_(token)
        self._pos.fill_(pos)
        host = torch.empty(count, dtype=torch.long, pin_memory=True)
        done = []
        for i in range(count + ahead):
            if i < count:
                self._graph.replay()
                host[i : i + 1].copy_(self._out[1], non_blocking=True)
                done.append(torch.cuda.Event())
                done[-1].record()
            if i >= ahead:
                done[i - ahead].synchronize()
                yield int(host[i - ahead])

    def _capture(self) -> None:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad():  # warm up (and compile) outside the graph
            for _ in range(3):
                self._pos.zero_()
                self._step(self._token, self._pos)
        torch.cuda.current_stream().wait_stream(stream)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph), torch.no_grad():
            self._out = self._step(self._token, self._pos)

    def _decode(self, token: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        body = self.model.model
        x = body.embed_tokens(token)
        cos, sin = self.cos.index_select(0, pos)[None], self.sin.index_select(0, pos)[None]
        visible = (self.positions <= pos)[None, None, None, :]  # [1, 1, 1, max_len]
        for i, layer in enumerate(body.layers):
            qkv = self._normed_product(layer.input_layernorm, self.qkv[i], x)
            out = self._attention(i, layer.self_attn, qkv, pos, cos, sin, visible)
            x = self._added_product(layer.self_attn.o_proj.weight, out, x)
            act = self._gated_product(layer.post_attention_layernorm, self.gate_up[i], x)
            x = self._added_product(layer.mlp.down_proj.weight, act, x)
        logits = self.model.lm_head(body.norm(x))[:, -1]
        following = logits.argmax(-1)
        self._token.copy_(following.view(1, 1))
        self._pos.add_(1)
        return logits, following

    def _attention(self, i: int, attn: torch.nn.Module, qkv: torch.Tensor, pos: torch.Tensor, cos: torch.Tensor,
                   sin: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """Layer ``i``'s attention output [1, 1, heads * head_dim] for the new token; its key and
        value go into the cache at ``pos``."""
        heads, kv_heads, dim = attn.heads, attn.kv_heads, attn.head_dim
        k_cache, v_cache = self.cache.k[i], self.cache.v[i]
        if self.kernels:
            return triton_kernels.attend(qkv, k_cache, v_cache, self.cos, self.sin, pos, heads).view(1, 1, -1)
        q, k, v = qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)
        q = q.view(1, 1, heads, dim).transpose(1, 2)
        k = k.view(1, 1, kv_heads, dim).transpose(1, 2)
        v = v.view(1, 1, kv_heads, dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        k_cache.index_copy_(2, pos, k)
        v_cache.index_copy_(2, pos, v)
        # grouped-query attention without copying k/v: the query heads sharing one k/v head
        # become that head's "query positions" (heads are grouped as transformers' repeat_kv)
        q = q.reshape(1, kv_heads, self.groups, dim)
        return self._attend(q, k_cache, v_cache, visible).reshape(1, 1, -1)

    def _normed_product(self, norm: torch.nn.Module, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``norm(x) @ weight.T`` for ``x`` [1, 1, K]."""
        if self.kernels:
            return triton_kernels.gemv(weight, x, norm=(norm.weight, norm.eps)).view(1, 1, -1)
        return F.linear(norm(x), weight)

    def _gated_product(self, norm: torch.nn.Module, gate_up: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """SwiGLU of ``norm(x)``'s products with the fused [gate; up] weight."""
        if self.kernels:
            return triton_kernels.gemv(gate_up, x, norm=(norm.weight, norm.eps), glu=True).view(1, 1, -1)
        return model_swiglu(*self._normed_product(norm, gate_up, x).chunk(2, dim=-1))

    def _added_product(self, weight: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``x + y @ weight.T``."""
        if self.kernels:
            return triton_kernels.gemv(weight, y, residual=x).view(1, 1, -1)
        return x + F.linear(y, weight)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        if self.attention == "sdpa":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=visible)
        # "dot": on an H200 (1.1B, bf16, compiled) 1.25 ms per token against 1.37 ms with SDPA
        scores = (q[:, :, :, None, :] * k[:, :, None]).float().sum(-1) * q.shape[-1] ** -0.5
        probs = scores.masked_fill(~visible, float("-inf")).softmax(-1)
        return (probs[..., None] * v[:, :, None].float()).sum(-2).to(q.dtype)


def _fuse(*linears: torch.nn.Linear) -> torch.Tensor:
    """One weight for several linears over the same input (one matrix-vector product instead of
    several small ones); each linear's weight becomes a view into it, so no memory is added."""
    fused = torch.cat([lin.weight.detach() for lin in linears])
    start = 0
    for lin in linears:
        rows = lin.weight.shape[0]
        lin.weight = torch.nn.Parameter(fused[start : start + rows], requires_grad=False)
        start += rows
    return fused


def pick(logits: torch.Tensor, seen: torch.Tensor, s: Sampling, generator: torch.Generator) -> int:
    """The next token from ``logits`` [1, vocab] (float32), in transformers' processor order:
    repetition penalty, temperature, top-k, top-p, then a draw (or argmax at temperature 0)."""
    if s.repetition_penalty != 1.0:
        penalised = torch.where(logits < 0, logits * s.repetition_penalty, logits / s.repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if s.temperature == 0:
        return int(logits.argmax(-1))
    logits = logits / s.temperature
    if s.top_k:
        kth = torch.topk(logits, min(s.top_k, logits.shape[-1])).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1.0:
        ordered, order = torch.sort(logits, descending=False)
        cumulative = ordered.softmax(-1).cumsum(-1)
        drop = cumulative <= 1 - s.top_p
        drop[..., -1:] = False  # always keep the most likely token
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = logits.softmax(-1)
    return int(torch.multinomial(probs, 1, generator=generator))


@dataclass
class Generation:
    tokens: list[int]
    finish_reason: str  # "eos" or "length"


def generate(decoder: StaticDecoder, prompt: list[int], sampling: Sampling, eos_id: int | None = None,
             on_token: Callable[[int], None] | None = None) -> Generation:
    """Generate up to ``sampling.max_new_tokens`` after ``prompt`` (stops early at ``eos_id`` or
    at the end of the cache); ``on_token`` is called with each new token as soon as it is chosen."""
    device = decoder.device
    budget = min(sampling.max_new_tokens, decoder.max_len - len(prompt))
    generator = torch.Generator(device=device).manual_seed(sampling.seed)
    vocab = decoder.model.config.vocab_size
    seen = torch.zeros(1, vocab, dtype=torch.bool, device=device)
    ids = torch.tensor([prompt], dtype=torch.long)
    seen[0, ids[0].to(device)] = True
    logits = decoder.prefill(ids)
    fast = decoder.use_graph and sampling.temperature == 0 and sampling.repetition_penalty == 1.0
    following: Iterator[int] | None = None
    tokens: list[int] = []
    for i in range(budget):
        token = pick(logits, seen, sampling, generator) if following is None else next(following)
        tokens.append(token)
        if sampling.repetition_penalty != 1.0:
            seen[0, token] = True
        if on_token is not None:
            on_token(token)
        if token == eos_id:
            return Generation(tokens, "eos")
        if following is not None or i + 1 == budget:
            continue
        if fast:  # the rest runs as back-to-back graph replays
            following = decoder.greedy(token, len(prompt), budget - 1)
        else:
            logits = decoder.step(token, len(prompt) + i)
    return Generation(tokens, "length")
