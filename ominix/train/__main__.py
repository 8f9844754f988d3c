"""The worker: ``python -m ominix.train --run-dir RUN_DIR`` (one per rank, under torchrun).

An ``OminixError`` is rendered by the CLI's one renderer with this rank in it (``error (rank N):``),
and the traceback of any error is appended to ``RUN_DIR/train.log``.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from ominix.errors import OminixError


def _log_traceback(run_dir: str, rank: str) -> None:
    """Append the traceback being handled to the run's log (the console shows two lines only)."""
    log = Path(run_dir) / "train.log"
    if log.parent.is_dir():
        with log.open("a") as f:
            f.write(f"traceback (rank {rank}):\n{traceback.format_exc()}")


def run() -> int:
    parser = argparse.ArgumentParser(prog="python -m ominix.train", description=__doc__)
    parser.add_argument("--run-dir", required=True, help="Run directory holding config.yaml.")
    args = parser.parse_args()
    hang = os.environ.get("OMINIX_HANG_DUMP")  # seconds: dump every thread's stack and exit (a hung collective)
    if hang:
        import faulthandler

        faulthandler.dump_traceback_later(float(hang), exit=True)
    from ominix.cli.render import debug_enabled, report_error
    from ominix.train.loop import main

    rank = os.environ.get("RANK", "0")
    try:
        return main(args.run_dir)
    except OminixError as exc:
        _log_traceback(args.run_dir, rank)
        if debug_enabled():
            raise
        return report_error(exc, rank=rank)
    except Exception:
        _log_traceback(args.run_dir, rank)
        raise


if __name__ == "__main__":
    sys.exit(run())
