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
