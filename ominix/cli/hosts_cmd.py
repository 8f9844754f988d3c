"""``ominix train check-hosts``: check every node of a hostfile over SSH before a launch."""

from __future__ import annotations

import typer

from ominix.cli.common import SET_OPTION


def register(app: typer.Typer) -> None:
    """Add ``check-hosts`` to the ``train`` command group."""
    app.command("check-hosts")(check_hosts)


def check_hosts(
    source: str = typer.Argument(None, help="Config file or preset; omitted = the defaults."),
    hostfile: str = typer.Option(None, "--hostfile", help="One host per line: [user@]host[:port] [slots=N]."),
    nodes: int = typer.Option(None, "--nodes", min=1, help="Check only the first N hosts (default: all)."),
    sets: list[str] = SET_OPTION,
    ssh_key: str = typer.Option(None, "--ssh-key", help="Private key file (default: agent, ~/.ssh)."),
    known_hosts: str = typer.Option(
        None, "--known-hosts", help="known_hosts file (default ~/.ssh/known_hosts)."
    ),
    accept_new: bool = typer.Option(
        None, "--accept-new-host-keys/--no-accept-new-host-keys",
        help="Trust and record host keys not yet in known_hosts (a changed key is always refused).",
    ),
    master_addr: str = typer.Option(None, "--master-addr", help="Rendezvous address (default: first host)."),
    master_port: int = typer.Option(None, "--master-port", help="Rendezvous port."),
    as_json: bool = typer.Option(False, "--json/--no-json", help="Print the results as JSON."),
) -> None:
    """Check every host over SSH, in parallel: login, host key, versions, GPUs, working directory,
    prepared data, free disk, master port. Exits 1 when any check fails.

    Examples:

      ominix train check-hosts tiny --hostfile hosts.txt

      ominix train check-hosts llama2-7b --hostfile hosts.txt --nodes 4 --json
    """
    from ominix.config import load_config
    from ominix.train.hostcheck import check_hosts as run_checks
    from ominix.train.hostcheck import cluster, print_table, reports_json

    cfg = load_config(source, sets, {
        "launch.hostfile": hostfile, "launch.ssh_key": ssh_key, "launch.known_hosts": known_hosts,
        "launch.accept_new_host_keys": accept_new, "launch.master_addr": master_addr,
        "launch.master_port": master_port,
    })
    targets, master = cluster(cfg, nodes)
    here, reports = run_checks(cfg, targets, master)
    if as_json:
        typer.echo(reports_json(here, reports))
    else:
        print_table(here, reports)
    if not all(r.ok for r in reports):
        raise typer.Exit(1)
