"""The model checkpoints of a release bundle and their table.

Each intermediate checkpoint a release declares goes into ``model/intermediate/step_N/`` in the
Hugging Face format, written by the same export as the final model (``ominix.infer.export``): its
``config.json``, weights, tokenizer and card, so ``AutoModelForCausalLM.from_pretrained`` loads it
as it is. Its ``state.json`` (and, with ``release.optimizer_state``, its optimizer and scheduler)
sit beside. The run's own checkpoints are only read: resuming a run still uses them as they are.

``model/checkpoints.json`` holds the checkpoint table (step, tokens, train loss, val loss, sha256 of
the weights, path in the bundle), one row per checkpoint, the final one last; the bundle's model
cards show it, and ``ominix release push --checkpoint-branches`` reads it to name one Hub branch
per intermediate checkpoint (``step-00001000``, the Pythia and OLMo convention).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ominix.errors import OminixError
from ominix.markdown import table

TABLE = "model/checkpoints.json"
HEADER = ["step", "tokens", "train loss", "val loss", "sha256", "path"]


def branch(step: int) -> str:
    """The Hub branch of the checkpoint at ``step``."""
    return f"step-{step:08d}"


def export_intermediate(ckpt: Any, dest: Path, command: str | None) -> dict[str, Any]:
    """Export the run checkpoint ``ckpt`` to ``dest`` in the Hugging Face format; its metadata.

    Not verified against the checkpoint: the final model's export runs the same conversion and is
    verified, and a run can keep many intermediate checkpoints of a large model."""
    from ominix.infer.export import export

    return export(ckpt.path, out=dest, verify=False,
                  command=f"{command or 'ominix mof report'} (export of {ckpt.path.name})")


def _losses(metrics: list[dict[str, Any]], kind: str, key: str) -> dict[int, float]:
    return {row["step"]: row[key] for row in metrics if row.get("kind") == kind and row.get(key) is not None}


def rows(entries: list[tuple[dict[str, Any], dict[str, Any], str]],
         metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The table's rows from ``(state.json, export metadata, path in the bundle)`` per checkpoint:
    the train loss is the logged mean at that step (else the checkpoint's last loss), the val loss
    the evaluation logged at that step (None where the run did not evaluate then)."""
    train, val = _losses(metrics, "train", "loss"), _losses(metrics, "eval", "val_loss")
    out = []
    for state, meta, path in entries:
        step = state["step"]
        out.append({"step": step, "tokens": state.get("tokens"),
                    "train_loss": train.get(step, state.get("last_loss")), "val_loss": val.get(step),
                    "sha256": meta["model_sha256"], "path": path})
    return out


def write_table(root: Path, table_rows: list[dict[str, Any]]) -> None:
    (root / TABLE).write_text(json.dumps({"format": 1, "checkpoints": table_rows}, indent=2) + "\n")


def read_table(bundle: Path) -> list[dict[str, Any]]:
    """The rows of the bundle's checkpoint table; refuses a bundle written without one."""
    path = bundle / TABLE
    if not path.is_file():
        raise OminixError(f"{bundle} has no {TABLE} (the bundle predates checkpoint tables)",
                          "write the bundle again with `ominix mof report`")
    try:
        return json.loads(path.read_text())["checkpoints"]
    except (ValueError, KeyError, TypeError) as exc:
        raise OminixError(f"{path} is not a checkpoint table",
                          "write the bundle again with `ominix mof report`") from exc


def _loss(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def markdown(table_rows: list[dict[str, Any]]) -> list[str]:
    """The checkpoint table as Markdown lines (a section of a model card)."""
    body = [[r["step"], "" if r["tokens"] is None else f"{r['tokens']:,}", _loss(r["train_loss"]),
             _loss(r["val_loss"]), f"`{r['sha256']}`", f"`{r['path']}`"] for r in table_rows]
    return ["## Checkpoints", "",
            "Every checkpoint of the release, in the Hugging Face format (`from_pretrained` loads each "
            "directory as it is); sha256 is that of its weights (`ominix_export.json` has each file's).", "",
            *table(HEADER, body)]
