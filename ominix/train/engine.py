"""The ColossalAI engine: the Booster that trains a validated
``ominix.train.parallel_layout.ParallelLayout``.

This is the only module that imports ColossalAI plugins, and it does so inside functions (the import
costs ~7 s). Each plugin is one small builder in ``BUILDERS``, keyed by the names of the plugin table
``ominix.plugins.PLUGINS``, which holds what differs between plugins (GPU-only, who clips gradients,
which model class, how the optimizer is checkpointed) and the rules the config validators apply.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, replace
from typing import Any, Callable

from ominix.config import OminixConfig
from ominix.env_defaults import env_defaults
from ominix.plugins import PLUGINS, Plugin
from ominix.train import memory
from ominix.train.parallel_layout import ParallelLayout, validate


def _gemini(cfg: OminixConfig, layout: ParallelLayout, placement: str | None = None) -> Any:
    from colossalai.booster.plugin import GeminiPlugin

    p = cfg.parallel
    placement = placement or p.gemini_placement
    offload_optim_frac = p.offload_optim_frac if placement == "static" else 0.0
    # Gemini's async reduce runs each gradient chunk's reduction on a side stream. Its frees of the
    # gathered chunks wait for that stream (colossalai_patches.frees_after_reads); without that, 7B
    # at micro 16 died with an illegal memory access once the chunk norms stopped making the host
    # wait. With those waits the side stream is slower on one H200 than the compute stream (46%
    # against 49% MFU at 7B), so the default reduces on the compute stream, except where chunks
    # move to the host: there the side stream overlaps those copies.
    offloads = placement == "auto" or offload_optim_frac > 0
    async_reduce = offloads if p.gemini_async_reduce is None else p.gemini_async_reduce
    return GeminiPlugin(
        precision=p.precision,
        placement_policy=placement,
        offload_optim_frac=offload_optim_frac,
        enable_gradient_accumulation=layout.accum > 1,
        max_norm=cfg.optim.grad_clip,
        enable_async_reduce=async_reduce,
        pin_memory=True,  # what async reduce turns on; offloaded chunks copy from pinned memory
    )


def _zero2(cfg: OminixConfig, layout: ParallelLayout, cpu_offload: bool = False) -> Any:
    import torch
    from colossalai.booster.plugin import LowLevelZeroPlugin

    return LowLevelZeroPlugin(
        stage=2,
        precision=cfg.parallel.precision,
        max_norm=cfg.optim.grad_clip,
        # overlapping needs CUDA streams; on a CPU every collective is synchronous anyway
        overlap_communication=cfg.parallel.overlap_communication and torch.cuda.is_available(),
        cpu_offload=cpu_offload,
        initial_scale=2**16,
    )


def _hybrid(cfg: OminixConfig, layout: ParallelLayout) -> Any:
    from colossalai.booster.plugin import HybridParallelPlugin

    from ominix.model import resolve_attn

    p = cfg.parallel
    return HybridParallelPlugin(
        tp_size=p.tp,
        pp_size=p.pp,
        zero_stage=p.zero_stage,
        precision=p.precision,
        enable_sequence_parallelism=p.sequence_parallel,
        sequence_parallelism_mode="split_gather" if p.sequence_parallel else None,
        enable_flash_attention=resolve_attn(cfg.model.attn) == "flash",
        microbatch_size=layout.micro_batch if p.pp > 1 else None,
        max_norm=cfg.optim.grad_clip,
        overlap_communication=p.overlap_communication,
        initial_scale=2**16,
    )


def _ddp(cfg: OminixConfig, layout: ParallelLayout) -> Any:
    from colossalai.booster.plugin import TorchDDPPlugin

    return TorchDDPPlugin()


def _fsdp(cfg: OminixConfig, layout: ParallelLayout) -> Any:
    from colossalai.booster.plugin import TorchFSDPPlugin

    return TorchFSDPPlugin()


BUILDERS: dict[str, Callable[[OminixConfig, ParallelLayout], Any]] = {
    "gemini": _gemini,
    "gemini_auto": lambda cfg, layout: _gemini(cfg, layout, placement="auto"),
    "zero2": _zero2,
    "zero2_cpu": lambda cfg, layout: _zero2(cfg, layout, cpu_offload=True),
    "3d": _hybrid,
    "ddp": _ddp,
    "fsdp": _fsdp,
}
assert BUILDERS.keys() == PLUGINS.keys(), "every plugin of ominix.plugins has one builder here"


IGNORE = -100  # the label transformers' and ColossalAI's losses skip


@dataclass
class Engine:
    """A boosted model with its optimizer and scheduler, and what the loop needs to know about them."""

    booster: Any
    plugin: Any
    spec: Plugin
    model: Any
    optimizer: Any
    scheduler: Any
    layout: ParallelLayout
    device: Any
    rank: int
    dp_rank: int
    amp_dtype: Any  # autocast dtype for plugins that don't control precision (ddp, fsdp), else None
    seq_multiple: int = 1  # transformers' input length must be a multiple of it (sequence parallelism)

    def autocast(self):
        import torch

        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def no_sync(self, last_micro: bool):
        """Skip the gradient all-reduce on all but the last micro batch of an accumulated step."""
        if last_micro or not self.plugin.support_no_sync():
            return contextlib.nullcontext()
        return self.booster.no_sync(self.model, self.optimizer)

    def loss(self, block) -> Any:
        """Mean next-token loss of a [batch, seq_len + 1] block of tokens: its seq_len targets."""
        if self.spec.hf_model:
            return self.model(**self.hf_inputs(block)).loss
        return self.model(block[:, :-1], labels=block[:, 1:]).loss

    def hf_inputs(self, block, real: int | None = None) -> dict[str, Any]:
        """transformers' inputs for a [batch, seq_len + 1] block, scoring the pairs our decoder scores.
        transformers (and ColossalAI's loss) shift the labels themselves and drop the last position,
        so the whole block goes in as input_ids and as labels: position t is scored on block[t + 1],
        all seq_len targets, at the cost of one position whose prediction nobody scores. Positions
        added to reach ``seq_multiple`` and the rows from ``real`` on (padding) are scored on nothing."""
        import torch

        pad = -block.shape[1] % self.seq_multiple
        ignored = torch.full((len(block), pad), IGNORE, dtype=block.dtype, device=block.device)
        labels = torch.cat([block, ignored], 1)
        if real is not None:
            labels[real:] = IGNORE
        return {"input_ids": torch.cat([block, block[:, -1:].expand(-1, pad)], 1), "labels": labels}

    def clip_and_step(self, max_norm: float, skip_nonfinite: bool = False) -> tuple[Any, bool]:
        """Clip gradients (here, or inside the plugin that was given max_norm) and step; return the
        gradient norm and whether the update was made (not when ``skip_nonfinite`` and the norm is
        not finite: that costs a host sync; plugins that clip inside see the norm only after)."""
        import torch

        if self.spec.clips:
            self.optimizer.step()
            return self.optimizer.get_grad_norm(), True
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        if hasattr(self.optimizer, "scaler"):  # fp16 under torch AMP: clip the true gradients
            self.optimizer.unscale_grad()
        limit = max_norm if max_norm > 0 else float("inf")
        inner = getattr(self.model, "module", None)
        if hasattr(inner, "clip_grad_norm_"):  # FSDP: the norm over every rank's shard
            norm = inner.clip_grad_norm_(limit)
        else:
            norm = torch.nn.utils.clip_grad_norm_(params, limit)
        if skip_nonfinite and not torch.isfinite(norm).item():
            return norm, False
        self.optimizer.step()
        return norm, True

    def evaluate(self, dataset, blocks: int) -> dict[str, Any]:
        """Validation loss and perplexity over ``blocks`` held-out blocks (``held_out_ids``), over all
        data-parallel ranks together, each block scored on its seq_len targets: the same numbers
        under every plugin, micro batch and world size."""
        import math

        import torch
        import torch.distributed as dist

        layout = self.layout
        self.model.eval()
        if not self.spec.hf_model:
            from ominix.perplexity import evaluate

            with self.autocast():
                return evaluate(self.model, dataset, layout.micro_batch, blocks, self.device,
                                self.dp_rank, layout.dp)
        from ominix.data.loader import eval_batches

        sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # [sum of token losses, tokens]
        # the pipeline schedule keeps one batch size for good: whole rank batches, the last padded;
        # padding rows (every rank makes as many passes) are scored on nothing
        size = layout.rank_batch if layout.pp > 1 else layout.micro_batch
        with torch.no_grad():
            for block, sources in eval_batches(dataset, size, self.dp_rank, layout.dp, blocks, pad=True):
                real = sum(s is not None for s in sources)
                if layout.pp > 1:
                    block = torch.cat([block, block[:1].expand(size - len(block), -1)])
                total = self._summed_loss(block.to(self.device), real)
                sums += torch.tensor([total, real * layout.seq_len], dtype=sums.dtype, device=self.device)
        dist.all_reduce(sums, group=self.plugin.dp_group)
        mean = (sums[0] / sums[1]).item()
        return {"loss": mean, "perplexity": math.exp(mean), "tokens": int(sums[1].item())}

    def _summed_loss(self, block, real: int) -> float:
        """Sum of the token losses of the first ``real`` rows of ``block`` (transformers' model)."""
        import torch

        inputs = self.hf_inputs(block, real)
        if self.layout.pp == 1:
            return self.model(**inputs).loss.item() * real * self.layout.seq_len if real else 0.0

        def summed(outputs, micro) -> Any:  # the micro batch's mean loss times its targets
            count = (micro["labels"][:, 1:] != IGNORE).sum()
            return torch.where(count > 0, outputs.loss * count, torch.zeros_like(outputs.loss))

        micro_batches = -(-len(block) // self.layout.micro_batch)  # the schedule divides by it
        return self._pipeline(inputs, summed, train=False).item() * micro_batches

    def pipeline_loss(self, block) -> Any:
        """One pipelined pass, forward and backward, over the rank's whole batch; the loss lives on
        the last stage and is shared with all stages."""
        return self._pipeline(self.hf_inputs(block), lambda outputs, _inputs: outputs.loss, train=True)

    def _pipeline(self, inputs: dict[str, Any], criterion, train: bool) -> Any:
        """``criterion``'s value, summed over the micro batches divided by their number (ColossalAI's
        schedule), from the last stage to every stage; ``train`` also runs backward."""
        import torch
        import torch.distributed as dist

        out = self.booster.execute_pipeline(iter([inputs]), self.model, criterion,
                                            self.optimizer if train else None, return_loss=True)
        loss = out["loss"] if self.plugin.stage_manager.is_last_stage() else None
        shared = torch.zeros((), device=self.device) if loss is None else loss.detach().float().clone()
        dist.all_reduce(shared, group=self.plugin.pp_group)
        return shared


def _param_groups(model, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices and embeddings; never norms or biases (1-d parameters)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def _optimizer(cfg: OminixConfig, model, gpu: bool, one_group: bool = False):
    """HybridAdam on GPU, AdamW elsewhere. ``one_group`` (fsdp): torch's Adam with decoupled decay
    (fused on GPU), every parameter decays, and the decay is the optimizer's default (the plugin
    re-creates the optimizer from its defaults)."""
    import torch

    o = cfg.optim
    if one_group:  # AdamW's own defaults do not pass its __init__ (decoupled_weight_decay) on torch >= 2.7;
        # Adam with decoupled decay is the same algorithm and takes them back
        return torch.optim.Adam(model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
                                weight_decay=o.weight_decay, decoupled_weight_decay=True, fused=gpu)
    groups = _param_groups(model, o.weight_decay)
    if o.optimizer == "hybrid_adam" or (o.optimizer == "auto" and gpu):
        from colossalai.nn.optimizer import HybridAdam

        return HybridAdam(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, adamw_mode=True)
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)


def _build_model(cfg: OminixConfig, spec: Plugin, device, plugin):
    """Our decoder built straight on the device (meta first), or, for shardformer, transformers'
    LlamaForCausalLM of the same shape under ColossalAI's lazy init, so each rank materialises only
    its shard. Both get ``init_weights`` from the same seed; with tp = pp = 1 the weights are
    identical, otherwise the plugin materialises in its own order (same distribution, other draws)."""
    import torch

    from ominix.model import build_model, hf_config, init_weights, resolve_attn

    m = cfg.model
    if not spec.hf_model:
        return build_model(m, device=device, dtype=torch.float32, seed=cfg.schedule.seed,
                           wrapped_params=spec.wraps_params, fp8=m.fp8)
    from colossalai.lazy import LazyInitContext
    from transformers import LlamaForCausalLM
    from transformers.modeling_utils import no_init_weights

    # Pipeline stages materialise only their own layers, each from the start of its RNG stream:
    # give every stage its own seed so that stages do not repeat each other's random draws.
    stage = plugin.stage_manager.stage if cfg.parallel.pp > 1 else 0
    torch.manual_seed(cfg.schedule.seed + 1_000_003 * stage)
    kernel = "flash_attention_2" if resolve_attn(m.attn) == "flash" else "sdpa"
    with LazyInitContext(default_device=device):
        with no_init_weights():  # skip transformers' own init: it would consume the RNG first
            model = LlamaForCausalLM(hf_config(m, use_cache=False, attn_implementation=kernel))
        init_weights(model)  # reads initializer_range and num_hidden_layers, which LlamaConfig has too
    if not spec.takes_lazy_init:
        LazyInitContext.materialize(model)
    if m.recompute_activations:
        model.gradient_checkpointing_enable()  # transformers' name for activation recompute
    return model


def one_process_env() -> contextlib.AbstractContextManager[None]:
    """The RANK/WORLD_SIZE/MASTER_* variables of a one-process group, set where torchrun set none
    (the in-process run) for the length of the run, then removed again. ColossalAI reads them when
    the group starts and its plugins read LOCAL_RANK when built, so the scope is the whole run."""
    defaults = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    if "MASTER_PORT" not in os.environ:  # a free port is looked for only when one is needed
        defaults["MASTER_PORT"] = str(_free_port())
    return env_defaults(defaults)


def init_distributed(seed: int) -> None:
    """Join the process group torchrun set up (in-process: inside ``one_process_env``). On a GPU,
    first let the CUDA caching allocator grow its segments in place (``expandable_segments``) unless
    PYTORCH_CUDA_ALLOC_CONF says otherwise: gradient accumulation under Gemini keeps a gradient chunk
    per parameter chunk between micro batches, and with fixed segments a 7B run at micro batch 8 x 2
    failed with 12.5 GiB free but fragmented."""
    import colossalai
    import torch

    if torch.cuda.is_available() and "PYTORCH_CUDA_ALLOC_CONF" not in os.environ:
        torch.cuda.memory._set_allocator_settings("expandable_segments:True")
    colossalai.launch_from_torch(seed=seed, verbose=False)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_engine(cfg: OminixConfig, schedule_fn: Callable[[int], float], hf_baseline: bool = False) -> Engine:
    """Build the plugin, model, optimizer and LR scheduler of ``cfg`` and boost them (process group up,
    inside ``colossalai_patches.patched()``, which must last as long as the engine is used).

    ``hf_baseline`` trains transformers' LlamaForCausalLM instead of OminiX's decoder through the same
    plugin and optimizer: ColossalAI's own LLaMA path, the baseline of ``bench/train_throughput.py``."""
    import torch
    import torch.distributed as dist
    from colossalai.booster import Booster

    gpu = torch.cuda.is_available()
    world, rank = dist.get_world_size(), dist.get_rank()
    layout = validate(cfg, world, gpu)
    memory.check_here(cfg, layout)  # on every node, before a byte of the model is allocated
    spec = PLUGINS[cfg.parallel.plugin]
    if hf_baseline:
        spec = replace(spec, hf_model=True)
    device = torch.device("cuda", torch.cuda.current_device()) if gpu else torch.device("cpu")
    plugin = BUILDERS[cfg.parallel.plugin](cfg, layout)
    precision = cfg.parallel.precision
    controls = plugin.control_precision()
    booster = Booster(plugin=plugin, mixed_precision="fp16" if precision == "fp16" and not controls else None)
    amp_dtype = torch.bfloat16 if precision == "bf16" and not controls else None

    model = _build_model(cfg, spec, device, plugin)
    optimizer = _optimizer(cfg, model, gpu, one_group=spec.one_param_group)
    if spec.one_param_group:  # the plugin re-creates the optimizer: schedule the one it makes
        model, optimizer, _, _, _ = booster.boost(model, optimizer)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer.optim, schedule_fn)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_fn)
        model, optimizer, _, _, scheduler = booster.boost(model, optimizer, lr_scheduler=scheduler)
    if cfg.model.tie_word_embeddings and spec.wraps_params:
        from ominix.model import drop_tied_head

        # NOTE: Gemini saves the shared tensor under both names but loads each parameter once:
        # the head's copy would be an unexpected key
        model.register_load_state_dict_pre_hook(drop_tied_head)
    dp_group = getattr(plugin, "dp_group", None)
    dp_rank = dist.get_rank(dp_group) if dp_group is not None else rank
    seq_multiple = cfg.parallel.tp if cfg.parallel.sequence_parallel else 1  # it splits the sequence
    return Engine(booster, plugin, spec, model, optimizer, scheduler, layout, device, rank, dp_rank,
                  amp_dtype, seq_multiple)
