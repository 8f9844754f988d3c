"""The memory check against the card itself: the local launcher reads its GPU's memory (no
``launch.device_memory_gib``), refuses the 7B preset with the whole logits on one GPU by the card's
name, and lets the preset (chunked loss) through. Run on the GPU machine:
`pytest -q -m gpu tests/gpu/test_memory_gpu.py`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.gpu


def test_local_launcher_checks_its_gpu(tmp_path: Path) -> None:
    import torch

    props = torch.cuda.get_device_properties(0)
    if not 100 * 2**30 < props.total_memory < 150 * 2**30:
        pytest.skip("the 7B figures below are for a card of 100-150 GiB (H200: 140)")
    args = ["train", "launch", "llama2-7b", "--nproc-per-node", "1", "--run-dir", str(tmp_path / "run"),
            "--dry-run"]
    refused = run_cli(*args, "--set", "model.loss_chunk=0", timeout=300)
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    assert "does not fit in GPU memory" in refused.stderr and props.name in refused.stderr
    assert "schedule.micro_batch_size=" in refused.stderr
    shown = run_cli(*args, timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "memory    ~" in shown.stdout
