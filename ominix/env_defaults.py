"""Environment variables set for the length of a block, where the process has none of its own."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping


@contextlib.contextmanager
def env_defaults(values: Mapping[str, str]) -> Iterator[None]:
    """Set the ``values`` this process's environment lacks, and remove them again on exit; a
    variable already set (by the user, by torchrun) is left as it is."""
    added = [key for key in values if key not in os.environ]
    os.environ.update({key: values[key] for key in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)
