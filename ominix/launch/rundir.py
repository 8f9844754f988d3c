"""The run directory during a launch: locked before anything is written into it (see ``lock``),
config.yaml written under the lock, and left as it was found when the launch is refused before
training started.

A refusal is an error raised before config.yaml was written (bad hosts, a held lock), or exit code
2 (bad input, from the launcher or a worker) while no step was recorded (metrics.jsonl and the
checkpoints unchanged). Then what this launch added is removed (the directory itself, if it made
it) and a config.yaml it replaced is put back; nothing that was there before is removed.

A new run (``checkpoint.resume`` never) is refused in a directory that holds a run already
(checkpoints or metrics): its steps would mix with the old ones. ``restart`` first moves that run's
files into ``RUN_DIR/previous/TIME/`` (deleting nothing; the data or weights the new run reads stay).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ominix.atomic import check_run_dir
from ominix.errors import OminixError
from ominix.launch.events import Outcome
from ominix.launch.lock import LOCK_NAME, RunLock
from ominix.launch.slurm import refuse_if_queued

if TYPE_CHECKING:
    from ominix.config import OminixConfig

EXIT_BAD_INPUT = 2
PREVIOUS = "previous"  # RUN_DIR/previous/TIME/: an earlier run moved aside by --resume restart


def _progress(run_dir: Path) -> tuple[int, list[str]]:
    """What only training writes: the size of metrics.jsonl and the checkpoints' names."""
    metrics = run_dir / "metrics.jsonl"
    ckpts = run_dir / "checkpoints"
    return (metrics.stat().st_size if metrics.is_file() else -1,
            sorted(os.listdir(ckpts)) if ckpts.is_dir() else [])


def _contains(outer: Path, inner: Path) -> bool:
    return inner == outer or outer in inner.parents


class RunDir:
    """``with RunDir(cfg, notice) as rd: rd.write_config(); ...; return rd.finish(outcome)``."""

    def __init__(self, cfg: OminixConfig, notice: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.path = Path(cfg.logging.run_dir)
        self.notice = notice
        self.lock = RunLock(self.path)
        self.config_written = False
        self.code: int | None = None

    def __enter__(self) -> RunDir:
        check_run_dir(self.path)
        self.existed = self.path.exists()
        # the outermost directory this launch creates (runs/ of runs/default): removed on a refusal
        self.created = next((d for d in [*reversed(self.path.absolute().parents), self.path.absolute()]
                             if not d.exists()), None)
        if self.existed and not self.path.is_dir():
            raise OminixError(f"--out {self.path} is a file, not a directory",
                              "choose a directory for the run (it is created if missing)")
        self.path.mkdir(parents=True, exist_ok=True)
        self.before = set(os.listdir(self.path))
        try:
            self.lock.acquire(self.notice)
        except BaseException:
            if self.created is not None:  # only empty directories: another launch may hold the lock
                for d in [self.path.absolute(), *self.path.absolute().parents]:
                    with contextlib.suppress(OSError):
                        d.rmdir()
                    if d == self.created:
                        break
            raise
        try:
            refuse_if_queued(self.path)  # a SLURM job of this run directory that has not started yet
            self._start_fresh()
        except BaseException:
            self.lock.release()
            raise
        config = self.path / "config.yaml"
        self.old_config = config.read_bytes() if config.is_file() else None
        self.progress = _progress(self.path)
        return self

    def _start_fresh(self) -> None:
        """Refuse a new run over an earlier one (``resume: never``) or move the earlier one aside
        (``restart``); called under the lock."""
        size, checkpoints = _progress(self.path)
        if not self.cfg.checkpoint.starts_fresh or (size <= 0 and not checkpoints):
            return
        held = ", ".join([*(["checkpoints"] if checkpoints else []), *(["metrics.jsonl"] if size > 0 else [])])
        if self.cfg.checkpoint.resume == "never":
            raise OminixError(f"--out {self.path} already holds a run ({held}); --resume never would mix a new "
                              "run's steps into it",
                              "continue it with --resume auto, choose another --out, or pass --resume restart "
                              f"to move it into {self.path / PREVIOUS}/ and start over")
        names = sorted(self.before - {LOCK_NAME, PREVIOUS})
        for read in (Path(p).absolute() for p in (self.cfg.data.path, self.cfg.model.init_from) if p):
            inside = next((n for n in names if _contains((self.path / n).absolute(), read)), None)
            if inside is not None:  # moving it would pull the new run's input away; leaving it, mix the runs
                raise OminixError(f"--resume restart would move {self.path / inside}, which holds {read} that "
                                  "the new run reads", f"move {read} out of {self.path} first, or choose another --out")
        aside = self.path / PREVIOUS / f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{os.getpid()}"
        aside.mkdir(parents=True)
        for name in names:
            (self.path / name).rename(aside / name)
        self.before = set(os.listdir(self.path))
        self.notice(f"note: the earlier run in {self.path} was moved into {aside} (--resume restart)")

    def write_config(self, cfg: OminixConfig | None = None) -> None:
        """Write the resolved config the workers read (RUN_DIR/config.yaml): ``cfg`` (the claimed
        one with what the processes resolved, e.g. the global batch), else the claimed one; its
        data paths absolute, so later stages find them from any directory."""
        from ominix.config import save_config
        from ominix.data.recorded import recorded_paths

        save_config(recorded_paths(cfg or self.cfg), self.path / "config.yaml")
        self.config_written = True

    def finish(self, outcome: Outcome) -> Outcome:
        self.code = outcome.code
        return outcome

    def __exit__(self, kind, exc, tb) -> None:
        refused = self.code == EXIT_BAD_INPUT or (exc is not None and (
            not self.config_written or getattr(exc, "exit_code", None) == EXIT_BAD_INPUT))
        try:
            if refused and _progress(self.path) == self.progress:
                self._undo()  # while the lock is still held: a launch waiting for it must not lose files
        finally:
            self.lock.release()

    def _undo(self) -> None:
        if self.created is not None:
            shutil.rmtree(self.created, ignore_errors=True)
            return
        for name in set(os.listdir(self.path)) - self.before:
            item = self.path / name
            if item.is_dir() and not item.is_symlink():
                shutil.rmtree(item, ignore_errors=True)
            else:
                item.unlink(missing_ok=True)
        if self.old_config is not None:
            (self.path / "config.yaml").write_bytes(self.old_config)
