"""`check-hosts` against a real sshd on 127.0.0.1 and 127.0.0.2: the table, --json, each problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from ominix.cli.hosts_cmd import register
from tests.sshd import Sshd, sshd  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("private_netns")


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.command("noop", hidden=True)
    def noop() -> None:  # a second command keeps `check-hosts` a named sub-command
        pass

    return app


def _check(sshd: Sshd, tmp_path: Path, *extra: str) -> tuple[int, str]:
    hostfile = sshd.hostfile(tmp_path / "hosts.txt")
    sets = [a for s in sshd.launch_sets() for a in ("--set", s)]
    result = CliRunner().invoke(
        _app(), ["check-hosts", "tiny", "--hostfile", str(hostfile), *sets,
                 "--set", f"logging.run_dir={tmp_path / 'run'}", "--master-port", "29731", *extra],
        env={"COLUMNS": "160"},
    )
    return result.exit_code, result.output


def test_all_checks_pass_json(sshd: Sshd, tmp_path: Path) -> None:
    code, out = _check(sshd, tmp_path, "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["ok"] and [h["host"] for h in doc["hosts"]] == [f"127.0.0.{i}:{sshd.port}" for i in (1, 2)]
    for host in doc["hosts"]:
        facts = host["facts"]
        assert facts["versions"] == doc["here"]["versions"] and facts["gpus"] == []
        assert facts["master"] == "refused"  # reachable, nothing listens before the launch


def test_table_and_problems(sshd: Sshd, tmp_path: Path) -> None:
    code, out = _check(sshd, tmp_path)
    assert code == 0 and "host checks" in out and "127.0.0.2" in out, out
    code, out = _check(sshd, tmp_path, "--set", "data.path=nowhere", "--set", "launch.workdir=/nonexistent",
                       "--nodes", "1")
    assert code == 1
    assert "working directory /nonexistent is missing" in out and "no prepared dataset" in out
    assert "127.0.0.2" not in out


def test_mismatches_are_reported(sshd: Sshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil
    import socket

    here, there = tmp_path / "here", tmp_path / "there"
    for root, body in ((here, '{"seed": 1}'), (there, '{"seed": 2}')):
        (root / "prepared").mkdir(parents=True)
        (root / "prepared" / "manifest.json").write_text(body)
    monkeypatch.chdir(here)
    busy = socket.create_server(("127.0.0.1", 29731))  # the master port, taken
    try:
        code, out = _check(sshd, tmp_path, "--set", "data.path=prepared", "--set", f"launch.workdir={there}",
                           "--json")
    finally:
        busy.close()
    assert code == 1
    from ominix.data.store import manifest_sha256

    doc = json.loads(out)
    assert doc["here"]["manifest"] == manifest_sha256(here / "prepared")  # the data store's checksum
    problems = [[p["message"] for p in h["problems"]] for h in doc["hosts"]]
    data = "prepared/manifest.json differs from here"
    assert problems == [[data, "port 29731 is already in use on the master node"], [data]]
    system_python = shutil.which("python3", path="/usr/bin")
    if system_python:  # a node whose interpreter lacks the stack
        code, out = _check(sshd, tmp_path, "--set", f"launch.python={system_python}", "--nodes", "1")
        assert code == 1 and ("torch missing there" in out or "failed on" in out), out
