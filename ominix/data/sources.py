"""Turn source specs and a split expression into a plan: which files, which records, how much to fetch.

A spec is ``@embedded`` (the corpus shipped with OminiX), a local file, directory or glob, a
``save_to_disk`` directory, or a Hugging Face dataset id. Local directories laid out as
``DIR/<split>/...`` (SlimPajama's layout) give one split per top-level folder; anything else is the
``train`` split. Record slices (``train[1000:2000]``, ``train[:10%]``) are exact for local data;
see ``ominix.data.hub`` for the hub, where a percentage selects a prefix of the split's files.
"""

from __future__ import annotations

import glob
import json
import re
from pathlib import Path
from typing import Any

from ominix.data import embedded, hub, readers
from ominix.data.source_part import SPLIT_DIRS, SourcePart, natural_key
from ominix.data.splits import SplitPart, parse_split
from ominix.errors import OminixError

HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def _local_files(root: Path) -> tuple[list[Path], list[Path]]:
    """(supported, unsupported) files under ``root``; hidden files and directories are ignored."""
    files = sorted((p for p in root.rglob("*") if p.is_file()
                    and not any(part.startswith(".") for part in p.relative_to(root).parts)), key=natural_key)
    return [f for f in files if readers.kind(f)], [f for f in files if not readers.kind(f)]


def _skipped_note(spec: str, skipped: list[Path]) -> str:
    names = ", ".join(str(f) for f in skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
    return (f"notice: skipped {len(skipped)} file(s) of {spec} of an unsupported type: {names} "
            f"(supported: {', '.join(readers.SUFFIXES)}; listed in the manifest)")


def _by_split(root: Path, files: list[Path]) -> dict[str, list[Path]]:
    groups: dict[str, list[Path]] = {}
    tops = {f.relative_to(root).parts[0] for f in files if len(f.relative_to(root).parts) > 1}
    if tops & set(SPLIT_DIRS):
        for f in files:
            rel = f.relative_to(root).parts
            if len(rel) > 1 and rel[0] in SPLIT_DIRS:
                groups.setdefault(rel[0], []).append(f)
        return groups
    return {"train": files}


def _saved_splits(root: Path) -> dict[str, list[Path]]:
    """Arrow files per split of a ``save_to_disk`` directory (Dataset or DatasetDict)."""
    if (root / "dataset_dict.json").is_file():
        names = json.loads((root / "dataset_dict.json").read_text())["splits"]
        return {name: _saved_splits(root / name)["train"] for name in names}
    state = json.loads((root / "state.json").read_text())
    return {"train": [root / f["filename"] for f in state["_data_files"]]}


def _is_saved(root: Path) -> bool:
    return (root / "dataset_dict.json").is_file() or (
        (root / "state.json").is_file() and (root / "dataset_info.json").is_file()
    )


def _local_splits(spec: str) -> tuple[str, str, dict[str, list[Path]], list[Path]]:
    """(kind, default source-set name, files per split, unsupported files skipped) of a local
    spec; OminixError when it has no supported file."""
    path = Path(spec).expanduser()
    if any(c in spec for c in "*?["):
        files = sorted(
            (Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file()), key=natural_key
        )
        supported = [f for f in files if readers.kind(f)]
        if not supported:
            found = f"{len(files)} files, none of a supported type" if files else "nothing"
            raise OminixError(
                f"the pattern {spec!r} matches {found}",
                f"check the pattern; supported: {', '.join(readers.SUFFIXES)}",
            )
        return "local", spec, {"train": supported}, [f for f in files if not readers.kind(f)]
    if path.is_dir():
        if _is_saved(path):
            return "saved", path.name, _saved_splits(path), []
        files, skipped = _local_files(path)
        if not files:
            found = f" ({len(skipped)} files of other types)" if skipped else ""
            raise OminixError(
                f"{path} holds no supported data files{found}", f"supported: {', '.join(readers.SUFFIXES)}"
            )
        return "local", path.name, _by_split(path, files), skipped
    if path.is_file():
        if not readers.kind(path):
            raise OminixError(f"{path}: unsupported file type", f"use one of {', '.join(readers.SUFFIXES)}")
        return "local", path.name.split(".")[0], {"train": [path]}, []
    raise OminixError(
        f"no such file, directory or dataset: {spec!r}",
        "give a local path, a glob, @embedded, or a Hugging Face dataset id (owner/name)",
    )


def _pick(spec: str, splits: dict[str, Any], part: SplitPart) -> Any:
    if part.split not in splits:
        raise OminixError(
            f"{spec} has no split {part.split!r} (it has: {', '.join(splits)})",
            "choose one with --split",
        )
    return splits[part.split]


def plan(specs: list[str], split: str, *, streaming: bool = False, log: Any = None) -> list[SourcePart]:
    """Resolve every source and split term into Parts (nothing is read or downloaded yet)."""
    terms = parse_split(split)
    if not specs:
        raise OminixError("no data source given", "name one: a path, a glob, @embedded, or owner/name")
    parts: list[SourcePart] = []
    for spec in specs:
        if spec == embedded.EMBEDDED:
            corpus = embedded.info()
            for term in terms:
                files = _pick(spec, {"train": [embedded.CORPUS_FILE]}, term)
                parts.append(SourcePart(spec, "embedded", corpus["name"], term, files,
                                  [f.stat().st_size for f in files], corpus["license"],
                                  {"description": corpus["description"], "url": corpus["url"]}))
            continue
        local = Path(spec).expanduser().exists() or any(c in spec for c in "*?[") or readers.kind(spec)
        if not local and HUB_ID.match(spec):
            parts.extend(hub.plan(spec, terms, streaming=streaming, log=log))
            continue
        kind, name, splits, skipped = _local_splits(spec)
        if skipped and log is not None:
            log(_skipped_note(spec, skipped))
        extra = {"skipped_files": [str(f) for f in skipped]} if skipped else {}
        for term in terms:
            files = _pick(spec, splits, term)
            sizes = [f.stat().st_size for f in files]
            parts.append(SourcePart(spec, kind, name, term, files, sizes, extra=extra))
    return parts
