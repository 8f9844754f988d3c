"""The worker: ``python -m ominix.train --run-dir RUN_DIR`` (one per rank, under torchrun).

Any error is one ``error (rank N):`` line and a hint on stderr (the CLI's one renderer; the
launcher shows the first rank's only), and its traceback is appended to ``RUN_DIR/train.log``
(printed too with ``OMINIX_DEBUG=1``). Under torchrun the worker dies with torchrun: torchrun puts
each worker in its own session, so a SIGKILLed torchrun would otherwise leave it running.
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
    if "TORCHELASTIC_RUN_ID" in os.environ:  # started by torchrun
        from ominix.launch.children import die_with_parent

        die_with_parent()
    hang = os.environ.get("OMINIX_HANG_DUMP")  # seconds: dump every thread's stack and exit (a hung collective)
    if hang:
        import faulthandler

        faulthandler.dump_traceback_later(float(hang), exit=True)
    from ominix.cli.quiet import filter_third_party_warnings
    from ominix.cli.render import debug_enabled, report_error

    filter_third_party_warnings()  # tensornvme, apex, bitsandbytes...: shown with OMINIX_DEBUG=1

    rank = os.environ.get("RANK", "0")
    try:
        from ominix.train.loop import main

        return main(args.run_dir)
    except KeyboardInterrupt:  # Ctrl-C before training started: nothing to save, nothing to say
        return 130
    except Exception as exc:
        _log_traceback(args.run_dir, rank)
        if debug_enabled():
            raise
        if not isinstance(exc, OminixError):
            exc = OminixError(f"{type(exc).__name__}: {exc}",
                              f"the traceback is in {Path(args.run_dir) / 'train.log'}", exit_code=1)
        return report_error(exc, rank=rank)


if __name__ == "__main__":
    sys.exit(run())
