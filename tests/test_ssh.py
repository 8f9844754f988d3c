"""SSH connections against a real sshd: success, and every failure class produced for real."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ominix.config import LaunchConfig
from ominix.launch.hosts import Host
from ominix.launch.ssh import SSHError, connect, resolve_targets, run_command
from tests.sshd import Sshd, keygen, sshd  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("private_netns")


def _launch(server: Sshd, **kw: object) -> LaunchConfig:
    base = {"ssh_key": str(server.client_key), "known_hosts": str(server.known_hosts),
            "connect_timeout": 2.0}
    return LaunchConfig(**{**base, **kw})


def _target(server: Sshd, launch: LaunchConfig, addr: str = "127.0.0.2", port: int | None = None,
            user: str | None = None):
    host = Host(addr, user=user or server.user, port=port or server.port)
    return resolve_targets([host], launch)[0]


def _fails(server: Sshd, launch: LaunchConfig, kind: str, **target: object) -> SSHError:
    with pytest.raises(SSHError) as info:
        connect(_target(server, launch, **target), launch)
    assert info.value.kind == kind, info.value
    assert info.value.hint
    return info.value


def test_connect_runs_commands_in_home_with_login_path(sshd: Sshd) -> None:
    launch = _launch(sshd)
    client = connect(_target(sshd, launch), launch)
    status, out, _ = run_command(client, "pwd; echo $PATH; exit 3", timeout=10)
    client.close()
    assert status == 3
    home, path = out.splitlines()
    assert home == str(Path.home()) and "/usr/bin" in path


def test_connection_refused(sshd: Sshd) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.2", 0))
        port = sock.getsockname()[1]
    err = _fails(sshd, _launch(sshd), "refused", port=port)
    assert f"127.0.0.2:{port} refused the connection" in err.message


@pytest.fixture
def stalled() -> Iterator[tuple[int, int]]:
    """Two listeners: one that never accepts (backlog full), one that accepts but never speaks."""
    full = socket.socket()
    full.bind(("127.0.0.2", 0))
    full.listen(0)
    filler = socket.create_connection(full.getsockname())  # occupies the only backlog slot
    mute = socket.socket()
    mute.bind(("127.0.0.2", 0))
    mute.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        mute.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(mute.accept()[0])
            except TimeoutError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield full.getsockname()[1], mute.getsockname()[1]
    stop.set()
    thread.join()
    for sock in (full, filler, mute, *held):
        sock.close()


def test_timeout(sshd: Sshd, stalled: tuple[int, int]) -> None:
    err = _fails(sshd, _launch(sshd, connect_timeout=1.0), "timeout", port=stalled[0])
    assert "no answer from 127.0.0.2" in err.message


def test_banner_timeout(sshd: Sshd, stalled: tuple[int, int]) -> None:
    err = _fails(sshd, _launch(sshd, connect_timeout=1.0), "banner-timeout", port=stalled[1])
    assert "sent no SSH banner" in err.message


def test_wrong_key_and_wrong_user_fail_authentication(sshd: Sshd, tmp_path: Path) -> None:
    stranger = keygen(tmp_path / "stranger")
    err = _fails(sshd, _launch(sshd, ssh_key=str(stranger)), "auth")
    assert "refused authentication" in err.message and "authorized_keys" in err.hint
    _fails(sshd, _launch(sshd), "auth", user="no-such-user")


def test_unknown_host_key_refused_then_accepted_when_asked(sshd: Sshd, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    err = _fails(sshd, _launch(sshd, known_hosts=str(known)), "unknown-host-key")
    assert "--accept-new-host-keys" in err.hint and "ED25519" in err.message.upper()
    accept = _launch(sshd, known_hosts=str(known), accept_new_host_keys=True)
    connect(_target(sshd, accept), accept).close()
    assert known.read_text().startswith(f"[127.0.0.2]:{sshd.port} ssh-ed25519 ")
    connect(_target(sshd, accept), _launch(sshd, known_hosts=str(known))).close()  # now known


def test_changed_host_key_always_refused(sshd: Sshd, tmp_path: Path) -> None:
    other = keygen(tmp_path / "other_host")
    kind, b64 = Path(str(other) + ".pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.2]:{sshd.port} {kind} {b64}\n")
    err = _fails(sshd, _launch(sshd, known_hosts=str(known), accept_new_host_keys=True),
                 "changed-host-key")
    assert "CHANGED" in err.message and "ssh-keygen -R" in err.hint


def test_encrypted_garbage_and_missing_keys(sshd: Sshd, tmp_path: Path) -> None:
    encrypted = keygen(tmp_path / "encrypted", passphrase="secret phrase")
    err = _fails(sshd, _launch(sshd, ssh_key=str(encrypted)), "key-encrypted")
    assert "passphrase" in err.message and "ssh-add" in err.hint
    garbage = tmp_path / "garbage"
    garbage.write_text("this is not a key\n")
    err = _fails(sshd, _launch(sshd, ssh_key=str(garbage)), "key-unreadable")
    assert "not a private key" in err.message
    _fails(sshd, _launch(sshd, ssh_key=str(Path(str(encrypted) + ".pub"))), "key-unreadable")
    err = _fails(sshd, _launch(sshd, ssh_key=str(tmp_path / "missing")), "key-unreadable")
    assert "No such file" in err.message


def test_unresolvable_host_name(sshd: Sshd) -> None:
    _fails(sshd, _launch(sshd), "dns", addr="no-such-host.invalid")
