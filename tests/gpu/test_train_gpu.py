"""GPU training: gemini, zero2 (+ optimizer offload), 3d (tp, pp), ddp and fsdp in bf16 on the tiny
preset with real text; the loss falls, MFU is measured (known card), a resumed run continues the same
loss curve. Run on the GPU machine: `pytest -q -m gpu tests/gpu/test_train_gpu.py`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_train import _launch, _losses, _ok, data_dir  # noqa: F401  (data_dir is a fixture)

pytestmark = pytest.mark.gpu

SETS = ["parallel.precision=bf16", "schedule.warmup_steps=2", "logging.log_every=1", "checkpoint.every=3",
        "checkpoint.keep_last=2", "schedule.eval_every=3", "schedule.eval_batches=2", "model.attn=auto"]


def _gpus() -> int:
    import torch

    return torch.cuda.device_count()


@pytest.mark.parametrize("plugin, nproc, sets", [
    ("gemini", 1, []),
    ("gemini_auto", 1, []),
    ("gemini", 2, []),
    ("gemini", 1, ["model.compile=true"]),  # auto scope under Gemini: hooked compiled decoder layers
    ("gemini", 2, ["model.compile=true"]),
    ("zero2", 2, []),
    ("zero2", 1, ["model.compile=true"]),  # compiled decoder layers
    ("zero2_cpu", 2, []),
    ("ddp", 2, []),
    ("fsdp", 2, []),
    ("3d", 2, ["parallel.tp=2"]),
    ("3d", 2, ["parallel.tp=2", "parallel.sequence_parallel=true"]),
    ("3d", 2, ["parallel.pp=2"]),
    ("3d", 4, ["parallel.tp=2", "parallel.pp=2", "parallel.zero_stage=1", "schedule.global_batch_size=32"]),
], ids=lambda v: f"{v}gpu" if isinstance(v, int) else
   ("-".join(s.split(".")[-1].split("=")[0] for s in v) or "default") if isinstance(v, list) else v)
def test_plugin_trains_and_resumes_on_gpu(plugin: str, nproc: int, sets: list[str], data_dir: Path,
                                         tmp_path: Path) -> None:
    if _gpus() < nproc:
        pytest.skip(f"needs {nproc} GPUs")
    full, again = tmp_path / "full", tmp_path / "again"
    args = ["--plugin", plugin, "--nproc-per-node", str(nproc), "--max-steps", "6"]
    _ok(_launch(data_dir, full, *args, sets=[*SETS, *sets]))
    losses = _losses(full)
    assert losses[6] < losses[1] - 0.5
    rows = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    assert all(r["mfu"] is not None and r["mfu"] > 0 for r in rows if r["kind"] == "train")  # known card
    assert "MFU n/a" not in (full / "train.log").read_text()

    _ok(_launch(data_dir, again, *args, "--resume", str(full / "checkpoints" / "step_00000003"),
                sets=[*SETS, *sets]))
    resumed = _losses(again)
    assert sorted(resumed) == [4, 5, 6]
    for step in (4, 5, 6):  # GPU kernels need not be bit-reproducible; the curve must continue
        assert resumed[step] == pytest.approx(losses[step], rel=1e-3)


def test_fp16_loss_scaling_trains(data_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    _ok(_launch(data_dir, run, "--plugin", "zero2", "--nproc-per-node", "1", "--max-steps", "6",
                sets=[*SETS, "parallel.precision=fp16", "schedule.eval_every=0"]))
    losses = _losses(run)
    assert losses[6] < losses[1]


def test_chunk_norm_reads_back_on_a_side_stream() -> None:
    """The run's chunk-norm shim keeps a gradient chunk's norm on the device on the compute stream,
    and reads it back (Gemini's own behaviour) on any other stream, where that read is what orders
    the host's frees after the stream's reads."""
    from types import SimpleNamespace

    import torch
    from colossalai.zero.gemini.chunk.chunk import Chunk

    from ominix.train import shims

    v = torch.randn(1000, device="cuda", dtype=torch.bfloat16)
    expected = float(v[:990].float().norm()) ** 2

    def norm() -> object:
        c = SimpleNamespace(is_gathered=True, cuda_global_chunk=v, utilized_size=990, l2_norm=None)
        Chunk.set_l2_norm(c)
        return c.l2_norm

    with shims.patched():
        on_device = norm()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            read_back = norm()
    assert isinstance(on_device, torch.Tensor) and on_device.is_cuda
    assert isinstance(read_back, float)
    assert float(on_device) == pytest.approx(expected, rel=1e-5) and read_back == pytest.approx(expected, rel=1e-5)
