"""Whether a run fits in one accelerator's memory, estimated before anything is built.

Per GPU, in bytes, for a plugin, a model shape, the micro batch, accumulation, checkpointing policy
and world size:

    peak = params + grads + optimizer            the model states, as the plugin shards or offloads them
         + kept activations                       what backward needs of every layer, per micro batch
         + max(loss, one layer in backward)       the largest transient of backward
         + workspace                              gathered chunks, allocator slack: 2 GiB + 2 %

The coefficients are counts of the tensors the decoder saves (``ominix.model``), fitted where a
count is uncertain to peaks measured on one H200; docs/PERFORMANCE.md gives the formula and its
error against each measurement. No torch import: the launchers estimate before they start anything.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ominix.errors import OminixError
from ominix.flops import num_params

if TYPE_CHECKING:
    from ominix.config import OminixConfig

# a layout is a ``train.layout.Layout``, whose ``validate`` asks this module: not imported, no cycle
Layout = Any

GIB = 2**30
RESERVE = 2 * GIB  # what a card gives a process beyond torch's allocations: CUDA context, fragmentation
ADAM = 8  # bytes per parameter: Adam's two fp32 moments
MASTER = 4  # bytes per parameter: the fp32 master weights of a half-precision run
LOSS_BYTES = 12  # per logit in backward: fp32 log-softmax output, its gradient, the logits' gradient


@dataclass(frozen=True)
class Estimate:
    """Bytes per GPU by part; ``total`` is the predicted peak of ``torch.cuda.max_memory_allocated``."""

    params: float
    grads: float
    optimizer: float
    activations: float
    transient: float
    workspace: float

    @property
    def total(self) -> float:
        return self.params + self.grads + self.optimizer + self.activations + self.transient + self.workspace

    def describe(self) -> str:
        parts = (("params", self.params), ("grads", self.grads), ("optimizer", self.optimizer),
                 ("activations", self.activations), ("loss/backward peak", self.transient),
                 ("workspace", self.workspace))
        return f"~{self.total / GIB:.1f} GiB per GPU = " + " + ".join(f"{n} {v / GIB:.1f}" for n, v in parts)


def _states(cfg: OminixConfig, layout: Layout) -> tuple[float, float, float]:
    """Parameters, gradients and optimizer state on one GPU, in bytes."""
    p, plugin = cfg.parallel, cfg.parallel.plugin
    half = p.precision in ("bf16", "fp16")
    weight = 2 if half else 4
    master = MASTER if half else 0
    n = num_params(cfg.model) / (layout.tp * layout.pp)
    dp = layout.dp
    if plugin in ("gemini", "gemini_auto"):
        # chunks are sharded over the data-parallel ranks; without accumulation a gradient is written
        # into its parameter's chunk, with it Gemini keeps a gradient chunk beside each parameter chunk;
        # auto placement moves the optimizer state to the host as the card fills
        kept = 0.0 if plugin == "gemini_auto" else 1.0 - p.offload_optim_frac
        return weight * n / dp, (weight * n / dp if layout.accum > 1 else 0.0), (master + ADAM) * n / dp * kept
    if plugin in ("zero2", "zero2_cpu"):
        on_gpu = plugin == "zero2"
        return weight * n, weight * n / dp, (master + ADAM) * n / dp if on_gpu else 0.0
    if plugin == "ddp":  # fp32 weights under autocast; DDP's buckets hold a second copy of the gradients
        return 4 * n, 2 * 4 * n, ADAM * n
    if plugin == "fsdp":  # fp32 weights, fully sharded
        return 4 * n / dp, 4 * n / dp, ADAM * n / dp
    # 3d: tensor and pipeline parallel split the model; ZeRO-1 shards the optimizer, ZeRO-2 also grads
    optimizer = (master + ADAM) * n / (dp if p.zero_stage >= 1 else 1)
    return weight * n, weight * n / (dp if p.zero_stage == 2 else 1), optimizer


def _layer_bytes(cfg: OminixConfig, act: int) -> dict[str, float]:
    """Bytes per token that one decoder layer saves for backward, by what is kept."""
    m = cfg.model
    h, kv, i = m.hidden_size, m.kv_heads * m.head_dim, m.intermediate_size
    # eager: both norms' fp32 inputs; the normed inputs of q/k/v and of the MLP, q, attention's output
    # and its reshaped copy (o_proj's input); k and v; gate, silu(gate), up and their product
    eager = act * (5 * h + 2 * kv + 4 * i) + 2 * 4 * h
    # compiled: the fused norms and SwiGLU keep their inputs only
    fused = act * (5 * h + 2 * kv + 3 * i)
    # selective checkpointing keeps the layer's input and the matmul and attention outputs
    selective = act * (5 * h + 2 * kv + 2 * i)
    return {"layer": fused if m.compile else eager, "selective": selective, "input": act * h}


def estimate(cfg: OminixConfig, layout: Layout) -> Estimate:
    """The predicted peak memory of one GPU of ``layout`` (see the module docstring)."""
    m = cfg.model
    act = 2 if cfg.parallel.precision in ("bf16", "fp16") else 4
    params, grads, optimizer = _states(cfg, layout)
    # tensor parallelism splits each layer's activations (sequence parallelism the rest of them);
    # a pipeline's first stage holds up to pp micro batches of its layers in flight
    tokens = layout.micro_batch * layout.seq_len / layout.tp
    layers = m.num_hidden_layers / layout.pp * (min(layout.pp, layout.accum) if layout.pp > 1 else 1)
    per_token = _layer_bytes(cfg, act)
    one_layer = per_token["layer"] * tokens
    if not m.gradient_checkpointing:
        kept, recompute = one_layer * layers, 0.5 * one_layer  # backward: the gradients of one layer
    else:
        kept = (per_token["selective"] if m.checkpoint_policy == "selective" else per_token["input"]) * tokens * layers
        recompute = 1.5 * one_layer  # a layer run again, and its gradients
    rows = layout.micro_batch * layout.seq_len
    rows = min(m.loss_chunk, rows) if m.loss_chunk else rows
    loss = LOSS_BYTES * rows * m.vocab_size / layout.tp
    states = params + grads + optimizer
    transient = max(loss, recompute)
    workspace = 2 * GIB + 0.02 * (states + kept + transient)
    return Estimate(params, grads, optimizer, kept, transient, workspace)


def check(cfg: OminixConfig, layout: Layout, device_bytes: float, device: str) -> Estimate:
    """Refuse ``layout`` when its estimate exceeds ``device_bytes`` of ``device`` (less RESERVE),
    naming the largest micro batch (or offload fraction) that fits; return the estimate."""
    est = estimate(cfg, layout)
    budget = device_bytes - RESERVE
    if not cfg.launch.memory_check or est.total <= budget:
        return est
    raise OminixError(
        f"the layout does not fit in GPU memory: {est.describe()}, more than the "
        f"{device_bytes / GIB:.1f} GiB of {device} less {RESERVE / GIB:.0f} GiB for the CUDA context",
        "; or ".join(_fixes(cfg, layout, budget)) + " (launch.memory_check=false skips this estimate)",
    )


def _fixes(cfg: OminixConfig, layout: Layout, budget: float) -> list[str]:
    """What would fit ``budget``: a smaller micro batch, optimizer offload, checkpointing."""
    fixes = []
    smaller = [mb for mb in range(layout.micro_batch - 1, 0, -1) if layout.rank_batch % mb == 0]
    for mb in smaller:
        fit = replace(layout, micro_batch=mb, accum=layout.global_batch // (mb * layout.dp))
        if estimate(cfg, fit).total <= budget:
            fixes.append(f"set schedule.micro_batch_size={mb}, the largest that fits "
                         f"(~{estimate(cfg, fit).total / GIB:.1f} GiB, accumulation {fit.accum})")
            break
    p = cfg.parallel
    if p.plugin == "gemini" and p.gemini_placement == "static":
        for tenth in range(round(p.offload_optim_frac * 10) + 1, 11):
            offload = cfg.model_copy(update={"parallel": p.model_copy(update={"offload_optim_frac": tenth / 10})})
            if estimate(offload, layout).total <= budget:
                fixes.append(f"set parallel.offload_optim_frac={tenth / 10:.1f} (optimizer state on the host; slower)")
                break
    if not cfg.model.gradient_checkpointing:
        fixes.append("set model.gradient_checkpointing=true")
    return fixes or ["train on more GPUs (gemini, zero2 and fsdp shard the model states over them), "
                     "or use --plugin zero2_cpu (optimizer state on the host)"]


def check_here(cfg: OminixConfig, layout: Layout) -> Estimate | None:
    """``check`` against this process's CUDA device, unless ``launch.device_memory_gib`` names the
    memory (``layout.validate`` checks that figure) or there is no device."""
    if cfg.launch.device_memory_gib:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return check(cfg, layout, float(props.total_memory), props.name)


def describe_fit(cfg: OminixConfig, layout: Layout) -> str:
    """The estimate and where it is checked, for the plan a dry run prints."""
    est = estimate(cfg, layout)
    if not cfg.launch.memory_check:
        return f"{est.describe()} (not checked: launch.memory_check=false)"
    if cfg.launch.device_memory_gib:
        return f"{est.describe()}; fits the {cfg.launch.device_memory_gib:g} GiB of launch.device_memory_gib"
    return f"{est.describe()}; checked against the GPU's memory where the run starts"
