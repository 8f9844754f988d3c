"""Which checkpoint a run resumes from: the one ``latest`` names when it is whole, else the newest
older one that is, with a notice for each checkpoint passed over and why."""

from __future__ import annotations

from pathlib import Path

from ominix.checkpoint.integrity import problem
from ominix.checkpoint.layout import (
    CHECKPOINTS, LATEST, RECORD, STATE, STEP_GLOB, checkpoints_dir, latest_name, parse_step, step_dirs,
)
from ominix.checkpoint.retention import finish_overwrites
from ominix.errors import OminixError

_ELSEWHERE = ("start over with --resume restart (the earlier run is moved into RUN_DIR/previous/), or resume "
              "from another checkpoint with --resume PATH")


def resumable(path: str | Path, verify: str = "sizes", required: bool = False,
              repair: bool = True) -> tuple[Path | None, list[str]]:
    """The checkpoint to resume from, and notices (one line each) about what was passed over.

    ``path`` is a run directory or its ``checkpoints/``: ``latest`` is tried first, then older
    checkpoints newest first, and the first one without a :func:`~ominix.checkpoint.integrity.problem`
    (``verify``: "sizes" or "full") is chosen; None when no checkpoint was saved yet. ``path`` may
    also be one checkpoint directory, which is used as it is or refused when damaged. Raises
    OminixError when checkpoints exist but none is usable, or (``required``) when there is none.
    ``repair`` completes overwrites a killed save left half done; a check from outside the run
    (the launcher, before it holds the run directory's lock) passes False and changes nothing."""
    path = Path(path)
    if required and not path.exists():
        raise OminixError(f"{path} does not exist", f"give a run directory or a {CHECKPOINTS}/{STEP_GLOB} directory")
    if parse_step(path.name) is not None or (path / STATE).is_file() or (path / RECORD).is_file():
        why = problem(path, verify)
        if why is not None:
            raise OminixError(f"checkpoint {path} is damaged ({why})",
                              f"resume from the newest good checkpoint with --resume auto; or {_ELSEWHERE}")
        return path, []
    ckpts = checkpoints_dir(path) if checkpoints_dir(path).is_dir() else path
    notices = finish_overwrites(ckpts) if repair else []
    found = step_dirs(ckpts)
    name = latest_name(ckpts)
    if name is None and not found:
        if required:
            raise OminixError(f"{path} holds no checkpoint",
                              f"give a run directory that has saved a checkpoint, or a {CHECKPOINTS}/{STEP_GLOB} "
                              "directory")
        return None, notices
    newest = parse_step(name) if name else None
    passed = []  # "what was wrong" of each checkpoint passed over, newest first
    if newest is None:  # no pointer, or one naming no step directory: every checkpoint is a candidate
        passed.append(f"{ckpts / LATEST} is missing" if name is None else f"{ckpts / LATEST} names {name!r}")
    elif not (ckpts / name).is_dir():
        passed.append(f"{ckpts / LATEST} names {name}, which does not exist")
    # checkpoints newer than latest are saves that were never published (or a run that went back)
    for _, candidate in reversed([(s, p) for s, p in found if newest is None or s <= newest]):
        why = problem(candidate, verify)
        if why is None:
            return candidate, notices + [f"{what}; resuming from {candidate.name}" for what in passed]
        passed.append(f"checkpoint {candidate.name} is damaged ({why})")
    raise OminixError(f"no usable checkpoint in {ckpts}: " + "; ".join(passed), _ELSEWHERE)
