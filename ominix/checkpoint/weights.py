"""How weights are read: the safetensors of a checkpoint's ``model/`` or of a Hugging Face export,
following ``model.safetensors.index.json`` when there is one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ominix.checkpoint.layout import MODEL, is_checkpoint
from ominix.errors import OminixError

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


def has_weights(path: Path) -> bool:
    """Whether ``path`` holds Hugging Face weights (one file or an index)."""
    return (path / SINGLE).is_file() or (path / INDEX).is_file()


def weights_dir(path: Path) -> Path:
    """The directory of the weight files: a checkpoint's ``model/``, else ``path`` itself."""
    return path / MODEL if is_checkpoint(path) else path


def weight_files(path: Path) -> list[Path]:
    """The weight files of ``path`` (checkpoint or weights directory): those the index names, else
    ``model.safetensors``, else every ``*.safetensors``."""
    weights = weights_dir(path)
    index = weights / INDEX
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [weights / name for name in names]
    if (weights / SINGLE).is_file():
        return [weights / SINGLE]
    return sorted(weights.glob("*.safetensors"))


def read_weights(path: Path) -> dict[str, Any]:
    """All tensors of a checkpoint or a (sharded) safetensors directory, on the CPU, HF names."""
    from safetensors.torch import load_file

    files = weight_files(Path(path))
    if not files:
        raise OminixError(f"{weights_dir(Path(path))} holds no .safetensors files",
                          "give a complete checkpoint directory or export")
    state: dict[str, Any] = {}
    for file in files:
        if not file.is_file():
            raise OminixError(f"{file} is missing", "the checkpoint or export is incomplete; write it again")
        state.update(load_file(file))
    return state
