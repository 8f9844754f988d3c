"""Check every node over SSH, in parallel, before anything starts.

One combined remote command per host (a shell start costs 0.1-0.25 s): a stdlib-only Python probe
reports versions, GPUs, the working directory, the prepared dataset's manifest checksum, free disk
under the run directory and whether the master address answers on the master port. The same probe
runs here, so "same as here" compares values computed by the same code. The manifest checksum is
``ominix.data.store.manifest_sha256`` (sha256 of manifest.json), computed without numpy.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ominix.errors import OminixError
from ominix.launch.command import remote_python, workdir
from ominix.launch.hosts import check_hostname, parse_hostfile, select_hosts
from ominix.launch.ssh import SSHError, Target, connect, resolve_targets, run_command

if TYPE_CHECKING:
    from ominix.config import OminixConfig

PROBE = r"""
import hashlib, json, os, platform, shutil, socket, subprocess, sys
from importlib import metadata
a = json.loads(sys.argv[1])
def version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
r = {"python": platform.python_version(), "versions": {n: version(n) for n in ("ominix", "torch", "colossalai")}}
smi = shutil.which("nvidia-smi")
r["gpus"] = []
if smi:
    p = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    r["gpus"] = [x.strip() for x in p.stdout.splitlines() if x.strip()] if p.returncode == 0 else None
r["workdir"] = os.path.isdir(a["workdir"])
if r["workdir"]:
    os.chdir(a["workdir"])
r["manifest"] = None
if a["data"]:
    m = os.path.join(a["data"], "manifest.json")
    if os.path.isfile(m):
        with open(m, "rb") as f:
            r["manifest"] = hashlib.sha256(f.read()).hexdigest()
d = os.path.abspath(a["run_dir"])
while not os.path.isdir(d):
    d = os.path.dirname(d)
r["disk_free"] = shutil.disk_usage(d).free
r["master"] = None
if a["master_addr"]:
    try:
        socket.create_connection((a["master_addr"], a["master_port"]), timeout=3).close()
        r["master"] = "open"
    except ConnectionRefusedError:
        r["master"] = "refused"
    except OSError as e:
        r["master"] = "unreachable: " + (e.strerror or type(e).__name__)
print(json.dumps(r))
"""


# Runs on node 0 during the checks, where torchrun's store will listen (on every interface), so
# that "reachable" means a connection really got through, not just a refusal a firewall can send.
LISTENER = r"""
import socket, sys, threading
try:  # both families: the nodes may reach the master by an IPv6 address
    dual = socket.has_dualstack_ipv6()
    server = socket.create_server(("", int(sys.argv[1])), family=socket.AF_INET6 if dual else socket.AF_INET,
                                  dualstack_ipv6=dual)
except OSError as e:
    print("busy: " + (e.strerror or str(e)), flush=True)
    sys.exit(0)
print("listening", flush=True)
def serve():
    while True:
        server.accept()[0].close()
threading.Thread(target=serve, daemon=True).start()
sys.stdin.read()
"""


@dataclass
class Problem:
    check: str
    message: str
    hint: str


@dataclass
class HostReport:
    """The result of one host's checks: the probe's facts, and what is wrong."""

    node: int
    host: str
    facts: dict[str, Any] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def gpus(self) -> int:
        return len(self.facts.get("gpus") or [])


def _probe_args(cfg: OminixConfig, wd: str, master: tuple[str, int] | None) -> str:
    return json.dumps({
        "workdir": wd, "data": cfg.data.path, "run_dir": cfg.logging.run_dir,
        "master_addr": master[0] if master else None, "master_port": master[1] if master else 0,
    })


def probe_here(cfg: OminixConfig) -> dict[str, Any]:
    """The probe's facts for this machine and interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, _probe_args(cfg, os.getcwd(), None)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout)


def checkpoint_bytes(cfg: OminixConfig) -> int:
    """Disk a run needs for checkpoints: ~16 bytes per parameter (weights + Adam state), for the
    kept checkpoints plus the one being written."""
    from ominix.flops import num_params

    return 16 * num_params(cfg.model) * (cfg.checkpoint.keep_last + 1)


class MasterListener:
    """Listen on the master port of node 0 while the probes run; ``state`` is ``listening``,
    ``busy: REASON`` (the port is taken there) or None (node 0 could not be reached)."""

    def __init__(self, cfg: OminixConfig, target: Target, port: int, accept_new: bool | None) -> None:
        self.state: str | None = None
        self.client = self.channel = None
        try:
            self.client = connect(target, cfg.launch, accept_new)
        except SSHError:
            return  # node 0's own probe reports why
        self.channel = self.client.get_transport().open_session()
        self.channel.settimeout(60)
        self.channel.exec_command(shlex.join([remote_python(cfg), "-c", LISTENER, str(port)]))
        try:
            self.state = self.channel.makefile("r").readline().strip() or None
        except TimeoutError:
            pass  # node 0's probe hangs as well and reports it

    def close(self) -> None:
        """EOF on the listener's stdin, then wait (up to 10 s) until it has exited: the master port
        must be free again when this returns, since a launch starts torchrun on it next."""
        if self.client is None:
            return
        if self.channel is not None and self.state == "listening":
            try:
                self.channel.shutdown_write()
                deadline = time.monotonic() + 10
                while not self.channel.exit_status_ready() and time.monotonic() < deadline:
                    time.sleep(0.02)
            except (OSError, EOFError):
                pass  # the connection is gone: so is the listener
        self.client.close()


def check_host(cfg: OminixConfig, node: int, target: Target, master: tuple[str, int],
               here: dict[str, Any], accept_new: bool | None = None) -> HostReport:
    report = HostReport(node, target.label)
    try:
        client = connect(target, cfg.launch, accept_new)
    except SSHError as exc:
        report.facts["ssh"] = exc.kind
        report.problems.append(Problem("ssh", exc.message, exc.hint))
        return report
    report.facts["ssh"] = "ok"
    py = remote_python(cfg)
    command = shlex.join([py, "-c", PROBE, _probe_args(cfg, workdir(cfg), master)])
    try:
        status, out, err = run_command(client, command, timeout=60)
    finally:
        client.close()
    if status != 0:
        last = (err.strip().splitlines() or ["no output"])[-1]
        report.problems.append(Problem(
            "python", f"{py} failed on {target.label} (exit {status}): {last}",
            "install the same environment there, or set launch.python to its interpreter",
        ))
        return report
    report.facts.update(json.loads(out))
    _compare(cfg, report, here)
    return report


def _compare(cfg: OminixConfig, r: HostReport, here: dict[str, Any]) -> None:
    f = r.facts
    mine, theirs = here["python"].rsplit(".", 1)[0], f["python"].rsplit(".", 1)[0]
    if mine != theirs:
        r.problems.append(Problem("versions", f"python {f['python']} there, {here['python']} here",
                                  "use the same Python (minor version) on every node"))
    for name, want in here["versions"].items():
        got = f["versions"].get(name)
        if got != want:
            r.problems.append(Problem("versions", f"{name} {got or 'missing'} there, {want} here",
                                      f"install {name}=={want} on every node (see README, Install)"))
    want = cfg.launch.nproc_per_node
    if f["gpus"] is None:
        r.problems.append(Problem("gpus", "nvidia-smi failed", "check the NVIDIA driver on that node"))
    elif want and f["gpus"] and want > len(f["gpus"]):
        r.problems.append(Problem("gpus", f"{want} processes per node asked, {len(f['gpus'])} GPUs there",
                                  f"pass --nproc-per-node {len(f['gpus'])} or less"))
    if not f["workdir"]:
        r.problems.append(Problem("workdir", f"working directory {workdir(cfg)} is missing",
                                  "use a shared file system or set launch.workdir"))
    if cfg.data.path:
        if f["manifest"] is None:
            r.problems.append(Problem("data", f"no prepared dataset at {cfg.data.path}",
                                      "copy the prepared directory there or use a shared file system"))
        elif f["manifest"] != here["manifest"]:
            r.problems.append(Problem("data", f"{cfg.data.path}/manifest.json differs from here",
                                      "every node must read the same prepared data; copy it again"))
    need = checkpoint_bytes(cfg)
    if f["disk_free"] < need:
        r.problems.append(Problem(
            "disk", f"{f['disk_free'] / 2**30:.1f} GiB free under {cfg.logging.run_dir}, "
            f"checkpoints need ~{need / 2**30:.1f} GiB", "free space or point logging.run_dir elsewhere"))
    listener = here.get("listener")
    if listener and listener.startswith("busy"):
        if r.node == 0:
            r.problems.append(Problem("master", f"port {cfg.launch.master_port} is in use on the master "
                                      f"node ({listener})",
                                      "stop what uses it or pick another --master-port"))
    elif listener == "listening" and f["master"] != "open":
        why = "refused (a firewall rejects it)" if f["master"] == "refused" else f["master"]
        r.problems.append(Problem("master", f"cannot reach the master at {here['master']}: {why}",
                                  "check launch.master_addr and that the master port is open between nodes"))


def cluster(cfg: OminixConfig, nodes: int | None) -> tuple[list[Target], tuple[str, int]]:
    """The first ``nodes`` hosts of the hostfile (None = all), resolved, and the rendezvous address."""
    if not cfg.launch.hostfile:
        raise OminixError("no hostfile given", "pass --hostfile FILE (one host per line)")
    hosts = select_hosts(parse_hostfile(cfg.launch.hostfile, cfg.launch.ssh_port), nodes, cfg.launch.hostfile)
    targets = resolve_targets(hosts, cfg.launch)
    addr = check_hostname(cfg.launch.master_addr or targets[0].address, "launch.master_addr")
    return targets, (addr, cfg.launch.master_port)


def check_hosts(cfg: OminixConfig, targets: list[Target], master: tuple[str, int],
                accept_new: bool | None = None) -> tuple[dict[str, Any], list[HostReport]]:
    """Check every target in parallel; return the facts here and one report per host, in order."""
    here = probe_here(cfg)
    listener = MasterListener(cfg, targets[0], master[1], accept_new)
    here.update(master=f"{master[0]}:{master[1]}", listener=listener.state)
    try:
        with ThreadPoolExecutor(max_workers=min(32, len(targets))) as pool:
            futures = [pool.submit(check_host, cfg, i, t, master, here, accept_new)
                       for i, t in enumerate(targets)]
            return here, [f.result() for f in futures]
    finally:
        listener.close()


def reports_json(here: dict[str, Any], reports: list[HostReport], collective: dict[str, Any] | None = None) -> str:
    return json.dumps({
        "ok": all(r.ok for r in reports), "here": here,
        "hosts": [{**asdict(r), "ok": r.ok} for r in reports], "collective": collective,
    }, indent=2)


def checked_gpus(cfg: OminixConfig, targets: list[Target], master: tuple[str, int],
                 show: Callable[[dict[str, Any], list[HostReport]], None]) -> list[int]:
    """Run the host checks, hand them to ``show``, raise when any host fails; the GPUs of each node."""
    here, reports = check_hosts(cfg, targets, master)
    show(here, reports)
    bad = [r.host for r in reports if not r.ok]
    if bad:
        raise OminixError(f"{len(bad)} of {len(reports)} hosts failed the checks: {', '.join(bad)}",
                          "fix what the table shows; `ominix train check-hosts` re-runs the checks",
                          exit_code=1)
    return [r.gpus for r in reports]
