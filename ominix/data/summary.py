"""Sizes, checksum verification and decoded samples of a prepared directory (``ominix data inspect``
renders the report)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ominix.data.store import PackedDataset, framing, manifest_sha256, read_manifest
from ominix.data.store import verify as verify_checksums
from ominix.errors import OminixError


def summarize(path: str | Path, *, verify: bool = False, samples: int = 1, seed: int = 0) -> dict[str, Any]:
    """A JSON-ready report; ``problems`` lists checksum failures when verifying (else None)."""
    from tokenizers import Tokenizer

    if samples < 0:
        raise OminixError(f"--sample {samples}: the number of blocks to decode cannot be negative",
                           "use --sample 0 to decode none")
    path = Path(path)
    m = read_manifest(path)
    problems = verify_checksums(path) if verify else None
    splits = {}
    for name, info in m["splits"].items():
        files = [path / s["file"] for s in info["shards"]]
        splits[name] = {
            "documents": info["documents"], "tokens": info["tokens"], "blocks": info["blocks"],
            "shards": len(files), "bytes": sum(f.stat().st_size for f in files if f.is_file()),
            "per_source": {k: {"documents": v["documents"], "tokens": v["tokens"], "blocks": v["blocks"]}
                           for k, v in info["per_source"].items()},
        }
    decoded = []
    if samples and not problems:
        tok = Tokenizer.from_file(str(path / m["tokenizer"]["file"]))
        ds = PackedDataset(path, "train", verify=False)  # --verify checks every file
        rng = np.random.default_rng(seed)
        for i in rng.choice(len(ds), size=min(samples, len(ds)), replace=False):
            ids = ds[int(i)].tolist()
            decoded.append({"block": int(i), "source_set": ds.source_of(int(i)),
                            "text": tok.decode(ids, skip_special_tokens=False)})
    return {
        "path": str(path),
        "manifest_sha256": manifest_sha256(path),
        "created": m["created"],
        "command": m["command"],
        "ominix_version": m["ominix_version"],
        "sources": [f"{s['source']} [{s.get('requested_split', s['split'])}]" for s in m["sources"]],
        "tokenizer": {k: m["tokenizer"][k] for k in ("vocab_size", "eos_token", "sha256", "origin")},
        "framing": framing(m),
        "seq_len": m["seq_len"],
        "dtype": m["dtype"],
        "splits": splits,
        "verified": None if problems is None else not problems,
        "problems": problems or [],
        "samples": decoded,
    }

