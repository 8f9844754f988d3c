"""The learning-rate schedule: linear warmup, then cosine, linear or constant decay to ``min_lr``."""

from __future__ import annotations

import math
from typing import Callable

from ominix.config import OminixConfig


def lr_at(step: int, lr: float, min_lr: float, warmup: int, total: int, decay: str) -> float:
    """Learning rate of optimizer step ``step`` (0-based) out of ``total``.

    Warmup rises linearly from lr/warmup at step 0 to lr at step ``warmup - 1``; the decay then
    goes from lr to min_lr at the last step (``constant`` stays at lr).
    """
    if step < warmup:
        return lr * (step + 1) / warmup
    if decay == "constant":
        return lr
    span = max(total - warmup - 1, 1)
    progress = min((step - warmup) / span, 1.0)
    if decay == "linear":
        return lr - (lr - min_lr) * progress
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def total_steps(cfg: OminixConfig, tokens_per_step: int) -> int:
    """Steps of the run: max_steps, or the steps that max_tokens needs, whichever comes first."""
    s = cfg.schedule
    by_tokens = math.ceil(s.max_tokens / tokens_per_step) if s.max_tokens else None
    return min(x for x in (s.max_steps, by_tokens) if x is not None)


def span(cfg: OminixConfig, total: int) -> int:
    """The steps the schedule of a run of ``total`` steps spans: schedule.decay_steps, or ``total``."""
    return cfg.schedule.decay_steps or total


def warmup_steps(cfg: OminixConfig, total: int) -> int:
    """The warmup of a run of ``total`` steps: schedule.warmup_steps, or all the steps of a shorter
    schedule (a 12-step smoke test of a preset with 500 warmup steps warms up over its 12)."""
    return min(cfg.schedule.warmup_steps, span(cfg, total))


def warmup_note(cfg: OminixConfig, total: int) -> str | None:
    """The notice a run whose warmup was shortened prints (plan and log); None when it was not."""
    steps = span(cfg, total)
    if cfg.schedule.warmup_steps <= steps:
        return None
    return (f"note: schedule.warmup_steps ({cfg.schedule.warmup_steps}) exceeds the {steps} steps of this "
            f"schedule: warming up over all {steps} steps (the learning rate reaches its peak at the last step)")


def eval_note(cfg: OminixConfig, held_out: int) -> str | None:
    """The notice of a run whose evaluations read the whole validation split of ``held_out`` blocks,
    fewer than schedule.eval_blocks; None when the split holds enough (or the run does not evaluate)."""
    s = cfg.schedule
    if not s.eval_every or held_out >= s.eval_blocks:
        return None
    return (f"note: schedule.eval_blocks ({s.eval_blocks}) exceeds the {held_out} blocks of the "
            f"validation split: each evaluation reads all {held_out}")


def lr_multiplier(cfg: OminixConfig, total: int) -> Callable[[int], float]:
    """The factor on the peak learning rate that ``torch.optim.lr_scheduler.LambdaLR`` expects."""
    o, s = cfg.optim, cfg.schedule
    warmup, steps = warmup_steps(cfg, total), span(cfg, total)

    def factor(step: int) -> float:
        return lr_at(step, o.lr, o.min_lr, warmup, steps, s.decay) / o.lr

    return factor


def continue_schedule(scheduler) -> tuple[float, float]:
    """Put a ``LambdaLR`` just loaded from a checkpoint on this run's schedule at once. Its state
    holds the rate the checkpoint's schedule gave the next step, which that step would train at
    before this run's schedule took over. Returns (the checkpoint's rate, this run's rate) there."""
    before = scheduler.get_last_lr()[0]
    scheduler.last_epoch -= 1
    scheduler.step()  # the rate of step last_epoch again, from this run's factor
    return before, scheduler.get_last_lr()[0]


def resume_note(step: int, before: float, after: float, steps: int) -> str | None:
    """The line a resume onto another schedule prints (another horizon, rate or warmup): the
    learning rate of its first step under the checkpoint's schedule and under this run's."""
    if math.isclose(before, after, rel_tol=1e-6):
        return None
    return (f"note: this run's learning-rate schedule ({steps} steps) is not the checkpoint's: step {step + 1} "
            f"trains at lr {after:.3e}, where the checkpoint's schedule had {before:.3e} (to continue its "
            "curve, relaunch with its schedule, or give the first run schedule.decay_steps)")
