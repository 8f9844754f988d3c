"""A private SLURM cluster for tests: ``slurmctld`` and one ``slurmd`` per node on loopback.

Debian's ``slurm-wlm`` (22.05; ``make test-deps`` installs it). The cluster has its own slurm.conf,
state, spool and log directories under a temporary directory, ``AuthType=auth/none`` and
``CredType=cred/none`` (no munge), ``cred_expire=5`` (a requeued job waits that long before it
starts again, not 120 s), ``proctrack/linuxproc`` and ``task/none`` (no cgroups), ``JobRequeue=1``,
and ``CommunicationParameters=EnableIPv6``: with IPv4 alone slurm resolves its listening address
with AI_ADDRCONFIG, which finds no address where loopback is the only interface. Node ``n1``
listens on 127.0.0.1; the daemons run as children of the test in its private network namespace
(``make test`` runs pytest under ``unshare -n``) and are stopped by pid at the end. The slurm commands find the cluster through ``SLURM_CONF`` (``Slurm.env``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import in_private_netns
from tests.sshd import free_port

DAEMONS = ("/usr/sbin/slurmctld", "/usr/sbin/slurmd")
TOOLS = ("sbatch", "squeue", "sinfo", "scontrol", "scancel", "sacct", "srun")
NODES = {"n1": "127.0.0.1"}


def missing() -> list[str]:
    """The slurm programs this machine lacks (empty when the cluster can start)."""
    return [p for p in DAEMONS if not Path(p).exists()] + [t for t in TOOLS if shutil.which(t) is None]


@dataclass
class Slurm:
    """A running test cluster; ``env`` points the slurm commands at it."""

    root: Path
    conf: Path
    pids: list[int] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *argv: str, check: bool = True) -> str:
        result = subprocess.run(argv, env=self.env, text=True, capture_output=True, timeout=30)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)}: {result.stderr}{self.logs()}")
        return result.stdout

    def state(self, job: str) -> str:
        """The job's state as squeue shows it ('' once it left the queue)."""
        return self.run("squeue", "-h", "-j", job, "-o", "%T", check=False).strip()

    def logs(self) -> str:
        return "".join(f"\n--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.root.glob("*.log")))


def _conf(root: Path, ctld_port: int, node_port: int) -> str:
    nodes = "\n".join(f"NodeName={name} NodeAddr={addr} NodeHostname={name} Port={node_port} CPUs=2 State=UNKNOWN"
                      for name, addr in NODES.items())
    return f"""\
ClusterName=ominixtest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={node_port}
CommunicationParameters=EnableIPv6
AuthType=auth/none
CredType=cred/none
AuthInfo=cred_expire=5
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
JobRequeue=1
ReturnToService=2
KillWait=30
MinJobAge=300
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
{nodes}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def start_slurm(root: Path) -> Slurm:
    if not in_private_netns():
        pytest.fail("the test SLURM cluster must run in a private network namespace (see `make test`)")
    for sub in ("state", "spool"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    conf = root / "slurm.conf"
    conf.write_text(_conf(root, free_port(), free_port()))
    cluster = Slurm(root, conf)
    env = cluster.env
    ctld = subprocess.Popen(["/usr/sbin/slurmctld", "-D", "-i", "-f", str(conf)], env=env,
                            stdout=subprocess.DEVNULL, stderr=(root / "slurmctld.err.log").open("w"))
    cluster.pids.append(ctld.pid)
    for name in NODES:
        (root / "spool" / name).mkdir(exist_ok=True)
        node = subprocess.Popen(["/usr/sbin/slurmd", "-D", "-N", name, "-f", str(conf)], env=env,
                                stdout=subprocess.DEVNULL, stderr=(root / f"slurmd-{name}.err.log").open("w"))
        cluster.pids.append(node.pid)
    deadline = time.time() + 60
    while time.time() < deadline:
        states = cluster.run("sinfo", "-h", "-N", "-o", "%N %t", check=False).split("\n")
        idle = [line for line in states if line.endswith(" idle")]
        if len(idle) == len(NODES):
            return cluster
        time.sleep(0.5)
    stop_slurm(cluster)
    raise AssertionError(f"the test cluster did not come up: sinfo says {states}{cluster.logs()}")


def _leftovers(conf: Path) -> list[int]:
    """Processes of this cluster that outlived it (slurmstepd and job processes, which slurmd
    started detached): those whose environment names its slurm.conf."""
    mark = f"SLURM_CONF={conf}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and mark in (proc / "environ").read_bytes().split(b"\0"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return [pid for pid in pids if pid != os.getpid()]


def stop_slurm(cluster: Slurm) -> None:
    """Cancel every job, stop the daemons, then kill what the jobs left behind (all by pid)."""
    cluster.run("scancel", "--user=root", check=False)
    for pid in reversed(cluster.pids):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for pid in cluster.pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    for pid in _leftovers(cluster.conf):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slurm]:
    """One test cluster per test module (skipped, with the reason, where slurm is not installed)."""
    absent = missing()
    if absent:
        pytest.skip(f"slurm is not installed ({', '.join(absent)} missing): run `make test-deps`")
    cluster = start_slurm(tmp_path_factory.mktemp("slurm"))
    try:
        yield cluster
    finally:
        stop_slurm(cluster)
