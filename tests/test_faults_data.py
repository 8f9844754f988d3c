"""Faults around data and outputs, with real processes and real files: ``--force`` replaces only
what the same command made (never a run, a dataset, another kind of output or the input), a shard
corrupted in place or a tampered manifest stops training and eval with the shard's name, and a full
or read-only disk under ``data prepare`` is one error with nothing left behind."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ominix.atomic import MARKER, check_replaceable, output_kind
from ominix.data.store import PackedDataset
from ominix.errors import OminixError
from tests.conftest import REPO, run_cli
from tests.test_export import make_run

WORDS = "every rank checks each shard it opens against the manifest before trusting a token".split()
TRAIN = ["schedule.warmup_steps=1", "logging.log_every=1", "checkpoint.every=2", "schedule.eval_every=0",
         "checkpoint.keep_last=1", "checkpoint.keep_every=0", "logging.tensorboard=false", "data.seq_len=16",
         "schedule.global_batch_size=4", "schedule.micro_batch_size=4"]


def _corpus(path: Path, n: int = 150) -> Path:
    rng = np.random.default_rng(0)
    path.write_text("".join(json.dumps({"text": " ".join(rng.choice(WORDS, size=50))}) + "\n" for _ in range(n)))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    out = root / "data"
    result = run_cli("data", "prepare", str(_corpus(root / "corpus.jsonl")), "--out", str(out), "--train-tokenizer",
                     "--vocab-size", "300", "--seq-len", "16", "--val-fraction", "0.1")
    assert result.returncode == 0, result.stderr
    return out


def _shard(data: Path, split: str = "train") -> Path:
    manifest = json.loads((data / "manifest.json").read_text())
    return data / manifest["splits"][split]["shards"][0]["file"]


def _corrupt(shard: Path, token: int | None = None) -> None:
    """Change two tokens in place (same size): swapped (valid ids), or set to ``token``."""
    tokens = np.fromfile(shard, dtype="<u2")
    tokens[[5, 6]] = tokens[[6, 5]] if token is None and tokens[5] != tokens[6] else (token or tokens[5] + 1)
    tokens.tofile(shard)


def _copy(data: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    return copy


def _refused(result, needle: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert needle in result.stderr and "Traceback" not in result.stderr, result.stderr


# --- the --force guard ------------------------------------------------------------------------


def test_force_never_deletes_the_input_a_run_or_another_kind(data: Path, tmp_path: Path) -> None:
    run = make_run(tmp_path)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    _refused(run_cli("mof", "report", str(run), "--out", str(run), "--force"), "is or contains the input")
    _refused(run_cli("checkpoint", "export", str(run), "--out", str(run), "--force", "--no-verify"),
             "is or contains the input")
    _refused(run_cli("checkpoint", "export", str(run), "--out", str(tmp_path), "--force", "--no-verify"),
             "is or contains the input")
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # the run is untouched
    other = tmp_path / "other-run"
    shutil.copytree(run, other)
    _refused(run_cli("checkpoint", "export", str(run), "--out", str(other), "--force", "--no-verify"),
             "holds a training run, not a checkpoint export")
    _refused(run_cli("mof", "report", str(run), "--out", str(data), "--force"),
             "holds a prepared dataset (made by `ominix data prepare`), not a MOF release bundle")
    assert (data / "manifest.json").is_file() and (other / "config.yaml").is_file()
    export = tmp_path / "export"
    assert run_cli("checkpoint", "export", str(run), "--out", str(export), "--no-verify").returncode == 0
    assert output_kind(export) == "export" and (export / MARKER).is_file()
    _refused(run_cli("data", "prepare", str(tmp_path / "corpus.jsonl"), "--out", str(export), "--force"),
             "holds a checkpoint export")
    again = run_cli("checkpoint", "export", str(run), "--out", str(export), "--force", "--no-verify")
    assert again.returncode == 0, again.stderr  # its own earlier output is replaced


@pytest.mark.parametrize("content, kind, allowed", [
    ({}, "bundle", True),  # an empty directory
    ({"notes.txt": "mine"}, "data", False),  # files no OminiX command made
    ({MARKER: json.dumps({"kind": "data"}), "manifest.json": "{}"}, "data", True),
    ({MARKER: json.dumps({"kind": "data"})}, "export", False),
    ({"manifest.json": "{}"}, "data", True),  # a dataset prepared before the marker existed
    ({"ominix_export.json": "{}"}, "bundle", False),
    ({MARKER: json.dumps({"kind": "bundle"}), "config.yaml": "x"}, "bundle", False),  # a run is never replaced
    ({MARKER: "not json"}, "quickstart", False),
])
def test_force_replaces_only_an_output_of_the_same_kind(tmp_path: Path, content: dict, kind: str,
                                                        allowed: bool) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for name, text in content.items():
        (out / name).write_text(text)
    with pytest.raises(OminixError, match="already exists"):
        check_replaceable(out, kind, force=False)
    if allowed:
        check_replaceable(out, kind, force=True)
    else:
        with pytest.raises(OminixError, match="--force only replaces one made by"):
            check_replaceable(out, kind, force=True)


# --- data integrity ---------------------------------------------------------------------------


def test_tampered_manifest_or_shard_is_named_and_bad_tokens_refused(data: Path, tmp_path: Path) -> None:
    copy = _copy(data, tmp_path)
    PackedDataset(copy, "train").check(wait=True)  # intact: no finding
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"][0]["sha256"] = "0" * 64  # an edited checksum
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(OminixError, match=r"train/00000\.bin: sha256 does not match the manifest"):
        PackedDataset(copy, "train").check(wait=True)
    shutil.rmtree(copy)
    copy = _copy(data, tmp_path)
    _corrupt(_shard(copy, "validation"), token=65000)  # an id far outside the 300 of the tokenizer
    ds = PackedDataset(copy, "validation", verify=False)
    with pytest.raises(OminixError, match=r"validation/00000\.bin: block 0 holds token id 65000, outside"):
        ds[0]


def _launch(data: Path, run: Path, *args: str) -> subprocess.CompletedProcess[str]:
    flags = [a for s in TRAIN for a in ("--set", s)]
    return run_cli("train", "launch", "tiny", "--data", str(data), "--run-dir", str(run), *args, *flags,
                   env={"OMP_NUM_THREADS": "1", "COLUMNS": "200"}, timeout=300)


@pytest.mark.usefixtures("private_netns")
def test_corrupted_shard_stops_training_and_a_changed_manifest_stops_resume(data: Path, tmp_path: Path) -> None:
    copy = _copy(data, tmp_path)
    good = _launch(copy, tmp_path / "run", "--max-steps", "2")
    assert good.returncode == 0, good.stderr[-3000:]
    shard = _shard(copy)
    _corrupt(shard)  # same size, every id still valid: only the checksum tells
    bad = _launch(copy, tmp_path / "fresh", "--max-steps", "3")
    assert bad.returncode != 0
    assert f"{shard}: sha256 does not match the manifest" in bad.stderr, bad.stderr[-3000:]
    assert not (tmp_path / "fresh" / "checkpoints").exists()
    # the same corruption with the manifest's checksum edited to match: the manifest's own sha256
    # no longer matches what the checkpoint recorded, so the resume is refused
    from ominix.hashing import sha256_file

    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"][0]["sha256"] = sha256_file(shard)
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=2))
    resumed = _launch(copy, tmp_path / "run", "--max-steps", "3", "--resume", "auto")
    assert resumed.returncode == 2, resumed.stderr[-3000:]
    assert "data manifest sha256 differs" in resumed.stderr


def test_eval_names_the_corrupted_shard(tmp_path: Path) -> None:
    from tests.test_eval import make_prepared

    run = make_run(tmp_path)
    data = make_prepared(tmp_path / "data", tmp_path / "data" / "tokenizer")
    shard = _shard(data, "validation")
    _corrupt(shard, token=60000)
    out = tmp_path / "eval.json"
    result = run_cli("eval", "--model", str(run), "--data", str(data), "--out", str(out))
    _refused(result, str(shard))
    assert not out.exists()


# --- disk full, read-only --------------------------------------------------------------------


def _in_mount_ns(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux)")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode:
        pytest.skip("cannot create a mount namespace here (needs root)")
    env = f"PYTHONPATH={REPO} PYTHONUNBUFFERED=1"
    return subprocess.run(["unshare", "-m", "sh", "-c", script.replace("OMINIX", f"{env} {sys.executable} -m ominix")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)


@pytest.mark.parametrize("how", ["full", "read-only"])
def test_prepare_on_a_full_or_read_only_disk_is_one_error_and_leaves_nothing(how: str, tmp_path: Path) -> None:
    corpus = _corpus(tmp_path / "corpus.jsonl", n=600)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mount = {"full": f"mount -t tmpfs -o size=64k tmpfs {mnt}",
             "read-only": f"mount -t tmpfs tmpfs {mnt} && mount -o remount,ro {mnt}"}[how]
    script = (f"{mount} && OMINIX data prepare {corpus} --out {mnt}/data --train-tokenizer --vocab-size 300 "
              f"--seq-len 16; echo rc=$?; echo left:; ls -A {mnt}")
    result = _in_mount_ns(script, tmp_path)
    assert "rc=1" in result.stdout, result.stdout + result.stderr
    why = {"full": "No space left on device", "read-only": "Read-only file system"}[how]
    assert f"error: cannot write {mnt}/data: {why}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.split("left:")[1].strip() == ""  # nothing half-written, no temporary
