"""Start a training run: the one place that chooses how. ``--launcher slurm`` submits a job
(``slurm``); without a hostfile a run is one machine (``local``); a hostfile's nodes go to
``multinode`` (torchrun per node over SSH) or ``colossalai_run`` (``colossalai run``), after the
config and data checks and then every host over SSH.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ominix.config import load_config
from ominix.errors import OminixError
from ominix.launch import colossalai_run, multinode, slurm
from ominix.launch.command import remote_python, summary, torchrun_argv
from ominix.launch.events import Events, Outcome
from ominix.launch.hostcheck import checked_gpus, cluster
from ominix.launch.hosts import FORMAT, parse_hostfile, select_hosts
from ominix.launch.torchrun import stop_signals
from ominix.launch.local import start_local
from ominix.launch.preflight import preflight
from ominix.launch.rundir import RunDir
from ominix.launch.relaunch import Relauncher
from ominix.train.parallel_layout import LayoutError, derive_layout, validate, with_global_batch

if TYPE_CHECKING:
    from ominix.config import OminixConfig


def start(cfg: OminixConfig, *, dry_run: bool = False, events: Events | None = None,
          nodes_flag: int | None = None) -> Outcome:
    """Run ``cfg``: validate it and its data, lock the run directory, write RUN_DIR/config.yaml,
    start the worker(s). ``dry_run`` starts, locks and writes nothing: the outcome's text is the
    plan (summary, commands, resolved config).

    Without a hostfile a launch runs on this machine: one node, whatever ``launch.nodes`` a preset
    says (the plan says so); ``nodes_flag`` (``--nodes N`` typed on the command line) above 1 then
    asks for hosts, refused once the config and data checks passed. A multi-node launch checks
    everything the config and data decide before it reaches any host over SSH."""
    events = events or Events()
    for notice in cfg.notices():  # old key names (RUN_DIR/config.yaml, which the worker reads, has the new)
        events.notice(notice)
    if cfg.launch.launcher == "slurm":
        return start_slurm(cfg, dry_run=dry_run, events=events)
    if not cfg.launch.hostfile:
        if (nodes_flag or 1) > 1:
            check_before_hosts(cfg, dry_run)
            raise OminixError(f"--nodes {nodes_flag} needs a hostfile naming the nodes",
                              f"pass --hostfile FILE (one host per line: {FORMAT}), "
                              "or leave out --nodes to train on this machine")
        note, nodes = None, cfg.launch.nodes
        if nodes > 1:
            note = (f"note: launch.nodes is {nodes} but no hostfile is given: "
                    "this launch runs on this machine only (one node)")
            cfg = cfg.model_copy(update={"launch": cfg.launch.model_copy(update={"nodes": 1})})
            if not dry_run:
                events.notice(note)
        try:
            outcome = start_local(cfg, dry_run=dry_run, events=events)
        except LayoutError as exc:
            if note is None:
                raise
            raise OminixError(f"{exc.message}: the config is laid out for {nodes} nodes, and without a hostfile "
                              "it runs on this machine alone",
                              f"pass --hostfile FILE naming its {nodes} nodes (one host per line: {FORMAT}); "
                              f"or {exc.hint}") from exc
        return Outcome(outcome.code, f"{note}\n{outcome.text}") if note and dry_run else outcome
    world = check_before_hosts(cfg, dry_run)
    if dry_run:
        return launch_multinode(cfg, Path(cfg.logging.run_dir), dry_run=True, events=events)
    with RunDir(cfg, events.notice) as claimed, stop_signals() as received:
        try:
            outcome = launch_multinode(cfg, claimed.path, dry_run=False, events=events, prepare=claimed.write_config)
        except KeyboardInterrupt:  # before the nodes started
            outcome = Outcome(130)
        if outcome.code == 130 and received:
            outcome = Outcome(128 + received[0], outcome.text)
        return claimed.finish(outcome)


def check_before_hosts(cfg: OminixConfig, dry_run: bool) -> int | None:
    """What a multi-node launch can refuse before it reaches any host (what ``--dry-run`` shows):
    the batch layout and, for a real launch, the prepared data and the resume target. With
    processes per node unknown (counted on the nodes later) the layout is checked at the
    smallest world the nodes can form, where a batch that does not divide fails for any GPU count.
    Returns the world size when it is known."""
    nodes, p = cfg.launch.nodes, cfg.parallel
    slots = set()
    if cfg.launch.hostfile:  # read here; the hosts are reached later
        hosts = parse_hostfile(cfg.launch.hostfile, cfg.launch.ssh_port)
        slots = {h.slots for h in select_hosts(hosts, nodes, cfg.launch.hostfile)}
    nproc = cfg.launch.nproc_per_node or (slots.pop() if len(slots) == 1 else None)
    world = None
    if nproc:
        world = nodes * nproc
        validate(cfg, world, True)  # the nodes' GPUs are checked over SSH
    else:
        smallest = math.lcm(nodes, p.tp * p.pp)  # pipeline micro batches depend on the real dp: not here
        derive_layout(cfg.model_copy(update={"parallel": p.model_copy(update={"num_microbatches": None})}),
                      smallest)
    if not dry_run:
        preflight(cfg, world)
    return world


def start_slurm(cfg: OminixConfig, *, dry_run: bool, events: Events) -> Outcome:
    """Submit ``cfg`` as a SLURM job (one node or several; no hostfile): the run directory is
    locked while config.yaml and the sbatch file are written and the job submitted; the job itself
    holds the lock while it runs (``slurm_job``). ``dry_run``: the sbatch file only."""
    import torch

    launch = cfg.launch
    gpus = launch.nproc_per_node if launch.slurm.gpus_per_node is None else launch.slurm.gpus_per_node
    nproc = launch.nproc_per_node or (1 if not gpus else None)
    if nproc:  # otherwise each node counts its GPUs when the job starts (and the worker resolves the batch)
        cfg = with_global_batch(cfg, validate(cfg, launch.nodes * nproc, bool(gpus) or torch.cuda.is_available()
                                              or dry_run))
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
                     prepare: Callable[[OminixConfig], None] = lambda cfg: None) -> Outcome:
    """Launch ``cfg`` on the first ``launch.nodes`` hosts of ``launch.hostfile`` (or hand the job
    to ``colossalai run``); ``dry_run`` returns the commands only.
    ``prepare(cfg)`` (writing RUN_DIR/config.yaml, the global batch resolved) runs after the host
    checks, before any node starts."""
    events = events or Events()
    targets, master = cluster(cfg, cfg.launch.nodes)
    gpus = None if dry_run else checked_gpus(cfg, targets, master, events.checks)
    nproc = multinode.nproc_per_node(cfg, targets, gpus)
    cfg = with_global_batch(cfg, validate(cfg, len(targets) * nproc, dry_run or any(gpus or [])))
    head = ""
    if dry_run:
        head = summary(cfg, nproc) + "\n"
        if not (cfg.launch.nproc_per_node or targets[0].host.slots):
            head += "# processes per node: 1 in a dry run; a real launch counts each node's GPUs\n"
    if not dry_run:
        prepare(cfg)
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
    relauncher = Relauncher(cfg, run_dir, events, prepare)
    return Outcome(relauncher.run(lambda: multinode.run_nodes(cfg, nodes, run_dir / "logs", events)))


def launch_from_cli(source: str | None, sets: list[str], flags: dict, *, dry_run: bool = False,
                    events: Events | None = None) -> Outcome:
    """Resolve the config (defaults < FILE/preset < --set < flags) and launch it."""
    return start(load_config(source, sets, flags), dry_run=dry_run, events=events,
                 nodes_flag=flags.get("launch.nodes"))
