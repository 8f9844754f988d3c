"""The training figure, ``RUN_DIR/plots/training.png``: loss (training and validation), learning rate,
throughput and, when the run has lm-eval tasks (``schedule.eval_tasks``), their metrics against the
step, drawn from ``RUN_DIR/metrics.jsonl``.

Training draws it at each evaluation and at the end (rank 0, ``logging.figure``); ``ominix train plot
RUN_DIR`` draws it again from the same file. A step logged twice (a run resumed from a checkpoint
older than its last log line) is drawn as its last record says. matplotlib is imported only here,
drawn without pyplot (no display needed); without it training goes on without the figure.
"""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

from ominix import atomic
from ominix.errors import OminixError

FIGURE = Path("plots") / "training.png"
MISSING = "matplotlib is not installed: no training figure (pip install matplotlib)"


def available() -> bool:
    """True when matplotlib can be imported."""
    return importlib.util.find_spec("matplotlib") is not None


def read_records(run_dir: Path) -> dict[str, dict[int, dict]]:
    """``{kind: {step: record}}`` from metrics.jsonl, the later record of a step winning; a torn
    last line (a run killed while writing it) is left out."""
    records: dict[str, dict[int, dict]] = {"train": {}, "eval": {}}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        records.setdefault(row.get("kind"), {})[row["step"]] = row
    return records


def _series(rows: dict[int, dict], key: str) -> tuple[list[int], list[float]]:
    points = [(step, row[key]) for step, row in sorted(rows.items()) if row.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def draw(run_dir: Path, out: Path | None = None, force: bool = False) -> Path:
    """Draw the figure of ``run_dir`` into ``out`` (default RUN_DIR/plots/training.png, the run's
    own figure), written to a temporary name and renamed; returns its path. An existing ``out`` is
    replaced when it is a figure OminiX drew, another regular file only with ``force`` (the run's
    own figure always: it is no file of the user's)."""
    out = out or run_dir / FIGURE
    atomic.check_replaceable(out, "figure", force or out == run_dir / FIGURE, inputs=[run_dir / "metrics.jsonl"])
    if not available():
        raise OminixError("matplotlib is not installed: cannot draw the training figure", "pip install matplotlib")
    if not (run_dir / "metrics.jsonl").is_file():
        raise OminixError(f"{run_dir / 'metrics.jsonl'} not found",
                          "give a run directory that has trained at least one logged step")
    from matplotlib.figure import Figure  # no pyplot: no backend, no display, no global state
    from matplotlib.ticker import MaxNLocator

    records = read_records(run_dir)
    train, evals, tasks = records["train"], records["eval"], records.get("downstream", {})
    panels = 4 if tasks else 3
    fig = Figure(figsize=(4 * panels, 3.6), dpi=100, layout="constrained")
    loss_ax, lr_ax, speed_ax, *task_ax = fig.subplots(1, panels)
    loss_ax.plot(*_series(train, "loss"), label="train", linewidth=1)
    if evals:
        loss_ax.plot(*_series(evals, "val_loss"), "o-", label="validation", markersize=3)
    loss_ax.set(title="loss", xlabel="step", ylabel="nats / token")
    loss_ax.legend()
    lr_ax.plot(*_series(train, "lr"), color="tab:green", linewidth=1)
    lr_ax.set(title="learning rate", xlabel="step")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    speed_ax.plot(*_series(train, "tokens_per_s"), color="tab:purple", linewidth=1)
    speed_ax.set(title="throughput", xlabel="step", ylabel="tokens / s")
    steps, mfu = _series(train, "mfu")
    if steps:
        mfu_ax = speed_ax.twinx()
        mfu_ax.plot(steps, [100 * m for m in mfu], color="tab:orange", linewidth=1, alpha=0.6)
        mfu_ax.set_ylabel("MFU %", color="tab:orange")
    if tasks:
        names = sorted({key for row in tasks.values() for key in row if "/" in key and "stderr" not in key})
        for name in names:
            task_ax[0].plot(*_series(tasks, name), "o-", label=name, markersize=3)
        task_ax[0].set(title="downstream tasks (lm-eval)", xlabel="step")
        task_ax[0].legend(fontsize=7)
    for ax in (loss_ax, lr_ax, speed_ax, *task_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    last = max(train, default=0)
    fig.suptitle(f"{run_dir.absolute().name}: step {last}", fontsize=10)

    png = io.BytesIO()
    fig.savefig(png, format="png", metadata=atomic.file_mark("figure"))
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(out, png.getvalue())
    return out
