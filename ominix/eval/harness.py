"""Optional benchmark tasks through lm-evaluation-harness (the ``eval`` extra: docs/INSTALL.md).

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
        from ominix.extras import install_hint

        raise OminixError("--tasks needs lm-evaluation-harness, which is not installed",
                          f"{install_hint('eval')}; task data comes from the hub or a local copy")


def known_tasks(tasks: list[str]):
    """lm-eval's task index, once every name in ``tasks`` is a task, group or tag it knows, or the
    path of a task's YAML file (the harness itself ends in a ``KeyError`` on an unknown name)."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager()
    known = set(manager.all_tasks)
    unknown = [t for t in tasks if t not in known and not Path(t).is_file()]
    if unknown:
        names = ", ".join(map(repr, unknown))
        raise OminixError(f"unknown lm-eval task {names} (not a task name, nor a file)",
                          "check the spelling (`lm_eval ls tasks` lists them); a task of your own is passed "
                          "as its YAML file's path: --tasks ./my_task.yaml")
    return manager


def run_tasks(source: ModelSource, tasks: list[str], device: str, dtype: str,
              batch_size: int = 8) -> dict[str, Any]:
    """lm-eval's per-task results for ``source``."""
    check_installed()
    import lm_eval

    from ominix.infer.export import export

    manager = known_tasks(tasks)  # before the export: a misspelt name costs nothing
    with tempfile.TemporaryDirectory(prefix="ominix-lm-eval-") as tmp:
        path = source.path
        if source.kind != "export":
            path = Path(tmp) / "export"
            export(source.path, path, dtype=dtype, verify=False)
        out = lm_eval.simple_evaluate(
            model="hf", model_args=f"pretrained={path},dtype={dtype_name(dtype)}",
            tasks=tasks, device=device, batch_size=batch_size, task_manager=manager,
        )
    return out["results"]
