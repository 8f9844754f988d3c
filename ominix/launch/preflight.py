"""What can be checked from the config and the prepared data's manifest alone, checked in the
launcher before any process starts (the workers check again, for a worker started by hand):
prepared data at ``data.path``, its seq_len and vocabulary against the config, and the resume
target (exists, is a checkpoint, fits this model, data and rank layout)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ominix.errors import OminixError

if TYPE_CHECKING:
    from ominix.config import OminixConfig


def check_data(cfg: OminixConfig) -> dict:
    """The manifest of ``data.path``, refused when its blocks or token ids do not fit the config."""
    from ominix.data.store import read_manifest

    if cfg.data.path is None or not (Path(cfg.data.path) / "manifest.json").is_file():
        raise OminixError(
            f"no prepared data at {cfg.data.path}" if cfg.data.path else "no prepared data: data.path is not set",
            "run `ominix data prepare ... --out DIR`, then pass --data DIR",
        )
    manifest = read_manifest(cfg.data.path)
    if manifest["seq_len"] != cfg.data.seq_len:
        raise OminixError(
            f"{cfg.data.path} holds blocks of seq_len {manifest['seq_len']}, the config asks for {cfg.data.seq_len}",
            f"set data.seq_len={manifest['seq_len']} or prepare the data again",
        )
    vocab = manifest["tokenizer"]["vocab_size"]
    if vocab > cfg.model.vocab_size:
        raise OminixError(
            f"{cfg.data.path} was tokenized with {vocab} token ids, model.vocab_size is {cfg.model.vocab_size}",
            f"set --set model.vocab_size={vocab} (or more), or prepare the data with a tokenizer of "
            f"at most {cfg.model.vocab_size} ids",
        )
    return manifest


def resume_target(cfg: OminixConfig) -> Path | None:
    """The checkpoint this run will resume from (None: a fresh start); a missing or broken
    target is an error (the checkpoint package words it)."""
    from ominix.checkpoint import latest_checkpoint, resolve_checkpoint

    choice = cfg.checkpoint.resume
    if choice == "never":
        return None
    if choice == "auto":
        return latest_checkpoint(cfg.logging.run_dir)
    return resolve_checkpoint(choice)


def preflight(cfg: OminixConfig, world_size: int | None) -> None:
    """Every check of this module; with ``world_size`` known, also that the resume target can be
    loaded on that many ranks."""
    from ominix.checkpoint import check_compatible, read_state
    from ominix.data.store import manifest_sha256
    from ominix.plugins import PLUGINS
    from ominix.train.engine import derive_layout

    check_data(cfg)
    resume = resume_target(cfg)
    if resume is not None and world_size is not None:
        check_compatible(read_state(resume), cfg, manifest_sha256(cfg.data.path), derive_layout(cfg, world_size),
                         PLUGINS[cfg.parallel.plugin].reshard)
