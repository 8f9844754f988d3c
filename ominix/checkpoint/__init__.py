"""Checkpoints: one directory per step, written under a temporary name and renamed, and a ``latest``
pointer. This package alone knows the layout; training, listing, export, infer, eval and the
release bundle ask it.

```
RUN_DIR/checkpoints/
  step_00000050/
    model/               full weights with Hugging Face names, sharded safetensors (+ index)
    optimizer/           optimizer state (sharded, or optimizer.pt, as the plugin can load it back)
    scheduler.pt         learning-rate scheduler state
    rng/rank_00000.pt    RNG states of every rank (python, numpy, torch, cuda)
    data/rank_00000.json data-loader position of every rank
    state.json           step, tokens seen, last loss, world size, data manifest sha256, model config
    config.yaml          the resolved config of the run that wrote it
  latest                 text file: name of the newest complete checkpoint directory
```

``latest`` is replaced atomically (write a temporary file, then rename), and only after the
checkpoint directory itself was renamed into place, so a killed process never leaves a ``latest``
that points at something incomplete.

Modules: ``layout`` (names, discovery, ``latest``, state.json), ``retention`` (what is kept, prune,
the listing), ``weights`` (reading safetensors), ``integrity`` (sha256 of files and of a model),
``store`` (save and load through the ColossalAI booster; imports torch only when called).
"""

from ominix.checkpoint.integrity import checksums, model_checksum
from ominix.checkpoint.layout import (
    Checkpoint, checkpoints_dir, complete_checkpoints, files_under, is_checkpoint, latest_checkpoint, read_state,
    resolve_checkpoint, run_dir_of, step_name,
)
from ominix.checkpoint.retention import kept_because, list_checkpoints, prune
from ominix.checkpoint.store import check_compatible, load_checkpoint, save_checkpoint
from ominix.checkpoint.weights import has_weights, read_weights, weight_files, weights_dir

__all__ = [
    "Checkpoint", "check_compatible", "checkpoints_dir", "checksums", "complete_checkpoints", "files_under",
    "has_weights", "is_checkpoint", "kept_because", "latest_checkpoint", "list_checkpoints", "load_checkpoint",
    "model_checksum", "prune", "read_state", "read_weights", "resolve_checkpoint", "run_dir_of", "save_checkpoint",
    "step_name", "weight_files", "weights_dir",
]
