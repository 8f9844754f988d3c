"""The LLaMA decoder: RMSNorm, rotary embeddings (Hugging Face layout), SwiGLU, grouped-query attention.

Parameter names are exactly those of ``transformers.LlamaForCausalLM``, so a state dict moves between
the two unchanged (``tests/test_model.py`` proves logits parity). Attention runs through flash-attn
when it is installed and chosen, else ``torch.nn.functional.scaled_dot_product_attention`` (whose CUDA
flash backend is FlashAttention-2).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ominix.config import ModelConfig

log = logging.getLogger(__name__)


def flash_attn_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def resolve_attn(choice: str) -> str:
    """Map ``model.attn`` (auto|flash|sdpa) to the kernel actually used."""
    if choice == "sdpa" or (choice == "auto" and not flash_attn_available()):
        return "sdpa"
    if not flash_attn_available():
        from ominix.errors import OminixError

        raise OminixError(
            "model.attn=flash but flash-attn is not installed (or no CUDA device)",
            "pip install flash-attn, or use --set model.attn=sdpa",
        )
    return "flash"


@dataclass
class CausalLMOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor | None


class KVCache:
    """Preallocated per-layer key/value tensors for incremental decoding."""

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device, dtype) -> None:
        shape = (batch, cfg.kv_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_hidden_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_hidden_layers)]
        self.max_len = max_len
        self.pos = 0  # tokens already cached

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.pos + k.shape[2]
        self.k[layer][:, :, self.pos : end] = k
        self.v[layer][:, :, self.pos : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class RotaryEmbedding(nn.Module):
    """cos/sin tables in the HF layout (the two halves of each head hold the same frequencies)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dim = cfg.head_dim
        self.base = cfg.rope_theta
        self.register_buffer("inv_freq", self._inv_freq(), persistent=False)

    def _inv_freq(self, device=None) -> torch.Tensor:
        steps = torch.arange(0, self.dim, 2, dtype=torch.int64, device=device).float()
        return 1.0 / (self.base ** (steps / self.dim))

    def reset_parameters(self) -> None:
        """Recompute the buffer (after ``to_empty`` from the meta device)."""
        self.inv_freq = self._inv_freq(self.inv_freq.device)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[:, :, None].float() * self.inv_freq[None, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [batch, heads, seq, head_dim]; cos/sin: [batch, seq, head_dim]."""
    cos, sin = cos[:, None], sin[:, None]
    return x * cos + rotate_half(x) * sin


class LlamaAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int, attn: str) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.heads, self.kv_heads, self.head_dim = cfg.num_attention_heads, cfg.kv_heads, cfg.head_dim
        self.attn = attn
        h = cfg.hidden_size
        self.q_proj = nn.Linear(h, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(h, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(h, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, h, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            past = cache.pos
            k, v = cache.update(self.layer_idx, k, v)
            out = self._sdpa_cached(q, k, v, past)
        elif self.attn == "flash":
            from flash_attn import flash_attn_func

            out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)
            return self.o_proj(out.reshape(b, t, -1))
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.kv_heads != self.heads)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))

    def _sdpa_cached(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past: int) -> torch.Tensor:
        gqa = self.kv_heads != self.heads
        t = q.shape[2]
        if past == 0:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        if t == 1:  # one new token sees every cached position
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
        total = k.shape[2]
        mask = torch.ones(t, total, dtype=torch.bool, device=q.device).tril(diagonal=past)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


class LlamaMLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int, attn: str) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(cfg, layer_idx, attn)
        self.mlp = LlamaMLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelConfig, attn: str) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(cfg, i, attn) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(cfg)
        self.gradient_checkpointing = cfg.gradient_checkpointing

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        if position_ids is None:
            start = cache.pos if cache is not None else 0
            position_ids = torch.arange(start, start + input_ids.shape[1], device=input_ids.device)[None]
        cos, sin = self.rotary_emb(position_ids, x.dtype)
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and cache is None:
                x = checkpoint(layer, x, cos, sin, use_reentrant=False)
            else:
                x = layer(x, cos, sin, cache)
        if cache is not None:
            cache.pos += input_ids.shape[1]
        return self.norm(x)


class LlamaForCausalLM(nn.Module):
    """LLaMA decoder with a language-model head.

    ``labels`` are the targets of each position, already shifted (``labels[:, i]`` is the token
    that follows ``input_ids[:, i]``); -100 is ignored. With labels, ``forward`` returns the mean
    cross-entropy and no logits, so training never keeps the full logits around.
    """

    def __init__(self, cfg: ModelConfig, attn: str | None = None) -> None:
        """``attn`` overrides ``cfg.attn`` (inference on a machine without flash-attn, say)."""
        super().__init__()
        self.config = cfg
        self.attn = resolve_attn(attn or cfg.attn)
        self.model = LlamaModel(cfg, self.attn)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: KVCache | None = None) -> CausalLMOutput:
        h = self.model(input_ids, position_ids, cache)
        if labels is None:
            return CausalLMOutput(loss=None, logits=self.lm_head(h))
        logits = self.lm_head(h).float()
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=None)


def init_weights(model: LlamaForCausalLM) -> None:
    """Normal(0, initializer_range) for linear and embedding weights, ones for norms.

    The output projections of each block get the GPT-2 depth scaling 1/sqrt(2 * layers) so the
    residual stream does not grow with depth.
    """
    cfg = model.config
    std = cfg.initializer_range
    depth_std = std / math.sqrt(2 * cfg.num_hidden_layers)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                s = depth_std if name.endswith(("o_proj", "down_proj")) else std
                module.weight.normal_(0.0, s)
            elif isinstance(module, RMSNorm):
                module.weight.fill_(1.0)
            elif isinstance(module, RotaryEmbedding):
                module.reset_parameters()


def build_model(cfg: ModelConfig, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                seed: int | None = None, attn: str | None = None) -> LlamaForCausalLM:
    """Build and initialise on ``device`` without materialising the weights elsewhere first."""
    if seed is not None:
        torch.manual_seed(seed)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg, attn)
    model.to_empty(device=device)
    if cfg.tie_word_embeddings:  # to_empty gives each module its own tensor: tie them again
        model.lm_head.weight = model.model.embed_tokens.weight
    init_weights(model)
    log.info("attention kernel: %s", model.attn)
    return model.to(dtype)


def hf_config(cfg: ModelConfig, **extra):
    """The ``transformers.LlamaConfig`` of the same shape (``extra``: bos/eos ids, torch_dtype...)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_theta=cfg.rope_theta,
        rms_norm_eps=cfg.rms_norm_eps,
        tie_word_embeddings=cfg.tie_word_embeddings,
        initializer_range=cfg.initializer_range,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        **extra,
    )
