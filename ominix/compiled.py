"""torch.compile for the decoder: the three scopes behind ``model.compile`` / ``model.compile_scope``.

- ``compile_layers``: each decoder layer compiled in place (plain parameters: ddp, zero2, fsdp).
- ``compile_hooked_layers`` (``ominix.compiled_gemini``): for plugins whose parameters run hooks on
  every op (Gemini), each layer runs as one region between the hooks, with one compiled graph shared
  by all layers.
- ``compile_ops``: only the parameter-free kernels (norm, rotary, SwiGLU), which work anywhere.

The model calls ``apply`` when it is built; this module knows the model only by its attributes
(``model.model.layers``, ``model.ops``), so it sits below ``ominix.model``.
"""

from __future__ import annotations

import torch
from torch import nn

from ominix import float8
from ominix.compiled_gemini import compile_hooked_layers, plain
from ominix.config import ModelConfig
from ominix.eager_fallback import or_eager
from ominix.ops import apply_rotary_qk, rms_normalize, swiglu

SCOPES = {"ops": "compiled kernels", "layers": "compiled layers",
          "hooked": "compiled layers (one hooked region per layer)"}


def wanted(cfg: ModelConfig, cuda: bool) -> bool:
    """Whether ``model.compile`` compiles on this device (``auto``: with CUDA, not on the CPU)."""
    return cuda if cfg.compile == "auto" else bool(cfg.compile)


def describe_compile(cfg: ModelConfig) -> str:
    """What ``model.compile`` (and ``model.fp8``) will do, for a plan made before the devices are seen."""
    words = {True: "compiled layers", False: "eager layers", "auto": "compile auto (compiled layers "
             "with CUDA, eager on the CPU)"}[cfg.compile]
    if cfg.fp8 != "off":
        words += f"; {float8.describe(cfg.fp8, bool(cfg.compile))}"
    return words


def scope(cfg: ModelConfig, wrapped_params: bool, cuda: bool = True) -> str | None:
    """Which of ``SCOPES`` ``cfg`` compiles (None: eager), given whether a plugin wraps parameters."""
    if not wanted(cfg, cuda):
        return None
    if cfg.compile_scope == "ops":
        return "ops"
    return "hooked" if wrapped_params else "layers"


def apply(model: nn.Module, wrapped_params: bool, cuda: bool) -> None:
    """Compile ``model`` (an ``ominix.model.LlamaForCausalLM``) in the scope its config asks for."""
    chosen = scope(model.config, wrapped_params, cuda)
    if chosen is not None:
        {"ops": compile_ops, "layers": compile_layers, "hooked": compile_hooked_layers}[chosen](model)


def compile_layers(model: nn.Module) -> None:
    """torch.compile each decoder layer in place (regional compilation: one graph reused by all
    layers, fast to compile, and the parameters stay plain module parameters for the plugins)."""
    for layer in model.model.layers:
        layer.compile(dynamic=False)
        # NOTE: nn.Module.compile keeps the compiled call in _compiled_call_impl (torch >= 2.2)
        layer._compiled_call_impl = or_eager(layer._compiled_call_impl, layer._call_impl)


def _compiled(fn):
    fused = or_eager(torch.compile(fn, dynamic=False), fn)

    def call(*args):
        return fused(*(plain(a) if isinstance(a, torch.Tensor) else a for a in args))

    return call


def compile_ops(model: nn.Module) -> None:
    """torch.compile the parameter-free kernels (RMSNorm's normalisation, rotary, SwiGLU): fused
    elementwise kernels with fewer saved intermediates; every op that touches a weight stays eager."""
    k = model.ops
    k.rms, k.rotary, k.swiglu = _compiled(rms_normalize), _compiled(apply_rotary_qk), _compiled(swiglu)
