"""One machine: the worker in-process (one process) or under torchrun --standalone (several)."""

from __future__ import annotations

import os
import shlex
import sys
from typing import TYPE_CHECKING

from ominix.config import dump_yaml
from ominix.env_defaults import env_defaults
from ominix.errors import OminixError
from ominix.launch.torchrun import run_torchrun
from ominix.launch.command import local_env, summary, torchrun_argv
from ominix.launch.events import Events, Outcome
from ominix.launch.preflight import preflight
from ominix.launch.rundir import RunDir
from ominix.launch.relaunch import Relauncher

if TYPE_CHECKING:
    from ominix.config import OminixConfig


def local_nproc(cfg: OminixConfig) -> int:
    """``launch.nproc_per_node``, or the GPUs of this machine (1 without a GPU)."""
    if cfg.launch.nproc_per_node:
        return cfg.launch.nproc_per_node
    import torch

    return max(torch.cuda.device_count(), 1)


def start_local(cfg: OminixConfig, *, dry_run: bool, events: Events | None = None) -> Outcome:
    """Validate ``cfg`` for this machine and its data, lock the run directory, write
    RUN_DIR/config.yaml and run the worker(s). A relaunch into the same directory writes its own
    config (more steps, another lr); a checkpoint of another model shape, data or plugin is refused
    before anything starts."""
    import torch

    from ominix.console import debug_enabled
    from ominix.train import memory
    from ominix.train.parallel_layout import validate, with_global_batch

    events = events or Events()
    nproc = local_nproc(cfg)
    layout = validate(cfg, nproc, torch.cuda.is_available() or dry_run)  # a plan needs no GPU
    cfg = with_global_batch(cfg, layout)
    memory.check_here(cfg, layout)  # before torchrun starts: the workers would refuse it one by one
    if cfg.data.path or not dry_run:  # a plan without --data says a real launch needs it
        preflight(cfg, nproc)
    run_dir = str(cfg.logging.run_dir)
    argv = torchrun_argv(sys.executable, 1, 0, nproc, None, cfg.launch.master_port, cfg.launch.rdzv_timeout, run_dir)
    if dry_run:
        command = shlex.join(argv) if nproc > 1 else f"(in-process) python -m ominix.train --run-dir {run_dir}"
        return Outcome(0, f"{summary(cfg, nproc)}\ncommand   {command}\n--- resolved config ---\n{dump_yaml(cfg)}")
    with RunDir(cfg, events.notice) as claimed:
        claimed.write_config()
        if nproc == 1:
            with env_defaults(cfg.launch.env):
                return claimed.finish(Outcome(_in_process(run_dir)))
        relauncher = Relauncher(cfg, claimed.path, events, claimed.write_config)
        code = relauncher.run(lambda: run_torchrun(argv, local_env(cfg, os.environ), events.stderr,
                                                   filtered=not debug_enabled(),
                                                   stop_timeout=cfg.launch.stop_timeout))
        return claimed.finish(Outcome(code))


def _in_process(run_dir: str) -> int:
    """The worker in this process, with a worker's error contract: any error's traceback goes into
    RUN_DIR/train.log, and an error that is not an OminixError becomes one (one line and a hint)."""
    from ominix.console import debug_enabled
    from ominix.train.failure import as_ominix_error, log_traceback
    from ominix.train.loop import main

    try:
        return main(run_dir)
    except Exception as exc:
        log_traceback(run_dir, 0)
        if isinstance(exc, OminixError) or debug_enabled():
            raise
        raise as_ominix_error(exc, run_dir) from exc
