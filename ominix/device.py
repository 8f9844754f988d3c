"""Which device and dtype a model runs on when the user says ``auto`` (infer and eval)."""

from __future__ import annotations

from ominix.errors import OminixError


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(device)
    except RuntimeError as exc:
        raise OminixError(f"--device {device!r} is not a device", "use auto, cpu, cuda or cuda:N") from exc
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise OminixError(f"--device {device} but no CUDA device is visible", "use --device cpu")
    return device


def pick_dtype(dtype: str, device: str) -> str:
    if dtype == "auto":
        return "bf16" if device.startswith("cuda") else "fp32"
    return dtype
