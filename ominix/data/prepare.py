"""``prepare``: sources -> tokenizer -> packed, checksummed shards + manifest + data card, atomically.

The output is built under ``.OUT.tmp-PID`` next to ``OUT`` and renamed into place only when
complete; any error (bad input found mid-stream included) or an interrupt removes the temporary
directory, so nothing that looks valid is ever left half-written. Stale temporaries of dead runs
are removed on the next run, which then starts over.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ominix.atomic import check_replaceable, staged
from ominix.config import DataConfig
from ominix.errors import OminixError
from ominix.hashing import sha256_file

TOKENIZER_TRAIN_CHARS = 1 << 30  # a trained tokenizer sees at most the first ~1 GB of training text


class PrepareReporter:
    """What ``prepare`` tells of its progress, inside one ``with`` block; this base says nothing
    (the CLI's subclass draws a progress bar)."""

    def __enter__(self) -> PrepareReporter:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def phase(self, description: str, total_bytes: int | None = None) -> None:
        """A pass over the input (``total_bytes`` of source files) starts."""

    def file_done(self, nbytes: int) -> None:
        """One source file of ``nbytes`` was read through (called from the reader thread)."""

    def update(self, docs: int, tokens: int) -> None:
        """``docs`` more documents, ``tokens`` more tokens packed."""

    def finish(self) -> None:
        """The last pass is complete."""


def _documents(parts: list[Any], text_field: str, on_file: Any = None) -> Iterator[tuple[str, str]]:
    for part in parts:
        yield from part.documents(text_field, on_file)


def _training_texts(parts: list[Any], cfg: DataConfig, budget: list[int], on_file: Any) -> Iterator[str]:
    from ominix.data.pack import is_validation

    for text, _ in _documents(parts, cfg.text_field, on_file):
        if budget[0] >= TOKENIZER_TRAIN_CHARS:
            return
        if not is_validation(text, cfg.seed, cfg.val_fraction):
            budget[0] += len(text)
            yield text


def _check_result(manifest: dict[str, Any], cfg: DataConfig) -> None:
    splits = manifest["splits"]
    docs = sum(s["documents"] for s in splits.values())
    if docs == 0:
        raise OminixError("the corpus is empty: no document with text was found",
                          f"check the sources, --split {cfg.split!r} and --text-field {cfg.text_field!r}")
    if splits["train"]["blocks"] == 0:
        raise OminixError(
            f"too little text: {splits['train']['tokens']} training tokens make no block of "
            f"{cfg.seq_len + 1}", "add text or lower --seq-len",
        )
    if cfg.val_fraction > 0 and splits["validation"]["blocks"] == 0:
        raise OminixError(
            f"the validation split is empty ({splits['validation']['documents']} documents, "
            f"{splits['validation']['tokens']} tokens, fewer than one block of {cfg.seq_len + 1})",
            "raise --val-fraction, add documents, or pass --val-fraction 0",
        )


def prepare(
    cfg: DataConfig,
    out: str | Path,
    *,
    force: bool = False,
    progress: PrepareReporter | None = None,
    command: str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Prepare ``cfg``'s sources into the directory ``out``; returns its manifest (also in ``out``).

    ``progress`` is told of phases, files read and documents packed (None or False: nothing is);
    ``log`` receives one-line notes (download sizes); ``command`` is recorded in the manifest
    (default: this process's argv).
    """
    from ominix import __version__
    from ominix.data import card, pack, sources, store, tokenizer

    out = Path(out).expanduser().absolute()
    local = [Path(spec).expanduser() for spec in cfg.sources]
    check_replaceable(out, "data", force, inputs=[path for path in local if path.exists()])
    if not cfg.tokenizer and not cfg.train_tokenizer:
        raise OminixError("no tokenizer chosen", "pass --tokenizer PATH, or --train-tokenizer --vocab-size N")
    if cfg.num_proc:
        os.environ["RAYON_RS_NUM_CPUS"] = str(cfg.num_proc)  # tokenizers' thread pool, read at first use
    parts = sources.plan(cfg.sources, cfg.split, streaming=cfg.streaming, log=log)
    tok = tokenizer.load(cfg.tokenizer) if cfg.tokenizer else None
    started = time.time()
    with staged(out, kind="data") as tmp:
        total_bytes = sum(sum(p.sizes) for p in parts)
        with progress or PrepareReporter() as bar:
            trained_chars = [0]
            if tok is None:
                bar.phase(f"training tokenizer (byte-level BPE, {cfg.vocab_size} ids)", total_bytes)
                texts = _training_texts(parts, cfg, trained_chars, bar.file_done)
                tok = tokenizer.train_bpe(texts, cfg.vocab_size)
            tok_file = tokenizer.save(tok, tmp / "tokenizer", cfg.seq_len)
            framing = tokenizer.framing_of_dir(tmp / "tokenizer")
            dtype = store.token_dtype(tok.vocab_size)
            packer = pack.Packer(tmp, cfg.seq_len, dtype, [], tok.eos_id,
                                 tok.bos_id if framing == store.WITH_BOS else None)
            bar.phase("tokenizing and packing", total_bytes)
            seconds = pack.run(_documents(parts, cfg.text_field, bar.file_done), tok.tokenizer,
                               packer, cfg.seed, cfg.val_fraction, bar.update)
            bar.finish()
        shards = packer.close()
        manifest: dict[str, Any] = {
            "format": store.FORMAT,
            "ominix_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": command or shlex.join(sys.argv),
            "config": cfg.model_dump(mode="json"),
            "split": cfg.split,
            "text_field": cfg.text_field,
            "val_fraction": cfg.val_fraction,
            "seed": cfg.seed,
            "sources": [p.describe() for p in parts],
            "tokenizer": {
                "dir": "tokenizer",
                "file": "tokenizer/tokenizer.json",
                "sha256": sha256_file(tok_file),
                "vocab_size": tok.vocab_size,
                "eos_token": tok.eos,
                "eos_id": tok.eos_id,
                "bos_token": tok.bos,
                "bos_id": tok.bos_id,
                "origin": tok.origin,
                **({"trained_on_characters": trained_chars[0]} if tok.origin == "trained" else {}),
            },
            "framing": framing,
            "seq_len": cfg.seq_len,
            "block_tokens": cfg.seq_len + 1,
            "dtype": dtype.name,
            "source_sets": packer.sets,
            "splits": {},
        }
        for split, split_shards in shards.items():
            per_source = {
                packer.sets[sid]: c.as_dict() for (s, sid), c in sorted(packer.counts.items()) if s == split
            }
            totals = {k: sum(c[k] for c in per_source.values()) for k in pack.Counts().as_dict()}
            manifest["splits"][split] = {**totals, "per_source": per_source, "shards": split_shards}
        tokens = sum(s["tokens"] for s in manifest["splits"].values())
        documents = sum(s["documents"] for s in manifest["splits"].values())
        manifest["timing"] = {
            "seconds": round(time.time() - started, 3),
            "tokenize_pack_seconds": round(seconds, 3),
            "tokens_per_second": round(tokens / seconds, 1) if seconds else None,
            "documents_per_second": round(documents / seconds, 1) if seconds else None,
            "num_proc": cfg.num_proc or os.cpu_count(),
        }
        _check_result(manifest, cfg)
        card.write(tmp, manifest)
    return manifest
