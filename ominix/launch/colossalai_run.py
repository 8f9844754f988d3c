"""``--launcher colossalai``: hand the job to ``colossalai run --hostfile``.

``colossalai run`` exports its whole environment to every node (which breaks on read-only
variables and leaks secrets), so it is started with an explicit, minimal environment: the
variables a node needs, ``launch.env``, ``launch.node_env['*']`` and the ``launch.forward_env`` variables only.
Its hostfile holds bare host names and one SSH port for all: users and keys come from
~/.ssh/config (fabric reads it), and per-host variables and the rendezvous timeout are not available
through it. It sends every variable as ``export K="V"`` on the remote command line, so forwarded
secrets are visible in the nodes' process lists while it runs: the ominix launcher sends them on
stdin instead.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ominix.errors import OminixError
from ominix.launch.command import KEEP_ENV, every_node_env, forwarded, is_secret, workdir
from ominix.launch.events import Outcome
from ominix.launch.ssh import Target

if TYPE_CHECKING:
    from ominix.config import OminixConfig


def colossalai_argv(cfg: OminixConfig, run_dir: Path, targets: list[Target], master: tuple[str, int],
                    nproc: int, hostfile: Path) -> list[str]:
    users = [str(t.host) for t in targets if t.host.user]
    if users:
        raise OminixError(f"colossalai run reads bare host names; the hostfile names users ({users[0]})",
                          "set User in ~/.ssh/config for those hosts, or use --launcher ominix")
    ports = {t.port for t in targets}
    if len(ports) > 1:
        raise OminixError(f"colossalai run uses one SSH port for all hosts; the hostfile has {sorted(ports)}",
                          "use one SSH port, or --launcher ominix")
    if set(cfg.launch.node_env) - {"*"}:
        raise OminixError("colossalai run cannot set per-host variables (launch.node_env)",
                          "use --launcher ominix, or only node_env['*']")
    return [
        str(Path(sys.executable).with_name("colossalai")), "run", "--hostfile", str(hostfile),
        "--num_nodes", str(len(targets)), "--nproc_per_node", str(nproc),
        "--master_addr", master[0], "--master_port", str(master[1]), "--ssh-port", str(ports.pop()),
        "-m", "ominix.train", "--run-dir", str(run_dir),
    ]


def colossalai_env(cfg: OminixConfig) -> tuple[dict[str, str], list[str]]:
    """The environment ``colossalai run`` gets (and exports), and the names to mask when shown."""
    env = {k: os.environ[k] for k in KEEP_ENV if k in os.environ}
    env.update(every_node_env(cfg))
    env.update(forwarded(cfg))
    # colossalai run starts `torchrun` by name on every node: the nodes' interpreter's bin directory
    # comes first on the PATH it exports (a venv is rarely on a non-interactive shell's PATH)
    bin_dir = str(Path(cfg.launch.python or sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", os.defpath)])
    return env, sorted(k for k in env if k in cfg.launch.forward_env or is_secret(k))


def colossalai_run(cfg: OminixConfig, run_dir: Path, targets: list[Target], master: tuple[str, int],
                   nproc: int, *, dry_run: bool) -> Outcome:
    """Write RUN_DIR/colossalai_hosts.txt and run ``colossalai run`` (the outcome's text is the
    hostfile and the command, when ``dry_run``)."""
    hostfile = run_dir / "colossalai_hosts.txt"
    argv = colossalai_argv(cfg, run_dir, targets, master, nproc, hostfile)
    env, secrets = colossalai_env(cfg)
    shown = " ".join(f"{k}={'****' if k in secrets else shlex.quote(v)}" for k, v in sorted(env.items()))
    hosts = "".join(f"{t.address}\n" for t in targets)
    if dry_run:
        return Outcome(0, f"# {hostfile}:\n" + "".join(f"#   {h}\n" for h in hosts.splitlines())
                       + f"cd {shlex.quote(workdir(cfg))} && env -i {shown} {shlex.join(argv)}\n")
    run_dir.mkdir(parents=True, exist_ok=True)
    hostfile.write_text(hosts)
    return Outcome(subprocess.run(argv, env=env, cwd=workdir(cfg)).returncode)
