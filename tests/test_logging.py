"""Loggers and pictures: Weights & Biases (the real package, offline, no network) logs what
metrics.jsonl holds from rank 0 and a resumed run logs into the same W&B run; the training figure
(a real PNG from matplotlib) after training, redrawn by `ominix train plot`; a missing wandb is one
line before anything starts, a missing matplotlib costs the figure, not the run."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli

SETS = ["schedule.warmup_steps=2", "logging.log_every=1", "checkpoint.every=2", "schedule.eval_every=2",
        "schedule.eval_blocks=16", "checkpoint.keep_last=1", "checkpoint.keep_every=0", "logging.tensorboard=false"]
WANDB = ["logging.wandb.enabled=true", "logging.wandb.project=ominix-test", "logging.wandb.name=tiny-run",
         "logging.wandb.tags=[cpu, test]"]


def wandb_records(path: Path) -> list:
    """The records of a W&B transaction log (``run-ID.wandb``), parsed with wandb's own protobuf
    messages. The framing is LevelDB's log format, as wandb writes it: a 7-byte file header (':W&B',
    magic 0xBEE1, version 0), then 32 KiB blocks of chunks (crc32, length, type: 1 full, 2 first,
    3 middle, 4 last); a block's tail shorter than a chunk header is padding."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0)
    records, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def offline_runs(wandb_dir: Path) -> list[dict]:
    """Each offline run under WANDB_DIR, oldest first: its run id, name, project, tags, config and
    history rows ({key: value})."""
    runs = []
    for log in sorted(wandb_dir.glob("wandb/offline-run-*/run-*.wandb")):
        run, history = None, []
        for r in wandb_records(log):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                run = r.run
            elif kind == "history":
                history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
        config = {u.key: json.loads(u.value_json) for u in run.config.update}
        runs.append({"id": run.run_id, "name": run.display_name, "project": run.project, "tags": list(run.tags),
                     "config": config, "history": history})
    return runs


def metrics(run_dir: Path, kind: str, key: str) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in rows if r["kind"] == kind}


def logged(run: dict, key: str) -> dict[int, float]:
    return {row["step"]: row[key] for row in run["history"] if key in row}


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and data[-8:-4] == b"IEND"
    return struct.unpack(">II", data[16:24])


def launch(data: Path, run_dir: Path, *args: str, sets: list[str], env: dict[str, str] | None = None,
           python: str | None = None):
    flags = [a for s in sets for a in ("--set", s)]
    argv = ["train", "launch", "tiny", "--data", str(data), "--run-dir", str(run_dir), *args, *flags]
    env = {"OMP_NUM_THREADS": "1", **(env or {})}
    if python is None:
        return run_cli(*argv, env=env, timeout=300)
    # ``python`` runs first in the CLI's process (the in-process worker's too), e.g. to hide a package
    code = f"import sys; {python}; sys.argv = ['ominix', *sys.argv[1:]]; from ominix.cli.main import run; run()"
    return subprocess.run([sys.executable, "-c", code, *argv], env={**os.environ, **env}, text=True,
                          capture_output=True, timeout=300)


def _ok(result) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def data(data_dir: Path) -> Path:
    return data_dir  # the session's prepared tiny data (tests/conftest.py)


@pytest.fixture(scope="module")
def wandb_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """4 steps on 2 processes logged to W&B offline (with a local lm-eval task at each evaluation),
    then a relaunch on 1 process that resumes at step 4 and trains to 6; returns (run directory,
    WANDB_DIR)."""
    from tests.conftest import in_private_netns

    if not in_private_netns():
        pytest.fail("this test starts torchrun: run it via `make test` (private network namespace)")
    root = tmp_path_factory.mktemp("wandb")
    run_dir, wandb_dir = root / "run", root / "wandb-files"
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir)}
    tasks = [f"schedule.eval_tasks=[{REPO / 'tests' / 'data' / 'lm_eval' / 'tiny_choice.yaml'}]",
             "schedule.eval_task_limit=2"]
    first = launch(data, run_dir, "--nproc-per-node", "2", "--max-steps", "4", sets=[*SETS, *WANDB, *tasks],
                   env=env)
    _ok(first)
    assert len(list(wandb_dir.glob("wandb/offline-run-*"))) == 1  # rank 0 only
    _ok(launch(data, run_dir, "--max-steps", "6", "--resume", "auto", sets=[*SETS, *WANDB], env=env))
    return run_dir, wandb_dir


def test_wandb_offline_run_holds_what_metrics_jsonl_holds(wandb_run: tuple[Path, Path]) -> None:
    run_dir, wandb_dir = wandb_run
    first = offline_runs(wandb_dir)[0]
    assert (first["name"], first["project"], first["tags"]) == ("tiny-run", "ominix-test", ["cpu", "test"])
    assert first["config"]["model"]["name"] == "tiny" and first["config"]["schedule"]["max_steps"] == 4
    losses = metrics(run_dir, "train", "loss")
    assert logged(first, "train/loss") == {s: losses[s] for s in (1, 2, 3, 4)}
    assert logged(first, "train/lr") == {s: metrics(run_dir, "train", "lr")[s] for s in (1, 2, 3, 4)}
    val = metrics(run_dir, "eval", "val_loss")
    assert logged(first, "eval/val_loss") == {2: val[2], 4: val[4]}
    acc = metrics(run_dir, "downstream", "ominix_tiny_choice/acc")
    assert logged(first, "downstream/ominix_tiny_choice/acc") == {2: acc[2], 4: acc[4]}
    assert f"W&B run {first['id']} (offline)" in (run_dir / "train.log").read_text()


def test_a_resumed_run_logs_into_the_same_wandb_run(wandb_run: tuple[Path, Path]) -> None:
    run_dir, wandb_dir = wandb_run
    first, second = offline_runs(wandb_dir)
    assert json.loads((run_dir / "wandb-run.json").read_text())["id"] == first["id"] == second["id"]
    assert second["config"]["schedule"]["max_steps"] == 6  # the config of the relaunch
    losses = metrics(run_dir, "train", "loss")
    assert logged(second, "train/loss") == {5: losses[5], 6: losses[6]}  # continues where the first ended
    assert logged(second, "eval/val_loss") == {6: metrics(run_dir, "eval", "val_loss")[6]}


def test_training_draws_the_figure_and_train_plot_redraws_it(wandb_run: tuple[Path, Path], tmp_path: Path) -> None:
    run_dir, _ = wandb_run
    figure = run_dir / "plots" / "training.png"
    # four drawn panels, not blank: loss, learning rate, throughput and the lm-eval task
    assert png_size(figure) == (1600, 360) and figure.stat().st_size > 20_000
    assert not [p for p in figure.parent.iterdir() if p.name != "training.png"]  # no temporary left behind
    out = tmp_path / "again.png"
    result = run_cli("train", "plot", str(run_dir), "--out", str(out))
    _ok(result)
    assert f"wrote {out}" in result.stdout and png_size(out) == (1600, 360)
    _ok(run_cli("train", "plot", str(run_dir), "--out", str(out)))  # its own earlier figure: replaced
    metrics_jsonl = (run_dir / "metrics.jsonl").read_bytes()
    for target, needle in ((run_dir / "metrics.jsonl", "is or contains the input"),
                           (run_dir / "config.yaml", "is one of the files of the training run")):
        refused = run_cli("train", "plot", str(run_dir), "--out", str(target), "--force")
        assert refused.returncode == 2 and needle in refused.stderr, refused.stderr
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics_jsonl
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"\x89PNG not a figure of ours")
    refused = run_cli("train", "plot", str(run_dir), "--out", str(photo))
    assert refused.returncode == 2 and "is not a training figure" in refused.stderr
    _ok(run_cli("train", "plot", str(run_dir), "--out", str(photo), "--force"))
    missing = run_cli("train", "plot", str(tmp_path))
    assert missing.returncode == 2 and "metrics.jsonl not found" in missing.stderr


def test_wandb_enabled_without_the_package_is_one_line_before_anything_starts(data: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # a None entry in sys.modules is how Python marks a module as not importable
    result = launch(data, run_dir, "--max-steps", "2", sets=[*SETS, *WANDB], python="sys.modules['wandb'] = None")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "logging.wandb.enabled is set but the wandb package is not installed" in result.stderr
    assert "pip install 'wandb>=0.17' torch==" in result.stderr  # the extra alone, the installed torch kept
    assert not run_dir.exists() and "Traceback" not in result.stderr


@pytest.mark.usefixtures("private_netns")
def test_training_without_matplotlib_goes_on_without_the_figure(data: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = launch(data, run_dir, "--max-steps", "2", sets=SETS, python="sys.modules['matplotlib'] = None")
    _ok(result)
    log = (run_dir / "train.log").read_text()
    assert log.count("matplotlib is not installed: no training figure") == 1
    assert sorted(metrics(run_dir, "train", "loss")) == [1, 2] and not (run_dir / "plots").exists()


def test_profile_summary_counts_overlapping_gpu_work_once() -> None:
    """GPU busy is the union of kernel and copy intervals (overlapping streams count once); the
    host's phases add up over micro batches; CPU-side ops are neither."""
    from ominix.train.step_profiler import busy_seconds, summarize

    assert busy_seconds([(0, 10), (5, 15), (20, 30), (22, 25)]) == 25
    assert busy_seconds([]) == 0
    events = [
        {"ph": "X", "cat": "kernel", "name": "gemm", "ts": 0, "dur": 400_000},
        {"ph": "X", "cat": "kernel", "name": "nccl", "ts": 300_000, "dur": 200_000},  # overlaps the gemm
        {"ph": "X", "cat": "gpu_memcpy", "name": "HtoD", "ts": 600_000, "dur": 100_000},
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 900_000},
        {"ph": "X", "cat": "user_annotation", "name": "forward", "ts": 0, "dur": 100_000},
        {"ph": "X", "cat": "user_annotation", "name": "forward", "ts": 200_000, "dur": 50_000},
        {"ph": "X", "cat": "user_annotation", "name": "log", "ts": 700_000, "dur": 250_000},
        {"ph": "i", "cat": "kernel", "name": "marker", "ts": 0},
    ]
    s = summarize({"traceEvents": events}, wall_s=1.0)
    assert s["gpu_busy_s"] == 0.6 and s["gpu_busy_fraction"] == 0.6 and s["gpu_kernels"] == 2
    assert s["host_phase_s"]["forward"] == 0.15 and s["host_phase_s"]["log"] == 0.25
    assert s["host_phase_s"]["backward"] == 0


def test_profile_summary_splits_gpu_time_by_kind_and_the_phase_that_launched_it() -> None:
    """Each kernel or copy counts under the host phase its launch fell in (matched by correlation id,
    whatever thread launched it: autograd's own for backward) and under its kind by name."""
    from ominix.train.step_profiler import kind_of, summarize

    def launch(ts: int, corr: int, tid: int = 1) -> dict:
        return {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": ts, "dur": 5, "tid": tid,
                "args": {"correlation": corr}}

    def gpu(name: str, ts: int, dur: int, corr: int, cat: str = "kernel") -> dict:
        return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "args": {"correlation": corr}}

    events = [
        {"ph": "X", "cat": "user_annotation", "name": "forward", "ts": 0, "dur": 100, "tid": 1},
        {"ph": "X", "cat": "user_annotation", "name": "backward", "ts": 100, "dur": 200, "tid": 1},
        {"ph": "X", "cat": "user_annotation", "name": "optimizer", "ts": 400, "dur": 50, "tid": 1},
        launch(10, 1), launch(20, 2), launch(150, 3, tid=7), launch(160, 4, tid=7), launch(410, 5),
        launch(350, 6),  # between phases
        gpu("sm90_xmma_gemm_bf16bf16_bf16f32", 30, 40_000, 1),
        gpu("pytorch_flash::flash_fwd_kernel", 70, 20_000, 2),
        gpu("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NNT", 200, 80_000, 3),
        gpu("triton_poi_fused_add_mul_0", 300, 10_000, 4),
        gpu("multi_tensor_apply_kernel", 420, 30_000, 5),
        gpu("Memcpy HtoD (Pageable -> Device)", 360, 5_000, 6, cat="gpu_memcpy"),
    ]
    table = summarize({"traceEvents": events}, wall_s=1.0)["gpu_s_by_phase_and_kind"]
    assert table == {"forward": {"attention": 0.02, "matmul": 0.04}, "backward": {"matmul": 0.08, "other": 0.01},
                     "optimizer": {"optimizer": 0.03}, "unphased": {"copy": 0.005}}
    assert kind_of({"cat": "kernel", "name": "ncclDevKernel_AllGather_RING_LL"}) == "collective"
    assert kind_of({"cat": "kernel", "name": "triton_tem_fused_mm_3"}) == "matmul"


def test_throughput_is_the_window_steps_over_their_time_without_evaluations_and_saves() -> None:
    from ominix.train.metrics import Throughput

    now = [0.0]
    meter = Throughput(tokens_per_step=1000, devices=2, flops_per_token=1e9, peak=None, clock=lambda: now[0])

    def spend(seconds: float, paused: bool = False) -> None:
        if paused:
            meter.pause()
        now[0] += seconds
        if paused:
            meter.resume()

    spend(2.0)  # steps 1-2, 1 s each
    spend(30.0, paused=True)  # an evaluation after step 2
    spend(2.0)  # steps 3-4
    r = meter.measure(4, remaining_steps=6)
    assert (r["step_time_s"], r["tokens_per_s"], r["tokens_per_s_per_device"], r["eta_s"]) == (1.0, 1000, 500, 6.0)
    spend(10.0, paused=True)  # a checkpoint saved after the log line of step 4
    spend(6.0)  # steps 5-7, 2 s each
    assert meter.measure(3, remaining_steps=3)["step_time_s"] == 2.0
