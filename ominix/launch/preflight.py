"""What can be checked from the config and the prepared data's manifest alone, checked in the
launcher before any process starts (the workers check again, for a worker started by hand): the
wandb package when ``logging.wandb`` is on, lm-eval and the task files of ``schedule.eval_tasks``,
prepared data at ``data.path``, its seq_len and vocabulary against the config, and the resume
target (exists, is a checkpoint, fits this model, data and rank layout)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ominix.data.compatibility import check_fits
from ominix.eval.harness import check_task_files

if TYPE_CHECKING:
    from ominix.config import OminixConfig


def resume_target(cfg: OminixConfig) -> Path | None:
    """The checkpoint this run will resume from (None: a fresh start), chosen as the workers will
    (falling back past damaged ones, sizes checked); nothing usable is an error (the checkpoint
    package words it). Read-only: the launcher does not hold the run directory's lock yet."""
    from ominix.checkpoint import resumable

    choice = cfg.checkpoint.resume
    if cfg.checkpoint.starts_fresh:
        return None
    target, _ = resumable(cfg.logging.run_dir if choice == "auto" else choice, "sizes",
                          required=choice != "auto", repair=False)
    return target


def preflight(cfg: OminixConfig, world_size: int | None) -> None:
    """Every check of this module; with ``world_size`` known, also that the resume target can be
    loaded on that many ranks."""
    from ominix.checkpoint import check_compatible, read_state
    from ominix.data.store import manifest_sha256
    from ominix.plugins import PLUGINS
    from ominix.train.parallel_layout import derive_layout
    from ominix.train.wandb_log import check_installed

    check_installed(cfg.logging.wandb)
    check_task_files(cfg.schedule.eval_tasks, "schedule.eval_tasks")
    check_fits(cfg)
    resume = resume_target(cfg)
    if resume is not None and world_size is not None:
        check_compatible(read_state(resume), cfg, manifest_sha256(cfg.data.path), derive_layout(cfg, world_size),
                         PLUGINS[cfg.parallel.plugin].reshard)
