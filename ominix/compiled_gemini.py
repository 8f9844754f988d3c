"""Compiled decoder layers under ColossalAI's Gemini: the one module that mirrors ColossalAI internals.

It mirrors the parameter-op hook protocol of ColossalAI 0.5.0: ``ColoParamOpHookManager.has_hook/
pre_op/post_op``, the calls Gemini makes around every op on a ``ColoParameter`` to fetch its chunk
before and release it after (with autograd wrappers that run the backward hooks), and the
``__torch_function__`` of its ``ColoTensor``/``ColoParameter`` subclasses, which compiled code must not
trace. The protocol is internal and may change between releases: ``compile_hooked_layers`` asks
``ominix.colossalai_gate`` first and refuses a ColossalAI whose hook calls differ.
"""

from __future__ import annotations

import torch
from torch import nn

from ominix import colossalai_gate as gate
from ominix import float8
from ominix.eager_fallback import or_eager


def check_colossalai_hooks() -> None:
    """Raise unless the installed ColossalAI has the hook calls this module mirrors."""
    from colossalai.tensor.param_op_hook import ColoParamOpHookManager as hooks

    gate.require("compiled layers under Gemini (they mirror its parameter hooks)",
                 (hooks, "has_hook", "()"), (hooks, "pre_op", "(params, *args)"),
                 (hooks, "post_op", "(params, arg)"),
                 instead="set model.compile_scope=ops (or model.compile=false)")


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


def plain(t: torch.Tensor) -> torch.Tensor:
    """The tensor as a plain ``torch.Tensor`` that is no view (same storage, same autograd graph):
    ColossalAI's ColoTensor activations and ColoParameters carry a ``__torch_function__`` that
    compiled code should not trace, and the aliases its hooks return are views."""
    if type(t) is torch.Tensor and not t._is_view():
        return t
    with torch._C.DisableTorchFunctionSubclass():
        return _AsPlain.apply(t)


def compile_hooked_layers(model: nn.Module) -> None:
    """Compiled decoder layers for plugins whose parameters run hooks on every op (ColossalAI's
    Gemini fetches a parameter's chunk before an op and releases it after; its ColoTensors cannot
    be traced). Each layer runs as one region: the hooks fire once for all of the layer's
    parameters (``pre_op``/``post_op``, the calls Gemini makes per op, with the same autograd
    wrappers for backward), and between them one compiled graph - one for all layers, called with
    each layer's parameters as plain tensors - does the math. Without active hooks (evaluation
    outside the plugin, a plain plugin) the region is just the compiled layer."""
    from torch.func import functional_call

    check_colossalai_hooks()
    # the graph's module: the layer's structure on the meta device, every parameter passed in
    layer_type = type(model.model.layers[0])
    with torch.device("meta"):
        template = float8.convert(layer_type(model.config, 0, model.attn, model.ops), model.fp8)
    names = [n for n, _ in template.named_parameters()]

    def eager(params, x, cos, sin):
        return functional_call(template, params, (x, cos, sin))

    graph = or_eager(torch.compile(eager, dynamic=False), eager)

    def run_layer(layer: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        from colossalai.tensor.param_op_hook import ColoParamOpHookManager as hooks

        params = list(layer.parameters())
        active = hooks.has_hook()
        weights = params
        if active:  # the weights pass through the hook's autograd wrapper too, as in a per-op call:
            # their gradients then reach the plugin only after its post-backward hook has run
            with torch._C.DisableTorchFunction():
                x, cos, sin, *weights = hooks.pre_op(params, x, cos, sin, *params)
        out = graph({n: plain(w) for n, w in zip(names, weights)}, plain(x), plain(cos), plain(sin))
        if active:
            with torch._C.DisableTorchFunction():
                out = hooks.post_op(params, out)
        return out

    model.model.run_layer = run_layer
