"""Multi-node launch: check the hosts, then one torchrun per node over SSH, failing fast.

Every node, node 0 included, is started over SSH. The launching machine is often a login node
that is not in the hostfile, and even when it is, going through SSH gives node 0 exactly the
environment of the others (login PATH, the explicit variables below) instead of whatever this shell
holds, and one way to stop it. Each node runs ``python -m ominix.launch.nodeguard`` (see there),
which gives torchrun an explicit, minimal environment, takes secrets from stdin and stops the
node when the launcher asks (a ``stop`` or ``kill`` line on its stdin) or the connection drops.

A stop gives the workers ``launch.stop_timeout`` seconds to save a checkpoint and exit; a second
Ctrl-C (or SIGTERM) while the launcher waits for that sends ``kill`` to every node. When a node
fails, the others are stopped the same way, or killed at once when its workers' hang watchdog
ended it (a hung run has nothing to save). A guard that answers no ``kill`` within
``KILL_WAIT_S`` (a frozen node: its processes stopped) is killed with everything under it through
a new SSH channel, so the launcher always returns.

``run_nodes`` returns 0 when every node succeeded and 130 after Ctrl-C; when node N failed first
(its exit status or a lost connection) it stops the others and raises :class:`NodeFailed`, whose
exit code is ``100 + N``. Node output goes, line by line, to the caller's ``Events.line``.
"""

from __future__ import annotations

import collections
import contextlib
import json
import queue
import re
import shlex
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ominix.errors import OminixError
from ominix.launch.torchrun_output import TorchrunFilter, is_torch_log
from ominix.launch.command import KEEP_ENV, every_node_env, forwarded, is_secret, remote_python, workdir
from ominix.launch.events import Events
from ominix.launch.nodeguard import GUARD_PID
from ominix.launch.ssh import Target, connect
from ominix.train.watchdog import EXIT_HUNG

if TYPE_CHECKING:
    import paramiko

    from ominix.config import OminixConfig

EXIT_NODE_FAILED = 100
STOP_MARGIN_S = 10.0  # the launcher waits launch.stop_timeout + this for the guards to report
KILL_WAIT_S = 5.0  # after ``kill``: how long the launcher waits for the nodes to report
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
    killer: str = ""  # kills a guard and all under it, once the guard's pid is appended

    def shown(self) -> str:
        """The exact command, with the names (not the values) of what goes on stdin."""
        t = self.target
        lines = [f"# node {self.rank}: ssh -p {t.port} {t.user}@{t.address}", self.command]
        if self.secrets:
            lines.append("# on stdin: " + " ".join(f"{k}=****" for k in sorted(self.secrets)))
        return "\n".join(lines)


class NodeFailed(OminixError):
    """Node ``rank`` failed first; the others were stopped. Exit code ``100 + rank``;
    ``worker_exit`` is the exit code of the worker torchrun named as the root cause, if any."""

    def __init__(self, rank: int, message: str, hint: str, worker_exit: int | None = None) -> None:
        super().__init__(message, hint, exit_code=EXIT_NODE_FAILED + rank)
        self.rank = rank
        self.worker_exit = worker_exit


def node_env(cfg: OminixConfig, target: Target) -> dict[str, str]:
    """BASE_ENV < launch.env < node_env['*'] < node_env[hostname] < node_env[host:port]."""
    env = every_node_env(cfg)
    for key in (target.host.hostname, target.label):
        env.update(cfg.launch.node_env.get(key, {}))
    return env


def node_command(cfg: OminixConfig, rank: int, target: Target, argv: list[str]) -> NodeCommand:
    """``cd WORKDIR && exec PYTHON -m ominix.launch.nodeguard ... -- ARGV``, every word quoted."""
    guard = [remote_python(cfg), "-m", "ominix.launch.nodeguard", "--keep", ",".join(KEEP_ENV),
             "--grace", f"{cfg.launch.stop_timeout:g}"]
    secrets = forwarded(cfg)
    for key, value in node_env(cfg, target).items():
        if is_secret(key):
            secrets[key] = value
        else:
            guard += ["--env", f"{key}={value}"]
    cd = f"cd {shlex.quote(workdir(cfg))} && exec "
    killer = cd + shlex.join([remote_python(cfg), "-m", "ominix.launch.nodeguard", "--kill-tree"])
    return NodeCommand(rank, target, cd + shlex.join([*guard, "--", *argv]), secrets, killer)


def log_name(target: Target) -> str:
    return target.label.replace(":", "_") + ".log"


class _Node:
    """A started node: its SSH channel, and a thread copying its output to the log and ``show``."""

    def __init__(self, node: NodeCommand, client: paramiko.SSHClient, log: Path,
                 events: queue.Queue, show: Events, show_lock: threading.Lock) -> None:
        self.node = node
        self.tail: collections.deque[str] = collections.deque(maxlen=80)
        self.channel = client.get_transport().open_session()
        self.channel.set_combine_stderr(True)
        self.channel.exec_command(node.command)
        self.channel.sendall((json.dumps(node.secrets) + "\n").encode())
        self.last_reply = time.monotonic()
        self.guard_pid: int | None = None
        threading.Thread(target=self._pump, args=(log, events, show, show_lock), daemon=True).start()
        threading.Thread(target=self._heartbeat, daemon=True).start()

    def _heartbeat(self) -> None:
        transport = self.channel.get_transport()
        while transport.is_active() and not self.channel.closed:
            transport.global_request("keepalive@openssh.com", wait=True)  # any reply will do
            self.last_reply = time.monotonic()
            time.sleep(HEARTBEAT_S)

    def silent_for(self) -> float:
        return time.monotonic() - self.last_reply

    def _pump(self, log: Path, events: queue.Queue, show: Events, show_lock: threading.Lock) -> None:
        """Copy the node's output to its log as it comes and show it line by line; torchrun's own
        tracebacks and failure tables are kept out of the console as on one node (the log and
        ``tail``, from which the cause is read, keep every line), unless tracebacks are wanted."""
        from ominix.console import debug_enabled

        prefix = f"[{self.node.target.label}] "
        console = None if debug_enabled() else TorchrunFilter()

        def show_lines(lines: list[str]) -> None:
            for line in lines:
                self.tail.append(line)
            for line in (lines if console is None else [kept for raw in lines for kept in console.feed(raw)]):
                show.line(prefix + line)

        pending = b""
        with log.open("ab") as fh:
            while chunk := self.channel.recv(65536):
                fh.write(chunk)
                fh.flush()
                *lines, pending = (pending + chunk).split(b"\n")
                text = []
                for line in lines:
                    if line.startswith(GUARD_PID.encode()):
                        self.guard_pid = int(line.split()[-1])
                    else:
                        text.append(line.decode(errors="replace"))
                with show_lock:
                    show_lines(text)
            with show_lock:
                show_lines([pending.decode(errors="replace")] if pending else [])
                if console is not None:
                    for line in console.flush():
                        show.line(prefix + line)
        # -1: the channel closed without an exit status (host or network dropped)
        status = self.channel.recv_exit_status()
        events.put((self.node.rank, status))

    def stop(self) -> None:
        """The guard stops the node gracefully: its workers save a checkpoint and exit."""
        self._send(b"stop\n")

    def kill(self) -> None:
        """The guard kills the node's processes at once."""
        self._send(b"kill\n")

    def kill_tree(self, timeout: float) -> None:
        """SIGKILL to the guard and everything under it, through a new SSH channel: a frozen
        node's guard (its processes stopped) reads no ``kill``, but the node's sshd still answers."""
        if self.guard_pid is None or self.channel.closed:
            return
        import paramiko

        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            killer = self.channel.get_transport().open_session(timeout=timeout)
            killer.exec_command(f"{self.node.killer} {self.guard_pid}")
            killer.status_event.wait(timeout)

    def _send(self, request: bytes) -> None:
        if not self.channel.closed:
            with contextlib.suppress(OSError, EOFError):  # the connection is gone: the guard stops
                self.channel.sendall(request)


def _cause(tail: collections.abc.Iterable[str]) -> str:
    """The reason a node gave: the worker's own error line, torchrun's root-cause summary, or the
    last line that names an error; "" when the node said none (e.g. its torchrun was killed)."""
    lines = [line.strip() for line in tail if line.strip() and not is_torch_log(line)]
    ours = [line for line in lines if line.startswith("error (rank")]
    if ours:
        return ours[-1]
    fields = dict(re.findall(r"^(rank|exitcode|traceback)\s*:\s*(.+)$", "\n".join(lines), re.M))
    if fields:
        return "; ".join(f"{k} {v}" for k, v in fields.items() if v != "<N/A>")
    said = [line for line in lines if re.search(r"error|exception|killed", line, re.I)]
    return said[-1] if said else ""  # a training log line would say nothing about the failure


def _worker_exit(tail: collections.abc.Iterable[str]) -> int | None:
    """The exit code of torchrun's root cause (the last ``exitcode :`` of its failure table)."""
    codes = re.findall(r"^\s*exitcode\s*:\s*(-?\d+)", "\n".join(tail), re.M)
    return int(codes[-1]) if codes else None


def _describe(status: int) -> str:
    if status == LOST:
        return (f"its SSH connection stopped answering for {HEARTBEAT_TIMEOUT_S:g} s "
                "(host hung or network lost)")
    if status == -1:
        return "no exit status came back (its node guard was killed, or the host or network dropped)"
    if status > 128:
        return f"killed by signal {status - 128}"
    return f"exit status {status}"


def run_nodes(cfg: OminixConfig, nodes: list[NodeCommand], log_dir: Path, show: Events | None = None) -> int:
    """Start every node's command, stream its output to ``show``, and stop all nodes when one
    fails (then raise :class:`NodeFailed`); 0 when all succeeded, 130 after Ctrl-C."""
    from concurrent.futures import ThreadPoolExecutor

    show = show or Events()
    log_dir.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=min(32, len(nodes))) as pool:
        clients = list(pool.map(lambda n: connect(n.target, cfg.launch), nodes))
    events: queue.Queue = queue.Queue()
    lock = threading.Lock()
    started: list[_Node] = []
    running: set[int] = set()
    failed: tuple[int, int] | None = None
    grace = cfg.launch.stop_timeout + STOP_MARGIN_S
    stopping = False
    try:
        for node, client in zip(nodes, clients):
            started.append(_Node(node, client, log_dir / log_name(node.target), events, show, lock))
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
                stopping = True
                # the others of a hung run are hung too (or frozen): nothing to wait for
                hung = _worker_exit(started[rank].tail) == EXIT_HUNG
                _end_all(cfg, started, running, events, 0.0 if hung else grace)
                running.clear()
    except KeyboardInterrupt:
        _interrupted(cfg, started, running, events, grace, show, again=stopping)
        return 130
    finally:  # closing the connections is also what stops a guard if anything above raised
        for client in clients:
            client.close()
    if failed is None:
        return 0
    rank, status = failed
    label = nodes[rank].target.label
    cause = _cause(started[rank].tail)
    raise NodeFailed(rank, f"node {rank} ({label}) failed first: {_describe(status)}"
                     f"{f' ({cause})' if cause else ''}; stopped the other nodes",
                     f"see {log_dir / log_name(nodes[rank].target)}", _worker_exit(started[rank].tail))


def _interrupted(cfg: OminixConfig, started: list[_Node], running: set[int], events: queue.Queue,
                 grace: float, show: Events, *, again: bool) -> None:
    """A first interrupt stops every node gracefully; a second one (also while the nodes were
    being stopped after a failure) kills them."""
    try:
        if not again:
            show.notice("interrupted: stopping every node (they save a checkpoint; interrupt again to kill them)")
            _end_all(cfg, started, running, events, grace)
            return
    except KeyboardInterrupt:
        pass
    show.notice("interrupted again: killing every node")
    _end_all(cfg, started, running, events, 0.0)


def _end_all(cfg: OminixConfig, started: list[_Node], running: set[int], events: queue.Queue,
             grace: float) -> None:
    """Every running node ends: stopped gracefully within ``grace`` seconds (none: at once), then
    killed by its guard, then, for a guard that did not answer (a frozen node), killed over a new
    SSH channel."""
    steps = [(_Node.stop, grace)] if grace else []
    steps += [(_Node.kill, KILL_WAIT_S), (lambda n: n.kill_tree(cfg.launch.connect_timeout), KILL_WAIT_S)]
    for request, wait_s in steps:
        if not running:
            return
        for n in started:
            if n.node.rank in running:
                request(n)
        _wait(running, events, wait_s)


def _wait(running: set[int], events: queue.Queue, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
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
