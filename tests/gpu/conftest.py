"""GPU tests run on H200 hosts whose NVLink multicast (NVLS) paths fail in NCCL/NVSHMEM. OminiX
leaves these switches to the user's environment (``launch.env``), so the GPU tests set them, for
each test and only where the environment does not set them already; children inherit them."""

from __future__ import annotations

import os

import pytest

GPU_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


@pytest.fixture(autouse=True)
def _no_multicast(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in GPU_ENV.items():
        if key not in os.environ:
            monkeypatch.setenv(key, value)
