"""What ``ominix checkpoint list`` shows: every complete checkpoint of a run and why it is kept."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ominix.config import load_config
from ominix.errors import OminixError

STEP_DIR = re.compile(r"^step_(\d+)$")


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def list_checkpoints(run_dir: str | Path) -> list[dict[str, Any]]:
    """One entry per ``checkpoints/step_N`` (oldest first): step, tokens seen, loss, bytes, and
    ``kept``: why the retention rules keep it ("latest", "last N", "every K"), or "" when the next
    save will remove it. Temporary directories of an unfinished save are not listed."""
    run_dir = Path(run_dir)
    config_file = run_dir / "config.yaml"
    if not config_file.is_file() or not (run_dir / "checkpoints").is_dir():
        raise OminixError(f"{run_dir} is not a run directory with checkpoints",
                          "pass the logging.run_dir of a run, e.g. runs/tiny")
    rules = load_config(config_file).checkpoint
    pointer = run_dir / "checkpoints" / "latest"
    latest = pointer.read_text().strip() if pointer.is_file() else None
    found = sorted(
        (int(m.group(1)), d) for d in (run_dir / "checkpoints").iterdir()
        if d.is_dir() and (m := STEP_DIR.match(d.name))
    )
    newest = {step for step, _ in found[-rules.keep_last :]}
    entries = []
    for step, path in found:
        state_file = path / "state.json"
        state = json.loads(state_file.read_text()) if state_file.is_file() else {}
        reasons = []
        if path.name == latest:
            reasons.append("latest")
        if step in newest:
            reasons.append(f"last {rules.keep_last}")
        if rules.keep_every and step % rules.keep_every == 0:
            reasons.append(f"every {rules.keep_every}")
        entries.append({
            "name": path.name,
            "path": str(path),
            "step": state.get("step", step),
            "tokens_seen": state.get("tokens"),
            "loss": state.get("last_loss"),
            "bytes": _size(path),
            "kept": ", ".join(reasons),
        })
    return entries


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def format_table(entries: list[dict[str, Any]]) -> str:
    rows = [("checkpoint", "step", "tokens", "loss", "size", "kept")]
    for e in entries:
        rows.append((
            e["name"], str(e["step"]),
            f"{e['tokens_seen']:,}" if e["tokens_seen"] is not None else "-",
            f"{e['loss']:.4f}" if e["loss"] is not None else "-",
            human_bytes(e["bytes"]), e["kept"] or "removed at next save",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
