"""The batch shell of a SLURM job (see ``slurm``), on the job's first node:

``python -m ominix.launch.slurm_job --run-dir RUN_DIR [--requeue] -- srun ...``

- Holds the run directory's lock (``lock``) while the job runs, so a launch into the same run
  directory is refused; waits up to ``LOCK_WAIT_S`` for the submitting launch to let go of it.
- A requeued job (``SLURM_RESTART_COUNT`` > 0) resumes from the run's latest checkpoint, whatever
  ``checkpoint.resume`` said at submission.
- SIGTERM while the job is still RUNNING is the time-limit warning (``sbatch --signal=B:TERM@S``)
  or ``scancel --batch --signal=TERM``: the job steps get SIGTERM (``scancel --signal=TERM``), the
  workers save a checkpoint and stop, and with ``--requeue`` the job requeues itself unless
  training finished (srun exited 0). Under ``scancel``, ``scontrol requeue`` or preemption, SLURM
  signals the steps itself and decides whether the job comes back; this process only waits.
- Exits with srun's status.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ominix import console
from ominix.errors import OminixError
from ominix.launch.lock import RunLock

LOCK_WAIT_S = 60.0


def _say(line: str) -> None:
    console.err(f"ominix slurm job: {line}")


def _take_lock(run_dir: Path, job: str) -> RunLock:
    lock = RunLock(run_dir, command=f"SLURM job {job} (python -m ominix.launch.slurm_job)")
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            lock.acquire(_say)
            return lock
        except OminixError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def _resume_latest(run_dir: Path) -> None:
    """A requeued job continues the run: checkpoint.resume=auto in RUN_DIR/config.yaml."""
    from ominix.config import load_config, save_config

    config = run_dir / "config.yaml"
    cfg = load_config(str(config), [])
    if cfg.checkpoint.resume != "auto":
        cfg.checkpoint.resume = "auto"
        save_config(cfg, config)


def run(run_dir: Path, command: list[str], requeue: bool) -> int:
    from ominix.launch.slurm import job_state

    job = os.environ["SLURM_JOB_ID"]
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    lock = _take_lock(run_dir, job)
    warned: list[int] = []

    def on_term(signum: int, frame: object) -> None:
        if warned:
            return
        state = job_state(job)
        _say(f"SIGTERM while the job is {state or 'gone'}")
        if state == "RUNNING":  # only this shell was signalled: the steps save and stop
            warned.append(signum)
            subprocess.run(["scancel", "--signal=TERM", job], check=False)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        if restarts:
            _resume_latest(run_dir)
            _say(f"restart {restarts}: resuming from the latest checkpoint")
        child = subprocess.Popen(command)
        code = child.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
        lock.release()
    if warned and requeue and code != 0:  # 0: training finished before it had to stop
        _say(f"requeueing job {job}; it resumes from the latest checkpoint")
        subprocess.run(["scontrol", "requeue", job], check=False)
    return code


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m ominix.launch.slurm_job", description=__doc__)
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--requeue", action="store_true", help="Requeue the job after a time-limit stop.")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- srun ...")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        return run(args.run_dir, command, args.requeue)
    except OminixError as exc:
        return console.report_error(exc)


if __name__ == "__main__":
    sys.exit(main())
