"""Outputs that appear whole or not at all.

A command builds a directory output inside :func:`staged` (under ``.NAME.tmp-PID`` beside ``NAME``),
which publishes it when complete; an interrupted command leaves only the hidden temporary, which the
next run removes (:func:`remove_stale`) once its process is gone. A single file is written with
:func:`write_text` (temporary sibling, then rename).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """Build the directory ``out`` in an empty temporary sibling (yielded) and publish it when the
    block ends; an error or interrupt removes the temporary and leaves ``out`` as it was."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out)
    tmp = staging_path(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: Path, text: str) -> None:
    """Write the file ``path`` through a temporary sibling and a rename: readers see old or new."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
