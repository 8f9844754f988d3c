"""How the run trained, from its own records, for the release's model metadata and model card:
throughput and MFU as measured, launches, restarts and the steps redone after them, wall time,
device-hours and the devices of every launch.

The source is metrics.jsonl: rank 0 writes a ``launch`` record at each start (world size, the
``host: device`` of every rank, the setup time before it, the steps a resume cut from the ledger)
and stamps every record with its wall-clock ``time``. A launch's wall time runs from the start of
its worker's setup to its last record. What the run did not record is None, shown as "n/a", never
a guess: a run of an OminiX that wrote no launch records has no wall time, restarts or devices.
"""

from __future__ import annotations

from typing import Any


def _launches(metrics: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The records of each launch, its ``launch`` record first."""
    launches: list[list[dict[str, Any]]] = []
    for row in metrics:
        if row.get("kind") == "launch":
            launches.append([row])
        elif launches:
            launches[-1].append(row)
    return launches


def _step_seconds(metrics: list[dict[str, Any]]) -> float:
    """Time of the steps alone (each logged window's step time x its steps), setup, evaluations
    and checkpoint saves left out: what a run without launch records can still say."""
    seconds, previous = 0.0, 0
    for row in metrics:
        if row.get("kind") == "launch":
            previous = row["step"]
        elif row.get("kind") == "train" and "step_time_s" in row:
            seconds += row["step_time_s"] * max(row["step"] - previous, 0)
            previous = row["step"]
    return seconds


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def training_record(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's provenance from its metrics.jsonl records (see the module docstring)."""
    train = [m for m in metrics if m.get("kind") == "train"]
    launches = _launches(metrics)
    timed = launches and all("time" in rows[-1] and "setup_s" in rows[0] for rows in launches)
    spans = [rows[-1]["time"] - rows[0]["time"] + rows[0]["setup_s"] for rows in launches] if timed else []
    devices: dict[str, int] = {}
    for rows in launches:
        for name, count in rows[0]["devices"].items():
            devices[name] = max(devices.get(name, 0), count)
    device_hours = sum(s * rows[0]["world_size"] for s, rows in zip(spans, launches)) / 3600 if timed else None
    on_gpus = bool(devices) and not any(name.endswith(": cpu") for name in devices)
    mfu = [m["mfu"] for m in train if m.get("mfu") is not None]
    return {
        "launches": len(launches) or None,
        "restarts": len(launches) - 1 if launches else None,
        "steps_redone_after_restarts": sum(rows[0]["steps_redone"] for rows in launches) if launches else None,
        "world_sizes": [rows[0]["world_size"] for rows in launches] or None,
        "devices": devices or None,  # "host: device name": processes (the most of any launch)
        "wall_time_s": sum(spans) if timed else None,
        "device_hours": device_hours,
        "gpu_hours": device_hours if on_gpus else None,
        "measured_step_time_s": _step_seconds(metrics) if train else None,
        "tokens_per_s": _mean([m["tokens_per_s"] for m in train if "tokens_per_s" in m]),
        "tokens_per_s_per_device": _mean([m["tokens_per_s_per_device"] for m in train
                                          if "tokens_per_s_per_device" in m]),
        "mfu": _mean(mfu),
        "peak_memory_gib": max((m["memory_gib"] for m in train if "memory_gib" in m), default=None),
    }


def _n(value: Any, fmt: str = "{:,.1f}") -> str:
    return "n/a" if value is None else fmt.format(value)


def card_lines(record: dict[str, Any]) -> list[str]:
    """The model card's compute section."""
    devices = ", ".join(f"{name} x {count}" for name, count in (record["devices"] or {}).items()) or "n/a"
    wall = record["wall_time_s"]
    mfu = record["mfu"]
    return [
        f"Devices: {devices}. Launches: {_n(record['launches'], '{}')} (restarts from a checkpoint: "
        f"{_n(record['restarts'], '{}')}, steps trained again after them: "
        f"{_n(record['steps_redone_after_restarts'], '{}')}).",
        "",
        f"Wall time: {_n(wall, '{:,.0f} s')}{'' if wall is None else f' ({wall / 3600:.3f} h)'}; "
        f"device-hours {_n(record['device_hours'], '{:.4f}')}; GPU-hours "
        f"{_n(record['gpu_hours'], '{:.4f}')}"
        f"{' (trained on CPU)' if record['devices'] and record['gpu_hours'] is None else ''}; "
        f"step time alone {_n(record['measured_step_time_s'], '{:,.1f} s')}.",
        "",
        f"Measured throughput (mean over the logged windows): {_n(record['tokens_per_s'], '{:,.0f}')} tokens/s, "
        f"{_n(record['tokens_per_s_per_device'], '{:,.0f}')} per device; MFU "
        f"{'n/a' if mfu is None else f'{100 * mfu:.1f} %'}; peak memory "
        f"{_n(record['peak_memory_gib'], '{:.2f} GiB')} per process.",
    ]
