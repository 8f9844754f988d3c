"""``manifest.json`` and the ``DATA_CARD.md`` generated from it (the MOF data card later on)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ominix.data.embedded import LICENSE as EMBEDDED_LICENSE
from ominix.data.store import MANIFEST, WITH_BOS, framing

CARD = "DATA_CARD.md"

# Licenses of the RedPajama source sets that make up SlimPajama, as documented by RedPajama-Data-1T.
SOURCE_SET_LICENSES = {
    "RedPajamaCommonCrawl": "Common Crawl terms of use",
    "RedPajamaC4": "ODC-BY-1.0 (C4)",
    "RedPajamaGithub": "MIT, BSD or Apache-2.0 (repositories filtered by license)",
    "RedPajamaBook": "PG-19 public domain books and Books3; see the RedPajama-Data-1T terms",
    "RedPajamaArXiv": "arXiv terms of use (per-paper licenses)",
    "RedPajamaWikipedia": "CC-BY-SA-3.0 (Wikipedia)",
    "RedPajamaStackExchange": "CC-BY-SA-4.0 (Stack Exchange)",
    "python-reference": f"{EMBEDDED_LICENSE} (Python documentation)",
    "python-docstrings": f"{EMBEDDED_LICENSE} (Python standard library)",
}
DATASET_NOTES = {
    "cerebras/SlimPajama-627B": "SlimPajama-627B by Cerebras: RedPajama-Data-1T cleaned and deduplicated; "
    "see https://huggingface.co/datasets/cerebras/SlimPajama-627B for its terms.",
}


def _table(rows: list[list[Any]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _framing(m: dict[str, Any]) -> str:
    tok = m["tokenizer"]
    if framing(m) == WITH_BOS:
        return (f"Each document tokenized without special tokens, then framed `{tok['bos_token']}` ... "
                f"`{tok['eos_token']}`, as the tokenizer frames text at inference (it prepends "
                f"`{tok['bos_token']}`).")
    return f"Each document tokenized without special tokens, `{tok['eos_token']}` appended."


def render(m: dict[str, Any]) -> str:
    """The data card as Markdown."""
    out = [
        "# Data card",
        "",
        f"Prepared by OminiX {m['ominix_version']} on {m['created']} with:",
        "",
        f"    {m['command']}",
        "",
        "## Sources",
        "",
    ]
    for s in m["sources"]:
        line = f"- `{s['source']}` ({s['kind']}), split `{s.get('requested_split', s['split'])}`: " \
               f"{len(s['files'])} files, {s['bytes']:,} bytes"
        if s.get("license"):
            line += f"; license {s['license']}"
        if s.get("description"):
            line += f"; {s['description']}"
        if s["source"] in DATASET_NOTES:
            line += f". {DATASET_NOTES[s['source']]}"
        out.append(line)
    sets = m["source_sets"]
    out += ["", "## Source sets and licenses", "",
            _table([[n, SOURCE_SET_LICENSES.get(n, "unknown (see the source)")] for n in sets],
                   ["source set", "license"]), "", "## Sizes", ""]
    rows = []
    for split, info in m["splits"].items():
        for name, c in info["per_source"].items():
            rows.append([split, name, f"{c['documents']:,}", f"{c['tokens']:,}", f"{c['blocks']:,}"])
        rows.append([split, "**all**", f"{info['documents']:,}", f"{info['tokens']:,}", f"{info['blocks']:,}"])
    out.append(_table(rows, ["split", "source set", "documents", "tokens", "blocks"]))
    tok = m["tokenizer"]
    trained = (f"byte-level BPE trained on {tok['trained_on_characters']:,} characters of the training split"
               if tok["origin"] == "trained" else f"loaded from `{tok['origin']}`")
    out += [
        "",
        "## Processing",
        "",
        f"1. Records read in file order; split `{m['split']}`; text from field `{m['text_field']}`; "
        "empty documents skipped.",
        f"2. Held-out validation by document: a seeded hash (seed {m['seed']}) of each document's text "
        f"puts a fraction {m['val_fraction']} of the documents in `validation`.",
        f"3. Tokenizer: {trained}; vocabulary {tok['vocab_size']:,}; sha256 `{tok['sha256']}`.",
        f"4. {_framing(m)}",
        f"5. Packed per (split, source set) into blocks of {m['block_tokens']} tokens ({m['dtype']}); "
        "the remainder of each (split, source set), less than one block, dropped.",
        "6. Every shard file checksummed (sha256 in manifest.json).",
        "",
    ]
    return "\n".join(out)


def write(root: Path, manifest: dict[str, Any]) -> None:
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    (root / CARD).write_text(render(manifest))
