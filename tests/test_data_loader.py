"""The prepared-data store and the training/evaluation loaders, on a real prepared directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ominix.config import DataConfig
from ominix.data.loader import BlockLoader, eval_batches
from ominix.data.prepare import prepare
from ominix.data.store import PackedDataset, manifest_sha256
from ominix.errors import OminixError

WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex jovial bankers".split()


def _doc(rng: np.random.Generator, n: int) -> str:
    return " ".join(rng.choice(WORDS, size=n))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("loader")
    rng = np.random.default_rng(0)
    with open(root / "corpus.jsonl", "w") as fh:
        for i in range(300):
            meta = {"redpajama_set_name": ["setA", "setB"][i % 2]}
            fh.write(json.dumps({"text": _doc(rng, int(rng.integers(20, 200))), "meta": meta}) + "\n")
    cfg = DataConfig(sources=[str(root / "corpus.jsonl")], train_tokenizer=True, vocab_size=300,
                     seq_len=16, val_fraction=0.1)
    prepare(cfg, root / "out", progress=False)
    return root / "out"


def test_dataset_random_access_and_sources(prepared: Path) -> None:
    ds = PackedDataset(prepared, "train")
    m = ds.manifest
    assert len(ds) == m["splits"]["train"]["blocks"] > 50
    assert ds.seq_len == 16 and ds.vocab_size == 300
    block = ds[3]
    assert block.dtype == np.int64 and block.shape == (17,)
    assert (ds[-1] == ds[len(ds) - 1]).all()
    assert set(ds.sources) == {"setA", "setB"}
    per_source = {name: 0 for name in ds.sources}
    for i in range(len(ds)):
        per_source[ds.source_of(i)] += 1
    assert per_source == {k: v["blocks"] for k, v in m["splits"]["train"]["per_source"].items()}
    with pytest.raises(IndexError):
        ds[len(ds)]
    val = PackedDataset(prepared, "validation")
    assert 0 < len(val) < len(ds)


def test_blocks_hold_the_documents_in_order(prepared: Path) -> None:
    """Decoding one source set's blocks gives its documents, each followed by EOS."""
    from tokenizers import Tokenizer

    ds = PackedDataset(prepared, "train")
    tok = Tokenizer.from_file(str(prepared / "tokenizer" / "tokenizer.json"))
    eos = ds.manifest["tokenizer"]["eos_id"]
    ids = np.concatenate([ds[i] for i in range(len(ds)) if ds.source_of(i) == "setA"])
    docs = [tok.decode(d.tolist()) for d in np.split(ids, np.flatnonzero(ids == eos) + 1)[:-1]]
    assert all(set(d.split()) <= set(WORDS) for d in docs)
    assert len(docs) >= 10 and all(len(d.split()) >= 20 for d in docs)


def test_loader_epoch_covers_every_block_once_across_ranks(prepared: Path) -> None:
    ds = PackedDataset(prepared, "train")
    world, batch = 2, 4
    loaders = [BlockLoader(ds, batch, rank=r, world_size=world, seed=7) for r in range(world)]
    steps = len(ds) // (batch * world)
    seen: list[int] = []
    for _ in range(steps):
        rows = [loader.next_indices() for loader in loaders]
        assert not set(rows[0]) & set(rows[1])
        seen += [int(i) for r in rows for i in r]
    assert len(seen) == len(set(seen)) == steps * batch * world
    out = next(iter(BlockLoader(ds, batch, seed=7)))
    assert out.dtype == torch.long and out.shape == (batch, 17)


def test_loader_order_is_deterministic_per_seed_and_epoch(prepared: Path) -> None:
    ds = PackedDataset(prepared, "train")
    a, b, c = (BlockLoader(ds, 8, seed=s) for s in (1, 1, 2))
    first = [next(a) for _ in range(3)]
    assert all(torch.equal(x, next(b)) for x in first)
    assert not torch.equal(first[0], next(c))
    plain = BlockLoader(ds, 8, shuffle=False)
    assert torch.equal(next(plain)[0], torch.from_numpy(ds[0]))
    # a whole epoch later the order is a different permutation of the same blocks
    ep = BlockLoader(ds, len(ds), seed=1)
    e0, e1 = ep.next_indices(), ep.next_indices()
    assert sorted(e0) == sorted(e1) and list(e0) != list(e1) and ep.epoch == 1


def test_loader_resume_is_exact_also_under_another_world_size(prepared: Path) -> None:
    ds = PackedDataset(prepared, "train")
    ref = BlockLoader(ds, 8, seed=3)
    for _ in range(int(ref.steps_per_epoch) + 2):  # cross an epoch boundary
        next(ref)
    state = json.loads(json.dumps(ref.state_dict()))
    expected = [next(ref) for _ in range(3)]
    resumed = BlockLoader(ds, 8, seed=99)
    resumed.load_state_dict(state)
    assert all(torch.equal(x, next(resumed)) for x in expected)
    halves = [BlockLoader(ds, 4, rank=r, world_size=2) for r in range(2)]
    for h in halves:
        h.load_state_dict(state)
    for x in expected:
        assert torch.equal(torch.cat([next(h) for h in halves]), x)
    with pytest.raises(OminixError, match="global batch"):
        BlockLoader(ds, 16).load_state_dict(state)


def test_the_ledger_records_the_loaders_blocks_and_is_cut_back_on_resume(prepared: Path, tmp_path: Path) -> None:
    """What two ranks of a world of 2 read, step by step over epoch boundaries, is the ledger's row of
    that step, is the loader's order recomputed, and stays so when a resume cuts the ledger back."""
    from ominix.data.ledger import LedgerWriter, check, describe, expected_steps

    ds = PackedDataset(prepared, "train")
    ranks = [BlockLoader(ds, 4, rank=r, world_size=2, seed=5) for r in range(2)]
    steps = 2 * int(ranks[0].steps_per_epoch) + 3
    info = describe(ranks[0].state_dict(), manifest_sha256(prepared))
    ledger = LedgerWriter(tmp_path, info, 0)
    read = []
    for _ in range(steps):
        read.append(torch.cat([next(r) for r in ranks]))
        ledger.append(ranks[0].step_blocks)
    ledger.close()
    rows = np.load(tmp_path / "data_order.npy")
    assert rows.shape == (steps, 8) and (rows == expected_steps(info, 1, steps)).all()
    assert all(torch.equal(torch.from_numpy(np.stack([ds[int(i)] for i in row])), x) for row, x in zip(rows, read))
    assert check(tmp_path, manifest_sha256(prepared))["steps"] == steps

    resumed = LedgerWriter(tmp_path, info, 4)  # back to a checkpoint of step 4: the later steps are redone
    assert resumed.dropped == steps - 4
    resumed.append(expected_steps(info, 5, 5)[0])
    resumed.close()
    assert (np.load(tmp_path / "data_order.npy") == rows[:5]).all()
    fresh = tmp_path / "elsewhere"  # resumed into another run directory: steps 1-4 from the loader's order
    fresh.mkdir()
    LedgerWriter(fresh, info, 4).close()
    assert (np.load(fresh / "data_order.npy") == rows[:4]).all()
    assert check(fresh)["derived_steps"] == [[1, 4]]
    with pytest.raises(OminixError, match="manifest sha256 differs"):
        check(fresh, "0" * 64)
    changed = rows[:5].copy()
    changed[2] = changed[2][::-1]
    with open(tmp_path / "data_order.npy", "r+b") as fh:  # the same header, step 3's blocks reordered
        fh.seek(-changed.nbytes, 2)
        fh.write(changed.astype("<u4").tobytes())
    with pytest.raises(OminixError, match="step 3 records other blocks"):
        check(tmp_path)
    with pytest.raises(OminixError, match="step 3 records other blocks"):
        LedgerWriter(tmp_path, info, 4)  # a resume checks the steps it keeps


def test_eval_batches_fixed_order_split_over_ranks(prepared: Path) -> None:
    ds = PackedDataset(prepared, "validation")
    whole = list(eval_batches(ds, 4))
    assert sum(len(b) for b, _ in whole) == len(ds)
    assert torch.equal(whole[0][0][1], torch.from_numpy(ds[1].astype("int64")))
    assert whole[0][1][0] == ds.source_of(0)
    r1 = list(eval_batches(ds, 2, rank=1, world_size=2, max_blocks=4))  # blocks 0, n/4, n/2, 3n/4
    assert len(r1) == 1 and torch.equal(r1[0][0][0], torch.from_numpy(ds[len(ds) // 4].astype("int64")))
    capped = [s for _, names in eval_batches(ds, 2, max_blocks=len(ds) // 2) for s in names]
    assert set(capped) == set(ds.sources)  # a capped evaluation still sees every source set


def test_manifest_sha256_and_corruption_detected(prepared: Path, tmp_path: Path) -> None:
    import shutil

    assert manifest_sha256(prepared) == manifest_sha256(prepared / "manifest.json")
    copy = tmp_path / "copy"
    shutil.copytree(prepared, copy)
    with open(copy / "train" / "00000.bin", "r+b") as fh:
        fh.truncate(10)
    with pytest.raises(OminixError, match="bytes, the manifest says"):
        PackedDataset(copy, "train")
    with pytest.raises(OminixError, match="not a prepared data directory"):
        PackedDataset(tmp_path, "train")


def test_store_and_loader_do_not_import_datasets(prepared: Path) -> None:
    code = (
        "import sys; from ominix.data import PackedDataset, BlockLoader, manifest_sha256; "
        f"ds = PackedDataset({str(prepared)!r}); next(iter(BlockLoader(ds, 2))); "
        "assert 'datasets' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
