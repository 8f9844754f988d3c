"""``ominix eval``: perplexity of a model on a prepared split, written as ``eval_results.json``.

The file is the MOF "evaluation results" component: which model (path, step, checksum), which data
(path, split, manifest sha256), the numbers overall and per source set, and the command.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ominix.atomic import check_replaceable, file_mark, write_text
from ominix.checkpoint import model_checksum
from ominix.device import pick_device, pick_dtype
from ominix.errors import OminixError
from ominix.eval.results import HELD_OUT
from ominix.infer.load import ModelSource, load_model, load_tokenizer, resolve


def default_data(source: ModelSource) -> Path:
    """The data the model's run trained on, found where the run recorded it and checked to be it."""
    from ominix.data.recorded import run_data

    found, recorded = None, source.state.get("data_manifest_sha256")
    if source.run_config is not None and source.run_dir is not None:
        found = run_data(source.run_config.data.path, source.run_dir, recorded)
    if found is None:
        raise OminixError(f"no prepared data known for {source.path}", "pass --data PREPARED_DIR")
    return found


def default_out(source: ModelSource) -> Path:
    if source.run_dir is not None:
        return source.run_dir / HELD_OUT
    return Path("eval_results.json")


def run_eval(model_path: str | Path, data: str | Path | None = None, split: str = "validation",
             out: Path | None = None, batch_size: int = 8, max_blocks: int | None = None,
             device: str = "auto", dtype: str = "auto", command: str | None = None,
             tasks: list[str] | None = None,
             progress: Callable[[str, int, int], None] | None = None, force: bool = False) -> dict[str, Any]:
    """Evaluate ``model_path`` on ``data``/``split`` (and lm-eval ``tasks``); write and return results.

    The blocks are those the trainer's evaluation reads with ``schedule.eval_blocks = max_blocks``
    (:func:`ominix.data.loader.held_out_ids`), whatever the batch size, so the loss is the run's
    ``val_loss`` for the same weights. ``progress("eval", blocks_done, blocks)`` after each batch.
    ``out`` is replaced when an earlier ``ominix eval`` wrote it, another regular file only with
    ``force`` (``ominix.atomic.check_replaceable``, checked before anything is loaded).
    """
    from ominix.data.recorded import check_same_tokenizer
    from ominix.data.store import PackedDataset, manifest_sha256
    from ominix.perplexity import evaluate

    for flag, value in (("--batch-size", batch_size), ("--max-blocks", max_blocks)):
        if value is not None and value < 1:
            raise OminixError(f"{flag} {value} must be at least 1", f"e.g. {flag} 8")
    source = resolve(model_path)
    data = Path(data) if data is not None else default_data(source)
    out = Path(out) if out is not None else default_out(source)
    check_replaceable(out, "eval", force, inputs=[source.path, data])
    dataset = PackedDataset(data, split)
    check_same_tokenizer(data, dataset.manifest, source.tokenizer, str(source.path))
    if dataset.vocab_size > source.model.vocab_size:
        raise OminixError(f"the data in {data} has token ids up to {dataset.vocab_size - 1}, the "
                          f"model's vocabulary has {source.model.vocab_size}",
                          "evaluate on data prepared with the model's tokenizer")
    if dataset.seq_len > source.model.max_position_embeddings:
        raise OminixError(f"the data's blocks have {dataset.seq_len} tokens, the model's context is "
                          f"{source.model.max_position_embeddings}", "evaluate on data prepared with a shorter seq_len")
    if source.framing is not None and dataset.framing != source.framing:
        raise OminixError(f"the model was trained on documents framed {source.framing}, the data in {data} "
                          f"frames them {dataset.framing}: the loss would not compare",
                          "evaluate on data prepared with this OminiX version and the model's tokenizer")
    if len(dataset) == 0:
        raise OminixError(f"{data} has no blocks in split {split!r}", "prepare more data or choose another --split")
    resolved = None
    if tasks:  # an unknown task or a missing task file stops here, before the model is loaded
        from ominix.eval.harness import resolve_tasks

        resolved = resolve_tasks(tasks)
    device = pick_device(device)
    dtype = pick_dtype(dtype, device)
    model = load_model(source, device, dtype)
    started = time.time()
    numbers = evaluate(model, dataset, batch_size=batch_size, max_blocks=max_blocks, device=device,
                       progress=None if progress is None else lambda done, total: progress("eval", done, total))
    dataset.check(wait=True)  # no results from shards that do not match their manifest
    results: dict[str, Any] = {
        **file_mark("eval"),
        "model": {"path": str(source.path), "kind": source.kind, "step": source.state.get("step"),
                  "tokens_seen": source.state.get("tokens"), "sha256": model_checksum(source.weights),
                  "framing": source.framing},
        "data": {"path": str(data), "split": split, "manifest_sha256": manifest_sha256(data),
                 "framing": dataset.framing,
                 "seq_len": dataset.seq_len, "blocks_available": len(dataset)},
        "settings": {"batch_size": batch_size, "max_blocks": max_blocks, "device": device,
                     "dtype": dtype},
        "perplexity": numbers,
        "seconds": round(time.time() - started, 3),
        "command": command,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if tasks:
        from ominix.eval.harness import run_tasks

        results["tasks"] = run_tasks(model, load_tokenizer(source), tasks, resolved=resolved)
    del model
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, json.dumps(results, indent=2) + "\n")
    results["out"] = str(out)
    return results
