"""The hang watchdog of a worker: when the loop has made no progress (a step, an evaluation, a
checkpoint save) for ``launch.hang_timeout`` seconds, the rank writes every thread's stack to
``RUN_DIR/hang/rank_NNNNN.txt``, says so in two lines on stderr and in train.log, and exits with
:data:`EXIT_HUNG`, which the launcher treats as a fault (it restarts when ``launch.max_restarts``
allows).

A frozen node (its processes stopped) cannot report anything itself: the ranks of the other nodes
wait for it in a collective, their watchdogs fire, and the launcher then kills what is left of
the frozen node (``ominix.launch.multinode``). A thread is what can still act while the main
thread sits in a collective; the exit is ``os._exit`` because a hung collective never returns to
let the interpreter unwind.
"""

from __future__ import annotations

import contextlib
import faulthandler
import math
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from ominix import console
from ominix.errors import OminixError

EXIT_HUNG = 124  # as timeout(1) says "timed out"
HANG_DIR = "hang"
CHECK_EVERY_S = 5.0  # at most; a short timeout is checked four times within it


def stacks_file(run_dir: str | Path, rank: int) -> Path:
    return Path(run_dir) / HANG_DIR / f"rank_{rank:05d}.txt"


class Watchdog:
    """``arm(rank)`` once setup is done, ``beat()`` at each sign of progress, ``close()`` always
    (an in-process run must not be ended later by a watchdog of a run that already returned)."""

    def __init__(self, run_dir: str | Path, timeout_s: float) -> None:
        self.run_dir, self.timeout_s = Path(run_dir), timeout_s
        self.last = time.monotonic()
        self.done = threading.Event()

    def arm(self, rank: int) -> None:
        if not self.timeout_s:
            return
        self.beat()
        threading.Thread(target=self._watch, args=(rank,), daemon=True,
                         name="ominix-hang-watchdog").start()

    def beat(self) -> None:
        self.last = time.monotonic()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """No watchdog while the block runs: work with a time bound of its own (downstream tasks on
        rank 0, which the other ranks wait for on a group with its own timeout)."""
        self.last = math.inf
        try:
            yield
        finally:
            self.beat()

    def close(self) -> None:
        self.done.set()

    def _watch(self, rank: int) -> None:
        while not self.done.wait(min(CHECK_EVERY_S, self.timeout_s / 4)):
            idle = time.monotonic() - self.last
            if idle > self.timeout_s:
                self._fire(rank, idle)

    def _fire(self, rank: int, idle: float) -> None:
        path = stacks_file(self.run_dir, rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as fh:
            fh.write(f"rank {rank}: no progress for {idle:.1f} s "
                     f"(launch.hang_timeout {self.timeout_s:g})\n")
            fh.flush()
            faulthandler.dump_traceback(fh, all_threads=True)
        message = (f"no step for {idle:.1f} s (launch.hang_timeout {self.timeout_s:g}): this rank "
                   f"or another is hung; stacks in {path}")
        hint = ("a frozen node or a stuck collective; raise launch.hang_timeout if a step, eval or "
                "save takes longer")
        console.report_error(OminixError(message, hint), rank)
        with (self.run_dir / "train.log").open("a") as log:
            log.write(f"rank {rank}: {message}\n")
        os._exit(EXIT_HUNG)
