"""``ominix mof report`` on a run directory in the documented layout, built from real files: a real
prepared data directory (``data prepare``), real safetensors weights, JSON state, metrics, eval
results and samples. (The end-to-end test on a trained tiny run lives with the pipeline tests.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from ominix.config import DataConfig, ReleaseConfig, dump_yaml, load_config
from ominix.data.prepare import prepare
from ominix.errors import OminixError
from ominix.release import mof
from ominix.release.bundle import make_bundle, verify_bundle
from tests.conftest import REPO, run_cli

WORDS = "open models need open data open code and open weights for every reader to audit".split()


def _weights(path: Path, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    save_file({"model.embed_tokens.weight": torch.randn(300, 8, generator=gen),
               "lm_head.weight": torch.randn(300, 8, generator=gen)}, str(path / "model.safetensors"))


def _checkpoint(ckpts: Path, step: int, cfg) -> None:
    ckpt = ckpts / f"step_{step:08d}"
    _weights(ckpt / "model", step)
    (ckpt / "optimizer").mkdir()
    torch.save({"state": {0: {"exp_avg": torch.zeros(4)}}, "param_groups": []}, ckpt / "optimizer" / "optimizer.pt")
    torch.save({"last_epoch": step}, ckpt / "scheduler.pt")
    state = {"step": step, "tokens": step * 64, "last_loss": 5.0 - step / 10, "world_size": 1, "dp": 1,
             "tp": 1, "pp": 1, "plugin": "ddp", "has_optimizer": True, "model": cfg.model.model_dump()}
    (ckpt / "state.json").write_text(json.dumps(state))
    (ckpt / "config.yaml").write_text(dump_yaml(cfg))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mofrun")
    with open(root / "corpus.jsonl", "w") as fh:
        for i in range(120):
            fh.write(json.dumps({"text": " ".join(WORDS[(i + j) % len(WORDS)] for j in range(40 + i % 30))}) + "\n")
    data_cfg = DataConfig(sources=[str(root / "corpus.jsonl")], train_tokenizer=True, vocab_size=300,
                          seq_len=16, val_fraction=0.1)
    prepare(data_cfg, root / "prepared", progress=False, command="ominix data prepare corpus.jsonl --out prepared")
    run = root / "run"
    cfg = load_config("tiny", [f"data.path={root / 'prepared'}", f"logging.run_dir={run}", "model.vocab_size=300",
                               "data.seq_len=16", "model.hidden_size=8", "model.intermediate_size=16",
                               "model.num_attention_heads=2", "model.num_key_value_heads=1",
                               "model.num_hidden_layers=1"])
    run.mkdir()
    (run / "config.yaml").write_text(dump_yaml(cfg))
    for step in (2, 4):
        _checkpoint(run / "checkpoints", step, cfg)
    (run / "checkpoints" / "latest").write_text("step_00000004\n")
    (run / "metrics.jsonl").write_text("".join(json.dumps(
        {"kind": "train", "step": s, "loss": 5.0, "tokens": s * 64, "tokens_per_s": 1000.0, "mfu": None,
         "step_time_s": 0.5, "memory_gib": 0.3}) + "\n" for s in (2, 4)))
    _weights(run / "export", 4)
    (run / "export" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (run / "export" / "ominix_export.json").write_text(json.dumps({"format": "huggingface-llama",
                                                                   "state": {"step": 4}}))
    (run / "eval").mkdir()
    (run / "eval" / "eval_results.json").write_text(json.dumps(
        {"data": {"path": str(root / "prepared"), "split": "validation"},
         "perplexity": {"loss": 4.5, "perplexity": 90.0, "tokens": 160, "blocks": 10, "per_source": {}}}))
    (run / "samples.jsonl").write_text(json.dumps({"prompt": "open", "completion": " models"}) + "\n")
    return run


def _release(tmp: Path, **changes) -> Path:
    (tmp / "report.md").write_text("# Technical report\n\nHow the tiny model was trained.\n")
    (tmp / "paper.md").write_text("# Research paper\n\nWhat the tiny model shows.\n")
    release = ReleaseConfig(name="tiny-mof", producer="OminiX tests", technical_report="report.md",
                            research_paper="paper.md",
                            licenses={"code": {"name": "Apache-2.0"}, "data": {"name": "CDLA-Permissive-2.0"},
                                      "document": {"name": "CC-BY-4.0"}}).model_dump(mode="json")
    release.update(changes)
    path = tmp / "release.yaml"
    path.write_text(yaml.safe_dump(release))
    return path


def _no_leftovers(parent: Path) -> None:
    assert not [p for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_full_run_is_class_one_schema_valid_and_checksums_verify(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    proc = run_cli("mof", "report", str(run_dir), "--out", str(out), "--release", str(_release(tmp_path)), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert (report["class"], report["label"], report["progress"]) == (
        1, "Class I - Open Science Model", {"1": 100, "2": 100, "3": 100})
    document = yaml.safe_load((out / "mof.yaml").read_text())
    mof.validate(document, "bundle")  # the official schema and the 17 names
    names = {c["name"] for c in document["release"]["components"]}
    assert len(names) == 17
    for entry in document["release"]["components"]:
        assert (out / entry["component_path"]).exists(), entry
        assert (out / entry["license_path"]).is_file()
    assert verify_bundle(out) == []
    subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=out, check=True)
    subprocess.run(["sha256sum", "--quiet", "-c", "EXTERNAL_SHA256SUMS"], cwd=out, check=True)
    # The checkpoints are referenced with the sha256 of each file, not copied.
    final = json.loads((out / "model" / "final.json").read_text())
    assert final["step"] == 4 and final["path"] == str(run_dir / "export")
    assert [c["step"] for c in json.loads((out / "model" / "intermediate.json").read_text())] == [2]
    assert "optimizer/optimizer.pt" in json.loads((out / "model/metadata/optimizer.json").read_text())[0]["files"]
    provenance = json.loads((out / "code" / "PROVENANCE.json").read_text())
    assert provenance["data_preprocessing_command"] == "ominix data prepare corpus.jsonl --out prepared"
    assert provenance["git"]["commit"] and len(provenance["git"]["commit"]) == 40
    assert "safetensors==" in (out / "code" / "requirements.txt").read_text()
    assert (out / "code" / "ominix" / "model.py").read_text() == (REPO / "ominix" / "model.py").read_text()
    assert "Apache License" in (out / "LICENSE-code").read_text()
    assert (out / "DATA_CARD.md").read_text() == (run_dir.parent / "prepared" / "DATA_CARD.md").read_text()
    card = (out / "MODEL_CARD.md").read_text()
    for part in ("# tiny-mof", "## Architecture", "## Training data", "## Hyper-parameters", "## Compute",
                 "| all | 4.5000 | 90.00 | 160 |", "## Intended use", "## Limitations", "Tokens seen in training: 256"):
        assert part in card
    # mof check on the bundle's own file gives the same classification.
    check = run_cli("mof", "check", str(out / "mof.yaml"), "--json")
    assert json.loads(check.stdout)["progress"] == report["progress"]
    _no_leftovers(tmp_path)


def test_removed_artifact_is_named_in_the_report(run_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    shutil.rmtree(run / "eval")
    proc = run_cli("mof", "report", str(run), "--out", str(tmp_path / "b"), "--release", str(_release(tmp_path)))
    assert proc.returncode == 0, proc.stderr
    assert "Unclassified" in proc.stdout
    assert "Missing for Class III" in proc.stdout
    assert f"Evaluation results: not in the release (run `ominix eval --model {run}`)" in proc.stdout
    assert "Evaluation results: not in the release" in (tmp_path / "b" / "MOF_REPORT.md").read_text()


def test_stale_export_is_not_taken_for_the_final_weights(run_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "export" / "ominix_export.json").write_text(json.dumps({"state": {"step": 2}}))
    make_bundle(run, tmp_path / "b", _release(tmp_path))
    final = json.loads((tmp_path / "b" / "model" / "final.json").read_text())
    assert final["path"] == str(run / "checkpoints" / "step_00000004" / "model")
    assert final["format"] == "checkpoint"


def test_undeclared_data_license_leaves_data_components_unlicensed(run_dir: Path, tmp_path: Path) -> None:
    release = _release(tmp_path, licenses={"code": {"name": "MIT"}, "document": {"name": "CC-BY-4.0"}})
    result, _ = make_bundle(run_dir, tmp_path / "b", release)
    assert result.mof_class == 0
    by_name = {c.name: c for c in result.components}
    assert by_name["Model parameters (Final)"].status == "unlicensed"
    assert by_name["Model architecture"].license == "MIT"


def test_copy_checkpoints_puts_weights_and_optimizer_in_the_bundle(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    result, _ = make_bundle(run_dir, out, _release(tmp_path), copy_checkpoints=True)
    assert result.mof_class == 1
    assert (out / "model/final/model.safetensors").read_bytes() == (run_dir / "export/model.safetensors").read_bytes()
    assert (out / "model/intermediate/step_00000002/model/model.safetensors").is_file()
    assert (out / "model/metadata/optimizer/optimizer.pt").is_file()
    assert verify_bundle(out) == []


def test_existing_bundle_needs_force_and_is_replaced_whole(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    release = _release(tmp_path)
    (tmp_path / ".b.tmp-999999999").mkdir()  # left by a killed report (no such PID)
    make_bundle(run_dir, out, release)
    (out / "stale.txt").write_text("old")
    with pytest.raises(OminixError, match="already exists"):
        make_bundle(run_dir, out, release)
    make_bundle(run_dir, out, release, force=True)
    assert not (out / "stale.txt").exists()
    _no_leftovers(tmp_path)


@pytest.mark.parametrize("case,match", [
    ("bad-yaml", "is not valid YAML"),
    ("unknown-license", "unknown license 'Apache2'"),
    ("unknown-key", "unknown setting"),
    ("bad-type", "release.type: 'llm' is not one of"),
    ("no-config", "has no config.yaml"),
    ("no-checkpoint", "has no checkpoint"),
    ("missing-report", "technical_report"),
    ("binary-release", "is not UTF-8 text"),
])
def test_bad_input_is_one_clear_error_and_nothing_is_written(run_dir: Path, tmp_path: Path, case: str,
                                                              match: str) -> None:
    run, release = run_dir, _release(tmp_path)
    if case == "bad-yaml":
        release.write_text("name: [unclosed\n")
    elif case == "unknown-license":
        release = _release(tmp_path, licenses={"code": {"name": "Apache2"}})
    elif case == "unknown-key":
        release = _release(tmp_path, weights_license="MIT")
    elif case == "bad-type":
        release = _release(tmp_path, type="llm")
    elif case == "missing-report":
        release = _release(tmp_path, technical_report="nowhere.pdf")
    elif case == "binary-release":
        release.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe" * 8)
    else:
        run = tmp_path / "run"
        shutil.copytree(run_dir, run)
        if case == "no-config":
            os.remove(run / "config.yaml")
        else:
            shutil.rmtree(run / "checkpoints")
    out = tmp_path / "bundle"
    proc = run_cli("mof", "report", str(run), "--out", str(out), "--release", str(release))
    assert proc.returncode == 2, proc.stdout
    assert match in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 2
    assert not out.exists()
    _no_leftovers(tmp_path)


def test_init_template_loads_as_release_config(tmp_path: Path) -> None:
    proc = run_cli("mof", "init", "--out", str(tmp_path / "release.yaml"))
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "release.yaml").read_text()
    assert text.startswith("# Release metadata")
    loaded = ReleaseConfig.model_validate(yaml.safe_load(text))
    assert loaded.licenses.data.name == "CDLA-Permissive-2.0"
    assert run_cli("mof", "init", "--out", str(tmp_path / "release.yaml")).returncode == 2


def test_check_of_a_bundle_verifies_its_checksums(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    make_bundle(run_dir, out, _release(tmp_path))
    ok = run_cli("mof", "check", str(out))
    assert ok.returncode == 0, ok.stderr
    assert f"verified: every file of {out} matches SHA256SUMS" in ok.stdout
    (out / "MODEL_CARD.md").write_text("edited after the release\n")
    (out / "LICENSE-data").unlink()
    for target in (out, out / "mof.yaml"):  # the bundle directory, or the mof.yaml inside it
        bad = run_cli("mof", "check", str(target), "--json")
        assert bad.returncode == 1, bad.stderr
        problems = json.loads(bad.stdout)["bundle"]["problems"]
        assert "MODEL_CARD.md: sha256 mismatch (changed since the bundle was written)" in problems
        assert "LICENSE-data: missing" in problems
    lone = tmp_path / "lone.yaml"
    shutil.copyfile(out / "mof.yaml", lone)
    assert run_cli("mof", "check", str(lone)).returncode == 0  # a lone MOF file is classified as before


def test_report_hashes_the_shards_it_references(run_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(run_dir.parent / "prepared", data)
    manifest = json.loads((data / "manifest.json").read_text())
    shard = data / manifest["splits"]["train"]["shards"][0]["file"]
    raw = bytearray(shard.read_bytes())
    raw[0:2] = bytes([raw[2], raw[3]]) if raw[0:2] != raw[2:4] else bytes([raw[0] ^ 1, raw[1]])
    shard.write_bytes(bytes(raw))  # changed in place, same size
    out = tmp_path / "bundle"
    proc = run_cli("mof", "report", str(run_dir), "--out", str(out), "--data", str(data),
                   "--release", str(_release(tmp_path)))
    assert proc.returncode == 2, proc.stdout
    assert f"{shard}: sha256 does not match the data manifest" in proc.stderr
    assert not out.exists()
