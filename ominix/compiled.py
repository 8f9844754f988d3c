"""torch.compile for the decoder: the three scopes behind ``model.compile`` / ``model.compile_scope``.

- ``compile_layers``: each decoder layer compiled in place (plain parameters: ddp, zero2, fsdp).
- ``compile_hooked_layers``: for plugins whose parameters run hooks on every op (Gemini), each layer
  runs as one region between the hooks, with one compiled graph shared by all layers.
- ``compile_ops``: only the parameter-free kernels (norm, rotary, SwiGLU), which work anywhere.
"""

from __future__ import annotations

import torch
from torch import nn

from ominix.config import ModelConfig
from ominix.model import LlamaDecoderLayer, LlamaForCausalLM, apply_rotary_qk, rms_normalize, swiglu


SCOPES = {"ops": "compiled kernels", "layers": "compiled layers",
          "hooked": "compiled layers (one hooked region per layer)"}


def scope(cfg: ModelConfig, wrapped_params: bool) -> str | None:
    """Which of ``SCOPES`` ``cfg`` compiles (None: eager), given whether a plugin wraps parameters."""
    if not cfg.compile:
        return None
    if cfg.compile_scope == "ops":
        return "ops"
    return "hooked" if wrapped_params else "layers"


def apply(model: LlamaForCausalLM, wrapped_params: bool) -> None:
    chosen = scope(model.config, wrapped_params)
    if chosen is not None:
        {"ops": compile_ops, "layers": compile_layers, "hooked": compile_hooked_layers}[chosen](model)


def compile_layers(model: LlamaForCausalLM) -> None:
    """torch.compile each decoder layer in place (regional compilation: one graph reused by all
    layers, fast to compile, and the parameters stay plain module parameters for the plugins)."""
    for layer in model.model.layers:
        layer.compile(dynamic=False)


class _AsPlain(torch.autograd.Function):
    """Identity into a plain ``torch.Tensor`` sharing storage (not a view: compiled code must not
    follow ``_base`` back into the subclass); gradients pass straight through."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        with torch._C.DisableTorchFunctionSubclass():
            out = torch.empty(0, dtype=t.dtype, device=t.device)
            return out.set_(t.untyped_storage(), t.storage_offset(), t.size(), t.stride())

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def _plain(t: torch.Tensor) -> torch.Tensor:
    """The tensor as a plain ``torch.Tensor`` that is no view (same storage, same autograd graph):
    ColossalAI's ColoTensor activations and ColoParameters carry a ``__torch_function__`` that
    compiled code should not trace, and the aliases its hooks return are views."""
    if type(t) is torch.Tensor and not t._is_view():
        return t
    with torch._C.DisableTorchFunctionSubclass():
        return _AsPlain.apply(t)


def compile_hooked_layers(model: LlamaForCausalLM) -> None:
    """Compiled decoder layers for plugins whose parameters run hooks on every op (ColossalAI's
    Gemini fetches a parameter's chunk before an op and releases it after; its ColoTensors cannot
    be traced). Each layer runs as one region: the hooks fire once for all of the layer's
    parameters (``pre_op``/``post_op``, the calls Gemini makes per op, with the same autograd
    wrappers for backward), and between them one compiled graph - one for all layers, called with
    each layer's parameters as plain tensors - does the math. Without active hooks (evaluation
    outside the plugin, a plain plugin) the region is just the compiled layer."""
    from torch.func import functional_call

    # the graph's module: the layer's structure on the meta device, every parameter passed in
    with torch.device("meta"):
        template = LlamaDecoderLayer(model.config, 0, model.attn, model.kernels)
    names = [n for n, _ in template.named_parameters()]
    graph = torch.compile(lambda params, x, cos, sin: functional_call(template, params, (x, cos, sin)),
                          dynamic=False)

    def run_layer(layer: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        from colossalai.tensor.param_op_hook import ColoParamOpHookManager as hooks

        params = list(layer.parameters())
        active = hooks.has_hook()
        weights = params
        if active:  # the weights pass through the hook's autograd wrapper too, as in a per-op call:
            # their gradients then reach the plugin only after its post-backward hook has run
            with torch._C.DisableTorchFunction():
                x, cos, sin, *weights = hooks.pre_op(params, x, cos, sin, *params)
        out = graph({n: _plain(w) for n, w in zip(names, weights)}, _plain(x), _plain(cos), _plain(sin))
        if active:
            with torch._C.DisableTorchFunction():
                out = hooks.post_op(params, out)
        return out

    model.model.run_layer = run_layer


def _compiled(fn):
    fused = torch.compile(fn, dynamic=False)

    def call(*args):
        return fused(*(_plain(a) if isinstance(a, torch.Tensor) else a for a in args))

    return call


def compile_ops(model: LlamaForCausalLM) -> None:
    """torch.compile the parameter-free kernels (RMSNorm's normalisation, rotary, SwiGLU): fused
    elementwise kernels with fewer saved intermediates; every op that touches a weight stays eager."""
    k = model.kernels
    k.rms, k.rotary, k.swiglu = _compiled(rms_normalize), _compiled(apply_rotary_qk), _compiled(swiglu)
