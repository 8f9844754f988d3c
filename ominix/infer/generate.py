"""Token generation with a preallocated (static) KV cache.

The prompt runs through the model's own forward, which fills the cache. Each new token then runs
through ``StaticDecoder.step``: the same modules, but every shape is fixed (the cache is read over its
full length under a mask of the filled positions, and the position is a tensor), so on a GPU the
step is compiled with ``torch.compile`` and captured once in a CUDA graph. A decode step is then one
graph replay instead of hundreds of kernel launches, which is what batch-1 decoding is bound by.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ominix.model import KVCache, LlamaForCausalLM, apply_rotary


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


class StaticDecoder:
    """Batch-1 decoding over a KV cache of ``max_len`` positions, with fixed-shape decode steps."""

    def __init__(self, model: LlamaForCausalLM, max_len: int, compile: bool = False,
                 cuda_graph: bool = False) -> None:
        self.model = model
        cfg = model.config
        self.max_len = max_len
        param = model.lm_head.weight
        self.device, self.dtype = param.device, param.dtype
        self.cache = KVCache(cfg, 1, max_len, self.device, self.dtype)
        self.groups = cfg.num_attention_heads // cfg.kv_heads
        positions = torch.arange(max_len, device=self.device)
        self.positions = positions
        self.cos, self.sin = (t[0] for t in model.model.rotary_emb(positions[None], self.dtype))
        self._token = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        self._pos = torch.zeros(1, dtype=torch.long, device=self.device)
        self._step = torch.compile(self._decode, fullgraph=True, dynamic=False) if compile else self._decode
        self._graph: torch.cuda.CUDAGraph | None = None
        self._logits: torch.Tensor | None = None
        self.use_graph = cuda_graph and self.device.type == "cuda"

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """Run the prompt ``ids`` [1, T] from an empty cache; returns the last position's logits."""
        self.cache.pos = 0
        logits = self.model(ids.to(self.device), cache=self.cache).logits
        return logits[:, -1].float()

    @torch.no_grad()
    def step(self, token: int, pos: int) -> torch.Tensor:
        """Logits [1, vocab] after feeding ``token`` at position ``pos`` (cache holds 0..pos-1)."""
        self._token.fill_(token)
        self._pos.fill_(pos)
        if not self.use_graph:
            return self._step(self._token, self._pos).float()
        if self._graph is None:
            self._capture()
        self._graph.replay()
        return self._logits.float()

    def _capture(self) -> None:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm up (and compile) outside the graph
            for _ in range(3):
                self._step(self._token, self._pos)
        torch.cuda.current_stream().wait_stream(stream)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._logits = self._step(self._token, self._pos)

    def _decode(self, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        body = self.model.model
        x = body.embed_tokens(token)
        cos, sin = self.cos.index_select(0, pos)[None], self.sin.index_select(0, pos)[None]
        visible = (self.positions <= pos)[None, None, None, :]  # [1, 1, 1, max_len]
        for i, layer in enumerate(body.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(1, 1, attn.heads, attn.head_dim).transpose(1, 2)
            k = attn.k_proj(h).view(1, 1, attn.kv_heads, attn.head_dim).transpose(1, 2)
            v = attn.v_proj(h).view(1, 1, attn.kv_heads, attn.head_dim).transpose(1, 2)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
            self.cache.k[i].index_copy_(2, pos, k)
            self.cache.v[i].index_copy_(2, pos, v)
            # grouped-query attention without copying k/v: the query heads sharing one k/v head
            # become that head's "query positions" (heads are grouped as transformers' repeat_kv)
            q = q.reshape(1, attn.kv_heads, self.groups, attn.head_dim)
            out = F.scaled_dot_product_attention(q, self.cache.k[i], self.cache.v[i], attn_mask=visible)
            x = x + attn.o_proj(out.reshape(1, 1, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.model.lm_head(body.norm(x))[:, -1]


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
    tokens: list[int] = []
    for i in range(budget):
        token = pick(logits, seen, sampling, generator)
        tokens.append(token)
        seen[0, token] = True
        if on_token is not None:
            on_token(token)
        if token == eos_id:
            return Generation(tokens, "eos")
        if i + 1 < budget:
            logits = decoder.step(token, len(prompt) + i)
    return Generation(tokens, "length")
