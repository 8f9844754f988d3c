"""Which checkpoints a run has: the one ``latest`` names, a checkpoint from whatever path a user
gives, every complete one in order. "Complete" is :func:`~ominix.checkpoint.integrity.is_checkpoint`
everywhere: the rule resume, retention, export and the release bundle share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ominix.checkpoint.integrity import is_checkpoint, problem
from ominix.checkpoint.layout import (
    CHECKPOINTS, LATEST, MODEL, OPTIMIZER, SCHEDULER, STATE, STEP_GLOB, checkpoints_dir, files_under,
    latest_name, parse_step, read_state, step_dirs,
)
from ominix.errors import OminixError


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint named by ``RUN_DIR/checkpoints/latest``, or None when there is none yet."""
    return _follow_latest(checkpoints_dir(run_dir))


def _follow_latest(ckpts: Path) -> Path | None:
    name = latest_name(ckpts)
    if name is None:
        return None
    if parse_step(name) is None:
        raise OminixError(f"{ckpts / LATEST} holds {name[:40]!r}, not the name of a {STEP_GLOB} "
                          "directory",
                          f"write the newest complete one's name into it (echo step_00000100 > "
                          f"{ckpts / LATEST}), or resume with --resume auto, which passes over a "
                          "damaged pointer")
    target = ckpts / name
    if (why := problem(target)) is not None:
        raise OminixError(
            f"{ckpts / LATEST} names {target.name}, which is not a complete checkpoint ({why})",
            f"point {ckpts / LATEST} at an existing {STEP_GLOB} directory, or resume with "
            "--resume PATH",
        )
    return target


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a run directory (its latest), a checkpoints/ dir, or itself."""
    path = Path(path)
    if is_checkpoint(path):
        return path
    for ckpts in (path / CHECKPOINTS, path):
        found = _follow_latest(ckpts)
        if found is not None:
            return found
    if not path.exists():
        raise OminixError(f"{path} does not exist",
                          f"give a run directory or a {CHECKPOINTS}/{STEP_GLOB} directory")
    if (path / STATE).is_file() or (path / MODEL).is_dir():  # one checkpoint, not whole
        raise OminixError(f"checkpoint {path} is not complete ({problem(path)})",
                          f"give another {CHECKPOINTS}/{STEP_GLOB} directory, or the run directory")
    raise OminixError(
        f"{path} is neither a checkpoint nor a run directory with {CHECKPOINTS}/{LATEST}",
        f"give a run directory that has saved a checkpoint, or a {CHECKPOINTS}/{STEP_GLOB} directory",
    )


@dataclass
class Checkpoint:
    """One complete checkpoint directory and its state.json."""

    path: Path
    step: int
    state: dict[str, Any]

    @property
    def model_dir(self) -> Path:
        return self.path / MODEL

    @property
    def optimizer_dir(self) -> Path:
        return self.path / OPTIMIZER

    @property
    def scheduler_file(self) -> Path:
        return self.path / SCHEDULER

    @property
    def state_file(self) -> Path:
        return self.path / STATE

    def has_optimizer(self) -> bool:
        return self.optimizer_dir.is_dir() and any(files_under(self.optimizer_dir))


def complete_checkpoints(run_dir: Path) -> list[Checkpoint]:
    """Every checkpoint of ``run_dir`` up to the one ``latest`` names, oldest first (empty when
    there is none). A step directory newer than ``latest`` is the leftover of a save that never
    finished and is skipped; an incomplete one at or below it, or a ``latest`` naming no
    checkpoint, is an error."""
    ckpts = checkpoints_dir(run_dir)
    found = []
    for step, path in step_dirs(ckpts):
        if (why := problem(path)) is not None:
            raise OminixError(f"checkpoint {path} is incomplete ({why})",
                              "delete it, or resume training so that it is written again")
        found.append(Checkpoint(path, step, read_state(path)))
    name = latest_name(ckpts)
    if name is not None:
        newest = parse_step(name)
        found = [c for c in found if newest is not None and c.step <= newest]
        if not found or found[-1].path.name != name:
            raise OminixError(f"{ckpts / LATEST} names {name!r}, which is not a complete checkpoint",
                              f"point it at an existing {STEP_GLOB} directory")
    return found
