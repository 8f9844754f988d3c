"""What identifies a checkpoint's or an export's files: the sha256 of each, and one id for a model."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ominix.checkpoint.layout import files_under
from ominix.checkpoint.weights import weight_files
from ominix.hashing import sha256_file


def checksums(path: Path, base: Path) -> dict[str, str]:
    """``{path relative to base: sha256}`` of every file under ``path``."""
    return {str(p.relative_to(base)): sha256_file(p) for p in files_under(path)}


def model_checksum(weights: Path, files: dict[str, str] | None = None) -> str:
    """sha256 over the sorted ``name sha256`` lines of the weight files: one id for a sharded model.
    ``files`` gives the sha256 of each file when the caller has them already."""
    files = files or {f.name: sha256_file(f) for f in weight_files(weights)}
    lines = "".join(f"{name} {files[name]}\n" for name in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()
