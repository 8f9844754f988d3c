"""Which checkpoints are kept: one rule, used both to prune after a save and to show ``kept`` in
``ominix checkpoint list``; making room before a save; clearing what a killed save left.

Retention counts and deletes complete checkpoints only (``is_checkpoint``): a stray or half-written
step directory is not one of the newest N, so it never pushes a good checkpoint out, and it is
not deleted either (OminiX did not write it as a checkpoint)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ominix.checkpoint.integrity import is_checkpoint
from ominix.checkpoint.layout import (
    ASIDE, CHECKPOINTS, DELETING, STAGING, STATE, checkpoints_dir, latest_name, parse_step, read_state,
    scratch_dirs, step_dirs, step_name,
)
from ominix.config import load_config
from ominix.errors import OminixError


def kept_because(steps: list[int], latest: int | None, keep_last: int, keep_every: int) -> dict[int, list[str]]:
    """Why each of ``steps`` (oldest first) is kept: "latest" (the pointer names it), "last N" (among
    the newest ``keep_last``), "every K" (a multiple of ``keep_every``); an empty list means the
    next save removes it."""
    newest = set(steps[-keep_last:])
    reasons = {}
    for step in steps:
        rules = (("latest", step == latest), (f"last {keep_last}", step in newest),
                 (f"every {keep_every}", bool(keep_every) and step % keep_every == 0))
        reasons[step] = [reason for reason, holds in rules if holds]
    return reasons


def _complete(ckpts: Path) -> list[tuple[int, Path]]:
    return [(step, path) for step, path in step_dirs(ckpts) if is_checkpoint(path)]


def _kept(ckpts: Path, keep_last: int, keep_every: int) -> list[tuple[int, Path, list[str]]]:
    found = _complete(ckpts)
    name = latest_name(ckpts)
    reasons = kept_because([step for step, _ in found], parse_step(name) if name else None, keep_last, keep_every)
    return [(step, path, reasons[step]) for step, path in found]


def _delete(path: Path) -> None:
    """Remove the checkpoint ``path`` as one step: it is renamed out of the step names first, so a
    process killed while deleting leaves a scratch directory (cleared before the next save), never a
    half-deleted ``step_*`` directory that would look incomplete and be kept for ever."""
    doomed = path.with_name(f".{path.name}{DELETING}")
    if doomed.exists():
        shutil.rmtree(doomed)
    path.rename(doomed)
    shutil.rmtree(doomed)


def prune(ckpts: Path, keep_last: int, keep_every: int) -> list[Path]:
    """Delete the checkpoints in ``ckpts`` that no retention rule keeps; returns what was removed."""
    removed = []
    for _, path, reasons in _kept(ckpts, keep_last, keep_every):
        if not reasons:
            _delete(path)
            removed.append(path)
    return removed


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def make_room(ckpts: Path, step: int, keep_last: int, keep_every: int) -> list[Path]:
    """Before saving ``step``: when the disk has less free space than the newest checkpoint takes,
    delete the oldest checkpoints that the save would prune anyway, until it has (never the one
    ``latest`` names, so a failed save still leaves it). Returns what was removed."""
    found = _complete(ckpts)
    if not found:
        return []
    need, free = _size(found[-1][1]), shutil.disk_usage(ckpts).free
    name = latest_name(ckpts)
    latest = parse_step(name) if name else None
    after = kept_because(sorted({s for s, _ in found} | {step}), step, keep_last, keep_every)
    removed = []
    for old, path in found:
        if free >= need:
            break
        if not after[old] and old != latest:
            free += _size(path)
            _delete(path)
            removed.append(path)
    return removed


def finish_overwrites(ckpts: Path) -> list[str]:
    """Complete what a process killed while replacing a checkpoint left: the old copy moved aside
    is deleted when the new one is in place, else put back. Returns a notice per restored one."""
    notices = []
    for step, aside in scratch_dirs(ckpts, ASIDE):
        final = ckpts / step_name(step)
        if final.exists():
            shutil.rmtree(aside)
        else:
            aside.rename(final)
            notices.append(f"restored {final.name}, which a killed save was replacing")
    return notices


def clear_scratch(ckpts: Path) -> None:
    """Before a save: delete what killed saves left under temporary names (one run writes a run
    directory, so every other temporary is stale) and finish interrupted overwrites."""
    for _, tmp in [*scratch_dirs(ckpts, STAGING), *scratch_dirs(ckpts, DELETING)]:
        shutil.rmtree(tmp)
    finish_overwrites(ckpts)


def list_checkpoints(run_dir: str | Path) -> list[dict[str, Any]]:
    """One entry per step directory of ``run_dir`` (oldest first): name, path, step, tokens seen,
    loss, bytes, and ``kept``: why the retention rules of the run's config keep it, or "" when the
    next save will remove it (an incomplete directory says so: retention leaves it alone).
    Temporary directories of an unfinished save are not listed."""
    run_dir = Path(run_dir)
    config_file = run_dir / "config.yaml"
    if not config_file.is_file() or not checkpoints_dir(run_dir).is_dir():
        raise OminixError(f"{run_dir} is not a run directory with {CHECKPOINTS}",
                          "pass the logging.run_dir of a run, e.g. runs/tiny")
    rules = load_config(config_file).checkpoint
    ckpts = checkpoints_dir(run_dir)
    kept = {path: reasons for _, path, reasons in _kept(ckpts, rules.keep_last, rules.keep_every)}
    entries = []
    for step, path in step_dirs(ckpts):
        reasons = kept.get(path, ["incomplete, not counted or removed"])
        state = read_state(path) if (path / STATE).is_file() else {}
        entries.append({
            "name": path.name,
            "path": str(path),
            "step": state.get("step", step),
            "tokens_seen": state.get("tokens"),
            "loss": state.get("last_loss"),
            "bytes": _size(path),
            "kept": ", ".join(reasons),
        })
    return entries
