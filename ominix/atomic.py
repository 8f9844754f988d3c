"""Directory outputs that appear whole or not at all.

A command builds its output under ``.NAME.tmp-PID`` beside ``NAME`` and calls :func:`publish` when it
is complete; an interrupted command leaves only the hidden temporary, which the next run removes
(:func:`remove_stale`) once its process is gone.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def staging_path(out: Path) -> Path:
    """The temporary sibling of ``out`` that this process builds into."""
    return out.parent / f".{out.name}.tmp-{os.getpid()}"


def remove_stale(out: Path) -> None:
    """Delete temporaries of ``out`` left by processes that no longer exist."""
    for tmp in out.parent.glob(f".{out.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        try:
            os.kill(int(pid), 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:
            pass  # a live process of another user


def publish(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` (the caller checked --force) is moved aside
    first and deleted only once the new one is in place."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old)
