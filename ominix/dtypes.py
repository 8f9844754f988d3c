"""The precisions OminiX accepts (``bf16``, ``fp16``, ``fp32``) and what torch and transformers call them.

Importable without torch: the names are strings; :func:`torch_dtype` imports torch when called.
"""

from __future__ import annotations

from typing import Any

from ominix.errors import OminixError

NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}  # torch's names, also transformers'
DTYPES = tuple(NAMES)


def dtype_name(name: str) -> str:
    """The torch / transformers name of ``name`` (``bf16`` -> ``bfloat16``); OminixError when unknown."""
    if name not in NAMES:
        raise OminixError(f"unknown dtype {name!r}", f"use one of: {', '.join(DTYPES)}")
    return NAMES[name]


def torch_dtype(name: str) -> Any:
    """The ``torch.dtype`` of ``name`` (``bf16`` -> ``torch.bfloat16``)."""
    import torch

    return getattr(torch, dtype_name(name))
