"""Weights & Biases logging (``logging.wandb``, the optional extra ``ominix[wandb]``).

Rank 0 opens one W&B run per run directory and logs the config and the numbers that go to
metrics.jsonl, under the same names as in TensorBoard (``train/loss``, ``eval/val_loss``, ...)
against the optimizer step (``step``, W&B's x axis for them). The run's id is kept in
``RUN_DIR/wandb-run.json``: a relaunch that resumes the run directory logs into the same W&B run
(``resume="allow"``). The W&B files go to ``RUN_DIR/wandb/`` unless ``WANDB_DIR`` says otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ominix import atomic
from ominix.errors import OminixError
from ominix.extras import install_hint

if TYPE_CHECKING:
    from ominix.config.runtime import WandbConfig

RUN_FILE = "wandb-run.json"


def check_installed(cfg: WandbConfig) -> None:
    """Refuse ``logging.wandb.enabled`` without the wandb package (checked before a launch)."""
    if cfg.enabled and importlib.util.find_spec("wandb") is None:
        raise OminixError("logging.wandb.enabled is set but the wandb package is not installed",
                          f"{install_hint('wandb')}, or --set logging.wandb.enabled=false")


def resolve_mode(cfg: WandbConfig) -> str:
    """``logging.wandb.mode``, else ``$WANDB_MODE``, else offline."""
    return cfg.mode or os.environ.get("WANDB_MODE") or "offline"


def saved_run_id(run_dir: Path) -> str | None:
    """The id of the W&B run this run directory logs into, if it has one."""
    path = run_dir / RUN_FILE
    return json.loads(path.read_text())["id"] if path.is_file() else None


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class WandbRun:
    """The W&B run of one run directory, opened on rank 0 when training starts."""

    def __init__(self, cfg: WandbConfig, run_dir: Path, config: dict[str, Any]) -> None:
        check_installed(cfg)
        import wandb

        run_id = saved_run_id(run_dir) or uuid.uuid4().hex[:8]
        self.mode = resolve_mode(cfg)
        try:
            self.run = wandb.init(
                project=cfg.project, entity=cfg.entity, name=cfg.name or run_dir.absolute().name,
                tags=cfg.tags or None, mode=self.mode, id=run_id, resume="allow", config=config,
                dir=None if os.environ.get("WANDB_DIR") else str(run_dir),
                settings=wandb.Settings(silent=True),  # the one line of describe() says where the run is
            )
        except wandb.errors.Error as exc:
            raise OminixError(f"Weights & Biases could not start the run: {exc}",
                              "run `wandb login`, or log offline: --set logging.wandb.mode=offline", exit_code=1)
        # on a relaunch with other settings (more steps, another lr) the config shows the latest
        self.run.config.update(config, allow_val_change=True)
        self.run.define_metric("step")
        for kind in ("train", "eval"):
            # against the optimizer step, not W&B's own counter: a resumed run re-logs the steps
            # after its checkpoint, which W&B's monotonic step would drop
            self.run.define_metric(f"{kind}/*", step_metric="step")
        atomic.write_text(run_dir / RUN_FILE, json.dumps(
            {"id": run_id, "project": cfg.project, "entity": cfg.entity}, indent=2) + "\n")

    def describe(self) -> str:
        """One line saying where the run goes (and how to upload an offline one)."""
        if self.mode == "offline":
            directory = Path(self.run.dir).parent  # RUN_DIR/wandb/offline-run-DATE-ID
            return f"W&B run {self.run.id} (offline) in {directory}; upload with `wandb sync {directory}`"
        if self.mode == "disabled":
            return "W&B logging disabled (logging.wandb.mode=disabled)"
        return f"W&B run {self.run.id}: {self.run.url}"

    def log(self, kind: str, values: dict[str, Any]) -> None:
        numbers = {f"{kind}/{k}": v for k, v in _numbers(values).items() if k != "step"}
        self.run.log({"step": values["step"], **numbers})

    def finish(self) -> None:
        self.run.finish()
