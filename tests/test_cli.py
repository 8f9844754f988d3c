"""The CLI frame: help of every command, lazy imports, error formatting, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from ominix.cli.main import app
from tests.conftest import REPO, run_cli

HEAVY = ("torch", "colossalai", "datasets", "transformers", "wandb", "matplotlib")


def _commands() -> list[list[str]]:
    root = typer.main.get_command(app)
    found: list[list[str]] = [[]]

    def walk(cmd, path: list[str]) -> None:
        if hasattr(cmd, "list_commands"):  # a group (typer vendors its own click)
            ctx = typer.Context(cmd)
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                found.append([*path, name])
                walk(sub, [*path, name])

    walk(root, [])
    return found


@pytest.mark.parametrize("path", _commands(), ids=lambda p: " ".join(p) or "ominix")
def test_every_command_has_help_with_examples(path: list[str]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    leaf = not any(c[: len(path)] == path and len(c) > len(path) for c in _commands())
    if path and leaf:
        assert "ominix " in result.output, f"`ominix {' '.join(path)} --help` shows no example"


@pytest.mark.parametrize("path", [[], ["train", "launch"], ["data", "prepare"], ["mof", "report"]],
                         ids=lambda p: " ".join(p) or "ominix")
def test_dash_h_is_help_everywhere(path: list[str]) -> None:
    result = CliRunner().invoke(app, [*path, "-h"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_error_lines_print_brackets_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    from ominix.console import report_error
    from ominix.errors import OminixError

    assert report_error(OminixError("needs pip install 'ominix[eval]'", "lines: [user@]host [slots=N]")) == 2
    err = capsys.readouterr().err
    assert "pip install 'ominix[eval]'" in err and "[user@]host [slots=N]" in err


def test_help_imports_nothing_heavy() -> None:
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ominix", "--help"],
        capture_output=True, text=True, check=True,
    )
    imported = {line.split("|")[-1].strip().split(".")[0] for line in out.stderr.splitlines() if "|" in line}
    assert not imported & set(HEAVY), imported & set(HEAVY)


def test_help_is_fast() -> None:
    """The CPU time of a new interpreter's ``--help``: what it costs, however loaded the machine is."""
    def cpu_seconds() -> float:
        proc = subprocess.Popen([sys.executable, "-m", "ominix", "--help"], stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        assert proc.returncode == 0
        return usage.ru_utime + usage.ru_stime

    cpu_seconds()  # warm the bytecode cache
    assert cpu_seconds() < 1.0  # measured ~0.3 s; importing torch alone costs ~2 s


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("ominix ")


def test_bad_input_is_two_lines_and_exit_2() -> None:
    result = run_cli("config", "show", "tiny", "--set", "model.nope=1")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("error:") and "model.nope" in lines[0]
    assert lines[1].startswith("hint:")
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback() -> None:
    for args, env in ((["--debug"], {}), ([], {"OMINIX_DEBUG": "1"})):
        result = run_cli(*args, "config", "show", "no-such-preset", env=env)
        assert result.returncode != 0
        assert "Traceback" in result.stderr and "OminixError" in result.stderr


def test_debug_off_spellings_keep_the_one_error_line() -> None:
    for off in ("0", "false", "no", "off", "False"):
        result = run_cli("config", "show", "no-such-preset", env={"OMINIX_DEBUG": off})
        assert result.returncode == 2 and "Traceback" not in result.stderr, off
        assert result.stderr.startswith("error: no config file or preset named"), off


def _without_root_overrides(*args: str, cwd: Path,
                            module: str = "ominix") -> subprocess.CompletedProcess[str]:
    """``python -m MODULE ARGS`` with file permissions applying even to root (the file-access
    capabilities dropped), as they apply to every other user."""
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(["setpriv", "--bounding-set", "-dac_override,-dac_read_search", sys.executable, "-m",
                           module, *args], cwd=cwd, env=env, text=True, capture_output=True, timeout=300)


@pytest.mark.parametrize("what", ["config", "corpus", "output"])
def test_a_permission_error_is_one_line_naming_the_path(what: str, tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("optim:\n  lr: 0.001\n")
    (tmp_path / "corpus.jsonl").write_text('{"text": "hello"}\n' * 50)
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / {"config": "c.yaml", "corpus": "corpus.jsonl", "output": "ro"}[what], 0o500 if what ==
             "output" else 0)
    argv, path = {
        "config": (["config", "show", "c.yaml"], "c.yaml"),
        "corpus": (["data", "prepare", "corpus.jsonl", "--train-tokenizer", "--vocab-size", "300", "--out", "d"],
                   "corpus.jsonl"),
        "output": (["mof", "init", "--out", "ro/release.yaml"], "ro/"),
    }[what]
    result = _without_root_overrides(*argv, cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert lines[-2].startswith("error: Permission denied: ") and path in lines[-2], lines
    assert lines[-1].startswith("hint: check the permissions of ")


def test_a_training_worker_reports_a_permission_error_as_its_rank_s_one_line(tmp_path: Path) -> None:
    """What every rank prints (and the launcher quotes) when its run's files are not readable."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("optim:\n  lr: 0.001\n")
    os.chmod(run / "config.yaml", 0)
    result = _without_root_overrides("--run-dir", "run", cwd=tmp_path, module="ominix.train")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert lines[-2] == "error (rank 0): Permission denied: run/config.yaml", lines
    assert lines[-1].startswith("hint: check the permissions of run/config.yaml")


def test_config_show_json_and_set() -> None:
    result = run_cli("config", "show", "tiny", "--json", "--set", "optim.lr=0.01")
    assert result.returncode == 0, result.stderr
    cfg = json.loads(result.stdout)
    assert cfg["optim"]["lr"] == 0.01 and cfg["model"]["name"] == "tiny"


def test_config_schema_is_json_schema() -> None:
    result = run_cli("config", "schema")
    schema = json.loads(result.stdout)
    assert set(schema["properties"]) >= {"model", "data", "optim", "schedule", "parallel", "checkpoint",
                                         "logging", "launch", "infer", "release"}


def test_python_dash_m_and_console_script_agree() -> None:
    from pathlib import Path

    exe = Path(sys.executable).parent / "ominix"  # the venv's script, whether or not the venv is on PATH
    assert exe.is_file(), "the console script `ominix` is not installed"
    a = subprocess.run([str(exe), "--version"], capture_output=True, text=True).stdout
    assert a == run_cli("--version").stdout


def test_fp8_is_refused_before_launch_where_it_cannot_train() -> None:
    no_gpu = run_cli("train", "launch", "tiny", "--set", "model.fp8=tensorwise", "--max-steps", "1")
    assert no_gpu.returncode == 2 and "Traceback" not in no_gpu.stderr
    assert "model.fp8=tensorwise" in no_gpu.stderr and "hint: set model.fp8=off" in no_gpu.stderr
    shardformer = run_cli("config", "show", "tiny", "--set", "parallel.plugin=3d", "--set", "model.fp8=rowwise")
    assert shardformer.returncode == 2 and "model.fp8=rowwise" in shardformer.stderr
