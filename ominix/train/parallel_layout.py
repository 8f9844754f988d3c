"""How a run's processes and batch are laid out, checked before anything starts.

``derive_layout`` splits the world into data x tensor x pipeline parallel groups and the global batch
into micro batches; ``validate`` adds the checks that need the hardware and the installed torch. Both
are cheap (no torch or ColossalAI import), so the launchers check a config here before they start
processes, and the engine builds from the same ``ParallelLayout``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ominix import float8
from ominix.config import OminixConfig
from ominix.errors import OminixError
from ominix.plugins import PLUGINS, cpu_choices
from ominix.train import memory


class LayoutError(OminixError):
    """The processes cannot hold the layout: the degrees or the batch do not divide the world."""


@dataclass(frozen=True)
class ParallelLayout:
    """How a global batch is split: derived in one place, printed at start."""

    world_size: int
    dp: int
    tp: int
    pp: int
    global_batch: int
    micro_batch: int
    accum: int  # micro batches per rank per optimizer step (pipeline: micro batches per step)
    seq_len: int

    @property
    def rank_batch(self) -> int:
        return self.global_batch // self.dp

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.seq_len

    def describe(self) -> str:
        return (
            f"world {self.world_size} = dp {self.dp} x tp {self.tp} x pp {self.pp}; global batch "
            f"{self.global_batch} = micro {self.micro_batch} x accum {self.accum} x dp {self.dp}; "
            f"{self.tokens_per_step:,} tokens/step (seq {self.seq_len})"
        )


def derive_layout(cfg: OminixConfig, world_size: int) -> ParallelLayout:
    """Split the world into dp x tp x pp and the global batch into micro batches, or say what to change."""
    p, s = cfg.parallel, cfg.schedule
    if world_size % (p.tp * p.pp):
        raise LayoutError(
            f"parallel.tp x parallel.pp ({p.tp} x {p.pp}) does not divide the {world_size} processes",
            "change parallel.tp/pp or --nproc-per-node (x nodes) so that tp x pp x dp = processes",
        )
    dp = world_size // (p.tp * p.pp)
    # unset: the layout's own batch, one micro batch per rank per step (torchtitan's convention)
    global_batch = s.global_batch_size or s.micro_batch_size * dp
    if global_batch % (s.micro_batch_size * dp):
        raise LayoutError(
            f"schedule.global_batch_size ({global_batch}) is not a multiple of "
            f"micro_batch_size x data-parallel size ({s.micro_batch_size} x {dp})",
            f"set schedule.global_batch_size to a multiple of {s.micro_batch_size * dp}",
        )
    accum = global_batch // (s.micro_batch_size * dp)
    if p.pp > 1 and p.num_microbatches is not None and p.num_microbatches != accum:
        raise LayoutError(
            f"parallel.num_microbatches ({p.num_microbatches}) must equal global batch / "
            f"(micro batch x dp) = {accum} with pipeline parallelism",
            "leave parallel.num_microbatches unset, or change schedule.global_batch_size",
        )
    return ParallelLayout(world_size, dp, p.tp, p.pp, global_batch, s.micro_batch_size, accum,
                          cfg.data.seq_len)


def with_global_batch(cfg: OminixConfig, layout: ParallelLayout) -> OminixConfig:
    """``cfg`` with the global batch ``layout`` resolved written in (what RUN_DIR/config.yaml and the
    checkpoints record, so that a resume compares the batch the run trained with)."""
    schedule = cfg.schedule.model_copy(update={"global_batch_size": layout.global_batch})
    return cfg.model_copy(update={"schedule": schedule})


def validate(cfg: OminixConfig, world_size: int, gpu: bool) -> ParallelLayout:
    """Check a config against the processes and hardware before anything starts; return the layout.
    (Rules that depend on the config alone are checked when it is loaded: ``ominix.plugins``.)
    With ``launch.device_memory_gib`` set, the memory estimate is checked here too; otherwise where
    the device is (``memory.check_here``)."""
    p = cfg.parallel
    if not gpu and PLUGINS[p.plugin].gpu_only:
        raise OminixError(
            f"parallel.plugin={p.plugin} needs a CUDA GPU (this machine has none)",
            f"on CPU use --plugin {cpu_choices()}",
        )
    if not gpu and cfg.optim.optimizer == "hybrid_adam":
        raise OminixError("optim.optimizer=hybrid_adam needs a CUDA GPU", "set optim.optimizer=auto or adamw")
    if PLUGINS[p.plugin].one_param_group and torch_version() < (2, 7):
        # its optimizer is torch's Adam with decoupled_weight_decay, which torch added in 2.7
        raise OminixError(
            f"parallel.plugin={p.plugin} needs torch >= 2.7 (installed: {'.'.join(map(str, torch_version()))})",
            "install torch>=2.7 on every node, or use --plugin gemini or zero2",
        )
    float8.check(cfg.model.fp8, gpu)
    layout = derive_layout(cfg, world_size)
    if gpu and cfg.launch.device_memory_gib:  # the card's memory is known here: refuse what cannot fit
        memory.check(cfg, layout, cfg.launch.device_memory_gib * memory.GIB,
                     "a GPU (launch.device_memory_gib)")
    return layout


def torch_version() -> tuple[int, int]:
    """The installed torch's (major, minor), read from its metadata (importing torch is slow)."""
    from importlib.metadata import version

    major, minor = version("torch").split(".")[:2]
    return int(major), int(minor)
