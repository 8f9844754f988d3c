"""Where a checkpoint's parts are: step directory names, the ``latest`` pointer, state.json.

This module is the only place that spells the layout; every other module asks it (which
checkpoints are complete is :mod:`ominix.checkpoint.discovery`'s).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from ominix.errors import OminixError

CHECKPOINTS = "checkpoints"  # RUN_DIR/checkpoints holds the step directories and the pointer
LATEST = "latest"
STATE = "state.json"
CONFIG = "config.yaml"
MODEL = "model"
OPTIMIZER = "optimizer"
SCHEDULER = "scheduler.pt"
RNG = "rng"
DATA = "data"
TOKENIZER = "tokenizer"  # the tokenizer the weights were trained with, copied from the prepared data
RECORD = "integrity.json"  # size and sha256 of every other file of the checkpoint, written last
STAGING = ".tmp-save"  # suffix of a checkpoint being written
ASIDE = ".old-save"  # suffix of a checkpoint moved aside while the same step is saved again
DELETING = ".deleting"  # suffix of a checkpoint that retention is deleting (renamed first, then removed)
STEP_GLOB = "step_*"  # for messages: how a user recognises a step directory
_STEP = re.compile(r"^step_(\d{8,})$")


def step_name(step: int) -> str:
    return f"step_{step:08d}"


def parse_step(name: str) -> int | None:
    """The step of a step directory's name, or None for any other name (temporary names included)."""
    match = _STEP.match(name)
    return int(match.group(1)) if match and step_name(int(match.group(1))) == name else None


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def run_dir_of(ckpt: Path) -> Path:
    """The run directory a checkpoint directory belongs to."""
    return ckpt.parent.parent


def staging_dir(ckpts: Path, step: int) -> Path:
    """The temporary name a checkpoint is written under; the same on every rank."""
    return ckpts / f".{step_name(step)}{STAGING}"


def aside_dir(ckpts: Path, step: int) -> Path:
    """Where an existing checkpoint of the same step is moved while a new one replaces it."""
    return ckpts / f".{step_name(step)}{ASIDE}"


def scratch_dirs(ckpts: Path, suffix: str) -> list[tuple[int, Path]]:
    """The ``STAGING``, ``ASIDE`` or ``DELETING`` directories in ``ckpts`` with their steps."""
    if not ckpts.is_dir():
        return []
    found = ((parse_step(p.name[1:-len(suffix)]), p) for p in ckpts.glob(f".step_*{suffix}"))
    return sorted((step, p) for step, p in found if step is not None and p.name == f".{step_name(step)}{suffix}")


def rank_file(ckpt: Path, part: str, rank: int, suffix: str) -> Path:
    """``rng/rank_00000.pt`` or ``data/rank_00000.json`` of one rank."""
    return ckpt / part / f"rank_{rank:05d}{suffix}"


def files_under(path: Path) -> list[Path]:
    """Every regular file under ``path`` (or ``path`` itself), sorted; temporary names skipped."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and ".tmp" not in p.name)


def read_state(ckpt_dir: Path) -> dict[str, Any]:
    file = ckpt_dir / STATE
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise OminixError(f"{file} is not valid JSON ({exc.msg} at line {exc.lineno})",
                          "regenerate it with the ominix command that wrote it") from exc


def step_dirs(ckpts: Path) -> list[tuple[int, Path]]:
    """Every step directory in ``ckpts``, complete or not, oldest first."""
    if not ckpts.is_dir():
        return []
    found = ((parse_step(p.name), p) for p in ckpts.iterdir() if p.is_dir())
    return sorted((step, p) for step, p in found if step is not None)


def latest_name(ckpts: Path) -> str | None:
    """What the ``latest`` pointer holds (a step directory's name unless damaged: bytes that are not
    UTF-8 are replaced, so a caller can quote it), or None when there is no pointer."""
    pointer = ckpts / LATEST
    return pointer.read_bytes()[:200].decode("utf-8", "replace").strip() if pointer.is_file() else None


def write_latest(ckpts: Path, name: str) -> None:
    """Point ``latest`` at ``name`` atomically (temporary file, then rename)."""
    tmp = ckpts / f".{LATEST}.tmp"
    tmp.write_text(name + "\n")
    os.replace(tmp, ckpts / LATEST)
