"""A private OpenSSH server for tests: its own config, host key and authorized key.

It listens on 127.0.0.1 and 127.0.0.2 (two "hosts" of a cluster) on a free port, and must run in
a private network namespace (``make test`` runs pytest under ``unshare -n``). Use the ``sshd``
fixture (one server per test module) together with ``private_netns``.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import in_private_netns

SSHD = "/usr/sbin/sshd"
ADDRESSES = ("127.0.0.1", "127.0.0.2")


def keygen(path: Path, passphrase: str = "") -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", "ominix-test", "-f", str(path)],
        check=True,
    )
    return path


def free_port(addr: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((addr, 0))
        return sock.getsockname()[1]


@dataclass
class Sshd:
    """A running sshd; ``client_key`` is authorized, ``known_hosts`` lists its host key."""

    root: Path
    port: int
    host_key: Path
    client_key: Path
    known_hosts: Path
    user: str
    pid: int

    def host_key_line(self, addr: str) -> str:
        pub = Path(str(self.host_key) + ".pub").read_text().split()
        return f"[{addr}]:{self.port} {pub[0]} {pub[1]}\n"

    def hostfile(self, path: Path, addrs: tuple[str, ...] = ADDRESSES) -> Path:
        path.write_text("".join(f"{self.user}@{a}:{self.port}\n" for a in addrs))
        return path

    def launch_sets(self) -> list[str]:
        """``--set`` overrides that point ``launch.*`` at this server."""
        return [
            f"launch.ssh_key={self.client_key}",
            f"launch.known_hosts={self.known_hosts}",
            "launch.connect_timeout=5",
        ]


def start_sshd(root: Path) -> Sshd:
    if not in_private_netns():
        pytest.fail("the test sshd must run in a private network namespace (see `make test`)")
    if not Path(SSHD).exists():
        pytest.fail("openssh-server is not installed: run `make test-deps`")
    root.mkdir(parents=True, exist_ok=True)
    host_key = keygen(root / "host_ed25519")
    client_key = keygen(root / "client_ed25519")
    authorized = root / "authorized_keys"
    shutil.copy(str(client_key) + ".pub", authorized)
    port = free_port()
    config = root / "sshd_config"
    config.write_text(
        "".join(f"ListenAddress {a}\n" for a in ADDRESSES)
        + f"Port {port}\nHostKey {host_key}\nPidFile {root / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {authorized}\nPermitRootLogin prohibit-password\n"
        "PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "UsePAM no\nStrictModes no\nUseDNS no\nMaxStartups 100\nMaxSessions 100\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    subprocess.run([SSHD, "-t", "-f", str(config)], check=True)
    subprocess.run([SSHD, "-f", str(config), "-E", str(root / "sshd.log")], check=True)
    pid = read_pid(root / "sshd.pid")
    known = root / "known_hosts"
    server = Sshd(root, port, host_key, client_key, known, getpass.getuser(), pid)
    known.write_text("".join(server.host_key_line(a) for a in ADDRESSES))
    return server


def read_pid(pid_file: Path, timeout: float = 10.0) -> int:
    """The daemon's pid, once sshd has written it whole (it creates the file before writing it)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return int(pid_file.read_text())
        except (FileNotFoundError, ValueError):
            if time.monotonic() > deadline:
                pytest.fail(f"sshd wrote no pid to {pid_file} within {timeout:.0f} s")
            time.sleep(0.05)


def stop_sshd(server: Sshd) -> None:
    try:
        os.kill(server.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    stop_sshd(server)
