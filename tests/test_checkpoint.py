"""The checkpoint package: step names, discovery, ``latest``, retention, reading weights, integrity records
and the choice of the checkpoint to resume from, on real files."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ominix.checkpoint import (
    checkpoints_dir, complete_checkpoints, files_under, kept_because, list_checkpoints, prune, read_weights,
    resolve_checkpoint, resumable, step_name, weight_files,
)
from ominix.checkpoint.integrity import describe, write_record
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


# --- integrity record and the choice of the checkpoint to resume from ---------------------------


def _recorded(run: Path, step: int) -> Path:
    """A checkpoint with its integrity record, as a save writes it."""
    path = _ckpt(run, step)
    (path / "optimizer").mkdir()
    (path / "optimizer" / "optimizer.pt").write_bytes(bytes(range(256)) * 64)
    write_record(path, describe(path, files_under(path)))
    write_latest(checkpoints_dir(run), path.name)
    return path


def test_resume_takes_latest_when_whole_and_says_nothing(tmp_path: Path) -> None:
    _recorded(tmp_path, 10)
    newest = _recorded(tmp_path, 20)
    assert resumable(tmp_path) == (newest, []) and resumable(tmp_path, "full") == (newest, [])
    assert resumable(tmp_path / "elsewhere") == (None, [])  # nothing saved yet: start from scratch
    with pytest.raises(OminixError, match="does not exist"):
        resumable(tmp_path / "elsewhere", required=True)  # an explicit --resume PATH must exist


@pytest.mark.parametrize("damage, why", [
    (lambda c: (c / "model" / "model.safetensors").write_bytes((c / "model" / "model.safetensors").read_bytes()[:40]),
     r"model/model.safetensors: size 40 != \d+"),
    (lambda c: (c / "model" / "model.safetensors").unlink(), "model/model.safetensors: missing"),
    (lambda c: (c / "state.json").write_text('{"st'), r"state.json: size 4 != \d+"),
    (lambda c: (c / "integrity.json").write_text("{"), "integrity.json is not a valid record"),
])
def test_a_damaged_latest_falls_back_to_the_previous_checkpoint_with_a_notice(tmp_path: Path, damage, why) -> None:
    older, newest = _recorded(tmp_path, 10), _recorded(tmp_path, 20)
    damage(newest)
    found, notices = resumable(tmp_path)
    assert found == older
    assert len(notices) == 1 and re.fullmatch(f"checkpoint step_00000020 is damaged \\({why}\\); "
                                              "resuming from step_00000010", notices[0]), notices
    with pytest.raises(OminixError, match="is damaged") as err:  # named explicitly: refused, never replaced
        resumable(newest, required=True)
    assert "--resume auto" in err.value.hint


def test_same_size_corruption_is_found_by_full_verification_only(tmp_path: Path) -> None:
    older, newest = _recorded(tmp_path, 10), _recorded(tmp_path, 20)
    opt = newest / "optimizer" / "optimizer.pt"
    opt.write_bytes(b"\xff" + opt.read_bytes()[1:])
    assert resumable(tmp_path, "sizes") == (newest, [])
    found, notices = resumable(tmp_path, "full")
    assert found == older and notices == ["checkpoint step_00000020 is damaged (optimizer/optimizer.pt: sha256 "
                                          "differs from integrity.json); resuming from step_00000010"]


def test_latest_naming_a_missing_step_or_no_good_checkpoint_at_all(tmp_path: Path) -> None:
    older = _recorded(tmp_path, 10)
    write_latest(checkpoints_dir(tmp_path), step_name(20))
    found, notices = resumable(tmp_path)
    assert found == older and notices == [
        f"{checkpoints_dir(tmp_path) / 'latest'} names step_00000020, which does not exist; resuming from step_00000010"]
    (older / "state.json").unlink()
    with pytest.raises(OminixError, match=r"no usable checkpoint in .*step_00000010 is damaged \(state.json: "
                                          "missing\\)") as err:
        resumable(tmp_path)
    assert "--resume restart" in err.value.hint


def test_checkpoints_without_a_record_still_resume_unless_their_weights_are_cut(tmp_path: Path) -> None:
    older, newest = _ckpt(tmp_path, 10), _ckpt(tmp_path, 20)  # written before integrity records existed
    write_latest(checkpoints_dir(tmp_path), newest.name)
    assert resumable(tmp_path) == (newest, [])
    weights = newest / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4])
    found, notices = resumable(tmp_path)
    assert found == older and "model/model.safetensors: size" in notices[0] and "(from its header)" in notices[0]


def test_a_save_killed_between_moving_the_old_copy_aside_and_renaming_the_new_one_in(tmp_path: Path) -> None:
    ckpt = _recorded(tmp_path, 10)
    ckpts = checkpoints_dir(tmp_path)
    ckpt.rename(ckpts / ".step_00000010.old-save")  # the old copy aside, the new one not yet renamed in
    found, notices = resumable(tmp_path)
    assert found == ckpt and notices == ["restored step_00000010, which a killed save was replacing"]
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_00000010"]
    shutil.copytree(ckpt, ckpts / ".step_00000010.old-save")  # killed after the rename: only the delete left
    assert resumable(tmp_path) == (ckpt, []) and not (ckpts / ".step_00000010.old-save").exists()


def test_metrics_lines_are_strict_json_with_null_for_what_is_not_a_number(tmp_path: Path) -> None:
    from ominix.config import LoggingConfig
    from ominix.train.metrics import MetricsWriter

    out = MetricsWriter(tmp_path, enabled=True, log_cfg=LoggingConfig(tensorboard=False, figure=False))
    out.record("eval", {"step": 1, "val_loss": float("nan"), "val_perplexity": float("inf")})
    out.record("train", {"step": 1, "loss": 2.5, "grad_norm": None})
    out.close()

    def strict(name: str):
        raise ValueError(f"{name} is not JSON")

    rows = [json.loads(line, parse_constant=strict) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(isinstance(row.pop("time"), float) for row in rows)  # each record's wall-clock time
    assert rows == [{"kind": "eval", "step": 1, "val_loss": None, "val_perplexity": None},
                    {"kind": "train", "step": 1, "loss": 2.5, "grad_norm": None}]


def test_saved_files_get_the_mode_the_umask_gives_not_safetensors_0600(tmp_path: Path) -> None:
    """make_readable is what save_checkpoint and every staged output run over their files (the real
    training save is checked in tests/test_export.py's pipeline test)."""
    import os
    import stat

    from ominix.atomic import make_readable

    save_file({"w": torch.zeros(2)}, tmp_path / "model.safetensors")
    assert stat.S_IMODE((tmp_path / "model.safetensors").stat().st_mode) == 0o600  # safetensors' own mode
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.json").write_text("{}")
    os.chmod(tmp_path / "sub" / "a.json", 0o600)
    for mask, mode in ((0o022, 0o644), (0o027, 0o640)):
        old = os.umask(mask)
        try:
            make_readable([tmp_path])
        finally:
            os.umask(old)
        assert {stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*") if p.is_file()} == {mode}


def test_the_integrity_record_hashes_in_threads_and_equals_one_thread(tmp_path: Path) -> None:
    import hashlib

    from ominix.checkpoint.integrity import describe

    files = []
    for i in range(5):
        f = tmp_path / f"shard{i}.bin"
        f.write_bytes(bytes([i]) * (1000 + i))
        files.append(f)
    threaded, one = describe(tmp_path, files, threads=4), describe(tmp_path, files, threads=1)
    assert threaded == one
    assert one["shard3.bin"] == {"size": 1003, "sha256": hashlib.sha256(bytes([3]) * 1003).hexdigest()}


def test_retention_counts_only_complete_checkpoints_and_leaves_strays_alone(tmp_path: Path) -> None:
    for step in (10, 20):
        _ckpt(tmp_path, step)
    ckpts = checkpoints_dir(tmp_path)
    write_latest(ckpts, step_name(20))
    stray = ckpts / step_name(30)
    stray.mkdir()  # an empty step directory a user (or a crashed tool) left: newer than every checkpoint
    half = ckpts / step_name(25)
    (half / "model").mkdir(parents=True)  # weights never written, no state.json
    assert prune(ckpts, keep_last=2, keep_every=0) == []
    assert [s for s, _ in step_dirs(ckpts)] == [10, 20, 25, 30]
    (tmp_path / "config.yaml").write_text("checkpoint:\n  keep_last: 2\n  keep_every: 0\n")
    kept = {e["step"]: e["kept"] for e in list_checkpoints(tmp_path)}
    assert kept[10] == "last 2" and kept[20] == "latest, last 2"
    assert kept[25].startswith("incomplete") and kept[30].startswith("incomplete")


def test_a_delete_killed_half_way_leaves_a_scratch_directory_the_next_save_clears(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    """Retention renames a checkpoint out of the step names before removing its files, so a process
    killed in the middle of a delete never leaves a half-deleted ``step_*`` (which, being incomplete,
    retention would keep for ever)."""
    from ominix.checkpoint import retention

    for step in (1, 2, 3):
        _ckpt(tmp_path, step)
    ckpts = checkpoints_dir(tmp_path)
    write_latest(ckpts, step_name(3))
    real_rmtree = shutil.rmtree

    def killed(path, *args, **kwargs):  # removes one file, then the process "dies"
        next(p for p in Path(path).rglob("*") if p.is_file()).unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(retention.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        prune(ckpts, keep_last=2, keep_every=0)
    monkeypatch.setattr(retention.shutil, "rmtree", real_rmtree)
    assert [s for s, _ in step_dirs(ckpts)] == [2, 3]
    assert (ckpts / f".{step_name(1)}.deleting").is_dir()
    retention.clear_scratch(ckpts)
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", step_name(2), step_name(3)]
