"""Benchmark of ``ominix data prepare`` against raw ``tokenizers`` and a ``datasets.map`` baseline.

All three tokenize the same corpus with the same tokenizer, in the same run, each in its own process:

  (a) raw: the texts already in memory, ``Tokenizer.encode_batch`` over batches of 1,000 documents
      (the limit: no reading, no packing, no writing);
  (b) baseline: ``load_dataset("json")`` + ``map(batched=True, num_proc=2)`` with the Hugging Face
      fast tokenizer, then packing into seq_len+1 blocks written to one .bin file;
  (c) ``ominix data prepare`` end to end (CLI process start to exit), on the corpus and on a corpus
      twice as large, for peak RSS.

The corpus is real text: the Python sources (code, comments, docstrings) of the installed packages,
written as SlimPajama-style ``.jsonl.zst`` files. Results go to BENCHMARKS.md by hand and to
``bench/results/data_prepare_cpu.json`` by this script.

    python bench/data_prepare.py --mb 50 --out bench/results/data_prepare_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import sysconfig
import time
from datetime import date
from pathlib import Path

import childproc  # bench/childproc.py: this script's folder is on sys.path

SEQ_LEN = 2048
VOCAB = 32000
FILE_MB = 8


def make_corpus(root: Path, megabytes: int) -> int:
    """Write ``megabytes`` of Python source text as .jsonl.zst files; returns the text bytes."""
    import zstandard

    if (root / "done").is_file():
        return int((root / "done").read_text())
    roots = [Path(sysconfig.get_paths()["purelib"]), Path(sysconfig.get_paths()["stdlib"])]
    files = sorted(p for r in roots for p in r.rglob("*.py"))
    out = root / "train" / "chunk1"
    out.mkdir(parents=True, exist_ok=True)
    total, part, lines = 0, 0, []
    cctx = zstandard.ZstdCompressor(level=3)
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if len(text) < 200:
            continue
        lines.append(json.dumps({"text": text, "meta": {"redpajama_set_name": "RedPajamaGithub"}}))
        total += len(text.encode())
        if sum(map(len, lines)) > FILE_MB << 20 or total >= megabytes << 20:
            (out / f"part_{part:03d}.jsonl.zst").write_bytes(cctx.compress(("\n".join(lines) + "\n").encode()))
            part, lines = part + 1, []
        if total >= megabytes << 20:
            break
    (root / "done").write_text(str(total))
    return total


def texts(root: Path) -> list[str]:
    from ominix.data import readers

    return [t for f in sorted(root.rglob("*.jsonl.zst")) for t, _ in readers.read(f)]


def stage_raw(corpus: Path, tokenizer: Path) -> dict:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer / "tokenizer.json"))
    docs = texts(corpus)
    result = {}
    for method in ("encode_batch", "encode_batch_fast"):
        encode = getattr(tok, method)
        start, cpu = time.perf_counter(), cpu_seconds()
        tokens = 0
        for i in range(0, len(docs), 1000):
            tokens += sum(len(e.ids) + 1 for e in encode(docs[i : i + 1000], add_special_tokens=False))
        result[method] = {"seconds": time.perf_counter() - start, "cpu_seconds": cpu_seconds() - cpu,
                          "tokens": tokens}
    return result


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads) and its waited-for children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def stage_datasets(corpus: Path, tokenizer: Path, work: Path) -> dict:
    import numpy as np
    from datasets import load_dataset
    from transformers import AutoTokenizer

    import shutil

    shutil.rmtree(work / "hf-cache", ignore_errors=True)  # a cached map would skip the work
    tok = AutoTokenizer.from_pretrained(str(tokenizer))
    eos = tok.eos_token_id
    start, cpu = time.perf_counter(), cpu_seconds()
    ds = load_dataset("json", data_files=[str(f) for f in sorted(corpus.rglob("*.jsonl.zst"))],
                      split="train", cache_dir=str(work / "hf-cache"))

    def encode(batch: dict) -> dict:
        return {"input_ids": [ids + [eos] for ids in tok(batch["text"], add_special_tokens=False)["input_ids"]]}

    ds = ds.map(encode, batched=True, num_proc=2, remove_columns=ds.column_names)
    width = SEQ_LEN + 1
    with open(work / "baseline.bin", "wb") as fh:
        buf = np.zeros(0, dtype=np.uint16)
        tokens = 0
        for batch in ds.iter(batch_size=1000):
            flat = np.fromiter((t for ids in batch["input_ids"] for t in ids), dtype=np.uint16)
            tokens += len(flat)
            buf = np.concatenate([buf, flat])
            full = len(buf) // width
            fh.write(buf[: full * width].tobytes())
            buf = buf[full * width :]
    return {"seconds": time.perf_counter() - start, "cpu_seconds": cpu_seconds() - cpu, "tokens": tokens}


def measured(cmd: list[str]) -> dict:
    """Run ``cmd`` as a child: wall seconds, CPU seconds, output and the peak RSS of its largest process."""
    result = childproc.run(cmd)
    return {**result, "peak_rss_mb": result["peak_rss_bytes"] / 2**20}


def ours_run(cmd: list[str]) -> dict:
    run = measured(cmd)
    tokens = sum(s["tokens"] for s in json.loads(run["stdout"])["splits"].values())
    return {"seconds": run["seconds"], "cpu_seconds": run["cpu_seconds"], "tokens": tokens,
            "peak_rss_mb": run["peak_rss_mb"], "tokens_per_s": tokens / run["seconds"]}


def stage(name: str, *args: str) -> list[str]:
    return [sys.executable, __file__, "--stage", name, *args]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=50, help="corpus size in MB of text (doubled for RSS)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ominix-bench-data"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/data_prepare_cpu.json"))
    parser.add_argument("--repeat", type=int, default=2, help="interleaved runs of each; the fastest counts")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        fn = {"raw": stage_raw, "datasets": stage_datasets}[args.stage]
        print(json.dumps(fn(*map(Path, args.rest))))
        return

    work = args.work
    corpus, big = work / f"corpus-{args.mb}", work / f"corpus-{2 * args.mb}"
    size = make_corpus(corpus, args.mb)
    big_size = make_corpus(big, 2 * args.mb)
    tokenizer = work / "tokenizer"
    if not (tokenizer / "tokenizer.json").is_file():
        from ominix.data import tokenizer as tk

        sample = texts(corpus)[:2000]
        tk.save(tk.train_bpe(sample, VOCAB), tokenizer, SEQ_LEN)
    print(f"corpus {size / 1e6:.1f} MB and {big_size / 1e6:.1f} MB of text, tokenizer {VOCAB}", flush=True)

    # Interleaved repeats, best wall time of each kept: the machine is shared, so a single run of each
    # mostly measures who else was busy at that moment.
    runs: dict[str, list[dict]] = {"raw": [], "datasets": [], "x1": []}
    ours_cmd = {name: [sys.executable, "-m", "ominix", "data", "prepare", str(src), "--tokenizer", str(tokenizer),
                       "--seq-len", str(SEQ_LEN), "--out", str(work / f"out-{name}"), "--force", "--json"]
                for name, src in (("x1", corpus), ("x2", big))}
    for _ in range(args.repeat):
        runs["raw"].append(json.loads(measured(stage("raw", str(corpus), str(tokenizer)))["stdout"]))
        base_run = measured(stage("datasets", str(corpus), str(tokenizer), str(work)))
        runs["datasets"].append({**json.loads(base_run["stdout"]), "peak_rss_mb": base_run["peak_rss_mb"]})
        runs["x1"].append(ours_run(ours_cmd["x1"]))
        print({k: v[-1] for k, v in runs.items()}, flush=True)
    raw = {m: min((r[m] for r in runs["raw"]), key=lambda r: r["seconds"]) for m in ("encode_batch", "encode_batch_fast")}
    base = min(runs["datasets"], key=lambda r: r["seconds"])
    ours = {"x1": min(runs["x1"], key=lambda r: r["seconds"]), "x2": ours_run(ours_cmd["x2"])}
    print("ominix x2", ours["x2"], flush=True)

    raw_tps = raw["encode_batch"]["tokens"] / raw["encode_batch"]["seconds"]
    fast_tps = raw["encode_batch_fast"]["tokens"] / raw["encode_batch_fast"]["seconds"]
    base_tps = base["tokens"] / base["seconds"]
    ours_tps = ours["x1"]["tokens_per_s"]
    common = {"card": "cpu", "date": date.today().isoformat(), "command": f"python bench/data_prepare.py --mb {args.mb} --repeat {args.repeat}",
              "method": f"best wall time of {args.repeat} interleaved runs each, on a shared machine",
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared)",
              "corpus_text_bytes": size, "seq_len": SEQ_LEN, "vocab_size": VOCAB}
    results = [
        {**common, "name": "data_prepare_vs_raw_encode_batch", "value": round(ours_tps), "unit": "tokens/s",
         "baseline": round(raw_tps), "baseline_name": "tokenizers encode_batch, text in memory",
         "ratio": round(ours_tps / raw_tps, 3)},
        {**common, "name": "data_prepare_vs_raw_encode_batch_fast", "value": round(ours_tps), "unit": "tokens/s",
         "baseline": round(fast_tps), "baseline_name": "tokenizers encode_batch_fast, text in memory",
         "ratio": round(ours_tps / fast_tps, 3)},
        {**common, "name": "data_prepare_vs_datasets_map", "value": round(ours_tps), "unit": "tokens/s",
         "baseline": round(base_tps), "baseline_name": "datasets load_dataset + map(batched, num_proc=2) + packing",
         "ratio": round(ours_tps / base_tps, 3), "baseline_peak_rss_mb": round(base["peak_rss_mb"])},
        {**common, "name": "data_prepare_peak_rss_when_corpus_doubles", "value": round(ours["x2"]["peak_rss_mb"]),
         "unit": "MB", "baseline": round(ours["x1"]["peak_rss_mb"]),
         "baseline_name": f"same command on the {args.mb} MB corpus",
         "ratio": round(ours["x2"]["peak_rss_mb"] / ours["x1"]["peak_rss_mb"], 3),
         "corpus_text_bytes": big_size},
    ]
    # CPU time per token is less sensitive than wall time to the other users of a shared machine
    cpu = {"raw": raw["encode_batch"], "raw_fast": raw["encode_batch_fast"], "datasets": base, "ominix": ours["x1"]}
    per_cpu = {k: v["tokens"] / v["cpu_seconds"] for k, v in cpu.items()}
    results += [
        {**common, "name": f"data_prepare_cpu_time_vs_{k}", "value": round(per_cpu["ominix"]),
         "unit": "tokens per CPU-second", "baseline": round(per_cpu[k]), "baseline_name": k,
         "ratio": round(per_cpu["ominix"] / per_cpu[k], 3)}
        for k in ("raw", "raw_fast", "datasets")
    ]
    results.append({**common, "name": "details", "value": None, "unit": None, "baseline": None, "ratio": None,
                    "best": {"raw": raw, "datasets": base, "ominix": ours}, "runs": runs})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    for r in results[:-1]:
        print(f"{r['name']}: {r['value']:,} {r['unit']} vs {r['baseline']:,} ({r['baseline_name']}): x{r['ratio']}")


if __name__ == "__main__":
    main()
