"""Relaunching a torchrun launch after a fault, so that a week-long run needs no one awake.

torchrun's own ``--max-restarts`` is not used: it restarts on any worker failure, a config error
included (which then fails the same way each time), it cannot tell a worker that was stopped by a
signal from one that crashed, and across nodes it restarts only the agents that are still alive,
whereas a lost or frozen node is exactly the fault to survive. So each attempt is a whole launch
(one torchrun on this machine, or one per node), and torchrun's rendezvous forms the group afresh each time.

A fault is any failure except bad input (exit code 2, from the launcher or a worker) and a stop
(SIGTERM, SIGINT, SIGHUP: the user or the scheduler asked). After a fault the launcher waits
``launch.restart_backoff`` seconds (doubled each further restart) and relaunches; the workers
resume from the newest good checkpoint (``checkpoint.resume`` becomes ``auto`` once the run has
saved one). Each fault is a line in train.log and a ``fault`` record in metrics.jsonl, with the
steps it lost (done since that checkpoint); after ``launch.max_restarts`` restarts the last fault
ends the launch with a summary of them all.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ominix.errors import OminixError
from ominix.launch.torchrun import stop_signals
from ominix.launch.events import Events
from ominix.launch.rundir import EXIT_BAD_INPUT
from ominix.train.watchdog import EXIT_HUNG

if TYPE_CHECKING:
    from ominix.config import OminixConfig

STOPPED = {128 + int(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}


def is_fault(code: int, error: OminixError | None) -> bool:
    """Whether a finished attempt failed by a fault worth a relaunch."""
    if code == 0 or code in STOPPED or code == EXIT_BAD_INPUT:
        return False
    return getattr(error, "worker_exit", None) not in (EXIT_BAD_INPUT, *STOPPED)


def _describe(code: int) -> str:
    if code == EXIT_HUNG:
        return "a rank made no step within launch.hang_timeout; its stacks are in RUN_DIR/hang/"
    return f"a worker exited with status {code}"


def last_step(run_dir: Path) -> int:
    """The last step metrics.jsonl recorded (0 when none); a torn last line is skipped."""
    metrics = run_dir / "metrics.jsonl"
    step = 0
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("kind") == "train":
                step = row["step"]
    return step


def newest_good_step(run_dir: Path) -> int | None:
    """The step of the checkpoint a relaunch resumes from, None when there is none usable. Sizes
    only: the workers check it again (``checkpoint.verify``) and a full hash here would hold the
    relaunch for minutes."""
    from ominix.checkpoint import read_state, resumable

    try:
        found, _ = resumable(run_dir, "sizes", repair=False)
    except OminixError:
        return None
    return None if found is None else int(read_state(found)["step"])


class Relauncher:
    """Runs ``attempt`` (one whole launch, returning an exit code or raising ``OminixError``) until
    it succeeds, stops, fails on bad input, or has faulted ``launch.max_restarts`` + 1 times.
    ``write_config(cfg)`` rewrites RUN_DIR/config.yaml before a relaunch."""

    def __init__(self, cfg: OminixConfig, run_dir: Path, events: Events,
                 write_config: Callable[[OminixConfig], None]) -> None:
        self.cfg, self.run_dir, self.events, self.write_config = cfg, run_dir, events, write_config
        self.faults: list[str] = []

    def run(self, attempt: Callable[[], int]) -> int:
        launch = self.cfg.launch
        while True:
            try:
                code, error = attempt(), None
            except OminixError as exc:
                code, error = exc.exit_code, exc
            if not is_fault(code, error):
                if self.faults and code == 0:
                    self._log(f"finished after {len(self.faults)} restart(s)")
                if error is not None:
                    raise error
                return code
            restarts = len(self.faults)
            cause = error.message if error is not None else _describe(code)
            again = restarts < launch.max_restarts
            backoff = launch.restart_backoff * 2 ** restarts if again else 0.0
            self._record(cause, restarts + 1, again, backoff)
            if not again:
                if not restarts:
                    if error is not None:
                        raise error
                    return code
                raise OminixError(f"{cause}; gave up after {restarts} restart(s) (launch.max_restarts "
                                  f"{launch.max_restarts}): {'; '.join(self.faults[:-1])}",
                                  f"{error.hint + '; ' if error is not None and error.hint else ''}every fault is "
                                  f"listed in {self.run_dir / 'train.log'}", exit_code=code) from error
            with stop_signals() as received:
                try:
                    time.sleep(backoff)
                except KeyboardInterrupt:
                    self._log("stopped during the back-off: not relaunched")
                    return 128 + (received[0] if received else signal.SIGINT)
            if self.cfg.checkpoint.resume != "auto" and newest_good_step(self.run_dir) is not None:
                self.cfg = self.cfg.model_copy(update={"checkpoint": self.cfg.checkpoint.model_copy(
                    update={"resume": "auto"})})
                self.write_config(self.cfg)

    def _record(self, cause: str, number: int, again: bool, backoff: float) -> None:
        failed_at = last_step(self.run_dir)
        resume = newest_good_step(self.run_dir)
        lost = failed_at - (resume or 0)
        start = f"checkpoint step {resume}" if resume is not None else "the start"
        what = f"fault {number} at step {failed_at}, {lost} step(s) lost since {start}: {cause}"
        self.faults.append(what)
        limit = self.cfg.launch.max_restarts
        self._log(f"{what}; relaunching in {backoff:g} s (restart {number}/{limit})" if again
                  else f"{what}; no restart left (launch.max_restarts {limit})")
        metrics = self.run_dir / "metrics.jsonl"
        with metrics.open("a") as fh:
            fh.write(json.dumps({"kind": "fault", "step": failed_at, "resume_step": resume, "lost_steps": lost,
                                 "cause": cause, "restart": number if again else None,
                                 "backoff_s": backoff}) + "\n")

    def _log(self, line: str) -> None:
        self.events.notice(line)
        with (self.run_dir / "train.log").open("a") as fh:
            fh.write(line + "\n")
