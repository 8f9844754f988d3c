"""Launch machinery over a real sshd: two "nodes" (127.0.0.1, 127.0.0.2) each running torchrun
with a gloo all-reduce worker; explicit env, secrets, logs, fail fast, Ctrl-C, nothing left."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ominix.config import LaunchConfig, OminixConfig, ScheduleConfig
from ominix.launch.hosts import Host
from ominix.launch.multinode import NodeFailed, node_command, run_nodes
from ominix.launch.ssh import resolve_targets
from tests.sshd import Sshd, free_port, sshd  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("private_netns")

WORKER = """
import json, os, signal, sys, time
import torch, torch.distributed as dist
out, mode = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo")
rank = dist.get_rank()
t = torch.tensor([float(rank + 1)])
dist.all_reduce(t)


def slow_exit(*_):  # 'slow-exit': a checkpoint save that takes 4 s, then the loop's own 143
    time.sleep(4)
    open(os.path.join(out, f"saved{rank}"), "w").close()
    os._exit(143)


if mode == "slow-exit":
    signal.signal(signal.SIGTERM, slow_exit)
if mode == "deaf":  # a worker that never stops by itself
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(os.path.join(out, f"rank{rank}.json.tmp"), "w") as f:  # renamed: readers see it whole
    json.dump({"sum": t.item(), "pid": os.getpid(), "env": sorted(os.environ),
               "token_ok": os.environ.get("HF_TOKEN") == "hf_secret_value",
               "iface": os.environ.get("NCCL_SOCKET_IFNAME")}, f)
os.replace(os.path.join(out, f"rank{rank}.json.tmp"), os.path.join(out, f"rank{rank}.json"))
print(f"rank {rank} all-reduce sum {t.item():g}", flush=True)
if mode == "crash" and rank == 1:
    sys.exit(3)
while mode != "ok":  # 'hang': keep talking to the peer like a training loop; 'crash': rank 0
    if mode == "hang":  # waits quietly, so node 1 is surely the node that failed first
        dist.all_reduce(t)
    time.sleep(0.05)
dist.destroy_process_group()
"""


def _cfg(server: Sshd, tmp_path: Path, node_env: dict | None = None, **launch: object) -> OminixConfig:
    node_env = node_env or {}
    # torchrun leaves /tmp/torchelastic_* behind: keep them in the test's directory
    node_env["*"] = {**node_env.get("*", {}), "TMPDIR": str(tmp_path)}
    return OminixConfig(launch=LaunchConfig(
        ssh_key=str(server.client_key), known_hosts=str(server.known_hosts), connect_timeout=5,
        workdir=str(Path.cwd()), node_env=node_env, **launch,
    ))


def _nodes(server: Sshd, cfg: OminixConfig, tmp_path: Path, mode: str):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = free_port()
    targets = resolve_targets([Host(a, port=server.port) for a in ("127.0.0.1", "127.0.0.2")], cfg.launch)
    return [
        node_command(cfg, rank, t, [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(rank),
            "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port),
            "--rdzv-conf", "timeout=30", "--max-restarts", "0", str(script), str(tmp_path), mode,
        ])
        for rank, t in enumerate(targets)
    ]


def _failed_first(cfg: OminixConfig, nodes: list, log_dir: Path) -> str:
    """Run ``nodes``, which must fail: node 1 first (exit code 101); the error's message."""
    with pytest.raises(NodeFailed) as failed:
        run_nodes(cfg, nodes, log_dir)
    assert failed.value.exit_code == 101
    return failed.value.message


def _leftovers(tmp_path: Path, wait_s: float = 15) -> list[int]:
    """PIDs whose command line still names this test's worker, after waiting for them to exit."""
    marker = str(tmp_path / "worker.py").encode()
    deadline = time.monotonic() + wait_s
    while True:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if marker in (entry / "cmdline").read_bytes():
                        found.append(int(entry.name))
                except OSError:
                    pass
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_two_nodes_run_with_explicit_env_and_logs(sshd: Sshd, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    monkeypatch.setenv("OMINIX_TEST_LOCAL_ONLY", "must not travel")
    cfg = _cfg(sshd, tmp_path, forward_env=["HF_TOKEN"],
               node_env={"*": {"OMP_NUM_THREADS": "1"}, "127.0.0.2": {"NCCL_SOCKET_IFNAME": "lo"}})
    nodes = _nodes(sshd, cfg, tmp_path, "ok")
    assert "hf_secret_value" not in nodes[0].command and "HF_TOKEN=****" in nodes[0].shown()
    start = time.monotonic()
    assert run_nodes(cfg, nodes, tmp_path / "logs") == 0
    elapsed = time.monotonic() - start
    out = capfd.readouterr().out
    assert f"[127.0.0.1:{sshd.port}] rank 0 all-reduce sum 3" in out
    assert f"[127.0.0.2:{sshd.port}] rank 1 all-reduce sum 3" in out
    assert "hf_secret_value" not in out
    log1 = (tmp_path / "logs" / f"127.0.0.2_{sshd.port}.log").read_text()
    assert "rank 1 all-reduce sum 3" in log1 and "rank 0" not in log1
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["token_ok"] for r in ranks)
    assert [r["iface"] for r in ranks] == [None, "lo"]
    assert not any("OMINIX_TEST_LOCAL_ONLY" in r["env"] for r in ranks)
    assert "OMP_NUM_THREADS" in ranks[0]["env"] and "PATH" in ranks[0]["env"]
    print(f"two-node gloo launch over SSH: {elapsed:.1f} s", file=sys.stderr)


def test_one_node_failing_stops_the_other(sshd: Sshd, tmp_path: Path) -> None:
    cfg = _cfg(sshd, tmp_path)
    err = _failed_first(cfg, _nodes(sshd, cfg, tmp_path, "crash"), tmp_path / "logs")
    assert f"node 1 (127.0.0.2:{sshd.port}) failed first: exit status" in err
    assert _leftovers(tmp_path) == []


def test_killing_a_worker_stops_the_job(sshd: Sshd, tmp_path: Path) -> None:
    cfg = _cfg(sshd, tmp_path)

    def kill_rank1() -> None:
        pid_file = tmp_path / "rank1.json"
        while not pid_file.exists():
            time.sleep(0.1)
        time.sleep(0.3)
        os.kill(json.loads(pid_file.read_text())["pid"], 9)

    threading.Thread(target=kill_rank1, daemon=True).start()
    assert "node 1 (127.0.0.2" in _failed_first(cfg, _nodes(sshd, cfg, tmp_path, "hang"), tmp_path / "logs")
    assert _leftovers(tmp_path) == []


def _guard_of_node1(tmp_path: Path) -> int:
    marker = str(tmp_path / "worker.py").encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"ominix.launch.nodeguard" in cmd and marker in cmd and b"--node-rank\x001\x00" in cmd:
                return int(entry.name)
    raise AssertionError("node 1's guard is not running")


@pytest.mark.parametrize("victim", ["sshd-session", "guard"])
def test_host_dropping_stops_the_job(sshd: Sshd, tmp_path: Path, victim: str) -> None:
    """SIGKILL node 1's sshd session (its TCP connection dies like a dropped host) or its guard
    (torchrun then gets SIGTERM from the kernel): the job stops, nothing is left running."""
    cfg = _cfg(sshd, tmp_path)

    def drop_node1() -> None:
        while not (tmp_path / "rank1.json").exists():
            time.sleep(0.1)
        guard = _guard_of_node1(tmp_path)
        parent = int(Path(f"/proc/{guard}/stat").read_text().rsplit(")", 1)[1].split()[1])
        os.kill(parent if victim == "sshd-session" else guard, 9)

    threading.Thread(target=drop_node1, daemon=True).start()
    err = _failed_first(cfg, _nodes(sshd, cfg, tmp_path, "hang"), tmp_path / "logs")
    assert "node 1 (127.0.0.2" in err and "no exit status came back" in err
    assert _leftovers(tmp_path) == []


@pytest.fixture(autouse=True)
def _sigint_raises() -> Iterator[None]:
    """Python's own Ctrl-C handler in this process: a test run started in the background of a
    non-interactive shell inherits SIGINT ignored, and the launcher would never see the test's Ctrl-C."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _ctrl_c() -> None:
    """What Ctrl-C does to the launcher: a real SIGINT to the main thread, which interrupts the call
    it is blocked in (``_thread.interrupt_main`` only sets a flag, which a blocked main thread did
    not see once under heavy load)."""
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)


def test_ctrl_c_stops_every_node(sshd: Sshd, tmp_path: Path) -> None:
    cfg = _cfg(sshd, tmp_path)

    def interrupt() -> None:
        while not (tmp_path / "rank1.json").exists():
            time.sleep(0.1)
        _ctrl_c()

    threading.Thread(target=interrupt, daemon=True).start()
    assert run_nodes(cfg, _nodes(sshd, cfg, tmp_path, "hang"), tmp_path / "logs") == 130
    assert _leftovers(tmp_path) == []


def _interrupt_when_running(tmp_path: Path, times: int = 1, pause_s: float = 1.0) -> list[float]:
    """Ctrl-C (``times`` of them, ``pause_s`` apart) once both workers run; the list gets the
    monotonic time of the last one."""
    at: list[float] = []

    def interrupt() -> None:
        while not all((tmp_path / f"rank{r}.json").exists() for r in (0, 1)):
            time.sleep(0.1)
        for i in range(times):
            if i:
                time.sleep(pause_s)
            at[:] = [time.monotonic()]
            _ctrl_c()

    threading.Thread(target=interrupt, daemon=True).start()
    return at


def test_a_stop_lets_the_workers_save_and_never_signals_torchrun(sshd: Sshd, tmp_path: Path) -> None:
    """Ctrl-C: the workers themselves get SIGTERM and take the time they need (4 s here) to save
    and exit 143 by their own handler; torchrun, which would kill them 30 s after a signal of its
    own, gets none."""
    cfg = _cfg(sshd, tmp_path, stop_timeout=20)
    at = _interrupt_when_running(tmp_path)
    assert run_nodes(cfg, _nodes(sshd, cfg, tmp_path, "slow-exit"), tmp_path / "logs") == 130
    assert time.monotonic() - at[0] >= 4
    assert (tmp_path / "saved0").exists() and (tmp_path / "saved1").exists()
    for log in (tmp_path / "logs").iterdir():
        text = log.read_text()
        assert "exitcode  : 143" in text, text
        assert "death signal" not in text and "SignalException" not in text, text
    assert _leftovers(tmp_path) == []


def test_a_worker_that_ignores_the_stop_is_killed_after_stop_timeout(sshd: Sshd, tmp_path: Path) -> None:
    cfg = _cfg(sshd, tmp_path, stop_timeout=2)
    at = _interrupt_when_running(tmp_path)
    assert run_nodes(cfg, _nodes(sshd, cfg, tmp_path, "deaf"), tmp_path / "logs") == 130
    assert 2 <= time.monotonic() - at[0] < 10
    assert _leftovers(tmp_path, wait_s=5) == []


def test_a_second_interrupt_kills_without_waiting_for_the_save(sshd: Sshd, tmp_path: Path,
                                                             capfd: pytest.CaptureFixture[str]) -> None:
    cfg = _cfg(sshd, tmp_path, stop_timeout=600)
    at = _interrupt_when_running(tmp_path, times=2)
    assert run_nodes(cfg, _nodes(sshd, cfg, tmp_path, "deaf"), tmp_path / "logs") == 130
    assert time.monotonic() - at[0] < 8
    assert "interrupted again: killing every node" in capfd.readouterr().err
    assert _leftovers(tmp_path, wait_s=5) == []


def _dry(cfg: OminixConfig, run_dir: Path) -> str:
    from ominix.launch.run import launch_multinode

    outcome = launch_multinode(cfg, run_dir, dry_run=True)
    assert outcome.code == 0
    return outcome.text


def test_slurm_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    from ominix.launch.slurm import write_sbatch

    monkeypatch.setenv("WANDB_API_KEY", "wandb_secret_value")
    cfg = OminixConfig(launch=LaunchConfig(
        launcher="slurm", nodes=4, nproc_per_node=8, forward_env=["WANDB_API_KEY"],
        node_env={"*": {"NCCL_SOCKET_IFNAME": "ib0"}}, workdir="/scratch/my project"))
    outcome = write_sbatch(cfg, tmp_path / "run", dry_run=True)
    text = outcome.text
    assert outcome.code == 0 and not (tmp_path / "run").exists()  # a dry run writes nothing
    script = tmp_path / "launch.sbatch"  # submitted for real in tests/test_slurm.py
    script.write_text(text)
    assert "wandb_secret_value" not in text
    assert f"sbatch --parsable --export=NONE,WANDB_API_KEY {tmp_path / 'run' / 'launch.sbatch'}" in text
    for line in ("#SBATCH --nodes=4", "#SBATCH --gpus-per-node=8", "cd '/scratch/my project'",
                 "export NCCL_SOCKET_IFNAME=ib0", '--node-rank "$SLURM_NODEID" --nproc-per-node 8'):
        assert line in text
    subprocess.run(["bash", "-n", str(script)], check=True)
    from ominix.errors import OminixError

    cfg.launch.node_env = {"*": {"HF_TOKEN": "hf_x"}}
    with pytest.raises(OminixError, match="would write HF_TOKEN into the sbatch file"):
        write_sbatch(cfg, tmp_path / "run", dry_run=True)


def test_colossalai_dry_run_masks_secrets_and_refuses_what_it_cannot_do(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    monkeypatch.setenv("OMINIX_TEST_LOCAL_ONLY", "x")
    hostfile = tmp_path / "hosts.txt"
    hostfile.write_text("node1\nnode2 slots=2\nnode3\n")
    cfg = OminixConfig(launch=LaunchConfig(launcher="colossalai", nodes=2, hostfile=str(hostfile),
                                           nproc_per_node=2, forward_env=["HF_TOKEN"]),
                       schedule=ScheduleConfig(global_batch_size=16, micro_batch_size=4))
    out = _dry(cfg, tmp_path / "run")
    assert "#   node1\n#   node2\n" in out and "node3" not in out
    assert "HF_TOKEN=****" in out and "hf_secret_value" not in out and "OMINIX_TEST_LOCAL_ONLY" not in out
    assert "colossalai run --hostfile" in out and "--num_nodes 2 --nproc_per_node 2 --master_addr node1" in out
    from ominix.errors import OminixError
    from ominix.launch.run import launch_multinode

    hostfile.write_text("alice@node1\nnode2\n")
    with pytest.raises(OminixError, match="bare host names"):
        launch_multinode(cfg, tmp_path / "run", dry_run=True)


def test_remote_arguments_are_quoted(sshd: Sshd, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A working directory and arguments full of shell syntax arrive verbatim; nothing runs."""
    weird = tmp_path / "work dir $(touch pwned) ; touch pwned2 'q\""
    weird.mkdir()
    cfg = _cfg(sshd, tmp_path, node_env={"127.0.0.2": {"OMINIX_NOTE": "a;b $(touch pwned3) `x`",
                                                       "MY_API_KEY": "key_value_123"}})
    cfg.launch.workdir = str(weird)
    targets = resolve_targets([Host(a, port=sshd.port) for a in ("127.0.0.1", "127.0.0.2")], cfg.launch)
    probe = ("import os, sys; print('cwd=' + os.getcwd(), 'arg=' + sys.argv[1], os.environ.get('OMINIX_NOTE'),"
             " os.environ.get('MY_API_KEY', '')[::-1])")
    nodes = [node_command(cfg, r, t, [sys.executable, "-c", probe, "$HOME;`id`"]) for r, t in enumerate(targets)]
    # a secret-looking node_env variable travels on stdin, like forward_env
    assert "key_value_123" not in nodes[1].command and "MY_API_KEY=****" in nodes[1].shown()
    assert run_nodes(cfg, nodes, tmp_path / "logs") == 0
    out = capfd.readouterr().out
    assert out.count(f"cwd={weird} arg=$HOME;`id`") == 2
    assert "a;b $(touch pwned3) `x` 321_eulav_yek" in out
    assert not list(tmp_path.rglob("pwned*")) and not list(Path.home().glob("pwned*"))


def test_dry_run_of_the_train_command(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    hostfile = tmp_path / "hosts.txt"
    hostfile.write_text("# two nodes\nalice@node-a:2222 slots=1\nnode-b:2222 slots=1\nnode-c\n")
    result = run_cli("train", "launch", "tiny", "--dry-run", "--set", f"launch.hostfile={hostfile}",
                     "--set", "launch.nodes=2", "--set", "launch.forward_env=[HF_TOKEN]",
                     env={"HF_TOKEN": "hf_secret_value"})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "# node 0: ssh -p 2222 alice@node-a" in out and "# node 1: ssh -p 2222" in out
    assert "--node-rank=1 --master-addr=node-a" in out and "node-c" not in out
    assert out.count("# on stdin: HF_TOKEN=****") == 2 and "hf_secret_value" not in out
    hostfile.write_text("node-a\nnode-b;reboot\n")
    result = run_cli("train", "launch", "tiny", "--dry-run", "--set", f"launch.hostfile={hostfile}",
                     "--set", "launch.nodes=2")
    assert result.returncode == 2 and "line 2" in result.stderr


def test_a_hung_host_is_detected_by_heartbeat(sshd: Sshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGSTOP node 1's sshd session: its TCP connection stays open but nothing answers, as with a
    hung host. The heartbeat notices, the other node is stopped; after SIGCONT, node 1's guard
    sees its connection closed and stops too."""
    import signal

    from ominix.launch import multinode

    monkeypatch.setattr(multinode, "HEARTBEAT_S", 0.5)
    monkeypatch.setattr(multinode, "HEARTBEAT_TIMEOUT_S", 3.0)
    cfg = _cfg(sshd, tmp_path)
    session: list[int] = []

    def hang_node1() -> None:
        while not (tmp_path / "rank1.json").exists():
            time.sleep(0.1)
        guard = _guard_of_node1(tmp_path)
        session.append(int(Path(f"/proc/{guard}/stat").read_text().rsplit(")", 1)[1].split()[1]))
        os.kill(session[0], signal.SIGSTOP)

    threading.Thread(target=hang_node1, daemon=True).start()
    try:
        err = _failed_first(cfg, _nodes(sshd, cfg, tmp_path, "hang"), tmp_path / "logs")
    finally:
        if session:
            os.kill(session[0], signal.SIGCONT)
    assert "node 1 (127.0.0.2" in err and "stopped answering for 3 s" in err
    assert _leftovers(tmp_path, wait_s=60) == []


def test_multinode_flags_of_the_train_command(tmp_path: Path) -> None:
    """The issue's command line: --plugin gemini --nodes N --hostfile F, plus --launcher/--forward-env."""
    from tests.conftest import run_cli

    hostfile = tmp_path / "hosts.txt"
    hostfile.write_text("node-a\nnode-b\nnode-c\nnode-d\nnode-e\n")
    result = run_cli("train", "launch", "tiny", "--dry-run", "--plugin", "ddp", "--nodes", "4",
                     "--hostfile", str(hostfile), "--master-port", "29611", "--rdzv-timeout", "30",
                     "--forward-env", "HF_TOKEN", "--set", "schedule.global_batch_size=32", env={"HF_TOKEN": "hf_secret_value"})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert all(f"# node {i}:" in out for i in range(4)) and "node-e" not in out
    assert "--master-port=29611" in out and "hf_secret_value" not in out
    result = run_cli("train", "launch", "tiny", "--dry-run", "--nodes", "2", "--hostfile", str(hostfile),
                     "--launcher", "slurm", "--set", f"logging.run_dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr


def test_launch_env_reaches_every_node_and_yields_to_node_env_and_the_local_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """launch.env: exported on every node (node_env wins there); locally the user's environment
    wins; the product sets no NCCL/NVSHMEM switch of its own."""
    from ominix.launch.command import local_env
    from ominix.launch.slurm import sbatch_script

    cfg = OminixConfig(launch=LaunchConfig(env={"NCCL_NVLS_ENABLE": "0", "OMP_NUM_THREADS": "2"},
                                           node_env={"node-b": {"OMP_NUM_THREADS": "8"}}))
    targets = resolve_targets([Host("node-a"), Host("node-b")], cfg.launch)
    a, b = (node_command(cfg, r, t, ["true"]).command for r, t in enumerate(targets))
    assert "--env NCCL_NVLS_ENABLE=0" in a and "--env OMP_NUM_THREADS=2" in a
    assert "--env NCCL_NVLS_ENABLE=0" in b and "--env OMP_NUM_THREADS=8" in b and "OMP_NUM_THREADS=2" not in b
    assert "export NCCL_NVLS_ENABLE=0" in sbatch_script(cfg, tmp_path / "run")
    assert local_env(cfg, {"NCCL_NVLS_ENABLE": "1"}) == {"NCCL_NVLS_ENABLE": "1", "OMP_NUM_THREADS": "2"}
    from ominix.env_defaults import env_defaults  # the one-process run, in this process

    monkeypatch.setenv("NCCL_NVLS_ENABLE", "1")
    with env_defaults(cfg.launch.env):
        assert os.environ["NCCL_NVLS_ENABLE"] == "1" and os.environ["OMP_NUM_THREADS"] == "2"
    assert os.environ["NCCL_NVLS_ENABLE"] == "1" and "OMP_NUM_THREADS" not in os.environ
    plain = OminixConfig()
    command = node_command(plain, 0, resolve_targets([Host("node-a")], plain.launch)[0], ["true"]).command
    assert "NCCL" not in command and "NVSHMEM" not in command and "MULTICAST" not in command
    assert local_env(plain, {"PATH": "/bin"}) == {"PATH": "/bin"}
    from ominix.errors import OminixError

    cfg.launch.env = {"HF_TOKEN": "hf_x"}
    with pytest.raises(OminixError, match="launch.env would write HF_TOKEN into the sbatch file"):
        sbatch_script(cfg, tmp_path / "run")


def test_launch_env_names_are_checked() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="'BAD-NAME' is not a variable name"):
        LaunchConfig(env={"BAD-NAME": "1"})
