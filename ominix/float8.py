"""FP8 training through torchao's float8 linear layers (``model.fp8``: tensorwise or rowwise scaling).

Each decoder ``nn.Linear`` (attention and MLP projections) becomes torchao's ``Float8Linear``: the
weights stay in the training dtype, and every matmul casts its inputs to e4m3 with a dynamic scale
(one per tensor, or one per row) and runs ``torch._scaled_mm``. The casts are separate kernels in
eager mode, which cost what the FP8 matmul saves; the compiled layers (``model.compile``) fuse them
into the neighbouring ops. The embedding and the lm_head stay in the training dtype, as torchtitan
and OLMo-core keep them: the logits are the most precision-sensitive matmul of the model.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from ominix.errors import OminixError

if TYPE_CHECKING:
    from torch import nn

RECIPES = ("tensorwise", "rowwise")
# NVIDIA compute capability with FP8 tensor cores (Ada Lovelace, Hopper, Blackwell)
MIN_CAPABILITY = (8, 9)
INSTALL_HINT = ("pip install --no-deps 'torchao>=0.17' (the fp8 extra; torchao has no dependencies, "
                "and --no-deps keeps the installed torch)")


def check(recipe: str, gpu: bool) -> None:
    """Refuse ``model.fp8=recipe`` where it cannot train: no GPU, a GPU without FP8, no torchao."""
    if recipe == "off":
        return
    if not gpu:
        raise OminixError(f"model.fp8={recipe} needs a GPU with FP8 tensor cores; this machine has none",
                          "set model.fp8=off (FP8 needs compute capability 8.9+: L4, L40S, H100, H200, B200)")
    if importlib.util.find_spec("torchao") is None:
        raise OminixError(f"model.fp8={recipe} needs torchao, which is not installed", INSTALL_HINT)
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        capability = torch.cuda.get_device_capability()
        if capability < MIN_CAPABILITY:
            raise OminixError(
                f"model.fp8={recipe}: the {name} (compute capability {capability[0]}.{capability[1]}) "
                "has no FP8 tensor cores",
                "set model.fp8=off (FP8 needs compute capability 8.9+: L4, L40S, H100, H200, B200)")


def _convertible(module: nn.Module, fqn: str) -> bool:
    # torch._scaled_mm needs both matmul dimensions divisible by 16
    return module.in_features % 16 == 0 and module.out_features % 16 == 0


def convert(module: nn.Module, recipe: str) -> nn.Module:
    """Swap every convertible ``nn.Linear`` under ``module`` for torchao's ``Float8Linear`` (in place;
    parameter names and values unchanged, so checkpoints load either way)."""
    if recipe == "off":
        return module
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError as exc:
        raise OminixError(f"model.fp8={recipe}: torchao's float8 training does not import ({exc})",
                          INSTALL_HINT) from exc
    config = Float8LinearConfig.from_recipe_name(recipe)
    return convert_to_float8_training(module, config=config, module_filter_fn=_convertible)


def describe(recipe: str, compiled: bool) -> str:
    """The plan's words for ``model.fp8`` (``recipe`` not off)."""
    fused = "casts fused by the compiled layers" if compiled else "casts unfused (model.compile is off: slow)"
    return f"FP8 matmuls ({recipe} scaling, torchao; {fused})"
