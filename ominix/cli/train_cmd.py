"""``ominix train``: launch a training run (``check-hosts`` is added by ``ominix.cli.hosts_cmd``, ``plot``
by ``ominix.cli.plot_cmd``)."""

from __future__ import annotations

import typer

from ominix.cli import hosts_cmd, plot_cmd
from ominix.cli.common import CONFIG_OPTION, PRESET_ARGUMENT, SET_OPTION, one_preset

app = typer.Typer(help="Train a model: launch runs, check hosts, plot a run.", no_args_is_help=True)
hosts_cmd.register(app)
plot_cmd.register(app)


@app.command("launch")
def launch(
    source: str = PRESET_ARGUMENT,
    config: str = CONFIG_OPTION,
    plugin: str = typer.Option(
        None, "--plugin", help="ColossalAI plugin: gemini, gemini_auto, zero2, zero2_cpu, 3d, ddp, fsdp."
    ),
    nproc_per_node: int = typer.Option(
        None, "--nproc-per-node", help="Processes on this node (default: GPUs found, 1 on CPU)."
    ),
    data: str = typer.Option(
        None, "--data", help="Prepared data directory (from `ominix data prepare`); needed unless --dry-run."
    ),
    out: str = typer.Option(
        None, "--out", "-o", help="Run directory: config, logs, metrics, checkpoints (default logging.run_dir)."
    ),
    run_dir: str = typer.Option(None, "--run-dir", hidden=True, help="Old name of --out."),
    max_steps: int = typer.Option(None, "--max-steps", help="Stop after this many optimizer steps."),
    attn: str = typer.Option(None, "--attn", help="Attention kernel: auto (flash-attn if installed), "
                                                  "flash, sdpa, cudnn."),
    recompute_activations: bool = typer.Option(
        None, "--recompute-activations/--no-recompute-activations",
        help="Keep fewer activations and recompute them in backward (less memory, more compute).",
    ),
    gradient_checkpointing: bool = typer.Option(
        None, "--gradient-checkpointing/--no-gradient-checkpointing", hidden=True,
        help="Old name of --recompute-activations.",
    ),
    resume: str = typer.Option(
        None, "--resume", help="auto (latest checkpoint of the run dir, if any), never (a new run, in a directory "
        "that holds none), restart (a new run; the directory's earlier run is moved into RUN_DIR/previous/TIME/), "
        "or a checkpoint path."
    ),
    nodes: int = typer.Option(
        None, "--nodes", help="Nodes to use: the first N hosts of the hostfile (without one: this machine only)."
    ),
    hostfile: str = typer.Option(None, "--hostfile", help=hosts_cmd.HOSTFILE_HELP),
    launcher: str = typer.Option(
        None, "--launcher", help="ominix (torchrun per node over SSH), colossalai (colossalai run), "
                                 "slurm (submitted with sbatch; launch.slurm.* settings)."
    ),
    master_addr: str = typer.Option(None, "--master-addr", help="Rendezvous address (default: the first host)."),
    master_port: int = typer.Option(None, "--master-port", help="Rendezvous port."),
    rdzv_timeout: int = typer.Option(None, "--rdzv-timeout", help="Seconds to wait for every node."),
    ssh_key: str = typer.Option(None, "--ssh-key", help="Private key file (default: agent and ~/.ssh)."),
    accept_new_host_keys: bool = typer.Option(
        None, "--accept-new-host-keys/--no-accept-new-host-keys",
        help="Trust and record unknown host keys (a changed key is always refused).",
    ),
    forward_env: list[str] = typer.Option(
        None, "--forward-env", help="Forward this variable to every node, e.g. HF_TOKEN (repeatable; never printed)."
    ),
    sets: list[str] = SET_OPTION,
    dry_run: bool = typer.Option(
        False, "--dry-run/--no-dry-run", help="Print the resolved config and the command; start nothing."
    ),
) -> None:
    """Train: in-process for one process, torchrun for several, one torchrun per node over SSH with a
    hostfile. Settings come from PRESET (`ominix config show PRESET` prints them), then --set, then flags.

    Examples:

      ominix train launch tiny --data data/tiny --out runs/tiny

      ominix train launch --config tiny --data data/tiny --nproc-per-node 2 --max-steps 50 --set optim.lr=1e-3

      ominix train launch llama2-7b --data data/slimpajama --plugin gemini --dry-run

      ominix train launch tiny --data data/tiny --out runs/tiny --resume auto

      ominix train launch tiny --data data/tiny --out runs/tiny --resume restart   # old run kept in runs/tiny/previous/

      ominix train launch tiny --data data/tiny --set "logging.profile_steps=[5, 6]"   # trace in RUN_DIR/profile

      ominix train launch llama2-7b --plugin gemini --nodes 4 --hostfile hosts.txt --data data/slimpajama --dry-run
    """
    from ominix.errors import OminixError
    from ominix.launch.events import Events
    from ominix.launch.run import launch_from_cli

    # node output and notices as plain lines (Events' defaults: stdout, stderr), the host checks as a table
    events = Events(checks=hosts_cmd.print_table)
    if out and run_dir and out != run_dir:
        raise OminixError(f"two run directories given: --out {out} and --run-dir {run_dir}",
                          "give it once, with --out (--run-dir is its old name)")
    outcome = launch_from_cli(one_preset(source, config), sets, {
        "parallel.plugin": plugin, "launch.nproc_per_node": nproc_per_node, "data.path": data,
        "logging.run_dir": out or run_dir, "schedule.max_steps": max_steps, "checkpoint.resume": resume,
        "model.attn": attn, "model.recompute_activations": recompute_activations,
        "model.gradient_checkpointing": gradient_checkpointing,  # read as the new key, with a notice
        "launch.nodes": nodes, "launch.hostfile": hostfile, "launch.launcher": launcher,
        "launch.master_addr": master_addr, "launch.master_port": master_port,
        "launch.rdzv_timeout": rdzv_timeout, "launch.ssh_key": ssh_key,
        "launch.accept_new_host_keys": accept_new_host_keys, "launch.forward_env": forward_env or None,
    }, dry_run=dry_run, events=events)
    if outcome.text:
        typer.echo(outcome.text, nl=False)
    if outcome.code:
        raise typer.Exit(outcome.code)
