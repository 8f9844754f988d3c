"""The run-directory lock: one launch per run directory, held for the whole run.

``RUN_DIR/.ominix.lock`` holds ``{host, pid, started, command}``. It is created with
``O_CREAT | O_EXCL``, which is atomic on local disks and on NFS v3 and later (``flock`` often is
not honoured there). A daemon thread touches the file every ``HEARTBEAT_S`` seconds, so that a
launch on another host can tell a live holder from a dead one without seeing its processes.

The holder also keeps an exclusive ``flock`` on the file for as long as it lives: the kernel (or
the NFS lock manager) drops it when the process dies, however it dies, so a lock whose ``flock`` can
be taken belonged to a dead launch, even one in another pid namespace or container. Where ``flock``
is not supported (some NFS mounts answer ENOLCK), liveness falls back to the record: a lock is
stale when its holder is on this host (same host name and pid namespace) and its pid is not alive
or now names a process started after the lock, or when its heartbeat is older than
``STALE_AFTER_S`` (a holder on another host that died or lost the file system). Clocks of the
hosts sharing the file system must agree to well within ``STALE_AFTER_S`` (NTP does that).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ominix.errors import OminixError

LOCK_NAME = ".ominix.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 10 * 60.0  # 20 missed heartbeats: a paused VM or a slow NFS server does not steal a lock


@dataclass(frozen=True)
class Holder:
    """Who holds a lock (from its file); ``beat``: seconds since its last heartbeat."""

    host: str
    pid: int
    started: float
    command: str
    beat: float
    pidns: str = ""
    flock: bool = False  # the holder keeps a flock on the file while it lives

    def describe(self) -> str:
        since = datetime.fromtimestamp(self.started).strftime("%Y-%m-%d %H:%M:%S")
        return f"pid {self.pid} on {self.host}, started {since}"


def _pidns() -> str:
    """This process's pid namespace (``pid:[4026531836]``): pids of another one mean nothing here."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch); None when there is no such process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None
    return time.time() - uptime + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def _holder_alive(holder: Holder) -> bool:
    """The holder's process runs, and is the one that wrote the lock (not a reused pid)."""
    started = _start_time(holder.pid)
    return started is not None and started <= holder.started + 5.0


def read_holder(path: Path) -> Holder | None:
    """The holder written in ``path``; None when the file is gone. A file that is not a lock this
    module wrote (empty, cut short) counts as a holder whose heartbeat is its modification time."""
    try:
        mtime = path.stat().st_mtime
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return None
    beat = time.time() - mtime
    try:
        data = json.loads(text)
        return Holder(str(data["host"]), int(data["pid"]), float(data["started"]), str(data["command"]), beat,
                      str(data.get("pidns", "")), bool(data.get("flock", False)))
    except (ValueError, KeyError, TypeError, AttributeError):
        return Holder("?", 0, mtime, "?", beat)


def _flock_free(path: Path) -> bool | None:
    """True when nobody holds a flock on ``path``, False when a live process does, None when this
    file system cannot tell (no flock support) or the file is gone."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        return False if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) else None
    else:
        return True
    finally:
        os.close(fd)  # closing drops the probe's own flock


def is_stale(holder: Holder, path: Path | None = None) -> bool:
    free = _flock_free(path) if path is not None else None
    if free is False:
        return False
    if free and (holder.flock or holder.host == "?"):
        return True
    if holder.beat > STALE_AFTER_S:
        return True
    if holder.host == "?":  # not a lock file this module finished writing: a launch killed at once
        return holder.beat > 5.0
    return (holder.host, holder.pidns) == (socket.gethostname(), _pidns()) and not _holder_alive(holder)


class RunLock:
    """The lock on one run directory (see the module docstring); use as a context manager."""

    def __init__(self, run_dir: Path, command: str | None = None) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                       "command": command or shlex.join(["ominix", *sys.argv[1:]]), "pidns": _pidns(),
                       "flock": True}
        self._stop = threading.Event()
        self._fd: int | None = None

    def acquire(self, notice: Callable[[str], None]) -> None:
        """Take the lock, taking over a stale one (``notice`` says so); refuse a live holder."""
        if self.path.is_dir():
            raise OminixError(f"{self.path} is a directory, not the run directory's lock file",
                              f"remove it (rm -r {self.path}) unless something of yours lives there")
        for _ in range(3):  # a takeover can race with another launch: look again
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = read_holder(self.path)
                if holder is not None and not is_stale(holder, self.path):
                    raise OminixError(
                        f"{self.path.parent} is in use by another launch ({holder.describe()}: {holder.command})",
                        "wait for that run to finish, stop it, or choose another --out",
                    ) from None
                if holder is not None and self._take_over(holder):
                    notice(f"took over the stale lock of {holder.describe()} "
                           f"(its process is gone or its heartbeat stopped {holder.beat:.0f} s ago)")
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self.record["flock"] = False  # this file system has no flock: the record alone tells
            os.write(fd, (json.dumps(self.record) + "\n").encode())
            self._fd = fd  # kept open: the flock lives as long as this process
            threading.Thread(target=self._heartbeat, daemon=True).start()
            return
        raise OminixError(f"cannot take the lock {self.path}: other launches keep taking it",
                          "launch once at a time into one --out")

    def _take_over(self, stale: Holder) -> bool:
        """Move the stale file aside; if what moved was not the file judged stale (another launch
        took the lock in between), put it back. True when the stale lock is gone."""
        aside = self.path.with_name(f"{LOCK_NAME}.stale.{self.record['host']}.{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        moved = read_holder(aside)
        if moved is not None and (moved.pid, moved.started) != (stale.pid, stale.started):
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
            aside.unlink()
            return False
        aside.unlink()
        return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        """Stop the heartbeat and remove the file, if it is still this launch's."""
        self._stop.set()
        holder = read_holder(self.path)
        if holder is not None and (holder.pid, holder.started) == (self.record["pid"], self.record["started"]):
            self.path.unlink(missing_ok=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @contextlib.contextmanager
    def held(self, notice: Callable[[str], None]) -> Iterator[RunLock]:
        self.acquire(notice)
        try:
            yield self
        finally:
            self.release()
