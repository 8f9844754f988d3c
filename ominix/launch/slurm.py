"""``--launcher slurm``: write an sbatch script that starts one torchrun per allocated node.

The script asks for ``launch.nodes`` nodes with one task each; ``srun`` starts torchrun on every
node with ``--node-rank $SLURM_NODEID`` and node 0 of the allocation as master. The job runs with
``--export=NONE`` (the user's login environment on the node, not the submitting shell's), plus
``launch.env`` and ``launch.node_env['*']``; ``launch.forward_env`` variables travel only when named at submission
(``sbatch --export=NONE,HF_TOKEN FILE``), so their values are never written into the file.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from ominix.errors import OminixError
from ominix.launch.command import every_node_env, is_secret, remote_python, workdir
from ominix.launch.events import Outcome

if TYPE_CHECKING:
    from ominix.config import OminixConfig


def submit_command(cfg: OminixConfig, script: Path) -> str:
    export = ",".join(["NONE", *cfg.launch.forward_env])
    return f"sbatch --export={export} {shlex.quote(str(script))}"


def sbatch_script(cfg: OminixConfig, run_dir: Path) -> str:
    launch = cfg.launch
    for where, env in (("launch.env", launch.env), ("launch.node_env", launch.node_env.get("*", {}))):
        secret = [k for k in env if is_secret(k)]
        if secret:
            raise OminixError(f"{where} would write {secret[0]} into the sbatch file",
                              "export it before sbatch and list it in launch.forward_env instead")
    nproc = str(launch.nproc_per_node) if launch.nproc_per_node else '"${SLURM_GPUS_ON_NODE:-1}"'
    master = shlex.quote(launch.master_addr) if launch.master_addr else (
        '"$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"')
    worker = shlex.join([
        remote_python(cfg), "-m", "torch.distributed.run", "--nnodes", str(launch.nodes),
        "--max-restarts", "0", "--master-port", str(launch.master_port),
        "--rdzv-conf", f"timeout={launch.rdzv_timeout}",
    ])
    # expanded by the shell srun starts on each node, where SLURM_NODEID is that node's index
    per_node = (f'exec {worker} --node-rank "$SLURM_NODEID" --nproc-per-node {nproc} '
                f'--master-addr "$MASTER_ADDR" -m ominix.train --run-dir {shlex.quote(str(run_dir))}')
    logs = Path(workdir(cfg)) / run_dir / "logs"  # --output opens before the script runs: absolute
    lines = [
        "#!/bin/bash",
        "# Written by `ominix train launch --launcher slurm`. Submit with:",
        f"#   {submit_command(cfg, run_dir / 'launch.sbatch')}",
        f"#SBATCH --job-name=ominix-{run_dir.name}",
        f"#SBATCH --nodes={launch.nodes}",
        "#SBATCH --ntasks-per-node=1",
        *([f"#SBATCH --gpus-per-node={launch.nproc_per_node}"] if launch.nproc_per_node else []),
        "#SBATCH --export=NONE",
        f"#SBATCH --output={logs}/slurm-%j.out",
        "set -euo pipefail",
        f"cd {shlex.quote(workdir(cfg))}",
        *(f"export {k}={shlex.quote(v)}" for k, v in every_node_env(cfg).items()),
        f"export MASTER_ADDR={master}",
        f"mkdir -p {shlex.quote(str(logs))}",
        # --export=ALL: under sbatch --export=NONE, srun would otherwise drop the exports above
        f"srun --export=ALL --kill-on-bad-exit=1 --label bash -c {shlex.quote(per_node)}",
    ]
    return "\n".join(lines) + "\n"


def write_sbatch(cfg: OminixConfig, run_dir: Path, *, dry_run: bool) -> Outcome:
    """Write RUN_DIR/launch.sbatch; the outcome says how to submit it (is the script, when ``dry_run``)."""
    script = run_dir / "launch.sbatch"
    text = sbatch_script(cfg, run_dir)
    if dry_run:
        return Outcome(0, text)
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    script.write_text(text)
    return Outcome(0, f"wrote {script}\nsubmit it with: {submit_command(cfg, script)}\n")
