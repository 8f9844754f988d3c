"""What a run directory holds, found by the documented layout (docs/ARCHITECTURE.md).

```
RUN_DIR/config.yaml                         resolved config (required)
RUN_DIR/checkpoints/                        at least one complete checkpoint (see ominix.checkpoint)
RUN_DIR/metrics.jsonl, export/, samples.jsonl, eval/eval_results.json     optional
RUN_DIR/eval/downstream.json                lm-eval tasks scored in training (optional)
DATA_DIR (config data.path)                 manifest.json, DATA_CARD.md, tokenizer/, validation/
```
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ominix.checkpoint import Checkpoint, complete_checkpoints
from ominix.checkpoint.layout import CHECKPOINTS, MODEL, STATE, STEP_GLOB
from ominix.errors import OminixError
from ominix.eval.results import HELD_OUT


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise OminixError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})",
                          "regenerate it with the ominix command that wrote it") from exc


@dataclass
class RunArtifacts:
    run_dir: Path
    config: Any  # OminixConfig
    config_text: str
    checkpoints: list[Checkpoint]  # oldest first; the last is the final one
    data_dir: Path | None
    manifest: dict[str, Any] | None
    export_dir: Path | None
    eval_results: Path | None
    samples: Path | None
    metrics: list[dict[str, Any]] = field(default_factory=list)

    @property
    def final(self) -> Checkpoint:
        return self.checkpoints[-1]

    @property
    def intermediate(self) -> list[Checkpoint]:
        return self.checkpoints[:-1]

    def validation_split(self) -> dict[str, Any] | None:
        split = (self.manifest or {}).get("splits", {}).get("validation")
        return split if split and split.get("blocks") else None


def _checkpoints(run_dir: Path) -> list[Checkpoint]:
    found = complete_checkpoints(run_dir)
    if not found:
        raise OminixError(f"{run_dir} has no checkpoint ({CHECKPOINTS}/{STEP_GLOB}/ with {MODEL}/ and {STATE})",
                          "train first (`ominix train launch`) or pass the run directory that holds the checkpoints")
    return found


def _data_dir(cfg: Any, run_dir: Path, override: Path | None, recorded_sha: str | None) -> Path | None:
    """The prepared data the run trained on: ``override`` (--data) or the recorded ``data.path``,
    either refused when its manifest is not the one the final checkpoint recorded."""
    from ominix.data.recorded import check_recorded, run_data

    if override is None:
        return run_data(cfg.data.path, run_dir, recorded_sha)
    if not (override / "manifest.json").is_file():
        raise OminixError(f"--data {override} is not a prepared data directory (no manifest.json)",
                          "pass the directory `ominix data prepare --out` wrote")
    check_recorded(override, recorded_sha, run_dir)
    return override


def _export(run_dir: Path, final: Checkpoint) -> Path | None:
    """RUN_DIR/export when it was exported from the final checkpoint (a stale export is ignored)."""
    meta = run_dir / "export" / "ominix_export.json"
    if not meta.is_file():
        return None
    return meta.parent if read_json(meta).get("state", {}).get("step") == final.step else None


def _metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise OminixError(f"{path}:{number} is not valid JSON", "the run's metrics file is damaged") from exc
    return rows


def collect(run_dir: str | Path, data_dir: Path | None = None) -> RunArtifacts:
    """Find the artifacts of ``run_dir``; raise a clear error when the run is unusable."""
    from ominix.config import build_config, read_yaml

    run_dir = Path(run_dir).expanduser().absolute()
    if not run_dir.is_dir():
        raise OminixError(f"run directory {run_dir} does not exist", "pass the logging.run_dir of a training run")
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise OminixError(f"{run_dir} has no config.yaml, so it is not a run directory",
                          "pass the directory `ominix train launch` wrote (logging.run_dir)")
    cfg = build_config(read_yaml(config_path), str(config_path))
    checkpoints = _checkpoints(run_dir)
    data = _data_dir(cfg, run_dir, Path(data_dir).expanduser().absolute() if data_dir else None,
                     checkpoints[-1].state.get("data_manifest_sha256"))
    eval_results = run_dir / HELD_OUT
    samples = run_dir / "samples.jsonl"
    return RunArtifacts(
        run_dir=run_dir,
        config=cfg,
        config_text=config_path.read_text(),
        checkpoints=checkpoints,
        data_dir=data,
        manifest=read_json(data / "manifest.json") if data else None,
        export_dir=_export(run_dir, checkpoints[-1]),
        eval_results=eval_results if eval_results.is_file() else None,
        samples=samples if samples.is_file() and samples.stat().st_size else None,
        metrics=_metrics(run_dir / "metrics.jsonl"),
    )
