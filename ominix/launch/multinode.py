"""Multi-node launch: check the hosts, then one torchrun per node over SSH, failing fast.

Every node, node 0 included, is started over SSH. The launching machine is often a login node
that is not in the hostfile, and even when it is, going through SSH gives node 0 exactly the
environment of the others (login PATH, the explicit variables below) instead of whatever this shell
holds, and one way to stop it. Each node runs ``python -m ominix.train.nodeguard`` (see there),
which gives torchrun an explicit, minimal environment, takes secrets from stdin and kills the
node's process group when the launcher stops it or the connection drops.

Exit codes: 0 when every node succeeded; ``100 + N`` when node N failed first (its exit status or a
lost connection), the others having been stopped; 130 after Ctrl-C.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import re
import shlex
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ominix.errors import OminixError
from ominix.train.ssh import Target, connect

if TYPE_CHECKING:
    import paramiko

    from ominix.config import OminixConfig

# Variables a node keeps from its own login environment; everything else is set explicitly.
KEEP_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TMPDIR", "LD_LIBRARY_PATH", "CUDA_HOME")
# torchrun gives its workers this long after SIGTERM before SIGKILL; the node guard waits longer
# (GRACE_S) before killing torchrun, and the launcher longer still for the guards to report.
BASE_ENV = {"PYTHONUNBUFFERED": "1", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "15"}
EXIT_NODE_FAILED = 100
STOP_GRACE_S = 35.0
# A host that hangs or vanishes from the network keeps its TCP connection "open" for many minutes;
# a node whose sshd has not answered a keepalive request for HEARTBEAT_TIMEOUT_S counts as dropped.
HEARTBEAT_S = 5.0
HEARTBEAT_TIMEOUT_S = 60.0
LOST = -2  # the status of a node that stopped answering


@dataclass
class NodeCommand:
    """One node's remote command; ``secrets`` go to its stdin, never onto a command line."""

    rank: int
    target: Target
    command: str
    secrets: dict[str, str] = field(default_factory=dict)

    def shown(self) -> str:
        """The exact command, with the names (not the values) of what goes on stdin."""
        t = self.target
        lines = [f"# node {self.rank}: ssh -p {t.port} {t.user}@{t.address}", self.command]
        if self.secrets:
            lines.append("# on stdin: " + " ".join(f"{k}=****" for k in sorted(self.secrets)))
        return "\n".join(lines)


def node_env(cfg: OminixConfig, target: Target) -> dict[str, str]:
    """BASE_ENV and launch.GPU_ENV < node_env['*'] < node_env[hostname] < node_env[host:port]."""
    from ominix.train.launch import GPU_ENV

    env = {**BASE_ENV, **GPU_ENV}
    for key in ("*", target.host.hostname, target.label):
        env.update(cfg.launch.node_env.get(key, {}))
    return env


def is_secret(name: str) -> bool:
    """Names such as HF_TOKEN, WANDB_API_KEY, AWS_SECRET_ACCESS_KEY: never on a command line."""
    return re.search(r"TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|CREDENTIAL", name.upper()) is not None


def forwarded(cfg: OminixConfig) -> dict[str, str]:
    missing = [k for k in cfg.launch.forward_env if k not in os.environ]
    if missing:
        raise OminixError(f"launch.forward_env names {', '.join(missing)}, not set here",
                          "export it before launching, or drop it from launch.forward_env")
    return {k: os.environ[k] for k in cfg.launch.forward_env}


def node_command(cfg: OminixConfig, rank: int, target: Target, argv: list[str]) -> NodeCommand:
    """``cd WORKDIR && exec PYTHON -m ominix.train.nodeguard ... -- ARGV``, every word quoted."""
    from ominix.train.hostcheck import remote_python, workdir

    guard = [remote_python(cfg), "-m", "ominix.train.nodeguard", "--keep", ",".join(KEEP_ENV)]
    secrets = forwarded(cfg)
    for key, value in node_env(cfg, target).items():
        if is_secret(key):
            secrets[key] = value
        else:
            guard += ["--env", f"{key}={value}"]
    command = f"cd {shlex.quote(workdir(cfg))} && exec {shlex.join([*guard, '--', *argv])}"
    return NodeCommand(rank, target, command, secrets)


def log_name(target: Target) -> str:
    return target.label.replace(":", "_") + ".log"


class _Node:
    """A started node: its SSH channel, and a thread copying its output to the log and stdout."""

    def __init__(self, node: NodeCommand, client: paramiko.SSHClient, log: Path,
                 events: queue.Queue, print_lock: threading.Lock) -> None:
        self.node = node
        self.tail: collections.deque[str] = collections.deque(maxlen=80)
        self.channel = client.get_transport().open_session()
        self.channel.set_combine_stderr(True)
        self.channel.exec_command(node.command)
        self.channel.sendall((json.dumps(node.secrets) + "\n").encode())
        self.last_reply = time.monotonic()
        threading.Thread(target=self._pump, args=(log, events, print_lock), daemon=True).start()
        threading.Thread(target=self._heartbeat, daemon=True).start()

    def _heartbeat(self) -> None:
        transport = self.channel.get_transport()
        while transport.is_active() and not self.channel.closed:
            transport.global_request("keepalive@openssh.com", wait=True)  # any reply will do
            self.last_reply = time.monotonic()
            time.sleep(HEARTBEAT_S)

    def silent_for(self) -> float:
        return time.monotonic() - self.last_reply

    def _pump(self, log: Path, events: queue.Queue, print_lock: threading.Lock) -> None:
        prefix = f"[{self.node.target.label}] "
        pending = b""
        with log.open("ab") as fh:
            while chunk := self.channel.recv(65536):
                fh.write(chunk)
                fh.flush()
                *lines, pending = (pending + chunk).split(b"\n")
                with print_lock:
                    for line in lines:
                        self.tail.append(line.decode(errors="replace"))
                        print(prefix + self.tail[-1], flush=True)
            if pending:
                self.tail.append(pending.decode(errors="replace"))
                with print_lock:
                    print(prefix + self.tail[-1], flush=True)
        # -1: the channel closed without an exit status (host or network dropped)
        status = self.channel.recv_exit_status()
        events.put((self.node.rank, status))

    def stop(self) -> None:
        """EOF on the guard's stdin: it stops the node's process group."""
        if not self.channel.closed:
            self.channel.shutdown_write()


def _cause(tail: collections.abc.Iterable[str]) -> str:
    """The reason a node gave: the worker's own error line, or torchrun's root-cause summary."""
    lines = [line.strip() for line in tail if line.strip()]
    ours = [line for line in lines if line.startswith("error (rank")]
    if ours:
        return ours[-1]
    fields = dict(re.findall(r"^(rank|exitcode|traceback)\s*:\s*(.+)$", "\n".join(lines), re.M))
    if fields:
        return "; ".join(f"{k} {v}" for k, v in fields.items() if v != "<N/A>")
    return lines[-1] if lines else ""


def _describe(status: int) -> str:
    if status == LOST:
        return (f"its SSH connection stopped answering for {HEARTBEAT_TIMEOUT_S:g} s "
                "(host hung or network lost)")
    if status == -1:
        return "no exit status came back (its node guard was killed, or the host or network dropped)"
    if status > 128:
        return f"killed by signal {status - 128}"
    return f"exit status {status}"


def run_nodes(cfg: OminixConfig, nodes: list[NodeCommand], log_dir: Path) -> int:
    """Start every node's command, stream its output, and stop all nodes when one fails."""
    from concurrent.futures import ThreadPoolExecutor

    log_dir.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=min(32, len(nodes))) as pool:
        clients = list(pool.map(lambda n: connect(n.target, cfg.launch), nodes))
    events: queue.Queue = queue.Queue()
    lock = threading.Lock()
    started: list[_Node] = []
    running: set[int] = set()
    failed: tuple[int, int] | None = None
    try:
        for node, client in zip(nodes, clients):
            started.append(_Node(node, client, log_dir / log_name(node.target), events, lock))
            running.add(node.rank)
        while running:
            try:
                rank, status = events.get(timeout=0.5)
            except queue.Empty:
                lost = [n.node.rank for n in started if n.node.rank in running
                        and n.silent_for() > HEARTBEAT_TIMEOUT_S]
                if not lost:
                    continue
                rank, status = lost[0], LOST
            running.discard(rank)
            if status != 0 and failed is None:
                failed = (rank, status)
                _stop_all(started, running, events)
                running.clear()
    except KeyboardInterrupt:
        print("interrupted: stopping every node", file=sys.stderr, flush=True)
        _stop_all(started, running, events)
        return 130
    finally:  # closing the connections is also what stops a guard if anything above raised
        for client in clients:
            client.close()
    if failed is None:
        return 0
    rank, status = failed
    label = nodes[rank].target.label
    cause = _cause(started[rank].tail)
    print(f"error: node {rank} ({label}) failed first: {_describe(status)}"
          f"{f' ({cause})' if cause else ''}; stopped the other nodes\n"
          f"hint: see {log_dir / log_name(nodes[rank].target)}", file=sys.stderr, flush=True)
    return EXIT_NODE_FAILED + rank


def _stop_all(started: list[_Node], running: set[int], events: queue.Queue) -> None:
    for n in started:
        if n.node.rank in running:
            n.stop()
    deadline = time.monotonic() + STOP_GRACE_S
    while running and time.monotonic() < deadline:
        try:
            running.discard(events.get(timeout=0.5)[0])
        except queue.Empty:
            pass


def nproc_per_node(cfg: OminixConfig, targets: list[Target], gpus: list[int] | None) -> int:
    """``launch.nproc_per_node``, else the hostfile's slots, else the GPUs found (1 without GPUs);
    every node must agree."""
    if cfg.launch.nproc_per_node:
        return cfg.launch.nproc_per_node
    counts = [t.host.slots or (gpus[i] if gpus else 0) or 1 for i, t in enumerate(targets)]
    if len(set(counts)) > 1:
        listing = ", ".join(f"{t.label}={c}" for t, c in zip(targets, counts))
        raise OminixError(f"the nodes offer different process counts ({listing})",
                          "set --nproc-per-node (or equal slots=N in the hostfile)")
    return counts[0]


def checked_gpus(cfg: OminixConfig, targets: list[Target], master: tuple[str, int]) -> list[int]:
    """Run the host checks, print the table, raise when any host fails; the GPUs of each node."""
    from ominix.train.hostcheck import check_hosts, print_table

    here, reports = check_hosts(cfg, targets, master)
    print_table(here, reports)
    bad = [r.host for r in reports if not r.ok]
    if bad:
        raise OminixError(f"{len(bad)} of {len(reports)} hosts failed the checks: {', '.join(bad)}",
                          "fix what the table shows; `ominix train check-hosts` re-runs the checks",
                          exit_code=1)
    return [r.gpus for r in reports]


def launch_multinode(cfg: OminixConfig, run_dir: Path, *, dry_run: bool) -> int:
    """Launch ``cfg`` on the first ``launch.nodes`` hosts of ``launch.hostfile`` (or hand the job
    to ``colossalai run``, or write an sbatch script); ``dry_run`` prints the commands only."""
    from ominix.train.engine import validate
    from ominix.train.hostcheck import cluster, remote_python
    from ominix.train.launch import summary, torchrun_argv

    if cfg.launch.launcher == "slurm":
        from ominix.train.slurm import write_sbatch

        return write_sbatch(cfg, run_dir, dry_run=dry_run)
    targets, master = cluster(cfg, cfg.launch.nodes)
    gpus = None if dry_run else checked_gpus(cfg, targets, master)
    nproc = nproc_per_node(cfg, targets, gpus)
    validate(cfg, len(targets) * nproc, dry_run or any(gpus or []))
    if dry_run:
        print(summary(cfg, nproc))
        if not (cfg.launch.nproc_per_node or targets[0].host.slots):
            print("# processes per node: 1 in a dry run; a real launch counts each node's GPUs")
    if cfg.launch.launcher == "colossalai":
        from ominix.train.colossalai_launcher import colossalai_run

        return colossalai_run(cfg, run_dir, targets, master, nproc, dry_run=dry_run)
    nodes = [
        node_command(cfg, rank, t, torchrun_argv(
            remote_python(cfg), len(targets), rank, nproc, master[0], master[1],
            cfg.launch.rdzv_timeout, str(run_dir)))
        for rank, t in enumerate(targets)
    ]
    if dry_run:
        print("\n\n".join(n.shown() for n in nodes))
        return 0
    return run_nodes(cfg, nodes, run_dir / "logs")
