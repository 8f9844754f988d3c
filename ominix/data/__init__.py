"""Data: sources (hub, local files, saved datasets, the embedded corpus), tokenizer, packing,
the shard store, and the training/evaluation loaders.

Names are imported lazily so that ``import ominix.data`` stays cheap (the loader imports torch,
preparation imports ``datasets``).
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "PackedDataset": "ominix.data.store",
    "manifest_sha256": "ominix.data.store",
    "read_manifest": "ominix.data.store",
    "verify": "ominix.data.store",
    "BlockLoader": "ominix.data.loader",
    "eval_batches": "ominix.data.loader",
    "prepare": "ominix.data.prepare",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ominix.data' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
