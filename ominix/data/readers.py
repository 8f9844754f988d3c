"""Read documents from local files: .jsonl, .jsonl.zst, .json, .parquet, .txt and save_to_disk .arrow.

``read(path, text_field)`` yields ``(text, source_set)`` per record, ``source_set`` being the
record's ``meta.redpajama_set_name`` (SlimPajama / RedPajama) or None. ``count(path)`` gives the
number of records without parsing them (for percentage splits). Every way a file can be bad becomes
one OminixError naming the file (and line), never a bare library exception.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ominix.errors import OminixError

SUFFIXES = (".jsonl.zst", ".jsonl", ".json", ".parquet", ".txt", ".arrow")
CHUNK = 1 << 20

Doc = tuple[str, "str | None"]


def kind(path: Path | str) -> str | None:
    """The supported suffix ``path`` ends with (``.jsonl.zst`` before ``.jsonl``), else None."""
    name = str(path).lower()
    return next((s for s in SUFFIXES if name.endswith(s)), None)


def _zst_chunks(path: Path) -> Iterator[bytes]:
    """Decompressed bytes of a (multi-frame) .zst file; a truncated last frame is an error."""
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    obj, fed = dctx.decompressobj(), False
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                while chunk:
                    fed = True
                    out = obj.decompress(chunk)
                    if out:
                        yield out
                    if obj.eof:
                        chunk, obj, fed = obj.unused_data, dctx.decompressobj(), False
                    else:
                        chunk = b""
    except zstandard.ZstdError as exc:
        raise OminixError(f"{path} is not valid zstd data ({exc})", "re-download or re-compress the file") from exc
    if fed:
        raise OminixError(f"{path} is truncated (its last zstd frame is incomplete)", "re-download the file")


def _raw_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            yield chunk


def _lines(path: Path) -> Iterator[bytes]:
    chunks = _zst_chunks(path) if str(path).lower().endswith(".zst") else _raw_chunks(path)
    rest = b""
    for chunk in chunks:
        parts = (rest + chunk).split(b"\n")
        rest = parts.pop()
        yield from parts
    if rest:
        yield rest


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OminixError(
            f"{where}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
            "convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)",
        ) from exc


def set_name_of(record: dict[str, Any], where: str = "a record") -> str | None:
    meta = record.get("meta")
    if isinstance(meta, str) and meta.startswith("{"):
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError as exc:
            raise OminixError(f"{where}: field 'meta' holds malformed JSON ({exc.msg})",
                              "fix the meta field, or drop it (it only names the record's source set)") from exc
    if isinstance(meta, dict):
        name = meta.get("redpajama_set_name")
        return str(name) if name else None
    return None


def text_of(record: Any, text_field: str, where: str) -> str | None:
    if not isinstance(record, dict):
        raise OminixError(f"{where}: a record is a {type(record).__name__}, not an object",
                          "one JSON object per record")
    if text_field not in record:
        fields = ", ".join(sorted(record)) or "none"
        raise OminixError(
            f"{where}: no field {text_field!r} in the record (fields: {fields})",
            "name the text field with --text-field",
        )
    text = record[text_field]
    if text is not None and not isinstance(text, str):
        raise OminixError(
            f"{where}: field {text_field!r} is a {type(text).__name__}, not text",
            "name the text field with --text-field",
        )
    if text and not text.isascii():
        try:  # JSON can escape half of a UTF-16 pair (\ud800): a str no tokenizer can encode
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise OminixError(
                f"{where}: field {text_field!r} holds a lone surrogate {text[exc.start]!r} at character "
                f"{exc.start}, which is not Unicode text",
                "fix the record's \\uD800-\\uDFFF escape (half of a UTF-16 pair) or drop the record",
            ) from exc
    return text


def _jsonl(path: Path, text_field: str) -> Iterator[Doc]:
    for number, raw in enumerate(_lines(path), 1):
        if not raw.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(_decode(raw, where))
        except json.JSONDecodeError as exc:
            raise OminixError(f"{where}: not valid JSON ({exc.msg})", "one JSON object per line") from exc
        yield text_of(record, text_field, where) or "", set_name_of(record, where)


def _json_records(path: Path) -> list[Any] | None:
    """The records of a .json file holding one array (or one object); None when it holds JSON
    lines instead (a common misnaming), which :func:`_jsonl` then reads line by line."""
    text = _decode(path.read_bytes(), str(path))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if text.lstrip().startswith("["):
            raise OminixError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})", "fix the file") from exc
        return None
    return data if isinstance(data, list) else [data]


def _json(path: Path, text_field: str) -> Iterator[Doc]:
    records = _json_records(path)
    if records is None:
        yield from _jsonl(path, text_field)
        return
    for number, record in enumerate(records):
        where = f"{path} record {number}"
        yield text_of(record, text_field, where) or "", set_name_of(record, where)


def _table_batches(path: Path, text_field: str) -> Iterator[Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if kind(path) == ".parquet":
            reader = pq.ParquetFile(path)
            names = reader.schema_arrow.names
            columns = [text_field] + (["meta"] if "meta" in names else [])
            if text_field in names:
                yield from reader.iter_batches(batch_size=1024, columns=columns)
        else:
            reader = pa.ipc.open_stream(pa.memory_map(str(path)))
            names = reader.schema.names
            if text_field in names:
                yield from reader
    except (pa.ArrowInvalid, OSError) as exc:
        raise OminixError(f"{path} is not a readable {kind(path)} file ({exc})", "re-create the file") from exc
    if text_field not in names:
        raise OminixError(
            f"{path}: no column {text_field!r} (columns: {', '.join(names)})",
            "name the text column with --text-field",
        )


def _table(path: Path, text_field: str) -> Iterator[Doc]:
    for batch in _table_batches(path, text_field):
        texts = batch.column(text_field).to_pylist()
        metas = batch.column("meta").to_pylist() if "meta" in batch.schema.names else [None] * len(texts)
        for number, (text, meta) in enumerate(zip(texts, metas)):
            where = f"{path} row {number}"
            yield text_of({text_field: text}, text_field, where) or "", set_name_of({"meta": meta}, where)


def _txt(path: Path, text_field: str) -> Iterator[Doc]:
    yield _decode(path.read_bytes(), str(path)), None


READERS = {".jsonl.zst": _jsonl, ".jsonl": _jsonl, ".json": _json, ".parquet": _table, ".arrow": _table, ".txt": _txt}


def read(path: Path, text_field: str = "text") -> Iterator[Doc]:
    """Every record of one file as ``(text, source_set or None)``; a missing text is ``""``."""
    suffix = kind(path)
    if suffix is None:
        raise OminixError(f"{path}: unsupported file type", f"use one of {', '.join(SUFFIXES)}")
    return READERS[suffix](Path(path), text_field)


def count(path: Path) -> int:
    """Records in one file (a .txt file is one document), for percentage split bounds."""
    suffix = kind(path)
    if suffix in (".jsonl", ".jsonl.zst"):
        return sum(1 for line in _lines(path) if line.strip())
    if suffix == ".json":
        records = _json_records(path)
        return len(records) if records is not None else sum(1 for line in _lines(path) if line.strip())
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    if suffix == ".arrow":
        import pyarrow as pa

        return sum(b.num_rows for b in pa.ipc.open_stream(pa.memory_map(str(path))))
    return 1
