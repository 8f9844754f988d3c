"""A run's evaluation results as the release reads them: ``ominix eval``'s ``RUN_DIR/eval/
eval_results.json`` together with the lm-eval tasks scored during training (``RUN_DIR/eval/
downstream.json``, ``ominix.train.downstream``). Each stage writes only its own file; this module
alone puts them together, for the bundle's ``eval/eval_results.json`` and both model cards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HELD_OUT = Path("eval") / "eval_results.json"
IN_TRAINING = Path("eval") / "downstream.json"  # written by ominix.train.downstream


def _read(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def run_results(run_dir: Path | None) -> dict[str, Any] | None:
    """``eval_results.json`` with the last in-training task scores under ``"downstream"``; its
    ``"tasks"`` are ``ominix eval --tasks``'s, else the in-training ones. None when there is neither."""
    if run_dir is None:
        return None
    held, during = _read(run_dir / HELD_OUT), _read(run_dir / IN_TRAINING)
    if held is None and during is None:
        return None
    results = dict(held or {})
    if during is not None:
        results["downstream"] = during
        if not results.get("tasks"):
            results["tasks"], results["tasks_from"] = during.get("tasks"), "training"
    return results


def tasks_origin(results: dict[str, Any]) -> str:
    """Where ``results["tasks"]`` come from, in words, for a model card."""
    if results.get("tasks_from") != "training":
        return "`ominix eval --tasks`"
    during = results["downstream"]
    limit = (during.get("settings") or {}).get("limit")
    return (f"during training, at step {during.get('step')}"
            + (f", first {limit} documents per task" if limit else ""))
