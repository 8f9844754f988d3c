"""The ColossalAI booster plugins OminiX trains with: their names, what each can do, and the rules a
config must follow to use one. The single source of plugin knowledge: ``config`` takes its plugin
names and config-only rules from here, ``train.engine`` keys its builders by the same names.

Importable without torch or ColossalAI (``ominix config show`` and ``--dry-run`` use it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Plugin:
    """What differs between plugins, as data (the engine builds each with a small builder)."""

    name: str
    gpu_only: bool
    clips: bool  # the plugin clips gradients itself (it gets max_norm) and reports the norm
    hf_model: bool  # shardformer needs transformers' LlamaForCausalLM
    shard_optimizer: bool  # save the optimizer sharded (False: one file, rank 0)
    reshard: bool  # its checkpoints load on a different number of ranks
    wraps_params: bool = False  # parameters become hooked tensors (Gemini): compiled layers run as hooked regions
    # the plugin rebuilds the optimizer over all parameters in one group, and its optimizer checkpoint
    # needs tensor states (torch's FSDP): it gets torch's Adam, not HybridAdam (whose step is an int)
    one_param_group: bool = False
    takes_lazy_init: bool = False  # it materialises ColossalAI's lazy tensors itself (shardformer, Gemini)
    supports_fp32: bool = True  # it trains in fp32 as well as bf16/fp16
    takes_degrees: bool = False  # parallel.tp, pp, zero_stage and sequence_parallel apply (HybridParallelPlugin)


_TABLE = (
    Plugin("gemini", gpu_only=True, clips=True, hf_model=False, shard_optimizer=True, reshard=True,
           wraps_params=True, takes_lazy_init=True, supports_fp32=False),
    Plugin("gemini_auto", gpu_only=True, clips=True, hf_model=False, shard_optimizer=True, reshard=True,
           wraps_params=True, takes_lazy_init=True, supports_fp32=False),
    Plugin("zero2", gpu_only=False, clips=True, hf_model=False, shard_optimizer=True, reshard=True),
    Plugin("zero2_cpu", gpu_only=True, clips=True, hf_model=False, shard_optimizer=True, reshard=True),
    Plugin("3d", gpu_only=False, clips=True, hf_model=True, shard_optimizer=True, reshard=False,
           takes_lazy_init=True, takes_degrees=True),
    Plugin("ddp", gpu_only=False, clips=False, hf_model=False, shard_optimizer=False, reshard=True),
    # ColossalAI's TorchFSDPPlugin re-creates the optimizer over the flat parameters with its defaults:
    # one group, so weight decay applies to norms too under fsdp
    Plugin("fsdp", gpu_only=True, clips=False, hf_model=False, shard_optimizer=False, reshard=False,
           one_param_group=True),
)
PLUGINS: dict[str, Plugin] = {p.name: p for p in _TABLE}
NAMES = tuple(PLUGINS)


class Refusal(ValueError):
    """A config rule broken: the message names the settings, the hint says what to change."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


def _choices(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def cpu_choices() -> str:
    """The plugins that run without a GPU, as a phrase ("zero2, 3d or ddp")."""
    return _choices([p.name for p in _TABLE if not p.gpu_only])


def check_parallel(p: Any) -> None:
    """Refuse a ``parallel`` section its plugin cannot run (rules that need nothing else)."""
    plugin = PLUGINS[p.plugin]
    hybrid = [q.name for q in _TABLE if q.takes_degrees]
    if not plugin.takes_degrees and (p.tp > 1 or p.pp > 1):
        raise Refusal(f"parallel.tp/pp > 1 needs {_choices([f'parallel.plugin={n}' for n in hybrid])} "
                      f"(got plugin={p.plugin})")
    if p.sequence_parallel and p.tp == 1:
        raise Refusal("parallel.sequence_parallel needs parallel.tp > 1")
    if not plugin.supports_fp32 and p.precision == "fp32":
        raise Refusal(f"{p.plugin} trains in bf16 or fp16, not fp32", "set parallel.precision=bf16")
    if not plugin.takes_degrees and p.zero_stage:
        raise Refusal(
            f"parallel.zero_stage applies to the {_choices(hybrid)} plugin only (plugin={p.plugin})",
            "use --plugin zero2 for ZeRO-2, or --plugin 3d with parallel.zero_stage",
        )
    if p.pp > 1 and p.zero_stage == 2:
        raise Refusal("ZeRO stage 2 cannot be combined with pipeline parallelism", "set parallel.zero_stage=1")


def check_run(cfg: Any) -> None:
    """Refuse a whole config whose plugin settings clash with the model, data or optimizer."""
    p = cfg.parallel
    if PLUGINS[p.plugin].one_param_group and cfg.optim.optimizer == "hybrid_adam":
        raise Refusal(
            f"parallel.plugin={p.plugin} cannot resume HybridAdam: torch's FSDP optimizer checkpoint needs "
            "tensor states and HybridAdam keeps its step count as an int",
            "set optim.optimizer=auto (fused torch Adam under fsdp)",
        )
    if p.sequence_parallel and cfg.data.seq_len % p.tp:
        raise Refusal(
            f"data.seq_len ({cfg.data.seq_len}) must be divisible by parallel.tp ({p.tp}) "
            "with sequence parallelism",
            "change data.seq_len or parallel.tp, or set parallel.sequence_parallel=false",
        )
    if p.pp > 1 and cfg.model.tie_word_embeddings:
        raise Refusal(
            "tied embeddings cannot be split over pipeline stages",
            "set parallel.pp=1 or model.tie_word_embeddings=false",
        )
    if cfg.model.fp8 != "off" and PLUGINS[p.plugin].hf_model:
        raise Refusal(
            f"model.fp8={cfg.model.fp8} converts OminiX's decoder, which parallel.plugin={p.plugin} "
            "does not train (it trains transformers' LlamaForCausalLM through shardformer)",
            "use --plugin gemini, zero2 or ddp for FP8, or set model.fp8=off",
        )
