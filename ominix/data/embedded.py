"""The embedded corpus (``@embedded``): English text that ships inside OminiX, for the quickstart and tests.

It is the documentation of the Python language and its standard library, written by the Python
developers and distributed under the PSF License 2.0: the reference topics of ``pydoc_data`` (the
text ``help('if')`` shows) and the docstrings of the standard-library modules. A fixed snapshot is
shipped as ``corpus/python-docs.jsonl.zst`` (records ``{"text", "meta": {"redpajama_set_name"}}``,
the SlimPajama record shape) so every machine prepares exactly the same tokens, whatever its Python.
``python -m ominix.data.embedded`` rebuilds the snapshot from the running interpreter.
"""

from __future__ import annotations

import ast
import json
import sys
import sysconfig
from pathlib import Path
from typing import Any

EMBEDDED = "@embedded"
CORPUS_DIR = Path(__file__).parent / "corpus"
CORPUS_FILE = CORPUS_DIR / "python-docs.jsonl.zst"
LICENSE_FILE = CORPUS_DIR / "LICENSE-PSF-2.0.txt"
# CPython's LICENSE file (the PSF License 2.0 and the history licenses before it) is SPDX Python-2.0;
# the manifest, the data card and the quickstart's release all take the corpus license from here
LICENSE = "Python-2.0"
SKIP = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "turtledemo", "tkinter"}
MIN_CHARS = 120  # shorter docstrings are mostly signatures


def info() -> dict[str, Any]:
    """What the manifest and the data card record about the embedded corpus."""
    meta = json.loads((CORPUS_DIR / "python-docs.json").read_text())
    return {
        "name": "python-docs",
        "description": "Python language reference topics and standard-library docstrings "
        f"(snapshot of CPython {meta['python']})",
        "license": LICENSE,
        "license_file": LICENSE_FILE.name,
        "url": "https://docs.python.org/3/license.html",
        **meta,
    }


def _module_docs(path: Path) -> str:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError):
        return ""
    docs = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) >= MIN_CHARS:
                docs.append(doc.strip())
    return "\n\n".join(docs)


def documents() -> list[dict[str, Any]]:
    """The corpus built from the running interpreter: one document per topic and per module."""
    import pydoc_data.topics

    records = [
        {"text": text.strip(), "meta": {"redpajama_set_name": "python-reference"}}
        for _, text in sorted(pydoc_data.topics.topics.items())
    ]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if SKIP & set(rel.parts):
            continue
        text = _module_docs(path)
        if text:
            records.append({"text": text, "meta": {"redpajama_set_name": "python-docstrings"}})
    return records


def build(out: Path = CORPUS_FILE) -> str:
    """Write the snapshot to ``out`` and its summary beside it; returns what was written, in a line."""
    import zstandard

    records = documents()
    raw = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    out.write_bytes(zstandard.ZstdCompressor(level=19).compress(raw))
    meta = {
        "python": sys.version.split()[0],
        "documents": len(records),
        "text_bytes": sum(len(r["text"].encode()) for r in records),
    }
    (out.parent / "python-docs.json").write_text(json.dumps(meta, indent=2) + "\n")
    return (f"{out}: {meta['documents']} documents, {meta['text_bytes']:,} bytes of text, "
            f"{out.stat().st_size:,} bytes compressed")


if __name__ == "__main__":
    from ominix import console

    console.out(build())
