"""The sha256 of a file: data shards and manifests, export weights and release bundles all use it."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 22  # read 4 MiB at a time: multi-GB weight files never sit in memory whole


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()
