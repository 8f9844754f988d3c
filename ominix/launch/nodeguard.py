"""The process that holds one node's torchrun over SSH, so that nothing outlives the launch.

``python -m ominix.launch.nodeguard [--keep NAME,...] [--env K=V ...] [--grace S] -- COMMAND...``

- The command gets an explicit environment: only the ``--keep`` variables of the login
  environment, the ``--env`` values, and the variables sent as one JSON line on stdin (secrets
  such as HF_TOKEN travel there, never on a command line that ``ps`` shows).
- The command (torchrun) runs in its own process group. After the JSON line, stdin carries the
  launcher's requests: ``stop`` (a graceful stop; EOF, i.e. the launcher exited or the connection
  dropped, and SIGTERM/SIGHUP/SIGINT to the guard mean the same) and ``kill`` (at once).
- A graceful stop sends SIGTERM to torchrun's workers themselves (each runs in a session of its
  own), not to torchrun: torchrun kills its workers 30 s after it is signalled, too soon to save
  a large checkpoint; signalled directly, the workers save and exit and torchrun sees them
  finish. With no worker yet, torchrun's group gets the SIGTERM. After ``--grace`` seconds, or on
  ``kill``, torchrun's group and the workers get SIGKILL. If the guard itself is killed, the
  kernel sends torchrun SIGTERM (PR_SET_PDEATHSIG).
- The guard exits with the command's status (128 + N for a signal N).
- Its first output line is ``ominix-nodeguard-pid PID``: a frozen node's guard (its processes
  stopped) reads no request, so the launcher kills it and all below it with
  ``python -m ominix.launch.nodeguard --kill-tree PID`` over a new SSH channel.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading

from ominix import console
from ominix.launch.torchrun import die_with_parent, kill_torchrun, kill_tree, signal_workers

GUARD_PID = "ominix-nodeguard-pid"
GRACE_S = 900.0  # the default of launch.stop_timeout, which the launcher passes as --grace


class _Guard:
    """Stops ``child`` (torchrun) once: gracefully (``stop``) or at once (``kill``)."""

    def __init__(self, child: subprocess.Popen, grace: float) -> None:
        self.child = child
        self.grace = grace
        self.killed = threading.Event()
        self._stopping = False
        self._lock = threading.Lock()

    def stop(self) -> None:
        """SIGTERM to the workers, then ``kill`` after the grace period (blocks: run in a thread)."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        signal_workers(self.child.pid, signal.SIGTERM)
        if not self.killed.wait(self.grace):
            self.kill()

    def stop_in_thread(self) -> None:
        threading.Thread(target=self.stop, daemon=True).start()

    def kill(self) -> None:
        self.killed.set()
        if self.child.returncode is not None:
            return
        kill_torchrun(self.child.pid)

    def watch_stdin(self) -> None:
        """``stop`` / ``kill`` lines; EOF is a graceful stop. Raw reads: a buffered reader would
        block interpreter shutdown."""
        pending = b""
        while chunk := os.read(0, 4096):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if line.strip() == b"kill":
                    self.kill()
                elif line.strip() == b"stop":
                    self.stop_in_thread()
        self.stop_in_thread()


def _read_line(fd: int) -> str:
    """One line from ``fd``, read byte by byte so that nothing after it is consumed."""
    data = b""
    while not data.endswith(b"\n") and (byte := os.read(fd, 1)):
        data += byte
    return data.decode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ominix.launch.nodeguard")
    parser.add_argument("--keep", default="", help="Comma-separated variables kept from the login env.")
    parser.add_argument("--env", action="append", default=[], metavar="K=V", help="Set a variable.")
    parser.add_argument("--grace", type=float, default=GRACE_S, metavar="SECONDS",
                        help="How long a stopped command gets to exit before it is killed.")
    parser.add_argument("--kill-tree", type=int, metavar="PID",
                        help="SIGKILL PID and every process below it (stopped ones too), then exit.")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.kill_tree:
        kill_tree(args.kill_tree)
        return 0
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given after --")
    env = {k: os.environ[k] for k in args.keep.split(",") if k and k in os.environ}
    env.update(item.split("=", 1) for item in args.env)
    env.update(json.loads(_read_line(0) or "{}"))
    console.out(f"{GUARD_PID} {os.getpid()}")
    child = subprocess.Popen(command, env=env, start_new_session=True, preexec_fn=die_with_parent)
    guard = _Guard(child, args.grace)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, lambda *_: guard.stop_in_thread())
    threading.Thread(target=guard.watch_stdin, daemon=True).start()
    status = child.wait()
    return status if status >= 0 else 128 - status


if __name__ == "__main__":
    sys.exit(main())
