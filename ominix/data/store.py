"""The prepared-data store: shard files of packed token blocks, their side arrays, the manifest.

Layout of a prepared directory (see docs/ARCHITECTURE.md)::

    DIR/manifest.json                 everything below is described (and checksummed) here
    DIR/tokenizer/                    Hugging Face tokenizer directory
    DIR/{train,validation}/NNNNN.bin  raw little-endian uint16/uint32, blocks x (seq_len + 1)
    DIR/{train,validation}/NNNNN.src  raw little-endian uint16: the source-set index of each block

Every block holds tokens of ONE source set (documents are packed per source set), so evaluation can
report loss per source set. This module needs only numpy: the training nodes import it without
``datasets``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from ominix.data.verified import Verifier, file_state
from ominix.errors import OminixError
from ominix.hashing import sha256_file

FORMAT = "ominix-packed-v1"
MANIFEST = "manifest.json"
SOURCE_DTYPE = np.dtype("<u2")
SHARD_BYTES = 256 * 1024 * 1024  # a new shard file starts past this size
# How each document is framed in the blocks: as its tokenizer frames text at inference
WITH_BOS, PLAIN = "bos+doc+eos", "doc+eos"
FRAMINGS = (WITH_BOS, PLAIN)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32 (always little-endian)."""
    if vocab_size <= 1 << 16:
        return np.dtype("<u2")
    if vocab_size <= 1 << 32:
        return np.dtype("<u4")
    raise OminixError(f"vocabulary of {vocab_size} ids does not fit uint32", "use a smaller tokenizer")


def manifest_sha256(path: str | Path) -> str:
    """sha256 of ``path/manifest.json`` (or of ``path`` itself when it is the manifest file).

    The manifest lists every shard with its sha256, so this one hash identifies the whole
    prepared dataset (run directories and release cards record it).
    """
    path = Path(path)
    return sha256_file(path if path.is_file() else path / MANIFEST)


def framing(manifest: dict[str, Any]) -> str:
    """How the documents of a prepared directory are framed; data prepared before the manifest
    recorded it was framed ``doc EOS``."""
    found = manifest.get("framing", PLAIN)
    if found not in FRAMINGS:
        raise OminixError(f"the manifest frames documents {found!r}, which this OminiX does not know",
                          f"prepare the data again with this OminiX version (framings: {', '.join(FRAMINGS)})")
    return found


def tokenizer_dir(path: str | Path, manifest: dict[str, Any]) -> Path:
    """The tokenizer directory of the prepared directory ``path``."""
    return Path(path) / manifest["tokenizer"].get("dir", "tokenizer")


# what the readers of a manifest take from it (the loader, verification, `data inspect`)
REQUIRED = ("splits", "seq_len", "dtype", "tokenizer", "source_sets")
REQUIRED_TOKENIZER = ("vocab_size", "file", "sha256")


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a prepared directory; OminixError when it is not one."""
    path = Path(path)
    file = path / MANIFEST
    if not file.is_file():
        raise OminixError(
            f"{path} is not a prepared data directory (no {MANIFEST})",
            "create one with `ominix data prepare --out DIR`",
        )
    try:
        manifest = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise OminixError(f"{file} is not valid JSON", "prepare the data again with --force") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise OminixError(
            f"{file} has format {found!r}, expected {FORMAT!r}",
            "prepare the data again with this OminiX version",
        )
    tokenizer = manifest.get("tokenizer")
    missing = [key for key in REQUIRED if key not in manifest]
    if isinstance(tokenizer, dict):
        missing += [f"tokenizer.{key}" for key in REQUIRED_TOKENIZER if key not in tokenizer]
    if missing:
        raise OminixError(f"{file} lacks {', '.join(missing)}: it was edited or cut short",
                          "prepare the data again with --force")
    return manifest


class ShardWriter:
    """Appends blocks of one split to shard files, rolling over past ``SHARD_BYTES``.

    ``write(blocks, source)`` takes a ``[n, seq_len + 1]`` array of one source set; ``close()``
    returns the shard entries for the manifest (file, blocks, sha256 of both files).
    """

    def __init__(self, root: Path, split: str, seq_len: int, dtype: np.dtype) -> None:
        self.dir = root / split
        self.dir.mkdir(parents=True, exist_ok=True)
        self.split = split
        self.width = seq_len + 1
        self.dtype = np.dtype(dtype)
        self.shards: list[dict[str, Any]] = []
        self._tok: Any = None
        self._src: Any = None
        self._tok_hash: Any = None
        self._src_hash: Any = None
        self._blocks = 0

    def _open(self) -> None:
        name = f"{len(self.shards):05d}"
        self._name = name
        self._tok = open(self.dir / f"{name}.bin", "wb")
        self._src = open(self.dir / f"{name}.src", "wb")
        self._tok_hash, self._src_hash = hashlib.sha256(), hashlib.sha256()
        self._blocks = 0

    def _finish(self) -> None:
        if self._tok is None:
            return
        self._tok.close()
        self._src.close()
        self.shards.append({
            "file": f"{self.split}/{self._name}.bin",
            "sources_file": f"{self.split}/{self._name}.src",
            "blocks": self._blocks,
            "sha256": self._tok_hash.hexdigest(),
            "sources_sha256": self._src_hash.hexdigest(),
        })
        self._tok = None

    def write(self, blocks: np.ndarray, source: int) -> None:
        if not len(blocks):
            return
        if self._tok is None:
            self._open()
        data = np.ascontiguousarray(blocks, dtype=self.dtype).tobytes()
        src = np.full(len(blocks), source, dtype=SOURCE_DTYPE).tobytes()
        self._tok.write(data)
        self._src.write(src)
        self._tok_hash.update(data)
        self._src_hash.update(src)
        self._blocks += len(blocks)
        if self._blocks * self.width * self.dtype.itemsize >= SHARD_BYTES:
            self._finish()

    def close(self) -> list[dict[str, Any]]:
        self._finish()
        return self.shards


class PackedDataset:
    """Random access to the packed blocks of one split of a prepared directory.

    ``ds[i]`` is a numpy int64 array of ``seq_len + 1`` tokens (inputs ``[:-1]``, labels ``[1:]``);
    ``ds.source_of(i)`` names the source set of block ``i`` (e.g. ``RedPajamaC4``); ``ds.framing``
    says how its documents are framed, ``ds.tokenizer_dir`` where their tokenizer is. Token shards
    are opened as read-only memory maps, so a dataset of any size costs almost no RAM.

    With ``verify`` (the default) a background thread checks the sha256 of the split's shard files
    against the manifest while the caller reads, skipping those a stamp beside the data records as
    verified before (:mod:`ominix.data.verified`; ``verify_start`` is where in the list it begins);
    the first mismatch is raised, as an OminixError naming the shard, by the next ``ds[i]`` (or by
    :meth:`check`). A token id outside the manifest's vocabulary is refused when its block is read.
    """

    def __init__(self, path: str | Path, split: str = "train", verify: bool = True,
                 verify_start: float = 0.0) -> None:
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        if split not in self.manifest["splits"]:
            raise OminixError(
                f"{self.path} has no split {split!r}",
                f"choose one of {', '.join(self.manifest['splits'])}",
            )
        self.split = split
        self.seq_len: int = self.manifest["seq_len"]
        self.vocab_size: int = self.manifest["tokenizer"]["vocab_size"]
        self.dtype = np.dtype(self.manifest["dtype"]).newbyteorder("<")
        self.sources: list[str] = list(self.manifest["source_sets"])
        self.framing = framing(self.manifest)
        self.tokenizer_dir = tokenizer_dir(self.path, self.manifest)
        shards = self.manifest["splits"][split]["shards"]
        self._files = [self.path / s["file"] for s in shards]
        self._listed = [s["sha256"] for s in shards]
        self._shards = [self._open(s) for s in shards]
        self._opened = [file_state(f) for f in self._files]  # what each shard looked like when opened
        counts = [s["blocks"] for s in shards]
        self._starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self._source_ids = (
            np.concatenate([self._read_sources(s) for s in shards])
            if shards else np.zeros(0, dtype=SOURCE_DTYPE)
        )
        self.verifier: Verifier | None = None
        if verify:
            check_tokenizer(self.path, self.manifest)
        if verify and shards:
            self.verifier = Verifier(self.path, listed_files(shards), verify_start)

    @property
    def _problem(self) -> tuple[str, str] | None:
        return None if self.verifier is None else self.verifier.problem

    def check(self, wait: bool = False) -> None:
        """Raise the verifier's finding, if any; ``wait`` first waits until every shard is hashed."""
        if wait and self.verifier is not None:
            self.verifier.join()
        if self._problem is not None:
            raise OminixError(*self._problem)

    def _open(self, shard: dict[str, Any]) -> np.memmap:
        file = self.path / shard["file"]
        width = self.seq_len + 1
        expected = shard["blocks"] * width * self.dtype.itemsize
        size = file.stat().st_size if file.is_file() else -1
        if size != expected:
            raise OminixError(
                f"{file} is missing or has {size} bytes, the manifest says {expected}",
                f"run `ominix data inspect {self.path} --verify`, or prepare the data again",
            )
        return np.memmap(file, dtype=self.dtype, mode="r", shape=(shard["blocks"], width))

    def _read_sources(self, shard: dict[str, Any]) -> np.ndarray:
        file = self.path / shard["sources_file"]
        ids = np.fromfile(file, dtype=SOURCE_DTYPE) if file.is_file() else np.zeros(0, dtype=SOURCE_DTYPE)
        if len(ids) != shard["blocks"]:
            raise OminixError(
                f"{file} holds {len(ids)} entries, expected {shard['blocks']}",
                "prepare the data again with --force",
            )
        if len(ids) and int(ids.max()) >= len(self.sources):
            raise OminixError(f"{file} names source set {int(ids.max())}, the manifest lists {len(self.sources)}",
                              f"run `ominix data inspect {self.path} --verify`, and prepare the data again")
        return ids

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _locate(self, index: int) -> tuple[int, int]:
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"block {index} out of range for {n} blocks")
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        return shard, index - int(self._starts[shard])

    def __getitem__(self, index: int) -> np.ndarray:
        if self._problem is not None:
            self.check()
        shard, row = self._locate(int(index))
        self._check_unchanged(shard)
        block = np.asarray(self._shards[shard][row], dtype=np.int64)
        if block.max(initial=0) >= self.vocab_size:
            raise OminixError(
                f"{self._files[shard]}: block {row} holds token id {int(block.max())}, outside the "
                f"tokenizer's {self.vocab_size} ids (the shard is corrupted)",
                f"run `ominix data inspect {self.path} --verify`, and prepare the data again",
            )
        return block

    def _check_unchanged(self, shard: int) -> None:
        """Refuse to read a shard that no longer holds what the manifest lists: one stat per read,
        and a full re-hash only when the shard's size or mtime moved since it was opened (also after
        the background verifier passed it). It runs before the memory map is touched, as reading a
        truncated mapping kills the process with SIGBUS instead of raising."""
        file = self._files[shard]
        try:
            now = file_state(file)
            if now == self._opened[shard]:
                return
            digest = sha256_file(file)
        except OSError as exc:
            raise OminixError(f"{file} cannot be read any more ({exc.strerror})",
                              "restore the data directory, then resume with --resume auto") from exc
        if digest != self._listed[shard]:
            raise OminixError(f"{file} changed while it was read: its sha256 no longer matches the manifest",
                              "restore the shard (or prepare the data again), then resume with --resume auto")
        self._opened[shard] = now  # touched, same content

    def source_of(self, index: int) -> str:
        """Name of the source set of block ``index``."""
        return self.sources[int(self._source_ids[index])]

    def __repr__(self) -> str:
        return (
            f"PackedDataset({str(self.path)!r}, split={self.split!r}, blocks={len(self)}, "
            f"seq_len={self.seq_len}, sources={self.sources})"
        )


def listed_files(shards: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(relative path, sha256) of every file of ``shards`` as the manifest lists them (a shard's
    token file and, where it has one, its per-block source file)."""
    return [(shard[key], shard[digest]) for shard in shards
            for key, digest in (("file", "sha256"), ("sources_file", "sources_sha256")) if key in shard]


def check_tokenizer(path: Path, manifest: dict[str, Any]) -> None:
    """Refuse a prepared directory whose tokenizer file is not the one the data was tokenized with
    (the manifest's sha256): a swapped tokenizer would be copied into every checkpoint."""
    record = manifest["tokenizer"]
    file = path / record["file"]
    if not file.is_file() or sha256_file(file) != record["sha256"]:
        what = "is missing" if not file.is_file() else "does not match the manifest's sha256"
        raise OminixError(f"{file} {what}: the shards were tokenized with another tokenizer",
                          f"restore {file.parent} as `ominix data prepare` wrote it, or prepare the data again")


def verify(path: str | Path) -> list[str]:
    """Check every file the manifest lists against its sha256; return the problems (empty = OK)."""
    path = Path(path)
    manifest = read_manifest(path)
    problems: list[str] = []
    shards = [shard for split in manifest["splits"].values() for shard in split["shards"]]
    checks = [*listed_files(shards), (manifest["tokenizer"]["file"], manifest["tokenizer"]["sha256"])]
    for rel, expected in checks:
        file = path / rel
        if not file.is_file():
            problems.append(f"{rel}: missing")
        elif sha256_file(file) != expected:
            problems.append(f"{rel}: sha256 mismatch")
    return problems
