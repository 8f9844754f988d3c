"""Stopping on a signal: the handlers that remember a stop request, and the vote that makes every
rank stop at the same step without making the host wait for the device."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Preemption:
    """Remembers the first SIGTERM, SIGINT (Ctrl-C) or SIGHUP, so the loop can save a checkpoint at
    a step boundary and exit with 128 + that signal (143, 130, 129)."""

    def __init__(self) -> None:
        self.signal: int | None = None

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def _handle(self, signum, frame) -> None:
        self.signal = self.signal or signum


@contextlib.contextmanager
def preemption() -> Iterator[Preemption]:
    """The stop-signal handlers for the length of the run; the previous handlers are back afterwards."""
    preempt = Preemption()
    previous = {sig: signal.signal(sig, preempt._handle) for sig in STOP_SIGNALS}
    try:
        yield preempt
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class StopVote:
    """Whether any rank was asked to stop, agreed by all ranks one step late. Each step's ``cast``
    starts an all_reduce of this rank's flag and reads the one the previous step started, which has
    had a whole step to arrive. The vote goes through a CPU (gloo) group of its own: reading a
    reduction on the GPU would make the host wait for the device every step.

    A signal that arrives during step N is in the vote cast at the end of step N and read at the end
    of step N + 1, where every rank stops: the step in progress and one more, then the save."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.group = dist.new_group(backend="gloo")
        self.pending = None  # (work, tensor) of the vote cast at the previous step

    def cast(self, flag: bool) -> bool:
        """Cast this step's ``flag``; True on every rank when a rank had cast True the step before."""
        import torch
        import torch.distributed as dist

        agreed = self.close()
        vote = torch.tensor([float(flag)])
        self.pending = (dist.all_reduce(vote, op=dist.ReduceOp.MAX, group=self.group, async_op=True), vote)
        return agreed

    def close(self) -> bool:
        """Wait for the vote in flight (every rank cast it, so it completes) and return its result."""
        if self.pending is None:
            return False
        work, vote = self.pending
        work.wait()
        self.pending = None
        return bool(vote.item())
