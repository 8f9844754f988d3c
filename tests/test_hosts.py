"""Hostfile parsing: the ColossalAI format, user@host:port, slots=N, and refused lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from ominix.errors import OminixError
from ominix.launch.hosts import Host, check_hostname, parse_hostfile, select_hosts


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hosts.txt"
    path.write_text(text)
    return path


def test_formats_comments_and_blank_lines(tmp_path: Path) -> None:
    hosts = parse_hostfile(_write(tmp_path, (
        "# cluster A\n\nnode1\n  alice@node2:2222 slots=8   # big node\n10.0.0.7:22\n"
        "bob@[fe80::1]:2200\nnode_5.example.org slots=2\n"
    )))
    assert hosts == [
        Host("node1", line=3), Host("node2", "alice", 2222, 8, line=4), Host("10.0.0.7", port=22, line=5),
        Host("fe80::1", "bob", 2200, line=6), Host("node_5.example.org", slots=2, line=7),
    ]
    assert str(hosts[1]) == "alice@node2:2222" and str(hosts[3]) == "bob@[fe80::1]:2200"
    assert select_hosts(hosts, 2) == hosts[:2] and select_hosts(hosts, None) == hosts


@pytest.mark.parametrize("line", [
    "-oProxyCommand=touch",          # option injection
    "node1;rm -rf /",                # shell syntax
    "node1 && reboot",
    "$(whoami)",
    "`id`",
    "node1 slots=",
    "node1 slots=0",
    "node1:99999",
    "node1:port",
    "-alice@node1",
    "node1 extra",
    "user@@node1",
    "node 1",
])
def test_malformed_lines_name_their_line_number(tmp_path: Path, line: str) -> None:
    with pytest.raises(OminixError) as info:
        parse_hostfile(_write(tmp_path, f"node0\n\n{line}\n"))
    assert "line 3" in info.value.message


def test_duplicates_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(OminixError, match=r"line 3: NODE1 is already listed on line 1"):
        parse_hostfile(_write(tmp_path, "node1\nnode2\nNODE1  # again\n"))
    assert len(parse_hostfile(_write(tmp_path, "node1:22\nnode1:2222\n"))) == 2  # other port: other sshd
    for same in ("n1\nn1:22\n", "alice@n1:22\nN1\n", "[::1]\n[0:0::1]:22\n"):  # default port, spellings
        with pytest.raises(OminixError, match=r"line 2: .* is already listed on line 1 \(the same host and SSH port 22"):
            parse_hostfile(_write(tmp_path, same))
    assert len(parse_hostfile(_write(tmp_path, "n1\nn1:22\n"), default_port=2222)) == 2  # launch.ssh_port
    with pytest.raises(OminixError, match="lists no hosts"):
        parse_hostfile(_write(tmp_path, "# nothing\n\n"))
    with pytest.raises(OminixError, match="cannot read hostfile"):
        parse_hostfile(tmp_path / "missing.txt")


def test_more_nodes_than_hosts_and_bad_master(tmp_path: Path) -> None:
    hosts = parse_hostfile(_write(tmp_path, "a\nb\n"))
    with pytest.raises(OminixError, match="--nodes 3 asks for more nodes"):
        select_hosts(hosts, 3)
    assert check_hostname("10.1.2.3") == "10.1.2.3"
    assert check_hostname("[::1]") == check_hostname("::1") == "::1"  # torchrun takes it bare
    with pytest.raises(OminixError):
        check_hostname("-x;reboot", "launch.master_addr")


def test_the_slow_node_is_the_one_whose_both_links_are_slow() -> None:
    """Each node's link figure is the better of its two ring pairs: node 2's pairs (1-2, 2-3) are
    both slow, nodes 1 and 3 each keep one fast pair, so only node 2 is named."""
    from ominix.launch.bandwidth import slowest

    def nodes(*links: float | None) -> dict:
        return {"per_node": [{"node": i, "link_gbps": g} for i, g in enumerate(links)]}

    assert slowest(nodes(10.0, 9.5, 1.2, 9.8))["node"] == 2
    assert slowest(nodes(10.0, 9.5, 8.0, 9.8)) is None  # within a factor of two of the best: none stands out
    assert slowest(nodes(1.0, 9.0)) is None  # two nodes share their only link: neither can be named
