"""Start a training run: the one place that chooses how. One machine goes to ``local``; several
nodes (or a hostfile) to ``multinode`` (torchrun per node over SSH), ``colossalai_run``
(``colossalai run``) or ``slurm`` (an sbatch file), after checking every host over SSH.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ominix.config import load_config
from ominix.launch import colossalai_run, multinode, slurm
from ominix.launch.command import remote_python, summary, torchrun_argv
from ominix.launch.events import Events, Outcome
from ominix.launch.hostcheck import checked_gpus, cluster
from ominix.launch.children import stop_signals
from ominix.launch.local import start_local
from ominix.launch.preflight import preflight
from ominix.launch.rundir import RunDir

if TYPE_CHECKING:
    from ominix.config import OminixConfig


def start(cfg: OminixConfig, *, dry_run: bool = False, events: Events | None = None) -> Outcome:
    """Run ``cfg``: validate it and its data, lock the run directory, write RUN_DIR/config.yaml,
    start the worker(s). ``dry_run`` starts, locks and writes nothing: the outcome's text is the
    plan (summary, commands, resolved config)."""
    events = events or Events()
    if cfg.launch.launcher == "slurm":
        return start_slurm(cfg, dry_run=dry_run, events=events)
    if not (cfg.launch.nodes > 1 or cfg.launch.hostfile):
        return start_local(cfg, dry_run=dry_run, events=events)
    import torch

    from ominix.train.engine import validate

    world = None
    if cfg.launch.nproc_per_node:
        world = cfg.launch.nodes * cfg.launch.nproc_per_node
        validate(cfg, world, torch.cuda.is_available() or dry_run)
    if dry_run:
        return launch_multinode(cfg, Path(cfg.logging.run_dir), dry_run=True, events=events)
    preflight(cfg, world)
    with RunDir(cfg, events.notice) as claimed, stop_signals() as received:
        try:
            outcome = launch_multinode(cfg, claimed.path, dry_run=False, events=events, prepare=claimed.write_config)
        except KeyboardInterrupt:  # before the nodes started
            outcome = Outcome(130)
        if outcome.code == 130 and received:
            outcome = Outcome(128 + received[0], outcome.text)
        return claimed.finish(outcome)


def start_slurm(cfg: OminixConfig, *, dry_run: bool, events: Events) -> Outcome:
    """Submit ``cfg`` as a SLURM job (one node or several; no hostfile): the run directory is
    locked while config.yaml and the sbatch file are written and the job submitted; the job itself
    holds the lock while it runs (``slurm_job``). ``dry_run``: the sbatch file only."""
    import torch

    from ominix.train.engine import validate

    launch = cfg.launch
    gpus = launch.nproc_per_node if launch.slurm.gpus_per_node is None else launch.slurm.gpus_per_node
    nproc = launch.nproc_per_node or (1 if not gpus else None)
    if nproc:  # otherwise each node counts its GPUs when the job starts
        validate(cfg, launch.nodes * nproc, bool(gpus) or torch.cuda.is_available() or dry_run)
    if dry_run:
        return slurm.write_sbatch(cfg, Path(cfg.logging.run_dir), dry_run=True)
    preflight(cfg, nproc and launch.nodes * nproc)  # the data and checkpoint the job will read
    with RunDir(cfg, events.notice) as claimed:
        claimed.write_config()
        return claimed.finish(slurm.write_sbatch(cfg, claimed.path, dry_run=False))


def launch(cfg: OminixConfig, events: Events | None = None) -> int:
    """Run ``cfg`` and return its exit code (for callers that show nothing else, e.g. the quickstart)."""
    return start(cfg, events=events).code


def launch_multinode(cfg: OminixConfig, run_dir: Path, *, dry_run: bool, events: Events | None = None,
                     prepare: Callable[[], None] = lambda: None) -> Outcome:
    """Launch ``cfg`` on the first ``launch.nodes`` hosts of ``launch.hostfile`` (or hand the job
    to ``colossalai run``, or write an sbatch script); ``dry_run`` returns the commands only.
    ``prepare`` (writing RUN_DIR/config.yaml) runs after the host checks, before any node starts."""
    from ominix.train.engine import validate

    events = events or Events()
    if cfg.launch.launcher == "slurm":
        if not dry_run:
            prepare()
        return slurm.write_sbatch(cfg, run_dir, dry_run=dry_run)
    targets, master = cluster(cfg, cfg.launch.nodes)
    gpus = None if dry_run else checked_gpus(cfg, targets, master, events.checks)
    nproc = multinode.nproc_per_node(cfg, targets, gpus)
    validate(cfg, len(targets) * nproc, dry_run or any(gpus or []))
    head = ""
    if dry_run:
        head = summary(cfg, nproc) + "\n"
        if not (cfg.launch.nproc_per_node or targets[0].host.slots):
            head += "# processes per node: 1 in a dry run; a real launch counts each node's GPUs\n"
    if not dry_run:
        prepare()
    if cfg.launch.launcher == "colossalai":
        outcome = colossalai_run.colossalai_run(cfg, run_dir, targets, master, nproc, dry_run=dry_run)
        return Outcome(outcome.code, head + outcome.text)
    nodes = [
        multinode.node_command(cfg, rank, t, torchrun_argv(
            remote_python(cfg), len(targets), rank, nproc, master[0], master[1],
            cfg.launch.rdzv_timeout, str(run_dir)))
        for rank, t in enumerate(targets)
    ]
    if dry_run:
        return Outcome(0, head + "\n\n".join(n.shown() for n in nodes) + "\n")
    return Outcome(multinode.run_nodes(cfg, nodes, run_dir / "logs", events))


def launch_from_cli(source: str | None, sets: list[str], flags: dict, *, dry_run: bool = False,
                    events: Events | None = None) -> Outcome:
    """Resolve the config (defaults < FILE/preset < --set < flags) and launch it."""
    return start(load_config(source, sets, flags), dry_run=dry_run, events=events)
