"""Markdown pieces shared by the cards OminiX writes (the export's README.md, the release bundle's
MODEL_CARD.md and MOF_REPORT.md)."""

from __future__ import annotations

from typing import Any


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """The lines of a Markdown table; None cells are empty."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join("" if c is None else str(c) for c in row) + " |" for row in rows]


def loss_cells(numbers: dict[str, Any]) -> list[str]:
    """Loss, perplexity and token count of one evaluation result, formatted for a table row."""
    loss, ppl = numbers.get("loss"), numbers.get("perplexity")
    return [f"{loss:.4f}" if isinstance(loss, float) else str(loss),
            f"{ppl:.2f}" if isinstance(ppl, float) else str(ppl), f"{numbers.get('tokens', 0):,}"]
