"""Saving and loading a checkpoint through the ColossalAI booster. Every rank calls these; rank 0
writes the shared files. torch is imported inside the functions that need it."""

from __future__ import annotations

import contextlib
import errno
import json
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ominix.atomic import make_readable
from ominix.checkpoint.background import BackgroundSave, Pending, captured_writes, write_captured
from ominix.checkpoint.integrity import describe, share, write_record
from ominix.checkpoint.layout import (
    CONFIG, DATA, MODEL, OPTIMIZER, RNG, SCHEDULER, STATE, TOKENIZER, aside_dir, checkpoints_dir, latest_name,
    rank_file, read_state, staging_dir, step_name, write_latest,
)
from ominix.checkpoint.retention import clear_scratch, make_room, prune
from ominix.errors import OminixError

OPTIMIZER_FILE = "optimizer.pt"  # the one-file optimizer state of a plugin that does not shard it
FULL = 1 << 20  # bytes: a disk with less free space than this after a failed write is full


def _barrier(group=None) -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier(group=group)


def _rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(engine, loader, run_dir: Path, state: dict[str, Any], config_yaml: str,
                    keep_last: int, keep_every: int, save_optimizer: bool = True,
                    background: BackgroundSave | None = None) -> Path:
    """Write the checkpoint of ``state["step"]`` (with the tokenizer and the document framing of the
    data ``loader`` reads) under a temporary name, record the size and sha256 of its files (the ranks
    share the hashing), rename it into place (an existing checkpoint of the same step is moved aside
    first and deleted last), point ``latest`` at it, prune; returns its directory. A full disk
    raises OminixError, with ``latest`` and its checkpoint untouched.

    With ``background`` (see ``checkpoint.background``) it first waits for the previous background
    save (raising its error), takes the state to host memory and returns while a thread writes,
    records, renames and points ``latest``; the directory appears once ``background`` says so."""
    import time

    began = time.perf_counter()
    ckpts = checkpoints_dir(run_dir)
    step = state["step"]
    tmp = staging_dir(ckpts, step)  # the same name on every rank: they all write into it
    final = ckpts / step_name(step)
    if background is not None:
        background.wait()
        began = time.perf_counter()  # the previous save's remaining write is not this one's time
    rank, world = engine.rank, engine.layout.world_size

    def finish(group, pending: Pending) -> None:
        with _disk_full_is_one_error(run_dir, tmp, step):
            write_captured(pending)
            _publish(ckpts, tmp, step, rank, world, group)
        if rank == 0:
            prune(ckpts, keep_last, keep_every)
        _barrier(group)

    with _disk_full_is_one_error(run_dir, tmp, step):
        with captured_writes() if background is not None else contextlib.nullcontext([]) as pending:
            _stage(engine, loader, ckpts, tmp, state, config_yaml, keep_last, keep_every, save_optimizer)
    if background is None:
        finish(None, pending)
    else:
        background.start(lambda group: finish(group, pending), final, step, began)
    return final


@contextlib.contextmanager
def _disk_full_is_one_error(run_dir: Path, tmp: Path, step: int) -> Iterator[None]:
    """A save that runs out of disk: the temporary removed, one OminixError naming what is kept."""
    ckpts = checkpoints_dir(run_dir)
    try:
        yield
    except Exception as exc:
        if not _out_of_space(exc, ckpts):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        usage = shutil.disk_usage(_existing(ckpts))
        kept = latest_name(ckpts)
        raise OminixError(
            f"disk full while saving checkpoint {step_name(step)} in {run_dir} "
            f"({usage.free / 2**20:,.0f} MiB free of {usage.total / 2**20:,.0f} MiB)",
            "free space there or move logging.run_dir to a larger disk, then --resume auto continues from "
            + (kept if kept else "the start (no checkpoint was saved)"),
            exit_code=1,
        ) from exc


def _stage(engine, loader, ckpts: Path, tmp: Path, state: dict[str, Any], config_yaml: str,
           keep_last: int, keep_every: int, save_optimizer: bool) -> None:
    """Every rank's files of the checkpoint into ``tmp`` (rank 0 also the shared ones)."""
    import torch

    booster, rank = engine.booster, engine.rank
    if rank == 0:
        clear_scratch(ckpts)  # left by a process killed while saving
        make_room(ckpts, state["step"], keep_last, keep_every)
        for sub in (MODEL, OPTIMIZER, RNG, DATA):
            (tmp / sub).mkdir(parents=True)
    _barrier()
    booster.save_model(engine.model, str(tmp / MODEL), shard=True, use_safetensors=True)
    if save_optimizer:
        if engine.spec.shard_optimizer:
            booster.save_optimizer(engine.optimizer, str(tmp / OPTIMIZER), shard=True)
        else:  # one file, written by rank 0 (DDP's sharded optimizer cannot be loaded back on CPU)
            booster.save_optimizer(engine.optimizer, str(tmp / OPTIMIZER / OPTIMIZER_FILE), shard=False)
    booster.save_lr_scheduler(engine.scheduler, str(tmp / SCHEDULER))
    torch.save(_rng_state(), rank_file(tmp, RNG, rank, ".pt"))
    rank_file(tmp, DATA, rank, ".json").write_text(json.dumps(loader.state_dict()))
    if rank == 0:
        data = loader.dataset
        (tmp / STATE).write_text(json.dumps({**state, "framing": data.framing}, indent=2) + "\n")
        (tmp / CONFIG).write_text(config_yaml)
        if data.tokenizer_dir.is_dir():  # carried (a few MB) so the checkpoint serves without the data
            shutil.copytree(data.tokenizer_dir, tmp / TOKENIZER)


def _publish(ckpts: Path, tmp: Path, step: int, rank: int, world: int, group) -> None:
    """Once every rank's files are in ``tmp``: hash them (each rank its share), and on rank 0 write
    the record, rename ``tmp`` into place and point ``latest`` at it. ``group``: the process group
    to synchronise through (None: the default one)."""
    _barrier(group)
    mine = share(tmp, rank, world)
    make_readable(mine)  # the model's safetensors are written 0600; each rank fixes the files it hashes
    parts = _gather(describe(tmp, mine), group)
    if rank == 0:
        write_record(tmp, {rel: entry for part in parts for rel, entry in part.items()})
        final = ckpts / step_name(step)
        aside = aside_dir(ckpts, step)
        if final.exists():  # the same step saved again (a resumed run that re-reached it): never a
            final.rename(aside)  # moment without a whole copy, see retention.finish_overwrites
        tmp.rename(final)
        write_latest(ckpts, final.name)  # only after the rename: latest never names a partial save
        shutil.rmtree(aside, ignore_errors=True)


def _gather(part: dict[str, Any], group=None) -> list[dict[str, Any]]:
    """Every rank's ``part`` on rank 0 (elsewhere an empty list), through ``group``."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return [part]
    parts = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(part, parts, dst=0, group=group)
    return parts or []


def _out_of_space(exc: BaseException, ckpts: Path) -> bool:
    """Whether a failed save ran out of disk: ENOSPC, or a writer that only said "write failed"
    (torch, safetensors) with the disk now full."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return "No space left" in text or "StorageFull" in text or shutil.disk_usage(_existing(ckpts)).free < FULL


def _existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def check_compatible(saved: dict[str, Any], cfg, manifest_sha: str, layout, reshard: bool) -> None:
    """Refuse a checkpoint of another model (any field that changes the function its weights
    compute), other data, another plugin or an unsupported change of the rank layout, saying which
    setting differs."""
    from ominix.config import ModelConfig

    then, now = ModelConfig.model_validate(saved["model"]).function_fields(), cfg.model.function_fields()
    for key, value in then.items():
        if value != now[key]:
            raise OminixError(
                f"the checkpoint has model.{key}={value}, this run {now[key]}",
                "resume with the model config the checkpoint was trained with, or start over with --resume restart",
            )
    if saved["data_manifest_sha256"] != manifest_sha:
        raise OminixError(
            "the checkpoint was trained on other prepared data (data manifest sha256 differs)",
            "resume with the same data.path, or start over with --resume restart",
        )
    if saved["plugin"] != cfg.parallel.plugin:
        raise OminixError(
            f"the checkpoint was saved by plugin {saved['plugin']}, this run uses {cfg.parallel.plugin}",
            f"resume with --plugin {saved['plugin']}, or export the weights and start a new run from them",
        )
    layout_then = (saved["world_size"], saved["tp"], saved["pp"])
    if layout_then != (layout.world_size, layout.tp, layout.pp) and not (
        reshard and (saved["tp"], saved["pp"]) == (layout.tp, layout.pp)
    ):
        raise OminixError(
            f"the checkpoint was saved on {saved['world_size']} ranks (tp {saved['tp']}, pp {saved['pp']}); "
            f"plugin {cfg.parallel.plugin} cannot resume it on {layout.world_size} ranks (tp {layout.tp}, "
            f"pp {layout.pp})",
            "resume with the same number of processes and tp/pp",
        )


def load_checkpoint(engine, loader, ckpt: Path, load_optimizer: bool = True) -> None:
    """Restore model, optimizer, scheduler, this rank's RNG and data position from ``ckpt``."""
    import torch

    booster = engine.booster
    booster.load_model(engine.model, str(ckpt / MODEL))
    if load_optimizer:
        opt = ckpt / OPTIMIZER
        booster.load_optimizer(engine.optimizer, str(opt if engine.spec.shard_optimizer else opt / OPTIMIZER_FILE))
    booster.load_lr_scheduler(engine.scheduler, str(ckpt / SCHEDULER))
    rng = rank_file(ckpt, RNG, engine.rank, ".pt")
    if rng.is_file() and read_state(ckpt)["world_size"] == engine.layout.world_size:
        _set_rng_state(torch.load(rng, weights_only=False))
    data = rank_file(ckpt, DATA, engine.rank, ".json")
    # every rank's position is the same global one: any rank's file serves under another rank count
    loader.load_state_dict(json.loads((data if data.is_file() else rank_file(ckpt, DATA, 0, ".json")).read_text()))
