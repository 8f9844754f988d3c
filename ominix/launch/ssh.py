"""SSH connections to the nodes (paramiko), with one plain message and hint per failure class.

A host's SSH user, port, key and proxy come from, highest first: the hostfile line
(``user@host:port``), ``launch.ssh_user`` / ``launch.ssh_key``, ``~/.ssh/config``, then
``launch.ssh_port`` and the local user. Host keys are checked against ``launch.known_hosts``
(default ``~/.ssh/known_hosts``): an unknown key is refused unless ``accept_new_host_keys``, a
changed key always.
"""

from __future__ import annotations

import getpass
import logging
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ominix.errors import OminixError
from ominix.launch.hosts import Host

if TYPE_CHECKING:
    import paramiko

    from ominix.config import LaunchConfig

_KNOWN_HOSTS_LOCK = threading.Lock()
_QUIET = logging.NullHandler()  # added once (a handler already there is not added again)


class SSHError(OminixError):
    """A failed SSH connection; ``kind`` names the failure class (e.g. ``auth``, ``timeout``)."""

    def __init__(self, kind: str, message: str, hint: str) -> None:
        super().__init__(message, hint, exit_code=1)
        self.kind = kind


@dataclass(frozen=True)
class Target:
    """Where and how to reach one node: the hostfile entry resolved against ~/.ssh/config."""

    host: Host
    address: str
    port: int
    user: str
    key: str | None
    proxy_command: str | None = None

    @property
    def label(self) -> str:
        return self.host.hostname if self.host.port is None else f"{self.host.hostname}:{self.host.port}"

    @property
    def known_hosts_name(self) -> str:
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"


def _ssh_config() -> paramiko.SSHConfig | None:
    import paramiko

    path = Path("~/.ssh/config").expanduser()
    return paramiko.SSHConfig.from_path(str(path)) if path.is_file() else None


def resolve_targets(hosts: list[Host], launch: LaunchConfig) -> list[Target]:
    """Resolve every host's address, port, user and key (see the module docstring)."""
    config = _ssh_config()
    targets = []
    for host in hosts:
        entry = config.lookup(host.hostname) if config else {}
        files = entry.get("identityfile") or []
        key = launch.ssh_key or (files[0] if files and Path(files[0]).expanduser().is_file() else None)
        targets.append(
            Target(
                host=host,
                address=entry.get("hostname", host.hostname),
                port=host.port or int(entry.get("port", launch.ssh_port)),
                user=host.user or launch.ssh_user or entry.get("user") or getpass.getuser(),
                key=str(Path(key).expanduser()) if key else None,
                proxy_command=entry.get("proxycommand"),
            )
        )
    return targets


def known_hosts_path(launch: LaunchConfig) -> Path:
    return Path(launch.known_hosts or "~/.ssh/known_hosts").expanduser()


def load_key(path: str) -> paramiko.PKey:
    """Load a private key file, with a plain error for a missing, garbage or encrypted file."""
    import paramiko

    last: Exception | None = None
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key_file(path)
        except paramiko.PasswordRequiredException as exc:
            raise SSHError(
                "key-encrypted",
                f"private key {path} is protected by a passphrase",
                f"load it into ssh-agent (`ssh-add {path}`) and leave launch.ssh_key unset",
            ) from exc
        except OSError as exc:
            raise SSHError(
                "key-unreadable",
                f"cannot read private key {path}: {exc.strerror}",
                "point --ssh-key / launch.ssh_key at a readable private key file",
            ) from exc
        except paramiko.SSHException as exc:
            last = exc
    raise SSHError(
        "key-unreadable",
        f"{path} is not a private key paramiko can read (ed25519, ECDSA or RSA)",
        "point launch.ssh_key at the private key (not the .pub file); convert old formats with "
        "`ssh-keygen -p -f KEY`",
    ) from last


class _UnknownHostKey(Exception):
    def __init__(self, key: paramiko.PKey) -> None:
        super().__init__("unknown host key")
        self.key = key


def _fingerprint(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.fingerprint}"


def _host_key_policy(known_hosts: Path, accept_new: bool) -> paramiko.MissingHostKeyPolicy:
    import paramiko

    class Refuse(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client, hostname, key):  # noqa: ANN001
            raise _UnknownHostKey(key)

    class AcceptNew(paramiko.MissingHostKeyPolicy):
        """Record the key (like ssh's StrictHostKeyChecking=accept-new); threads share the file."""

        def missing_host_key(self, client, hostname, key):  # noqa: ANN001
            with _KNOWN_HOSTS_LOCK:
                known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                with known_hosts.open("a") as fh:
                    fh.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")

    return AcceptNew() if accept_new else Refuse()


def connect(target: Target, launch: LaunchConfig, accept_new: bool | None = None) -> paramiko.SSHClient:
    """An authenticated client for ``target``; every failure is an :class:`SSHError`."""
    import paramiko

    # NOTE: paramiko's transport thread logs a failure (a stalled banner) with its traceback, which
    # Python prints on stderr when the logger has no handler; connect's caller reports it as one line
    logging.getLogger("paramiko").addHandler(_QUIET)
    accept = launch.accept_new_host_keys if accept_new is None else accept_new
    known = known_hosts_path(launch)
    pkey = load_key(target.key) if target.key else None
    client = paramiko.SSHClient()
    if known.is_file():
        client.get_host_keys().load(str(known))
    client.set_missing_host_key_policy(_host_key_policy(known, accept))
    timeout = launch.connect_timeout
    try:
        sock = paramiko.ProxyCommand(target.proxy_command) if target.proxy_command else None
        client.connect(
            target.address, port=target.port, username=target.user, pkey=pkey,
            allow_agent=True, look_for_keys=pkey is None, sock=sock,
            # the banner wait must end before the socket timeout, else paramiko reports a
            # misleading "No existing session" instead of a banner timeout
            timeout=timeout, banner_timeout=timeout * 0.8, auth_timeout=timeout,
        )
    except Exception as exc:
        client.close()
        raise _translate(exc, target, launch, known) from exc
    client.get_transport().set_keepalive(15)
    return client


def _translate(exc: Exception, t: Target, launch: LaunchConfig, known: Path) -> Exception:
    import paramiko

    where = f"{t.user}@{t.address}:{t.port}"
    if isinstance(exc, SSHError):
        return exc
    if isinstance(exc, _UnknownHostKey):
        return SSHError(
            "unknown-host-key",
            f"{t.known_hosts_name} is not in {known} (it offers {_fingerprint(exc.key)})",
            f"check the fingerprint with the host's admin, then add it with `ssh-keyscan -p {t.port} "
            f"{t.address} >> {known}`, or pass --accept-new-host-keys",
        )
    if isinstance(exc, paramiko.BadHostKeyException):
        return SSHError(
            "changed-host-key",
            f"the host key of {t.known_hosts_name} CHANGED: {known} has {_fingerprint(exc.expected_key)}, "
            f"the server offers {_fingerprint(exc.key)}",
            "this can be a man-in-the-middle; if the host was reinstalled, remove the old key with "
            f"`ssh-keygen -R '{t.known_hosts_name}' -f {known}` and connect again",
        )
    if isinstance(exc, paramiko.PasswordRequiredException):
        return SSHError(
            "key-encrypted", f"a private key for {where} is protected by a passphrase",
            "add it to ssh-agent (`ssh-add KEY`) or pass an unencrypted key with --ssh-key",
        )
    if isinstance(exc, paramiko.AuthenticationException):
        key = t.key or "ssh-agent and ~/.ssh/id_*"
        return SSHError(
            "auth", f"{where} refused authentication ({key})",
            f"check the user name and that the public key is in {t.user}'s ~/.ssh/authorized_keys "
            f"on {t.address} (`ssh-copy-id -p {t.port} {t.user}@{t.address}`)",
        )
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return SSHError(
            "refused", f"{t.address}:{t.port} refused the connection",
            "is sshd running there, and is the port right (hostfile host:port or launch.ssh_port)?",
        )
    if isinstance(exc, socket.gaierror):
        return SSHError(
            "dns", f"cannot resolve host name {t.address!r}",
            "check the spelling in the hostfile, or add a HostName entry in ~/.ssh/config",
        )
    if isinstance(exc, TimeoutError | socket.timeout):
        return SSHError(
            "timeout", f"no answer from {t.address}:{t.port} within {launch.connect_timeout:g} s",
            "is the host up and the port open (firewall)? raise launch.connect_timeout for slow links",
        )
    if isinstance(exc, paramiko.SSHException) and "banner" in str(exc):
        return SSHError(
            "banner-timeout",
            f"{t.address}:{t.port} accepted the connection but sent no SSH banner",
            "is that port an SSH server? an overloaded sshd (MaxStartups) also stalls like this",
        )
    if isinstance(exc, OSError):
        return SSHError(
            "network", f"cannot connect to {t.address}:{t.port}: {exc.strerror or exc}",
            "check the network route to the host",
        )
    return SSHError("ssh", f"SSH to {where} failed: {exc}", "try `ssh` by hand to see the cause")


def run_command(client: paramiko.SSHClient, command: str, timeout: float) -> tuple[int, str, str]:
    """Run one shell command; return (exit status, stdout, stderr)."""
    stdin, stdout, stderr = client.exec_command(command, timeout=timeout)
    stdin.close()
    out = stdout.read().decode(errors="replace")
    err = stderr.read().decode(errors="replace")
    return stdout.channel.recv_exit_status(), out, err
