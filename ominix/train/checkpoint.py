"""Checkpoints: one directory per step, written under a temporary name and renamed, and a ``latest`` pointer.

```
RUN_DIR/checkpoints/
  step_00000050/
    model/            full weights with Hugging Face names, sharded safetensors (+ index)
    optimizer/        optimizer state (sharded or one file, as the plugin can load it back)
    scheduler.pt      learning-rate scheduler state
    rng/rank_00000.pt RNG states of every rank (python, numpy, torch, cuda)
    data/rank_00000.pt data-loader position of every rank
    state.json        step, tokens seen, last loss, world size, data manifest sha256, model config
    config.yaml       the resolved config of the run that wrote it
  latest              text file: name of the newest complete checkpoint directory
```

``latest`` is replaced atomically (write a temporary file, then rename), and only after the
checkpoint directory itself was renamed into place, so a killed process never leaves a ``latest``
that points at something incomplete.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

from ominix.errors import OminixError

STEP_RE = re.compile(r"^step_(\d{8})$")
LATEST = "latest"
STATE = "state.json"


def step_name(step: int) -> str:
    return f"step_{step:08d}"


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def is_checkpoint(path: Path) -> bool:
    return (path / STATE).is_file() and (path / "model").is_dir()


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint named by ``RUN_DIR/checkpoints/latest``, or None when there is none yet."""
    return _follow_latest(checkpoints_dir(run_dir))


def _follow_latest(ckpts: Path) -> Path | None:
    pointer = ckpts / LATEST
    if not pointer.is_file():
        return None
    target = ckpts / pointer.read_text().strip()
    if not is_checkpoint(target):
        raise OminixError(
            f"{pointer} names {target.name}, which is not a complete checkpoint",
            f"point {pointer} at an existing step_* directory, or resume with --resume PATH",
        )
    return target


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a run directory (its latest), a checkpoints/ dir, or itself."""
    path = Path(path)
    if is_checkpoint(path):
        return path
    for ckpts in (path / "checkpoints", path):
        found = _follow_latest(ckpts)
        if found is not None:
            return found
    if not path.exists():
        raise OminixError(f"{path} does not exist", "give a run directory or a checkpoints/step_* directory")
    raise OminixError(
        f"{path} is neither a checkpoint nor a run directory with checkpoints/{LATEST}",
        "give a run directory that has saved a checkpoint, or a checkpoints/step_* directory",
    )


def read_state(ckpt_dir: Path) -> dict[str, Any]:
    return json.loads((ckpt_dir / STATE).read_text())


def load_model_state(ckpt_dir: str | Path) -> dict[str, Any]:
    """All weights of a checkpoint (``model/*.safetensors``) as one dict of CPU tensors, HF names."""
    from safetensors.torch import load_file

    files = sorted((Path(ckpt_dir) / "model").glob("*.safetensors"))
    if not files:
        raise OminixError(
            f"{ckpt_dir}/model holds no .safetensors files", "give a complete checkpoint directory"
        )
    state: dict[str, Any] = {}
    for file in files:
        state.update(load_file(str(file)))
    return state


# --- saving and loading (every rank calls these; rank 0 writes the shared files) -------------------


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
    """Write ``checkpoints/step_N`` (temporary name, then rename), point ``latest`` at it, prune."""
    import torch

    ckpts = checkpoints_dir(run_dir)
    name = step_name(state["step"])
    tmp = ckpts / f".{name}.tmp-save"  # the same name on every rank: they all write into it
    booster, rank = engine.booster, engine.rank
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a process killed while saving
        for sub in ("model", "optimizer", "rng", "data"):
            (tmp / sub).mkdir(parents=True)
    _barrier()
    booster.save_model(engine.model, str(tmp / "model"), shard=True, use_safetensors=True)
    if save_optimizer:
        if engine.spec.shard_optimizer:
            booster.save_optimizer(engine.optimizer, str(tmp / "optimizer"), shard=True)
        else:  # one file, written by rank 0 (DDP's sharded optimizer cannot be loaded back on CPU)
            booster.save_optimizer(engine.optimizer, str(tmp / "optimizer" / "optimizer.pt"), shard=False)
    booster.save_lr_scheduler(engine.scheduler, str(tmp / "scheduler.pt"))
    torch.save(_rng_state(), tmp / "rng" / f"rank_{rank:05d}.pt")
    (tmp / "data" / f"rank_{rank:05d}.json").write_text(json.dumps(loader.state_dict()))
    _barrier()
    final = ckpts / name
    if rank == 0:
        (tmp / STATE).write_text(json.dumps(state, indent=2) + "\n")
        (tmp / "config.yaml").write_text(config_yaml)
        if final.exists():  # the same step saved again (a resumed run that re-reached it)
            shutil.rmtree(final)
        tmp.rename(final)
        pointer = ckpts / f".{LATEST}.tmp"
        pointer.write_text(name + "\n")
        os.replace(pointer, ckpts / LATEST)
        prune(ckpts, keep_last, keep_every)
    _barrier()
    return final


def prune(ckpts: Path, keep_last: int, keep_every: int) -> list[Path]:
    """Delete checkpoints that are neither among the newest ``keep_last`` nor at a multiple of
    ``keep_every``; the one ``latest`` names is always kept."""
    found = sorted((int(m.group(1)), p) for p in ckpts.iterdir() if (m := STEP_RE.match(p.name)))
    latest = (ckpts / LATEST).read_text().strip() if (ckpts / LATEST).is_file() else None
    newest = {p for _, p in found[-keep_last:]}
    removed = []
    for step, path in found:
        if path in newest or path.name == latest or (keep_every and step % keep_every == 0):
            continue
        shutil.rmtree(path)
        removed.append(path)
    return removed


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
    booster.load_model(engine.model, str(ckpt / "model"))
    if load_optimizer:
        opt = ckpt / "optimizer"
        booster.load_optimizer(engine.optimizer, str(opt if engine.spec.shard_optimizer else opt / "optimizer.pt"))
    booster.load_lr_scheduler(engine.scheduler, str(ckpt / "scheduler.pt"))
    rng = ckpt / "rng" / f"rank_{engine.rank:05d}.pt"
    if rng.is_file() and read_state(ckpt)["world_size"] == engine.layout.world_size:
        _set_rng_state(torch.load(rng, weights_only=False))
    data = ckpt / "data" / f"rank_{engine.rank:05d}.json"
    # every rank's position is the same global one: any rank's file serves under another rank count
    loader.load_state_dict(json.loads((data if data.is_file() else ckpt / "data" / "rank_00000.json").read_text()))
