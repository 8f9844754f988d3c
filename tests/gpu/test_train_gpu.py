"""GPU training: gemini, zero2 (+ optimizer offload), 3d (tp, pp), ddp and fsdp in bf16 on the tiny
preset with real text; the loss falls, MFU is measured (known card), a resumed run continues the same
loss curve. Run on the GPU machine: `pytest -q -m gpu tests/gpu/test_train_gpu.py`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_train import _launch, _losses, _ok

pytestmark = pytest.mark.gpu

SETS = ["parallel.precision=bf16", "schedule.warmup_steps=2", "logging.log_every=1", "checkpoint.every=3",
        "checkpoint.keep_last=2", "schedule.eval_every=3", "schedule.eval_blocks=16", "model.attn=auto"]


def _gpus() -> int:
    import torch

    return torch.cuda.device_count()


@pytest.mark.parametrize("plugin, nproc, sets", [
    ("gemini", 1, []),
    ("gemini_auto", 1, []),
    ("gemini", 2, []),
    ("gemini", 1, ["model.tie_word_embeddings=true"]),  # one tensor for the embedding and the head
    ("gemini", 1, ["model.compile=true"]),  # auto scope under Gemini: hooked compiled decoder layers
    ("gemini", 2, ["model.compile=true"]),
    ("gemini", 1, ["parallel.gemini_async_reduce=true"]),  # the reduction on a side stream (colossalai_patches.py)
    ("gemini", 2, ["parallel.gemini_async_reduce=true"]),
    ("zero2", 2, []),
    ("zero2", 1, ["model.compile=true"]),  # compiled decoder layers
    ("gemini", 1, ["model.compile=true", "model.fp8=tensorwise"]),  # FP8, casts fused in the hooked regions
    ("gemini", 2, ["model.compile=true", "model.fp8=tensorwise"]),
    ("zero2", 1, ["model.compile=true", "model.fp8=rowwise"]),
    ("ddp", 1, ["model.compile=true", "model.fp8=tensorwise"]),
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


def test_chunk_norm_stays_on_the_device_on_any_stream() -> None:
    """The run's chunk-norm shim keeps a gradient chunk's norm on the device, on the compute stream
    and on Gemini's async-reduce stream alike (no host sync per chunk)."""
    from types import SimpleNamespace

    import torch
    from colossalai.zero.gemini.chunk.chunk import Chunk

    from ominix.train import colossalai_patches

    v = torch.randn(1000, device="cuda", dtype=torch.bfloat16)
    expected = float(v[:990].float().norm()) ** 2

    def norm() -> object:
        c = SimpleNamespace(is_gathered=True, cuda_global_chunk=v, utilized_size=990, l2_norm=None)
        Chunk.set_l2_norm(c)
        return c.l2_norm

    with colossalai_patches.patched():
        on_compute = norm()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            on_side = norm()
        torch.cuda.current_stream().wait_stream(side)
    for value in (on_compute, on_side):
        assert isinstance(value, torch.Tensor) and value.is_cuda
        assert float(value) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("how", ["colossalai", "reduce", "release"])
def test_a_chunk_reduced_on_a_side_stream_is_not_reused_while_the_stream_reads_it(how: str) -> None:
    """Gemini's one-GPU reduction on its side stream copies the gathered chunk into the shard and
    frees the chunk at once (and so does releasing a parameter chunk there). As ColossalAI does it,
    the compute stream's next allocation gets the chunk's memory while the (busy) side stream has yet
    to copy it, and the shard gets what the compute stream wrote there; with the run's shim (the
    reduction's frees held, or a free on the side stream recorded) the memory waits for the stream."""
    import torch

    from ominix.train import colossalai_patches

    def free(tensor: torch.Tensor) -> None:  # ColossalAI's free_storage
        tensor.untyped_storage().resize_(0)

    def scatter(chunk: object, async_op: bool = False) -> None:
        chunk.cuda_shard = torch.empty_like(chunk.cuda_global_chunk)
        chunk.cuda_shard.copy_(chunk.cuda_global_chunk)
        (free if how == "colossalai" else free_storage)(chunk.cuda_global_chunk)

    class Chunk:
        is_gathered, grad_reduce_work = True, None

        def wait_async_reduce(self) -> None:
            pass

    reduce_then_free, free_storage = colossalai_patches.frees_after_reads(scatter, free)
    chunk = Chunk()
    chunk.cuda_global_chunk = torch.ones(1 << 24, device="cuda")  # 64 MiB, allocated on the compute stream
    where = chunk.cuda_global_chunk.data_ptr()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(1 << 30)  # the side stream is busy: its copy runs long after the host moves on
        (reduce_then_free if how == "reduce" else scatter)(chunk)
    following = torch.empty(1 << 24, device="cuda")  # the compute stream's next allocation of that size
    following.zero_()
    torch.cuda.synchronize()
    if how == "colossalai":  # the race the shim closes: the shard holds the compute stream's zeros
        assert following.data_ptr() == where and not bool((chunk.cuda_shard == 1).all())
    else:
        assert following.data_ptr() != where and bool((chunk.cuda_shard == 1).all())
