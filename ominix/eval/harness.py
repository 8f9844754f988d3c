"""Optional benchmark tasks through lm-evaluation-harness (``pip install 'ominix[eval]'``).

The harness loads the model as a plain Hugging Face export, so a checkpoint is exported to a
temporary directory first. Its task data comes from the hub (or a local copy the user points
``HF_DATASETS_CACHE`` at).
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path
from typing import Any

from ominix.dtypes import dtype_name
from ominix.errors import OminixError
from ominix.infer.load import ModelSource


def check_installed() -> None:
    if importlib.util.find_spec("lm_eval") is None:
        raise OminixError("--tasks needs lm-evaluation-harness, which is not installed",
                          "pip install 'ominix[eval]' (task data comes from the hub or a local copy)")


def run_tasks(source: ModelSource, tasks: list[str], device: str, dtype: str,
              batch_size: int = 8) -> dict[str, Any]:
    """lm-eval's per-task results for ``source``."""
    check_installed()
    import lm_eval

    from ominix.infer.export import export

    with tempfile.TemporaryDirectory(prefix="ominix-lm-eval-") as tmp:
        path = source.path
        if source.kind != "export":
            path = Path(tmp) / "export"
            export(source.path, path, dtype=dtype, verify=False)
        out = lm_eval.simple_evaluate(
            model="hf", model_args=f"pretrained={path},dtype={dtype_name(dtype)}",
            tasks=tasks, device=device, batch_size=batch_size,
        )
    return out["results"]
