"""Faults a launch meets, with real processes: a second launch on one run directory, a stale lock, the
launcher killed (-9, TERM, Ctrl-C), data of a larger vocabulary, a worker-side error, a binary
hostfile. Runs that kill processes run in their own pid namespace, to count what is left."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ominix.errors import OminixError
from ominix.launch.lock import LOCK_NAME, RunLock
from tests.conftest import REPO, run_cli


SETS = ["schedule.warmup_steps=1", "logging.log_every=1", "checkpoint.every=0", "schedule.eval_every=0",
        "logging.tensorboard=false"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}


def _argv(data: Path, run: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "ominix", "train", "launch", "tiny", "--data", str(data), "--run-dir", str(run),
            *args, *[a for s in SETS for a in ("--set", s)]]


def _wait_for(path: Path, text: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and text in path.read_text():
            return
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared in {path}")


# A launcher in a pid namespace of its own: start it, wait for its 2nd step, (with `freeze`, stop
# every worker with SIGSTOP,) signal it, then list every training process still alive in the
# namespace after `linger` seconds.
DRIVER = """
import json, os, signal, subprocess, sys, time
argv, sig, linger, out = json.loads(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
freeze = sys.argv[5:] == ["freeze"]
with open(out + ".out", "w") as o, open(out + ".err", "w") as e:
    proc = subprocess.Popen(argv, stdout=o, stderr=e)
    deadline = time.monotonic() + 180
    while "step      2/" not in open(out + ".out").read() and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in filter(str.isdigit, os.listdir("/proc")) if freeze else []:
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue
        if b"-m\\0ominix.train\\0" in cmd and b"torch.distributed.run" not in cmd:
            os.kill(int(pid), signal.SIGSTOP)
    signalled = time.monotonic()
    proc.send_signal(sig)
    code = proc.wait(timeout=120)
    took = time.monotonic() - signalled
deadline, left = time.monotonic() + linger, None
while left != [] and time.monotonic() < deadline:
    time.sleep(0.5)
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) in (1, os.getpid()):
            continue
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" ").decode()
        except OSError:
            continue
        if "ominix.train" in cmd or "torch.distributed.run" in cmd:
            left.append(cmd)
print(json.dumps({"code": code, "left": left, "took": took}))
"""


def _signal_in_namespace(argv: list[str], sig: int, linger: float, tmp: Path,
                         freeze: bool = False) -> tuple[int, list[str], str, str, float]:
    script = (f"ip link set lo up; exec {sys.executable} -c '{DRIVER}' '{json.dumps(argv)}' {sig} {linger} "
              f"{tmp / 'run'}{' freeze' if freeze else ''}")
    result = subprocess.run(["unshare", "-p", "-f", "--mount-proc", "--kill-child", "-n", "sh", "-c", script],
                            capture_output=True, text=True, env=ENV, cwd=REPO, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return (report["code"], report["left"], (tmp / "run.out").read_text(), (tmp / "run.err").read_text(),
            report["took"])


# --- the run-directory lock ------------------------------------------------------------------


def _write_lock(run: Path, **fields) -> None:
    record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(), "command": "ominix x",
              "pidns": os.readlink("/proc/self/ns/pid"), **fields}
    run.mkdir(parents=True, exist_ok=True)
    (run / LOCK_NAME).write_text(json.dumps(record))


def test_lock_of_a_dead_process_is_taken_over_with_a_notice(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    _write_lock(tmp_path, pid=dead.pid, started=time.time() - 60)
    notices: list[str] = []
    with RunLock(tmp_path).held(notices.append):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert len(notices) == 1 and f"took over the stale lock of pid {dead.pid}" in notices[0]
    assert not (tmp_path / LOCK_NAME).exists()  # released, and no file left aside


def test_live_lock_is_refused_naming_the_holder(tmp_path: Path) -> None:
    holder = subprocess.Popen(["sleep", "30"])
    try:
        _write_lock(tmp_path, pid=holder.pid, command="ominix train launch tiny")
        with pytest.raises(OminixError, match=rf"in use by another launch \(pid {holder.pid} on "
                                              rf"{socket.gethostname()}, started .*ominix train launch tiny"):
            RunLock(tmp_path).acquire(print)
    finally:
        holder.kill()
        holder.wait()


def test_lock_of_another_host_is_stale_only_when_its_heartbeat_stopped(tmp_path: Path) -> None:
    _write_lock(tmp_path, host="node7", pid=1)
    with pytest.raises(OminixError, match="pid 1 on node7"):
        RunLock(tmp_path).acquire(print)
    old = time.time() - 11 * 60
    os.utime(tmp_path / LOCK_NAME, (old, old))
    notices: list[str] = []
    with RunLock(tmp_path).held(notices.append):
        pass
    assert "heartbeat stopped" in notices[0]


def test_lock_of_a_launcher_killed_in_another_pid_namespace_is_taken_over_at_once(tmp_path: Path) -> None:
    # its pid means nothing here and its heartbeat is fresh: the flock it held tells it is gone
    hold = ("import sys, time; from ominix.launch.lock import RunLock; from pathlib import Path; "
            "RunLock(Path(sys.argv[1])).acquire(print); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen(["unshare", "-p", "-f", "--kill-child", sys.executable, "-c", hold, str(tmp_path)],
                            stdout=subprocess.PIPE, text=True, env=ENV, cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(OminixError, match="in use by another launch"):
            RunLock(tmp_path).acquire(print)  # alive: refused
    finally:
        proc.kill()  # SIGKILL to unshare: --kill-child takes the holder with it
        proc.wait()
    deadline = time.monotonic() + 10
    while RunLock(tmp_path).path.exists() and time.monotonic() < deadline:
        notices: list[str] = []
        try:
            with RunLock(tmp_path).held(notices.append):
                break
        except OminixError:
            time.sleep(0.2)  # the holder may take a moment to die
    assert notices and "took over the stale lock" in notices[0]


def test_a_reused_pid_does_not_keep_a_lock(tmp_path: Path) -> None:
    _write_lock(tmp_path, started=time.time() - 3600)  # "this process", but it started after the lock
    notices: list[str] = []
    with RunLock(tmp_path).held(notices.append):
        pass
    assert notices


@pytest.mark.usefixtures("private_netns")
def test_second_launch_is_refused_in_seconds_and_sigterm_saves_and_exits_143(data_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    run = tmp_path / "run"
    log = tmp_path / "first.out"
    with log.open("w") as out:
        first = subprocess.Popen(_argv(data_dir, run, "--max-steps", "200"), stdout=out, stderr=subprocess.STDOUT,
                                 env=ENV, cwd=REPO)
    try:
        _wait_for(log, "step      2/200")
        config = (run / "config.yaml").read_text()
        t0 = time.monotonic()
        second = run_cli("train", "launch", "tiny", "--data", str(data_dir), "--run-dir", str(run),
                         "--max-steps", "300", "--set", "optim.lr=1e-3", timeout=60)
        assert second.returncode == 2 and time.monotonic() - t0 < 30
        assert f"{run} is in use by another launch (pid {first.pid} on {socket.gethostname()}" in second.stderr
        assert "choose another --out" in second.stderr
        assert (run / "config.yaml").read_text() == config  # the first run keeps its settings
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=120) == 143
    finally:
        first.kill()
    text = log.read_text()
    step = int((run / "checkpoints" / "latest").read_text().strip().removeprefix("step_"))
    assert f"stopped by SIGTERM at step {step}; saved checkpoint step_{step:08d}; resume with --resume auto" in text
    assert "Traceback" not in text and not (run / LOCK_NAME).exists()


# --- the launcher owns torchrun and the workers ----------------------------------------------


@pytest.mark.usefixtures("private_netns")
def test_kill_9_of_the_launcher_leaves_no_process(data_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    argv = _argv(data_dir, tmp_path / "r", "--nproc-per-node", "2", "--max-steps", "200")
    code, left, out, err, _ = _signal_in_namespace(argv, signal.SIGKILL, 40, tmp_path)
    assert code == -9 and left == [], left


@pytest.mark.usefixtures("private_netns")
def test_ctrl_c_saves_and_exits_130_with_one_line(data_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    run = tmp_path / "r"
    code, left, out, err, _ = _signal_in_namespace(_argv(data_dir, run, "--nproc-per-node", "2", "--max-steps", "200"),
                                                signal.SIGINT, 10, tmp_path)
    assert code == 130 and left == [], (left, err[-2000:])
    step = int((run / "checkpoints" / "latest").read_text().strip().removeprefix("step_"))
    assert out.count("stopped by SIGINT") == 1 and f"at step {step}; saved checkpoint step_{step:08d}" in out
    assert "KeyboardInterrupt" not in err and "Traceback" not in err and "SignalException" not in err


@pytest.mark.usefixtures("private_netns")
def test_sigterm_with_every_worker_frozen_ends_within_stop_timeout(data_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    """Stopped workers never act on the forwarded SIGTERM: after launch.stop_timeout they are killed."""
    argv = _argv(data_dir, tmp_path / "r", "--nproc-per-node", "2", "--max-steps", "200",
                 "--set", "launch.stop_timeout=3", "--set", "launch.hang_timeout=0")
    code, left, out, err, took = _signal_in_namespace(argv, signal.SIGTERM, 10, tmp_path, freeze=True)
    assert code == 143 and left == [], (left, err[-2000:])
    assert took < 3 + 15, took


# --- checks before any process starts; worker errors as one line ----------------------------


def test_data_of_a_larger_vocabulary_is_refused_before_anything_starts(data_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    t0 = time.monotonic()
    result = run_cli("train", "launch", "tiny", "--data", str(data_dir), "--run-dir", str(tmp_path / "r"),
                     "--nproc-per-node", "2", "--set", "model.vocab_size=1000", timeout=60)
    assert result.returncode == 2 and time.monotonic() - t0 < 30
    assert "was tokenized with 2048 token ids, model.vocab_size is 1000" in result.stderr
    assert "model.vocab_size=2048" in result.stderr and not (tmp_path / "r").exists()


def test_missing_resume_target_is_refused_before_anything_starts(data_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    result = run_cli("train", "launch", "tiny", "--data", str(data_dir), "--run-dir", str(tmp_path / "r"),
                     "--resume", str(tmp_path / "nope"), timeout=60)
    assert result.returncode == 2 and f"{tmp_path / 'nope'} does not exist" in result.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.usefixtures("private_netns")
def test_worker_error_is_one_line_without_torchrun_traceback(data_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    bad = tmp_path / "data"
    bad.mkdir()
    for item in data_dir.iterdir():
        if item.name != "train":
            (bad / item.name).symlink_to(item)
    (bad / "train").mkdir()
    for shard in (data_dir / "train").iterdir():
        (bad / "train" / shard.name).write_bytes(shard.read_bytes()[: 1000 if shard.suffix == ".bin" else None])
    run = tmp_path / "r"
    result = subprocess.run(_argv(bad, run, "--nproc-per-node", "2", "--max-steps", "2"), capture_output=True,
                            text=True, env=ENV, cwd=REPO, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "00000.bin is missing or has 1000 bytes" in errors[0], result.stderr[-3000:]
    assert "ChildFailedError" not in result.stderr and "Traceback" not in result.stderr
    assert "Root Cause" not in result.stderr
    assert not run.exists()  # refused before training: nothing left behind


def test_in_process_worker_os_error_is_one_line_naming_the_path(data_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    """One process runs the worker in the launcher's process: an OS error there (metrics.jsonl
    cannot be opened) is one error line naming the path and a hint, as from a worker process."""
    run = tmp_path / "r"
    (run / "metrics.jsonl").mkdir(parents=True)
    result = subprocess.run(_argv(data_dir, run, "--nproc-per-node", "1", "--max-steps", "2"), capture_output=True,
                            text=True, env=ENV, cwd=REPO, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert errors == [f"error: Is a directory: {run / 'metrics.jsonl'}"], result.stderr[-3000:]
    assert f"hint: {run / 'metrics.jsonl'} is a directory: name a file" in result.stderr
    assert "Traceback" not in result.stderr


def test_binary_hostfile_is_one_error(tmp_path: Path) -> None:
    from ominix.launch.hosts import parse_hostfile

    hostfile = tmp_path / "hosts"
    hostfile.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    with pytest.raises(OminixError, match="is not a text file") as info:
        parse_hostfile(hostfile)
    assert "one host per line" in info.value.hint
