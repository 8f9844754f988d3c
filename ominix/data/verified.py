"""Checking a prepared directory's shard files against the manifest's sha256, once per dataset.

Hashing a 1 TB corpus takes the better part of an hour, so a file is hashed once, not at every
launch: the stamp ``DIR/.ominix-verified.json`` records each file found to match, with its size and
mtime, and a later check skips a file whose size, mtime and listed sha256 are still those recorded
(the rule make and rsync use: a change that keeps both, such as bit rot, is left to
``ominix data inspect --verify``, which hashes everything).

Who writes: every verifier merges its findings into the stamp on disk and replaces the file by a
rename, so readers never see a torn stamp. Two writers at once (the nodes of one run, two runs on one
dataset) may drop each other's newest entries, which costs a second hash later, never a false
verdict. A directory the user cannot write is hashed at every check, as before the stamp.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from ominix.atomic import write_text
from ominix.hashing import sha256_file

STAMP = ".ominix-verified.json"
FORMAT = "ominix-verified-v1"
SAVE_EVERY = 10.0  # seconds between stamp writes while hashing: progress survives a preemption
_writing = threading.Lock()  # the verifiers of one process (one per split) write the stamp in turn


def file_state(file: Path) -> dict[str, int]:
    """What says a file changed without reading it: its size and mtime."""
    st = file.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def read_stamp(path: Path) -> dict[str, dict]:
    """The stamp's entries by relative path (empty when there is none, or it is not one)."""
    try:
        data = json.loads((path / STAMP).read_text())
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) and data.get("format") == FORMAT else None
    return files if isinstance(files, dict) else {}


def unverified(path: Path, files: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (relative path, sha256) of ``files`` that the stamp does not vouch for."""
    stamp = read_stamp(path)
    todo = []
    for rel, listed in files:
        entry = stamp.get(rel)
        try:
            vouched = isinstance(entry, dict) and entry.get("sha256") == listed and \
                {k: entry.get(k) for k in ("size", "mtime_ns")} == file_state(path / rel)
        except OSError:
            vouched = False
        if not vouched:
            todo.append((rel, listed))
    return todo


def record(path: Path, entries: dict[str, dict]) -> bool:
    """Merge ``entries`` into the stamp; False when it cannot be written (a read-only directory)."""
    with _writing:
        files = {**read_stamp(path), **entries}
        try:
            write_text(path / STAMP, json.dumps({"format": FORMAT, "files": files}, indent=1) + "\n")
        except OSError:
            return False
    return True


class Verifier:
    """Hashes ``files`` ((relative path, sha256) pairs of the manifest) under ``path`` in a
    background thread (hashlib releases the GIL), skipping what the stamp vouches for.

    ``problem`` is the first finding, ``(message, hint)``, or None; ``hashed`` lists the files this
    verifier read. ``start`` (0 to 1) is where in the list it begins, so that the nodes of a run
    on shared storage start on different files and skip those another node stamped meanwhile."""

    def __init__(self, path: Path, files: list[tuple[str, str]], start: float = 0.0) -> None:
        self.path = path
        todo = unverified(path, files)
        cut = int(len(todo) * start)
        self.todo = todo[cut:] + todo[:cut]
        self.skipped = len(files) - len(todo)
        self.hashed: list[str] = []
        self.problem: tuple[str, str] | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="ominix-verify")
        self._thread.start()

    def _run(self) -> None:
        found: dict[str, dict] = {}
        saved, writable, done = time.monotonic(), True, set()
        for rel, listed in self.todo:
            if rel in done:
                continue
            file = self.path / rel
            try:
                before = file_state(file)
                digest = sha256_file(file)
                after = file_state(file)
            except OSError as exc:
                self.problem = (f"{file} cannot be read ({exc.strerror})", "check the data directory")
                break
            self.hashed.append(rel)
            if digest != listed:
                self.problem = (
                    f"{file}: sha256 does not match the manifest (the shard or the manifest changed "
                    "after `ominix data prepare`)",
                    f"run `ominix data inspect {self.path} --verify`, and prepare the data again",
                )
                break
            if before == after:  # a file that changed while it was read proves nothing
                found[rel] = {**after, "sha256": digest}
            if writable and time.monotonic() - saved > SAVE_EVERY:
                writable = record(self.path, found)
                found, saved = {}, time.monotonic()
                done = {rel for rel, _ in self.todo} - {rel for rel, _ in unverified(self.path, self.todo)}
        if writable and found:
            record(self.path, found)

    def join(self) -> None:
        self._thread.join()


def node_share() -> tuple[bool, float]:
    """Whether this process verifies for its node (local rank 0 of a torchrun node, or the only
    process) and where in the file list it starts (its node's share of the list)."""
    nodes = int(os.environ.get("WORLD_SIZE", 1)) // max(int(os.environ.get("LOCAL_WORLD_SIZE", 1)), 1)
    node = int(os.environ.get("GROUP_RANK", 0))
    return int(os.environ.get("LOCAL_RANK", 0)) == 0, node / max(nodes, 1)


def verification_note(*datasets) -> str | None:
    """What the verifiers of ``datasets`` (PackedDatasets or None) do, as a line for the log."""
    found = [d.verifier for d in datasets if d is not None and d.verifier is not None]
    if not found:
        return None
    todo, skipped = sum(len(v.todo) for v in found), sum(v.skipped for v in found)
    return (f"data: hashing {todo} shard files in the background, {skipped} verified before "
            f"({found[0].path / STAMP})")
