"""``ominix train check-hosts``: check every node of a hostfile over SSH before a launch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from ominix.cli.common import CONFIG_OPTION, PRESET_ARGUMENT, SET_OPTION, one_preset

if TYPE_CHECKING:
    from ominix.launch.hostcheck import HostReport


HOSTFILE_HELP = ("One host per line: [user@]host[:port] [slots=N] [max_slots=N] (OpenMPI, DeepSpeed and "
                 "`colossalai run` hostfiles read as they are).")


def register(app: typer.Typer) -> None:
    """Add ``check-hosts`` to the ``train`` command group."""
    app.command("check-hosts")(check_hosts)


def check_hosts(
    source: str = PRESET_ARGUMENT,
    config: str = CONFIG_OPTION,
    hostfile: str = typer.Option(None, "--hostfile", help=HOSTFILE_HELP),
    nodes: int = typer.Option(None, "--nodes", help="Check only the first N hosts (default: all)."),
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
    nproc: int = typer.Option(None, "--nproc-per-node", help="Processes per node of the collective (default: "
                              "the hostfile's slots, else the GPUs found, else 1)."),
    collective: bool = typer.Option(
        True, "--collective/--no-collective",
        help="Once the checks pass, run all_reduce across every node through torchrun (NCCL on GPUs, gloo on "
             "CPUs) and report each node's bus bandwidth, naming a slow or broken node.",
    ),
    as_json: bool = typer.Option(False, "--json/--no-json", help="Print the results as JSON."),
) -> None:
    """Check every host over SSH, in parallel: login, host key, versions, GPUs, working directory,
    prepared data, free disk, master port; then a short all_reduce across all nodes (one torchrun
    per node, as `train launch` starts them) with each node's bus bandwidth. Exits 1 when any check
    fails, 100 + N when node N fails the collective.

    Examples:

      ominix train check-hosts tiny --hostfile hosts.txt

      ominix train check-hosts llama2-7b --hostfile hosts.txt --nodes 4 --json

      ominix train check-hosts llama2-7b --hostfile hosts.txt --no-collective

      ominix train check-hosts --config llama2-7b --hostfile hosts.txt
    """
    from ominix.config import load_config
    from ominix.launch.bandwidth import check_cluster
    from ominix.launch.hostcheck import reports_json

    cfg = load_config(one_preset(source, config), sets, {
        "launch.hostfile": hostfile, "launch.ssh_key": ssh_key, "launch.known_hosts": known_hosts,
        "launch.accept_new_host_keys": accept_new, "launch.master_addr": master_addr,
        "launch.master_port": master_port, "launch.nproc_per_node": nproc,
    })
    here, reports, measured = check_cluster(cfg, nodes, collective,
                                            show=(lambda here, reports: None) if as_json else print_table)
    if as_json:
        typer.echo(reports_json(here, reports, measured))
    elif measured is not None:
        print_bandwidth(measured)
    if not all(r.ok for r in reports):
        raise typer.Exit(1)


def print_bandwidth(result: dict[str, Any]) -> None:
    """The collective's bus bandwidth, overall and per node, and the slow node if one stands out."""
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=True)
    sizes = ", ".join(f"{r['bytes'] / 2**20:g} MiB {r['bus_gbps']:.2f}" for r in result["all"])
    console.print(f"all_reduce over {result['world']} ranks on {result['nodes']} nodes ({result['backend']}), "
                  f"bus GB/s: {sizes}", markup=False)
    table = Table(title="bus bandwidth per node (GB/s)")
    for col in ("node", "host", "hostname", "link (to a neighbour)", "within the node"):
        table.add_column(col)
    for n in result["per_node"]:
        table.add_row(str(n["node"]), n["target"], n["host"], _gbps(n["link_gbps"]), _gbps(n["local_gbps"]))
    console.print(table)
    slow = result["slowest"]
    if slow is not None:
        console.print(f"[bold red]slowest node: {slow['node']} ({slow['target']})[/], link {slow['link_gbps']:.2f} "
                      "GB/s; check its network (cable, NIC, switch port) before a long run")
    elif result["nodes"] > 2:
        console.print("no node stands out")


def _gbps(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _cell(r: HostReport, check: str, text: str) -> str:
    from rich.markup import escape

    bad = [p for p in r.problems if p.check == check]
    return f"[red]{escape('; '.join(p.message for p in bad))}[/]" if bad else escape(text)


def print_table(here: dict[str, Any], reports: list[HostReport]) -> None:
    """The host checks as a table, then each problem with its hint."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="host checks", show_lines=False)
    for col in ("node", "host", "ssh", "versions", "gpus", "workdir", "data", "disk free", "master"):
        table.add_column(col, overflow="fold")
    for r in reports:
        f = r.facts
        if f.get("ssh") != "ok" or "python" not in f:
            table.add_row(str(r.node), r.host, _cell(r, "ssh", "ok"), _cell(r, "python", "-"),
                          *["-"] * 5)
            continue
        names = sorted(set(f["gpus"] or []))
        table.add_row(
            str(r.node), r.host, "ok", _cell(r, "versions", "same"),
            _cell(r, "gpus", f"{r.gpus} {', '.join(names)}".strip()),
            _cell(r, "workdir", "ok"), _cell(r, "data", "same" if f.get("manifest") else "n/a"),
            _cell(r, "disk", f"{f['disk_free'] / 2**30:.0f} GiB"),
            _cell(r, "master", "reachable" if f["master"] == "open" else "-"),
        )
    console = Console(highlight=False, soft_wrap=True)
    console.print(table)
    for r in reports:
        for p in r.problems:
            console.print(f"[bold red]{escape(r.host)}[/] {p.check}: {escape(p.message)}\n"
                          f"  [bold]hint:[/] {escape(p.hint)}", markup=True)
