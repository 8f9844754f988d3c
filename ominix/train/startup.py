"""What a rank does before its first step, beside building the engine: open the data, choose the
checkpoint to resume from (rank 0 decides, every rank gets the answer), learn every rank's device,
and say what is about to run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ominix.errors import OminixError

if TYPE_CHECKING:
    from ominix.config import OminixConfig
    from ominix.train.parallel_layout import ParallelLayout


def from_rank0(fn, share: bool = True):
    """``fn()`` run on rank 0 alone; every rank gets its answer (``share``; else rank 0 alone, the
    others None) or raises its OminixError, so no rank waits in a collective for one that failed."""
    import torch.distributed as dist

    answer, result = [None], None
    if dist.get_rank() == 0:
        try:
            result = fn()
            answer = [("ok", result if share else None)]
        except OminixError as exc:
            answer = [("error", (exc.message, exc.hint, exc.exit_code))]
    dist.broadcast_object_list(answer, src=0)
    kind, value = answer[0]
    if kind == "error":
        raise OminixError(*value)
    return value if share else result


def resume_from(cfg: OminixConfig, run_dir: Path) -> tuple[Path | None, list[str]]:
    """The checkpoint to resume from and notices about damaged ones passed over: rank 0 checks,
    every rank gets its answer (or its error)."""
    from ominix.checkpoint import resumable

    choice = cfg.checkpoint.resume
    if cfg.checkpoint.starts_fresh:
        return None, []
    return from_rank0(lambda: resumable(run_dir if choice == "auto" else choice,
                                        cfg.checkpoint.verify, required=choice != "auto"))


def devices() -> dict[str, int]:
    """``{"host: device name": processes}`` over every rank (one collective)."""
    import socket

    import torch.distributed as dist

    from ominix.flops import device_name

    names: list = [None] * dist.get_world_size()
    dist.all_gather_object(names, f"{socket.gethostname()}: {device_name()}")
    return {name: names.count(name) for name in sorted(set(names))}


def open_data(cfg: OminixConfig):
    """The training split, the validation split (None without evaluations) and the manifest's
    sha256. One process per node hashes the shards of the splits the run reads (``data.verify``)."""
    from ominix.data.compatibility import check_fits
    from ominix.data.store import PackedDataset, manifest_sha256
    from ominix.data.verified import node_share

    check_fits(cfg)  # the launcher checked already; a worker may be started by hand
    verifies, start = node_share()
    verify = cfg.data.verify and verifies
    train = PackedDataset(cfg.data.path, "train", verify=verify, verify_start=start)
    val = (PackedDataset(cfg.data.path, "validation", verify=verify, verify_start=start)
           if cfg.schedule.eval_every else None)
    return train, val, manifest_sha256(cfg.data.path)


def run_lines(cfg: OminixConfig, layout: ParallelLayout, world: int, engine: Any, framing: str, total: int,
              run_dir: Path) -> list[str]:
    """What the run is about to do: plugin and devices, the memory estimate (the steps log the
    measured peak), the model as it will train, the steps and tokens."""
    from ominix import compiled, float8
    from ominix.flops import device_name, num_params
    from ominix.model import describe_attn
    from ominix.train.memory import estimate

    m = cfg.model
    chosen = None if engine.spec.hf_model else compiled.scope(m, engine.spec.wraps_params,
                                                              engine.device.type == "cuda")
    fp8 = "" if m.fp8 == "off" else f"{float8.describe(m.fp8, chosen is not None)}; "
    recompute = m.recompute_policy if m.recompute_activations else "off"
    return [
        f"plugin {cfg.parallel.plugin} ({cfg.parallel.precision}) on {world} x {device_name()}; "
        f"{layout.describe()}",
        f"memory estimate {estimate(cfg, layout).describe()}",
        f"model {m.name}: {num_params(m):,} parameters; attention {describe_attn(m.attn)}; "
        f"{compiled.SCOPES.get(chosen, 'eager')}; {fp8}activation recompute {recompute}; "
        f"documents framed {framing}; {total} steps; {layout.tokens_per_step * total:,} tokens; "
        f"run dir {run_dir}",
    ]
