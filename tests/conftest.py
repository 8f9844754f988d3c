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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import shutil

    has_gpu = shutil.which("nvidia-smi") is not None and os.environ.get("OMINIX_NO_GPU") != "1"
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``python -m ominix ARGS`` as a user would, capturing output."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "ominix", *args], cwd=cwd, env=full_env, text=True,
        capture_output=True, timeout=timeout,
    )
