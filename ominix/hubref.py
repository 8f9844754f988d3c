"""Names of tokenizers and models: a local path, or a Hugging Face Hub id resolved through its cache.

A name that exists on disk is a path. Otherwise a name in the Hub's id grammar (``NAME`` or
``ORG/NAME``, letters, digits, ``-``, ``_``, ``.``; optional ``@REVISION``) is a Hub id, fetched with
``huggingface_hub.snapshot_download`` (only the files OminiX reads), which honours the cache, HF_HOME,
HF_HUB_CACHE, HF_HUB_OFFLINE, HF_ENDPOINT and the token of ``HF_TOKEN`` or ``huggingface-cli login``.
Anything else stays a path, so the caller's own "does not exist" error speaks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ominix.errors import OminixError

_PART = r"[A-Za-z0-9](?:[\w.-]*[A-Za-z0-9_])?"
_ID = re.compile(rf"^(?:{_PART}/)?{_PART}$")
_REVISION = re.compile(r"^[\w.\-/]+$")
MAX_ID = 96  # the Hub's limit on a repo id

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "added_tokens.json", "vocab.json", "merges.txt", "config.json")
# literal names: huggingface_hub matches with fnmatch, whose * crosses "/" (a "*.safetensors" would
# also fetch every intermediate checkpoint of a pushed bundle)
WEIGHT_FILES = ("model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json",
                "generation_config.json", "ominix_export.json")
BUNDLE_MODEL = "model/final"  # where a bundle pushed by `ominix release push` keeps its final model


def _and_bundle(files: tuple[str, ...]) -> tuple[str, ...]:
    return (*files, *(f"{BUNDLE_MODEL}/{name}" for name in files))


TOKENIZER_PATTERNS = _and_bundle(TOKENIZER_FILES)
MODEL_PATTERNS = _and_bundle(TOKENIZER_FILES + WEIGHT_FILES)


@dataclass(frozen=True)
class HubId:
    """A Hugging Face Hub model id, with the branch, tag or commit to fetch (None = main)."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return self.repo_id if self.revision is None else f"{self.repo_id}@{self.revision}"


def valid_repo_id(repo_id: str) -> bool:
    """``repo_id`` follows the Hub's grammar (``NAME`` or ``ORG/NAME``)."""
    return len(repo_id) <= MAX_ID and bool(_ID.match(repo_id)) and ".." not in repo_id and "--" not in repo_id


def parse(name: str | Path) -> HubId | None:
    """The Hub id ``name`` spells, or None when it is a path (it exists, or cannot be an id)."""
    text = str(name)
    if Path(text).expanduser().exists():
        return None
    repo_id, _, revision = text.partition("@")
    if not valid_repo_id(repo_id) or (revision and not _REVISION.match(revision)):
        return None
    return HubId(repo_id, revision or None)


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, the way huggingface_hub reads it."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


@dataclass(frozen=True)
class HubFailure:
    """What a failed Hub call means, whatever raised it: ``kind`` is one of "unreachable" (no network,
    proxy or TLS failure, HF_HUB_OFFLINE), "uncached" (a download offline or unreachable, not in the
    cache), "gated", "missing" (no such repo, or private), "revision", "token" (HTTP 401), "forbidden"
    (HTTP 403) or "http" (another answer). ``status`` is the HTTP status of an answer, ``detail`` the
    first line of the Hub's message (the exception's class for an unreachable Hub)."""

    kind: str
    status: int | None = None
    detail: str = ""


def classify(exc: BaseException) -> HubFailure | None:
    """The one reading of huggingface_hub's and requests' exceptions; None for anything else."""
    import requests
    from huggingface_hub.errors import (
        GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    http = isinstance(exc, HfHubHTTPError)
    status = exc.response.status_code if http and exc.response is not None else None
    detail = next(iter((exc.server_message or "").strip().splitlines()), "") if http else type(exc).__name__
    if isinstance(exc, GatedRepoError):  # a subclass of RepositoryNotFoundError: first
        return HubFailure("gated", status, detail)
    if isinstance(exc, RepositoryNotFoundError):
        return HubFailure("missing", status, detail)
    if isinstance(exc, RevisionNotFoundError):
        return HubFailure("revision", status, detail)
    if isinstance(exc, LocalEntryNotFoundError):
        return HubFailure("uncached")
    if isinstance(exc, (OfflineModeIsEnabled, requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        return HubFailure("unreachable", detail=detail)  # SSL and proxy errors are ConnectionErrors
    if http:
        return HubFailure({401: "token", 403: "forbidden"}.get(status, "http"), status, detail)
    return None


def fetch(hub_id: HubId, patterns: tuple[str, ...], what: str) -> Path:
    """The snapshot directory of ``hub_id`` holding the files matching ``patterns`` (fetched when not
    cached and online); ``what`` ("tokenizer", "model") names it in errors."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(hub_id.repo_id, revision=hub_id.revision, allow_patterns=list(patterns)))
    except Exception as exc:  # noqa: BLE001 - classify() names the Hub's failures; anything else is re-raised
        failure = classify(exc)
        if failure is None:
            raise
        raise _fetch_error(failure, hub_id, what) from exc


def _fetch_error(failure: HubFailure, hub_id: HubId, what: str) -> OminixError:
    lead = f"{hub_id} is not a local path, and as a Hugging Face Hub {what} id"
    download = f"`huggingface-cli download {hub_id.repo_id}` on a machine with network"
    if failure.kind == "uncached" and offline():
        return OminixError(f"{lead} it is not in the local cache ({_cache()}) and HF_HUB_OFFLINE is set",
                           f"fetch it with {download} (same HF_HOME), unset HF_HUB_OFFLINE, or pass a local path")
    token = "`huggingface-cli login` (or set HF_TOKEN) with a token that may read it"
    reason, hint = {
        "gated": ("it is gated: access was refused", "accept its terms on the Hub, then `huggingface-cli login`"),
        "missing": ("it does not exist (or is private)",
                    "check the spelling or the path; for a private repo `huggingface-cli login` or set HF_TOKEN"),
        "revision": (f"it has no revision {hub_id.revision!r}", "name an existing branch, tag or commit after @"),
        "uncached": (f"it is not in the local cache ({_cache()}) and the Hub ({_endpoint()}) cannot be reached",
                     f"check the network, fetch it with {download}, or pass a local path"),
        "unreachable": (f"it could not be fetched: the Hub ({_endpoint()}) cannot be reached ({failure.detail})",
                        "check the network and proxy settings, or pass a local path"),
        "token": ("it could not be fetched: the Hub answered HTTP 401", token),
        "forbidden": ("it could not be fetched: the Hub answered HTTP 403", token),
    }.get(failure.kind, (f"it could not be fetched: the Hub answered HTTP {failure.status or '?'}",
                         "try again later, or pass a local path"))
    return OminixError(f"{lead} {reason}", hint)


def model_dir(snapshot: Path) -> Path:
    """The model inside a fetched snapshot: its root, or the final model of a pushed bundle."""
    if not (snapshot / "config.json").is_file() and (snapshot / BUNDLE_MODEL / "config.json").is_file():
        return snapshot / BUNDLE_MODEL
    return snapshot


def model_path(name: str | Path) -> Path:
    """The local directory of the model ``name`` (a path, or a Hub id fetched into the cache)."""
    hub_id = parse(name)
    return Path(name) if hub_id is None else model_dir(fetch(hub_id, MODEL_PATTERNS, "model"))


def tokenizer_path(name: str | Path) -> Path:
    """The local tokenizer directory or file ``name`` (a path, or a Hub id fetched into the cache)."""
    hub_id = parse(name)
    return Path(name) if hub_id is None else model_dir(fetch(hub_id, TOKENIZER_PATTERNS, "tokenizer"))


def weights_path(name: str | Path) -> str:
    """What ``booster.load_model`` reads for ``model.init_from``: a path as given; for a Hub id the
    snapshot's safetensors index, else its single model.safetensors."""
    hub_id = parse(name)
    if hub_id is None:
        return str(name)
    directory = model_dir(fetch(hub_id, MODEL_PATTERNS, "model"))
    index = directory / "model.safetensors.index.json"
    return str(index if index.is_file() else directory / "model.safetensors")


def _cache() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def origin(name: str | Path, local: Path) -> str:
    """How a manifest records where ``name`` came from: the path, or ``ORG/NAME@COMMIT`` for a Hub id
    (the commit is the name of the snapshot directory it was read from)."""
    hub_id = parse(name)
    if hub_id is None or "snapshots" not in local.parts:
        return str(local)
    return f"{hub_id.repo_id}@{local.parts[local.parts.index('snapshots') + 1]}"
