"""The training-throughput benchmark runs OminiX and its same-run baseline and writes the standard JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_train_throughput_bench_smoke(private_netns: None, tmp_path: Path) -> None:
    out = tmp_path / "tt.json"
    subprocess.run([sys.executable, str(REPO / "bench" / "train_throughput.py"), "tiny", "--plugin", "ddp",
                    "--warmup", "1", "--steps", "1", "--out", str(out)], check=True, capture_output=True,
                   timeout=600, cwd=tmp_path)
    result = json.loads(out.read_text())
    assert {"name", "card", "date", "command", "value", "unit", "baseline", "ratio", "mfu"} <= set(result)
    assert result["card"] == "cpu" and result["mfu"] is None  # no peak for a CPU: n/a, not a guess
    assert [r["model"] for r in result["rows"]] == ["ominix", "baseline: transformers LlamaForCausalLM"]
    assert result["value"] > 0 and result["baseline"] > 0
