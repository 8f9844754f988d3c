"""`ominix train launch` on CPU with real ColossalAI: validation before anything starts, 2-process
gloo runs with ddp, zero2 and 3d (tp=2, pp=2) that train, write metrics and resume bit-exactly, SIGTERM."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from ominix.checkpoint import resumable
from ominix.config import load_config
from ominix.errors import OminixError
from tests.conftest import REPO, run_cli

QUICK = ["schedule.warmup_steps=2", "logging.log_every=1", "checkpoint.every=3", "schedule.eval_every=3",
         "schedule.eval_blocks=16", "checkpoint.keep_last=1", "checkpoint.keep_every=0"]
LOCAL_TASK = REPO / "tests" / "data" / "lm_eval" / "tiny_choice.yaml"  # task ominix_tiny_choice


def _launch(data: Path, run_dir: Path, *args: str, sets: list[str] = QUICK, timeout: float = 300):
    flags = [a for s in sets for a in ("--set", s)]
    return run_cli("train", "launch", "tiny", "--data", str(data), "--run-dir", str(run_dir), *args, *flags,
                   env={"COLUMNS": "200", "OMP_NUM_THREADS": "1"}, timeout=timeout)


def _losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


def _ok(result) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


# --- validation: no process is started ---------------------------------------------------------


@pytest.mark.parametrize("sets, nproc, gpu, needle", [
    (["parallel.plugin=gemini", "parallel.precision=bf16"], 1, False, "parallel.plugin=gemini needs a CUDA GPU"),
    (["parallel.plugin=zero2_cpu"], 2, False, "parallel.plugin=zero2_cpu needs a CUDA GPU"),
    (["parallel.plugin=fsdp"], 2, False, "parallel.plugin=fsdp needs a CUDA GPU"),
    (["parallel.plugin=3d", "parallel.tp=2"], 3, True, r"tp x parallel.pp \(2 x 1\) does not divide the 3"),
    (["schedule.global_batch_size=8", "schedule.micro_batch_size=8"], 2, False, "micro_batch_size x data-parallel"),
    (["optim.optimizer=hybrid_adam"], 1, False, "optim.optimizer=hybrid_adam needs a CUDA GPU"),
    (["parallel.plugin=fsdp", "optim.optimizer=hybrid_adam"], 2, True, "fsdp cannot resume HybridAdam"),
    (["parallel.zero_stage=1"], 1, False, "parallel.zero_stage applies to the 3d plugin only"),
    (["parallel.plugin=gemini", "parallel.precision=fp32"], 1, True, "gemini trains in bf16 or fp16"),
    (["parallel.plugin=3d", "parallel.pp=2", "parallel.zero_stage=2"], 2, True, "ZeRO stage 2 cannot"),
    (["parallel.plugin=3d", "parallel.pp=2", "parallel.num_microbatches=4"], 2, True, "num_microbatches"),
])
def test_bad_combination_names_the_setting(sets, nproc, gpu, needle) -> None:
    from ominix.train.parallel_layout import validate

    with pytest.raises(OminixError, match=needle) as info:
        validate(load_config("tiny", sets), nproc, gpu=gpu)
    assert info.value.hint


def test_fsdp_is_refused_on_torch_older_than_2_7(monkeypatch) -> None:
    from ominix.train import parallel_layout

    cfg = load_config("tiny", ["parallel.plugin=fsdp"])
    parallel_layout.validate(cfg, 2, gpu=True)  # the installed torch is new enough
    monkeypatch.setattr(parallel_layout, "torch_version", lambda: (2, 5))
    with pytest.raises(OminixError, match=r"fsdp needs torch >= 2.7 \(installed: 2.5\)") as info:
        parallel_layout.validate(cfg, 2, gpu=True)
    assert "torch>=2.7" in info.value.hint


def test_layout_is_derived_in_one_place() -> None:
    from ominix.train.parallel_layout import validate

    layout = validate(load_config("tiny", ["parallel.plugin=3d", "parallel.tp=2", "parallel.precision=bf16"]), 4, gpu=True)
    assert (layout.dp, layout.accum, layout.rank_batch, layout.tokens_per_step) == (2, 1, 8, 16 * 128)
    layout = validate(load_config("tiny", ["schedule.global_batch_size=64"]), 2, gpu=False)
    assert "global batch 64 = micro 8 x accum 4 x dp 2" in layout.describe()


def test_refused_launch_exits_2_with_a_hint_and_writes_nothing(data_dir: Path, tmp_path: Path) -> None:
    result = _launch(data_dir, tmp_path / "run", "--plugin", "gemini", sets=["parallel.precision=bf16"], timeout=60)
    assert result.returncode == 2 and "needs a CUDA GPU" in result.stderr and "hint:" in result.stderr
    assert not (tmp_path / "run").exists()
    manifest = (data_dir / "manifest.json").read_bytes()
    for run_dir, needle in ((data_dir, "is a prepared dataset"), (data_dir / "run", "lies inside")):
        result = _launch(data_dir, run_dir, "--max-steps", "1", timeout=60)
        assert result.returncode == 2 and needle in result.stderr, result.stderr
    assert (data_dir / "manifest.json").read_bytes() == manifest and not (data_dir / "run").exists()


@pytest.mark.usefixtures("private_netns")
def test_an_unset_global_batch_is_the_layouts_and_recorded_in_the_run(data_dir: Path, tmp_path: Path) -> None:
    import yaml

    run, sets = tmp_path / "run", [*QUICK, "schedule.global_batch_size=null", "schedule.eval_every=0"]
    _ok(_launch(data_dir, run, "--nproc-per-node", "2", "--max-steps", "1", sets=sets))
    assert "global batch 16 = micro 8 x accum 1 x dp 2" in (run / "train.log").read_text()
    for config in (run / "config.yaml", run / "checkpoints" / "step_00000001" / "config.yaml"):
        assert yaml.safe_load(config.read_text())["schedule"]["global_batch_size"] == 16
    # one rank would make it 8: the saved data position says the run's batch, as for a batch set by hand
    one = _launch(data_dir, tmp_path / "one", "--max-steps", "2", "--resume", str(run), sets=sets)
    assert one.returncode == 2 and "global batch of 16 blocks, this run uses 8" in one.stderr


def test_dry_run_prints_summary_and_torchrun_command(data_dir: Path, tmp_path: Path) -> None:
    """The plan shows the resolved config: a flag, and a key given by its old name (one notice)."""
    result = _launch(data_dir, tmp_path / "run", "--nproc-per-node", "2", "--dry-run", "--attn", "sdpa",
                     "--recompute-activations", sets=[*QUICK, "model.checkpoint_policy=selective"], timeout=60)
    _ok(result)
    assert "  attn: sdpa\n" in result.stdout and "  recompute_activations: true\n" in result.stdout
    assert "  recompute_policy: selective\n" in result.stdout and "checkpoint_policy" not in result.stdout
    assert result.stderr.count("note: model.checkpoint_policy is now model.recompute_policy") == 1
    assert "global batch 16 = micro 8 x accum 1 x dp 2" in result.stdout
    assert "-m torch.distributed.run --nproc-per-node=2 --standalone -m ominix.train --run-dir" in result.stdout
    assert not (tmp_path / "run").exists()


def test_torchrun_argv_for_one_node_of_several() -> None:
    from ominix.launch.command import torchrun_argv

    argv = torchrun_argv("/usr/bin/python3", 4, 2, 8, "10.0.0.1", 29500, 90, "runs/x")
    assert argv == ["/usr/bin/python3", "-m", "torch.distributed.run", "--nproc-per-node=8", "--nnodes=4",
                    "--node-rank=2", "--master-addr=10.0.0.1", "--master-port=29500", "--rdzv-conf=timeout=90",
                    "-m", "ominix.train", "--run-dir", "runs/x"]


def test_schedule_warms_up_then_decays_to_min_lr() -> None:
    from ominix.train.schedule import lr_at

    lrs = [lr_at(s, 1.0, 0.1, 2, 6, "cosine") for s in range(6)]
    assert lrs[:3] == [0.5, 1.0, 1.0] and lrs[-1] == pytest.approx(0.1) and lrs == sorted(lrs[:2]) + sorted(lrs[2:], reverse=True)
    assert [lr_at(s, 1.0, 0.1, 0, 3, "linear") for s in range(3)] == [1.0, pytest.approx(0.55), pytest.approx(0.1)]
    assert lr_at(5, 1.0, 0.1, 2, 6, "constant") == 1.0


def test_prune_keeps_last_k_every_nth_and_latest(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from ominix.checkpoint import prune, step_name

    for step in (10, 20, 30, 40, 50):  # complete checkpoints: a state and a whole weights file each
        (tmp_path / step_name(step) / "model").mkdir(parents=True)
        (tmp_path / step_name(step) / "state.json").write_text("{}")
        save_file({"w": torch.zeros(2)}, tmp_path / step_name(step) / "model" / "model.safetensors")
    (tmp_path / "latest").write_text("step_00000050\n")
    prune(tmp_path, keep_last=2, keep_every=20)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000020", "step_00000040", "step_00000050"]


def test_no_prepared_data_is_one_error(tmp_path: Path) -> None:
    result = run_cli("train", "launch", "tiny", "--data", str(tmp_path / "nope"), "--run-dir", str(tmp_path / "r"))
    assert result.returncode == 2 and "no prepared data" in result.stderr


def test_max_tokens_stops_at_the_step_that_reaches_it() -> None:
    from ominix.train.schedule import total_steps

    cfg = load_config("tiny", ["schedule.max_steps=null", "schedule.max_tokens=10000", "schedule.warmup_steps=1"])
    assert total_steps(cfg, 16 * 128) == 5  # ceil(10000 / 2048)
    cfg = load_config("tiny", ["schedule.max_steps=3", "schedule.max_tokens=10000", "schedule.warmup_steps=1"])
    assert total_steps(cfg, 16 * 128) == 3


def test_3d_checkpoint_is_refused_on_another_rank_count() -> None:
    from ominix.checkpoint import check_compatible
    from ominix.train.parallel_layout import validate

    cfg = load_config("tiny", ["parallel.plugin=3d", "parallel.tp=2", "parallel.precision=bf16"])
    saved = {"model": cfg.model.model_dump(), "data_manifest_sha256": "x", "plugin": "3d",
             "world_size": 2, "tp": 2, "pp": 1}
    check_compatible(saved, cfg, "x", validate(cfg, 2, gpu=True), reshard=False)
    with pytest.raises(OminixError, match="cannot resume it on 4 ranks"):
        check_compatible(saved, cfg, "x", validate(cfg, 4, gpu=True), reshard=False)
    with pytest.raises(OminixError, match="saved by plugin 3d, this run uses ddp"):
        check_compatible(saved, load_config("tiny"), "x", validate(load_config("tiny"), 2, gpu=False), reshard=True)


@pytest.mark.parametrize("on_nan", ["stop", "skip"])
def test_nonfinite_training_stops_with_the_step_or_skips(on_nan: str, data_dir: Path, tmp_path: Path) -> None:
    """Weights of std 1e30 overflow float32: the gradient is NaN from the first step."""
    sets = ["model.initializer_range=1e30", "schedule.warmup_steps=1", "logging.log_every=1",
            "schedule.eval_every=0", f"schedule.on_nan={on_nan}", "logging.tensorboard=false"]
    result = _launch(data_dir, tmp_path / "run", "--max-steps", "2", sets=sets)
    if on_nan == "stop":
        assert result.returncode == 1
        assert "error: gradient norm became nan at step 1" in result.stderr and "on_nan=skip" in result.stderr
        assert not (tmp_path / "run" / "checkpoints").exists()  # nothing NaN was saved
    else:
        _ok(result)
        assert result.stdout.count("update skipped (schedule.on_nan=skip)") == 2
        state = json.loads((tmp_path / "run" / "checkpoints" / "step_00000002" / "state.json").read_text())
        assert state["loop"]["skipped_steps"] == 2


# --- real runs: two gloo processes -------------------------------------------------------------


@pytest.fixture(scope="module")
def ddp_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 steps of ddp on 2 processes, checkpoints at steps 2 and 4, evaluation at both, with a local
    lm-eval task (its first 4 documents) on rank 0."""
    from tests.conftest import in_private_netns

    if not in_private_netns():
        pytest.fail("this test starts torchrun: run it via `make test` (private network namespace)")
    run = tmp_path_factory.mktemp("ddp") / "run"
    _ok(_launch(data_dir, run, "--nproc-per-node", "2", "--max-steps", "4",
                sets=[*SETS, f"schedule.eval_tasks=[{LOCAL_TASK}]", "schedule.eval_task_limit=4"]))
    return run


SETS = [*QUICK, "checkpoint.every=2", "schedule.eval_every=2", "checkpoint.keep_last=2"]


def test_ddp_trains_and_writes_metrics_tensorboard_and_checkpoints(ddp_run: Path) -> None:
    losses = _losses(ddp_run)
    assert sorted(losses) == [1, 2, 3, 4]
    assert losses[4] < losses[1] - 0.3  # the tiny model starts learning the token statistics at once
    evals = [json.loads(x) for x in (ddp_run / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert [e["step"] for e in evals] == [2, 4] and evals[1]["val_loss"] < evals[0]["val_loss"]
    assert list((ddp_run / "tb").glob("events.out.tfevents.*"))
    log = (ddp_run / "train.log").read_text()
    assert "global batch 16 = micro 8 x accum 1 x dp 2" in log and "MFU n/a" in log and "tok/s" in log

    ckpts = ddp_run / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_00000004"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_00000002", "step_00000004"]
    state = json.loads((ckpts / "step_00000004" / "state.json").read_text())
    assert (state["step"], state["tokens"], state["world_size"]) == (4, 4 * 16 * 128, 2)
    assert state["last_loss"] == losses[4] and not list(ckpts.glob(".*tmp*"))
    saves = [json.loads(x) for x in (ddp_run / "metrics.jsonl").read_text().splitlines() if '"checkpoint"' in x]
    assert [(r["action"], r["step"]) for r in saves] == [("save", 2), ("save", 4)]
    on_disk = sum(f.stat().st_size for f in (ckpts / "step_00000004").rglob("*") if f.is_file())
    assert saves[1]["bytes"] == on_disk and saves[1]["seconds"] > 0
    assert re.search(r"saved checkpoint \S+step_00000004 \(\d+\.\d\d GiB\) in \d+\.\d s", log)

    from ominix.checkpoint import read_weights, resolve_checkpoint

    weights = read_weights(resolve_checkpoint(ddp_run))
    assert "model.layers.0.self_attn.q_proj.weight" in weights and "lm_head.weight" in weights


def test_lm_eval_task_in_the_loop_reaches_metrics_tensorboard_and_the_release(ddp_run: Path,
                                                                               tmp_path: Path) -> None:
    """schedule.eval_tasks: rank 0 scores the task at the evaluation of step 2 and at the end; the
    numbers are in metrics.jsonl, TensorBoard, the figure, the bundle's eval_results.json and both
    model cards (the bundle's and the export's model-index)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ominix.infer.export import export
    from ominix.release.bundle import make_bundle

    rows = [json.loads(x) for x in (ddp_run / "metrics.jsonl").read_text().splitlines() if '"downstream"' in x]
    assert [r["step"] for r in rows] == [2, 4]
    assert all(0 <= r["ominix_tiny_choice/acc"] <= 1 and r["seconds"] > 0 for r in rows)
    assert "tasks step      4 | ominix_tiny_choice/acc" in (ddp_run / "train.log").read_text()
    events = EventAccumulator(str(ddp_run / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("downstream/ominix_tiny_choice/acc")] == [2, 4]
    assert (ddp_run / "plots" / "training.png").is_file()
    final = json.loads((ddp_run / "eval" / "downstream.json").read_text())
    assert final["step"] == 4 and final["settings"]["limit"] == 4
    assert final["tasks"]["ominix_tiny_choice"]["acc"] == rows[1]["ominix_tiny_choice/acc"]
    assert not (ddp_run / "eval" / ".downstream-weights").exists()  # the gathered weights are gone

    bundle = tmp_path / "bundle"
    make_bundle(ddp_run, bundle, name="tiny-tasks", producer="OminiX tests")
    bundled = json.loads((bundle / "eval" / "eval_results.json").read_text())
    assert bundled["tasks"] == final["tasks"] and bundled["downstream"]["step"] == 4
    card = (bundle / "MODEL_CARD.md").read_text()
    assert "during training, at step 4, first 4 documents per task" in card
    assert f"lm-eval `ominix_tiny_choice`: acc {final['tasks']['ominix_tiny_choice']['acc']:.4f}" in card
    export(ddp_run, tmp_path / "export", verify=False)
    front = (tmp_path / "export" / "README.md").read_text().split("---")[1]
    results = yaml.safe_load(front)["model-index"][0]["results"]
    scored = [r for r in results if r["dataset"]["type"] == "ominix_tiny_choice"]
    assert scored[0]["metrics"][0]["value"] == final["tasks"]["ominix_tiny_choice"]["acc"]


def _as_written_before_the_rename(run: Path) -> None:
    """Rewrite ``run`` (a copy) as a version before model.recompute_* had their names wrote it: the
    old key names in config.yaml, and in each checkpoint's config.yaml and state.json, whose sizes
    and sha256 its integrity record holds."""
    import hashlib

    def old_names(path: Path) -> None:
        text = path.read_text()
        path.write_text(text.replace("recompute_activations", "gradient_checkpointing")
                        .replace("recompute_policy", "checkpoint_policy"))

    old_names(run / "config.yaml")
    for ckpt in (run / "checkpoints").glob("step_*"):
        record = json.loads((ckpt / "integrity.json").read_text())
        for name in ("config.yaml", "state.json"):
            old_names(ckpt / name)
            data = (ckpt / name).read_bytes()
            record["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        (ckpt / "integrity.json").write_text(json.dumps(record))


def test_ddp_resume_is_bit_exact_also_for_a_run_of_an_older_version(ddp_run: Path, data_dir: Path,
                                                                     tmp_path: Path) -> None:
    """A run written before model.gradient_checkpointing / model.checkpoint_policy were renamed,
    relaunched from its own config.yaml: it resumes bit-exactly, with one notice per old key."""
    old = tmp_path / "old"
    shutil.copytree(ddp_run, old)
    _as_written_before_the_rename(old)
    assert '"gradient_checkpointing"' in (old / "checkpoints" / "step_00000002" / "state.json").read_text()
    again = tmp_path / "again"
    flags = [a for s in [*SETS, "schedule.eval_tasks=[]"] for a in ("--set", s)]
    result = run_cli("train", "launch", str(old / "config.yaml"), "--data", str(data_dir), "--run-dir", str(again),
                     "--nproc-per-node", "2", "--max-steps", "4",
                     "--resume", str(old / "checkpoints" / "step_00000002"), *flags,
                     env={"COLUMNS": "200", "OMP_NUM_THREADS": "1"}, timeout=300)
    _ok(result)
    assert re.search(r"resumed from \S+ at step 2 \([\d,]+ tokens\) in \d+\.\d s", result.stdout)
    loads = [json.loads(x) for x in (again / "metrics.jsonl").read_text().splitlines() if '"load"' in x]
    assert [r["step"] for r in loads] == [2] and loads[0]["seconds"] > 0
    assert _losses(again) == {s: _losses(ddp_run)[s] for s in (3, 4)}  # bit-identical, not approximately
    for key in ("gradient_checkpointing", "checkpoint_policy"):
        assert result.stderr.count(f"note: model.{key} is now") == 1
    assert "recompute_activations: false" in (again / "config.yaml").read_text()


def test_checkpoint_resumes_on_another_rank_count(ddp_run: Path, data_dir: Path, tmp_path: Path) -> None:
    """ddp keeps full weights and optimizer state: a 2-rank checkpoint resumes on 1 rank."""
    one = tmp_path / "one"
    _ok(_launch(data_dir, one, "--max-steps", "3", "--resume", str(ddp_run / "checkpoints" / "step_00000002"),
                sets=[*SETS, "schedule.eval_every=0"]))
    assert sorted(_losses(one)) == [3]
    assert _losses(one)[3] == pytest.approx(_losses(ddp_run)[3], rel=1e-4)  # another reduction order
    # a new run directory: its ledger takes steps 1-2 from the loader's order, records step 3
    assert (np.load(one / "data_order.npy") == np.load(ddp_run / "data_order.npy")[:3]).all()
    assert json.loads((one / "data_order.json").read_text())["derived_steps"] == [[1, 2]]


def _batch(path: Path, step: int, *flags: str):
    return run_cli("data", "batch", str(path), "--step", str(step), *flags)


def test_the_ledger_holds_what_each_step_read_through_a_resume_on_another_rank_count(
        ddp_run: Path, data_dir: Path, tmp_path: Path) -> None:
    """The run of 2 ranks, resumed from its step 2 on 1 rank in its own directory: the ledger is cut
    back to step 2 and records step 3, and `data batch` prints the tokens the loader's ranks read."""
    import torch

    from ominix.data.loader import BlockLoader
    from ominix.data.store import PackedDataset

    run = tmp_path / "run"
    shutil.copytree(ddp_run, run)
    _ok(_launch(data_dir, run, "--max-steps", "3", "--resume", str(run / "checkpoints" / "step_00000002"),
                sets=[*SETS, "schedule.eval_every=0"]))
    train = PackedDataset(data_dir, "train")
    ranks = [BlockLoader(train, 8, rank=r, world_size=2, seed=load_config(str(run / "config.yaml")).data.seed)
             for r in range(2)]
    read = [torch.cat([next(r) for r in ranks]) for _ in range(3)]  # what the 2 ranks read at steps 1-3
    rows = np.load(run / "data_order.npy")
    assert rows.shape == (3, 16) and (rows == np.load(ddp_run / "data_order.npy")[:3]).all()
    for step in (1, 3):  # step 1 as the 2 ranks recorded it, step 3 as the 1 rank did
        shown = _batch(run, step, "--json")
        _ok(shown)
        batch = json.loads(shown.stdout)
        assert batch["blocks"] == rows[step - 1].tolist() and not batch["derived"]
        assert torch.equal(torch.tensor(batch["sequences"]), read[step - 1])
    decoded = json.loads(_batch(run, 3, "--decode", "--json").stdout)
    assert len(decoded["texts"]) == 16 and all(text.strip() for text in decoded["texts"])
    text = _batch(run, 3)
    _ok(text)
    assert f"block {rows[2][0]} (" in text.stdout and " ".join(map(str, read[2][0].tolist()[:8])) in text.stdout
    beyond = _batch(run, 4)
    assert beyond.returncode == 2 and "holds steps 1-3" in beyond.stderr

    # the release bundle holds the ledger; `data batch` and the data card's numpy snippet rebuild a step
    bundle = tmp_path / "bundle"
    _ok(run_cli("mof", "report", str(run), "--out", str(bundle), "--json"))
    assert "data_order/data_order.npy" in (bundle / "SHA256SUMS").read_text()
    assert torch.equal(torch.tensor(json.loads(_batch(bundle, 3, "--json").stdout)["sequences"]), read[2])
    snippet = (bundle / "DATA_CARD.md").read_text().split("```python\n")[1].split("```")[0]
    rebuilt = subprocess.run([sys.executable, "-c", f"K = 3\n{snippet}\nprint(batch.tolist())"], cwd=bundle,
                             capture_output=True, text=True, check=True)
    assert torch.equal(torch.tensor(json.loads(rebuilt.stdout)), read[2])
    # ...and the run's provenance from its own records: two launches, the restart redid steps 3-4
    record = json.loads((bundle / "model" / "metadata" / "training_run.json").read_text())
    assert json.loads((bundle / "code" / "PROVENANCE.json").read_text())["training_run"] == record
    assert (record["launches"], record["restarts"], record["steps_redone_after_restarts"]) == (2, 1, 2)
    assert record["world_sizes"] == [2, 1] and list(record["devices"].values()) == [2]
    assert record["wall_time_s"] > record["measured_step_time_s"] > 0 and record["tokens_per_s"] > 0
    assert record["device_hours"] > 0 and record["gpu_hours"] is None and record["mfu"] is None
    card = (bundle / "MODEL_CARD.md").read_text()
    assert "Launches: 2 (restarts from a checkpoint: 1, steps trained again after them: 2)" in card
    assert "GPU-hours n/a (trained on CPU)" in card and "MFU n/a" in card

    launches = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"launch"' in x]
    assert [(r["step"], r["world_size"], r["steps_redone"]) for r in launches] == [(0, 2, 0), (2, 1, 2)]
    assert [sum(r["devices"].values()) for r in launches] == [2, 1]
    assert all(name.endswith(": cpu") for r in launches for name in r["devices"])


def test_init_from_a_checkpoint_continues_pretraining(ddp_run: Path, data_dir: Path, tmp_path: Path) -> None:
    """model.init_from takes a Hugging Face weights directory (a checkpoint's model/ is one). The new
    run goes into a copy of the old run's directory: --resume never refuses to mix the two, --resume
    restart moves the old one into RUN_DIR/previous/ first."""
    weights = ddp_run / "checkpoints" / "step_00000004" / "model"
    run = tmp_path / "cont"
    shutil.copytree(ddp_run, run)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    sets = [*QUICK, "schedule.eval_every=0", f"model.init_from={weights}", "schedule.warmup_steps=0"]
    refused = _launch(data_dir, run, "--max-steps", "1", "--resume", "never", sets=sets)
    assert refused.returncode == 2 and "already holds a run (checkpoints, metrics.jsonl)" in refused.stderr
    assert "--resume restart" in refused.stderr and sorted(p.relative_to(run) for p in run.rglob("*")) == before
    result = _launch(data_dir, run, "--max-steps", "1", "--resume", "restart", sets=sets)
    _ok(result)
    assert "initialised from" in result.stdout
    assert _losses(run) == {1: _losses(run)[1]} and not (run / "checkpoints" / "step_00000004").exists()
    assert _losses(run)[1] < _losses(ddp_run)[1] - 0.3  # starts where the first run ended, not from scratch
    (previous,) = (run / "previous").iterdir()
    assert (previous / "metrics.jsonl").read_bytes() == (ddp_run / "metrics.jsonl").read_bytes()
    assert sorted(p.relative_to(previous) for p in previous.rglob("*")) == before  # moved whole
    assert f"moved into {previous}" in result.stderr


@pytest.mark.usefixtures("private_netns")
def test_tied_embeddings_train_save_resume_bit_exactly_and_export(data_dir: Path, tmp_path: Path) -> None:
    """The shared embedding / lm_head tensor is saved once (safetensors refuses shared tensors)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ominix.checkpoint import read_weights
    from ominix.infer.load import load_model, resolve

    full, again, sets = tmp_path / "full", tmp_path / "again", [*SETS, "model.tie_word_embeddings=true"]
    _ok(_launch(data_dir, full, "--max-steps", "4", sets=sets))
    ckpt = full / "checkpoints" / "step_00000002"
    weights = read_weights(ckpt)
    assert "model.embed_tokens.weight" in weights and "lm_head.weight" not in weights
    _ok(_launch(data_dir, again, "--max-steps", "4", "--resume", str(ckpt), sets=sets))
    assert _losses(again) == {s: _losses(full)[s] for s in (3, 4)}  # bit-identical

    _ok(run_cli("checkpoint", "export", str(again), "--out", str(tmp_path / "hf"), "--dtype", "fp32"))
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ours = load_model(resolve(again))
    assert theirs.lm_head.weight.data_ptr() == theirs.model.embed_tokens.weight.data_ptr()
    ids = torch.randint(0, 2048, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, rtol=1e-5, atol=1e-5)


def test_checkpoint_of_another_model_or_data_is_refused(ddp_run: Path, data_dir: Path, tmp_path: Path) -> None:
    ckpt = str(ddp_run / "checkpoints" / "step_00000004")
    bigger = _launch(data_dir, tmp_path / "x", "--resume", ckpt, sets=[*QUICK, "model.intermediate_size=512"])
    assert bigger.returncode == 2 and "model.intermediate_size=352, this run 512" in bigger.stderr

    other = tmp_path / "other-data"
    other.mkdir()
    for item in data_dir.iterdir():
        if item.name != "manifest.json":
            (other / item.name).symlink_to(item)
    (other / "manifest.json").write_text((data_dir / "manifest.json").read_text() + "\n")
    refused = _launch(other, tmp_path / "y", "--resume", ckpt)
    assert refused.returncode == 2 and "other prepared data" in refused.stderr


@pytest.mark.parametrize("change, needle", [
    ("model.rope_theta=500000", "model.rope_theta=10000.0, this run 500000.0"),
    ("model.max_position_embeddings=512", "model.max_position_embeddings=256, this run 512"),
    ("model.rms_norm_eps=1e-6", "model.rms_norm_eps=1e-05, this run 1e-06"),
])
def test_resume_under_another_function_of_the_weights_is_refused(change: str, needle: str, ddp_run: Path,
                                                               data_dir: Path, tmp_path: Path) -> None:
    ckpt = str(ddp_run / "checkpoints" / "step_00000004")
    result = _launch(data_dir, tmp_path / "x", "--resume", ckpt, sets=[*QUICK, change])
    assert result.returncode == 2 and needle in result.stderr
    assert [line for line in result.stderr.splitlines() if "checkpoint has model." in line] == [
        next(line for line in result.stderr.splitlines() if needle in line)]
    assert not (tmp_path / "x" / "checkpoints").exists()


def test_how_the_model_runs_may_change_on_resume_and_every_other_field_is_compared() -> None:
    from ominix.checkpoint import check_compatible
    from ominix.config import ModelConfig
    from ominix.train.parallel_layout import validate

    cfg = load_config("tiny")
    runs_otherwise = load_config("tiny", ["model.attn=auto", "model.compile=true", "model.loss_chunk=0",
                                          "model.recompute_activations=true", "model.recompute_policy=selective",
                                          "model.name=renamed", "model.initializer_range=0.5"])
    saved = {"model": runs_otherwise.model.model_dump(), "data_manifest_sha256": "x", "plugin": "ddp",
             "world_size": 1, "tp": 1, "pp": 1}
    check_compatible(saved, cfg, "x", validate(cfg, 1, gpu=False), reshard=True)
    # num_key_value_heads unset means as many as the query heads: the same model
    same = {**saved["model"], "num_key_value_heads": None, "num_attention_heads": 2}
    check_compatible({**saved, "model": same}, load_config("tiny", ["model.num_attention_heads=2"]), "x",
                     validate(cfg, 1, gpu=False), reshard=True)
    compared = set(ModelConfig.model_fields) - ModelConfig.RUNTIME_FIELDS
    assert {"rope_theta", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings"} <= compared
    assert set(cfg.model.function_fields()) == compared


@pytest.mark.slow
@pytest.mark.usefixtures("private_netns")
@pytest.mark.parametrize("plugin, sets", [
    ("zero2", []),  # LowLevelZero through the CPU shims (ominix/train/colossalai_patches.py)
    ("3d", ["parallel.tp=2"]),  # transformers' LlamaForCausalLM, tensor parallel over 2 ranks
    ("3d", ["parallel.pp=2"]),  # two pipeline stages, 2 micro batches per step
])
def test_sharding_plugins_train_and_resume_bit_exactly(plugin: str, sets: list[str], data_dir: Path,
                                                      tmp_path: Path) -> None:
    full, again = tmp_path / "full", tmp_path / "again"
    sets = [*SETS, "schedule.eval_every=3", *sets]
    _ok(_launch(data_dir, full, "--plugin", plugin, "--nproc-per-node", "2", "--max-steps", "3", sets=sets))
    losses = _losses(full)
    assert losses[3] < losses[1] - 0.2
    evals = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert evals[0]["val_loss"] < losses[1] - 0.2  # held-out text agrees that the model learned
    _ok(_launch(data_dir, again, "--plugin", plugin, "--nproc-per-node", "2", "--max-steps", "3",
                "--resume", str(full / "checkpoints" / "step_00000002"), sets=sets))
    assert _losses(again) == {3: losses[3]}


def test_a_resume_onto_a_longer_schedule_says_so_and_decay_steps_continues_the_curve(
        data_dir: Path, tmp_path: Path) -> None:
    """A relaunch with more --max-steps recomputes the schedule over the new length: one line says
    so, with the learning rate of the first resumed step before and after. A first run given the
    longer schedule (schedule.decay_steps) is continued on its own curve, without the line."""
    from ominix.train.schedule import lr_at

    sets = [*QUICK, "checkpoint.every=0", "schedule.eval_every=0", "logging.tensorboard=false"]
    o = load_config("tiny", sets).optim

    def lr(step: int, total: int) -> float:  # the rate of 1-based `step` in a schedule of `total`
        return lr_at(step - 1, o.lr, o.min_lr, 2, total, "cosine")

    def lrs(run: Path) -> dict[int, float]:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["lr"] for r in rows if r["kind"] == "train"}

    stretched, continued = tmp_path / "stretched", tmp_path / "continued"
    _ok(_launch(data_dir, stretched, "--nproc-per-node", "1", "--max-steps", "4", sets=sets))
    result = _launch(data_dir, stretched, "--nproc-per-node", "1", "--max-steps", "8", "--resume", "auto", sets=sets)
    _ok(result)
    notes = [line for line in result.stdout.splitlines() if "learning-rate schedule" in line]
    assert notes == [f"note: this run's learning-rate schedule (8 steps) is not the checkpoint's: step 5 trains at "
                     f"lr {lr(5, 8):.3e}, where the checkpoint's schedule had {lr(5, 4):.3e} (to continue its curve, "
                     "relaunch with its schedule, or give the first run schedule.decay_steps)"], result.stdout
    assert lrs(stretched)[5] == pytest.approx(lr(5, 8))  # the new schedule from the first resumed step on

    _ok(_launch(data_dir, continued, "--nproc-per-node", "1", "--max-steps", "4",
                sets=[*sets, "schedule.decay_steps=8"]))
    result = _launch(data_dir, continued, "--nproc-per-node", "1", "--max-steps", "8", "--resume", "auto", sets=sets)
    _ok(result)
    assert "resumed from" in result.stdout and "learning-rate schedule" not in result.stdout
    assert lrs(continued) == pytest.approx({step: lr(step, 8) for step in range(1, 9)})


@pytest.mark.usefixtures("private_netns")
def test_sigterm_saves_a_checkpoint_and_resume_auto_continues(data_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    sets = [*QUICK, "checkpoint.every=0", "schedule.eval_every=0"]
    cmd = [sys.executable, "-m", "ominix", "train", "launch", "tiny", "--data", str(data_dir), "--run-dir", str(run),
           "--max-steps", "40", *[a for s in sets for a in ("--set", s)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith("step      2/40"):
            proc.send_signal(signal.SIGTERM)
            break
    out = proc.stdout.read()
    assert proc.wait(timeout=120) == 143, out  # unfinished: a script can tell
    stopped = json.loads((run / "checkpoints" / "latest").parent.joinpath(
        (run / "checkpoints" / "latest").read_text().strip(), "state.json").read_text())["step"]
    assert 2 <= stopped < 40 and f"stopped by SIGTERM at step {stopped}; saved checkpoint" in out
    t0 = time.time()
    result = _launch(data_dir, run, "--max-steps", str(stopped + 1), "--resume", "auto", sets=sets)
    _ok(result)
    assert f"at step {stopped}" in result.stdout and time.time() - t0 < 120
    assert max(_losses(run)) == stopped + 1


@pytest.mark.usefixtures("private_netns")
def test_sigterm_between_log_lines_stops_every_rank_within_two_steps(data_dir: Path, tmp_path: Path) -> None:
    """A stop does not wait for a log line (log_every 1000 here): the 2 ranks agree on it one step
    after the step it came in, and save that step. The saves are written in the background
    (checkpoint.async_save, the ranks' threads synchronising through their own group): the stop
    waits for its write, so ``latest`` names it when the run exits."""
    run = tmp_path / "run"
    sets = [*QUICK, "logging.log_every=1000", "checkpoint.every=5", "checkpoint.keep_last=3", "schedule.eval_every=0",
            "checkpoint.async_save=true"]
    cmd = [sys.executable, "-m", "ominix", "train", "launch", "tiny", "--data", str(data_dir), "--run-dir", str(run),
           "--nproc-per-node", "2", "--max-steps", "300", *[a for s in sets for a in ("--set", s)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith("saved checkpoint") and "step_00000005" in line:  # step 6 is under way
            proc.send_signal(signal.SIGTERM)
            break
    out = proc.stdout.read()
    assert proc.wait(timeout=120) == 143, out
    stopped = int((run / "checkpoints" / "latest").read_text().strip().removeprefix("step_"))
    assert 6 <= stopped <= 8, out  # the step in progress and the next (+1 for the signal's way to the ranks)
    assert f"stopped by SIGTERM at step {stopped}; saved checkpoint" in out
    assert sorted(p.name for p in (run / "checkpoints" / f"step_{stopped:08d}" / "data").iterdir()) == [
        "rank_00000.json", "rank_00001.json"]  # both ranks saved the same step
    assert resumable(run, "full") == (run / "checkpoints" / f"step_{stopped:08d}", [])  # its record is whole
    assert max(_losses(run)) == stopped  # the steps since the last log line are logged before the save


def test_training_turns_on_expandable_segments_unless_the_user_configured_the_allocator(monkeypatch) -> None:
    import colossalai
    import torch

    from ominix.train.engine import init_distributed

    def expandable_segments() -> None:  # joining the process group sets the allocator up first
        init_distributed(seed=0)

    calls: list[str] = []
    monkeypatch.setattr(colossalai, "launch_from_torch", lambda **kwargs: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda.memory, "_set_allocator_settings", calls.append)
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    expandable_segments()
    assert calls == ["expandable_segments:True"]
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:512")
    expandable_segments()
    assert calls == ["expandable_segments:True"]  # the user's setting stands


@pytest.fixture
def in_process(private_netns: None) -> Iterator[None]:
    """For a test that calls ``loop.train`` in this process: the process group it joins is left
    behind by ``train`` (the worker's ``main`` tears it down), so tear it down after the test."""
    import torch.distributed as dist

    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_the_heap_built_before_training_is_frozen_for_the_loop_and_thawed_after(
        in_process: None, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The objects of the setup (torch, the engine) are frozen while the steps run, so full garbage
    collections scan only what the steps allocate; an in-process run leaves the collector as it was."""
    import gc

    from ominix.train import loop
    from ominix.train.metrics import MetricsWriter

    frozen: list[int] = []
    record = MetricsWriter.record
    monkeypatch.setattr(MetricsWriter, "record", lambda self, kind, values, **how: (
        frozen.append(gc.get_freeze_count()), record(self, kind, values, **how))[1])
    cfg = load_config("tiny", [*QUICK, f"data.path={data_dir}", "schedule.max_steps=2"])
    assert loop.train(cfg, tmp_path / "run") == 0
    assert frozen and min(frozen) > 10_000  # torch alone is more than that
    assert gc.get_freeze_count() == 0


def test_profile_steps_write_a_trace_and_a_summary_of_the_window(
        in_process: None, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """logging.profile_steps runs that window under torch.profiler: a gzipped Chrome trace and a summary
    with the host's time per phase; a window past the run's end closes at its last step."""
    import gzip

    from ominix.train import loop

    cfg = load_config("tiny", [*QUICK, f"data.path={data_dir}", "schedule.max_steps=3",
                               "logging.profile_steps=[2, 9]"])
    assert loop.train(cfg, tmp_path / "run") == 0
    folder = tmp_path / "run" / "profile"
    summary = json.loads((folder / "steps_2-3.json").read_text())
    assert summary["steps"] == [2, 3] and summary["wall_s"] > 0
    assert summary["gpu_busy_fraction"] is None  # a CPU run says nothing of a GPU
    phases = summary["host_phase_s"]
    assert phases["forward"] > 0 and phases["backward"] > 0 and phases["optimizer"] > 0
    names = {e.get("name") for e in json.loads(gzip.decompress((folder / "steps_2-3.trace.json.gz").read_bytes()))
             ["traceEvents"]}
    assert {"forward", "backward", "optimizer", "data", "log"} <= names
    assert "profiled steps 2-3:" in capsys.readouterr().out
    assert not (folder / "steps_2-3.trace.json").exists()  # only the compressed trace stays


def test_a_window_holding_an_evaluation_counts_its_steps_over_their_time(
        in_process: None, data_dir: Path, tmp_path: Path) -> None:
    """schedule.eval_every (6) not a multiple of logging.log_every (4): the window of steps 5-8 holds
    an evaluation, left out of its time; its step time is that of the windows without one."""
    from ominix.train import loop

    cfg = load_config("tiny", [*QUICK, f"data.path={data_dir}", "schedule.max_steps=16", "logging.log_every=4",
                               "schedule.eval_every=6", "checkpoint.every=0", "logging.tensorboard=false"])
    assert loop.train(cfg, tmp_path / "run") == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in rows if r["kind"] == "train"}
    assert sorted(train) == [4, 8, 12, 16] and [r["step"] for r in rows if r["kind"] == "eval"] == [6, 12, 16]
    without_eval = min(train[12]["step_time_s"], train[16]["step_time_s"])  # evaluation 12 ends window 12
    assert train[8]["step_time_s"] > 0.75 * without_eval, train  # counted over 4 steps' time, not 2
    tokens_per_step = cfg.schedule.global_batch_size * cfg.data.seq_len
    assert train[8]["tokens_per_s"] * train[8]["step_time_s"] == pytest.approx(tokens_per_step)
    assert train[8]["eta_s"] == pytest.approx(8 * train[8]["step_time_s"])


def test_a_profile_window_must_be_first_to_last() -> None:
    with pytest.raises(OminixError, match=r"logging.profile_steps"):
        load_config("tiny", ["logging.profile_steps=[3, 2]"])


def test_the_colossalai_gate_checks_each_target_against_the_signature_its_patch_expects() -> None:
    from colossalai.zero.gemini.chunk.chunk import Chunk

    from ominix import colossalai_gate as gate

    class Renamed:  # a release that renamed one method and changed another's parameters
        def reduce(self, async_op: bool = False, group=None) -> None: ...

    assert gate.signature_text(Chunk.reduce) == "(self, async_op=False)"  # the installed 0.5.0
    gate.require("the real thing", (Chunk, "reduce", "(self, async_op=False)"))
    assert gate.skipped("the real thing", (Chunk, "set_l2_norm", "(self)")) is None
    with pytest.raises(OminixError) as err:
        gate.require("a correctness patch", (Renamed, "reduce", "(self, async_op=False)"))
    assert err.value.message == ("a correctness patch needs ColossalAI 0.5.0's internals, and ColossalAI 0.5.0's "
                                 f"tests.test_train.{Renamed.__qualname__}.reduce is (self, async_op=False, "
                                 "group=None), not (self, async_op=False)")
    assert "pip install 'colossalai==0.5.0'" in err.value.hint
    assert "Renamed.set_l2_norm is missing" in gate.skipped("a speed-up", (Renamed, "set_l2_norm", "(self)"))


def test_a_changed_speed_up_target_is_skipped_with_a_notice_and_a_changed_fix_refuses(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from colossalai.logging.logger import DistributedLogger
    from colossalai.zero.gemini.chunk import chunk as chunk_module

    from ominix.train import colossalai_patches

    # the installed ColossalAI is the one the patches were written for
    with colossalai_patches.patched() as skipped:
        assert skipped == [] and chunk_module.Chunk.set_l2_norm.__module__ == colossalai_patches.__name__
    changed = lambda self, squared=False: None  # noqa: E731
    monkeypatch.setattr(chunk_module.Chunk, "set_l2_norm", changed)
    with colossalai_patches.patched() as skipped:
        assert len(skipped) == 1 and "chunk norms on the device is skipped" in skipped[0]
        assert "set_l2_norm is (self, squared=False), not (self)" in skipped[0]
        assert chunk_module.Chunk.set_l2_norm is changed
    debug, reduce = DistributedLogger.debug, chunk_module.Chunk.reduce
    monkeypatch.setattr(chunk_module, "free_storage", lambda tensor, stream=None: None)
    with pytest.raises(OminixError, match=r"side stream .*\.free_storage is \(tensor, stream=None\)"):
        with colossalai_patches.patched():
            pass
    assert (DistributedLogger.debug, chunk_module.Chunk.reduce) == (debug, reduce)  # nothing stays patched


def test_a_skipped_speed_up_is_one_note_in_the_run_log(in_process: None, data_dir: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from colossalai.logging.logger import DistributedLogger

    from ominix.train import loop

    monkeypatch.setattr(DistributedLogger, "debug", lambda self, message, *ranks: None)  # another release's
    cfg = load_config("tiny", [*QUICK, f"data.path={data_dir}", "schedule.max_steps=1", "schedule.eval_every=0"])
    assert loop.train(cfg, tmp_path / "run") == 0
    notes = [line for line in (tmp_path / "run" / "train.log").read_text().splitlines() if "is skipped" in line]
    assert len(notes) == 1 and "debug log calls is skipped" in notes[0]
    assert "DistributedLogger.debug is (self, message, *ranks), not (self, message, ranks=None)" in notes[0]


def test_colossalai_debug_calls_cost_nothing_unless_debug_is_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    """Gemini logs a debug record after every backward; ColossalAI's logger walked the whole stack
    (inspect.stack) for it even at INFO, ~40 ms per micro batch in the worker on the GPU host. Under
    the run's shims a debug call costs nothing at INFO, still logs at DEBUG, and the shim goes away after."""
    import inspect

    from colossalai.logging import get_dist_logger
    from colossalai.logging.logger import DistributedLogger

    from ominix.train import colossalai_patches

    stacks: list[int] = []
    stack = inspect.stack
    monkeypatch.setattr(inspect, "stack", lambda *a, **k: (stacks.append(1), stack(*a, **k))[1])
    logger, original = get_dist_logger(), DistributedLogger.debug
    with colossalai_patches.patched():
        logger.debug("not logged at INFO")
        assert stacks == []
        logger.set_level("DEBUG")
        try:
            logger.debug("logged")
        finally:
            logger.set_level("INFO")
        assert stacks  # at DEBUG the record (with its call site) is built as before
    assert DistributedLogger.debug is original


def test_gemini_chunk_norms_stay_on_the_device_and_the_global_norm_is_unchanged(private_netns: None) -> None:
    """Gemini read every gradient chunk's norm back to the host (a sync per chunk per micro batch);
    under the run's shims it stays a tensor, and the optimizer's global norm (gathered chunks, and
    sharded ones through its all-reduce) is the same number, read once."""
    import contextlib
    import math
    from types import SimpleNamespace

    import torch
    import torch.distributed as dist
    from colossalai.zero.gemini.chunk.chunk import Chunk
    from colossalai.zero.gemini.gemini_optimizer import GeminiOptimizer

    from ominix.train import colossalai_patches
    from ominix.train.engine import one_process_env

    torch.manual_seed(0)
    values = [torch.randn(n, dtype=torch.bfloat16) for n in (300, 77, 1024)]

    def chunk(v: torch.Tensor, gathered: bool) -> SimpleNamespace:
        return SimpleNamespace(is_gathered=gathered, cuda_global_chunk=v, utilized_size=len(v) - 5,
                               cuda_shard=v, valid_end=len(v) - 5, l2_norm=None, torch_pg=dist.group.WORLD)

    def global_norm(patched: bool) -> tuple[float, list]:
        chunks = [chunk(v, gathered=i != 1) for i, v in enumerate(values)]
        with colossalai_patches.patched() if patched else contextlib.nullcontext():
            for c in chunks:
                Chunk.set_l2_norm(c)
            kinds = [type(c.l2_norm) for c in chunks]
            opt = SimpleNamespace(chunk16_set=chunks, module=SimpleNamespace(
                chunk_manager=SimpleNamespace(reuse_fp16_chunk=True)))
            return GeminiOptimizer._calc_global_norm(opt), kinds

    with one_process_env():
        dist.init_process_group("gloo")
        try:
            plain, plain_kinds = global_norm(patched=False)
            lazy, lazy_kinds = global_norm(patched=True)
        finally:
            dist.destroy_process_group()
    assert plain_kinds == [float] * 3 and lazy_kinds == [torch.Tensor] * 3
    expected = math.sqrt(sum(float(v[: len(v) - 5].float().norm()) ** 2 for v in values))
    assert isinstance(lazy, float) and lazy == pytest.approx(plain, rel=1e-6) == pytest.approx(expected, rel=1e-6)


def test_gemini_reduces_on_the_compute_stream(private_netns: None) -> None:
    """By default the plugin reduces gradient chunks on the compute stream, with pinned memory,
    unless chunks move to the host; parallel.gemini_async_reduce chooses either way."""
    import torch.distributed as dist

    from ominix.train import colossalai_patches
    from ominix.train.engine import BUILDERS, one_process_env
    from ominix.train.parallel_layout import derive_layout

    cfg = load_config("llama2-7b", sets=["schedule.global_batch_size=32"])
    layout = derive_layout(cfg, 1)
    assert layout.accum == 2
    offload = load_config("llama2-7b", sets=["parallel.offload_optim_frac=0.5"])
    side = load_config("llama2-7b", sets=["parallel.gemini_async_reduce=true"])
    ordered = load_config("llama2-7b", sets=["parallel.offload_optim_frac=0.5", "parallel.gemini_async_reduce=false"])
    with colossalai_patches.patched(), one_process_env():
        dist.init_process_group("gloo")
        try:
            config = BUILDERS["gemini"](cfg, layout).gemini_config
            auto = BUILDERS["gemini_auto"](cfg, layout).gemini_config
            offloaded, on_side, on_compute = (BUILDERS["gemini"](c, derive_layout(c, 1)).gemini_config
                                              for c in (offload, side, ordered))
        finally:
            dist.destroy_process_group()
    assert config["enable_async_reduce"] is False and config["pin_memory"] is True
    assert config["enable_gradient_accumulation"] is True
    # where chunks move to the host the side stream overlaps the copies
    assert auto["enable_async_reduce"] is True and offloaded["enable_async_reduce"] is True
    assert offloaded["offload_optim_frac"] == 0.5
    assert on_side["enable_async_reduce"] is True and on_compute["enable_async_reduce"] is False


def test_a_side_stream_reduction_frees_after_its_collective_and_on_its_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """Frees inside a chunk's reduction on a side stream are held until the reduction is enqueued;
    then the stream waits for the collective, and each tensor is recorded on the stream before it is
    freed. Other frees on a side stream are recorded, then freed. On the default stream nothing
    changes."""
    from types import SimpleNamespace

    from ominix.train import colossalai_patches

    events: list = []
    side = object()

    class Tensor:
        is_cuda = True

        def record_stream(self, stream: object) -> None:
            events.append(("record", "side" if stream is side else stream))

        def untyped_storage(self) -> object:
            return SimpleNamespace(size=lambda: 4)  # not yet freed

    class Chunk:
        def __init__(self) -> None:
            self.is_gathered, self.cuda_global_chunk, self.grad_reduce_work = True, Tensor(), None

        def wait_async_reduce(self) -> None:
            if self.grad_reduce_work is not None:
                events.append("stream waits for the collective")
                self.grad_reduce_work = None

    def reduce(chunk: Chunk, async_op: bool = False) -> None:  # ColossalAI's order: enqueue, free at once
        events.append("reduce-scatter enqueued")
        chunk.grad_reduce_work = "pending"
        free_storage(chunk.cuda_global_chunk)
        events.append("reduce returns")

    reduce_then_free, free_storage = colossalai_patches.frees_after_reads(reduce, lambda t: events.append("freed"))
    monkeypatch.setattr(colossalai_patches, "_side_stream", lambda tensor: side)
    reduce_then_free(Chunk(), True)
    assert events == ["reduce-scatter enqueued", "reduce returns", "stream waits for the collective",
                      ("record", "side"), "freed"]
    events.clear()
    monkeypatch.setattr(colossalai_patches, "_side_stream", lambda tensor: None)  # the compute stream: as ColossalAI does
    reduce_then_free(Chunk(), False)
    assert events == ["reduce-scatter enqueued", "freed", "reduce returns"]
    events.clear()
    free_storage(Tensor())  # outside a reduction, on the compute stream, a free is a free
    assert events == ["freed"]
    events.clear()
    monkeypatch.setattr(colossalai_patches, "_side_stream", lambda tensor: side)
    free_storage(Tensor())  # outside a reduction on a side stream (a chunk released there): recorded first
    assert events == [("record", "side"), "freed"]


def test_a_profile_window_the_run_never_reaches_is_a_note() -> None:
    from ominix.train.step_profiler import StepProfiler

    def note(steps, done, total, enabled=True):
        return StepProfiler(steps, Path("unused"), enabled).unreachable(done, total)

    assert note((5, 6), 0, 10) is None and note(None, 0, 10) is None and note((5, 6), 0, 2, enabled=False) is None
    assert "the run's 4 steps end before it" in note((5, 6), 0, 4)
    assert "resumes at step 8" in note((5, 6), 7, 10)
