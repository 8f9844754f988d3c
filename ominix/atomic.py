"""Outputs that appear whole or not at all.

A command builds a directory output inside :func:`staged` (under ``.NAME.tmp-PID`` beside ``NAME``),
which publishes it when complete; an interrupted command leaves only the hidden temporary, which the
next run removes (:func:`remove_stale`) once its process is gone. A single file is written with
:func:`write_text` (temporary sibling, then rename).

Each such output carries a marker, ``.ominix-output.json`` (kind, date, OminiX version), written
before anything else: ``--force`` replaces an existing output only when it carries the marker of
the same kind (:func:`check_replaceable`), so it never deletes a run, a dataset, a bundle of another
kind, the command's own input or a directory no OminiX command made.

Files an output holds get the permissions the umask gives (:func:`make_readable`): some writers
(safetensors) create theirs 0600, which teammates on shared storage cannot read.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from ominix.errors import OminixError

MARKER = ".ominix-output.json"
# kind -> (what it is, the command that makes it, the file that marked it before MARKER existed)
KINDS = {
    "data": ("a prepared dataset", "ominix data prepare", "manifest.json"),
    "export": ("a checkpoint export", "ominix checkpoint export", "ominix_export.json"),
    "bundle": ("a MOF release bundle", "ominix mof report", "mof_classification.json"),
    "quickstart": ("a quickstart directory", "ominix quickstart", ".ominix-quickstart"),
}
RUN_FILES = ("config.yaml", "checkpoints", "train.log", "metrics.jsonl")  # what a run directory holds


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


def umask() -> int:
    """The process's umask, read without changing it where /proc tells it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_readable(paths: Iterable[Path]) -> None:
    """Give each file in ``paths`` (directories: every file under it) the mode ``0o666 & ~umask``
    that an ordinary ``open`` would have given it."""
    mode = 0o666 & ~umask()
    for path in paths:
        for file in (p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
            if not file.is_symlink():
                os.chmod(file, mode)


def write_marker(out: Path, kind: str) -> None:
    """Mark the directory ``out`` as an output of ``kind`` (see :data:`KINDS`)."""
    from ominix import __version__

    info = {"kind": kind, "made_by": KINDS[kind][1], "ominix_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    (out / MARKER).write_text(json.dumps(info, indent=2) + "\n")


def output_kind(path: Path) -> str | None:
    """The kind of OminiX output the directory ``path`` is, by its marker (or, for outputs of
    earlier versions, the file that marked its kind); ``"run"`` for a training run; else None."""
    if any((path / name).exists() for name in RUN_FILES):
        return "run"  # checked first: nothing marks a run directory as replaceable
    try:
        kind = json.loads((path / MARKER).read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        kind = None
    if kind in KINDS:
        return kind
    return next((k for k, (_, _, legacy) in KINDS.items() if (path / legacy).is_file()), None)


def _inside(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_replaceable(out: Path, kind: str, force: bool, inputs: Iterable[Path] = ()) -> None:
    """Refuse, before anything is read or written, an ``out`` that the command must not replace:
    one that is or contains one of its ``inputs``; an existing one without ``force``; with
    ``force``, a file or a non-empty directory that is not an earlier output of ``kind``."""
    what, command, _ = KINDS[kind]
    resolved = out.expanduser().resolve()
    for source in inputs:
        if _inside(Path(source).expanduser().resolve(), resolved):
            raise OminixError(f"--out {out} is or contains the input {source}; refusing to replace it",
                              "choose an --out outside the input")
    if not out.exists() and not out.is_symlink():
        return
    if not force:
        raise OminixError(f"{out} already exists", "pass --force to replace it, or choose another --out")
    if out.is_file() or out.is_symlink():
        holds = "is not a directory"
    elif not any(out.iterdir()):
        return
    else:
        found = output_kind(out)
        if found == kind:
            return
        holds = ("holds files no OminiX command made" if found is None else "holds a training run"
                 if found == "run" else f"holds {KINDS[found][0]} (made by `{KINDS[found][1]}`)")
    raise OminixError(f"{out} {holds}, not {what}; --force only replaces one made by `{command}`",
                      "choose another --out (a new or empty directory)")


def _write_error(out: Path, tmp: Path, exc: OSError) -> OminixError | None:
    """``exc`` as a one-line error when writing ``out`` failed for lack of space or permission."""
    where = Path(exc.filename) if exc.filename else None
    ours = where is None or _inside(where.absolute(), tmp) or where.absolute() in (out, out.parent)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "free space there, or choose another --out"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and ours:
        hint = "choose a writable --out"
    else:
        return None
    return OminixError(f"cannot write {out}: {exc.strerror} ({where or tmp}); nothing was written",
                       hint, exit_code=1)


@contextmanager
def staged(out: Path, kind: str | None = None) -> Iterator[Path]:
    """Build the directory ``out`` in an empty temporary sibling (yielded) and publish it when the
    block ends; an error or interrupt removes the temporary and leaves ``out`` as it was. With
    ``kind`` the output carries its marker (written first, so it is part of every checksum list)."""
    out = out.absolute()
    tmp = staging_path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(out)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as exc:
        raise (_write_error(out, tmp, exc) or exc) from exc
    try:
        if kind is not None:
            write_marker(tmp, kind)
        yield tmp
        make_readable([tmp])
        publish(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and (error := _write_error(out, tmp, exc)):
            raise error from exc
        raise


def write_text(path: Path, text: str) -> None:
    """Write the file ``path`` through a temporary sibling and a rename: readers see old or new."""
    write_bytes(path, text.encode())


def write_bytes(path: Path, data: bytes) -> None:
    """:func:`write_text` for bytes."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
