"""torch.compile for the decoder: the three scopes behind ``model.compile`` / ``model.compile_scope``.

- ``compile_layers``: each decoder layer compiled in place (plain parameters: ddp, zero2, fsdp).
- ``compile_hooked_layers`` (``ominix.compiled_gemini``): for plugins whose parameters run hooks on
  every op (Gemini), each layer runs as one region between the hooks, with one compiled graph shared
  by all layers.
- ``compile_ops``: only the parameter-free kernels (norm, rotary, SwiGLU), which work anywhere.

The model calls ``apply`` when it is built; this module knows the model only by its attributes
(``model.model.layers``, ``model.kernels``), so it sits below ``ominix.model``.
"""

from __future__ import annotations

import torch
from torch import nn

from ominix.compiled_gemini import compile_hooked_layers, plain
from ominix.config import ModelConfig
from ominix.ops import apply_rotary_qk, rms_normalize, swiglu

SCOPES = {"ops": "compiled kernels", "layers": "compiled layers",
          "hooked": "compiled layers (one hooked region per layer)"}


def scope(cfg: ModelConfig, wrapped_params: bool) -> str | None:
    """Which of ``SCOPES`` ``cfg`` compiles (None: eager), given whether a plugin wraps parameters."""
    if not cfg.compile:
        return None
    if cfg.compile_scope == "ops":
        return "ops"
    return "hooked" if wrapped_params else "layers"


def apply(model: nn.Module, wrapped_params: bool) -> None:
    """Compile ``model`` (an ``ominix.model.LlamaForCausalLM``) in the scope its config asks for."""
    chosen = scope(model.config, wrapped_params)
    if chosen is not None:
        {"ops": compile_ops, "layers": compile_layers, "hooked": compile_hooked_layers}[chosen](model)


def compile_layers(model: nn.Module) -> None:
    """torch.compile each decoder layer in place (regional compilation: one graph reused by all
    layers, fast to compile, and the parameters stay plain module parameters for the plugins)."""
    for layer in model.model.layers:
        layer.compile(dynamic=False)


def _compiled(fn):
    fused = torch.compile(fn, dynamic=False)

    def call(*args):
        return fused(*(plain(a) if isinstance(a, torch.Tensor) else a for a in args))

    return call


def compile_ops(model: nn.Module) -> None:
    """torch.compile the parameter-free kernels (RMSNorm's normalisation, rotary, SwiGLU): fused
    elementwise kernels with fewer saved intermediates; every op that touches a weight stays eager."""
    k = model.kernels
    k.rms, k.rotary, k.swiglu = _compiled(rms_normalize), _compiled(apply_rotary_qk), _compiled(swiglu)
