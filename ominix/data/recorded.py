"""Is this prepared directory the data a run recorded, and does this tokenizer belong to a model?

A run records its data twice: by path (``data.path`` in RUN_DIR/config.yaml, written absolute by
the launch) and by identity (``data_manifest_sha256`` in every checkpoint's state.json and in an
export's state). The manifest lists the sha256 of every shard and of the tokenizer file, so a
directory whose manifest has the recorded sha256 holds the run's data and tokenizer; a path alone
proves nothing (``data/tiny`` means another directory in another working directory). Every stage
that reads what another stage produced asks this module before using it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ominix.data.store import MANIFEST, manifest_sha256
from ominix.errors import OminixError
from ominix.hashing import sha256_file

if TYPE_CHECKING:
    from ominix.config import OminixConfig


def recorded_paths(cfg: OminixConfig) -> OminixConfig:
    """``cfg`` with ``data.path`` (and a local ``data.tokenizer``) made absolute, against the directory
    the workers start in (``launch.workdir``, else this one): what a launch writes into
    RUN_DIR/config.yaml, so the stages after training find the data the run read from anywhere."""
    data = cfg.data
    base = Path(cfg.launch.workdir or ".").absolute()  # where the workers start, on every node
    update: dict[str, str] = {}
    if data.path:
        update["path"] = str(base / Path(data.path).expanduser())
    if data.tokenizer and (base / Path(data.tokenizer).expanduser()).exists():  # not a Hub id
        update["tokenizer"] = str(base / Path(data.tokenizer).expanduser())
    return cfg.model_copy(update={"data": data.model_copy(update=update)}) if update else cfg


def _candidates(recorded: str, run_dir: Path) -> list[Path]:
    path = Path(recorded).expanduser()
    if path.is_absolute():
        return [path]
    # a run launched before the launch wrote data.path absolute: the directory it was launched from is
    # unknown, so the current one and the run directory's parent are tried and the manifest decides
    return [Path.cwd() / path, run_dir.parent / path]


def _identity(data: Path) -> str | None:
    return manifest_sha256(data) if (data / MANIFEST).is_file() else None


def data_mismatch(data: Path, recorded_sha: str | None) -> str | None:
    """Why ``data`` is not the prepared directory ``recorded_sha`` identifies, or None when it is
    (or when nothing was recorded: a state written before runs recorded their data)."""
    if recorded_sha is None:
        return None
    found = _identity(data)
    if found == recorded_sha:
        return None
    have = f"manifest sha256 {found[:12]}" if found else f"no {MANIFEST}"
    return f"{have}, the run recorded {recorded_sha[:12]}"


def check_recorded(data: Path, recorded_sha: str | None, run: Path,
                   hint: str = "pass --data the prepared directory the run trained on") -> None:
    """Refuse ``data`` when its manifest is not the one the run at ``run`` trained on."""
    if why := data_mismatch(data, recorded_sha):
        raise OminixError(f"{data} is not the data {run} trained on ({why})", hint)


def run_data(recorded: str | None, run_dir: Path, recorded_sha: str | None,
             holding: str = MANIFEST) -> Path | None:
    """The run's prepared directory (absolute), found from the recorded ``data.path`` as a directory
    holding ``holding`` and checked against ``recorded_sha``; None when no candidate holds it."""
    candidates = _candidates(recorded, run_dir) if recorded else []
    found = [c.absolute() for c in candidates if (c / holding).exists()]
    for candidate in found:
        if recorded_sha is None or _identity(candidate) == recorded_sha:
            return candidate
    if found:
        check_recorded(found[0], recorded_sha, run_dir,
                       f"restore the run's prepared data at {recorded} as it was (or pass --data, where the "
                       "command takes it)")
    return None


def _vocabulary(tokenizer: Path) -> dict[str, int] | None:
    file = tokenizer if tokenizer.is_file() else tokenizer / "tokenizer.json"
    if not file.is_file():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(file)).get_vocab(with_added_tokens=True)


def check_same_tokenizer(data: Path, manifest: dict[str, Any], model_tokenizer: Path | None,
                         model: str) -> None:
    """Refuse data prepared with another tokenizer than the model's (``model_tokenizer``, a directory
    or a tokenizer.json): the same file, or (an export re-serialises it) the same vocabulary."""
    data_file = data / manifest["tokenizer"]["file"]
    if model_tokenizer is None or not model_tokenizer.exists() or not data_file.is_file():
        return
    model_file = model_tokenizer if model_tokenizer.is_file() else model_tokenizer / "tokenizer.json"
    if model_file.is_file() and sha256_file(model_file) == sha256_file(data_file):
        return
    theirs, ours = _vocabulary(model_tokenizer), _vocabulary(data_file)
    if theirs is not None and theirs != ours:
        ours = ours or {}
        differ = (f"{len(ours):,} tokens each, under other ids" if len(ours) == len(theirs) else
                  f"{len(ours):,} tokens, the model's tokenizer has {len(theirs):,}")
        raise OminixError(
            f"the data in {data} was prepared with another tokenizer than {model}'s ({differ})",
            "evaluate on data prepared with the model's tokenizer (`ominix data prepare --tokenizer "
            f"{model_tokenizer}`)",
        )
