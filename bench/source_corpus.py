"""A corpus larger than the embedded one, built from files on this machine: no download.

The embedded corpus holds ~0.37M training tokens at the 8,192-id tokenizer, so a 200-step run at 24
sequences of 4,096 tokens sees it ~53 times and ends up memorising it: two runs that differ only in
rounding then part along the memorisation, which is what the loss match should not measure.
This writes the Python source files under a directory (an installed package tree, say), sorted by
path, one record per file, as ``{"text"}`` lines in one ``.jsonl.zst``, until ``--mb`` megabytes of
text, so that ``ominix data prepare`` gives a run that sees every block once. Sorted paths and a
fixed cut make the file the same on every machine with the same tree; the sha256 it prints names it.

    python bench/source_corpus.py .venv/lib/python3.11/site-packages --mb 70 --out .corpus/src.jsonl.zst
    ominix data prepare .corpus/src.jsonl.zst --tokenizer .c4096/tokenizer --seq-len 4096 --out /tmp/src4096
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path


def files(root: Path) -> list[Path]:
    """Python files under ``root``, sorted by relative path (caches and links skipped)."""
    found = (p for p in root.rglob("*.py") if p.is_file() and not p.is_symlink() and "__pycache__" not in p.parts)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path, help="directory whose *.py files make the corpus")
    ap.add_argument("--mb", type=float, default=70.0, help="stop after this many megabytes of text")
    ap.add_argument("--min-bytes", type=int, default=512, help="skip files smaller than this")
    ap.add_argument("--out", type=Path, required=True, help="the .jsonl.zst to write")
    args = ap.parse_args()
    import zstandard

    limit, total, records = int(args.mb * 1e6), 0, 0
    raw = bytearray()
    for path in files(args.root):
        text = path.read_bytes().decode("utf-8", errors="replace")
        if len(text) < args.min_bytes:
            continue
        raw += (json.dumps({"text": text}) + "\n").encode()
        total, records = total + len(text), records + 1
        if total >= limit:
            break
    if not records:
        raise SystemExit(f"error: no Python file of {args.min_bytes}+ bytes under {args.root}")
    if total < limit:
        print(f"note: {args.root} holds only {total / 1e6:.1f} MB of Python source", file=sys.stderr)
    data = zstandard.ZstdCompressor(level=10, threads=-1).compress(bytes(raw))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(args.out)
    print(f"{args.out}: {records} files, {total / 1e6:.1f} MB of text, {len(data) / 2**20:.1f} MiB, "
          f"sha256 {hashlib.sha256(data).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
