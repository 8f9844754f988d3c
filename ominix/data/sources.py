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
from ominix.data.parts import SPLIT_DIRS, Part, natural_key
from ominix.data.splits import SplitPart, parse_split
from ominix.errors import OminixError

HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def _local_files(root: Path) -> list[Path]:
    return sorted((p for p in root.rglob("*") if p.is_file() and readers.kind(p)), key=natural_key)


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


def _local_splits(spec: str) -> tuple[str, str, dict[str, list[Path]]]:
    """(kind, default source-set name, files per split) of a local spec; OminixError when none."""
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
        return "local", spec, {"train": supported}
    if path.is_dir():
        if _is_saved(path):
            return "saved", path.name, _saved_splits(path)
        files = _local_files(path)
        if not files:
            raise OminixError(
                f"{path} holds no supported data files", f"supported: {', '.join(readers.SUFFIXES)}"
            )
        return "local", path.name, _by_split(path, files)
    if path.is_file():
        if not readers.kind(path):
            raise OminixError(f"{path}: unsupported file type", f"use one of {', '.join(readers.SUFFIXES)}")
        return "local", path.name.split(".")[0], {"train": [path]}
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


def plan(specs: list[str], split: str, *, streaming: bool = False, log: Any = None) -> list[Part]:
    """Resolve every source and split term into Parts (nothing is read or downloaded yet)."""
    terms = parse_split(split)
    if not specs:
        raise OminixError("no data source given", "name one: a path, a glob, @embedded, or owner/name")
    parts: list[Part] = []
    for spec in specs:
        if spec == embedded.EMBEDDED:
            corpus = embedded.info()
            for term in terms:
                files = _pick(spec, {"train": [embedded.CORPUS_FILE]}, term)
                parts.append(Part(spec, "embedded", corpus["name"], term, files,
                                  [f.stat().st_size for f in files], corpus["license"],
                                  {"description": corpus["description"], "url": corpus["url"]}))
            continue
        local = Path(spec).expanduser().exists() or any(c in spec for c in "*?[") or readers.kind(spec)
        if not local and HUB_ID.match(spec):
            parts.extend(hub.plan(spec, terms, streaming=streaming, log=log))
            continue
        kind, name, splits = _local_splits(spec)
        for term in terms:
            files = _pick(spec, splits, term)
            parts.append(Part(spec, kind, name, term, files, [f.stat().st_size for f in files]))
    return parts
