"""Faults around data and outputs, with real processes and real files: ``--force`` replaces only
what the same command made (never a run, a dataset, another kind of output or the input), a shard
corrupted in place or a tampered manifest stops training and eval with the shard's name, and a full
or read-only disk under ``data prepare`` is one error with nothing left behind."""

from __future__ import annotations

import json
import os
import shutil
import stat
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
    ({"manifest.json": json.dumps({"format": "ominix-packed-v1"})}, "data", True),  # prepared before the marker
    ({"manifest.json": "{}"}, "data", False),  # a user's own manifest.json: not one OminiX wrote
    ({"manifest.json": json.dumps({"format": "my-app"}), "photo.jpg": "x"}, "data", False),
    ({"ominix_export.json": "{}"}, "export", False),
    ({"ominix_export.json": json.dumps({"format": "huggingface-llama"})}, "bundle", False),
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


def test_force_never_wipes_a_user_directory_that_holds_a_manifest_json(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "manifest.json").write_text(json.dumps({"name": "my web app", "version": 3}))
    (mine / "index.html").write_text("<html></html>")
    _refused(run_cli("data", "prepare", str(_corpus(tmp_path / "corpus.jsonl")), "--out", str(mine), "--force"),
             "holds files no OminiX command made, not a prepared dataset")
    assert sorted(p.name for p in mine.iterdir()) == ["index.html", "manifest.json"]


def _device(path: Path) -> Path:
    """A character device node like /dev/null (1, 3), made here: never the machine's own."""
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    return path


def test_a_single_file_output_replaces_only_its_own_earlier_output(data: Path, tmp_path: Path) -> None:
    """`config schema` and `mof init` stand for every --out FILE: a device, a run's or a checkpoint's
    file, a file in a dataset and a symbolic link are refused even with --force; a file another
    program wrote needs --force; the command's own earlier output is replaced."""
    run = make_run(tmp_path)
    node = _device(tmp_path / "null")
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "elsewhere.json")
    state = run / "checkpoints" / "step_00000010" / "state.json"
    kept = {p: p.read_bytes() for p in (run / "config.yaml", state, data / "manifest.json")}
    for command in (("config", "schema"), ("mof", "init")):
        for out, needle in ((node, "is a device or other special file"),
                            (run / "config.yaml", "is one of the files of the training run"),
                            (state, "a checkpoint; writing there would change it"),
                            (data / "notes.txt", "a prepared dataset (made by `ominix data prepare`)"),
                            (link, "is a symbolic link")):
            _refused(run_cli(*command, "--out", str(out), "--force"), needle)
    assert stat.S_ISCHR(node.lstat().st_mode) and link.is_symlink() and not (data / "notes.txt").exists()
    assert all(p.read_bytes() == text for p, text in kept.items())

    schema = tmp_path / "schema.json"
    for _ in range(2):  # the second run replaces the first one's file without --force
        assert run_cli("config", "schema", "--out", str(schema)).returncode == 0
    assert json.loads(schema.read_text())["written_by"] == "ominix config schema"
    notes = tmp_path / "notes.json"
    notes.write_text("mine")
    _refused(run_cli("config", "schema", "--out", str(notes)), "already exists and is not a config JSON Schema")
    assert notes.read_text() == "mine"
    assert run_cli("config", "schema", "--out", str(notes), "--force").returncode == 0
    assert "properties" in json.loads(notes.read_text())


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


def _bytes_read() -> int:
    """Bytes this process has read through read() so far (the hashing reads; memory maps are not)."""
    return int(next(line for line in Path("/proc/self/io").read_text().splitlines()
                    if line.startswith("rchar:")).split()[1])


def _open_and_verify(data: Path, split: str = "train") -> tuple[PackedDataset, int]:
    before = _bytes_read()
    ds = PackedDataset(data, split)
    ds.check(wait=True)
    return ds, _bytes_read() - before


def test_a_shard_is_hashed_once_per_dataset_and_only_for_the_split_read(data: Path, tmp_path: Path) -> None:
    """The first open hashes the split's files and stamps them beside the data (size, mtime,
    sha256); a second open (the next launch, a requeue) reads none of them again, and the other
    split is never hashed; a shard rewritten since is hashed again and its mismatch named."""
    from ominix.data.store import listed_files
    from ominix.data.verified import read_stamp

    copy = _copy(data, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    train = [rel for rel, _ in listed_files(manifest["splits"]["train"]["shards"])]
    first, read_first = _open_and_verify(copy)
    assert first.verifier.hashed == train and sorted(read_stamp(copy)) == sorted(train)
    second, read_second = _open_and_verify(copy)
    assert second.verifier.hashed == [] and second.verifier.skipped == len(train)
    stamp = (copy / ".ominix-verified.json").stat().st_size  # read by the second open only
    assert read_first - read_second + stamp >= sum((copy / rel).stat().st_size for rel in train)

    _corrupt(_shard(copy))  # rewritten in place: a new mtime, so the stamp no longer vouches for it
    with pytest.raises(OminixError, match=r"train/00000\.bin: sha256 does not match the manifest"):
        PackedDataset(copy, "train").check(wait=True)
    assert "train/00000.bin" not in read_stamp(copy) or \
        read_stamp(copy)["train/00000.bin"]["mtime_ns"] != _shard(copy).stat().st_mtime_ns
    from ominix.data.store import verify

    assert verify(copy) == ["train/00000.bin: sha256 mismatch"]  # `data inspect --verify` hashes all


def test_a_shard_changed_after_its_hash_passed_is_not_read(data: Path, tmp_path: Path) -> None:
    """The background hash passed, then the shard is rewritten in place (same size, valid ids): the
    next read of it is refused with the shard's name; a shard only touched (new mtime, same bytes)
    is hashed again and read on."""
    import os

    copy = _copy(data, tmp_path)
    ds = PackedDataset(copy, "train")
    ds.check(wait=True)
    first = ds[0].copy()
    shard = _shard(copy)
    os.utime(shard, ns=(1, 1))  # touched: the stat moved, the content did not
    assert (ds[0] == first).all()
    _corrupt(shard)
    with pytest.raises(OminixError, match=r"train/00000\.bin changed while it was read: its sha256 no longer"):
        ds[0]


def test_a_swapped_tokenizer_is_refused_before_training(data: Path, tmp_path: Path) -> None:
    """tokenizer/tokenizer.json replaced by another tokenizer's: the launch is refused (one error,
    nothing started) and so is every read of the dataset."""
    from tests.test_export import make_tokenizer

    copy = _copy(data, tmp_path)
    other = make_tokenizer(tmp_path / "other", vocab_size=280)
    shutil.copy(other / "tokenizer.json", copy / "tokenizer" / "tokenizer.json")
    with pytest.raises(OminixError, match=r"tokenizer\.json does not match the manifest's sha256"):
        PackedDataset(copy, "train")
    result = _launch(copy, tmp_path / "run", "--max-steps", "1")
    _refused(result, "tokenizer.json does not match the manifest's sha256: the shards were tokenized with another")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_one_process_per_node_verifies_each_starting_on_its_own_share(monkeypatch: pytest.MonkeyPatch) -> None:
    from ominix.data.verified import node_share

    for key, value in {"WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8", "GROUP_RANK": "1", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    assert node_share() == (True, 0.5)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert node_share()[0] is False


def _launch(data: Path, run: Path, *args: str, sets: tuple[str, ...] = (),
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    flags = [a for s in (*TRAIN, *sets) for a in ("--set", s)]
    return run_cli("train", "launch", "tiny", "--data", str(data), "--run-dir", str(run), *args, *flags,
                   env={"OMP_NUM_THREADS": "1", "COLUMNS": "200"}, timeout=300, cwd=cwd)


@pytest.mark.usefixtures("private_netns")
def test_corrupted_shard_stops_training_and_a_changed_manifest_stops_resume(data: Path, tmp_path: Path) -> None:
    from ominix.config import load_config

    copy = _copy(data, tmp_path)
    good = _launch(Path(copy.name), tmp_path / "run", "--max-steps", "2", cwd=copy.parent)  # --data data
    assert good.returncode == 0, good.stderr[-3000:]
    assert load_config(tmp_path / "run" / "config.yaml").data.path == str(copy)  # recorded absolute
    # no evaluation: the training split's shard and its source file only, hashed once
    assert "data: hashing 2 shard files in the background, 0 verified before" in good.stdout, good.stdout
    again = _launch(copy, tmp_path / "again", "--max-steps", "1", "--nproc-per-node", "2",
                    sets=("schedule.micro_batch_size=2",))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "data: hashing 0 shard files in the background, 2 verified before" in again.stdout, again.stdout
    shard = _shard(copy)
    _corrupt(shard)  # same size, every id still valid: only the checksum tells
    bad = _launch(copy, tmp_path / "fresh", "--max-steps", "3")
    assert bad.returncode != 0
    assert "data: hashing 1 shard files in the background, 1 verified before" in bad.stdout, bad.stdout
    assert f"{shard}: sha256 does not match the manifest" in bad.stderr, bad.stderr[-3000:]
    assert bad.stderr.count("error") == 1, bad.stderr[-3000:]
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
