"""The sha256 of a file: data shards and manifests, export weights and release bundles all use it."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

CHUNK = 1 << 22  # read 4 MiB at a time: multi-GB weight files never sit in memory whole


def sha256_file(path: str | Path, progress: Callable[[int], None] | None = None) -> str:
    """Hex sha256 of the file at ``path``; ``progress(bytes read so far)`` after each chunk."""
    digest = hashlib.sha256()
    done = 0
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
            if progress is not None:
                done += len(block)
                progress(done)
    return digest.hexdigest()
