"""Tokenize documents and pack them into fixed blocks, streaming, with bounded memory.

A reader thread walks the sources and hands batches of documents (about ``BATCH_CHARS`` of text)
through a small queue; the main thread encodes each batch with ``tokenizers``' ``encode_batch_fast``
(Rust threads, ``--num-proc`` of them, the GIL released) while the reader prepares the next one.
Every document is framed as its tokenizer frames text at inference (``BOS doc EOS`` when the
tokenizer adds BOS, ``doc EOS`` otherwise: :mod:`ominix.data.tokenizer` decides), routed to train
or validation by a seeded hash of its text, then packed into ``seq_len + 1`` blocks per (split,
source set): a block never mixes source sets, so evaluation can report loss per set. Leftover
tokens of each (split, set), fewer than one block, are dropped and counted.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ominix.data.store import ShardWriter

BATCH_CHARS = 1 << 20  # text per encode_batch call: enough work for every thread, little memory
PIECE_CHARS = 1 << 20  # longer documents are encoded in pieces cut after a newline
QUEUE_BATCHES = 3


def is_validation(text: str, seed: int, fraction: float) -> bool:
    """Deterministic held-out choice by document: a seeded hash of the text, not its position."""
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8,
                             key=seed.to_bytes(8, "little", signed=True)).digest()
    return int.from_bytes(digest, "little") < fraction * 2**64


@dataclass
class Counts:
    documents: int = 0
    tokens: int = 0
    blocks: int = 0
    dropped_tokens: int = 0
    characters: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class Batch:
    texts: list[str] = field(default_factory=list)
    sets: list[str] = field(default_factory=list)
    val: list[bool] = field(default_factory=list)
    first: list[bool] = field(default_factory=list)  # False for a piece that continues its document
    last: list[bool] = field(default_factory=list)  # False for a piece that its document continues
    chars: int = 0


def pieces(text: str, size: int = PIECE_CHARS) -> Iterator[str]:
    """``text`` in pieces of about ``size`` characters, cut after a newline where there is one, so
    that a book-sized document never needs its whole encoding in memory."""
    start = 0
    while len(text) - start > size:
        cut = text.rfind("\n", start + size // 2, start + size) + 1 or start + size
        yield text[start:cut]
        start = cut
    yield text[start:]


def batches(docs: Iterator[tuple[str, str]], seed: int, val_fraction: float) -> Iterator[Batch]:
    batch = Batch()
    for text, set_name in docs:
        val = is_validation(text, seed, val_fraction)
        parts = [text] if len(text) <= PIECE_CHARS else list(pieces(text))
        for i, part in enumerate(parts):
            batch.texts.append(part)
            batch.sets.append(set_name)
            batch.val.append(val)
            batch.first.append(i == 0)
            batch.last.append(i == len(parts) - 1)
            batch.chars += len(part)
            if batch.chars >= BATCH_CHARS:
                yield batch
                batch = Batch()
    if batch.texts:
        yield batch


def background(items: Iterator[Any], size: int = QUEUE_BATCHES) -> Iterator[Any]:
    """Run ``items`` in a thread, at most ``size`` ahead; its exceptions re-raise here."""
    q: queue.Queue[Any] = queue.Queue(maxsize=size)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put(item)
            q.put(done)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            q.put(exc)

    thread = threading.Thread(target=work, daemon=True, name="ominix-data-reader")
    thread.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a put() so the thread can see stop
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.05)


class Packer:
    """Per (split, source set) token buffers cut into blocks and written to the split's shards; each
    document framed by ``bos`` (None: no BOS) before it and ``eos`` after it."""

    def __init__(self, root: Path, seq_len: int, dtype: np.dtype, sets: list[str], eos: int,
                 bos: int | None = None) -> None:
        self.width = seq_len + 1
        self.dtype = dtype
        self.head = () if bos is None else (bos,)
        self.tail = (eos,)
        self.sets = sets  # source-set names, index = id stored per block; grows as sets appear
        self.writers = {s: ShardWriter(root, s, seq_len, dtype) for s in ("train", "validation")}
        self.buffers: dict[tuple[str, int], np.ndarray] = {}
        self.counts: dict[tuple[str, int], Counts] = {}

    def set_id(self, name: str) -> int:
        if name not in self.sets:
            self.sets.append(name)
        return self.sets.index(name)

    def add(self, split: str, set_name: str, docs: list[list[int]], starts: list[bool], ends: list[bool],
            characters: int) -> int:
        """Append encoded pieces of documents (BOS before each whose ``starts`` is True, EOS after
        each whose ``ends`` is True); returns the token count."""
        key = (split, self.set_id(set_name))
        n_docs = sum(ends)
        total = sum(map(len, docs)) + len(self.head) * sum(starts) + n_docs
        head, tail = (self.head, ()), (self.tail, ())
        flat = np.fromiter(
            itertools.chain.from_iterable(
                itertools.chain.from_iterable((head[not start], ids, tail[not end])
                                              for ids, start, end in zip(docs, starts, ends))
            ),
            dtype=self.dtype, count=total,
        )
        counts = self.counts.setdefault(key, Counts())
        counts.documents += n_docs
        counts.tokens += total
        counts.characters += characters
        buf = self.buffers.get(key)
        buf = flat if buf is None else np.concatenate([buf, flat])
        full = len(buf) // self.width
        if full:
            self.writers[split].write(buf[: full * self.width].reshape(full, self.width), key[1])
            counts.blocks += full
        self.buffers[key] = buf[full * self.width :]
        return total

    def close(self) -> dict[str, list[dict[str, Any]]]:
        for key, buf in self.buffers.items():
            self.counts[key].dropped_tokens += len(buf)
        return {split: writer.close() for split, writer in self.writers.items()}


def _pack(batch: Batch, encodings: list[Any], packer: Packer) -> int:
    groups: dict[tuple[str, str], tuple[list[list[int]], list[bool], list[bool], list[int]]] = {}
    for enc, set_name, val, first, last, text in zip(encodings, batch.sets, batch.val, batch.first,
                                                      batch.last, batch.texts):
        key = ("validation" if val else "train", set_name)
        ids_list, starts, ends, chars = groups.setdefault(key, ([], [], [], [0]))
        ids_list.append(enc.ids)
        starts.append(first)
        ends.append(last)
        chars[0] += len(text)
    return sum(packer.add(split, set_name, ids_list, starts, ends, chars[0])
               for (split, set_name), (ids_list, starts, ends, chars) in groups.items())


def run(
    docs: Iterator[tuple[str, str]],
    tokenizer: Any,
    packer: Packer,
    seed: int,
    val_fraction: float,
    on_batch: Callable[[int, int], None] | None = None,
) -> float:
    """Encode and pack every document; ``on_batch(docs, tokens)`` after each batch. Returns seconds.

    Two encode calls are kept in flight (they share tokenizers' thread pool and release the GIL), so
    the cores stay busy while the previous batch is packed and at the uneven tail of each batch.
    """
    start = time.perf_counter()
    pending: collections.deque[tuple[Batch, Any]] = collections.deque()

    def finish_oldest() -> None:
        batch, future = pending.popleft()
        tokens = _pack(batch, future.result(), packer)
        if on_batch is not None:
            on_batch(sum(batch.last), tokens)

    with concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="ominix-encode") as pool:
        for batch in background(batches(docs, seed, val_fraction)):
            pending.append((batch, pool.submit(tokenizer.encode_batch_fast, batch.texts, add_special_tokens=False)))
            if len(pending) > 1:
                finish_oldest()
        while pending:
            finish_oldest()
    return time.perf_counter() - start
