"""torchrun's stderr as a user should see it: without torchrun's own log lines, its
ChildFailedError or SignalException traceback and its failure table; only the first
``error (rank N):`` line and its hint are kept (the other ranks usually fail because that one did).
"""

from __future__ import annotations

import re

# torchrun's own log lines: "W1201 15:19:47.712000 18416 torch/distributed/elastic/...:1028] ..."
_TORCH_LOG = re.compile(r"^[IWEF]\d{4} [\d:.]+ +\d+ \S*torch/distributed/\S+\] ")
# c10's own log lines (C++): "[W1203 19:14:09.317022538 socket.cpp:207] [c10d] ..."
_TORCH_CPP_LOG = re.compile(r"^\[[IWEF]\d{4} [\d:.]+ \S+:\d+\] ")


def is_torch_log(line: str) -> bool:
    """A line of torch's own logging (Python or C++), which never says why a worker failed."""
    return bool(_TORCH_LOG.match(line) or _TORCH_CPP_LOG.match(line))


_OWN_EXCEPTIONS = ("torch.distributed.elastic.multiprocessing.errors.ChildFailedError",
                   "torch.distributed.elastic.multiprocessing.api.SignalException")


class TorchrunFilter:
    """Feed it torchrun's stderr line by line; ``feed`` returns the lines worth showing.
    ``failure`` is (rank, exit code) of the root cause torchrun reported, if any."""

    def __init__(self) -> None:
        self.failure: tuple[int, int] | None = None
        self.error_shown = False
        self._traceback: list[str] | None = None
        self._table = 0  # 1: inside torchrun's ===== failure table; 2: in its root cause part
        self._banner = False
        self._drop_hint = False
        self._root: dict[str, int] = {}
        self._table_rules = 0

    def feed(self, line: str) -> list[str]:
        if self._table:
            return self._in_table(line)
        if self._traceback is not None:
            return self._in_traceback(line)
        if _TORCH_LOG.match(line):
            return []
        if line.startswith("*" * 20):  # torchrun's OMP_NUM_THREADS banner
            self._banner = not self._banner
            return []
        if self._banner:
            return []
        if line.startswith("Traceback (most recent call last):"):
            self._traceback = [line]
            return []
        return self._worker(line)

    def _worker(self, line: str) -> list[str]:
        if line.startswith("error (rank"):
            if self.error_shown:
                self._drop_hint = True
                return []
            self.error_shown = True
        elif line.startswith("hint:") and self._drop_hint:
            self._drop_hint = False
            return []
        return [line]

    def _in_traceback(self, line: str) -> list[str]:
        self._traceback.append(line)
        if line[:1] in (" ", "\t") or not line.strip():
            return []
        kept, self._traceback = self._traceback, None
        if line.startswith(_OWN_EXCEPTIONS):
            self._table = 1 if "ChildFailedError" in line else 0
            self._table_rules = 0
            return []
        return kept

    def _in_table(self, line: str) -> list[str]:
        if line.startswith("====="):
            self._table_rules += 1
            if self._table_rules == 2:
                self._table = 0
                if {"rank", "exitcode"} <= self._root.keys():
                    self.failure = (self._root["rank"], self._root["exitcode"])
            return []
        if line.startswith("Root Cause"):
            self._table = 2
        elif self._table == 2 and (m := re.match(r"\s+(rank|exitcode)\s*:\s*(-?\d+)", line)):
            self._root.setdefault(m[1], int(m[2]))
        return []

    def flush(self) -> list[str]:
        """What is still held back at the end (a traceback cut short)."""
        kept, self._traceback = self._traceback or [], None
        return kept
