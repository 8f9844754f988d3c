"""Optional benchmark tasks through lm-evaluation-harness (the ``eval`` extra: docs/INSTALL.md).

One path for ``ominix eval --tasks`` and for the tasks of a training run (``schedule.eval_tasks``):
lm-eval drives OminiX's own decoder (``ominix.eval.lm_model.OminixLM``, with its KV cache). A task is
a name from lm-eval's registry (its data from the hub, or a local copy ``HF_DATASETS_CACHE`` points
at) or a local task YAML file whose ``dataset_kwargs.data_files`` may be relative to the file, so a
cluster without network evaluates on its own json/jsonl files.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from ominix.errors import OminixError

TASK_FILE = (".yaml", ".yml")
LOCAL_HINT = ("pass an lm-eval task name (lm-eval ls tasks), or a local task file, e.g. --tasks "
              "path/to/task.yaml (its data_files a json/jsonl file beside it)")


def check_installed(setting: str = "--tasks") -> None:
    if importlib.util.find_spec("lm_eval") is None:
        from ominix.extras import install_hint

        raise OminixError(f"{setting} needs lm-evaluation-harness, which is not installed",
                          f"{install_hint('eval')}; task data comes from the hub or a local copy")


def check_task_files(tasks: list[str], setting: str) -> None:
    """What the launcher checks of ``setting``'s tasks before any process starts: lm-eval is
    installed and each task file exists (names are looked up by rank 0 before the first step:
    indexing lm-eval's registry takes seconds)."""
    if not tasks:
        return
    check_installed(setting)
    for task in filter(is_task_file, tasks):
        if not Path(task).expanduser().is_file():
            raise OminixError(f"{setting}: task file {task} not found", LOCAL_HINT)


def is_task_file(task: str) -> bool:
    return task.endswith(TASK_FILE)


def resolve_tasks(tasks: list[str]) -> tuple[list[str | dict[str, Any]], Any]:
    """lm-eval's task list for ``tasks`` (names as they are, task files read as configs) and the
    task manager that knows them; an unknown name or a missing file is an OminixError, before any
    model is loaded."""
    check_installed()
    from lm_eval.tasks import TaskManager

    names = [task for task in tasks if not is_task_file(task)]
    manager = TaskManager(include_defaults=bool(names))  # indexing the registry takes seconds
    resolved: list[str | dict[str, Any]] = []
    for task in tasks:
        if is_task_file(task):
            resolved.append(_task_file(Path(task).expanduser()))
        elif manager.match_tasks([task]):
            resolved.append(task)
        else:
            raise OminixError(f"lm-eval has no task {task!r}", LOCAL_HINT)
    return resolved, manager


def _task_file(path: Path) -> dict[str, Any]:
    """The task config of a local YAML file, its relative data files made relative to the file."""
    # NOTE: lm-eval's own CLI reads task files with this loader (includes, !function tags)
    from lm_eval.tasks._yaml_loader import load_yaml

    if not path.is_file():
        raise OminixError(f"task file {path} not found", LOCAL_HINT)
    config = load_yaml(path, resolve_func=True)
    if "task" not in config:
        raise OminixError(f"{path} names no task (its `task:` key)", "give the file a `task: NAME` line")
    kwargs = config.get("dataset_kwargs") or {}
    if "data_files" in kwargs:
        kwargs["data_files"] = _anchored(kwargs["data_files"], path.parent.absolute())
    return config


def _anchored(files: Any, base: Path) -> Any:
    """``data_files`` (a path, a list or a split -> path mapping) with relative paths under ``base``."""
    if isinstance(files, dict):
        return {split: _anchored(value, base) for split, value in files.items()}
    if isinstance(files, list):
        return [_anchored(value, base) for value in files]
    return str(base / files) if "://" not in str(files) else files


def run_tasks(model: Any, tokenizer: Any, tasks: list[str], limit: int | None = None,
              resolved: tuple[list[str | dict[str, Any]], Any] | None = None) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` of lm-eval's ``tasks`` for ``model`` (eval mode, OminiX's decoder)
    and its ``tokenizer``, at most ``limit`` documents per task. ``resolved``: what
    :func:`resolve_tasks` returned for ``tasks`` (resolved again when None)."""
    import lm_eval

    from ominix.eval.lm_model import OminixLM

    specs, manager = resolved or resolve_tasks(tasks)
    out = lm_eval.simple_evaluate(model=OminixLM(model, tokenizer), tasks=specs, task_manager=manager,
                                  limit=limit, log_samples=False, bootstrap_iters=0)
    return {task: metrics(values) for task, values in out["results"].items()}


def metrics(values: dict[str, Any]) -> dict[str, float]:
    """lm-eval's ``{"acc,none": 0.5, "acc_stderr,none": "N/A", "alias": ...}`` as ``{"acc": 0.5}``:
    the numbers, each named by its metric (and its filter, where the task filters)."""
    out = {}
    for key, value in values.items():
        metric, _, kind = key.partition(",")
        if kind and isinstance(value, (int, float)) and not isinstance(value, bool):
            out[metric if kind == "none" else f"{metric}_{kind}"] = float(value)
    return out


def version() -> str:
    from importlib.metadata import version as installed

    return installed("lm_eval")
