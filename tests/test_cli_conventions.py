"""CLI conventions (issue 19): every command walked from the Typer app for -h, the same preset and
output options, and help text that prints brackets as written; the mission's four command lines
as written, up to where they need the network, GPUs or hosts; hostfile spellings of OpenMPI and
`colossalai run`; other launchers' flag spellings; short runs' warmup; a local 7B launch; third-party
warnings kept out of a training's output."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from ominix.cli.main import app
from tests.conftest import run_cli
from tests.test_cli import HEAVY, _commands

WIDE = {"TERMINAL_WIDTH": "400", "COLUMNS": "400", "NO_COLOR": "1"}


def _command(path: list[str]):
    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.get_command(typer.Context(cmd), name)
    return cmd


LEAVES = [p for p in _commands() if p and not hasattr(_command(p), "list_commands")]


def _ids(path: list[str]) -> str:
    return " ".join(path) or "ominix"


def _help(path: list[str]) -> str:
    result = CliRunner().invoke(app, [*path, "-h"], env=WIDE)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("path", _commands(), ids=_ids)
def test_dash_h_on_every_command(path: list[str]) -> None:
    assert "Usage:" in _help(path)


@pytest.mark.parametrize("path", LEAVES, ids=_ids)
def test_bracketed_help_text_prints_as_written(path: list[str]) -> None:
    cmd = _command(path)
    texts = [cmd.help or "", *(getattr(p, "help", None) or "" for p in cmd.params)]
    shown = " ".join(_help(path).split())
    for text in texts:
        for bracket in re.findall(r"\[[^\]\s]*\]", text.replace("`", "")):
            assert bracket in shown, f"`ominix {' '.join(path)} -h` lost {bracket!r}"


@pytest.mark.parametrize("path", LEAVES, ids=_ids)
def test_preset_and_out_options_are_spelled_alike(path: list[str]) -> None:
    cmd = _command(path)
    options = {o: p for p in cmd.params for o in p.opts}
    visible = {o for p in cmd.params if not getattr(p, "hidden", False) for o in p.opts}
    if "--out" in options:
        assert "-o" in options["--out"].opts, f"{path}: --out without -o"
    assert not visible & {"--run-dir", "--output", "--out-dir", "--output-dir"}, f"{path}: an output not named --out"
    if "--set" in options:  # the command resolves a config: a preset, positionally and as --config/-c
        assert {"--config", "-c"} <= set(options["--config"].opts), f"{path}: no --config/-c"
        assert any("PRESET" in (p.metavar or "") for p in cmd.params if p.param_type_name == "argument"), \
            f"{path}: no positional PRESET"
        assert "ominix config show PRESET" in " ".join(_help(path).split()), f"{path}: help names no config show"


def test_preset_positional_or_config_means_the_same(tmp_path: Path) -> None:
    a = run_cli("config", "show", "tiny")
    b = run_cli("config", "show", "-c", "tiny")
    assert a.returncode == b.returncode == 0 and a.stdout == b.stdout
    both = run_cli("config", "show", "tiny", "--config", "llama2-7b")
    assert both.returncode == 2 and "two configs given" in both.stderr
    prepared = run_cli("data", "prepare", "tiny", "--out", str(tmp_path / "d"), "--json")
    assert prepared.returncode == 0, prepared.stderr
    plan = run_cli("train", "launch", "--config", "tiny", "--data", str(tmp_path / "d"), "-o", "r", "--dry-run")
    assert plan.returncode == 0 and "run dir   r " in plan.stdout
    old = run_cli("train", "launch", "tiny", "--data", str(tmp_path / "d"), "--run-dir", "r", "--dry-run")
    assert old.returncode == 0 and "run dir   r " in old.stdout  # the old name still works, hidden


def test_completion_is_enabled_and_light() -> None:
    assert "--install-completion" in _help([])
    # from bash, as a user types it (the shell is detected from the parent process)
    out = subprocess.run(["bash", "-c", '"$0" -X importtime -m ominix --show-completion; exit $?', sys.executable],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "complete" in out.stdout, out.stderr[-2000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in out.stderr.splitlines() if "|" in line}
    assert not imported & {*HEAVY, "wandb", "matplotlib"}


@pytest.mark.parametrize("typed, ours", [("--nproc_per_node", "--nproc-per-node"), ("--master_port", "--master-port"),
                                         ("--num_nodes", "--nodes"), ("--host-file", "--hostfile"),
                                         ("--nnodes", "--nodes")])
def test_other_launchers_flag_spellings_get_one_line(typed: str, ours: str) -> None:
    result = run_cli("train", "launch", "tiny", typed, "2")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr
    assert f"has no option {typed}: did you mean {ours}?" in errors[0]
    assert "╭" not in result.stderr  # one line, not the usage box


# --- the mission's four command lines, as written -------------------------------------------------


def _one_error(result: subprocess.CompletedProcess) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


def test_mission_data_prepare_stops_at_the_network(tmp_path: Path) -> None:
    result = run_cli("data", "prepare", "--split", "train[:10%]", cwd=tmp_path, env={"HF_HUB_OFFLINE": "1"})
    assert "cerebras/SlimPajama-627B" in _one_error(result)  # not "--out missing", not "no tokenizer"
    assert list(tmp_path.iterdir()) == []
    from ominix.cli.data_cmd import default_out
    from ominix.config import load_config

    assert default_out(["cerebras/SlimPajama-627B"], "train[:10%]") == Path("data/slimpajama-train-10pct")
    assert load_config("llama2-7b").data.tokenizer  # the preset names its tokenizer (LLaMA-2's)
    assert load_config("tiny").data.tokenizer is None  # a preset that trains one has none by default


def test_mission_train_launch_refuses_config_before_hosts(tmp_path: Path) -> None:
    """The reference command line, no preset: the global batch follows the layout (micro batch x
    dp), so what it lacks is said in order: the prepared data, then the hosts."""
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("".join(f"node{i}.invalid slots=8\n" for i in range(4)))
    as_written = run_cli("train", "launch", "--plugin", "gemini", "--nodes", "4", cwd=tmp_path)
    assert _one_error(as_written).startswith("error: no prepared data")
    with_hosts = run_cli("train", "launch", "--plugin", "gemini", "--nodes", "4", "--hostfile", "hosts.txt",
                         cwd=tmp_path)
    assert "no prepared data" in _one_error(with_hosts) and "host checks" not in with_hosts.stdout
    uneven = run_cli("train", "launch", "--plugin", "gemini", "--nodes", "4", "--hostfile", "hosts.txt",
                     "--set", "schedule.global_batch_size=48", cwd=tmp_path)
    assert "global_batch_size (48)" in _one_error(uneven) and "host checks" not in uneven.stdout
    no_hostfile = run_cli("train", "launch", "--plugin", "gemini", "--nodes", "4", "--dry-run", cwd=tmp_path)
    assert "--nodes 4 needs a hostfile" in _one_error(no_hostfile)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hosts.txt"]  # no runs/default/config.yaml


@pytest.mark.parametrize("argv, missing", [(("checkpoint", "export"), "SOURCE"), (("mof", "report"), "RUN_DIR")])
def test_mission_export_and_report_as_written_name_what_is_missing(tmp_path: Path, argv, missing) -> None:
    result = run_cli(*argv, cwd=tmp_path, env=WIDE)
    assert result.returncode == 2 and f"Missing argument '{missing}'" in result.stderr.replace(missing.lower(), missing)
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


# --- hosts, nodes, warmup -------------------------------------------------------------------------


def test_openmpi_and_colossalai_hostfiles(tmp_path: Path) -> None:
    from ominix.errors import OminixError
    from ominix.launch.hosts import parse_hostfile

    path = tmp_path / "hosts"
    path.write_text("n1\nn2 slots=8\nn3 max_slots=4\nn4 slots=2 max-slots=8\nalice@n5:2222 slots=1\n")
    assert [h.slots for h in parse_hostfile(path)] == [None, 8, 4, 2, 1]
    for bad, says in (("n1 slots=9 max_slots=8", "exceeds max_slots"), ("n1 cpus=2", "not a host field"),
                      ("n1 slots=2 slots=4", "given twice")):
        path.write_text(bad + "\n")
        with pytest.raises(OminixError, match=says):
            parse_hostfile(path)
    path.write_text("a max_slots=2\nb max_slots=2\n")
    plan = run_cli("train", "launch", "tiny", "--hostfile", str(path), "--nodes", "2", "--dry-run",
                   "--set", "schedule.global_batch_size=32")
    assert plan.returncode == 0 and "world 4" in plan.stdout, plan.stderr


def test_local_launch_of_a_multi_node_preset_is_one_node() -> None:
    plan = run_cli("train", "launch", "llama2-7b", "--nproc-per-node", "1", "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert "launch.nodes is 4 but no hostfile is given: this launch runs on this machine only" in plan.stdout
    assert "world 1 = dp 1" in plan.stdout and "nodes: 1" in plan.stdout


def test_a_multi_node_preset_that_cannot_fit_this_machine_asks_for_the_hostfile() -> None:
    """70B is tp 8 x pp 4: one machine of 8 processes cannot hold it, and the error says why the
    launch is on this machine at all (no hostfile), not just that 32 does not divide 8."""
    result = run_cli("train", "launch", "llama2-70b", "--dry-run")
    error = _one_error(result)
    assert "(8 x 4) does not divide the 8 processes" in error and "laid out for 4 nodes" in error
    assert "pass --hostfile FILE naming its 4 nodes" in result.stderr


def test_short_run_warms_up_over_its_steps() -> None:
    from ominix.config import load_config
    from ominix.train.schedule import lr_multiplier, warmup_note

    cfg = load_config("tinyllama-1.1b", flags={"schedule.max_steps": 12})
    factor = lr_multiplier(cfg, 12)
    assert factor(0) == pytest.approx(1 / 12) and factor(11) == pytest.approx(1.0)
    assert "warming up over all 12 steps" in warmup_note(cfg, 12)
    assert warmup_note(load_config("tinyllama-1.1b"), 10000) is None
    plan = run_cli("train", "launch", "tinyllama-1.1b", "--max-steps", "12", "--nproc-per-node", "1", "--dry-run")
    assert plan.returncode == 0 and "warmup 12)" in plan.stdout and "warming up over all 12 steps" in plan.stdout


def test_training_output_has_no_third_party_warnings(tmp_path: Path, private_netns: None) -> None:
    noise = ("tensornvme", "apex", "gemm_4bit", "broadcast_buffers")
    assert run_cli("data", "prepare", "tiny", "--out", str(tmp_path / "d")).returncode == 0
    argv = ["train", "launch", "tiny", "--data", str(tmp_path / "d"), "--max-steps", "1",
            "--set", "schedule.eval_every=0", "--set", "checkpoint.every=0"]
    quiet = run_cli(*argv, "--out", str(tmp_path / "a"))
    assert quiet.returncode == 0, quiet.stderr
    assert not [w for w in noise if w in quiet.stderr + quiet.stdout], quiet.stderr
    shown = run_cli("--debug", *argv, "--out", str(tmp_path / "b"))
    assert shown.returncode == 0 and all(w in shown.stderr for w in ("tensornvme", "broadcast_buffers"))
