"""The small shared modules: atomic outputs (``ominix.atomic``), file hashes (``ominix.hashing``) and
the precision table (``ominix.dtypes``)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from ominix import atomic
from ominix.dtypes import DTYPES, dtype_name, torch_dtype
from ominix.errors import OminixError
from ominix.hashing import sha256_file


def test_staged_publishes_whole_and_replaces_the_old_output(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "out"
    with atomic.staged(out) as tmp:
        assert tmp.is_dir() and not out.exists()
        (tmp / "a.txt").write_text("one")
    assert (out / "a.txt").read_text() == "one"
    with atomic.staged(out) as tmp:
        (tmp / "b.txt").write_text("two")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
    assert [p.name for p in out.parent.iterdir()] == ["out"]  # no temporary or old copy left


def test_staged_error_leaves_the_old_output_and_no_temporary(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic.staged(out) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("interrupted")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_staged_removes_temporaries_of_dead_processes(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    stale = tmp_path / f".out.tmp-{dead}"
    stale.mkdir()
    with atomic.staged(tmp_path / "out"):
        pass
    assert not stale.exists()


def test_write_text_replaces_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    atomic.write_text(path, "a: 1\n")
    atomic.write_text(path, "a: 2\n")
    assert path.read_text() == "a: 2\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_sha256_file_matches_hashlib_across_chunks(tmp_path: Path) -> None:
    data = bytes(range(256)) * 40000  # > one 4 MiB chunk
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_dtype_table() -> None:
    import torch

    assert DTYPES == ("bf16", "fp16", "fp32")
    assert [dtype_name(d) for d in DTYPES] == ["bfloat16", "float16", "float32"]
    assert [torch_dtype(d) for d in DTYPES] == [torch.bfloat16, torch.float16, torch.float32]
    with pytest.raises(OminixError, match="unknown dtype 'fp8'"):
        torch_dtype("fp8")
