"""``ominix data prepare`` / ``inspect`` on real files: every input format, splits, tokenizers, output
format, atomicity and the one-line errors for bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ominix.config import DataConfig
from ominix.data.prepare import PrepareReporter, prepare
from ominix.data.store import PackedDataset
from ominix.errors import OminixError
from ominix.hashing import sha256_file
from tests.conftest import run_cli

SETS = ("RedPajamaC4", "RedPajamaWikipedia", "RedPajamaGithub")
COMMON = ["--train-tokenizer", "--vocab-size", "300", "--seq-len", "16", "--val-fraction", "0.2"]


def _records(n: int, seed: int = 0, start: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    return [{"text": f"doc {start + i}: " + " ".join(rng.choice(words, size=60)),
             "meta": {"redpajama_set_name": SETS[(start + i) % 3]}} for i in range(n)]


def _jsonl(path: Path, records: list[dict], zst: bool = False) -> Path:
    raw = "".join(json.dumps(r) + "\n" for r in records).encode()
    if zst:
        import zstandard

        raw = zstandard.ZstdCompressor().compress(raw)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    return path


def _cfg(*sources: Path | str, **kw) -> DataConfig:
    base = {"train_tokenizer": True, "vocab_size": 300, "seq_len": 16, "val_fraction": 0.2}
    return DataConfig(sources=[str(s) for s in sources], **{**base, **kw})


def _fail(args: list[str], out: Path, match: str) -> None:
    """The command fails with exit 2, one error line naming the problem, and writes nothing."""
    result = run_cli("data", "prepare", *args, "--out", str(out), *COMMON)
    assert result.returncode == 2, result.stderr
    assert match in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))


def test_embedded_quickstart_cli_manifest_card_tokenizer_inspect(tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    result = run_cli("data", "prepare", "--config", "tiny", "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    m = json.loads(result.stdout)
    assert m["command"] == f"ominix data prepare --config tiny --out {out} --json"
    assert m["ominix_version"] and m["created"] and m["seq_len"] == 128 and m["dtype"] == "uint16"
    assert m["sources"][0]["license"] == "Python-2.0"  # the SPDX id the release's mof.yml declares
    assert set(m["source_sets"]) == {"python-reference", "python-docstrings"}
    train = m["splits"]["train"]
    assert train["blocks"] > 3000 and set(train["per_source"]) == set(m["source_sets"])
    assert m["splits"]["validation"]["blocks"] > 100
    assert m["tokenizer"]["sha256"] == sha256_file(out / "tokenizer" / "tokenizer.json")
    for shard in train["shards"]:
        assert sha256_file(out / shard["file"]) == shard["sha256"]
    card = (out / "DATA_CARD.md").read_text()
    assert "Python-2.0" in card and "PSF-2.0" not in card and "python-docstrings" in card and m["command"] in card

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out / "tokenizer")
    assert tok.eos_token == "</s>" and tok.bos_token == "<s>" and len(tok) == 2048
    assert tok.decode(tok("Return the value of x.")["input_ids"]) == "Return the value of x."

    report = run_cli("data", "inspect", str(out), "--verify", "--json")
    assert report.returncode == 0, report.stderr
    r = json.loads(report.stdout)
    assert r["verified"] is True and r["samples"][0]["text"]
    with open(out / "validation" / "00000.bin", "r+b") as fh:
        fh.write(b"\xff\xff")
    bad = run_cli("data", "inspect", str(out), "--verify")
    assert bad.returncode == 1 and "validation/00000.bin: sha256 mismatch" in bad.stdout


def test_every_local_format_and_source_sets(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    recs = _records(120)
    _jsonl(tmp_path / "a.jsonl", recs[:30])
    _jsonl(tmp_path / "b.jsonl.zst", recs[30:60], zst=True)
    (tmp_path / "c.json").write_text(json.dumps(recs[60:75]))
    pq.write_table(pa.Table.from_pylist(recs[75:90]), tmp_path / "d.parquet")
    (tmp_path / "books").mkdir()
    for i, r in enumerate(recs[90:105]):
        (tmp_path / "books" / f"{i}.txt").write_text(r["text"])
    Dataset.from_list([{"content": r["text"]} for r in recs[105:]]).save_to_disk(str(tmp_path / "saved"))
    m = prepare(_cfg(tmp_path / "a.jsonl", tmp_path / "b.jsonl.zst", tmp_path / "c.json",
                     tmp_path / "d.parquet", tmp_path / "books"), tmp_path / "out1", progress=False)
    docs = {k: v["documents"] for k, v in m["splits"]["train"]["per_source"].items()}
    for k, v in m["splits"]["validation"]["per_source"].items():
        docs[k] = docs.get(k, 0) + v["documents"]
    assert docs.pop("books") == 15  # .txt: one document per file, set named after the directory
    assert docs == {s: 30 for s in SETS}  # meta.redpajama_set_name of jsonl, zst, json, parquet
    saved = prepare(_cfg(tmp_path / "saved", text_field="content"), tmp_path / "out2", progress=False)
    assert saved["sources"][0]["kind"] == "saved"
    assert sum(s["documents"] for s in saved["splits"].values()) == 15


def test_slimpajama_layout_and_split_syntax(tmp_path: Path) -> None:
    root = tmp_path / "SlimPajama"
    for c in (1, 2):
        _jsonl(root / "train" / f"chunk{c}" / "example_train_0.jsonl.zst", _records(40, c, 40 * (c - 1)), zst=True)
    _jsonl(root / "validation" / "chunk1" / "example_holdout_0.jsonl.zst", _records(20, 9, 1000), zst=True)

    def docs(split: str, val_fraction: float = 0.0) -> int:
        out = tmp_path / split.replace("[", "_").replace(":", "_").replace("%", "p").replace("]", "")
        m = prepare(_cfg(root, split=split, val_fraction=val_fraction), out, progress=False)
        return sum(s["documents"] for s in m["splits"].values())

    assert docs("train[:50%]") == 40  # exactly chunk1
    assert docs("train[10:25]") == 15
    assert docs("train[-5:]") == 5
    assert docs("train[:50%]+validation") == 60
    with pytest.raises(OminixError, match="has no split 'test'"):
        docs("test")


def test_same_input_gives_identical_shards_and_tokenizer_reuse(tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "c.jsonl", _records(80))
    a = prepare(_cfg(src), tmp_path / "a", progress=False)
    b = prepare(_cfg(src, num_proc=1), tmp_path / "b", progress=False)
    assert [s["sha256"] for s in a["splits"]["train"]["shards"]] == \
        [s["sha256"] for s in b["splits"]["train"]["shards"]]
    assert a["splits"]["validation"]["documents"] == b["splits"]["validation"]["documents"] > 0
    for tok_path in (tmp_path / "a" / "tokenizer", tmp_path / "a" / "tokenizer" / "tokenizer.json"):
        out = tmp_path / f"reuse-{tok_path.name}"
        c = prepare(_cfg(src, train_tokenizer=False, tokenizer=str(tok_path)), out, progress=False)
        assert c["tokenizer"]["sha256"] == a["tokenizer"]["sha256"]
        assert c["splits"]["train"]["shards"][0]["sha256"] == a["splits"]["train"]["shards"][0]["sha256"]
        assert PackedDataset(out).vocab_size == 300


def test_prepare_reports_progress_to_its_reporter_and_prints_nothing(tmp_path: Path, capfd) -> None:
    class Recorder(PrepareReporter):
        def __init__(self) -> None:
            self.phases, self.bytes, self.docs, self.tokens, self.finished = [], 0, 0, 0, False

        def phase(self, description: str, total_bytes: int | None = None) -> None:
            self.phases.append((description, total_bytes))

        def file_done(self, nbytes: int) -> None:
            self.bytes += nbytes

        def update(self, docs: int, tokens: int) -> None:
            self.docs, self.tokens = self.docs + docs, self.tokens + tokens

        def finish(self) -> None:
            self.finished = True

    src = _jsonl(tmp_path / "c.jsonl", _records(60))
    seen = Recorder()
    m = prepare(_cfg(src), tmp_path / "out", progress=seen)
    size = src.stat().st_size
    assert seen.phases == [("training tokenizer (byte-level BPE, 300 ids)", size), ("tokenizing and packing", size)]
    assert seen.bytes == 2 * size and seen.finished
    assert seen.docs == sum(s["documents"] for s in m["splits"].values())
    assert seen.tokens == sum(s["tokens"] for s in m["splits"].values())
    prepare(_cfg(src), tmp_path / "quiet")  # no reporter: the library says nothing
    assert capfd.readouterr() == ("", "")


def test_existing_output_needs_force(tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "c.jsonl", _records(60))
    out = tmp_path / "out"
    assert run_cli("data", "prepare", str(src), "--out", str(out), *COMMON).returncode == 0
    first = json.loads((out / "manifest.json").read_text())["created"]
    again = run_cli("data", "prepare", str(src), "--out", str(out), *COMMON)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert json.loads((out / "manifest.json").read_text())["created"] == first
    time.sleep(1.1)
    forced = run_cli("data", "prepare", str(src), "--out", str(out), *COMMON, "--force")
    assert forced.returncode == 0, forced.stderr
    assert json.loads((out / "manifest.json").read_text())["created"] != first
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    refused = run_cli("data", "prepare", str(src), "--out", str(tmp_path / "mine"), *COMMON, "--force")
    assert refused.returncode == 2 and (tmp_path / "mine" / "notes.txt").exists()


def test_bad_input_one_line_exit_2_nothing_written(tmp_path: Path) -> None:
    good = _jsonl(tmp_path / "good.jsonl", _records(30))
    out = tmp_path / "out"
    _fail([str(good), "--split", "train[:10%"], out, "malformed split")
    _fail([str(good), "--split", "train[5%:20]"], out, "malformed split")
    _fail([str(tmp_path / "nothing-*.jsonl")], out, "matches nothing")
    _fail([str(good), "--text-field", "body"], out, "no field 'body' in the record (fields: meta, text)")
    raw = _jsonl(tmp_path / "t.jsonl.zst", _records(300), zst=True).read_bytes()
    (tmp_path / "trunc.jsonl.zst").write_bytes(raw[: len(raw) // 2])
    _fail([str(tmp_path / "trunc.jsonl.zst")], out, "is truncated")
    (tmp_path / "junk.jsonl.zst").write_bytes(b"this is not zstd" * 10)
    _fail([str(tmp_path / "junk.jsonl.zst")], out, "is not valid zstd data")
    latin = tmp_path / "latin"
    latin.mkdir()
    (latin / "a.txt").write_text("plain ascii text " * 40)
    (latin / "b.txt").write_bytes("caf\xe9 au lait ".encode("latin-1") * 40)  # found mid-stream
    _fail([str(latin)], out, "not UTF-8 text")
    (tmp_path / "empty.jsonl").write_text('{"text": ""}\n{"text": "   "}\n')
    _fail([str(tmp_path / "empty.jsonl")], out, "the corpus is empty")
    (tmp_path / "notatok").mkdir()
    (tmp_path / "notatok" / "tokenizer.json").write_text('{"hello": 1}')
    result = run_cli("data", "prepare", str(good), "--out", str(out), "--tokenizer", str(tmp_path / "notatok"))
    assert result.returncode == 2 and "is not a tokenizer" in result.stderr and not out.exists()
    _fail(["no/such/dir/x.jsonl"], out, "no such file")


def test_hub_source_offline_is_a_clear_error(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for env in ({"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}):
        result = run_cli("data", "prepare", "cerebras/SlimPajama-627B", "--split", "train[:10%]",
                         "--out", str(out), *COMMON, env=env)
        assert result.returncode == 2, result.stderr
        assert "cannot reach the Hugging Face Hub to list the files of cerebras/SlimPajama-627B" in result.stderr
        assert not out.exists()


def test_hub_plan_fetches_only_the_chunks_the_split_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planning on SlimPajama's real layout (the listing is what the Hub returns; no network here)."""
    from ominix.data import hub
    from ominix.data.splits import parse_split

    listing = {f"train/chunk{c}/example_train_{i}.jsonl.zst": 15_000_000
               for c in range(1, 11) for i in range(50)}
    listing.update({f"validation/chunk{c}/example_holdout_{i}.jsonl.zst": 1_000
                    for c in range(1, 6) for i in range(4)})
    monkeypatch.setattr(hub, "list_files", lambda repo, revision=None: (listing, "abc123"))
    monkeypatch.setattr(hub, "_cached", lambda *a: False)
    lines: list[str] = []
    (part,) = hub.plan("cerebras/SlimPajama-627B", parse_split("train[:10%]"), log=lines.append)
    assert all(f.startswith("train/chunk1/") for f in part.files) and len(part.files) == 50
    assert part.split.whole and sum(part.sizes) == 750_000_000
    assert lines == ["cerebras/SlimPajama-627B train[:10%]: 50 of 500 files; will download 750.0 MB"]


def test_killed_run_leaves_nothing_valid_and_rerun_starts_clean(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "ominix", "data", "prepare", "@embedded", "--out", str(out),
           "--train-tokenizer", "--vocab-size", "8000", "--seq-len", "64"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not list(tmp_path.glob(".out.tmp-*")) and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(tmp_path.glob(".out.tmp-*")) and not out.exists()
    small = _jsonl(tmp_path / "c.jsonl", _records(60))
    result = run_cli("data", "prepare", str(small), "--out", str(out), *COMMON)
    assert result.returncode == 0, result.stderr
    assert not list(tmp_path.glob(".out.tmp-*")) and (out / "manifest.json").is_file()


def test_long_documents_are_encoded_in_pieces_with_the_same_tokens(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from tokenizers import Tokenizer

    from ominix.data import pack

    src = _jsonl(tmp_path / "c.jsonl", _records(40))
    whole = prepare(_cfg(src, val_fraction=0.0), tmp_path / "whole", progress=False)
    book = "\n".join(r["text"] for r in _records(400, seed=5))
    _jsonl(tmp_path / "book.jsonl", [{"text": book}])
    monkeypatch.setattr(pack, "PIECE_CHARS", 5_000)
    tok = str(tmp_path / "whole" / "tokenizer")
    m = prepare(_cfg(tmp_path / "book.jsonl", val_fraction=0.0, train_tokenizer=False, tokenizer=tok),
                tmp_path / "pieces", progress=False)
    assert m["splits"]["train"]["documents"] == 1 and whole["splits"]["train"]["documents"] == 40
    expected = len(Tokenizer.from_file(tok + "/tokenizer.json").encode(book, add_special_tokens=False).ids) + 1
    assert m["splits"]["train"]["tokens"] == expected


def test_hub_source_end_to_end_past_the_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub dataset through plan -> per-file fetch -> read -> pack, the fetch answered from disk."""
    from ominix.data import hub

    root = tmp_path / "hub"
    for c in (1, 2):
        _jsonl(root / "train" / f"chunk{c}" / "example_train_0.jsonl.zst", _records(30, c, 30 * (c - 1)), zst=True)
    listing = {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*.zst")}
    monkeypatch.setattr(hub, "list_files", lambda repo, revision=None: (listing, "abc123"))
    monkeypatch.setattr(hub, "_cached", lambda *a: False)
    monkeypatch.setattr(hub.HubPart, "_local", lambda self, path: str(root / path))
    lines: list[str] = []
    m = prepare(_cfg("cerebras/SlimPajama-627B", split="train[:50%]", val_fraction=0.0), tmp_path / "out",
                progress=False, log=lines.append)
    assert m["splits"]["train"]["documents"] == 30
    assert m["sources"][0]["kind"] == "hub" and m["sources"][0]["revision"] == "abc123"
    assert [f["path"] for f in m["sources"][0]["files"]] == ["train/chunk1/example_train_0.jsonl.zst"]
    assert "1 of 2 files; will download" in lines[0]
    assert "SlimPajama-627B by Cerebras" in (tmp_path / "out" / "DATA_CARD.md").read_text()


def test_json_named_jsonl_malformed_meta_and_skipped_files(tmp_path: Path) -> None:
    recs = _records(40)
    lines = _jsonl(tmp_path / "lines.json", recs)  # JSON lines under a .json name: read as JSON lines
    m = prepare(_cfg(lines), tmp_path / "out1", progress=False)
    assert sum(s["documents"] for s in m["splits"].values()) == 40
    assert set(m["splits"]["train"]["per_source"]) <= set(SETS)
    bad = tmp_path / "meta.jsonl"
    bad.write_text(json.dumps(recs[0]) + "\n" + json.dumps({"text": "x y z", "meta": "{not json"}) + "\n")
    _fail([str(bad)], tmp_path / "out2", f"{bad}:2: field 'meta' holds malformed JSON")
    src = tmp_path / "src"
    _jsonl(src / "a.jsonl", recs)
    (src / "README.md").write_text("about this corpus")
    (src / "data.csv").write_text("text\nhello\n")
    (src / ".hidden").write_text("ignored")
    result = run_cli("data", "prepare", str(src), "--out", str(tmp_path / "out3"), *COMMON, "--json")
    assert result.returncode == 0, result.stderr
    assert "notice: skipped 2 file(s)" in result.stderr and "README.md" in result.stderr
    manifest = json.loads((tmp_path / "out3" / "manifest.json").read_text())
    assert sorted(manifest["sources"][0]["skipped_files"]) == [str(src / "README.md"), str(src / "data.csv")]


def test_vocab_size_beyond_the_bound_is_refused_before_training(tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "c.jsonl", _records(20))
    out = tmp_path / "out"
    result = run_cli("data", "prepare", str(src), "--out", str(out), "--train-tokenizer",
                     "--vocab-size", "1000000000", "--seq-len", "16")
    assert result.returncode == 2, result.stderr
    assert "vocab_size" in result.stderr and "1048576" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()
