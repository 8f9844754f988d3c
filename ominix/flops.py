"""Parameter counts, model FLOPs per token, device peaks and MFU.

MFU = achieved model FLOP/s / (number of GPUs x peak FLOP/s of one GPU), with

    model FLOPs per token = 6 x (non-embedding params + lm_head params) + 12 x layers x hidden x seq

(forward + backward of every matmul, plus attention scores and values over a ``seq``-long causal
context counted in full). Recomputation under activation checkpointing is NOT counted: MFU measures
useful work. Peaks are dense (no sparsity) tensor-core numbers from the vendors' data sheets; an
unknown device has no peak and MFU prints as n/a, never a guess.
"""

from __future__ import annotations

from ominix.config import ModelConfig

# Dense bf16/fp16 tensor-core peak FLOP/s per device, keyed by a substring of the CUDA device name.
# Order matters: the first matching key wins ("H100 PCIe" before "H100").
PEAK_BF16: list[tuple[str, float]] = [
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("A6000", 155e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("V100", 125e12),
    ("MI300X", 1307e12),
    ("MI250X", 383e12),
]


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    """Parameters by role: embedding, lm_head (0 when tied), per-layer blocks, final norm, total."""
    h, hd, layers = cfg.hidden_size, cfg.head_dim, cfg.num_hidden_layers
    attn = h * cfg.num_attention_heads * hd * 2 + h * cfg.kv_heads * hd * 2  # q, o + k, v
    mlp = 3 * h * cfg.intermediate_size
    block = attn + mlp + 2 * h  # two RMSNorm weights
    embedding = cfg.vocab_size * h
    lm_head = 0 if cfg.tie_word_embeddings else cfg.vocab_size * h
    blocks = layers * block
    total = embedding + lm_head + blocks + h
    return {"embedding": embedding, "lm_head": lm_head, "blocks": blocks, "norm": h, "total": total}


def num_params(cfg: ModelConfig) -> int:
    return param_counts(cfg)["total"]


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """6 x (non-embedding params + lm_head) + 12 x layers x hidden x seq (see module docstring)."""
    c = param_counts(cfg)
    matmul_params = c["blocks"] + c["norm"] + cfg.vocab_size * cfg.hidden_size  # lm_head, tied or not
    return 6.0 * matmul_params + 12.0 * cfg.num_hidden_layers * cfg.hidden_size * seq_len


def peak_flops(device_name: str | None) -> float | None:
    """Dense bf16 peak FLOP/s of one device, or None when the device is not in the table."""
    if not device_name:
        return None
    for key, peak in PEAK_BF16:
        if key.lower() in device_name.lower():
            return peak
    return None


def device_name() -> str:
    """Name of the current accelerator ("cpu" without CUDA)."""
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def mfu(tokens_per_s_per_device: float, flops_token: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation in [0, 1], None when the peak is unknown."""
    if peak is None:
        return None
    return tokens_per_s_per_device * flops_token / peak


def format_mfu(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"
