"""The files of a release bundle: putting them in (hard link or copy), hashing each once, the one
``SHA256SUMS`` that ``sha256sum -c`` accepts, ``BUNDLE.json`` (the size of every file), and checking a
bundle against both.

A weight file, data shard or optimizer state from the run or the prepared data (files written once
and never rewritten in place) is hard-linked when it lies on the bundle's filesystem and belongs to
this user (a link shares the file's mode: it gets the umask's, readable by the group as
every output OminiX writes, which needs the owner), else copied; every other file (cards,
configs, tokenizers, logs) is copied, since a linked file is one file and an edit of the run's card
would edit the published bundle; never a symbolic link or
a path pointing outside the bundle, so the bundle stands alone once the run is deleted. Each file is
read once: a copy is hashed while it is written, a link right after it is made, and a file with a
sha256 on record (a data shard in its manifest) is refused when it no longer matches.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ominix.atomic import umask
from ominix.checkpoint import files_under
from ominix.data.verified import STAMP
from ominix.errors import OminixError
from ominix.hashing import CHUNK, sha256_file

SUMS = "SHA256SUMS"
TRAINED_STATE = "model/metadata/state.json"  # the final checkpoint's state: what the model trained on
DATA_MANIFEST = "data/manifest.json"
SIZES = "BUNDLE.json"
# progress(what, bytes done, bytes in all): told as big files are placed, hashed or verified
Progress = Callable[[str, int, int], None]
# os.link fails with these where a copy still works: another filesystem, no hard links, link limit
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}
LINKED_SUFFIXES = (".safetensors", ".bin", ".pt")  # weights, data shards, optimizer state


def _quiet(what: str, done: int, total: int) -> None:
    pass


@dataclass
class _Item:
    src: Path
    rel: str
    link: bool
    expect: str | None
    why: str


class Placer:
    """Collects the files a bundle takes from elsewhere (:meth:`add`), then puts them into the
    staging directory with one progress total (:meth:`place`) and seals it (:meth:`seal`)."""

    def __init__(self, root: Path, progress: Progress | None = None) -> None:
        self.root = root
        self.progress = progress or _quiet
        self.items: list[_Item] = []
        self.digests: dict[str, str] = {}  # rel -> sha256, for files hashed while placed
        self.linked = self.copied = 0  # bytes

    def add(self, src: Path, rel: str, *, link: bool = True, expect: str | None = None,
            why: str = "") -> None:
        """Put the file or directory ``src`` at ``rel`` in the bundle; ``expect`` is the sha256 the
        file must have (``why`` says where it was recorded, for the error)."""
        if src.is_dir():
            for path in files_under(src):
                self.items.append(_Item(path, f"{rel}/{path.relative_to(src)}", link, None, why))
        else:
            self.items.append(_Item(src, rel, link, expect, why))

    def place(self) -> None:
        total = sum(item.src.stat().st_size for item in self.items)
        done = 0
        mode = 0o666 & ~umask()
        for item in self.items:
            dest = self.root / item.rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            size = item.src.stat().st_size
            linked = item.link and item.src.suffix in LINKED_SUFFIXES and _link(item.src, dest, mode)

            def moved(n: int, base: int = done) -> None:
                self.progress("placing files", base + n, total)

            digest = sha256_file(dest, moved) if linked else _copy(item.src, dest, moved)
            if item.expect is not None and digest != item.expect:
                raise OminixError(f"{item.src}: sha256 does not match {item.why}",
                                  "prepare the data again, or pass --data with the original")
            self.digests[item.rel] = digest
            if linked:
                self.linked += size
            else:
                self.copied += size
            done += size
            self.progress("placing files", done, total)

    def write_text(self, rel: str, text: str) -> None:
        """Write the bundle file ``rel`` anew (a placed copy too: it is hashed again when sealed)."""
        (self.root / rel).unlink(missing_ok=True)  # never write through a link into the run
        (self.root / rel).write_text(text)
        self.digests.pop(rel, None)

    def seal(self, info: dict[str, object]) -> dict[str, str]:
        """Hash every file not hashed yet, write BUNDLE.json (``info`` and the size of every file) and
        SHA256SUMS; returns the sums."""
        files = [p for p in files_under(self.root) if p.name not in (SUMS, SIZES) or p.parent != self.root]
        sizes = {str(p.relative_to(self.root)): p.stat().st_size for p in files}
        (self.root / SIZES).write_text(json.dumps({"format": 1, **info, "files": sizes}, indent=1) + "\n")
        sums = _hash_all(self.root, [*files, self.root / SIZES], self.digests, self.progress)
        (self.root / SUMS).write_text("".join(f"{digest}  {rel}\n" for rel, digest in sorted(sums.items())))
        return sums


def _link(src: Path, dest: Path, mode: int) -> bool:
    """Hard-link ``src`` to ``dest`` when that is possible and safe; False when it must be copied."""
    info = src.stat()
    if info.st_uid != os.getuid():  # the bundle's chmod to the umask's mode would fail on it
        return False
    try:
        os.link(src, dest)
    except OSError as exc:
        if exc.errno in _NO_LINK:
            return False
        raise
    if info.st_mode & 0o777 != mode:
        os.chmod(dest, mode)
    return True


def _copy(src: Path, dest: Path, moved: Callable[[int], None]) -> str:
    """Copy ``src`` to ``dest`` and return its sha256 (one read)."""
    digest = hashlib.sha256()
    done = 0
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        while block := fin.read(CHUNK):
            digest.update(block)
            fout.write(block)
            done += len(block)
            moved(done)
    shutil.copystat(src, dest)
    return digest.hexdigest()


def _hash_all(root: Path, files: list[Path], known: dict[str, str], progress: Progress,
              what: str = "hashing") -> dict[str, str]:
    todo = [p for p in files if str(p.relative_to(root)) not in known]
    total = sum(p.stat().st_size for p in todo)
    done = 0
    sums = {rel: digest for rel, digest in known.items() if (root / rel).is_file()}
    for path in todo:
        sums[str(path.relative_to(root))] = sha256_file(path, lambda n, base=done: progress(what, base + n, total))
        done += path.stat().st_size
    progress(what, total, total)
    return sums


@dataclass
class BundleCheck:
    """What ``mof check`` found in a bundle directory."""

    path: Path
    verified: bool  # hashes compared (False with --no-verify: presence and sizes only)
    missing: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        """One line per problem."""
        return [*self.malformed, *(f"{rel}: missing" for rel in self.missing),
                *(f"{rel}: {why}" for rel, why in self.changed),
                *(f"{rel}: not listed in {SUMS}" for rel in self.unlisted)]

    def to_json(self) -> dict[str, object]:
        return {"path": str(self.path), "verified": self.verified, "ok": not self.problems,
                "missing": self.missing, "changed": [rel for rel, _ in self.changed],
                "unlisted": self.unlisted, "problems": self.problems}


def read_sums(bundle: Path) -> tuple[dict[str, str], list[str]]:
    """The files the bundle's SHA256SUMS lists (relative path -> sha256), and one line per line of
    it that is not ``SHA256  RELATIVE/PATH`` (a path leaving the bundle counts as such)."""
    from ominix.release.mof import read_text

    listed: dict[str, str] = {}
    malformed = []
    for number, line in enumerate(read_text(bundle / SUMS, "a checksum list").splitlines(), 1):
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64 or rel.startswith("/") or ".." in Path(rel).parts:
            malformed.append(f"{SUMS} line {number}: not `SHA256  RELATIVE/PATH`")
        else:
            listed[rel] = digest
    return listed, malformed


def _recorded_sizes(bundle: Path) -> dict[str, int]:
    try:
        return json.loads((bundle / SIZES).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # a bundle of an earlier version, or BUNDLE.json itself damaged (its sha256 says so)


def _foreign_data(bundle: Path) -> list[tuple[str, str]]:
    """The bundle's data manifest when it is not the one the final model's state records: sums
    written over another run's data hold, and still the data is not the model's."""
    from ominix.data.recorded import data_mismatch

    state = bundle / TRAINED_STATE
    try:
        recorded = json.loads(state.read_text()).get("data_manifest_sha256") if state.is_file() else None
    except (ValueError, AttributeError):
        return []  # a damaged state.json: its sha256 line says so
    if not (bundle / DATA_MANIFEST).is_file() or not (why := data_mismatch(bundle / "data", recorded)):
        return []
    return [(DATA_MANIFEST, f"not the data the model trained on ({why} in {TRAINED_STATE})")]


MOF_FILE = "mof.yml"  # MOT's model sync picks up *.yml files only
LEGACY_MOF_FILE = "mof.yaml"  # what bundles were written with before; still read


def bundle_mof_file(bundle: Path) -> Path | None:
    """The MOF model file of bundle directory ``bundle`` (``mof.yml``; ``mof.yaml`` in a bundle
    written before the rename), or None."""
    return next((bundle / n for n in (MOF_FILE, LEGACY_MOF_FILE) if (bundle / n).is_file()), None)

def verify_bundle(bundle: Path, verify: bool = True, progress: Progress | None = None) -> BundleCheck:
    """Check the bundle directory against its SHA256SUMS (and the sizes in BUNDLE.json): files
    missing, changed or not listed. ``verify=False`` compares sizes instead of hashing."""
    check = BundleCheck(bundle, verify)
    if not (bundle / SUMS).is_file():
        check.missing.append(f"{SUMS} (not a bundle written by `ominix mof report`)")
        return check
    listed, check.malformed = read_sums(bundle)
    sizes = _recorded_sizes(bundle)
    present = []
    for rel in listed:
        path = bundle / rel
        if not path.is_file():
            check.missing.append(rel)
        elif rel in sizes and path.stat().st_size != sizes[rel]:
            check.changed.append((rel, f"size {path.stat().st_size} bytes, was {sizes[rel]} bytes when released"))
        else:
            present.append(path)
    if verify:
        sums = _hash_all(bundle, present, {}, progress or _quiet, "verifying")
        check.changed += [(rel, "sha256 mismatch (changed since the bundle was written)")
                          for rel, digest in sums.items() if digest != listed[rel]]
        check.changed.sort()
    check.changed += _foreign_data(bundle)
    # the data's verification stamp (written when a run or eval reads the bundle's data/) is a
    # record of hashing, not released content
    check.unlisted = [str(p.relative_to(bundle)) for p in files_under(bundle)
                      if str(p.relative_to(bundle)) not in listed and p != bundle / SUMS
                      and p.name != STAMP]
    return check
