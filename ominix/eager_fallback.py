"""A compiled function that falls back to its eager original when compiling it fails.

``torch.compile`` compiles on the first call, so a missing compiler (no Triton, no C++ toolchain on
a node) or a graph Inductor cannot lower shows only once training has started. The first call of
each wrapped function tries the compiled version; if that raises (out of memory aside), the process
logs one notice and runs eager from then on. A genuine error in the function raises again from the
eager call, so nothing is hidden. After one successful call nothing is caught.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("ominix")
_failed: list[str] = []  # the first failure's words, once per process: every region is then eager


class _OrEager:
    def __init__(self, compiled: Callable[..., Any], eager: Callable[..., Any]) -> None:
        self.compiled, self.eager, self.proven = compiled, eager, False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.proven:
            return self.compiled(*args, **kwargs)
        if _failed:
            return self.eager(*args, **kwargs)
        import torch

        try:
            out = self.compiled(*args, **kwargs)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - any compiler failure; the eager call re-raises real errors
            _failed.append(_cause(exc))
            log.warning("model.compile: torch.compile failed (%s); training continues eager "
                        "(set model.compile=false to skip the attempt)", _failed[0])
            return self.eager(*args, **kwargs)
        self.proven = True
        return out


def _cause(exc: BaseException) -> str:
    """The innermost error's type and first line (dynamo wraps a backend's own error)."""
    while (inner := exc.__cause__ or getattr(exc, "inner_exception", None)) is not None and inner is not exc:
        exc = inner
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {first}"


def or_eager(compiled: Callable[..., Any], eager: Callable[..., Any]) -> Callable[..., Any]:
    """``compiled`` until its first call fails to compile, then ``eager`` (one notice per process)."""
    return _OrEager(compiled, eager)
