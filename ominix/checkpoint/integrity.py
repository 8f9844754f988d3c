"""What identifies a checkpoint's or an export's files: the sha256 of each, one id for a model, and
each checkpoint's integrity record (``integrity.json``: size and sha256 of every other file).

The record is written last, after every rank finished writing and before the checkpoint directory
gets its final name; :func:`problem` checks a checkpoint against it (sizes, or sizes and hashes)."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ominix.checkpoint.layout import MODEL, RECORD, STATE, files_under
from ominix.checkpoint.weights import weight_files
from ominix.hashing import sha256_file

FORMAT = 1


def checksums(path: Path, base: Path) -> dict[str, str]:
    """``{path relative to base: sha256}`` of every file under ``path``."""
    return {str(p.relative_to(base)): sha256_file(p) for p in files_under(path)}


def model_checksum(weights: Path, files: dict[str, str] | None = None) -> str:
    """sha256 over the sorted ``name sha256`` lines of the weight files: one id for a sharded model.
    ``files`` gives the sha256 of each file when the caller has them already."""
    files = files or {f.name: sha256_file(f) for f in weight_files(weights)}
    lines = "".join(f"{name} {files[name]}\n" for name in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()


def share(ckpt: Path, rank: int, world: int) -> list[Path]:
    """The files of ``ckpt`` that ``rank`` hashes for the record: largest first, each to the rank with
    the fewest bytes so far, so the ranks hash in parallel. Every rank computes the same split."""
    loads = [0] * world
    mine = []
    files = [(p.stat().st_size, p) for p in files_under(ckpt) if p.name != RECORD]
    for size, path in sorted(files, key=lambda f: (-f[0], str(f[1]))):
        owner = loads.index(min(loads))
        loads[owner] += size
        if owner == rank:
            mine.append(path)
    return mine


def describe(ckpt: Path, files: list[Path], threads: int | None = None) -> dict[str, dict[str, Any]]:
    """``{path relative to ckpt: {"size", "sha256"}}`` of ``files``, hashed by ``threads`` threads
    (default: one per CPU, at most 8; hashlib releases the GIL, and a checkpoint just written is read
    from the page cache, so hashing is CPU-bound: ~1.6 GB/s per thread on this project's CI machine)."""
    workers = threads or min(8, os.cpu_count() or 1, max(len(files), 1))
    with ThreadPoolExecutor(workers) as pool:
        digests = list(pool.map(sha256_file, files))
    return {str(p.relative_to(ckpt)): {"size": p.stat().st_size, "sha256": d} for p, d in zip(files, digests)}


def write_record(ckpt: Path, entries: dict[str, dict[str, Any]]) -> None:
    """Write ``integrity.json`` of a checkpoint that is still under its temporary name."""
    record = {"format": FORMAT, "files": dict(sorted(entries.items()))}
    (ckpt / RECORD).write_text(json.dumps(record, indent=1) + "\n")


def problem(ckpt: Path, verify: str = "sizes") -> str | None:
    """What is wrong with checkpoint ``ckpt``, or None when it is usable. ``verify`` "sizes" compares
    every recorded file's size (cheap: catches missing and truncated files), "full" also its sha256
    (reads the whole checkpoint). A checkpoint without a record (written before records existed) is
    checked for its state.json and whole weight files."""
    if not ckpt.is_dir():
        return "directory missing"
    record = ckpt / RECORD
    if not record.is_file():
        return _legacy_problem(ckpt)
    try:
        files = json.loads(record.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return f"{RECORD} is not a valid record"
    for rel, want in files.items():
        path = ckpt / rel
        if not path.is_file():
            return f"{rel}: missing"
        if path.stat().st_size != want["size"]:
            return f"{rel}: size {path.stat().st_size} != {want['size']}"
    if verify == "full":
        for rel, want in files.items():
            if sha256_file(ckpt / rel) != want["sha256"]:
                return f"{rel}: sha256 differs from {RECORD}"
    return _state_problem(ckpt)


def is_checkpoint(path: Path) -> bool:
    """A complete checkpoint: a directory in which :func:`problem` finds nothing wrong (the sizes
    of the files its record lists, or without a record its state.json and whole weight files)."""
    return problem(path) is None


def part_problem(ckpt: Path, part: str) -> str | None:
    """What is wrong with the files under ``ckpt/part`` (a small part, e.g. its tokenizer, that a
    reader takes as is) against their sha256 in the record, or None; a checkpoint without a record
    has nothing to check."""
    record = ckpt / RECORD
    if not record.is_file():
        return None
    listed = {rel: want for rel, want in json.loads(record.read_text())["files"].items()
              if rel.startswith(f"{part}/")}
    unlisted = sorted(str(p.relative_to(ckpt)) for p in files_under(ckpt / part)
                      if str(p.relative_to(ckpt)) not in listed)
    if unlisted:
        return f"{unlisted[0]}: not in {RECORD}"
    for rel, want in listed.items():
        if not (ckpt / rel).is_file():
            return f"{rel}: missing"
        if sha256_file(ckpt / rel) != want["sha256"]:
            return f"{rel}: sha256 differs from {RECORD}"
    return None


def _state_problem(ckpt: Path) -> str | None:
    try:
        json.loads((ckpt / STATE).read_text())
    except FileNotFoundError:
        return f"{STATE}: missing"
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"{STATE}: not valid JSON"
    return None


def _legacy_problem(ckpt: Path) -> str | None:
    """No record: state.json must parse and each weight file must be as long as its header says."""
    state = _state_problem(ckpt)
    if state is not None:
        return state
    try:
        files = weight_files(ckpt) if any(files_under(ckpt / MODEL)) else []
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        return f"{MODEL}/ index: not valid JSON"
    if not files:
        return f"{MODEL}/: no weight files"
    for file in files:
        rel = file.relative_to(ckpt)
        if not file.is_file():
            return f"{rel}: missing"
        expected = _safetensors_size(file)
        if expected != file.stat().st_size:
            return f"{rel}: size {file.stat().st_size} != {expected} (from its header)"
    return None


def _safetensors_size(file: Path) -> int | None:
    """The length a safetensors file must have: 8 + header + the end of its last tensor."""
    with open(file, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return None
        (length,) = struct.unpack("<Q", head)
        try:
            header = json.loads(fh.read(min(length, 100 << 20)))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
    ends = [t["data_offsets"][1] for name, t in header.items() if name != "__metadata__"]
    return 8 + length + max(ends, default=0)
