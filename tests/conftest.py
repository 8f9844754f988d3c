"""Shared test fixtures. Multi-process tests need a private network namespace (see Makefile)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def in_private_netns() -> bool:
    """True when the only network interface is loopback (``make test`` runs under ``unshare -n``)."""
    lines = Path("/proc/net/dev").read_text().splitlines()[2:]
    names = {line.split(":")[0].strip() for line in lines}
    return names <= {"lo"}


@pytest.fixture
def private_netns() -> None:
    """Fail (not skip) a multi-process test outside a private network namespace."""
    if not in_private_netns():
        pytest.fail("this test starts torchrun/sshd: run it via `make test` (private network namespace)")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny preset's data, prepared for real once per session and shared read-only: the embedded
    corpus, a trained byte-level BPE tokenizer of 2048 ids, seq_len 128, 5% held out. A test that
    changes it works on a copy."""
    out = tmp_path_factory.mktemp("data") / "tiny"
    result = run_cli("data", "prepare", "--config", "tiny", "--out", str(out), timeout=300)
    assert result.returncode == 0, result.stderr
    return out


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import shutil

    has_gpu = shutil.which("nvidia-smi") is not None and os.environ.get("OMINIX_NO_GPU") != "1"
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# what the interpreter reads before any module: a command asking for other values starts afresh
_STARTUP_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONWARNINGS", "PYTHONHASHSEED", "PYTHONSAFEPATH")


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 600, fresh: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``python -m ominix ARGS`` as a user would, capturing output.

    The process is forked from one that has imported torch (tests/preloaded_cli.py), which saves
    each command about 2 s of CPU; ``fresh=True`` starts a new interpreter, for tests about what
    one imports or warns at startup."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    if not fresh and all(full_env.get(k) == os.environ.get(k) for k in _STARTUP_ENV):
        from tests import preloaded_cli

        return preloaded_cli.run(list(args), cwd, full_env, timeout)
    return subprocess.run(
        [sys.executable, "-m", "ominix", *args], cwd=cwd, env=full_env, text=True,
        capture_output=True, timeout=timeout,
    )
