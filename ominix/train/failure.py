"""How a worker's error reaches the user, in a worker process and in-process alike: its traceback
appended to ``RUN_DIR/train.log``, and the error as an ``OminixError`` (one line and a hint)."""

from __future__ import annotations

import traceback
from pathlib import Path

from ominix.errors import OminixError, os_error


def log_traceback(run_dir: str | Path, rank: int | str) -> None:
    """Append the traceback being handled to the run's log (the console shows two lines only); on a
    full or unwritable disk the log is left as it is, and the error is still reported."""
    log = Path(run_dir) / "train.log"
    if log.parent.is_dir():
        try:
            with log.open("a") as f:
                f.write(f"traceback (rank {rank}):\n{traceback.format_exc()}")
        except OSError:
            pass


def as_ominix_error(exc: Exception, run_dir: str | Path) -> OminixError:
    """``exc`` as the error the CLI renders: an ``OminixError`` as it is, an ``OSError`` as its path
    and what to do, anything else as its type and message with a hint that points at the traceback
    in the run's log."""
    if isinstance(exc, OminixError):
        return exc
    if isinstance(exc, OSError):  # a permission, a name, a disk: the path and what to do say it all
        return os_error(exc)
    return OminixError(f"{type(exc).__name__}: {exc}", f"the traceback is in {Path(run_dir) / 'train.log'}",
                       exit_code=1)
