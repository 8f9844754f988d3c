"""Outputs that appear whole or not at all, and the one rule for which outputs a command may replace.

A command builds a directory output inside :func:`staged` (under ``.NAME.tmp-PID`` beside ``NAME``),
which publishes it when complete; an interrupted command leaves only the hidden temporary, which the
next run removes (:func:`remove_stale`) once its process is gone. A single file is written with
:func:`write_text` (temporary sibling, then rename).

Every output a user names goes through :func:`check_replaceable` first. It never replaces a device
or other special file, a symbolic link, the command's input, or anything inside a dataset, an
export, a bundle or a checkpoint (their checksums would lie), nor a run's own files. Otherwise a new
path is created; an existing directory output is replaced with ``--force`` when its marker,
``.ominix-output.json`` (kind, date, OminiX version, written before anything else), says the same
kind; an existing single file is replaced when it carries the mark of the same command
(:func:`file_mark`: a ``written_by`` field near its start), or with ``--force`` when it is a regular
file.

Files an output holds get the permissions the umask gives (:func:`make_readable`): some writers
(safetensors) create theirs 0600, which teammates on shared storage cannot read.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ominix.errors import OminixError

MARKER = ".ominix-output.json"


@dataclass(frozen=True)
class OutputKind:
    what: str  # in the reader's words: "a prepared dataset"
    command: str  # the command that makes it
    directory: bool
    # directories made before MARKER existed: a file and a JSON field only OminiX writes into it
    legacy: tuple[str, str, str | None] | None = None
    edited: bool = False  # a file the user edits after it is written: only --force replaces it
    sealed: bool = False  # a directory whose files are checksummed: nothing is written inside it


KINDS = {
    "data": OutputKind("a prepared dataset", "ominix data prepare", True,
                       ("manifest.json", "format", "ominix-packed-v1"), sealed=True),
    "export": OutputKind("a checkpoint export", "ominix checkpoint export", True,
                         ("ominix_export.json", "format", "huggingface-llama"), sealed=True),
    "bundle": OutputKind("a MOF release bundle", "ominix mof report", True,
                         ("mof_classification.json", "components", None), sealed=True),
    "quickstart": OutputKind("a quickstart directory", "ominix quickstart", True,
                             (".ominix-quickstart", "", None)),
    "schema": OutputKind("a config JSON Schema", "ominix config schema", False),
    "eval": OutputKind("evaluation results", "ominix eval", False),
    "samples": OutputKind("sample outputs", "ominix infer", False),
    "figure": OutputKind("a training figure", "ominix train plot", False),
    "release-template": OutputKind("a release.yaml template", "ominix mof init", False, edited=True),
}
RUN_FILES = ("config.yaml", "checkpoints", "train.log", "metrics.jsonl")  # what a run directory holds
CHECKPOINT_FILES = ("state.json", "integrity.json")  # either one makes a directory a checkpoint
MARK_BYTES = 4096  # a file's mark is within its first bytes: its writer puts it first


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

    info = {"kind": kind, "made_by": KINDS[kind].command, "ominix_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    (out / MARKER).write_text(json.dumps(info, indent=2) + "\n")


def file_mark(kind: str) -> dict[str, str]:
    """The field a single-file output of ``kind`` starts with (a JSON key, a PNG text chunk): how
    :func:`check_replaceable` knows the file is that command's own earlier output."""
    return {"written_by": KINDS[kind].command}


def _has_mark(path: Path, kind: str) -> bool:
    try:
        with path.open("rb") as f:
            head = f.read(MARK_BYTES)
    except OSError:
        return False
    # '"written_by": "ominix eval"' in JSON, 'written_by\0ominix train plot' in a PNG text chunk
    return re.search(rb'written_by\W{1,4}' + re.escape(KINDS[kind].command.encode()), head) is not None


def _legacy_kind(path: Path) -> str | None:
    """The kind of a directory made before MARKER existed, by the file and field that mark it."""
    for kind, info in KINDS.items():
        if info.legacy is None or not (path / info.legacy[0]).is_file():
            continue
        name, field, value = info.legacy
        if not field:
            return kind
        try:
            record = json.loads((path / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and field in record and (value is None or record[field] == value):
            return kind
    return None


def output_kind(path: Path) -> str | None:
    """The kind of OminiX output the directory ``path`` is, by its marker (or, for outputs of
    earlier versions, the field that marked its kind); ``"checkpoint"`` for one checkpoint,
    ``"run"`` for a training run; else None."""
    if any((path / name).is_file() for name in CHECKPOINT_FILES):
        return "checkpoint"
    if any((path / name).exists() for name in RUN_FILES):
        return "run"  # checked first: nothing marks a run directory as replaceable
    try:
        kind = json.loads((path / MARKER).read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        kind = None
    return kind if kind in KINDS else _legacy_kind(path)


def _inside(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


UNMARKED = {None: "files no OminiX command made", "run": "a training run", "checkpoint": "a checkpoint"}


def _described(kind: str | None) -> str:
    return UNMARKED[kind] if kind in UNMARKED else f"{KINDS[kind].what} (made by `{KINDS[kind].command}`)"


def _protected_by(resolved: Path) -> tuple[Path, str] | None:
    """The directory (and its kind) whose files ``resolved`` would change: a sealed output or a
    checkpoint it lies in, or the run whose own file it is; none inside an output this process
    builds (a bundle exports its weights into itself)."""
    building = f".tmp-{os.getpid()}"  # an output this process is staging is not sealed yet
    for parent in resolved.parents:
        if parent.name.startswith(".") and parent.name.endswith(building):
            return None
        kind = output_kind(parent)
        if kind == "checkpoint" or (kind in KINDS and KINDS[kind].sealed):
            return parent, kind
        if kind == "run" and resolved.relative_to(parent).parts[0] in RUN_FILES:
            return parent, kind
    return None


def _refuse_protected(out: Path, resolved: Path, elsewhere: str) -> None:
    protected = _protected_by(resolved)
    if protected is None:
        return
    where, found = protected
    if found == "run":
        raise OminixError(f"--out {out} is one of the files of the training run {where}; refusing to "
                          "replace it", f"{elsewhere}: a path that is not the run's {', '.join(RUN_FILES)}")
    raise OminixError(f"--out {out} lies inside {where}, {_described(found)}; writing there would "
                      "change it", f"{elsewhere}, outside {where}")


def check_run_dir(run_dir: Path) -> None:
    """Refuse a training run directory that is or lies inside a dataset, an export, a bundle or a
    checkpoint, or is one of another run's files: training would write its files into them."""
    resolved = run_dir.expanduser().resolve()
    found = output_kind(resolved) if resolved.is_dir() else None
    if found == "checkpoint" or (found in KINDS and KINDS[found].sealed):
        raise OminixError(f"--out {run_dir} is {_described(found)}, not a run directory",
                          "choose another --out for the run (a new directory, or a run's to resume it)")
    _refuse_protected(run_dir, resolved, "choose another --out for the run")


def check_replaceable(out: Path, kind: str, force: bool, inputs: Iterable[Path] = ()) -> None:
    """Refuse, before anything is read or written, an ``out`` that the command making ``kind``
    must not write: the rule of this module's docstring, one error and hint per case."""
    info = KINDS[kind]
    if not info.directory and out.is_dir() and not out.is_symlink():
        raise OminixError(f"--out {out} is a directory", f"give the path of a file, e.g. --out {out / 'NAME'}")
    resolved = out.expanduser().resolve()
    for source in inputs:
        if _inside(Path(source).expanduser().resolve(), resolved):
            raise OminixError(f"--out {out} is or contains the input {source}; refusing to replace it",
                              "choose an --out outside the input")
    elsewhere = "choose another --out (a new or empty directory)" if info.directory else "choose another --out"
    _refuse_protected(out, resolved, elsewhere)
    if not out.exists() and not out.is_symlink():
        return
    mode = out.lstat().st_mode
    if stat.S_ISLNK(mode) or not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        what = "a symbolic link" if stat.S_ISLNK(mode) else "a device or other special file"
        raise OminixError(f"--out {out} is {what}; refusing to replace it", elsewhere)
    if info.directory:
        _check_directory(out, kind, force, elsewhere)
    elif not force and (info.edited or not _has_mark(out, kind)):
        why = "" if info.edited else f" and is not {info.what} written by `{info.command}`"
        raise OminixError(f"{out} already exists{why}", "pass --force to replace it, or choose another --out")


def _check_directory(out: Path, kind: str, force: bool, elsewhere: str) -> None:
    info = KINDS[kind]
    if not out.is_dir():
        raise OminixError(f"{out} is not a directory, not {info.what}; --force only replaces one made by "
                          f"`{info.command}`", elsewhere)
    if not force:
        raise OminixError(f"{out} already exists", "pass --force to replace it, or choose another --out")
    if not any(out.iterdir()):
        return
    found = output_kind(out)
    if found != kind:
        raise OminixError(f"{out} holds {_described(found)}, not {info.what}; --force only replaces one made "
                          f"by `{info.command}`", elsewhere)


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
