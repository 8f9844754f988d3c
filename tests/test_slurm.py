"""`ominix train launch --launcher slurm` against a real SLURM cluster (tests/slurmd.py): the job
trains the tiny preset on CPU, holds the run directory, saves and requeues itself on the time-limit
signal, is requeued by SLURM (`scontrol requeue`, as on preemption), resumes from its checkpoint
each time and finishes; `--dry-run` prints the sbatch file with the `launch.slurm` settings."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli
from tests.slurmd import Slurm, slurm  # noqa: F401  (fixture)


QUICK = ["schedule.warmup_steps=2", "logging.log_every=1", "checkpoint.every=0", "schedule.eval_every=0",
         "checkpoint.keep_last=1", "checkpoint.keep_every=0", "launch.master_addr=127.0.0.1",
         f"launch.env={{PYTHONPATH: {REPO}, OMP_NUM_THREADS: '1'}}"]


def _sets(sets: list[str]) -> list[str]:
    return [a for s in sets for a in ("--set", s)]


def test_dry_run_prints_the_sbatch_file_with_the_slurm_settings(tmp_path: Path) -> None:
    sets = ["launch.slurm.partition=gpu", "launch.slurm.account=proj42", "launch.slurm.qos=high",
            "launch.slurm.time=1-12:00:00", "launch.slurm.gpus_per_node=8", "launch.slurm.signal_before_s=600",
            "launch.slurm.extra_sbatch=['--constraint=h100', '--exclusive']"]
    result = run_cli("train", "launch", "tiny", "--launcher", "slurm", "--nodes", "2", "--dry-run",
                     "--run-dir", str(tmp_path / "run"), *_sets(sets))
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for line in ("#SBATCH --partition=gpu", "#SBATCH --account=proj42", "#SBATCH --qos=high",
                 "#SBATCH --time=1-12:00:00", "#SBATCH --gpus-per-node=8", "#SBATCH --nodes=2",
                 "#SBATCH --requeue", "#SBATCH --signal=B:TERM@600", "#SBATCH --constraint=h100",
                 "#SBATCH --exclusive", "#SBATCH --open-mode=append", "-m ominix.launch.slurm_job --run-dir"):
        assert line in text, line
    assert not (tmp_path / "run").exists()  # a dry run writes nothing
    script = tmp_path / "launch.sbatch"
    script.write_text(text[text.index("#!/bin/bash"):])
    subprocess.run(["bash", "-n", str(script)], check=True)

    no_requeue = run_cli("train", "launch", "tiny", "--launcher", "slurm", "--dry-run",
                         "--set", "launch.slurm.requeue=false")
    assert "#SBATCH --no-requeue" in no_requeue.stdout and "#SBATCH --partition" not in no_requeue.stdout
    bad = run_cli("train", "launch", "tiny", "--launcher", "slurm", "--dry-run", "--set", "launch.slurm.time=2h")
    assert bad.returncode == 2 and "launch.slurm.time='2h' is not a SLURM time" in bad.stderr


def _wait(what: str, check, timeout: float, cluster: Slurm, run: Path) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.5)
    logs = "".join(p.read_text()[-4000:] for p in (run / "logs").glob("slurm-*.out"))
    raise AssertionError(f"timed out waiting for {what}\n{logs}{cluster.logs()}")


def _steps(run: Path) -> list[int]:
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        return []
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return [r["step"] for r in rows if r["kind"] == "train"]


def _log(run: Path) -> str:
    return "".join(p.read_text() for p in (run / "logs").glob("slurm-*.out"))


@pytest.mark.usefixtures("private_netns")
def test_a_job_trains_is_requeued_twice_and_resumes_each_time(slurm: Slurm, data_dir: Path,  # noqa: F811
                                                              tmp_path: Path) -> None:
    run = tmp_path / "run"
    steps = 20
    args = ("train", "launch", "tiny", "--launcher", "slurm", "--data", str(data_dir), "--run-dir", str(run),
            "--max-steps", str(steps), *_sets(QUICK))
    result = run_cli(*args, env={"SLURM_CONF": str(slurm.conf)})
    assert result.returncode == 0, result.stdout + result.stderr
    job = json.loads((run / "slurm_job.json").read_text())["job_id"]
    assert f"submitted SLURM job {job}" in result.stdout and f"squeue -j {job}" in result.stdout
    assert f"slurm-{job}.out" in result.stdout

    again = run_cli(*args, env={"SLURM_CONF": str(slurm.conf)})  # queued or running: refused
    assert again.returncode == 2 and (f"SLURM job {job}" in again.stderr), again.stderr

    # the time-limit warning (sbatch --signal=B:TERM@S) reaches the batch shell only
    _wait("training to start", lambda: len(_steps(run)) >= 2, 120, slurm, run)
    slurm.run("scancel", "--batch", "--signal=TERM", job)
    _wait("the job to requeue itself", lambda: "restart 1" in _log(run), 120, slurm, run)
    latest = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    first = json.loads((latest / "state.json").read_text())

    # SLURM's own requeue (as on preemption): it signals the steps and starts the job again
    _wait("training to go on", lambda: max(_steps(run)) > first["step"], 120, slurm, run)
    slurm.run("scontrol", "requeue", job)
    _wait("the job to finish", lambda: slurm.state(job) == "" and max(_steps(run), default=0) == steps, 180,
          slurm, run)

    log = (run / "train.log").read_text()
    resumed = [int(line.split(" at step ")[1].split()[0]) for line in log.splitlines() if "resumed from" in line]
    assert len(resumed) == 2 and resumed[0] == first["step"], log[-3000:]
    train_steps = _steps(run)
    assert train_steps == list(range(1, steps + 1))  # each step once: every stop saved where it stopped
    assert "requeueing job" in _log(run)
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step_{steps:08d}"
    assert not (run / ".ominix.lock").exists()  # the job let go of the run directory


@pytest.mark.usefixtures("private_netns")
def test_scancel_saves_a_checkpoint_and_the_job_stays_cancelled(slurm: Slurm, data_dir: Path,  # noqa: F811
                                                               tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = run_cli("train", "launch", "tiny", "--launcher", "slurm", "--data", str(data_dir), "--run-dir", str(run),
                     "--max-steps", "200", *_sets(QUICK), env={"SLURM_CONF": str(slurm.conf)})
    assert result.returncode == 0, result.stdout + result.stderr
    job = json.loads((run / "slurm_job.json").read_text())["job_id"]
    _wait("training to start", lambda: len(_steps(run)) >= 1, 120, slurm, run)
    assert json.loads((run / ".ominix.lock").read_text())["command"].startswith(f"SLURM job {job}")
    slurm.run("scancel", job)
    _wait("the job to end", lambda: slurm.state(job) == "", 90, slurm, run)
    log = (run / "train.log").read_text()
    stopped = int(log.split("stopped by SIGTERM at step ")[1].split(";")[0])
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step_{stopped:08d}"
    assert "restart 1" not in _log(run) and "requeueing" not in _log(run)  # cancelled is cancelled
    assert not (run / ".ominix.lock").exists()
