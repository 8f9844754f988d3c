"""Step metrics: one log line per logged step on rank 0, the same numbers in ``metrics.jsonl``,
TensorBoard (``RUN_DIR/tb``) and Weights & Biases (``logging.wandb``, ``ominix.train.wandb_log``), and
the training figure (``RUN_DIR/plots/training.png``, ``ominix.train.figure``) redrawn at each
evaluation and at the end.

Throughput is measured over the window since the previous log line, so the host waits for the
device once per window, not once per step: the steps of the window over their time, evaluations and
checkpoint saves in the window left out of the time (they are not steps). TFLOP/s and MFU use
``ominix.flops``:

    model FLOPs per token = 6 x (non-embedding params + lm_head params) + 12 x layers x hidden x seq
    MFU = tokens/s per device x model FLOPs per token / peak FLOP/s of the device

recomputation (activation checkpointing) not counted; MFU is n/a on a device without a known peak.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ominix import console
from ominix.flops import format_mfu, mfu

if TYPE_CHECKING:
    from ominix.config.runtime import LoggingConfig


def memory_gib() -> float:
    """Peak memory of this process: allocated on the GPU, else the resident set size (CPU)."""
    import resource

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{sec:02d}"


class Throughput:
    """Tokens/s, TFLOP/s per device and MFU over the window since the last ``measure``: the steps
    the loop counts in that window over the time they took, the time between ``pause`` and
    ``resume`` (an evaluation, a checkpoint save: not training) left out. ``clock`` is
    ``time.perf_counter``; a test may give another."""

    def __init__(self, tokens_per_step: int, devices: int, flops_per_token: float, peak: float | None,
                 clock: Callable[[], float] = time.perf_counter):
        self.tokens_per_step, self.devices = tokens_per_step, devices
        self.flops_per_token, self.peak = flops_per_token, peak
        self.clock = clock
        self.mark, self.excluded, self.paused_at = clock(), 0.0, 0.0

    def pause(self) -> None:
        """Stop counting time until ``resume``."""
        self.paused_at = self.clock()

    def resume(self) -> None:
        self.excluded += self.clock() - self.paused_at

    def measure(self, steps: int, remaining_steps: int) -> dict[str, Any]:
        now = self.clock()
        elapsed = max(now - self.mark - self.excluded, 1e-9)
        self.mark, self.excluded = now, 0.0
        tokens_s = steps * self.tokens_per_step / elapsed
        per_device = tokens_s / self.devices
        util = mfu(per_device, self.flops_per_token, self.peak)
        return {
            "tokens_per_s": tokens_s,
            "tokens_per_s_per_device": per_device,
            "tflops_per_device": per_device * self.flops_per_token / 1e12,
            "mfu": util,
            "step_time_s": elapsed / max(steps, 1),
            "eta_s": remaining_steps * elapsed / max(steps, 1),
            "memory_gib": memory_gib(),
        }


def format_step(r: dict[str, Any], total: int) -> str:
    norm = "n/a" if r["grad_norm"] is None else f"{r['grad_norm']:.3f}"  # None: the plugin does not say
    return (
        f"step {r['step']:>6}/{total} | loss {r['loss']:.4f} | lr {r['lr']:.3e} | grad norm "
        f"{norm} | {r['tokens_per_s']:,.0f} tok/s ({r['tokens_per_s_per_device']:,.0f}/dev) | "
        f"{r['tflops_per_device']:.2f} TFLOP/s/dev | MFU {format_mfu(r['mfu'])} | mem "
        f"{r['memory_gib']:.2f} GiB | ETA {_eta(r['eta_s'])}"
    )


def format_eval(r: dict[str, Any]) -> str:
    return f"eval  step {r['step']:>6} | val loss {r['val_loss']:.4f} | val ppl {r['val_perplexity']:.2f}"


def json_line(values: dict[str, Any]) -> str:
    """``values`` as strict JSON: a number that is not finite (a NaN loss, the perplexity of an empty
    validation split) becomes null, which every JSON reader accepts, where NaN is not JSON."""
    finite = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in values.items()}
    return json.dumps(finite, allow_nan=False)


class MetricsWriter:
    """Rank 0 writes; on other ranks every method does nothing. ``config`` (the resolved config as
    JSON) goes to W&B when ``logging.wandb.enabled``."""

    def __init__(self, run_dir: Path, enabled: bool, log_cfg: LoggingConfig,
                 config: dict[str, Any] | None = None) -> None:
        self.enabled, self.run_dir = enabled, run_dir
        self.tb = self.wandb = None
        self.figure = self.undrawn = False  # undrawn: records the figure does not show yet
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = (run_dir / "metrics.jsonl").open("a")
        self.log_file = (run_dir / "train.log").open("a")
        if log_cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"))
        if log_cfg.figure:
            from ominix.train import figure

            self.figure = figure.available()
            if not self.figure:
                self.line(figure.MISSING)
        if log_cfg.wandb.enabled:
            from ominix.train.wandb_log import WandbRun

            self.wandb = WandbRun(log_cfg.wandb, run_dir, config or {})
            self.line(self.wandb.describe())

    def line(self, text: str) -> None:
        if self.enabled:
            console.out(text)
            self.log_file.write(text + "\n")
            self.log_file.flush()

    def record(self, kind: str, values: dict[str, Any], dashboards: bool = True) -> None:
        """Append one JSON object, stamped with the wall-clock ``time``, to metrics.jsonl and (with
        ``dashboards``) its numbers to TensorBoard and W&B; after an evaluation (held-out or
        downstream tasks), redraw the figure."""
        if not self.enabled:
            return
        self.jsonl.write(json_line({"kind": kind, **values, "time": round(time.time(), 3)}) + "\n")
        self.jsonl.flush()
        if not dashboards:
            return
        self.undrawn = True
        if self.tb is not None:
            for key, value in values.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(f"{kind}/{key}", value, values["step"])
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(kind, values)
        if kind in ("eval", "downstream"):  # the figure shows both
            self.draw()

    def draw(self) -> None:
        """Redraw RUN_DIR/plots/training.png from metrics.jsonl (with logging.figure and matplotlib)."""
        if self.enabled and self.figure and self.undrawn:
            from ominix.train.figure import draw

            draw(self.run_dir)
            self.undrawn = False

    def close(self) -> None:
        """Draw the figure a last time and close every writer."""
        if self.enabled:
            self.draw()
            self.jsonl.close()
            self.log_file.close()
            if self.tb is not None:
                self.tb.close()
            if self.wandb is not None:
                self.wandb.finish()
