"""A planned piece of input data (``SourcePart``: one source and split term) and the record slicing
shared by local and hub sources.

Below both ``ominix.data.sources`` (local specs, the planner) and ``ominix.data.hub`` (Hub
datasets), so neither imports the other's internals.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ominix.data import readers
from ominix.data.splits import SplitPart

SPLIT_DIRS = ("train", "validation", "valid", "dev", "test")


def natural_key(path: Any) -> list[Any]:
    """Sort key putting ``chunk2`` before ``chunk10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


@dataclass
class SourcePart:
    """One (source, split term): the files to read and the record range to take from them."""

    source: str
    kind: str  # embedded | local | saved | hub
    name: str  # source-set name of records without meta.redpajama_set_name
    split: SplitPart
    files: list[Any]
    sizes: list[int]
    license: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def documents(self, text_field: str, on_file: Any = None) -> Iterator[tuple[str, str]]:
        """Non-empty ``(text, source_set)`` of the selected records, in order; ``on_file(bytes)``
        is called after each file is read through."""
        for text, set_name in self.records(text_field, on_file):
            if text and not text.isspace():
                yield text, set_name or self.name

    def records(self, text_field: str, on_file: Any = None) -> Iterator[tuple[str, str | None]]:
        read = self._reporting(lambda f: readers.read(f, text_field), on_file)
        return sliced(self.files, self.split, read, readers.count)

    def _reporting(self, read: Any, on_file: Any) -> Any:
        if on_file is None:
            return read
        sizes = dict(zip(map(str, self.files), self.sizes))

        def read_and_report(f: Any) -> Iterator[Any]:
            yield from read(f)
            on_file(sizes[str(f)])

        return read_and_report

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind,
            "split": str(self.split),
            "files": [{"path": str(f), "bytes": s} for f, s in zip(self.files, self.sizes)],
            "bytes": sum(self.sizes),
            **({"license": self.license} if self.license else {}),
            **self.extra,
        }


def sliced(files: list[Any], part: SplitPart, read: Any, count: Any) -> Iterator[Any]:
    """Records ``part.bounds`` of the concatenation of ``files``; counts files only when needed."""
    if part.whole:
        for f in files:
            yield from read(f)
        return
    needs_total = part.percent or any(v is not None and v < 0 for v in (part.start, part.stop))
    if needs_total:
        counts = [count(f) for f in files]
        start, stop = part.bounds(sum(counts))
    else:
        counts = None
        start, stop = part.start or 0, part.stop if part.stop is not None else float("inf")
    seen = 0
    for i, f in enumerate(files):
        if seen >= stop:
            return
        if counts is not None and seen + counts[i] <= start:
            seen += counts[i]
            continue
        for record in read(f):
            if start <= seen < stop:
                yield record
            seen += 1
            if seen >= stop:
                return

