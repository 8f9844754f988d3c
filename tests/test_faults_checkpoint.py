"""Checkpoints under faults, with real training runs (tiny preset, one process, a checkpoint every
step): kill -9 of every process during saves, damaged checkpoints, a full disk, saving a step again.
A run that is killed or given a small disk runs in its own pid, mount and network namespace."""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ominix.checkpoint import read_weights, resumable
from tests.conftest import REPO
from tests.fs_events import TreeEvents
from tests.test_train import _launch, _losses, _ok

STEPS = 5
SETS = ["schedule.warmup_steps=2", "logging.log_every=1", "checkpoint.every=1", "schedule.eval_every=0",
        "logging.tensorboard=false", "checkpoint.keep_every=0"]

SEED = 17  # the kill delays: the same kill points on every run, printed in the assertion messages

pytestmark = pytest.mark.usefixtures("private_netns")


def _argv(data: Path, run: Path, *args: str, keep_last: int = 2) -> list[str]:
    sets = [*SETS, f"checkpoint.keep_last={keep_last}"]
    return [sys.executable, "-m", "ominix", "train", "launch", "tiny", "--data", str(data), "--run-dir", str(run),
            *args, *[a for s in sets for a in ("--set", s)]]


def _isolated(argv: list[str], before: str = ":", after: str = ":") -> list[str]:
    """``argv`` as the child of pid 1 of new pid, mount and network namespaces: killing the returned
    process kills every process of the run at once; a tmpfs mounted in ``before`` is private to it."""
    script = f"ip link set lo up; {before}; {shlex.join(argv)}; rc=$?; {after}; exit $rc"
    return ["unshare", "-p", "-f", "--kill-child", "--mount-proc", "-m", "-n", "sh", "-c", script]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "200",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def _same_weights(a: Path, b: Path) -> bool:
    x, y = read_weights(a), read_weights(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.fixture(scope="module")
def reference(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """An uninterrupted run of STEPS steps that keeps every checkpoint."""
    run = tmp_path_factory.mktemp("reference") / "run"
    _ok(_launch(data_dir, run, "--max-steps", str(STEPS), sets=[*SETS, f"checkpoint.keep_last={STEPS}"]))
    return run


def _kill_when(argv: list[str], ckpts: Path, seen, delay: float) -> None:
    """Start the run; ``delay`` seconds after a path for which ``seen`` holds is created under the
    run (an inotify event: never missed, however short-lived), kill -9 all its processes."""
    root = ckpts.parent.parent
    log = root / "killed.log"
    with TreeEvents(root) as events:
        with log.open("a") as out:
            proc = subprocess.Popen(_isolated(argv), cwd=REPO, env=_env(), stdout=out, stderr=subprocess.STDOUT)
        try:
            events.wait(seen, alive=lambda: proc.poll() is None)
            time.sleep(delay)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {log.read_text()[-2000:]}") from None
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)


def _named(*parts: str):
    """A path ending in ``parts`` (the staging directory, then what is written into it)."""
    return lambda path: path.parts[-len(parts):] == parts


def test_kill_9_of_every_process_during_saves_then_resume_is_bit_exact(reference: Path, data_dir: Path,  # noqa: F811
                                                                        tmp_path: Path) -> None:
    run, rng = tmp_path / "run", random.Random(SEED)
    ckpts = run / "checkpoints"
    kills = [  # (what the run has just done, then a random delay within a save of ~70 ms)
        (_named("checkpoints", ".step_00000002.tmp-save"), rng.uniform(0, 0.05)),  # writing step 2
        (_named("checkpoints", "step_00000003"), 0.0),  # step 3 renamed in; latest may still name step 2
        (_named("checkpoints", ".step_00000004.tmp-save"), rng.uniform(0, 0.08)),  # anywhere in step 4's save
    ]
    for seen, delay in kills:
        _kill_when(_argv(data_dir, run, "--max-steps", str(STEPS)), ckpts, seen, delay)
    result = subprocess.run(_isolated(_argv(data_dir, run, "--max-steps", str(STEPS))), cwd=REPO, env=_env(),
                            capture_output=True, text=True, timeout=300)
    _ok(result)
    delays = f"seed {SEED}, kill delays {[round(d, 3) for _, d in kills]}"
    assert _losses(run) == _losses(reference), delays  # bit-identical, every step
    assert _same_weights(ckpts / "step_00000005", reference / "checkpoints" / "step_00000005"), delays
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_00000004", "step_00000005"]
    # the data-order ledger holds every step once, as the uninterrupted run's, through the kills
    assert (np.load(run / "data_order.npy") == np.load(reference / "data_order.npy")).all(), delays
    assert np.load(run / "data_order.npy").shape[0] == STEPS
    assert (run / "metrics.jsonl").read_text().count('"kind": "launch"') == len(kills) + 1


def test_kill_9_during_background_writes_then_resume_is_bit_exact(reference: Path, data_dir: Path,  # noqa: F811
                                                                   tmp_path: Path) -> None:
    """checkpoint.async_save: the loop goes on while a thread writes; a kill in that write leaves
    ``latest`` on the checkpoint before, and the resumed run continues the same losses."""
    run, rng = tmp_path / "run", random.Random(SEED)
    ckpts = run / "checkpoints"
    argv = _argv(data_dir, run, "--max-steps", str(STEPS), "--set", "checkpoint.async_save=true")
    kills = [  # the model's weights appear in the staging directory only once the thread writes them
        (_named(".step_00000002.tmp-save", "model", "model-00001.safetensors"), 0.0),
        (_named("checkpoints", ".step_00000003.tmp-save"), rng.uniform(0, 0.3)),  # either phase
        (_named("checkpoints", "step_00000004"), 0.0),  # renamed in; latest may still name step 3
    ]
    for seen, delay in kills:
        _kill_when(argv, ckpts, seen, delay)
    result = subprocess.run(_isolated(argv), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    _ok(result)
    delays = f"seed {SEED}, kill delays {[round(d, 3) for _, d in kills]}"
    assert _losses(run) == _losses(reference), delays
    assert _same_weights(ckpts / "step_00000005", reference / "checkpoints" / "step_00000005"), delays
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_00000004", "step_00000005"]
    assert resumable(run, "full") == (ckpts / "step_00000005", [])
    saves = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
             if '"action": "save"' in line]
    assert saves and all(0 < s["blocked_seconds"] <= s["seconds"] for s in saves)


def test_damaged_checkpoints_are_passed_over_with_a_notice_and_the_run_completes(reference: Path,
                                                                                  data_dir: Path,  # noqa: F811
                                                                                  tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    ckpts = run / "checkpoints"
    weights = ckpts / "step_00000005" / "model" / "model-00001.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    (ckpts / "step_00000004" / "state.json").write_text('{"step": 4, "lo')  # cut short
    (ckpts / "step_00000003" / "model" / "model-00001.safetensors").unlink()  # deleted
    result = _launch(data_dir, run, "--max-steps", str(STEPS), sets=[*SETS, f"checkpoint.keep_last={STEPS}"])
    _ok(result)
    size = (reference / "checkpoints" / "step_00000005" / "model" / "model-00001.safetensors").stat().st_size
    for notice in (f"checkpoint step_00000005 is damaged (model/model-00001.safetensors: size 1000 != {size}); "
                   "resuming from step_00000002",
                   "checkpoint step_00000004 is damaged (state.json: size ",
                   "checkpoint step_00000003 is damaged (model/model-00001.safetensors: missing); resuming from "
                   "step_00000002",
                   "resumed from", "at step 2"):
        assert notice in result.stdout, result.stdout[-3000:]
    assert _losses(run) == _losses(reference)  # steps 3-5 again, bit-identical
    assert _same_weights(ckpts / "step_00000005", reference / "checkpoints" / "step_00000005")
    assert resumable(run) == (ckpts / "step_00000005", [])  # the damaged ones were saved again


def _on_small_disk(data: Path, tmp_path: Path, size: str, steps: int, keep_last: int, *args: str):
    """Train on a tmpfs of ``size``; the run directory is copied out (the tmpfs ends with the run)."""
    disk, kept = tmp_path / "disk", tmp_path / "kept"
    disk.mkdir()
    argv = _argv(data, disk / "run", "--max-steps", str(steps), *args, keep_last=keep_last)
    result = subprocess.run(_isolated(argv, before=f"mount -t tmpfs -o size={size} tmpfs {disk}",
                                      after=f"cp -a {disk / 'run'} {kept}"),
                            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    return result, kept / "checkpoints"


@pytest.mark.parametrize("background", [False, True], ids=["sync", "async"])
def test_disk_full_at_a_save_is_one_error_and_latest_stays_loadable(data_dir: Path, tmp_path: Path,  # noqa: F811
                                                                     background: bool) -> None:
    """24 MiB hold one checkpoint of the tiny preset (15 MB with its optimizer), not two; a background
    write's error is the same one, raised when the loop next waits for it."""
    result, ckpts = _on_small_disk(data_dir, tmp_path, "24m", 3, 2, "--set", f"checkpoint.async_save={background}")
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "disk full while saving checkpoint step_00000002 in " in errors[0]
    assert "MiB free of 24 MiB" in errors[0] and "Traceback" not in result.stderr
    assert "--resume auto continues from step_00000001" in result.stderr
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_00000001"]  # the partial save removed
    assert resumable(ckpts.parent, "full") == (ckpts / "step_00000001", [])
    assert "lm_head.weight" in read_weights(ckpts / "step_00000001")


def test_a_disk_that_holds_exactly_keep_last_checkpoints_still_saves(data_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    """32 MiB hold two checkpoints, not three: the oldest goes before the third is written."""
    result, ckpts = _on_small_disk(data_dir, tmp_path, "32m", steps=4, keep_last=2)
    _ok(result)
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_00000003", "step_00000004"]
    assert resumable(ckpts.parent, "full") == (ckpts / "step_00000004", [])


def test_disk_full_at_a_log_write_names_the_step_and_latest_resumes(data_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    """The disk fills up (a file written once step 20's checkpoint is in place) and a log write of a
    later step fails: one error line naming that step, nothing half-saved, and a resume from step 20."""
    disk, kept = tmp_path / "disk", tmp_path / "kept"
    disk.mkdir()
    sets = [*SETS, "checkpoint.every=20"]
    argv = [*_argv(data_dir, disk / "run", "--max-steps", "1000"), "--set", "checkpoint.every=20"]
    fill = (f"(while [ ! -e {disk}/run/checkpoints/latest ]; do sleep 0.05; done; "
            f"dd if=/dev/zero of={disk}/filler bs=64k 2>/dev/null) & true")
    result = subprocess.run(_isolated(argv, before=f"mount -t tmpfs -o size=40m tmpfs {disk}; {fill}",
                                      after=f"cp -a {disk / 'run'} {kept}"),
                            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert errors[0].startswith("error: No space left on device at step 2") and str(disk / "run") in errors[0]
    assert "then --resume auto continues from step_00000020" in result.stderr
    ckpts = kept / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_00000020"]
    resumed = _launch(data_dir, kept, "--max-steps", "21", "--resume", "auto", sets=sets)
    _ok(resumed)
    assert "at step 20" in resumed.stdout and (ckpts / "step_00000021").is_dir()


def test_saving_a_step_again_replaces_it_atomically(reference: Path, data_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    """A run resumed from step 3 saves step 4 again: at every moment step 4 is in place or moved aside."""
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    ckpts = run / "checkpoints"
    before = (ckpts / "step_00000004" / "state.json").stat().st_ino
    gaps, done = [], threading.Event()

    def watch() -> None:
        while not done.is_set():
            names = set(os.listdir(ckpts))
            if not names & {"step_00000004", ".step_00000004.old-save"}:
                gaps.append(sorted(names))
            time.sleep(0.0005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        # the reference's schedule of STEPS steps, stopped at step 4: the same step 4 again
        result = _launch(data_dir, run, "--max-steps", "4", "--resume", str(ckpts / "step_00000003"),
                         sets=[*SETS, f"checkpoint.keep_last={STEPS}", f"schedule.decay_steps={STEPS}"])
    finally:
        done.set()
        watcher.join()
    _ok(result)
    assert gaps == []
    assert (ckpts / "step_00000004" / "state.json").stat().st_ino != before  # written again ...
    assert _same_weights(ckpts / "step_00000004", reference / "checkpoints" / "step_00000004")  # ... the same
    assert (ckpts / "latest").read_text().strip() == "step_00000004"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", *[f"step_0000000{s}" for s in range(1, 6)]]
