"""`check-hosts` against a real sshd on 127.0.0.1 and 127.0.0.2: the table, --json, each problem."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.sshd import Sshd, keygen, sshd  # noqa: F401  (fixture)
from tests.test_ssh import stalled  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("private_netns")


def _check(sshd: Sshd, tmp_path: Path, *extra: str, cwd: Path | None = None,
           env: dict[str, str] | None = None, hostfile: Path | None = None,
           sets: list[str] | None = None) -> tuple[int, str]:
    """Run `ominix train check-hosts` as a user would; return (exit code, stdout + stderr)."""
    hostfile = hostfile or sshd.hostfile(tmp_path / "hosts.txt")
    sets = sshd.launch_sets() if sets is None else sets
    result = run_cli(
        "train", "check-hosts", "tiny", "--hostfile", str(hostfile), *[a for s in sets for a in ("--set", s)],
        "--set", f"logging.run_dir={tmp_path / 'run'}", "--master-port", "29731", *extra,
        cwd=cwd, env={"COLUMNS": "160", **(env or {})}, timeout=120,
    )
    return result.returncode, result.stdout + result.stderr


def test_all_checks_pass_json(sshd: Sshd, tmp_path: Path) -> None:
    code, out = _check(sshd, tmp_path, "--json", "--nproc-per-node", "2")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["ok"] and [h["host"] for h in doc["hosts"]] == [f"127.0.0.{i}:{sshd.port}" for i in (1, 2)]
    for host in doc["hosts"]:
        facts = host["facts"]
        assert facts["versions"] == doc["here"]["versions"] and facts["gpus"] == []
        assert facts["master"] == "open"  # a listener on node 0 answered on the master port
    # then the collective, one torchrun per node over SSH: gloo, 2 nodes x 2 processes
    measured = doc["collective"]
    assert (measured["backend"], measured["world"], measured["nodes"]) == ("gloo", 4, 2)
    assert [r["bytes"] for r in measured["all"]] == [1 << 16, 1 << 20, 4 << 20]
    assert all(r["bus_gbps"] > 0 for r in measured["all"])
    assert [n["target"] for n in measured["per_node"]] == [h["host"] for h in doc["hosts"]]
    assert all(n["link_gbps"] > 0 and n["local_gbps"] > 0 for n in measured["per_node"])
    assert measured["slowest"] is None  # two nodes share their only link: neither is named
    import socket

    socket.create_server(("127.0.0.1", 29731)).close()  # and it is gone: the launch can take the port


def test_a_node_that_cannot_join_the_collective_is_named(sshd: Sshd, tmp_path: Path) -> None:
    """Node 1's gloo is told to use a network interface it does not have: the SSH checks pass,
    the all_reduce cannot start there, and check-hosts names that node (exit 100 + its rank)."""
    code, out = _check(sshd, tmp_path, "--set", 'launch.node_env={"127.0.0.2": {"GLOO_SOCKET_IFNAME": "nope0"}}')
    assert code == 101, out
    assert f"node 1 (127.0.0.2:{sshd.port}) failed first" in out and "Traceback" not in out, out
    assert "host checks" in out  # the SSH checks were shown before


def test_a_bracketed_ipv6_master_is_reached(sshd: Sshd, tmp_path: Path) -> None:
    """--master-addr [::1]: the nodes reach node 0's listener over IPv6 (no firewall blamed)."""
    code, out = _check(sshd, tmp_path, "--json", "--master-addr", "[::1]")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["here"]["master"] == "::1:29731" and {h["facts"]["master"] for h in doc["hosts"]} == {"open"}


def test_a_stalled_ssh_banner_is_one_line_without_a_traceback(sshd: Sshd, stalled: tuple[int, int],
                                                               tmp_path: Path) -> None:
    hostfile = tmp_path / "hosts.txt"
    hostfile.write_text(f"127.0.0.2:{stalled[1]}\n")
    code, out = _check(sshd, tmp_path, hostfile=hostfile, sets=[*sshd.launch_sets(), "launch.connect_timeout=1"])
    assert code == 1 and "Traceback" not in out and "Exception (client)" not in out, out
    assert f"127.0.0.2:{stalled[1]} accepted the connection but sent no SSH banner" in out


def test_table_and_problems(sshd: Sshd, tmp_path: Path) -> None:
    code, out = _check(sshd, tmp_path)
    assert code == 0 and "host checks" in out and "127.0.0.2" in out, out
    assert "all_reduce over 2 ranks on 2 nodes (gloo), bus GB/s: 0.0625 MiB" in out, out
    assert "bus bandwidth per node (GB/s)" in out and "slowest node" not in out, out
    code, out = _check(sshd, tmp_path, "--set", "data.path=nowhere", "--set", "launch.workdir=/nonexistent",
                       "--nodes", "1")
    assert code == 1
    assert "working directory /nonexistent is missing" in out and "no prepared dataset" in out
    assert "127.0.0.2" not in out


def test_mismatches_are_reported(sshd: Sshd, tmp_path: Path) -> None:
    import socket

    here, there = tmp_path / "here", tmp_path / "there"
    for root, body in ((here, '{"seed": 1}'), (there, '{"seed": 2}')):
        (root / "prepared").mkdir(parents=True)
        (root / "prepared" / "manifest.json").write_text(body)
    busy = socket.create_server(("127.0.0.1", 29731))  # the master port, taken
    try:
        code, out = _check(sshd, tmp_path, "--set", "data.path=prepared", "--set", f"launch.workdir={there}",
                           "--json", cwd=here)
    finally:
        busy.close()
    assert code == 1
    from ominix.data.store import manifest_sha256

    doc = json.loads(out)
    assert doc["here"]["manifest"] == manifest_sha256(here / "prepared")  # the data store's checksum
    problems = [[p["message"] for p in h["problems"]] for h in doc["hosts"]]
    data = "prepared/manifest.json differs from here"
    assert problems[1] == [data] and problems[0][0] == data
    assert problems[0][1].startswith("port 29731 is in use on the master node (busy: Address already in use")
    code, out = _check(sshd, tmp_path, "--master-addr", "10.255.255.1", "--json")  # no route there
    assert code == 1
    for host in json.loads(out)["hosts"]:
        assert [p["message"] for p in host["problems"]] == [
            "cannot reach the master at 10.255.255.1:29731: unreachable: Network is unreachable"]
    system_python = shutil.which("python3", path="/usr/bin")
    if system_python:  # a node whose interpreter lacks the stack
        code, out = _check(sshd, tmp_path, "--set", f"launch.python={system_python}", "--nodes", "1")
        assert code == 1 and ("torch missing there" in out or "failed on" in out), out


def test_ssh_config_alias_agent_and_default_known_hosts(sshd: Sshd, tmp_path: Path) -> None:
    """No launch.* SSH settings at all: ~/.ssh/config names the address, port and user, the key
    sits (passphrase-protected) in ssh-agent, and ~/.ssh/known_hosts holds the host key."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    shutil.copy(sshd.known_hosts, home / ".ssh" / "known_hosts")
    (home / ".ssh" / "config").write_text(
        f"Host gpu-*\n  User {sshd.user}\n  Port {sshd.port}\n"
        "Host gpu-a\n  HostName 127.0.0.1\nHost gpu-b\n  HostName 127.0.0.2\n"
    )
    key = keygen(tmp_path / "agent_key", passphrase="agent only")
    authorized = Path(sshd.root / "authorized_keys")
    authorized.write_text(authorized.read_text() + Path(str(key) + ".pub").read_text())
    sock = tmp_path / "agent.sock"
    agent = subprocess.run(["ssh-agent", "-a", str(sock)], capture_output=True, text=True, check=True)
    agent_pid = int(agent.stdout.split("SSH_AGENT_PID=")[1].split(";")[0])
    try:
        subprocess.run(["ssh-add", "-q", str(key)], env={**os.environ, "SSH_AUTH_SOCK": str(sock),
                       "SSH_ASKPASS": str(_askpass(tmp_path)), "SSH_ASKPASS_REQUIRE": "force",
                       "DISPLAY": ":0"}, check=True, capture_output=True)
        hostfile = tmp_path / "aliases.txt"
        hostfile.write_text("gpu-a\ngpu-b\n")
        code, out = _check(sshd, tmp_path, "--json", "--no-collective", hostfile=hostfile, sets=[],
                           env={"HOME": str(home), "SSH_AUTH_SOCK": str(sock)})
    finally:
        os.kill(agent_pid, signal.SIGTERM)
    assert code == 0, out
    assert [h["host"] for h in json.loads(out)["hosts"]] == ["gpu-a", "gpu-b"]


def _askpass(tmp_path: Path) -> Path:
    script = tmp_path / "askpass.sh"
    script.write_text("#!/bin/sh\necho 'agent only'\n")
    script.chmod(0o755)
    return script
