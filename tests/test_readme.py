"""README.md's examples run as written, so the docs cannot rot.

The rule (also stated in README.md's Tour):
- every ```bash block is executed, in order, in one shell (``set -euo pipefail``) in an empty
  directory, with this interpreter's ``ominix`` first on PATH; lines starting with ``make``, ``pip``
  or ``python3 -m venv`` are the install steps and are skipped (the test runs inside the installed
  environment, and ``make test`` is what runs this test);
- a ```console block is shown, not executed (it needs GPUs or reachable hosts, or is the quickstart
  that tests/test_quickstart.py runs): each of its ``ominix`` lines is parsed with ``--help``
  appended, which fails on an unknown command or flag.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli

SKIP = re.compile(r"^(make|pip|python3 -m venv)\b")
GROUPS = ["ominix config", "ominix data prepare", "ominix data inspect", "ominix train launch",
          "ominix train check-hosts", "ominix checkpoint list", "ominix checkpoint export", "ominix infer",
          "ominix eval", "ominix mof init", "ominix mof report", "ominix mof check", "ominix release push", "ominix quickstart"]


def block_lines(lang: str) -> list[str]:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(rf"^```{lang}\n(.*?)^```", text, re.M | re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def bash_lines() -> list[str]:
    return [line for line in block_lines("bash") if not SKIP.match(line)]


def test_readme_shows_every_command_group() -> None:
    lines = bash_lines() + block_lines("console")
    for group in GROUPS:
        assert any(line.startswith(group) for line in lines), f"README has no example of `{group}`"
    assert any("--dry-run" in line and "--nodes" in line for line in bash_lines())
    assert [line for line in block_lines("bash") if SKIP.match(line)][:2] == [
        "make quickstart   # installs into .venv, then runs the whole pipeline on the embedded corpus",
        "make test         # installs into .venv, then runs the test suite (CPU; GPU tests are skipped)"]


def test_readme_console_commands_parse() -> None:
    lines = [line for line in block_lines("console") if line.startswith("ominix ")]
    assert lines
    for line in lines:
        result = run_cli(*shlex.split(line, comments=True)[1:], "--help")
        assert result.returncode == 0, f"{line}\n{result.stderr}"


@pytest.mark.slow
def test_readme_bash_examples_run(tmp_path: Path, private_netns: None) -> None:
    script = "set -euo pipefail\n" + "\n".join(f"echo '+ '{shlex.quote(line)}\n{line}" for line in bash_lines())
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, text=True, capture_output=True,
                            timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    run = tmp_path / "runs" / "tiny"
    log = (run / "train.log").read_text()
    assert "resumed from" in log and "learning-rate schedule" not in log  # the same curve, continued
    assert (run / "checkpoints" / "step_00000030").is_dir()
    assert (run / "export" / "config.json").is_file()
    assert (tmp_path / "release-tiny" / "mof.yml").is_file()
