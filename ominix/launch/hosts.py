"""Hostfiles: one node per line, as in ColossalAI, plus ``user@host:port`` and ``slots=N``.

```
# comments and blank lines are ignored
node1                      # a bare hostname, as `colossalai run --hostfile` reads it
alice@node2:2222 slots=8   # SSH user, SSH port, processes on that node (DeepSpeed, OpenMPI)
node3 max_slots=8          # OpenMPI's cap (also max-slots=8): the processes when slots= is not given
node4 slots=4 max_slots=8  # slots wins; it may not exceed max_slots
10.0.0.7
```

Every field is validated, because hostnames end up in SSH connections and command lines: a
hostname may not start with ``-`` (it would read as an option) and may hold only letters, digits,
``.``, ``-`` and ``_`` (or an IPv6 address in brackets), so no shell syntax can come through.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from ominix.errors import OminixError

_NAME = r"[A-Za-z0-9_](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?"
_USER = r"[A-Za-z_][A-Za-z0-9._-]*"
_LINE = re.compile(
    rf"^(?:(?P<user>{_USER})@)?(?:(?P<name>{_NAME})|\[(?P<v6>[0-9A-Fa-f:.]+)\])"
    r"(?::(?P<port>[0-9]{1,5}))?(?P<fields>(?:\s+\S+)*)$"
)
_FIELD = re.compile(r"^(?P<key>slots|max_slots|max-slots)=(?P<value>[0-9]{1,6})$")
HOSTNAME_RE = re.compile(rf"^{_NAME}$")
FORMAT = "[user@]host[:port] [slots=N] [max_slots=N]"


@dataclass(frozen=True)
class Host:
    """One line of a hostfile; ``None`` fields fall back to ~/.ssh/config and ``launch.*``."""

    hostname: str
    user: str | None = None
    port: int | None = None
    slots: int | None = None
    line: int = 0

    def __str__(self) -> str:
        name = f"[{self.hostname}]" if ":" in self.hostname else self.hostname
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"{user}{name}{port}"


def parse_line(text: str, where: str) -> Host | None:
    """Parse one hostfile line (``None`` for blank and comment lines)."""
    line = text.split("#", 1)[0].strip()
    if not line:
        return None
    match = _LINE.match(line)
    if match is None:
        raise OminixError(
            f"{where}: {line!r} is not a host entry",
            f"write one host per line as {FORMAT}; names may hold letters, digits, '.', '-', '_'",
        )
    port = int(match["port"]) if match["port"] else None
    if port is not None and not 1 <= port <= 65535:
        raise OminixError(f"{where}: port {port} is out of range", "use a port from 1 to 65535")
    fields = _fields(match["fields"].split(), where)
    slots = fields.get("slots", fields.get("max_slots"))
    if slots == 0:
        raise OminixError(f"{where}: slots=0 gives that node nothing to run", "use slots=1 or more")
    if slots is not None and slots > fields.get("max_slots", slots):
        raise OminixError(f"{where}: slots={slots} exceeds max_slots={fields['max_slots']}",
                          "lower slots= or raise max_slots=")
    return Host(hostname=match["name"] or match["v6"], user=match["user"], port=port, slots=slots)


def _fields(tokens: list[str], where: str) -> dict[str, int]:
    """``slots=N``, ``max_slots=N`` (or ``max-slots=N``), each at most once."""
    fields: dict[str, int] = {}
    for token in tokens:
        match = _FIELD.match(token)
        if match is None:
            raise OminixError(f"{where}: {token!r} is not a host field",
                              f"write one host per line as {FORMAT} (slots=N and max_slots=N are the fields read)")
        key = match["key"].replace("-", "_")
        if key in fields:
            raise OminixError(f"{where}: {key}= is given twice", "give it once")
        fields[key] = int(match["value"])
    return fields


def _same_host_key(host: Host, default_port: int) -> tuple[str, int]:
    """What makes two lines one machine's sshd: the address (case and IPv6
    spellings aside) and the port, a line without one meaning ``default_port``."""
    name = host.hostname.lower()
    try:
        name = ipaddress.ip_address(name).compressed
    except ValueError:
        pass  # a hostname, not an address
    return name, host.port or default_port


def parse_hostfile(path: str | Path, default_port: int = 22) -> list[Host]:
    """Read a hostfile; a malformed or duplicate line (the same host and port, a line without a
    port meaning ``default_port``, ``launch.ssh_port``) is an error naming its line number."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise OminixError(f"cannot read hostfile {path}: {exc.strerror}", "check --hostfile") from exc
    except UnicodeDecodeError as exc:
        raise OminixError(f"hostfile {path} is not a text file (byte {exc.start} is not UTF-8)",
                          f"pass a text file with one host per line as {FORMAT}") from exc
    hosts: list[Host] = []
    seen: dict[tuple[str, int], int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        host = parse_line(raw, f"{path} line {number}")
        if host is None:
            continue
        key = _same_host_key(host, default_port)
        if key in seen:
            raise OminixError(
                f"{path} line {number}: {host} is already listed on line {seen[key]} "
                f"(the same host and SSH port {key[1]})",
                "list every node once; one machine's processes are its slots=N",
            )
        seen[key] = number
        hosts.append(Host(host.hostname, host.user, host.port, host.slots, number))
    if not hosts:
        raise OminixError(f"hostfile {path} lists no hosts", f"write one host per line as {FORMAT}")
    return hosts


def select_hosts(hosts: list[Host], nodes: int | None, source: str = "the hostfile") -> list[Host]:
    """The first ``nodes`` hosts (all of them when ``nodes`` is None)."""
    if nodes is None:
        return hosts
    if nodes > len(hosts):
        raise OminixError(
            f"--nodes {nodes} asks for more nodes than {source} lists ({len(hosts)})",
            f"add hosts or pass --nodes {len(hosts)}",
        )
    return hosts[:nodes]


def check_hostname(name: str, what: str = "host") -> str:
    """``name`` (e.g. ``launch.master_addr``) as torchrun and sockets take it: an IPv6 address
    without its brackets. Refuses a name that could read as an option or shell syntax."""
    bare = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    if HOSTNAME_RE.match(bare):
        return bare
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        raise OminixError(
            f"{what} {name!r} is not a valid host name or IP address",
            "use letters, digits, '.', '-' and '_' only, not starting with '-', or an IPv6 address "
            "as [addr]",
        ) from None
