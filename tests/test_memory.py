"""The memory estimate before launch (``ominix.train.memory``): it matches the peaks measured on one
H200, refuses a layout that cannot fit with the largest micro batch that does, and ``--dry-run``
prints it. The card's memory comes from ``launch.device_memory_gib`` here (no GPU on CPU)."""

from __future__ import annotations

import pytest

from ominix.config import load_config
from ominix.errors import OminixError
from ominix.train.parallel_layout import derive_layout, validate
from ominix.train.memory import GIB, estimate
from tests.conftest import run_cli
from tests.test_train import _launch, _ok

ONE_GPU = {"launch.nodes": 1, "launch.nproc_per_node": 1}
H200 = "launch.device_memory_gib=140"


# GiB of torch.cuda.max_memory_allocated on one H200 (BENCHMARKS.md); those runs had the whole logits
@pytest.mark.parametrize("preset, sets, measured", [
    ("tinyllama-1.1b", ["schedule.global_batch_size=24", "model.compile=false"], 51.8),  # micro 4 x 6, eager
    ("tinyllama-1.1b", ["schedule.global_batch_size=24", "model.compile=true"], 42.6),
    ("llama2-7b", ["schedule.micro_batch_size=8", "schedule.global_batch_size=16", "model.compile=true"], 126.7),
    ("llama2-7b", ["schedule.global_batch_size=16", "model.compile=true"], 133.5),  # micro 16 in one pass
], ids=["1.1b-eager", "1.1b-compiled", "7b-micro8x2", "7b-micro16"])
def test_estimate_is_within_three_percent_of_measured_peaks(preset: str, sets: list[str],
                                                            measured: float) -> None:
    cfg = load_config(preset, [*sets, "model.loss_chunk=0"], ONE_GPU)
    assert estimate(cfg, derive_layout(cfg, 1)).total / GIB == pytest.approx(measured, rel=0.03)


def test_whole_logits_refused_with_the_largest_micro_batch_that_fits() -> None:
    """The 7B preset on one GPU with the whole fp32 logits (what ran out of memory at step 2) is
    refused before launch; the suggested micro batch fits (16, refused, is the next divisor of 512)."""
    cfg = load_config("llama2-7b", ["model.loss_chunk=0", H200], ONE_GPU)
    with pytest.raises(OminixError, match="does not fit in GPU memory") as err:
        validate(cfg, 1, gpu=True)
    assert "~144" in err.value.message and "loss/backward peak 23.4" in err.value.message
    assert "schedule.micro_batch_size=8, the largest that fits" in err.value.hint
    assert "parallel.offload_optim_frac=0.1" in err.value.hint
    fits = load_config("llama2-7b", ["model.loss_chunk=0", H200, "schedule.micro_batch_size=8"], ONE_GPU)
    assert validate(fits, 1, gpu=True).accum == 64
    # the chunked loss (the default) is what lets the preset's 16 sequences per pass fit
    assert validate(load_config("llama2-7b", [H200], ONE_GPU), 1, gpu=True).micro_batch == 16


def test_estimate_follows_sharding_and_checkpointing() -> None:
    base = load_config("llama2-7b", ["model.compile=false"], ONE_GPU)  # eager: the activations kept
    one, eight = estimate(base, derive_layout(base, 1)), estimate(base, derive_layout(base, 8))
    assert eight.optimizer == pytest.approx(one.optimizer / 8)  # Gemini shards the states over dp
    assert eight.activations == one.activations  # a micro batch's activations stay on its GPU
    off = load_config("llama2-7b", ["model.compile=false", "model.recompute_activations=false"], ONE_GPU)
    assert estimate(off, derive_layout(off, 1)).activations > 20 * one.activations
    zero2 = load_config("llama2-7b", ["parallel.plugin=zero2"], ONE_GPU)
    cpu = load_config("llama2-7b", ["parallel.plugin=zero2_cpu"], ONE_GPU)
    on_gpu = estimate(zero2, derive_layout(zero2, 1)).optimizer
    assert estimate(cpu, derive_layout(cpu, 1)).optimizer == 0 < on_gpu  # zero2_cpu: on the host


def test_dry_run_prints_the_estimate_and_refuses_what_cannot_fit(tmp_path) -> None:
    args = ["train", "launch", "llama2-7b", "--nproc-per-node", "1", "--run-dir", str(tmp_path / "run"),
            "--dry-run"]
    shown = run_cli(*args, "--set", H200, timeout=120)
    assert shown.returncode == 0, shown.stderr
    # the preset as shipped: compiled layers (model.compile: auto on the GPU it is checked against)
    assert "memory    ~132.3 GiB per GPU = params 12.6 + grads 12.6 + optimizer 75.3" in shown.stdout
    assert "fits the 140 GiB of launch.device_memory_gib" in shown.stdout
    assert "attention sdpa (auto: no flash-attn installed here" in shown.stdout  # the preset's auto
    refused = run_cli(*args, "--set", H200, "--set", "model.loss_chunk=0", timeout=120)
    assert refused.returncode == 2 and "does not fit in GPU memory" in refused.stderr
    assert "hint: set schedule.micro_batch_size=8" in refused.stderr
    unchecked = run_cli(*args, "--set", H200, "--set", "model.loss_chunk=0",
                        "--set", "launch.memory_check=false", timeout=120)
    assert unchecked.returncode == 0 and "(not checked: launch.memory_check=false)" in unchecked.stdout
    assert not (tmp_path / "run").exists()


def test_run_log_shows_the_estimate_beside_the_measured_peak(data_dir, tmp_path) -> None:
    """The worker logs the estimate once at start, and each step's line the measured peak: a GPU run
    shows both."""
    run = tmp_path / "run"
    _ok(_launch(data_dir, run, "--nproc-per-node", "1", "--max-steps", "1", timeout=300))
    log = (run / "train.log").read_text()
    cfg = load_config("tiny", [], {"launch.nproc_per_node": 1})
    assert f"memory estimate {estimate(cfg, derive_layout(cfg, 1)).describe()}\n" in log
