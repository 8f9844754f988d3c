"""README.md's and the docs pages' examples run as written, and their links resolve, so the docs cannot rot.

The rule (also stated in README.md and at the top of each page in RUN_PAGES):
- every ```bash block of RUN_PAGES is executed, in that order, in one shell (``set -euo pipefail``) in
  an empty directory, with this interpreter's ``ominix`` first on PATH: README.md builds ``data/tiny``,
  ``runs/tiny`` and ``release-tiny`` and the pages after it use them. Lines starting with ``make``,
  ``pip`` or ``python3 -m venv`` are install steps and are skipped (the test runs inside the installed
  environment, and ``make test`` is what runs this test);
- every other ``ominix`` line of a README or docs page (```console blocks, which need GPUs, reachable
  hosts or the network, and the ```bash blocks of the other pages) is parsed with ``--help`` appended,
  which fails on an unknown command or flag.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SKIP = re.compile(r"^(make|pip|python3 -m venv)\b")
RUN_PAGES = ("README.md", "docs/DATA.md", "docs/TRAINING.md", "docs/EXPORT.md", "docs/INFERENCE.md",
             "docs/MOF.md")
PAGES = ("README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")))
README_GROUPS = ["ominix data prepare", "ominix data inspect", "ominix train launch",
                 "ominix checkpoint list", "ominix checkpoint export", "ominix infer", "ominix eval",
                 "ominix mof init", "ominix mof report", "ominix mof check", "ominix quickstart"]
DOCS_GROUPS = ["ominix config", "ominix train check-hosts", "ominix train plot", "ominix release push",
               "ominix data batch"]
# Checks each line's command and flags in one interpreter: a process per line would cost seconds each.
PARSE = """
import json, sys
from typer.testing import CliRunner
from ominix.cli.main import app
for args in json.load(sys.stdin):
    result = CliRunner().invoke(app, args)
    if result.exit_code != 0:
        said = [line.strip(" \u2502") for line in result.output.splitlines()
                if any(c.isalpha() for c in line)]
        print(" ".join(args[:-1]), "->", said[-1:])
"""


def block_lines(page: str, lang: str) -> list[str]:
    text = (REPO / page).read_text()
    blocks = re.findall(rf"^```{lang}\n(.*?)^```", text, re.M | re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def bash_lines(pages: tuple[str, ...] = RUN_PAGES) -> list[str]:
    return [line for page in pages for line in block_lines(page, "bash") if not SKIP.match(line)]


def shown_lines() -> list[str]:
    """Every ``ominix`` line of the pages that is not executed (without a trailing ``> file``)."""
    lines = [line for page in PAGES for line in block_lines(page, "console")]
    lines += [line for page in PAGES if page not in RUN_PAGES for line in block_lines(page, "bash")]
    return [line.split(" > ")[0] for line in lines if line.startswith("ominix ") and not line.endswith("\\")]


def test_readme_shows_every_command_group() -> None:
    readme = bash_lines(("README.md",)) + block_lines("README.md", "console")
    for group in README_GROUPS:
        assert any(line.startswith(group) for line in readme), f"README has no example of `{group}`"
    docs = bash_lines() + shown_lines()
    for group in DOCS_GROUPS:
        assert any(line.startswith(group) for line in docs), f"no docs page has an example of `{group}`"
    assert any("--dry-run" in line and "--nodes" in line for line in bash_lines())
    assert [line for line in block_lines("README.md", "bash") if SKIP.match(line)][:2] == [
        "make quickstart   # installs into .venv, then runs the whole pipeline on the embedded corpus",
        "make test         # installs into .venv, then runs the test suite (CPU; GPU tests are skipped)"]


def test_docs_shown_commands_parse() -> None:
    lines = shown_lines()
    assert len(lines) > 20
    args = [[*shlex.split(line, comments=True)[1:], "--help"] for line in lines]
    result = subprocess.run([sys.executable, "-c", PARSE], input=json.dumps(args), text=True,
                            capture_output=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == "", f"commands the docs show that do not parse:\n{result.stdout}"


def test_docs_relative_links_resolve() -> None:
    broken, checked = [], 0
    for page in PAGES:
        text = re.sub(r"^```.*?^```", "", (REPO / page).read_text(), flags=re.M | re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            path = target.split("#")[0]
            if re.match(r"[a-z]+:", target) or not path:
                continue
            checked += 1
            if not (REPO / page).parent.joinpath(path).resolve().is_file():
                broken.append(f"{page}: {target}")
    assert checked > 30 and not broken, broken


@pytest.mark.slow
def test_docs_bash_examples_run(tmp_path: Path, private_netns: None) -> None:
    # each line is echoed with the seconds since the start, so a failure's output shows where time went
    script = "set -euo pipefail\n" + "\n".join(f"echo \"+ [${{SECONDS}}s] \"{shlex.quote(line)}\n{line}"
                                                for line in bash_lines())
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
    assert (run / "export-gguf" / "model.gguf").is_file()
    assert len((run / "samples.jsonl").read_text().splitlines()) == 2
    assert (tmp_path / "release-tiny" / "mof.yml").is_file()
    assert json.loads((tmp_path / "inspect.json").read_text())
