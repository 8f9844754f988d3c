"""``--launcher slurm``: write an sbatch script that starts one torchrun per allocated node, and
submit it.

The script asks for ``launch.nodes`` nodes with one task each, plus the ``launch.slurm`` settings
(partition, account, qos, time, GPUs, extra ``#SBATCH`` lines). Its batch shell becomes
``python -m ominix.launch.slurm_job``, which holds the run directory's lock on the batch node while
the job runs, and runs ``srun``: torchrun on every node with ``--node-rank $SLURM_NODEID`` and node
0 of the allocation as master. With ``launch.slurm.requeue`` the job is ``--requeue``-able and gets
SIGTERM ``signal_before_s`` before its time limit: the workers save a checkpoint, the job requeues
itself, and the requeued job resumes from the run's latest checkpoint (see ``slurm_job``).

The job runs with ``--export=NONE`` (the user's login environment on the node, not the submitting
shell's), plus ``launch.env`` and ``launch.node_env['*']``; ``launch.forward_env`` variables travel
only when named at submission (``sbatch --export=NONE,HF_TOKEN FILE``), so their values are never
written into the file. The submitted job's id is kept in ``RUN_DIR/slurm_job.json``: while that job
is queued or running, another launch into the run directory is refused.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from ominix.atomic import write_text
from ominix.errors import OminixError
from ominix.launch.command import every_node_env, forwarded, is_secret, remote_python, workdir
from ominix.launch.events import Outcome

if TYPE_CHECKING:
    from ominix.config import OminixConfig

JOB_FILE = "slurm_job.json"
# squeue states of a job that still holds or will hold its run directory
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
          "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "SPECIAL_EXIT"}


def submit_command(cfg: OminixConfig, script: Path) -> list[str]:
    export = ",".join(["NONE", *cfg.launch.forward_env])
    return ["sbatch", "--parsable", f"--export={export}", str(script)]


def _options(cfg: OminixConfig, run_dir: Path, logs: Path) -> list[str]:
    launch, s = cfg.launch, cfg.launch.slurm
    gpus = launch.nproc_per_node if s.gpus_per_node is None else s.gpus_per_node
    return [
        f"--job-name=ominix-{run_dir.name}",
        f"--nodes={launch.nodes}",
        "--ntasks-per-node=1",
        *([f"--partition={s.partition}"] if s.partition else []),
        *([f"--account={s.account}"] if s.account else []),
        *([f"--qos={s.qos}"] if s.qos else []),
        *([f"--time={s.time}"] if s.time else []),
        *([f"--gpus-per-node={gpus}"] if gpus else []),
        "--requeue" if s.requeue else "--no-requeue",
        # the batch shell (slurm_job) alone: it has the workers save, then requeues the job
        f"--signal=B:TERM@{s.signal_before_s}",
        "--open-mode=append",  # a requeued job appends to its log instead of truncating it
        "--export=NONE",
        f"--output={logs}/slurm-%j.out",
        *s.extra_sbatch,
    ]


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
    job = shlex.join([remote_python(cfg), "-m", "ominix.launch.slurm_job", "--run-dir", str(run_dir),
                      *(["--requeue"] if launch.slurm.requeue else []), "--"])
    lines = [
        "#!/bin/bash",
        "# Written by `ominix train launch --launcher slurm`. Submit with:",
        f"#   {shlex.join(submit_command(cfg, run_dir / 'launch.sbatch'))}",
        *(f"#SBATCH {option}" for option in _options(cfg, run_dir, logs)),
        "set -euo pipefail",
        f"cd {shlex.quote(workdir(cfg))}",
        *(f"export {k}={shlex.quote(v)}" for k, v in every_node_env(cfg).items()),
        f"export MASTER_ADDR={master}",
        f"mkdir -p {shlex.quote(str(logs))}",
        # the batch shell becomes slurm_job: it holds the run lock and gets the time-limit SIGTERM.
        # --export=ALL: under sbatch --export=NONE, srun would otherwise drop the exports above
        f"exec {job} srun --export=ALL --kill-on-bad-exit=1 --label bash -c {shlex.quote(per_node)}",
    ]
    return "\n".join(lines) + "\n"


def job_state(job: str) -> str | None:
    """The job's state as squeue reports it ('' once it left the queue); None without squeue."""
    if shutil.which("squeue") is None:
        return None
    result = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=60)
    return result.stdout.strip().splitlines()[0] if result.returncode == 0 and result.stdout.strip() else ""


def refuse_if_queued(run_dir: Path) -> None:
    """Refuse a launch into ``run_dir`` while the SLURM job submitted for it is queued or running."""
    record = run_dir / JOB_FILE
    if not record.is_file():
        return
    job = str(json.loads(record.read_text())["job_id"])
    state = job_state(job)
    if state in ACTIVE:
        raise OminixError(f"{run_dir} belongs to SLURM job {job}, which is {state}",
                          f"wait for it (squeue -j {job}), cancel it (scancel {job}), or choose another --out")


def write_sbatch(cfg: OminixConfig, run_dir: Path, *, dry_run: bool) -> Outcome:
    """Write RUN_DIR/launch.sbatch and submit it with sbatch (the outcome names the job and how to
    follow it); ``dry_run`` writes and submits nothing: the outcome is the script."""
    script = run_dir / "launch.sbatch"
    text = sbatch_script(cfg, run_dir)
    if dry_run:
        return Outcome(0, text)
    if shutil.which("sbatch") is None:
        raise OminixError("--launcher slurm needs sbatch, which is not on PATH here",
                          "launch from a SLURM login node, or print the script with --dry-run")
    forwarded(cfg)  # every forward_env variable is set here, or one error now
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    write_text(script, text)
    argv = submit_command(cfg, script)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise OminixError(f"sbatch refused the job: {result.stderr.strip() or result.stdout.strip()}",
                          f"fix the launch.slurm settings named there, or run {shlex.join(argv)} yourself")
    job = result.stdout.strip().split(";")[0]
    write_text(run_dir / JOB_FILE, json.dumps({"job_id": job, "script": str(script)}) + "\n")
    log = Path(workdir(cfg)) / run_dir / "logs" / f"slurm-{job}.out"
    return Outcome(0, f"submitted SLURM job {job} ({script})\n"
                      f"follow it: squeue -j {job}; sacct -j {job}; tail -f {log}\n"
                      f"stop it:   scancel {job} (a requeued job resumes from the latest checkpoint)\n")
