"""One machine: the worker in-process (one process) or under torchrun --standalone (several)."""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ominix.config import dump_yaml, save_config
from ominix.errors import OminixError
from ominix.launch.command import local_env, summary, torchrun_argv
from ominix.launch.events import Outcome

if TYPE_CHECKING:
    from ominix.config import OminixConfig


def local_nproc(cfg: OminixConfig) -> int:
    """``launch.nproc_per_node``, or the GPUs of this machine (1 without a GPU)."""
    if cfg.launch.nproc_per_node:
        return cfg.launch.nproc_per_node
    import torch

    return max(torch.cuda.device_count(), 1)


def prepare_run_dir(cfg: OminixConfig) -> Path:
    """Create the run directory and write the resolved config the workers will read. A relaunch
    into the same directory writes its own config (more steps, another lr); a checkpoint of another
    model shape, data or plugin is refused when the worker resumes."""
    run_dir = Path(cfg.logging.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    return run_dir


@contextlib.contextmanager
def missing_env(values: Mapping[str, str]) -> Iterator[None]:
    """Set the ``values`` this process's environment lacks, and remove them again on exit."""
    added = [k for k in values if k not in os.environ]
    os.environ.update({k: values[k] for k in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def start_local(cfg: OminixConfig, *, dry_run: bool) -> Outcome:
    """Validate ``cfg`` for this machine, write RUN_DIR/config.yaml and run the worker(s)."""
    import torch

    from ominix.train.engine import validate

    nproc = local_nproc(cfg)
    validate(cfg, nproc, torch.cuda.is_available())
    if cfg.data.path is None or not (Path(cfg.data.path) / "manifest.json").is_file():
        raise OminixError(
            f"no prepared data at {cfg.data.path}" if cfg.data.path else "no prepared data: data.path is not set",
            "run `ominix data prepare ... --out DIR`, then pass --data DIR",
        )
    run_dir = str(cfg.logging.run_dir)
    argv = torchrun_argv(sys.executable, 1, 0, nproc, None, cfg.launch.master_port, cfg.launch.rdzv_timeout, run_dir)
    if dry_run:
        command = shlex.join(argv) if nproc > 1 else f"(in-process) python -m ominix.train --run-dir {run_dir}"
        return Outcome(0, f"{summary(cfg, nproc)}\ncommand   {command}\n--- resolved config ---\n{dump_yaml(cfg)}")
    prepare_run_dir(cfg)
    if nproc == 1:
        from ominix.train.loop import main

        with missing_env(cfg.launch.env):
            return Outcome(main(run_dir))
    return Outcome(subprocess.run(argv, env=local_env(cfg, os.environ)).returncode)
