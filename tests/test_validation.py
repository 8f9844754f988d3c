"""The validation set: counted in blocks (schedule.eval_blocks; the old schedule.eval_batches in micro
batches converted to the same blocks), scored on the same (input, target) pairs under every plugin,
micro batch and world size, never empty and never NaN (a split with too few blocks is read whole, an
empty one refused before the run starts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ominix.config import load_config
from ominix.errors import OminixError
from tests.conftest import run_cli
from tests.test_train import _launch, _ok

EVAL = ["schedule.warmup_steps=1", "logging.log_every=1", "schedule.eval_every=1", "schedule.eval_blocks=5",
        "logging.tensorboard=false"]


def _val_loss(run: Path) -> float:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return next(r["val_loss"] for r in rows if r["kind"] == "eval")


@pytest.mark.slow
@pytest.mark.usefixtures("private_netns")
def test_validation_loss_is_the_same_under_every_micro_batch_world_size_and_plugin(
        data_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    """Five held-out blocks, fewer than the pipeline's rank batch of 16, from the same weights: ddp at
    micro batch 8 on one process, ddp at micro batch 4 on two, transformers' model under 3d on one
    process and over two pipeline stages, and `ominix eval` at batch size 2 give one loss. (The
    pipeline's short batch scored nothing, a NaN; transformers' model dropped each block's last
    target; the blocks were micro batches' worth.)"""
    first = tmp_path / "first"
    _ok(_launch(data_dir, first, "--max-steps", "1", sets=[*EVAL, "checkpoint.every=1"]))
    reference = _val_loss(first)
    weights = first / "checkpoints" / "step_00000001" / "model" / "model.safetensors.index.json"
    # a learning rate of 1e-12 leaves the loaded weights as they are for the step before the evaluation
    same = [*EVAL, "checkpoint.every=0", "optim.lr=1e-12", "optim.min_lr=0", f"model.init_from={weights}",
            "schedule.micro_batch_size=4"]
    for name, args in {"ddp-2": ["--nproc-per-node", "2"], "3d": ["--plugin", "3d"],
                       "3d-pp2": ["--plugin", "3d", "--nproc-per-node", "2", "--set", "parallel.pp=2"]}.items():
        run = tmp_path / name
        _ok(_launch(data_dir, run, "--max-steps", "1", *args, sets=same))
        assert _val_loss(run) == pytest.approx(reference, rel=1e-5), name
    result = run_cli("eval", "--model", str(first), "--max-blocks", "5", "--batch-size", "2", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["perplexity"]["loss"] == pytest.approx(reference, rel=1e-5)


def test_the_old_eval_batches_becomes_the_same_blocks_with_a_notice(tmp_path: Path) -> None:
    config = tmp_path / "old.yaml"
    config.write_text("schedule:\n  global_batch_size: 16\n  micro_batch_size: 8\n  eval_batches: 4\n")
    cfg = load_config(config)
    assert cfg.schedule.eval_blocks == 32 and "schedule.eval_blocks=32" in cfg.schedule._notice
    assert "eval_batches" not in json.dumps(cfg.model_dump(mode="json"))  # config.yaml has the new name
    with pytest.raises(OminixError, match="eval_batches and schedule.eval_blocks are both set"):
        load_config(config, ["schedule.eval_blocks=8"])
    shown = run_cli("train", "launch", "--config", str(config), "--dry-run")
    assert shown.returncode == 0 and "is now schedule.eval_blocks=32, the same held-out blocks" in shown.stderr


def test_a_short_validation_split_is_read_whole_and_an_empty_one_refused(tmp_path: Path) -> None:
    from ominix.data.compatibility import check_fits
    from ominix.train.schedule import eval_note

    cfg = load_config("tiny", ["schedule.eval_blocks=500"])
    assert "each evaluation reads all 460" in eval_note(cfg, 460)
    assert eval_note(cfg, 500) is None
    data = tmp_path / "data"
    prepared = run_cli("data", "prepare", "--config", "tiny", "--out", str(data), "--set", "data.val_fraction=0")
    assert prepared.returncode == 0, prepared.stderr
    with pytest.raises(OminixError, match="holds no validation blocks, and the run evaluates every 50 steps"):
        check_fits(load_config("tiny", [f"data.path={data}"]))
    check_fits(load_config("tiny", [f"data.path={data}", "schedule.eval_every=0"]))
