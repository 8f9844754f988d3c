"""The worker: ``python -m ominix.train --run-dir RUN_DIR`` (one per rank, under torchrun).

Any error is one ``error (rank N):`` line and a hint on stderr (ominix.console, the one renderer;
the launcher shows the first rank's only), and its traceback is appended to ``RUN_DIR/train.log``
(printed too with ``OMINIX_DEBUG=1``). Under torchrun the worker dies with torchrun: torchrun puts
each worker in its own session, so a SIGKILLed torchrun would otherwise leave it running.
"""

from __future__ import annotations

import argparse
import os
import sys


def run() -> int:
    parser = argparse.ArgumentParser(prog="python -m ominix.train", description=__doc__)
    parser.add_argument("--run-dir", required=True, help="Run directory holding config.yaml.")
    args = parser.parse_args()
    if "TORCHELASTIC_RUN_ID" in os.environ:  # started by torchrun
        from ominix.launch.torchrun import die_with_parent

        die_with_parent()
    from ominix.warning_filter import filter_third_party_warnings
    from ominix.console import debug_enabled, report_error
    from ominix.train.failure import as_ominix_error, log_traceback

    filter_third_party_warnings()  # tensornvme, apex, bitsandbytes...: shown with OMINIX_DEBUG=1

    rank = os.environ.get("RANK", "0")
    try:
        from ominix.train.loop import main

        return main(args.run_dir)
    except KeyboardInterrupt:  # Ctrl-C before training started: nothing to save, nothing to say
        return 130
    except Exception as exc:
        log_traceback(args.run_dir, rank)
        if debug_enabled():
            raise
        return report_error(as_ominix_error(exc, args.run_dir), rank=rank)


if __name__ == "__main__":
    sys.exit(run())
