"""The launcher owns its torchrun: torchrun dies with the launcher, gets the launcher's signals,
and its own error report does not bury the worker's (``torchrun_output.TorchrunFilter``).

- ``die_with_parent``: the kernel sends this process SIGTERM when its parent dies
  (PR_SET_PDEATHSIG); for torchrun under the launcher or a node guard, and for every worker under
  torchrun (torchrun starts each worker in its own session, so only this reaches them when
  torchrun itself is SIGKILLed).
- ``run_torchrun``: torchrun in its own process group (a terminal's Ctrl-C reaches the launcher
  only, which forwards it once), SIGTERM/SIGINT/SIGHUP forwarded (SIGHUP as SIGTERM: the workers
  save either way) to the workers themselves, not to torchrun: torchrun gives its workers 30 s
  after it is signalled and then kills them, too little for a large checkpoint; signalled
  directly, the workers save and exit, and torchrun sees them finish. A second signal, or
  ``launch.stop_timeout`` seconds without an exit, kills torchrun and every worker. The exit code
  is 128 + the signal when one was forwarded, else the failing worker's own exit code (torchrun
  says 1 for any failure).
- ``kill_tree``, ``kill_torchrun``, ``signal_workers``: a process and those below it, found in /proc.
- ``stop_signals``: SIGTERM and SIGHUP stop a launcher as Ctrl-C does.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from ominix.errors import OminixError
from ominix.launch.torchrun_output import TorchrunFilter

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Have the kernel send ``sig`` to this process when its parent exits (Linux)."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig))


def children_of(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def signal_workers(torchrun: int, sig: int) -> None:
    """``sig`` to torchrun's workers themselves (each sits in a session of its own), so torchrun
    never starts its own 30 s kill timer; to torchrun's group while it has no worker yet."""
    for pid in children_of(torchrun) or [-torchrun]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def kill_torchrun(torchrun: int) -> None:
    """SIGKILL to torchrun's group and to every worker of it."""
    workers = children_of(torchrun)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(torchrun, signal.SIGKILL)
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def kill_tree(pid: int) -> None:
    """SIGKILL to ``pid`` and every process below it, stopped ones included (SIGKILL is the one
    signal a stopped process cannot hold back); all are listed first, since a killed parent's
    children are reparented."""
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children_of(tree[-1])
    for member in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)


def _forwarding(child: subprocess.Popen, received: list[int], stop_timeout: float,
                timers: list[threading.Timer]) -> Callable[[int, object], None]:
    def forward(signum: int, frame: object) -> None:
        if received:  # asked twice: do not wait for the checkpoint
            kill_torchrun(child.pid)
            return
        received.append(signum)
        signal_workers(child.pid, signal.SIGTERM if signum == signal.SIGHUP else signum)
        # a stopped (frozen) or stuck worker never acts on the signal: SIGKILL reaches it anyway
        timer = threading.Timer(stop_timeout, kill_torchrun, args=(child.pid,))
        timer.daemon = True
        timer.start()
        timers.append(timer)
    return forward


def run_torchrun(argv: list[str], env: Mapping[str, str], show_stderr: Callable[[str], None], *,
                 filtered: bool = True, stop_timeout: float = 900.0) -> int:
    """Run ``argv`` (a torchrun command) owned by this process; see the module docstring. With
    ``filtered`` false (``--debug``), torchrun's stderr passes through untouched. A signal gives
    the workers ``stop_timeout`` seconds to save and exit; then torchrun and they are killed."""
    child = subprocess.Popen(argv, env=dict(env), start_new_session=True, preexec_fn=die_with_parent,
                             stderr=subprocess.PIPE if filtered else None)
    received: list[int] = []
    timers: list[threading.Timer] = []
    previous = {sig: signal.signal(sig, _forwarding(child, received, stop_timeout, timers))
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    output = TorchrunFilter()
    pump = None
    if filtered:
        def copy() -> None:
            for raw in child.stderr:
                for line in output.feed(raw.decode(errors="replace").rstrip("\n")):
                    show_stderr(line)
            for line in output.flush():
                show_stderr(line)
        pump = threading.Thread(target=copy, daemon=True)
        pump.start()
    try:
        code = child.wait()
        if pump is not None:
            pump.join()
    finally:
        for timer in timers:  # torchrun is gone: its pid may be reused
            timer.cancel()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        return 128 + received[0]
    if code == 0 or output.failure is None:
        return code
    rank, status = output.failure
    if status < 0:
        name = signal.Signals(-status).name
        raise OminixError(f"rank {rank} was killed by {name}",
                          "SIGKILL is often the out-of-memory killer: see `dmesg`, lower the batch size",
                          exit_code=128 - status)
    if not output.error_shown:
        raise OminixError(f"rank {rank} exited with status {status}", "see the output above", exit_code=status)
    return status


@contextlib.contextmanager
def stop_signals() -> Iterator[list[int]]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt, as Ctrl-C does, for code that stops its
    children on it (the multi-node launcher); the list holds the signals received."""
    received: list[int] = []

    def interrupt(signum: int, frame: object) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
