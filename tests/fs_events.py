"""Wait for a name to appear anywhere under a directory, from the kernel's inotify events.

A poll can miss a directory that lives for a few milliseconds on a loaded machine (a checkpoint's
staging directory, renamed away once written); the kernel queues its creation event until it is read.
"""

from __future__ import annotations

import ctypes
import os
import select
import struct
from collections.abc import Callable
from pathlib import Path

_CREATE, _MOVED_TO, _ISDIR = 0x100, 0x80, 0x40000000
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len
_libc = ctypes.CDLL(None, use_errno=True)


class TreeEvents:
    """Names created or renamed in under ``root`` (which must exist), in the order they happened."""

    def __init__(self, root: Path) -> None:
        self.fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.dirs: dict[int, Path] = {}
        for directory in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:  # new names only
            self._watch(directory)

    def _watch(self, directory: Path) -> None:
        wd = _libc.inotify_add_watch(self.fd, str(directory).encode(), _CREATE | _MOVED_TO)
        if wd >= 0:  # a directory gone already is no longer part of the tree
            self.dirs[wd] = directory

    def wait(self, seen: Callable[[Path], bool], alive: Callable[[], bool], poll_s: float = 0.5) -> Path:
        """The first path created under the root for which ``seen`` holds; ``alive()`` is asked
        between events and a False stops the wait with an AssertionError."""
        while True:
            if not select.select([self.fd], [], [], poll_s)[0]:
                assert alive(), "the process ended before the awaited path appeared"
                continue
            data = os.read(self.fd, 1 << 16)
            offset = 0
            while offset < len(data):
                wd, mask, _, size = _HEADER.unpack_from(data, offset)
                name = data[offset + _HEADER.size: offset + _HEADER.size + size].rstrip(b"\0").decode()
                offset += _HEADER.size + size
                path = self.dirs.get(wd, Path("?")) / name
                if mask & _ISDIR:
                    self._watch(path)
                    for below in (sorted(path.rglob("*")) if path.is_dir() else []):  # made before the watch
                        if below.is_dir():
                            self._watch(below)
                        if seen(below):
                            return below
                if seen(path):
                    return path

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> TreeEvents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
