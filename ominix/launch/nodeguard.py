"""The process that holds one node's torchrun over SSH, so that nothing outlives the launch.

``python -m ominix.launch.nodeguard [--keep NAME,...] [--env K=V ...] -- COMMAND...``

- The command gets an explicit environment: only the ``--keep`` variables of the login
  environment, the ``--env`` values, and the variables sent as one JSON line on stdin (secrets
  such as HF_TOKEN travel there, never on a command line that ``ps`` shows).
- The command runs in its own process group. When stdin reaches EOF (the launcher stopped the
  node, exited, or the SSH connection dropped) or the guard gets SIGTERM/SIGHUP/SIGINT, the whole
  group gets SIGTERM (torchrun then stops its workers), and SIGKILL after a grace period. If the
  guard itself is killed, the kernel sends the command SIGTERM (PR_SET_PDEATHSIG).
- The guard exits with the command's status (128 + N for a signal N).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading

from ominix.launch.children import die_with_parent

GRACE_S = 25.0  # > TORCH_ELASTIC_SHUTDOWN_TIMEOUT set by the launcher: torchrun stops its workers first


def _stop(child: subprocess.Popen, done: threading.Event) -> None:
    if done.is_set():
        return
    done.set()
    try:
        os.killpg(child.pid, signal.SIGTERM)
        child.wait(GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


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
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given after --")
    env = {k: os.environ[k] for k in args.keep.split(",") if k and k in os.environ}
    env.update(item.split("=", 1) for item in args.env)
    env.update(json.loads(_read_line(0) or "{}"))
    child = subprocess.Popen(command, env=env, start_new_session=True, preexec_fn=die_with_parent)
    done = threading.Event()

    def stop_thread() -> None:
        threading.Thread(target=_stop, args=(child, done), daemon=True).start()

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, lambda *_: stop_thread())

    def watch_stdin() -> None:  # raw reads: a buffered reader would block interpreter shutdown
        while os.read(0, 65536):
            pass
        _stop(child, done)

    threading.Thread(target=watch_stdin, daemon=True).start()
    status = child.wait()
    return status if status >= 0 else 128 - status


if __name__ == "__main__":
    sys.exit(main())
