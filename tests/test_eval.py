"""`ominix eval` and `evaluate`: loss/perplexity overall and per source set, written as eval_results.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import run_cli
from tests.test_export import CORPUS, make_run

SEQ = 32


def make_prepared(root: Path, tokenizer_dir: Path) -> Path:
    """A prepared directory in the store's format: validation blocks of two source sets."""
    from transformers import AutoTokenizer

    from ominix.data.store import FORMAT, ShardWriter
    from ominix.hashing import sha256_file

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = np.array(tokenizer(CORPUS * 3).input_ids, dtype=np.int64)
    blocks = ids[: len(ids) // (SEQ + 1) * (SEQ + 1)].reshape(-1, SEQ + 1)
    splits = {}
    for split in ("train", "validation"):
        writer = ShardWriter(root, split, SEQ, np.dtype("<u2"))
        writer.write(blocks[::2], 0)
        writer.write(blocks[1::2], 1)
        splits[split] = {"shards": writer.close()}
    tok_file = "tokenizer/tokenizer.json"
    manifest = {
        "format": FORMAT, "seq_len": SEQ, "dtype": "<u2", "source_sets": ["books", "web"], "splits": splits,
        "tokenizer": {"vocab_size": len(tokenizer), "file": tok_file, "sha256": sha256_file(root / tok_file)},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eval")
    run = make_run(root)
    make_prepared(root / "data", root / "data" / "tokenizer")
    return run


def test_evaluate_equals_the_model_loss_and_splits_by_source(run_dir: Path) -> None:
    from ominix.data.store import PackedDataset
    from ominix.perplexity import evaluate
    from ominix.infer.load import load_model, resolve

    model = load_model(resolve(run_dir))
    data = PackedDataset(run_dir.parent / "data", "validation")
    result = evaluate(model, data, batch_size=3)
    blocks = torch.stack([torch.as_tensor(data[i]) for i in range(len(data))])
    with torch.no_grad():
        loss = model(blocks[:, :-1], labels=blocks[:, 1:]).loss.item()
    assert result["loss"] == pytest.approx(loss, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)
    assert result["tokens"] == len(data) * SEQ
    per = result["per_source"]
    assert set(per) == {"books", "web"}
    assert per["books"]["blocks"] + per["web"]["blocks"] == len(data)
    weighted = sum(p["loss"] * p["tokens"] for p in per.values()) / result["tokens"]
    assert weighted == pytest.approx(result["loss"], rel=1e-9)
    capped = evaluate(model, data, batch_size=2, max_blocks=2)
    assert capped["blocks"] == 2


def test_eval_cli_writes_results_with_manifest_checksum(run_dir: Path) -> None:
    from ominix.data.store import manifest_sha256

    result = run_cli("eval", "--model", str(run_dir), "--batch-size", "4")
    assert result.returncode == 0, result.stderr
    assert "perplexity" in result.stdout and "books" in result.stdout
    results = json.loads((run_dir / "eval" / "eval_results.json").read_text())
    assert results["data"]["manifest_sha256"] == manifest_sha256(run_dir.parent / "data")
    assert results["data"]["split"] == "validation"
    assert results["model"]["step"] == 10 and len(results["model"]["sha256"]) == 64
    assert results["command"].startswith("ominix eval --model")
    assert results["perplexity"]["per_source"]["web"]["tokens"] > 0
    assert math.isclose(results["perplexity"]["perplexity"], math.exp(results["perplexity"]["loss"]))


LOCAL_TASK = Path(__file__).parent / "data" / "lm_eval" / "tiny_choice.yaml"  # task ominix_tiny_choice


def test_eval_scores_a_local_task_file_from_any_directory(run_dir: Path, tmp_path: Path) -> None:
    """A task YAML whose data_files are relative to the file (an offline cluster's own task): lm-eval
    scores OminiX's model on it, whatever the working directory, and the numbers are in the file."""
    out = tmp_path / "r.json"
    result = run_cli("eval", "--model", str(run_dir), "--max-blocks", "2", "--tasks", str(LOCAL_TASK),
                     "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    tasks = json.loads(out.read_text())["tasks"]
    assert list(tasks) == ["ominix_tiny_choice"] and 0 <= tasks["ominix_tiny_choice"]["acc"] <= 1


def test_task_scores_through_the_kv_cache_equal_the_model_without_it(run_dir: Path) -> None:
    """Continuations scored from a shared context's KV cache (rewound between them) have the
    log-probabilities one forward pass over context + continuation gives; empty contexts start at
    a document boundary, as training documents do."""
    from lm_eval.api.instance import Instance

    from ominix.eval.lm_model import OminixLM
    from ominix.infer.load import load_model, load_tokenizer, resolve

    source = resolve(run_dir)
    model, tokenizer = load_model(source), load_tokenizer(source)
    pairs = [("def add(a, b):", " return a + b"), ("def add(a, b):", " pass"), ("", "import os"),
             ("x =", " 1")]
    got = OminixLM(model, tokenizer).loglikelihood(
        [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)])
    for (context, continuation), (logprob, greedy) in zip(pairs, got):
        head = tokenizer(context).input_ids
        tail = tokenizer(context + continuation).input_ids[len(head):]
        head = head or [tokenizer.eos_token_id]
        with torch.no_grad():
            logits = model(torch.tensor([head + tail])).logits[0, len(head) - 1:-1].float()
        expect = logits.log_softmax(-1).gather(1, torch.tensor(tail)[:, None]).sum().item()
        assert logprob == pytest.approx(expect, abs=1e-4)
        assert greedy == bool((logits.argmax(-1) == torch.tensor(tail)).all())


@pytest.mark.parametrize("case", ["split", "data", "dtype", "tasks"])
def test_eval_bad_input_exit_2_nothing_written(case: str, run_dir: Path, tmp_path: Path) -> None:
    import importlib.util

    if case == "tasks" and importlib.util.find_spec("lm_eval") is not None:
        pytest.skip("lm-evaluation-harness is installed here")
    out = tmp_path / "r.json"
    flags, expect = {
        "split": (["--split", "test"], "has no split 'test'"),
        "data": (["--data", str(tmp_path)], "is not a prepared data directory"),
        "dtype": (["--dtype", "int4"], "unknown dtype 'int4'"),
        "tasks": (["--tasks", "hellaswag"], "lm-evaluation-harness, which is not installed"),
    }[case]
    result = run_cli("eval", "--model", str(run_dir), "--out", str(out), *flags)
    assert result.returncode == 2, result.stderr
    assert expect in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_an_extras_install_hint_keeps_the_installed_torch() -> None:
    """The hint's command, given to pip (a dry run), installs nothing in place of torch."""
    import shlex
    import subprocess
    import sys
    from importlib import metadata

    from ominix.extras import install_hint

    hint = install_hint("eval")
    assert "ominix[" not in hint and f"torch=={metadata.version('torch')}" in hint
    argv = shlex.split(hint.split(" (")[0])
    assert argv[:2] == ["pip", "install"]
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-",
                             *argv[2:]], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    installs = {item["metadata"]["name"].lower() for item in json.loads(result.stdout)["install"]}
    assert not installs & {"torch", "transformers", "colossalai"}, installs


def test_eval_out_replaces_its_own_results_and_never_the_run_the_data_or_a_device(run_dir: Path,
                                                                                 tmp_path: Path) -> None:
    from tests.test_faults_data import _device

    data = run_dir.parent / "data"
    kept = {p: p.read_bytes() for p in (run_dir / "config.yaml", data / "manifest.json")}
    node = _device(tmp_path / "null")
    for out, needle in ((node, "is a device"), (run_dir / "config.yaml", "is one of the files of the training run"),
                        (data / "manifest.json", "lies inside"), (data, "is a directory")):
        result = run_cli("eval", "--model", str(run_dir), "--out", str(out), "--force")
        assert result.returncode == 2 and needle in result.stderr, result.stderr
    assert all(p.read_bytes() == text for p, text in kept.items()) and node.is_char_device()
    out = tmp_path / "results.json"
    out.write_text("my notes")
    result = run_cli("eval", "--model", str(run_dir), "--out", str(out), "--max-blocks", "2")
    assert result.returncode == 2 and "already exists and is not evaluation results" in result.stderr
    assert out.read_text() == "my notes"
    for flags in (["--force"], []):  # replaced with --force, then as its own earlier output
        result = run_cli("eval", "--model", str(run_dir), "--out", str(out), "--max-blocks", "2", *flags)
        assert result.returncode == 0, result.stderr
        assert json.loads(out.read_text())["written_by"] == "ominix eval"


def test_held_out_blocks_do_not_depend_on_world_size_or_batch_size(run_dir: Path) -> None:
    """The trainer (any plugin: each data-parallel rank a share) and `ominix eval` read the blocks of
    held_out_ids: the same blocks, so the same loss, whatever the world size and batch size."""
    from ominix.data.loader import eval_batches, held_out_ids
    from ominix.data.store import PackedDataset
    from ominix.infer.load import load_model, resolve
    from ominix.perplexity import evaluate

    data = PackedDataset(run_dir.parent / "data", "validation")
    chosen = held_out_ids(len(data), 6)
    assert len(set(chosen.tolist())) == 6 and chosen[0] == 0 and chosen[-1] > len(data) // 2  # spread out
    for world in (1, 2, 3):
        rows = torch.cat([b for r in range(world) for b, _ in eval_batches(data, 2, r, world, max_blocks=6)])
        assert sorted(tuple(row.tolist()) for row in rows) == sorted(tuple(data[int(i)].tolist()) for i in chosen)

    # padded for collective forward passes (Gemini): 7 blocks over 3 ranks is 3 passes on every
    # rank, the padding rows have no source and the real rows are still each block once
    padded = [list(eval_batches(data, 2, r, 3, max_blocks=7, pad=True)) for r in range(3)]
    assert [len(p) for p in padded] == [2, 2, 2] and [sum(len(b) for b, _ in p) for p in padded] == [3, 3, 3]
    real = sorted(tuple(row.tolist()) for p in padded for b, src in p for row, s in zip(b, src) if s is not None)
    assert real == sorted(tuple(data[int(i)].tolist()) for i in held_out_ids(len(data), 7))

    model = load_model(resolve(run_dir))
    whole = evaluate(model, data, batch_size=2, max_blocks=6)
    assert whole["blocks"] == 6
    assert evaluate(model, data, batch_size=4, max_blocks=6)["loss"] == pytest.approx(whole["loss"], rel=1e-6)
    shares = [evaluate(model, data, batch_size=3, max_blocks=6, rank=r, world_size=2) for r in (0, 1)]
    assert sum(s["blocks"] for s in shares) == 6
    combined = sum(s["loss"] * s["tokens"] for s in shares) / sum(s["tokens"] for s in shares)
    assert combined == pytest.approx(whole["loss"], rel=1e-6)


def test_evaluation_never_holds_the_full_logits(run_dir: Path) -> None:
    """With labels and no grad the model returns per-token losses computed a chunk at a time, equal
    to the cross-entropy of the full logits."""
    from ominix.infer.load import load_model, resolve

    model = load_model(resolve(run_dir))
    model.config.loss_chunk = 7  # several chunks, one of them partial
    ids = torch.randint(0, model.config.vocab_size, (2, SEQ + 1), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(ids[:, :-1], labels=ids[:, 1:])
        logits = model(ids[:, :-1]).logits
    assert out.logits is None and out.token_loss.shape == (2, SEQ)
    full = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    torch.testing.assert_close(out.token_loss, full, rtol=1e-5, atol=1e-5)
    assert out.loss.item() == pytest.approx(full.mean().item(), rel=1e-5)


def test_eval_refuses_data_prepared_with_another_tokenizer(run_dir: Path, tmp_path: Path) -> None:
    """The ids of another tokenizer's data fit the model's vocabulary, and the loss would mean nothing."""
    from tests.test_export import make_tokenizer

    other = make_prepared(tmp_path / "other", make_tokenizer(tmp_path / "other" / "tokenizer", vocab_size=280))
    out = tmp_path / "r.json"
    result = run_cli("eval", "--model", str(run_dir), "--data", str(other), "--out", str(out))
    assert result.returncode == 2, result.stderr
    assert "was prepared with another tokenizer than" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_a_relative_data_path_means_the_data_the_run_recorded_from_any_directory(tmp_path: Path) -> None:
    """A run whose config says data.path `data` (relative), evaluated from a directory holding
    another `data/`: the run's own data is found (its manifest sha256 is the recorded one), and once
    it is gone the other one is refused instead of evaluated."""
    import shutil

    from ominix.config import load_config, save_config
    from ominix.data.store import manifest_sha256

    root, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    run = make_run(root)
    data = make_prepared(root / "data", root / "data" / "tokenizer")
    shutil.copytree(data, elsewhere / "data")
    manifest = json.loads((elsewhere / "data" / "manifest.json").read_text())
    (elsewhere / "data" / "manifest.json").write_text(json.dumps({**manifest, "source_sets": ["a", "b"]}))
    ckpt = run / "checkpoints" / "step_00000010"
    for config in (run / "config.yaml", ckpt / "config.yaml"):
        cfg = load_config(config)
        save_config(cfg.model_copy(update={"data": cfg.data.model_copy(update={"path": "data"})}), config)
    state = json.loads((ckpt / "state.json").read_text())
    (ckpt / "state.json").write_text(json.dumps({**state, "data_manifest_sha256": manifest_sha256(data)}))

    out = tmp_path / "r.json"
    result = run_cli("eval", "--model", str(run), "--out", str(out), cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["data"]["manifest_sha256"] == manifest_sha256(data)
    shutil.rmtree(data)
    out.unlink()
    result = run_cli("eval", "--model", str(run), "--out", str(out), cwd=elsewhere)
    assert result.returncode == 2, result.stderr
    assert f"{elsewhere / 'data'} is not the data {run} trained on" in result.stderr, result.stderr
    assert not out.exists()
