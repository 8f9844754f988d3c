"""The data-order ledger: which packed training blocks every optimizer step consumed.

``RUN_DIR/data_order.npy`` holds one row per step done (row ``i`` is step ``i + 1``) of the step's
``global_batch`` block indices into the training split, in the order the loader handed them out (rank
``r`` of ``w`` took the ``r``-th ``global_batch / w`` of them); ``np.load`` reads it. Rank 0 appends a
row as each step takes its batch, and on resume the ledger is cut back to the checkpoint's step, so
it holds exactly the steps the weights were trained on, through preemptions and changes of the
number of processes (the loader's order depends only on the global batch). ``data_order.json``
beside it says what the indices index (blocks, seed, shuffle, manifest sha256) and which steps were
filled in from the loader's order rather than recorded (a resume into a new run directory).

The same order follows from :func:`ominix.data.loader.epoch_order`: step ``k`` takes positions
``(k - 1) * global_batch .. k * global_batch`` of the epochs' concatenated permutations. A resume
and a release check the ledger against that rule, step by step.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ominix.data.loader import epoch_order
from ominix.errors import OminixError

LEDGER = "data_order.npy"
INFO = "data_order.json"
BUNDLE_DIR = "data_order"  # where a release bundle holds the two files
HEADER_BYTES = 128  # a fixed .npy header, rewritten in place as rows are added
_MAGIC = b"\x93NUMPY\x01\x00"
_KEYS = ("num_blocks", "seed", "shuffle", "global_batch", "data_manifest_sha256")
_CHUNK = 1 << 22  # indices compared at a time when checking


def describe(loader_state: dict[str, Any], manifest_sha256: str) -> dict[str, Any]:
    """What a run's ledger indexes, from the loader's ``state_dict()`` and the data manifest."""
    info = {key: loader_state[key] for key in _KEYS[:4]}
    return {**info, "data_manifest_sha256": manifest_sha256, "split": "train",
            "dtype": "<u4" if loader_state["num_blocks"] <= 2**32 else "<u8"}


class _Order:
    """Positions of the loader's endless stream of block indices, one epoch's permutation cached."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.n, self.seed, self.shuffle = info["num_blocks"], info["seed"], info["shuffle"]
        self.epoch, self.order = -1, np.zeros(0, dtype=np.int64)

    def take(self, start: int, stop: int) -> np.ndarray:
        parts = []
        while start < stop:
            epoch, cursor = divmod(start, self.n)
            if epoch != self.epoch:
                self.epoch, self.order = epoch, epoch_order(self.n, self.seed, epoch, self.shuffle)
            part = self.order[cursor:cursor + stop - start]
            parts.append(part)
            start += len(part)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def expected_steps(info: dict[str, Any], first: int, last: int) -> np.ndarray:
    """The loader's blocks of steps ``first..last`` (1-based), one row per step."""
    batch = info["global_batch"]
    return _Order(info).take((first - 1) * batch, last * batch).reshape(-1, batch)


def _header(dtype: str, rows: int, batch: int) -> bytes:
    text = repr({"descr": dtype, "fortran_order": False, "shape": (rows, batch)})
    body = text.ljust(HEADER_BYTES - len(_MAGIC) - 2 - 1) + "\n"
    return _MAGIC + len(body).to_bytes(2, "little") + body.encode("latin1")


def _rows(path: Path, info: dict[str, Any]) -> int:
    """Whole rows in the ledger file (its header may lag the data by a row a crash cut short)."""
    size = path.stat().st_size - HEADER_BYTES
    return max(size, 0) // (info["global_batch"] * np.dtype(info["dtype"]).itemsize)


class LedgerWriter:
    """Rank 0's ledger of the run in ``run_dir``, cut back (or filled in) to ``step`` steps done."""

    def __init__(self, run_dir: Path, info: dict[str, Any], step: int) -> None:
        self.path, self.info_path = run_dir / LEDGER, run_dir / INFO
        old = json.loads(self.info_path.read_text()) if self.info_path.is_file() and self.path.is_file() else None
        if old is not None and step and any(old[k] != info[k] for k in _KEYS):
            raise OminixError(f"{self.path} records another data order (blocks, seed, batch or data) than "
                              "the checkpoint resumed", "move the ledger files away, or resume with --resume never")
        recorded = _rows(self.path, old) if old is not None and step else 0
        kept = min(recorded, step)
        self.dropped = recorded - kept  # steps trained after the checkpoint, to be done again
        derived = [r for r in (old or {}).get("derived_steps", []) if r[0] <= kept]
        derived = [[first, min(last, kept)] for first, last in derived]
        if kept < step:  # resumed in a new run directory: the steps before come from the loader's rule
            derived.append([kept + 1, step])
        self.info = {**info, "derived_steps": derived}
        self.dtype = np.dtype(info["dtype"])
        self.file = open(self.path, "r+b" if kept else "w+b")
        self.file.truncate(HEADER_BYTES + kept * info["global_batch"] * self.dtype.itemsize)
        self.rows = kept
        if kept:
            check_rows(np.memmap(self.path, self.dtype, "r", HEADER_BYTES, (kept, info["global_batch"])),
                       info, self.path)
        self.file.seek(0, os.SEEK_END)
        if kept < step:
            self.file.write(expected_steps(info, kept + 1, step).astype(self.dtype).tobytes())
            self.rows = step
        self.info_path.write_text(json.dumps(self.info, indent=2) + "\n")
        self._write_header()

    def _write_header(self) -> None:
        self.file.seek(0)
        self.file.write(_header(self.info["dtype"], self.rows, self.info["global_batch"]))
        self.file.seek(0, os.SEEK_END)
        self.file.flush()  # a crash loses at most the steps since, which the checkpoint redoes

    def append(self, blocks: np.ndarray) -> None:
        """Record the next step's global batch of block indices."""
        self.file.write(blocks.astype(self.dtype).tobytes())
        self.rows += 1
        self._write_header()

    def close(self) -> None:
        self.file.close()


def check_rows(rows: np.ndarray, info: dict[str, Any], path: Path) -> None:
    """Raise at the first step of ``rows`` (step 1 first) that the loader's order does not give."""
    order, batch = _Order(info), info["global_batch"]
    per = max(1, _CHUNK // batch)
    for first in range(0, len(rows), per):
        chunk = np.asarray(rows[first:first + per], dtype=np.int64)
        expected = order.take(first * batch, (first + len(chunk)) * batch).reshape(-1, batch)
        bad = np.flatnonzero((chunk != expected).any(axis=1))
        if len(bad):
            raise OminixError(f"{path}: step {first + int(bad[0]) + 1} records other blocks than the "
                              "loader's order gives", "the ledger was changed or belongs to another run: "
                              "restore it from the run directory")


def read(directory: Path) -> tuple[dict[str, Any], np.ndarray]:
    """``(info, rows)`` of the ledger in ``directory`` (a run directory or a bundle's data_order/)."""
    path, info_path = directory / LEDGER, directory / INFO
    if not path.is_file() or not info_path.is_file():
        raise OminixError(f"{directory} holds no data-order ledger ({LEDGER} and {INFO})",
                          "give a run directory trained by this OminiX version, or a bundle of one")
    info = json.loads(info_path.read_text())
    rows = np.load(path, mmap_mode="r")
    if rows.ndim != 2 or rows.shape[1] != info["global_batch"]:
        raise OminixError(f"{path} holds rows of {rows.shape[1:]} blocks, {INFO} says {info['global_batch']}",
                          "restore both files from the run directory")
    return info, rows


def check(directory: Path, manifest_sha256: str | None = None) -> dict[str, Any]:
    """Check the ledger in ``directory`` against the loader's order (and, given, the data's manifest
    sha256); returns its info with the number of steps."""
    info, rows = read(directory)
    if manifest_sha256 is not None and info["data_manifest_sha256"] != manifest_sha256:
        raise OminixError(f"{directory / LEDGER} indexes other prepared data (manifest sha256 differs)",
                          "give the data directory the run trained on")
    check_rows(rows, info, directory / LEDGER)
    return {**info, "steps": len(rows)}


def copy_steps(directory: Path, dest: Path, steps: int, manifest_sha256: str) -> dict[str, Any]:
    """Write the ledger of ``directory``'s first ``steps`` steps (those of the checkpoint released)
    into ``dest``, after checking the whole ledger; returns its info with ``steps``."""
    info = check(directory, manifest_sha256)
    if info["steps"] < steps:
        raise OminixError(f"{directory / LEDGER} holds {info['steps']} steps, the final checkpoint is at {steps}",
                          "release the run directory that trained the checkpoint (its ledger is complete)")
    dest.mkdir(parents=True)
    np.save(dest / LEDGER, np.ascontiguousarray(read(directory)[1][:steps]))
    info = {**info, "steps": steps}
    (dest / INFO).write_text(json.dumps(info, indent=2) + "\n")
    return info


def card_section(info: dict[str, Any]) -> str:
    """The data card's paragraph on the training order, with the snippet that rebuilds a batch."""
    derived = "; ".join(f"steps {a}-{b}" for a, b in info.get("derived_steps", [])) or "none"
    return "\n".join([
        "## Training order", "",
        f"`{BUNDLE_DIR}/{LEDGER}` records, for each of the {info['steps']:,} optimizer steps, the "
        f"{info['global_batch']} training blocks the step consumed (row `k - 1` is step `k`; the "
        f"indices count the `train` split's {info['num_blocks']:,} blocks in manifest order). It was "
        f"written by the run as it trained and checked against the loader's order (seed "
        f"{info['seed']}, shuffle {info['shuffle']}); steps filled in from that order: {derived}. "
        f"Its sha256 is in SHA256SUMS. `ominix data batch BUNDLE --step K` prints a step's tokens; "
        "with numpy alone, from the bundle (data held by reference: prepared again into `data/`):", "",
        "```python",
        "import json, numpy as np",
        f"order = np.load('{BUNDLE_DIR}/{LEDGER}', mmap_mode='r')",
        "manifest = json.load(open('data/manifest.json'))",
        "shards = manifest['splits']['train']['shards']",
        "starts = np.cumsum([0] + [s['blocks'] for s in shards])",
        "",
        "def block(i):  # training block i: seq_len + 1 token ids",
        "    k = int(np.searchsorted(starts, i, side='right')) - 1",
        "    tokens = np.memmap('data/' + shards[k]['file'], dtype=manifest['dtype'], mode='r')",
        "    return tokens.reshape(-1, manifest['seq_len'] + 1)[i - starts[k]]",
        "",
        "batch = np.stack([block(i) for i in order[K - 1]])  # step K's global batch",
        "```", "",
    ])


def _locate(path: Path, data: Path | None) -> tuple[Path, Path | None]:
    """``(directory of the ledger, prepared data directory or None)`` of a run directory or a
    release bundle; ``data`` overrides where the data is."""
    from ominix.config import load_config

    if (path / BUNDLE_DIR / LEDGER).is_file():  # a bundle: the data beside it, unless held by reference
        return path / BUNDLE_DIR, data or (path / "data" if (path / "data" / "manifest.json").is_file() else None)
    if not (path / "config.yaml").is_file():
        raise OminixError(f"{path} is neither a run directory nor a release bundle",
                          "give a run directory (it holds config.yaml) or a bundle of `ominix mof report`")
    return path, data or Path(load_config(path / "config.yaml").data.path)


def step_batch(path: str | Path, step: int, data: str | Path | None = None, decode: bool = False) -> dict[str, Any]:
    """The blocks step ``step`` of the run (or bundle) at ``path`` trained on: their indices, and
    their token ids (and text, ``decode``) read from the prepared data, which must be the data the
    ledger indexes."""
    from ominix.data.store import PackedDataset, manifest_sha256

    ledger_dir, data_dir = _locate(Path(path), Path(data) if data else None)
    info, rows = read(ledger_dir)
    if not 1 <= step <= len(rows):
        raise OminixError(f"step {step} is not in the ledger, which holds steps 1-{len(rows)}",
                          f"pass --step between 1 and {len(rows)}")
    blocks = [int(i) for i in rows[step - 1]]
    result: dict[str, Any] = {"step": step, "global_batch": info["global_batch"], "blocks": blocks,
                              "derived": any(a <= step <= b for a, b in info.get("derived_steps", []))}
    if data_dir is None:
        raise OminixError(f"{path} holds its data by reference: the token ids are not in it",
                          "prepare the data again as data/REFERENCE.md says and pass it with --data DIR")
    if not (data_dir / "manifest.json").is_file():
        raise OminixError(f"{data_dir} is not a prepared data directory (no manifest.json)",
                          "pass the data the run trained on with --data DIR")
    if manifest_sha256(data_dir) != info["data_manifest_sha256"]:
        raise OminixError(f"{data_dir} is not the data the ledger indexes (manifest sha256 differs)",
                          "pass the data the run trained on with --data DIR")
    train = PackedDataset(data_dir, "train", verify=False)
    result["sequences"] = [train[i].tolist() for i in blocks]
    result["sources"] = [train.source_of(i) for i in blocks]
    if decode:
        from ominix.data.tokenizer import load

        tok = load(train.tokenizer_dir).tokenizer
        result["texts"] = [tok.decode(ids, skip_special_tokens=False) for ids in result["sequences"]]
    return result
