"""The data component of a release bundle, as ``release.data`` says.

- ``copy`` / ``link``: the prepared directory (manifest, tokenizer, shards, data card) as ``data/``,
  each shard checked against the sha256 its manifest records; a valid ``--data`` for training.
- ``reference``: ``data/REFERENCE.md`` and ``data/reference.json`` say where each source is (Hub id
  and revision, or URL), the exact ``ominix data prepare`` command and every shard's sha256
  (``data/shards.sha256``, for ``sha256sum -c`` in the re-prepared directory); the manifest, data
  card and tokenizer are copied. The reference is complete only when every source can be fetched
  again: a Hub dataset at a pinned revision or OminiX's embedded corpus, not a local path.
- The run's data-order ledger goes into ``data_order/`` whatever the mode, and the data card says
  how to rebuild a step's batch from it.
- ``auto`` (default): ``link`` when the data lies on the bundle's filesystem (hard links take no
  space) or its files total at most :data:`AUTO_COPY_LIMIT`, else ``reference``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ominix.checkpoint import files_under
from ominix.data.card import CARD
from ominix.data.store import listed_files
from ominix.errors import OminixError
from ominix.release.bundle_files import Placer

AUTO_COPY_LIMIT = 2 * 1024**3
DATA = "data"


@dataclass
class DataPlan:
    mode: str  # copy, link or reference (auto resolved)
    missing: list[str] = field(default_factory=list)  # why a reference is incomplete

    @property
    def complete(self) -> bool:
        return not self.missing


def resolve_mode(mode: str, data_dir: Path, out: Path) -> str:
    """``mode`` with ``auto`` decided for the data in ``data_dir`` and the bundle at ``out``."""
    if mode != "auto":
        return mode
    parent = next(p for p in [out, *out.parents] if p.exists())
    if os.stat(parent).st_dev == os.stat(data_dir).st_dev:
        return "link"
    return "link" if sum(p.stat().st_size for p in files_under(data_dir)) <= AUTO_COPY_LIMIT else "reference"


def _shards(manifest: dict[str, Any]) -> dict[str, str]:
    """``{file relative to the data directory: sha256}`` of every shard the manifest lists."""
    return dict(listed_files([shard for split in manifest["splits"].values() for shard in split.get("shards", [])]))


def _where(source: dict[str, Any]) -> tuple[str | None, str | None]:
    """``(where to get the source, why it cannot be fetched again or None)``."""
    if source["kind"] == "hub":
        revision = source.get("revision")
        where = f"https://huggingface.co/datasets/{source['source']}"
        return (f"{where}/tree/{revision}", None) if revision else (where, "its Hub revision was not recorded")
    if source["kind"] == "embedded":
        return source.get("url"), None  # ships inside OminiX (code/ominix in this bundle)
    return None, f"it is a local path ({source['source']}) on the machine that prepared the data"


def place(art: Any, mode: str, placer: Placer, tmp: Path) -> DataPlan:
    """Put the data component of ``art`` (RunArtifacts) in the bundle staged at ``tmp``."""
    data_dir, manifest = art.data_dir, art.manifest
    plan = DataPlan(mode)
    shards = _shards(manifest)
    if mode in ("copy", "link"):
        for path in files_under(data_dir):
            rel = str(path.relative_to(data_dir))
            placer.add(path, f"{DATA}/{rel}", link=mode == "link", expect=shards.get(rel),
                       why="the data manifest (the shard changed after `ominix data prepare`)")
        missing = [rel for rel in shards if not (data_dir / rel).is_file()]
        if missing:
            raise OminixError(f"{data_dir / missing[0]} is missing: the prepared data is incomplete",
                              f"run `ominix data inspect {data_dir} --verify`, or prepare the data again")
        return plan
    for name in ("manifest.json", "DATA_CARD.md", manifest.get("tokenizer", {}).get("dir", "tokenizer")):
        if (data_dir / name).exists():
            placer.add(data_dir / name, f"{DATA}/{name}", link=False)
    sources = []
    for source in manifest.get("sources", []):
        where, why = _where(source)
        if why:
            plan.missing.append(f"source {source['source']}: {why}")
        sources.append({"source": source["source"], "kind": source["kind"], "split": source.get("split"),
                        "revision": source.get("revision"), "where": where, "license": source.get("license")})
    command = manifest.get("command")
    if not command:
        plan.missing.append("the manifest records no `ominix data prepare` command")
    reference = {"complete": plan.complete, "missing": plan.missing, "sources": sources,
                 "prepare_command": command, "ominix_version": manifest.get("ominix_version"),
                 "shards": shards, "tokens": {k: v.get("tokens") for k, v in manifest["splits"].items()}}
    out = tmp / DATA
    out.mkdir(parents=True, exist_ok=True)
    (out / "reference.json").write_text(json.dumps(reference, indent=2) + "\n")
    (out / "shards.sha256").write_text("".join(f"{digest}  {rel}\n" for rel, digest in sorted(shards.items())))
    (out / "REFERENCE.md").write_text(_reference_text(reference))
    return plan


def place_card_and_order(art: Any, tmp: Path, placer: Placer) -> None:
    """The data card and the run's data-order ledger (cut to the final checkpoint's steps, checked
    against the loader's order and the manifest): the card gains the ledger's paragraph. A run
    without a ledger (trained before OminiX kept one) gets the prepared card as it is."""
    from ominix.data import ledger
    from ominix.data.store import manifest_sha256

    card = art.data_dir / CARD
    if not (art.run_dir / ledger.LEDGER).is_file():
        if card.is_file():
            placer.add(card, CARD, link=False)
        return
    info = ledger.copy_steps(art.run_dir, tmp / ledger.BUNDLE_DIR, art.final.step, manifest_sha256(art.data_dir))
    if card.is_file():
        (tmp / CARD).write_text(card.read_text().rstrip("\n") + "\n\n" + ledger.card_section(info))


def _reference_text(ref: dict[str, Any]) -> str:
    lines = ["# Training data (by reference)", "",
             "The prepared shards are not in this bundle. To make them again, with the OminiX version in "
             "`code/` (" + str(ref["ominix_version"]) + "):", "", "```bash", str(ref["prepare_command"]), "```", "",
             "then check them, from the prepared directory: `sha256sum -c shards.sha256` (this file's "
             "sibling lists the sha256 of every shard as first prepared).", "", "## Sources", ""]
    for s in ref["sources"]:
        lines.append(f"- `{s['source']}` ({s['kind']}, split `{s['split']}`): {s['where'] or 'not fetchable'}"
                     + (f", revision `{s['revision']}`" if s["revision"] else ""))
    if ref["missing"]:
        lines += ["", "## Incomplete", "", *(f"- {why}" for why in ref["missing"])]
    return "\n".join(lines) + "\n"
