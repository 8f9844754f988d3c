"""The worker: ``python -m ominix.train --run-dir RUN_DIR`` (one per rank, under torchrun)."""

from __future__ import annotations

import argparse
import sys

from ominix.errors import OminixError


def run() -> int:
    parser = argparse.ArgumentParser(prog="python -m ominix.train", description=__doc__)
    parser.add_argument("--run-dir", required=True, help="Run directory holding config.yaml.")
    args = parser.parse_args()
    import os

    hang = os.environ.get("OMINIX_HANG_DUMP")  # seconds: dump every thread's stack and exit (a hung collective)
    if hang:
        import faulthandler

        faulthandler.dump_traceback_later(float(hang), exit=True)
    from ominix.train.loop import main

    try:
        return main(args.run_dir)
    except OminixError as exc:
        import os

        if os.environ.get("OMINIX_DEBUG", "") not in ("", "0"):
            raise
        rank = os.environ.get("RANK", "0")
        print(f"error (rank {rank}): {exc.message}" + (f"\nhint: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(run())
