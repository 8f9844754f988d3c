"""The checkpoint package: step names, discovery, ``latest``, retention and reading weights, on real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ominix.checkpoint import (
    checkpoints_dir, complete_checkpoints, kept_because, prune, read_weights, resolve_checkpoint, step_name,
    weight_files,
)
from ominix.checkpoint.layout import parse_step, step_dirs, write_latest
from ominix.errors import OminixError


def _ckpt(run: Path, step: int, tensors: dict[str, torch.Tensor] | None = None) -> Path:
    path = checkpoints_dir(run) / step_name(step)
    (path / "model").mkdir(parents=True)
    save_file(tensors or {"w": torch.full((2,), float(step))}, path / "model" / "model.safetensors")
    (path / "state.json").write_text(json.dumps({"step": step}))
    return path


def test_step_names_parse_back_and_nothing_else_does() -> None:
    assert step_name(50) == "step_00000050" and parse_step("step_00000050") == 50
    assert parse_step(step_name(123_456_789)) == 123_456_789
    for other in ("step_50", "step_000000050", ".step_00000050.tmp-save", "step_00000050.old", "latest"):
        assert parse_step(other) is None


def test_discovery_is_oldest_first_by_step_and_skips_other_names(tmp_path: Path) -> None:
    for step in (100_000_000, 7, 20):
        _ckpt(tmp_path, step)
    (checkpoints_dir(tmp_path) / ".step_00000030.tmp-save").mkdir()
    assert [s for s, _ in step_dirs(checkpoints_dir(tmp_path))] == [7, 20, 100_000_000]


def test_latest_is_what_a_run_resolves_to_and_newer_leftovers_are_skipped(tmp_path: Path) -> None:
    first, second = _ckpt(tmp_path, 10), _ckpt(tmp_path, 20)
    leftover = checkpoints_dir(tmp_path) / step_name(30)
    leftover.mkdir()  # a save that never finished: no state.json, no weights
    write_latest(checkpoints_dir(tmp_path), second.name)
    assert resolve_checkpoint(tmp_path) == resolve_checkpoint(checkpoints_dir(tmp_path)) == second
    assert resolve_checkpoint(first) == first
    with pytest.raises(OminixError, match="is incomplete"):
        complete_checkpoints(tmp_path)
    leftover.rmdir()
    _ckpt(tmp_path, 30)  # complete, but newer than latest: the leftover of a save that was not published
    assert [c.step for c in complete_checkpoints(tmp_path)] == [10, 20]
    write_latest(checkpoints_dir(tmp_path), step_name(40))
    with pytest.raises(OminixError, match="not a complete checkpoint"):
        resolve_checkpoint(tmp_path)


def test_prune_removes_exactly_what_the_listing_reasons_leave_unkept(tmp_path: Path) -> None:
    steps = [10, 20, 30, 40, 50, 60]
    for step in steps:
        _ckpt(tmp_path, step)
    ckpts = checkpoints_dir(tmp_path)
    write_latest(ckpts, step_name(30))  # a resumed run that went back to step 30
    reasons = kept_because(steps, 30, keep_last=2, keep_every=20)
    assert reasons == {10: [], 20: ["every 20"], 30: ["latest"], 40: ["every 20"], 50: ["last 2"],
                       60: ["last 2", "every 20"]}
    removed = prune(ckpts, keep_last=2, keep_every=20)
    assert [p.name for p in removed] == [step_name(s) for s in steps if not reasons[s]]
    assert [s for s, _ in step_dirs(ckpts)] == [s for s in steps if reasons[s]]


def test_weights_follow_the_index_of_a_checkpoint_or_a_directory(tmp_path: Path) -> None:
    ckpt = _ckpt(tmp_path, 1)
    model = ckpt / "model"
    (model / "model.safetensors").unlink()
    save_file({"a": torch.ones(2)}, model / "model-00001.safetensors")
    save_file({"b": torch.zeros(3)}, model / "model-00002.safetensors")
    save_file({"stray": torch.ones(1)}, model / "old-model.safetensors")  # not in the index: not read
    (model / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001.safetensors", "b": "model-00002.safetensors"}}))
    assert weight_files(ckpt) == weight_files(model) == [model / "model-00001.safetensors",
                                                         model / "model-00002.safetensors"]
    state = read_weights(ckpt)
    assert sorted(state) == ["a", "b"] and read_weights(model).keys() == state.keys()
    (model / "model-00002.safetensors").unlink()
    with pytest.raises(OminixError, match="model-00002.safetensors is missing"):
        read_weights(ckpt)
    with pytest.raises(OminixError, match="holds no .safetensors files"):
        read_weights(tmp_path)
