"""Whether prepared data fits a config: its blocks' seq_len and its token ids against the model, its
tokenizer file the one the manifest records, and a validation split when the run evaluates.
Checked by the launcher before any process starts, and again by a worker (one may be started by
hand)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ominix.errors import OminixError

if TYPE_CHECKING:
    from ominix.config import OminixConfig


def check_fits(cfg: OminixConfig) -> dict:
    """The manifest of ``data.path``, refused when its blocks or token ids do not fit the config."""
    from ominix.data.store import check_tokenizer, read_manifest

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
    if cfg.data.verify:
        check_tokenizer(Path(cfg.data.path), manifest)
    held_out = manifest["splits"].get("validation", {}).get("blocks", 0)
    if cfg.schedule.eval_every and not held_out:
        raise OminixError(
            f"{cfg.data.path} holds no validation blocks, and the run evaluates every "
            f"{cfg.schedule.eval_every} steps",
            "set schedule.eval_every=0, or prepare the data with a larger data.val_fraction",
        )
    return manifest
