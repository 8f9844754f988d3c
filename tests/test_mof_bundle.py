"""``ominix mof report`` / ``mof check`` on a run directory in the documented layout, built from real
files: a real prepared data directory (``data prepare``), real tiny LLaMA weights in safetensors that
export to a model transformers loads, JSON state, metrics, eval results and samples. (The end-to-end
test on a trained tiny run lives with the quickstart tests.)"""

from __future__ import annotations

import hashlib
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
from ominix.data.store import manifest_sha256
from ominix.errors import OminixError
from ominix.release import mof
from ominix.release.bundle import make_bundle, verify_bundle
from tests.conftest import REPO, run_cli

WORDS = "open models need open data open code and open weights for every reader to audit".split()
MODEL = ["model.vocab_size=300", "data.seq_len=16", "model.hidden_size=16", "model.intermediate_size=32",
         "model.num_attention_heads=2", "model.num_key_value_heads=1", "model.num_hidden_layers=1",
         "model.max_position_embeddings=64"]


def _checkpoint(ckpts: Path, step: int, cfg) -> None:
    from ominix.model import build_model

    ckpt = ckpts / f"step_{step:08d}"
    (ckpt / "model").mkdir(parents=True)
    state = {k: v.contiguous() for k, v in build_model(cfg.model, seed=step).state_dict().items()}
    save_file(state, str(ckpt / "model" / "model.safetensors"), metadata={"format": "pt"})
    (ckpt / "optimizer").mkdir()
    torch.save({"state": {0: {"exp_avg": torch.zeros(4)}}, "param_groups": []}, ckpt / "optimizer" / "optimizer.pt")
    torch.save({"last_epoch": step}, ckpt / "scheduler.pt")
    state = {"step": step, "tokens": step * 64, "last_loss": 5.0 - step / 10, "world_size": 1, "dp": 1,
             "tp": 1, "pp": 1, "plugin": "ddp", "has_optimizer": True, "model": cfg.model.model_dump(),
             "data_manifest_sha256": manifest_sha256(cfg.data.path)}
    (ckpt / "state.json").write_text(json.dumps(state))
    (ckpt / "config.yaml").write_text(dump_yaml(cfg))


def _make_run(root: Path, export: bool = True) -> Path:
    """ROOT/prepared (real `data prepare` of a small local corpus) and ROOT/run: checkpoints at steps
    2 and 4 with real tiny weights, metrics, train.log, eval results, samples, and (``export``) the
    run's Hugging Face export of step 4."""
    from ominix.infer.export import export as export_run

    with open(root / "corpus.jsonl", "w") as fh:
        for i in range(120):
            fh.write(json.dumps({"text": " ".join(WORDS[(i + j) % len(WORDS)] for j in range(40 + i % 30))}) + "\n")
    data_cfg = DataConfig(sources=[str(root / "corpus.jsonl")], train_tokenizer=True, vocab_size=300,
                          seq_len=16, val_fraction=0.1)
    prepare(data_cfg, root / "prepared", progress=False, command="ominix data prepare corpus.jsonl --out prepared")
    run = root / "run"
    cfg = load_config("tiny", [f"data.path={root / 'prepared'}", f"logging.run_dir={run}", *MODEL])
    run.mkdir()
    (run / "config.yaml").write_text(dump_yaml(cfg))
    for step in (2, 4):
        _checkpoint(run / "checkpoints", step, cfg)
    (run / "checkpoints" / "latest").write_text("step_00000004\n")
    (run / "metrics.jsonl").write_text("".join(json.dumps(
        {"kind": "train", "step": s, "loss": 5.0, "tokens": s * 64, "tokens_per_s": 1000.0, "mfu": None,
         "step_time_s": 0.5, "memory_gib": 0.3}) + "\n" for s in (2, 4)))
    (run / "train.log").write_text("step 2 loss 5.0\nstep 4 loss 4.6\n")
    if export:
        export_run(run, verify=False)
    (run / "eval").mkdir()
    (run / "eval" / "eval_results.json").write_text(json.dumps(
        {"data": {"path": str(root / "prepared"), "split": "validation"},
         "perplexity": {"loss": 4.5, "perplexity": 90.0, "tokens": 160, "blocks": 10, "per_source": {}}}))
    (run / "samples.jsonl").write_text(json.dumps({"prompt": "open", "completion": " models"}) + "\n")
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_run(tmp_path_factory.mktemp("mofrun"))


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


def _relist(bundle: Path, old: str, new: str) -> None:
    """Rename ``old`` to ``new`` in the bundle's BUNDLE.json and SHA256SUMS, as an older OminiX
    would have listed it."""
    sizes = json.loads((bundle / "BUNDLE.json").read_text())
    sizes["files"][new] = sizes["files"].pop(old)
    (bundle / "BUNDLE.json").write_text(json.dumps(sizes))
    lines = (bundle / "SHA256SUMS").read_text().replace(f"  {old}\n", f"  {new}\n").splitlines()
    digest = hashlib.sha256((bundle / "BUNDLE.json").read_bytes()).hexdigest()
    (bundle / "SHA256SUMS").write_text("".join(f"{digest}  BUNDLE.json\n" if ln.endswith("  BUNDLE.json")
                                               else ln + "\n" for ln in lines))


def _no_leftovers(parent: Path) -> None:
    assert not [p for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_full_run_is_class_one_schema_valid_and_checksums_verify(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    proc = run_cli("mof", "report", str(run_dir), "--out", str(out), "--release", str(_release(tmp_path)), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert (report["class"], report["label"], report["progress"]) == (
        1, "Class I - Open Science Model", {"1": 100, "2": 100, "3": 100})
    document = yaml.safe_load((out / "mof.yml").read_text())
    # The file goes to MOT as it is: named *.yml (all its sync reads), dates quoted (a YAML loader
    # reads an unquoted date as a date, which fails the schema's string type).
    assert not (out / "mof.yaml").exists()
    assert isinstance(document["framework"]["date"], str) and isinstance(document["release"]["date"], str)
    mof.validate(document, "bundle")  # the official schema and the 17 names
    names = {c["name"] for c in document["release"]["components"]}
    assert len(names) == 17
    for entry in document["release"]["components"]:
        assert (out / entry["component_path"]).exists(), entry
        assert (out / entry["license_path"]).is_file()
    assert verify_bundle(out).problems == []
    subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=out, check=True)
    assert not (out / "EXTERNAL_SHA256SUMS").exists()
    # Everything is inside: the run's export as the final model, the intermediate checkpoint's
    # weights and state, the prepared data, the logs; no file points outside the bundle.
    assert (out / "model/final/model.safetensors").read_bytes() == (run_dir / "export/model.safetensors").read_bytes()
    assert (out / "model/final/tokenizer_config.json").is_file()
    assert sorted(p.name for p in (out / "model/intermediate").iterdir()) == ["step_00000002"]
    _intermediate_loads_as_it_is(out / "model/intermediate/step_00000002", run_dir / "checkpoints/step_00000002")
    rows = json.loads((out / "model/checkpoints.json").read_text())["checkpoints"]
    exports = {r["path"]: json.loads((out / r["path"] / "ominix_export.json").read_text()) for r in rows}
    assert [(r["step"], r["tokens"], r["train_loss"], r["val_loss"], r["path"]) for r in rows] == [
        (2, 128, 5.0, None, "model/intermediate/step_00000002"), (4, 256, 5.0, None, "model/final")]
    assert all(r["sha256"] == exports[r["path"]]["model_sha256"] for r in rows)
    assert not (out / "model/metadata/optimizer").exists()  # optimizer state only when declared
    assert (out / "logs/train.log").read_text() == (run_dir / "train.log").read_text()
    assert (out / "data/manifest.json").read_bytes() == (run_dir.parent / "prepared/manifest.json").read_bytes()
    assert not [p for p in out.rglob("*") if p.is_symlink()]
    bundle_info = json.loads((out / "BUNDLE.json").read_text())
    assert bundle_info["data"] == "link" and set(bundle_info["files"]) == {
        str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name not in ("SHA256SUMS", "BUNDLE.json")}
    provenance = json.loads((out / "code" / "PROVENANCE.json").read_text())
    assert provenance["data_preprocessing_command"] == "ominix data prepare corpus.jsonl --out prepared"
    assert provenance["git"]["commit"] and len(provenance["git"]["commit"]) == 40
    assert "safetensors==" in (out / "code" / "requirements.txt").read_text()
    assert (out / "code" / "ominix" / "model.py").read_text() == (REPO / "ominix" / "model.py").read_text()
    assert "Apache License" in (out / "LICENSE-code").read_text()
    assert (out / "DATA_CARD.md").read_text() == (run_dir.parent / "prepared" / "DATA_CARD.md").read_text()
    card = (out / "MODEL_CARD.md").read_text()
    for part in ("# tiny-mof", "## Architecture", "## Training data", "## Hyper-parameters", "## Compute",
                 "| all | 4.5000 | 90.00 | 160 |", "## Intended use", "## Limitations", "Tokens seen in training: 256",
                 "| step | tokens | train loss | val loss | sha256 | path |",
                 f"| 2 | 128 | 5.0000 |  | `{rows[0]['sha256']}` | `model/intermediate/step_00000002` |",
                 "Launches: n/a", "Wall time: n/a", "step time alone 2.0 s"):
        assert part in card
    # The Hub card of the final model: the release's license by its Hub id, the run's evaluation
    # (model-index), the checkpoint table; the run's own export card is left as it was.
    hub_card = (out / "model/final/README.md").read_text()
    meta = yaml.safe_load(hub_card.split("---\n")[1])
    assert meta["license"] == "apache-2.0" and "license_name" not in meta
    assert meta["model-index"][0]["results"][0]["metrics"][0] == {"type": "loss", "name": "validation loss",
                                                                   "value": 4.5}
    assert "| step | tokens | train loss | val loss | sha256 | path |" in hub_card
    assert "## Checkpoints" not in (run_dir / "export/README.md").read_text()
    _checkpoint_branches_dry_run(out)
    # mof check on the bundle's own file gives the same classification.
    check = run_cli("mof", "check", str(out / "mof.yml"), "--json")
    assert json.loads(check.stdout)["progress"] == report["progress"]
    _no_leftovers(tmp_path)


def _intermediate_loads_as_it_is(ckpt: Path, origin: Path) -> None:
    """The bundle's intermediate checkpoint loads with transformers' Auto classes from its own
    directory, with the weights of the run's checkpoint, and keeps its state.json."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(ckpt)
    tok = AutoTokenizer.from_pretrained(ckpt)
    trained = load_file(origin / "model" / "model.safetensors")
    loaded = model.state_dict()
    assert all(torch.equal(loaded[name].float(), t.float()) for name, t in trained.items() if name in loaded)
    assert tok.model_max_length == model.config.max_position_embeddings == 64
    ids = model.generate(**tok("open models", return_tensors="pt"), max_new_tokens=2, min_new_tokens=2)
    assert ids.shape[1] == len(tok("open models")["input_ids"]) + 2
    assert json.loads((ckpt / "state.json").read_text())["step"] == json.loads((origin / "state.json").read_text())["step"]


def _checkpoint_branches_dry_run(out: Path) -> None:
    """`release push --checkpoint-branches --dry-run` plans one branch per intermediate checkpoint with
    its files at the top, and the final model's files at the top of main beside the bundle."""
    push = run_cli("release", "push", str(out), "--repo-id", "my-org/tiny", "--checkpoint-branches",
                   "--dry-run", "--json", env={"HF_HUB_OFFLINE": "1", "HF_TOKEN": ""})
    assert push.returncode == 0, push.stderr
    plan = json.loads(push.stdout)
    step2 = "model/intermediate/step_00000002"
    assert list(plan["branches"]) == ["step-00000002"]
    listed = [line.split("  ", 1)[1] for line in (out / "SHA256SUMS").read_text().splitlines()]
    assert sorted(plan["branches"]["step-00000002"]) == sorted(
        rel.removeprefix(f"{step2}/") for rel in listed if rel.startswith(f"{step2}/")
        and not rel.endswith(".ominix-output.json"))
    assert {"config.json", "model.safetensors", "tokenizer.json", "state.json"} <= set(plan["branches"]["step-00000002"])
    assert plan["revision"] == "main" and {"config.json", "model.safetensors", "README.md"} <= set(plan["files"])
    assert plan["files"]["model.safetensors"] == (out / "model/final/model.safetensors").stat().st_size
    assert f"{step2}/config.json" in plan["files"]  # the whole bundle stays on main: SHA256SUMS verifies
    text = run_cli("release", "push", str(out), "--repo-id", "my-org/tiny", "--checkpoint-branches", "--dry-run")
    assert "to branch step-00000002" in text.stdout and "(branch main)" in text.stdout
    clash = run_cli("release", "push", str(out), "--repo-id", "my-org/tiny", "--checkpoint-branches",
                    "--revision", "step-00000002", "--dry-run")
    assert clash.returncode == 2 and "also the branch of a checkpoint" in clash.stderr


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
    result, out = make_bundle(run, tmp_path / "b", _release(tmp_path))
    # The final checkpoint (step 4) is exported into the bundle instead.
    meta = json.loads((out / "model/final/ominix_export.json").read_text())
    assert meta["state"]["step"] == 4 and meta["source"] == str(run / "checkpoints" / "step_00000004")
    assert result.mof_class == 1 and verify_bundle(out).problems == []


def test_undeclared_data_license_leaves_data_components_unlicensed(run_dir: Path, tmp_path: Path) -> None:
    release = _release(tmp_path, licenses={"code": {"name": "MIT"}, "document": {"name": "CC-BY-4.0"}})
    result, _ = make_bundle(run_dir, tmp_path / "b", release)
    assert result.mof_class == 0
    by_name = {c.name: c for c in result.components}
    assert by_name["Model parameters (Final)"].status == "unlicensed"
    assert by_name["Model architecture"].license == "MIT"


def test_declared_checkpoints_and_optimizer_state(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    result, _ = make_bundle(run_dir, out, _release(tmp_path), optimizer_state=True)
    assert result.mof_class == 1
    assert (out / "model/metadata/optimizer/optimizer.pt").is_file()
    assert (out / "model/metadata/scheduler.pt").is_file()
    assert (out / "model/intermediate/step_00000002/optimizer/optimizer.pt").is_file()
    # No intermediate checkpoint declared: the component is absent, so Class I is out of reach.
    result, none = make_bundle(run_dir, tmp_path / "none", _release(tmp_path, intermediate=[]))
    assert not (none / "model/intermediate").exists()
    assert "Model parameters (Intermediate)" in result.missing[1] and result.mof_class == 2
    with pytest.raises(OminixError, match="step 3 is not an intermediate checkpoint") as err:
        make_bundle(run_dir, tmp_path / "bad", _release(tmp_path, intermediate=[3]))
    assert "choose among [2]" in err.value.hint


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
    from ominix.data.store import PackedDataset

    PackedDataset(out / "data", "validation").check(wait=True)  # eval on the bundle's data stamps it
    assert (out / "data" / ".ominix-verified.json").is_file()
    ok = run_cli("mof", "check", str(out))
    assert ok.returncode == 0, ok.stderr
    assert f"verified: every file of {out} matches SHA256SUMS" in ok.stdout
    # A bundle written before the rename holds mof.yaml: check (and push) still read it.
    legacy = tmp_path / "legacy"
    shutil.copytree(out, legacy)
    (legacy / "mof.yml").rename(legacy / "mof.yaml")
    _relist(legacy, "mof.yml", "mof.yaml")
    for target in (legacy, legacy / "mof.yaml"):
        old = run_cli("mof", "check", str(target), "--json")
        assert old.returncode == 0, old.stderr
        assert json.loads(old.stdout)["class"] == 1 and json.loads(old.stdout)["bundle"]["problems"] == []
    card = (out / "MODEL_CARD.md").read_text()
    (out / "MODEL_CARD.md").write_text(card.replace("tiny-mof", "tiny-MOF"))  # same size, other bytes
    (out / "eval/eval_results.json").write_text("{}\n")  # another size
    (out / "LICENSE-data").unlink()
    (out / "notes.txt").write_text("added after the release\n")
    for target in (out, out / "mof.yml"):  # the bundle directory, or the mof.yml inside it
        bad = run_cli("mof", "check", str(target), "--json")
        assert bad.returncode == 1, bad.stderr
        found = json.loads(bad.stdout)["bundle"]
        assert (found["missing"], found["changed"], found["unlisted"]) == (
            ["LICENSE-data"], ["MODEL_CARD.md", "eval/eval_results.json"], ["notes.txt"])
        assert "MODEL_CARD.md: sha256 mismatch (changed since the bundle was written)" in found["problems"]
    text = run_cli("mof", "check", str(out))
    assert text.returncode == 1
    assert [line for line in text.stderr.splitlines() if line.startswith("problem:")] == [
        "problem: LICENSE-data: missing",
        "problem: MODEL_CARD.md: sha256 mismatch (changed since the bundle was written)",
        f"problem: eval/eval_results.json: size 3 bytes, was {(run_dir / 'eval/eval_results.json').stat().st_size} "
        "bytes when released",
        "problem: notes.txt: not listed in SHA256SUMS"]
    # --no-verify: no hashing, so the same-size edit goes unseen; presence and sizes are still checked.
    quick = run_cli("mof", "check", str(out), "--no-verify", "--json")
    found = json.loads(quick.stdout)["bundle"]
    assert quick.returncode == 1 and found["verified"] is False
    assert found["changed"] == ["eval/eval_results.json"] and found["missing"] == ["LICENSE-data"]
    lone = tmp_path / "lone.yml"
    shutil.copyfile(out / "mof.yml", lone)
    assert run_cli("mof", "check", str(lone)).returncode == 0  # a lone MOF file is classified as before
    shutil.copyfile(out / "mof.yml", tmp_path / "lone.yaml")  # a name MOT would not read
    assert run_cli("mof", "check", str(tmp_path / "lone.yaml")).returncode == 2


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


def test_report_and_check_refuse_data_the_run_never_trained_on(run_dir: Path, tmp_path: Path) -> None:
    """`mof report --data` of another dataset is refused; a bundle whose data was swapped and its
    SHA256SUMS written again (so every sum holds) fails `mof check` on the data's identity."""
    other = tmp_path / "other"
    shutil.copytree(run_dir.parent / "prepared", other)
    manifest = other / "manifest.json"
    manifest.write_text(manifest.read_text().replace("prepared", "prepareD", 1))  # same size, another dataset
    out = tmp_path / "bundle"
    proc = run_cli("mof", "report", str(run_dir), "--out", str(out), "--data", str(other),
                   "--release", str(_release(tmp_path)))
    assert proc.returncode == 2, proc.stdout
    assert f"{other} is not the data {run_dir} trained on" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()

    make_bundle(run_dir, out, _release(tmp_path))
    (out / "data" / "manifest.json").unlink()  # a hard link to the run's own manifest: not written through
    shutil.copyfile(manifest, out / "data" / "manifest.json")
    sums = out / "SHA256SUMS"
    from ominix.hashing import sha256_file

    sums.write_text("".join(f"{sha256_file(out / 'data/manifest.json')}  {rel}\n" if rel == "data/manifest.json"
                            else line + "\n" for line in sums.read_text().splitlines()
                            for rel in [line.split("  ", 1)[1]]))
    bad = run_cli("mof", "check", str(out))
    assert bad.returncode == 1, bad.stdout
    problems = [line for line in bad.stderr.splitlines() if line.startswith("problem:")]
    assert len(problems) == 1 and "data/manifest.json: not the data the model trained on" in problems[0], bad.stderr


def test_bundle_moved_elsewhere_with_run_and_data_deleted_stands_alone(tmp_path: Path) -> None:
    """The issue's "Done when": the bundle of a run that was never exported, moved, with the run and
    the prepared data deleted, verifies file by file, loads in transformers and is still Class I;
    `mof check` notices an edited and a deleted file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    work = tmp_path / "work"
    work.mkdir()
    run = _make_run(work, export=False)
    release = _release(work)
    proc = run_cli("mof", "report", str(run), "--out", str(work / "bundle"), "--release", str(release), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["class"] == 1
    handed = tmp_path / "elsewhere" / "tiny-release"
    handed.parent.mkdir()
    shutil.copytree(work / "bundle", handed)  # a copy, not a rename: nothing may depend on the old place
    shutil.rmtree(work)

    subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=handed, check=True)
    check = run_cli("mof", "check", str(handed), "--json")
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout)["class"] == 1 and json.loads(check.stdout)["bundle"]["ok"] is True
    for entry in yaml.safe_load((handed / "mof.yml").read_text())["release"]["components"]:
        assert (handed / entry["component_path"]).exists(), entry

    model_dir = handed / "model" / "final"
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    out = model.generate(**tok("open models need", return_tensors="pt"), min_new_tokens=3, max_new_tokens=3)
    assert out.shape[1] == len(tok("open models need")["input_ids"]) + 3
    # The bundle's data is a prepared directory that training and eval read.
    from ominix.data.store import PackedDataset

    assert len(PackedDataset(handed / "data", "validation")) > 0

    (handed / "MODEL_CARD.md").write_text((handed / "MODEL_CARD.md").read_text() + "edited\n")
    (handed / "model/intermediate/step_00000002/state.json").unlink()
    bad = run_cli("mof", "check", str(handed))
    assert bad.returncode == 1
    assert "problem: MODEL_CARD.md: size" in bad.stderr
    assert "problem: model/intermediate/step_00000002/state.json: missing" in bad.stderr


def test_files_are_hard_links_on_the_same_filesystem_and_copies_when_asked(run_dir: Path, tmp_path: Path) -> None:
    prepared = run_dir.parent / "prepared"
    manifest = json.loads((prepared / "manifest.json").read_text())
    shard = manifest["splits"]["train"]["shards"][0]["file"]
    _, out = make_bundle(run_dir, tmp_path / "linked", _release(tmp_path))
    for inside, origin in (("model/final/model.safetensors", run_dir / "export/model.safetensors"),
                           (f"data/{shard}", prepared / shard)):
        assert os.stat(out / inside).st_ino == os.stat(origin).st_ino and os.stat(origin).st_nlink >= 2, inside
    # The small text files are copies: editing the run afterwards leaves the published bundle as it was.
    for inside, origin in (("logs/metrics.jsonl", run_dir / "metrics.jsonl"),
                           ("model/final/config.json", run_dir / "export/config.json"),
                           ("model/final/tokenizer.json", run_dir / "export/tokenizer.json"),
                           ("data/manifest.json", prepared / "manifest.json"),
                           ("model/metadata/state.json", run_dir / "checkpoints/step_00000004/state.json")):
        assert os.stat(out / inside).st_ino != os.stat(origin).st_ino, inside
    edited = tmp_path / "edited-run"
    shutil.copytree(run_dir, edited)
    _, linked = make_bundle(edited, tmp_path / "from-edited", _release(tmp_path))
    for name in ("README.md", "config.json", "tokenizer_config.json"):
        with open(edited / "export" / name, "a") as fh:  # an edit in place, as an editor saves
            fh.write("\n")
    assert verify_bundle(linked).problems == []
    info = json.loads((out / "BUNDLE.json").read_text())
    assert info["linked_bytes"] > 0
    _, copied = make_bundle(run_dir, tmp_path / "copied", _release(tmp_path), data_mode="copy")
    assert os.stat(copied / "data" / shard).st_ino != os.stat(prepared / shard).st_ino
    assert (copied / "data" / shard).read_bytes() == (prepared / shard).read_bytes()
    assert json.loads((copied / "BUNDLE.json").read_text())["data"] == "copy"


def test_reference_mode_lists_source_command_and_checksums(run_dir: Path, tmp_path: Path) -> None:
    prepared = run_dir.parent / "prepared"
    manifest = json.loads((prepared / "manifest.json").read_text())
    shards = {s["file"]: s["sha256"] for split in manifest["splits"].values() for s in split["shards"]}
    # A local corpus cannot be fetched again: the reference is incomplete and does not count.
    result, out = make_bundle(run_dir, tmp_path / "local", _release(tmp_path), data_mode="reference")
    ref = json.loads((out / "data/reference.json").read_text())
    assert ref["prepare_command"] == "ominix data prepare corpus.jsonl --out prepared"
    assert {k: v for k, v in ref["shards"].items() if k in shards} == shards
    assert ref["complete"] is False and "is a local path" in ref["missing"][0]
    assert not any(p.suffix == ".bin" for p in (out / "data").rglob("*"))
    by_name = {c.name: c for c in result.components}
    assert not by_name["Datasets"].present and not by_name["Evaluation data"].present
    assert result.mof_class == 3  # Evaluation data is a Class II component
    assert "the data reference is incomplete" in result.hints["Datasets"]
    # The shard list is what `sha256sum -c` checks in the prepared directory.
    subprocess.run(["sha256sum", "--quiet", "-c", str(out / "data/shards.sha256")], cwd=prepared, check=True)

    # Sources from the Hub at a pinned revision: the reference is complete and counts (a run that
    # trained on that data: its checkpoints record the manifest's sha256).
    data = tmp_path / "hubdata"
    shutil.copytree(prepared, data)
    manifest["sources"] = [{"source": "org/corpus", "kind": "hub", "split": "train", "revision": "0123abcd"}]
    (data / "manifest.json").write_text(json.dumps(manifest))
    run = tmp_path / "hubrun"
    shutil.copytree(run_dir, run)
    for state in run.glob("checkpoints/step_*/state.json"):
        state.write_text(json.dumps({**json.loads(state.read_text()), "data_manifest_sha256": manifest_sha256(data)}))
    for config in [run / "config.yaml", *run.glob("checkpoints/step_*/config.yaml")]:  # and its path
        doc = yaml.safe_load(config.read_text())
        doc["data"]["path"] = str(data)
        config.write_text(yaml.safe_dump(doc))
    result, out = make_bundle(run, tmp_path / "hub", _release(tmp_path), data_dir=data, data_mode="reference")
    assert result.mof_class == 1
    ref = json.loads((out / "data/reference.json").read_text())
    assert ref["complete"] and ref["sources"][0]["where"] == "https://huggingface.co/datasets/org/corpus/tree/0123abcd"
    text = (out / "data/REFERENCE.md").read_text()
    assert "ominix data prepare corpus.jsonl --out prepared" in text and "sha256sum -c shards.sha256" in text
    assert verify_bundle(out).problems == []


def test_run_without_release_section_points_at_mof_init(run_dir: Path, tmp_path: Path) -> None:
    proc = run_cli("mof", "report", str(run_dir), "--out", str(tmp_path / "b"))
    assert proc.returncode == 0, proc.stderr
    assert "Unclassified" in proc.stdout
    assert "ominix mof init" in proc.stdout and "--release release.yaml" in proc.stdout
    assert "ominix mof init" in (tmp_path / "b" / "MOF_REPORT.md").read_text()
    bad = run_cli("mof", "report", str(run_dir), "--out", str(tmp_path / "c"), "--data-mode", "hardlink")
    assert bad.returncode == 2 and "--data-mode 'hardlink' is not one of auto, copy, link, reference" in bad.stderr
