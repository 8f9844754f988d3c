"""What a live launch shows while it runs, and what it hands back. The library calls these; the
CLI passes its own renderers (the defaults write plain lines, for library callers)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ominix import console

if TYPE_CHECKING:
    from ominix.launch.hostcheck import HostReport


def _ignore(here: dict[str, Any], reports: list[HostReport]) -> None:
    pass


@dataclass
class Events:
    """``line``: one line of a node's output, prefixed ``[host] ``; ``notice``: a status line
    (``interrupted: stopping every node``, a stale run-directory lock taken over); ``stderr``: a
    line the local workers wrote to stderr; ``checks``: the host checks, before any node starts."""

    line: Callable[[str], None] = console.out
    notice: Callable[[str], None] = console.err
    stderr: Callable[[str], None] = console.err
    checks: Callable[[dict[str, Any], list[HostReport]], None] = _ignore


@dataclass
class Outcome:
    """A finished launch: its exit code, and ``text`` for the user (a dry run's plan, or where the
    sbatch file is and how to submit it); empty when there is nothing to say."""

    code: int = 0
    text: str = ""
