"""Whether a run fits in one accelerator's memory, estimated before anything is built.

Per GPU, in bytes, for a plugin, a model shape, the micro batch, accumulation, recompute policy
and world size:

    peak = params + grads + optimizer        the model states, as the plugin shards or offloads them
         + kept activations                   what backward needs of every layer, per micro batch
         + max(loss, one layer in backward)   the largest transient of backward
         + workspace                          gathered chunks, buffers, allocator slack: 2 GiB + 2%

The coefficients count the tensors the decoder saves (``ominix.model``); docs/PERFORMANCE.md gives
the formula and its error against the peaks measured on one H200. No torch import at module level:
the launchers estimate before they start anything.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ominix.errors import OminixError
from ominix.flops import num_params

if TYPE_CHECKING:
    from ominix.config import OminixConfig

# a ``train.parallel_layout.ParallelLayout``, whose ``validate`` asks this module: not imported,
# so there is no cycle
ParallelLayout = Any

GIB = 2**30
RESERVE = 2 * GIB  # what a process holds beyond torch's allocations: CUDA context, fragmentation
ADAM = 8  # bytes per parameter: Adam's two fp32 moments
MASTER = 4  # bytes per parameter: the fp32 master weights of a half-precision run
LOSS_BYTES = 12  # per logit in backward: fp32 log-softmax output, its gradient, the logits' gradient


@dataclass(frozen=True)
class Estimate:
    """Bytes per GPU by part; ``total`` predicts the peak of ``torch.cuda.max_memory_allocated``."""

    params: float
    grads: float
    optimizer: float
    activations: float
    transient: float
    workspace: float

    @property
    def total(self) -> float:
        return (self.params + self.grads + self.optimizer + self.activations + self.transient
                + self.workspace)

    def describe(self) -> str:
        parts = (("params", self.params), ("grads", self.grads), ("optimizer", self.optimizer),
                 ("activations", self.activations), ("loss/backward peak", self.transient),
                 ("workspace", self.workspace))
        shown = " + ".join(f"{name} {value / GIB:.1f}" for name, value in parts)
        return f"~{self.total / GIB:.1f} GiB per GPU = {shown}"


def _states(cfg: OminixConfig, layout: ParallelLayout) -> tuple[float, float, float]:
    """Parameters, gradients and optimizer state on one GPU, in bytes."""
    p, plugin = cfg.parallel, cfg.parallel.plugin
    half = p.precision in ("bf16", "fp16")
    weight, master = (2, MASTER) if half else (4, 0)
    n = num_params(cfg.model) / (layout.tp * layout.pp)
    dp = layout.dp
    if plugin in ("gemini", "gemini_auto"):
        # chunks are sharded over the data-parallel ranks. Without accumulation a gradient is
        # written into its parameter's chunk; with it Gemini keeps a gradient chunk beside each.
        # Auto placement moves the optimizer state to the host as the card fills.
        kept = 0.0 if plugin == "gemini_auto" else 1.0 - p.offload_optim_frac
        grads = weight * n / dp if layout.accum > 1 else 0.0
        return weight * n / dp, grads, (master + ADAM) * n / dp * kept
    if plugin in ("zero2", "zero2_cpu"):
        optimizer = (master + ADAM) * n / dp if plugin == "zero2" else 0.0
        return weight * n, weight * n / dp, optimizer
    if plugin == "ddp":  # fp32 weights under autocast; DDP's buckets hold a second gradient copy
        return 4 * n, 2 * 4 * n, ADAM * n
    if plugin == "fsdp":  # fp32 weights, fully sharded
        return 4 * n / dp, 4 * n / dp, ADAM * n / dp
    # 3d: tensor and pipeline parallel split the model; ZeRO-1 shards the optimizer, ZeRO-2 grads too
    optimizer = (master + ADAM) * n / (dp if p.zero_stage >= 1 else 1)
    return weight * n, weight * n / (dp if p.zero_stage == 2 else 1), optimizer


def _layer_bytes(cfg: OminixConfig, act: int) -> dict[str, float]:
    """Bytes per token that one decoder layer keeps for backward, by recompute policy."""
    m = cfg.model
    h, kv, i = m.hidden_size, m.kv_heads * m.head_dim, m.intermediate_size
    # eager: both norms' fp32 inputs; the normed inputs of q/k/v and of the MLP, q, attention's
    # output and its reshaped copy (o_proj's input); k and v; gate, silu(gate), up, their product
    eager = act * (5 * h + 2 * kv + 4 * i) + 2 * 4 * h
    fused = act * (5 * h + 2 * kv + 3 * i)  # compiled: the fused norms and SwiGLU keep their inputs
    # selective recompute keeps the layer's input and the matmul and attention outputs
    selective = act * (5 * h + 2 * kv + 2 * i)
    return {"layer": fused if m.compile else eager, "selective": selective, "full": act * h}


def estimate(cfg: OminixConfig, layout: ParallelLayout) -> Estimate:
    """The predicted peak memory of one GPU of ``layout`` (see the module docstring)."""
    m = cfg.model
    act = 2 if cfg.parallel.precision in ("bf16", "fp16") else 4
    params, grads, optimizer = _states(cfg, layout)
    # tensor parallelism splits each layer's activations (sequence parallelism the rest of them);
    # a pipeline's first stage holds up to pp micro batches of its layers in flight
    tokens = layout.micro_batch * layout.seq_len / layout.tp
    in_flight = min(layout.pp, layout.accum) if layout.pp > 1 else 1
    layers = m.num_hidden_layers / layout.pp * in_flight
    per_token = _layer_bytes(cfg, act)
    one_layer = per_token["layer"] * tokens
    if m.recompute_activations:
        kept = per_token[m.recompute_policy] * tokens * layers
        backward = 1.5 * one_layer  # a layer run again, and its gradients
    else:
        kept, backward = one_layer * layers, 0.5 * one_layer  # the gradients of one layer
    rows = layout.micro_batch * layout.seq_len
    rows = min(m.loss_chunk, rows) if m.loss_chunk else rows
    loss = LOSS_BYTES * rows * m.vocab_size / layout.tp
    transient = max(loss, backward)
    workspace = 2 * GIB + 0.02 * (params + grads + optimizer + kept + transient)
    return Estimate(params, grads, optimizer, kept, transient, workspace)


def check(cfg: OminixConfig, layout: ParallelLayout, device_bytes: float, device: str) -> Estimate:
    """Refuse ``layout`` when its estimate exceeds ``device_bytes`` of ``device`` (less RESERVE),
    naming the largest micro batch (or offload fraction) that fits; return the estimate."""
    est = estimate(cfg, layout)
    budget = device_bytes - RESERVE
    if not cfg.launch.memory_check or est.total <= budget:
        return est
    raise OminixError(
        f"the layout does not fit in GPU memory: {est.describe()}, more than the "
        f"{device_bytes / GIB:.1f} GiB of {device} less {RESERVE / GIB:.0f} GiB for the CUDA context",
        "; or ".join(_fixes(cfg, layout, budget))
        + " (launch.memory_check=false skips this estimate)",
    )


def _fixes(cfg: OminixConfig, layout: ParallelLayout, budget: float) -> list[str]:
    """What would fit ``budget``: a smaller micro batch, optimizer offload, activation recompute."""
    fixes = []
    for mb in range(layout.micro_batch - 1, 0, -1):
        if layout.rank_batch % mb:
            continue
        smaller = replace(layout, micro_batch=mb, accum=layout.global_batch // (mb * layout.dp))
        total = estimate(cfg, smaller).total
        if total <= budget:
            fixes.append(f"set schedule.micro_batch_size={mb}, the largest that fits "
                         f"(~{total / GIB:.1f} GiB, accumulation {smaller.accum})")
            break
    p = cfg.parallel
    if p.plugin == "gemini" and p.gemini_placement == "static":
        for tenths in range(round(p.offload_optim_frac * 10) + 1, 11):
            offload = p.model_copy(update={"offload_optim_frac": tenths / 10})
            if estimate(cfg.model_copy(update={"parallel": offload}), layout).total <= budget:
                fixes.append(f"set parallel.offload_optim_frac={tenths / 10:.1f} "
                             "(optimizer state on the host; slower)")
                break
    if not cfg.model.recompute_activations:
        fixes.append("set model.recompute_activations=true")
    return fixes or ["train on more GPUs (gemini, zero2 and fsdp shard the model states over "
                     "them), or use --plugin zero2_cpu (optimizer state on the host)"]


def check_here(cfg: OminixConfig, layout: ParallelLayout) -> Estimate | None:
    """``check`` against this process's CUDA device, unless ``launch.device_memory_gib`` names the
    memory (``parallel_layout.validate`` checks that figure) or there is no device."""
    if cfg.launch.device_memory_gib:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return check(cfg, layout, float(props.total_memory), props.name)


def describe_fit(cfg: OminixConfig, layout: ParallelLayout) -> str:
    """The estimate and where it is checked, for the plan a dry run prints."""
    est = estimate(cfg, layout)
    if not cfg.launch.memory_check:
        return f"{est.describe()} (not checked: launch.memory_check=false)"
    if cfg.launch.device_memory_gib:
        gib = cfg.launch.device_memory_gib
        return f"{est.describe()}; fits the {gib:g} GiB of launch.device_memory_gib"
    return f"{est.describe()}; checked against the GPU's memory where the run starts"
