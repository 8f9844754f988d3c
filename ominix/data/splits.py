"""The ``datasets`` split syntax: ``train``, ``train[:10%]``, ``train[1000:2000]``, ``a[:5%]+b``.

Same grammar and rounding as ``datasets.ReadInstruction`` (``closest`` by default, or
``(pct1_dropremainder)``), parsed here so the hub planner and the training nodes need no
``datasets``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ominix.errors import OminixError

_PART = re.compile(
    r"^(?P<split>\w+(?:\.\w+)*)"
    r"(?:\[(?:(?P<start>-?\d+)(?P<start_pct>%)?)?:(?:(?P<stop>-?\d+)(?P<stop_pct>%)?)?\])?"
    r"(?:\((?P<rounding>[^)]*)\))?$"
)
ROUNDINGS = ("closest", "pct1_dropremainder")


@dataclass(frozen=True)
class SplitPart:
    """One ``name[start:stop]`` term; ``percent`` tells whether the bounds are percentages."""

    split: str
    start: int | None = None
    stop: int | None = None
    percent: bool = False
    rounding: str = "closest"

    @property
    def whole(self) -> bool:
        return self.start is None and self.stop is None

    def bounds(self, total: int) -> tuple[int, int]:
        """Absolute ``[start, stop)`` record indices for a split of ``total`` records."""

        def absolute(value: int | None, default: int) -> int:
            if value is None:
                return default
            if self.percent:
                value = (
                    round(value * total / 100) if self.rounding == "closest" else value * (total // 100)
                )
            if value < 0:
                value += total
            return min(max(value, 0), total)

        start, stop = absolute(self.start, 0), absolute(self.stop, total)
        return start, max(start, stop)

    def __str__(self) -> str:
        if self.whole:
            return self.split
        pct = "%" if self.percent else ""
        start = "" if self.start is None else f"{self.start}{pct}"
        stop = "" if self.stop is None else f"{self.stop}{pct}"
        rounding = "" if self.rounding == "closest" else f"({self.rounding})"
        return f"{self.split}[{start}:{stop}]{rounding}"


def parse_split(expr: str) -> list[SplitPart]:
    """Parse a split expression; OminixError (exit 2) when it is malformed."""
    hint = "use the datasets split syntax, e.g. train, train[:10%], train[1000:2000], train[:5%]+validation"
    parts = []
    for term in expr.replace(" ", "").split("+"):
        match = _PART.match(term)
        if not match:
            raise OminixError(f"malformed split {expr!r} (at {term!r})", hint)
        g = match.groupdict()
        if g["start_pct"] and g["stop_pct"] is None and g["stop"] is not None or (
            g["stop_pct"] and g["start_pct"] is None and g["start"] is not None
        ):
            raise OminixError(f"malformed split {expr!r}: mix of percent and absolute bounds in {term!r}", hint)
        percent = bool(g["start_pct"] or g["stop_pct"])
        rounding = g["rounding"] or "closest"
        if rounding not in ROUNDINGS:
            raise OminixError(f"unknown rounding {rounding!r} in split {expr!r}", f"use one of {', '.join(ROUNDINGS)}")
        start = int(g["start"]) if g["start"] is not None else None
        stop = int(g["stop"]) if g["stop"] is not None else None
        for value in (start, stop):
            if percent and value is not None and not -100 <= value <= 100:
                raise OminixError(f"split {expr!r}: percentage {value} outside [-100, 100]", hint)
        parts.append(SplitPart(g["split"], start, stop, percent, rounding))
    return parts
