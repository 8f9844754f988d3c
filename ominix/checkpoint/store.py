"""Saving and loading a checkpoint through the ColossalAI booster. Every rank calls these; rank 0
writes the shared files. torch is imported inside the functions that need it."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

from ominix.checkpoint.layout import (
    CONFIG, DATA, MODEL, OPTIMIZER, RNG, SCHEDULER, STATE, checkpoints_dir, rank_file, read_state, staging_dir,
    step_name, write_latest,
)
from ominix.checkpoint.retention import prune
from ominix.errors import OminixError

OPTIMIZER_FILE = "optimizer.pt"  # the one-file optimizer state of a plugin that does not shard it


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


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
                    keep_last: int, keep_every: int, save_optimizer: bool = True) -> Path:
    """Write the checkpoint of ``state["step"]`` (temporary name, then rename), point ``latest`` at
    it, prune; returns its directory."""
    import torch

    ckpts = checkpoints_dir(run_dir)
    tmp = staging_dir(ckpts, state["step"])  # the same name on every rank: they all write into it
    booster, rank = engine.booster, engine.rank
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a process killed while saving
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
    _barrier()
    final = ckpts / step_name(state["step"])
    if rank == 0:
        (tmp / STATE).write_text(json.dumps(state, indent=2) + "\n")
        (tmp / CONFIG).write_text(config_yaml)
        if final.exists():  # the same step saved again (a resumed run that re-reached it)
            shutil.rmtree(final)
        tmp.rename(final)
        write_latest(ckpts, final.name)  # only after the rename: latest never names a partial save
        prune(ckpts, keep_last, keep_every)
    _barrier()
    return final


MODEL_SHAPE = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
               "num_attention_heads", "kv_heads", "tie_word_embeddings")


def check_compatible(saved: dict[str, Any], cfg, manifest_sha: str, layout, reshard: bool) -> None:
    """Refuse a checkpoint of another model shape, other data, another plugin or an unsupported
    change of the rank layout, saying which setting differs."""
    from ominix.config import ModelConfig

    then = ModelConfig.model_validate(saved["model"])
    for key in MODEL_SHAPE:
        if getattr(then, key) != getattr(cfg.model, key):
            name = "num_key_value_heads" if key == "kv_heads" else key
            raise OminixError(
                f"the checkpoint has model.{name}={getattr(then, key)}, this run {getattr(cfg.model, key)}",
                "resume with the model config the checkpoint was trained with, or --resume never",
            )
    if saved["data_manifest_sha256"] != manifest_sha:
        raise OminixError(
            "the checkpoint was trained on other prepared data (data manifest sha256 differs)",
            "resume with the same data.path, or start fresh with --resume never",
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
