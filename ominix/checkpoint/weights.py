"""How weights are read and written: the safetensors of a checkpoint's ``model/`` or of a Hugging
Face export, following ``model.safetensors.index.json`` when there is one.

Reading and writing go one tensor at a time, so a 7B (or 70B) model never sits in host memory
whole: :func:`weight_infos` reads only the headers, :func:`read_tensor` one tensor (each through
its own ``safe_open``, whose memory map is closed again at once: a map kept open for the whole
file would keep every page read so far resident), and :func:`write_sharded` writes shards the
Hugging Face way (``model.safetensors`` when one shard holds everything, else
``model-0000i-of-0000n.safetensors`` and the index), each tensor's bytes as soon as it is made.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ominix.checkpoint.layout import MODEL
from ominix.errors import OminixError

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
# safetensors' names of the dtypes a model's weights come in
_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor is and what it is, from its file's header."""

    file: Path
    dtype: str  # safetensors' name: F32, BF16, ...
    shape: tuple[int, ...]


def has_weights(path: Path) -> bool:
    """Whether ``path`` holds Hugging Face weights (one file or an index)."""
    return (path / SINGLE).is_file() or (path / INDEX).is_file()


def weights_dir(path: Path) -> Path:
    """The directory of the weight files: a checkpoint's ``model/``, else ``path`` itself (an
    export)."""
    return path / MODEL if (path / MODEL).is_dir() else path


def weight_files(path: Path) -> list[Path]:
    """The weight files of ``path`` (checkpoint or weights directory): those the index names, else
    ``model.safetensors``, else every ``*.safetensors``."""
    weights = weights_dir(path)
    index = weights / INDEX
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [weights / name for name in names]
    if (weights / SINGLE).is_file():
        return [weights / SINGLE]
    return sorted(weights.glob("*.safetensors"))


def weight_infos(path: Path) -> dict[str, TensorInfo]:
    """Name -> file, dtype and shape of every tensor of a checkpoint or weights directory (headers
    only: no tensor is read)."""
    from safetensors import SafetensorError, safe_open

    files = weight_files(Path(path))
    if not files:
        raise OminixError(f"{weights_dir(Path(path))} holds no .safetensors files",
                          "give a complete checkpoint directory or export")
    infos: dict[str, TensorInfo] = {}
    for file in files:
        if not file.is_file():
            raise OminixError(f"{file} is missing", "the checkpoint or export is incomplete; write it again")
        try:
            with safe_open(file, "pt") as handle:
                for name in handle.keys():
                    view = handle.get_slice(name)
                    infos[name] = TensorInfo(file, view.get_dtype(), tuple(view.get_shape()))
        except SafetensorError as exc:  # a damaged header: the library's message says where
            raise OminixError(f"{file} is not a readable safetensors file: {exc}",
                              "the checkpoint or export is damaged; write it again") from exc
    return infos


def read_tensor(info: TensorInfo, name: str) -> Any:
    """One tensor, on the CPU, read through a memory map that is closed before returning."""
    from safetensors import safe_open

    with safe_open(info.file, "pt") as handle:
        return handle.get_tensor(name)


def iter_weights(path: Path, names: Iterable[str] | None = None) -> Iterator[tuple[str, Any]]:
    """``(name, tensor)`` one at a time, in ``names`` order (default: file by file)."""
    infos = weight_infos(path)
    for name in infos if names is None else names:
        yield name, read_tensor(infos[name], name)


def read_weights(path: Path) -> dict[str, Any]:
    """All tensors of a checkpoint or a (sharded) safetensors directory, on the CPU, HF names.
    Holds the whole model: for large models iterate with :func:`iter_weights`."""
    return dict(iter_weights(path))


@dataclass(frozen=True)
class TensorSpec:
    """A tensor about to be written: its name, torch dtype and shape."""

    name: str
    dtype: Any
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        count = 1
        for n in self.shape:
            count *= n
        return count * self.dtype.itemsize


def plan_shards(specs: list[TensorSpec], max_shard_size: int) -> list[list[TensorSpec]]:
    """Split ``specs`` in order into shards of at most ``max_shard_size`` bytes, as transformers
    does: a tensor that would overflow the current shard starts the next; one bigger than the
    limit goes alone."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


def write_sharded(specs: list[TensorSpec], tensor: Callable[[str], Any], out: Path, max_shard_size: int,
                  progress: Callable[[str, int, int], None] | None = None) -> dict[str, str]:
    """Write the tensors ``specs`` names (each made by ``tensor(name)`` when its turn comes, in the
    spec's dtype and shape) into ``out`` as Hugging Face shards; returns each file's name and
    sha256 (hashed as written, not read back). ``progress(name, done_bytes, total_bytes)`` is
    called after each tensor."""
    shards = plan_shards(specs, max_shard_size)
    total = sum(s.nbytes for s in specs)
    if len(shards) == 1:
        names = [SINGLE]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        index = {"metadata": {"total_size": total},
                 "weight_map": {s.name: name for name, shard in zip(names, shards) for s in shard}}
        (out / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    done, digests = 0, {}
    for name, shard in zip(names, shards):
        digest = hashlib.sha256()
        with open(out / name, "wb") as fh:
            _write(fh, digest, _header(shard))
            for spec in shard:
                done += _write(fh, digest, _tensor_bytes(spec, tensor(spec.name)))
                if progress is not None:
                    progress(spec.name, done, total)
        digests[name] = digest.hexdigest()
    return digests


def _write(fh: Any, digest: Any, data: Any) -> int:
    """Write ``data`` (bytes or a byte array) to ``fh`` and feed it to ``digest``; its length."""
    view = memoryview(data)
    fh.write(view)
    digest.update(view)
    return view.nbytes


def _header(shard: list[TensorSpec]) -> bytes:
    """The safetensors header of ``shard``: little-endian u64 length, then JSON padded to 8 bytes."""
    entries: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for spec in shard:
        dtype = _DTYPES[str(spec.dtype).removeprefix("torch.")]
        entries[spec.name] = {"dtype": dtype, "shape": list(spec.shape), "data_offsets": [offset, offset + spec.nbytes]}
        offset += spec.nbytes
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def _tensor_bytes(spec: TensorSpec, value: Any) -> Any:
    """The raw bytes of ``value`` (which must match ``spec``), as a numpy uint8 array."""
    import torch

    if value.dtype != spec.dtype or tuple(value.shape) != spec.shape:
        raise OminixError(f"{spec.name} came as {value.dtype} {list(value.shape)}, expected "
                          f"{spec.dtype} {list(spec.shape)}", "report this as a bug")
    return value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
