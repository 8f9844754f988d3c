"""`ominix quickstart` end to end (real data prepare, 2-process torchrun + ColossalAI ddp, resume,
export verified with transformers, infer, eval, MOF bundle), plus its directory rules."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ominix.config import load_config
from ominix.errors import OminixError
from ominix.quickstart import GPU_COMMANDS, MARKER, PROMPTS, SUMMARY, claim_out, sparkline, unigram_entropy
from ominix.train.schedule import lr_at
from tests.conftest import run_cli


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path: Path, private_netns: None) -> None:
    out = tmp_path / "qs"
    result = run_cli("quickstart", "--out", str(out), "--json", timeout=1200)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads(result.stdout)  # --json: stdout holds only the summary, torchrun logs went to stderr
    assert summary == json.loads((out / SUMMARY).read_text())
    art = summary["artifacts"]

    # Class I bundle with the licenses the quickstart declares, as MOT would rate its mof.yml.
    assert summary["mof"]["class"] == 1
    bundle = Path(art["bundle"])
    check = run_cli("mof", "check", str(bundle / "mof.yml"), "--json")
    assert check.returncode == 0 and json.loads(check.stdout)["class"] == 1
    licenses = yaml.safe_load((bundle / "mof.yml").read_text())["release"]["license"]
    assert {k: v["name"] for k, v in licenses.items()} == {
        "code": "Apache-2.0", "data": "Python-2.0", "document": "CC-BY-4.0"}

    # The model learned from context: eval loss well below the unigram entropy of the train tokens.
    entropy = unigram_entropy(out / "data")
    assert summary["unigram_entropy"] == pytest.approx(entropy)
    results = json.loads(Path(art["eval_results"]).read_text())
    assert results["perplexity"]["loss"] == pytest.approx(summary["eval_loss"])
    assert summary["eval_loss"] < entropy - 0.5, (summary["eval_loss"], entropy)
    assert summary["loss_curve"]["last"] < summary["loss_curve"]["first"] - 1.5

    samples = [json.loads(line) for line in Path(art["samples"]).read_text().splitlines()]
    assert [s["prompt"] for s in samples] == PROMPTS
    assert all(s["completion"].strip() for s in samples)

    # Resumed from the step-150 checkpoint and continued to 200; the step-100 checkpoint is kept.
    assert summary["resumed"]["from_step"] == 150 and len(summary["resumed"]["log"]) == 1
    assert "step_00000150" in summary["resumed"]["log"][0]
    steps = [json.loads(line)["step"] for line in (out / "run" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 200
    # ...on the learning-rate curve of the first launch: one 200-step schedule, no schedule change.
    cfg = load_config(str(out / "run" / "config.yaml"))
    o, s = cfg.optim, cfg.schedule
    lrs = {r["step"]: r["lr"] for r in map(json.loads, (out / "run" / "metrics.jsonl").read_text().splitlines())
           if r["kind"] == "train"}
    assert lrs == pytest.approx({n: lr_at(n - 1, o.lr, o.min_lr, s.warmup_steps, 200, s.decay) for n in lrs})
    assert "learning-rate schedule" not in (out / "run" / "train.log").read_text()

    # The bundle holds the data-order ledger of all 200 steps, through the resume: `data batch` on the
    # bundle prints the tokens the 2 ranks' loaders read at a step of each launch.
    from ominix.data.loader import BlockLoader
    from ominix.data.store import PackedDataset

    batch = s.global_batch_size
    assert np.load(bundle / "data_order" / "data_order.npy").shape == (200, batch)
    assert "## Training order" in (bundle / "DATA_CARD.md").read_text()
    ranks = [BlockLoader(PackedDataset(bundle / "data", "train"), batch // 2, rank=r, world_size=2,
                         seed=cfg.data.seed) for r in range(2)]
    for step in range(1, 201):
        if step not in (37, 200):  # the positions advance without reading the blocks
            for r in ranks:
                r.next_indices()
            continue
        read = torch.cat([next(r) for r in ranks])
        shown = run_cli("data", "batch", str(bundle), "--step", str(step), "--json")
        assert shown.returncode == 0, shown.stderr
        assert torch.equal(torch.tensor(json.loads(shown.stdout)["sequences"]), read)
    listing = json.loads(run_cli("checkpoint", "list", str(out / "run"), "--json").stdout)
    assert [e["step"] for e in listing] == [100, 150, 200]
    assert Path(art["export"], "config.json").is_file()

    # The technical report shows the run's training figure (loss, lr, throughput), copied next to it.
    report = Path(art["technical_report"]).read_text()
    assert "![Training and validation loss, learning rate and throughput per step](training.png)" in report
    assert Path(art["figure"]) == out / "training.png"
    assert (out / "training.png").read_bytes() == (out / "run" / "plots" / "training.png").read_bytes()
    assert (out / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["mfu"] is None and summary["mfu_note"].startswith("n/a")
    # ...and the figure travels with the report into the bundle, which verifies as a whole.
    assert (bundle / "docs" / "training.png").read_bytes() == (out / "training.png").read_bytes()
    assert "](training.png)" in (bundle / "docs" / "technical_report.md").read_text()
    assert run_cli("mof", "check", str(bundle)).returncode == 0

    _bundle_checkpoints_load_and_push_as_branches(bundle, Path(art["export"]), results)

    # A second run into the same directory is refused and leaves the finished one alone.
    again = run_cli("quickstart", "--out", str(out))
    assert again.returncode == 2 and "already exists" in again.stderr and "--force" in again.stderr
    assert json.loads((out / SUMMARY).read_text()) == summary


def _bundle_checkpoints_load_and_push_as_branches(bundle: Path, export: Path, results: dict) -> None:
    """Each intermediate checkpoint of the bundle loads with transformers' Auto classes as it is; the
    checkpoint table is in the bundle and its cards; a push plans one branch per checkpoint; the cards
    say what the Hub reads (model-index from the eval, the model's context, one data license)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = json.loads((bundle / "model" / "checkpoints.json").read_text())["checkpoints"]
    assert [(r["step"], r["path"]) for r in rows] == [
        (100, "model/intermediate/step_00000100"), (150, "model/intermediate/step_00000150"), (200, "model/final")]
    assert all(r["val_loss"] is not None and r["train_loss"] is not None for r in rows)  # eval_every 50
    for row in rows[:-1]:
        model = AutoModelForCausalLM.from_pretrained(bundle / row["path"])
        tok = AutoTokenizer.from_pretrained(bundle / row["path"])
        assert tok.model_max_length == model.config.max_position_embeddings == 256
        ids = model.generate(**tok(PROMPTS[0], return_tensors="pt"), max_new_tokens=3, min_new_tokens=3)
        assert ids.shape[1] == len(tok(PROMPTS[0])["input_ids"]) + 3
        meta = json.loads((bundle / row["path"] / "ominix_export.json").read_text())
        assert meta["state"]["step"] == row["step"] and meta["model_sha256"] == row["sha256"]
    for card in (bundle / "MODEL_CARD.md", bundle / "model" / "final" / "README.md"):
        assert "| step | tokens | train loss | val loss | sha256 | path |" in card.read_text()
    plan = run_cli("release", "push", str(bundle), "--repo-id", "ominix/quickstart", "--checkpoint-branches",
                   "--dry-run", "--json")
    assert plan.returncode == 0, plan.stderr
    assert list(json.loads(plan.stdout)["branches"]) == ["step-00000100", "step-00000150"]
    front = yaml.safe_load((export / "README.md").read_text().split("---\n")[1])  # exported after the eval
    assert front["model-index"][0]["results"][0]["metrics"][0]["value"] == pytest.approx(results["perplexity"]["loss"])
    assert json.loads((export / "tokenizer_config.json").read_text())["model_max_length"] == 256
    data_card = (bundle / "DATA_CARD.md").read_text()
    assert "Python-2.0" in data_card and "PSF-2.0" not in data_card


@pytest.mark.slow
def test_ctrl_c_leaves_nothing_that_looks_complete(tmp_path: Path, private_netns: None) -> None:
    out = tmp_path / "qs"
    proc = subprocess.Popen([sys.executable, "-m", "ominix", "quickstart", "--out", str(out)], text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 180
    while not (out / "run" / "metrics.jsonl").is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert proc.poll() is None, proc.stderr.read()
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends: the whole foreground process group
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert not (out / SUMMARY).exists() and not (out / "release").exists()
    time.sleep(2)
    with pytest.raises(ProcessLookupError):  # torchrun and its workers are gone too
        os.killpg(proc.pid, 0)


def test_claim_out_rules(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    claim_out(fresh, force=False)
    assert (fresh / MARKER).is_file()
    (fresh / "leftover").write_text("x")
    with pytest.raises(OminixError, match="already exists"):
        claim_out(fresh, force=False)
    claim_out(fresh, force=True)  # an earlier quickstart's directory is replaced
    assert not (fresh / "leftover").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(OminixError, match="not a quickstart directory"):
        claim_out(foreign, force=True)
    assert (foreign / "precious.txt").read_text() == "keep me"


def test_unigram_entropy_and_sparkline(tmp_path: Path) -> None:
    tokens = np.array([0, 1, 1, 2, 2, 2, 2, 3], dtype=np.uint16)
    (tmp_path / "train").mkdir()
    tokens.tofile(tmp_path / "train" / "00000.bin")
    manifest = {"dtype": "uint16", "tokenizer": {"vocab_size": 8},
                "splits": {"train": {"shards": [{"file": "train/00000.bin"}]}}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    p = np.array([1, 2, 4, 1]) / 8
    assert unigram_entropy(tmp_path) == pytest.approx(float(-(p * np.log(p)).sum()))
    assert sparkline([3.0, 2.0, 1.0]) == "█▅▁"
    assert len(sparkline([float(i) for i in range(100)], width=20)) == 20


def test_quickstart_refuses_too_few_steps(tmp_path: Path) -> None:
    result = run_cli("quickstart", "--out", str(tmp_path / "qs"), "--steps", "10")
    assert result.returncode == 2 and "--steps" in result.stderr
    assert not (tmp_path / "qs").exists()


def test_gpu_cluster_commands_of_the_summary_are_valid(tmp_path: Path) -> None:
    for command in GPU_COMMANDS:  # every command and flag exists
        result = run_cli(*shlex.split(command)[1:], "--help")
        assert result.returncode == 0, f"{command}\n{result.stderr}"
    (tmp_path / "hosts.txt").write_text("node1\nnode2\nnode3\nnode4\n")
    launch = next(c for c in GPU_COMMANDS if c.startswith("ominix train launch"))
    plan = run_cli(*shlex.split(launch)[1:], "--dry-run", cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    assert "world 32" in plan.stdout and plan.stdout.count("--nnodes=4") == 4
