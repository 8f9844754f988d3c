"""The real thing: `ominix train launch` on two "nodes" (127.0.0.1 and 127.0.0.2) over a real sshd,
one CPU process per node: it trains, checkpoints and resumes; killing a node's worker stops all, or
under launch.max_restarts relaunches the run, which ends with the losses of an uninterrupted one; a
frozen node is detected by the hang watchdog, killed, and the run ends in time."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.sshd import Sshd, free_port, sshd  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("private_netns")

SEQ = 32
VOCAB = 512


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny prepared dataset, made by `ominix data prepare` from the embedded corpus."""
    out = tmp_path_factory.mktemp("data") / "tiny"
    result = run_cli("data", "prepare", "@embedded", "--train-tokenizer", "--vocab-size", str(VOCAB),
                     "--seq-len", str(SEQ), "--val-fraction", "0.1", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


def _small(tmp_path: Path, data: Path) -> list[str]:
    """A tiny model on the prepared data, run directory under tmp_path."""
    return [
        f"data.path={data}", f"data.seq_len={SEQ}", f"model.vocab_size={VOCAB}",
        "model.num_hidden_layers=2", "model.hidden_size=64", "model.intermediate_size=128",
        "model.max_position_embeddings=64", "schedule.global_batch_size=4", "schedule.micro_batch_size=2",
        "schedule.warmup_steps=1", "schedule.eval_every=0", "logging.log_every=1",
        "logging.tensorboard=false", f"logging.run_dir={tmp_path / 'run'}",
    ]


def _launch(server: Sshd, tmp_path: Path, data: Path, max_steps: int, *extra: str,
            env: dict | None = None):
    hostfile = server.hostfile(tmp_path / "hosts.txt")
    sets = [
        *server.launch_sets(), f"launch.hostfile={hostfile}", "launch.nodes=2", "launch.nproc_per_node=1",
        f"launch.master_port={free_port()}", "launch.rdzv_timeout=60",
        f"launch.node_env={{'*': {{TMPDIR: '{tmp_path}', OMP_NUM_THREADS: '1'}}}}",
        *_small(tmp_path, data), f"schedule.max_steps={max_steps}", "checkpoint.every=2",
    ]
    return run_cli("train", "launch", "tiny", *[a for s in sets for a in ("--set", s)], *extra,
                   env={"COLUMNS": "200", **(env or {})}, timeout=300)


def _leftovers(run_dir: Path, wait_s: float = 30) -> list[int]:
    marker = str(run_dir).encode()
    deadline = time.monotonic() + wait_s
    while True:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and entry.name != str(os.getpid()):
                try:
                    cmd = (entry / "cmdline").read_bytes()
                except OSError:
                    continue
                if b"ominix.train" in cmd and marker in cmd:
                    found.append(int(entry.name))
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


def test_two_node_training_checkpoints_and_resumes(sshd: Sshd, tmp_path: Path, prepared: Path) -> None:
    start = time.monotonic()
    first = _launch(sshd, tmp_path, prepared, 4)
    took = time.monotonic() - start
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    run = tmp_path / "run"
    assert "host checks" in first.stdout and "same" in first.stdout  # versions, data manifest
    assert (run / "checkpoints" / "latest").read_text().strip().endswith("4")
    logs = sorted(p.name for p in (run / "logs").iterdir())
    assert logs == [f"127.0.0.1_{sshd.port}.log", f"127.0.0.2_{sshd.port}.log"]
    assert f"[127.0.0.1:{sshd.port}]" in first.stdout
    second = _launch(sshd, tmp_path, prepared, 6, "--resume", "auto")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resumed from" in second.stdout and "at step 4" in second.stdout
    assert (run / "checkpoints" / "latest").read_text().strip().endswith("6")
    assert _leftovers(run) == []
    print(f"two-node tiny training over SSH, 4 steps: {took:.1f} s")


@pytest.mark.parametrize("target", ["worker", "torchrun"])
def test_kill_9_on_one_node_stops_the_run_with_one_line(sshd: Sshd, tmp_path: Path, prepared: Path,
                                                        target: str) -> None:
    """kill -9 of node 1's worker, or of node 1's torchrun agent itself, under launch.max_restarts=0:
    every node stops, the launcher names node 1 and the cause in one line, no traceback, nothing left."""
    run = tmp_path / "run"
    killed: list[int] = []

    def kill_on_node1() -> None:
        pids = _node_processes(run, 1, workers_only=True) if target == "worker" else _node_agent(run, 1)
        for pid in pids[:1]:
            os.kill(pid, signal.SIGKILL)
        killed.extend(pids[:1])

    _when_step(run, 1, kill_on_node1)
    result = _launch(sshd, tmp_path, prepared, 100000, "--set", "launch.max_restarts=0")
    assert killed
    assert result.returncode == 101, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert "no restart left (launch.max_restarts 0)" in result.stderr
    assert f"node 1 (127.0.0.2:{sshd.port}) failed first" in result.stderr
    if target == "worker":
        assert "SIGKILL" in result.stderr  # the cause, from torchrun's summary on node 1
    else:  # the guard reports its torchrun's end; no unrelated log line is quoted as the cause
        assert "failed first: killed by signal 9; stopped the other nodes" in result.stderr
    assert _leftovers(run) == [] and _node_processes(run, 1) == []


def test_colossalai_launcher_trains_over_ssh(sshd: Sshd, tmp_path: Path, prepared: Path) -> None:
    """`--launcher colossalai` hands the same job to `colossalai run --hostfile` (fabric reads
    ~/.ssh/config for the user and key); it gets only the minimal environment."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    (home / ".ssh" / "config").write_text(
        f"Host 127.0.0.*\n  User {sshd.user}\n  IdentityFile {sshd.client_key}\n"
        f"  UserKnownHostsFile {sshd.known_hosts}\n")
    hostfile = tmp_path / "bare_hosts.txt"
    hostfile.write_text(f"127.0.0.1:{sshd.port}\n127.0.0.2:{sshd.port}\n")
    result = _launch(sshd, tmp_path, prepared, 2, "--set", "launch.launcher=colossalai",
                     "--set", f"launch.hostfile={hostfile}", env={"HOME": str(home), "OMINIX_LEAK": "x"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = tmp_path / "run"
    assert (run / "colossalai_hosts.txt").read_text() == "127.0.0.1\n127.0.0.2\n"
    assert (run / "checkpoints" / "latest").read_text().strip().endswith("2")
    assert _leftovers(run) == []


def test_ctrl_c_stops_every_node_after_a_checkpoint(sshd: Sshd, tmp_path: Path, prepared: Path) -> None:
    """SIGINT to `ominix train launch`: every node gets SIGTERM, saves at a step boundary, exits."""
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO

    run = tmp_path / "run"
    hostfile = sshd.hostfile(tmp_path / "hosts.txt")
    sets = [*sshd.launch_sets(), f"launch.hostfile={hostfile}", "launch.nodes=2", "launch.nproc_per_node=1",
            f"launch.master_port={free_port()}", f"launch.node_env={{'*': {{TMPDIR: '{tmp_path}'}}}}",
            *_small(tmp_path, prepared), "schedule.max_steps=100000", "checkpoint.every=0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ominix", "train", "launch", "tiny", *[a for s in sets for a in ("--set", s)]],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not (run / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    assert "interrupted: stopping every node" in out and "resume with --resume auto" in out
    assert (run / "checkpoints" / "latest").is_file()
    assert _leftovers(run) == []


def _rows(run_dir: Path, kind: str) -> list[dict]:
    """The ``kind`` records of metrics.jsonl; a line being written is left out."""
    metrics = run_dir / "metrics.jsonl"
    rows = []
    for line in metrics.read_text().splitlines() if metrics.is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [r for r in rows if r["kind"] == kind]


def _losses(run_dir: Path) -> dict[int, float]:
    """Each step's loss; a step trained again after a fault counts as its last record says."""
    return {r["step"]: r["loss"] for r in _rows(run_dir, "train")}


def _node_processes(run_dir: Path, node: int, workers_only: bool = False) -> list[int]:
    """Every process of ``node`` in this run: its node guard, torchrun and worker(s)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        worker = b"torch.distributed.run" not in cmd and f"GROUP_RANK={node}".encode() in env
        if str(run_dir).encode() in cmd and (worker or (not workers_only and f"--node-rank={node}".encode() in cmd)):
            found.append(int(entry.name))
    return found


def _node_agent(run_dir: Path, node: int) -> list[int]:
    """The torchrun agent of ``node`` in this run (not its node guard, whose command line holds torchrun's)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmd = (entry / "cmdline").read_bytes() if entry.name.isdigit() else b""
        except OSError:
            continue
        ours = b"torch.distributed.run" in cmd and str(run_dir).encode() in cmd and b"ominix.launch.nodeguard" not in cmd
        if ours and f"--node-rank={node}".encode() in cmd:
            found.append(int(entry.name))
    return found


def _when_step(run_dir: Path, step: int, act) -> threading.Thread:
    """Call ``act()`` as soon as metrics.jsonl records ``step`` (polled finely: tiny steps are fast)."""
    def wait_then_act() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if any(r["step"] >= step for r in _rows(run_dir, "train")):
                act()
                return
            time.sleep(0.02)

    thread = threading.Thread(target=wait_then_act, daemon=True)
    thread.start()
    return thread


def test_a_killed_worker_is_relaunched_and_the_run_ends_with_the_uninterrupted_losses(
        sshd: Sshd, tmp_path: Path, prepared: Path) -> None:
    (tmp_path / "whole").mkdir()
    (tmp_path / "faulty").mkdir()
    whole = _launch(sshd, tmp_path / "whole", prepared, 10)
    assert whole.returncode == 0, whole.stdout[-3000:] + whole.stderr[-3000:]
    run = tmp_path / "faulty" / "run"
    killed: list[int] = []

    def kill_node1_worker() -> None:
        workers = _node_processes(run, 1, workers_only=True)
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        killed.extend(workers)

    _when_step(run, 5, kill_node1_worker)
    result = _launch(sshd, tmp_path / "faulty", prepared, 10, "--set", "launch.max_restarts=2",
                     "--set", "launch.restart_backoff=0")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert killed
    [fault] = _rows(run, "fault")
    assert fault["restart"] == 1 and fault["lost_steps"] == fault["step"] - fault["resume_step"] >= 1
    log = (run / "train.log").read_text()
    assert f"fault 1 at step {fault['step']}" in log and "finished after 1 restart(s)" in log
    assert f"resumed from {run / 'checkpoints'}" in log
    expected = _losses(tmp_path / "whole" / "run")
    assert sorted(expected) == list(range(1, 11))
    assert _losses(run) == expected  # bit for bit: the CPU path resumes exactly
    assert _leftovers(run) == []


def test_a_frozen_node_is_found_by_the_hang_watchdog_and_killed_in_time(
        sshd: Sshd, tmp_path: Path, prepared: Path) -> None:
    run = tmp_path / "run"
    hang_timeout = 8
    frozen: dict = {}

    def freeze_node1() -> None:  # guard, torchrun and worker stopped: a node that froze
        pids = _node_processes(run, 1)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        frozen.update(pids=pids, at=time.monotonic())

    _when_step(run, 2, freeze_node1)
    result = _launch(sshd, tmp_path, prepared, 100000, "--set", f"launch.hang_timeout={hang_timeout}",
                     "--set", "launch.max_restarts=0", "--set", "launch.stop_timeout=5")
    took = time.monotonic() - frozen["at"]
    assert len(frozen["pids"]) == 3  # the node guard, torchrun, the worker
    assert result.returncode == 100, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"node 0 (127.0.0.1:{sshd.port}) failed first" in result.stderr
    assert "no step for" in result.stderr and "launch.hang_timeout 8" in result.stderr
    assert took < hang_timeout + 25, took
    stacks = (run / "hang" / "rank_00000.txt").read_text()
    assert "no progress for" in stacks and "File " in stacks  # the blocked main thread's stack
    assert not (run / "hang" / "rank_00001.txt").exists()  # a stopped rank cannot write
    [fault] = _rows(run, "fault")
    assert fault["restart"] is None and "no step for" in fault["cause"]
    assert _leftovers(run) == [] and _node_processes(run, 1) == []
    print(f"frozen node found and the run ended {took:.1f} s after the freeze", file=sys.stderr)


def test_sigterm_to_the_launcher_ends_within_stop_timeout_with_a_node_frozen(
        sshd: Sshd, tmp_path: Path, prepared: Path) -> None:
    """No watchdog (launch.hang_timeout=0): only the stop can end the run, and it must, in time."""
    import subprocess

    from tests.conftest import REPO

    run = tmp_path / "run"
    hostfile = sshd.hostfile(tmp_path / "hosts.txt")
    sets = [*sshd.launch_sets(), f"launch.hostfile={hostfile}", "launch.nodes=2", "launch.nproc_per_node=1",
            f"launch.master_port={free_port()}", f"launch.node_env={{'*': {{TMPDIR: '{tmp_path}'}}}}",
            *_small(tmp_path, prepared), "schedule.max_steps=100000", "checkpoint.every=0",
            "launch.hang_timeout=0", "launch.stop_timeout=5"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ominix", "train", "launch", "tiny", *[a for s in sets for a in ("--set", s)]],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    frozen = []
    _when_step(run, 2, lambda: frozen.extend(p for p in _node_processes(run, 1) if os.kill(p, signal.SIGSTOP)
                                             is None)).join(timeout=240)
    assert len(frozen) == 3
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    took = time.monotonic() - start
    assert proc.returncode == 143, out[-3000:]
    assert took < 5 + 25, took
    assert "fault" not in (run / "train.log").read_text()  # a stop is not a fault: no relaunch
    assert _leftovers(run) == [] and _node_processes(run, 1) == []
    print(f"SIGTERM with a frozen node: the launcher ended in {took:.1f} s", file=sys.stderr)
