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

from ominix import compiled, float8
from ominix.config import ModelConfig
from ominix.ops import apply_rotary_qk, rms_normalize, swiglu
from ominix.recompute import run_checkpointed

log = logging.getLogger(__name__)


def flash_attn_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def resolve_attn(choice: str) -> str:
    """Map ``model.attn`` (auto|flash|sdpa|cudnn) to the kernel actually used."""
    if choice == "sdpa" or (choice == "auto" and not flash_attn_available()):
        return "sdpa"
    if choice == "cudnn":
        return "cudnn" if torch.cuda.is_available() else "sdpa"
    if not flash_attn_available():
        from ominix.errors import OminixError
        from ominix.extras import install_hint

        raise OminixError(
            "model.attn=flash but flash-attn is not installed (or no CUDA device)",
            f"{install_hint('flash')}, or use --set model.attn=sdpa",
        )
    return "flash"


def describe_attn(choice: str) -> str:
    """The kernel ``model.attn`` resolves to on this machine, and why, for a plan or log line."""
    kernel = resolve_attn(choice)
    if choice != "auto":
        return kernel
    if kernel == "flash":
        return "flash-attn (auto)"
    return "sdpa (auto: no flash-attn installed here; SDPA runs its flash kernel on CUDA)"


@dataclass
class CausalLMOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor | None
    token_loss: torch.Tensor | None = None  # [batch, seq] float32, with labels and no grad (evaluation)


class KVCache:
    """Preallocated per-layer key/value tensors for incremental decoding."""

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device, dtype) -> None:
        shape = (batch, cfg.kv_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_hidden_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_hidden_layers)]
        self.pos = 0  # tokens already cached

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.pos + k.shape[2]
        self.k[layer][:, :, self.pos : end] = k
        self.v[layer][:, :, self.pos : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class ParameterFreeOps:
    """The parameter-free pieces of a decoder layer, shared by all its modules. ``compile_ops``
    swaps them for ``torch.compile``d versions: fused kernels that never see a parameter, so they
    work under plugins whose parameters run hooks on every op (Gemini)."""

    def __init__(self) -> None:
        self.rms = rms_normalize
        self.rotary = apply_rotary_qk
        self.swiglu = swiglu


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, ops: ParameterFreeOps | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.ops = ops or ParameterFreeOps()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * self.ops.rms(x, self.eps)


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


class LlamaAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int, attn: str, ops: ParameterFreeOps) -> None:
        super().__init__()
        self.ops = ops
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
        q, k = self.ops.rotary(q, k, cos, sin)
        if cache is not None:
            past = cache.pos
            k, v = cache.update(self.layer_idx, k, v)
            out = self._sdpa_cached(q, k, v, past)
        elif self.attn == "flash":
            from flash_attn import flash_attn_func

            out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)
            return self.o_proj(out.reshape(b, t, -1))
        elif self.attn == "cudnn":
            out = _cudnn_attention(q, k, v)
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


def _cudnn_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal SDPA pinned to the cuDNN backend (fastest on Hopper); it takes no GQA, so expand k/v."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION]):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


class LlamaMLP(nn.Module):
    def __init__(self, cfg: ModelConfig, ops: ParameterFreeOps) -> None:
        super().__init__()
        self.ops = ops
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.ops.swiglu(self.gate_proj(x), self.up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int, attn: str, ops: ParameterFreeOps) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(cfg, layer_idx, attn, ops)
        self.mlp = LlamaMLP(cfg, ops)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, ops)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, ops)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelConfig, attn: str, ops: ParameterFreeOps) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(cfg, i, attn, ops) for i in range(cfg.num_hidden_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, ops)
        self.rotary_emb = RotaryEmbedding(cfg)
        self.recompute_activations = cfg.recompute_activations
        self.recompute_policy = cfg.recompute_policy
        self.run_layer = None  # compile_hooked_layers: run_layer(layer, x, cos, sin), one compiled region

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        if position_ids is None:
            start = cache.pos if cache is not None else 0
            position_ids = torch.arange(start, start + input_ids.shape[1], device=input_ids.device)[None]
        cos, sin = self.rotary_emb(position_ids, x.dtype)
        region = self.run_layer if cache is None else None
        for layer in self.layers:
            fn, args = (region, (layer, x, cos, sin)) if region else (layer, (x, cos, sin, cache))
            if self.recompute_activations and self.training and cache is None:
                x = run_checkpointed(fn, *args, policy=self.recompute_policy)
            else:
                x = fn(*args)
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
        self.ops = ParameterFreeOps()
        self.fp8 = "off"  # build_model: the FP8 recipe of the decoder layers (ominix.float8)
        self.model = LlamaModel(cfg, self.attn, self.ops)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
            # NOTE: one tensor under two names: a state dict holds it once, as Hugging Face saves
            # it (safetensors refuses shared tensors), and loading reads the head from the embedding
            self.register_state_dict_post_hook(drop_tied_head)
            self.register_load_state_dict_pre_hook(_fill_tied_head)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: KVCache | None = None) -> CausalLMOutput:
        h = self.model(input_ids, position_ids, cache)
        if labels is None:
            return CausalLMOutput(loss=None, logits=self.lm_head(h))
        h, labels = h.reshape(-1, h.shape[-1]), labels.reshape(-1)
        chunk = self.config.loss_chunk
        if not torch.is_grad_enabled():  # evaluation: per-token losses, one chunk's logits at a time
            tokens = chunked_token_loss(h, self.lm_head.weight, labels, chunk or h.shape[0])
            loss = tokens.sum() / (labels != -100).sum().clamp(min=1)
            return CausalLMOutput(loss=loss, logits=None, token_loss=tokens.view(input_ids.shape))
        if chunk:
            loss = chunked_cross_entropy(h, self.lm_head.weight, labels, chunk)
        else:
            loss = F.cross_entropy(self.lm_head(h).float(), labels, ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=None)


def chunked_token_loss(h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int) -> torch.Tensor:
    """Cross-entropy of every token of ``h @ weight.T`` (0 where the label is -100), computed
    ``chunk`` tokens at a time so the [tokens, vocab] fp32 logits are never held whole."""
    out = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
    for start in range(0, h.shape[0], chunk):
        logits = F.linear(h[start : start + chunk], weight).float()
        out[start : start + chunk] = F.cross_entropy(logits, labels[start : start + chunk], ignore_index=-100,
                                                     reduction="none")
    return out


def chunked_cross_entropy(h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                          chunk: int) -> torch.Tensor:
    """Mean cross-entropy of ``h @ weight.T`` (labels -100 ignored) without ever holding the full
    [tokens, vocab] fp32 logits: each chunk of ``chunk`` tokens runs under activation
    checkpointing, so forward keeps only its input and backward rebuilds one chunk's logits at a
    time.

    Built from ordinary ops on ``weight`` (no custom autograd Function), so plugins that wrap
    parameters in hooked tensors (Gemini's ColoParameter) see every use of the lm_head weight and
    run their fetch and gradient hooks as for any other layer; the price is one more lm_head matmul
    per chunk in backward."""
    from torch.utils.checkpoint import checkpoint

    total = h.new_zeros((), dtype=torch.float32)
    for start in range(0, h.shape[0], chunk):
        total = total + checkpoint(_summed_cross_entropy, h[start : start + chunk], weight,
                                   labels[start : start + chunk], use_reentrant=False)
    return total / (labels != -100).sum().clamp(min=1)


def _summed_cross_entropy(h: torch.Tensor, weight: torch.Tensor,
                          labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(F.linear(h, weight).float(), labels, ignore_index=-100, reduction="sum")


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


def drop_tied_head(module: nn.Module, state: dict, prefix: str, *args) -> None:
    """Drop the head's name of the shared tensor from ``state``: after a state dict is built, and
    before a wrapper that loads each parameter once (Gemini, which saves it under both names)."""
    state.pop(prefix + "lm_head.weight", None)


def _fill_tied_head(module: nn.Module, state: dict, prefix: str, *args) -> None:
    embedding = state.get(prefix + "model.embed_tokens.weight")
    if embedding is not None:
        state.setdefault(prefix + "lm_head.weight", embedding)


def build_model(cfg: ModelConfig, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                seed: int | None = None, attn: str | None = None,
                wrapped_params: bool = False, fp8: str = "off") -> LlamaForCausalLM:
    """Build and initialise on ``device`` without materialising the weights elsewhere first.

    ``wrapped_params``: a plugin will wrap the parameters in hooked tensors (Gemini), so compiled
    decoder layers run the plugin's parameter hooks once per layer (``compile_hooked_layers``).
    ``fp8``: the decoder layers' linear layers train in FP8 (``ominix.float8``; training only, so
    the caller passes ``model.fp8``: inference and export build the plain model)."""
    if seed is not None:
        torch.manual_seed(seed)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg, attn)
    model.to_empty(device=device)
    if cfg.tie_word_embeddings:  # to_empty gives each module its own tensor: tie them again
        model.lm_head.weight = model.model.embed_tokens.weight
    init_weights(model)
    log.info("attention kernel: %s", model.attn)
    model = model.to(dtype)
    model.fp8 = fp8
    float8.convert(model.model.layers, fp8)
    compiled.apply(model, wrapped_params, torch.device(device).type == "cuda")
    return model


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
