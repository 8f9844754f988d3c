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
    tokenizer/           the tokenizer of the prepared data (export, infer and eval read this copy)
    state.json           step, tokens seen, last loss, world size, data manifest sha256 and framing,
                         model config
    config.yaml          the resolved config of the run that wrote it
    integrity.json       size and sha256 of every other file, written last
  latest                 text file: name of the newest complete checkpoint directory
  .step_00000060.tmp-save   a checkpoint being written (or left by a killed save; the next save
                            deletes it)
  .step_00000050.old-save   the old copy of a step that is being saved again (deleted once the new
                            one is in place; put back when the save was killed in between)
```

A save: every rank writes into the temporary directory; rank 0 adds state.json, config.yaml and
tokenizer/; then the ranks hash the files (split by size, each rank a share) and rank 0 writes
integrity.json, renames the directory into place, and only then replaces ``latest`` atomically
(temporary file, then rename), so a killed process never leaves a ``latest`` that points at
something incomplete.
Before it starts, when the disk has less room than the newest checkpoint takes, the checkpoints the
save would prune anyway are deleted first (never the one ``latest`` names); a full disk during the
save is one OminixError, the temporary removed and ``latest`` untouched.

Why the hashes are computed inline, at the save: sha256 runs at 0.5-2 GB/s per core (1.9 GB/s with
SHA-NI on the EPYC CI machine, where the tiny preset's 15 MB checkpoint hashes in 18 ms of a 68 ms
save, the write going to the page cache). A 7B checkpoint with optimizer state is about 100 GB
(13 GB bf16 weights, 84 GB fp32 master weights and Adam moments): 50-200 s on one core, but 2-6 s
when the 32 ranks of 4 x 8 GPUs each hash their share of the files, which they just wrote and still
have in the page cache; writing the 100 GB takes 20-100 s at 1-5 GB/s. Hashing in a background
thread after the rename would save those seconds but leave a window where the newest checkpoint
has no record, and ``latest`` would have to wait for the thread (or name a checkpoint resume
cannot check): inline keeps one rule, "a step directory under its final name has its record".
(DDP writes its optimizer as one file, which one rank must hash alone; DDP does not fit a 7B model
anyway.)

Resume (:func:`resumable`) checks the record: sizes always (a stat per file), and the sha256 of
every file with ``checkpoint.verify: full`` (reads the whole checkpoint once, on rank 0). It takes
the checkpoint ``latest`` names, or when that one is damaged or missing the newest older good one,
with a notice naming what was passed over. A checkpoint without integrity.json (written before
records existed) is accepted when its state.json parses and its safetensors are as long as their
headers say.

Modules: ``layout`` (names, ``latest``, state.json), ``discovery`` (the latest checkpoint, the one
a path names, every complete one), ``retention`` (what is kept, prune, the listing), ``weights``
(reading safetensors), ``integrity`` (sha256 of files and of a model, and whether a checkpoint is
complete: the one rule),
``store`` (save and load through the ColossalAI booster; imports torch only when called),
``background`` (the save whose write, record, rename and ``latest`` happen in a thread),
``resume`` (which checkpoint a run resumes from).
"""

from ominix.checkpoint.background import BackgroundSave, SaveTiming
from ominix.checkpoint.discovery import (
    Checkpoint, complete_checkpoints, latest_checkpoint, resolve_checkpoint,
)
from ominix.checkpoint.integrity import checksums, is_checkpoint, model_checksum, problem
from ominix.checkpoint.layout import checkpoints_dir, files_under, read_state, run_dir_of, step_name
from ominix.checkpoint.resume import resumable
from ominix.checkpoint.retention import kept_because, list_checkpoints, prune
from ominix.checkpoint.store import check_compatible, load_checkpoint, save_checkpoint
from ominix.checkpoint.weights import has_weights, read_weights, weight_files, weights_dir

__all__ = [
    "BackgroundSave", "Checkpoint", "SaveTiming", "check_compatible", "checkpoints_dir", "checksums",
    "complete_checkpoints", "files_under",
    "has_weights", "is_checkpoint", "kept_because", "latest_checkpoint", "list_checkpoints", "load_checkpoint",
    "model_checksum", "problem", "prune", "read_state", "read_weights", "resolve_checkpoint", "resumable",
    "run_dir_of", "save_checkpoint",
    "step_name", "weight_files", "weights_dir",
]
