"""Hugging Face Hub datasets: fetch only the files a split needs, and say how much before fetching.

``load_dataset(id, split="train[:10%]")`` downloads the whole train split (~895 GB for SlimPajama)
before slicing. Here the repository's file list (with sizes) is read first; a percentage term takes
that prefix of the split's files in natural order (SlimPajama's ``train[:10%]`` is exactly
``train/chunk1``, its chunks being equal, shuffled tenths), and an absolute record range fetches files
one by one until the range is read. Files go to the Hugging Face cache (``hf_hub_download``), so a
second run, or every node sharing the cache, reads them from disk; ``streaming`` reads them through
``datasets`` streaming instead, storing nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ominix import hubref
from ominix.data import readers
from ominix.data.source_part import SPLIT_DIRS, SourcePart, natural_key, sliced
from ominix.data.splits import SplitPart
from ominix.errors import OminixError


def list_files(repo: str, revision: str | None = None) -> tuple[dict[str, int], str | None]:
    """``{path: bytes}`` of the supported data files of a hub dataset, and the commit listed."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        info = api.dataset_info(repo, revision=revision)
        entries = api.list_repo_tree(repo, repo_type="dataset", recursive=True, revision=info.sha)
        files = {e.path: e.size for e in entries if getattr(e, "size", None) is not None and readers.kind(e.path)}
    except Exception as exc:  # noqa: BLE001 - classify() names the Hub's failures; anything else is re-raised
        failure = hubref.classify(exc)
        if failure is None:
            raise
        raise _list_error(failure, repo) from exc
    return files, info.sha


def _list_error(failure: hubref.HubFailure, repo: str) -> OminixError:
    token = "use a token that may read it: set HF_TOKEN, or `huggingface-cli login`"
    reason, hint = {
        "unreachable": (f"cannot reach the Hugging Face Hub to list the files of {repo} ({failure.detail})",
                        "check the network (HF_ENDPOINT, proxy, HF_HUB_OFFLINE), or download the files once and "
                        "pass the local directory, e.g. `ominix data prepare ./SlimPajama-627B --split train[:1%]`"),
        "gated": (f"{repo} is gated on the Hub", "accept its terms on the website, then set HF_TOKEN "
                                                   "(or `huggingface-cli login`)"),
        "missing": (f"no dataset {repo!r} on the Hugging Face Hub", "check the id (owner/name)"),
        "token": (f"the Hub refused the token listing {repo} (HTTP 401)", token),
        "forbidden": (f"the token may not read {repo} (HTTP 403)", token),
    }.get(failure.kind, (f"the Hub refused to list {repo}: HTTP {failure.status or '?'} {failure.detail}".rstrip(),
                         "try again later or check HF_TOKEN"))
    return OminixError(reason, hint)


def _split_of(path: str) -> str:
    head = path.split("/", 1)[0]
    if head in SPLIT_DIRS:
        return head
    name = path.rsplit("/", 1)[-1].lower()
    return next((s for s in SPLIT_DIRS if s in name), "train")


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return ""


class HubPart(SourcePart):
    """A SourcePart whose files live on the Hub; read after ``hf_hub_download`` or through streaming."""

    def _local(self, path: str) -> str:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(self.source, path, repo_type="dataset", revision=self.extra["revision"])

    def _stream(self, path: str, text_field: str) -> Iterator[tuple[str, str | None]]:
        from datasets import load_dataset

        ds = load_dataset(self.source, data_files=[path], split="train", streaming=True,
                          revision=self.extra["revision"])
        for record in ds:
            text = readers.text_of(record, text_field, f"{self.source}/{path}")
            yield text or "", readers.set_name_of(record, f"{self.source}/{path}")

    def records(self, text_field: str, on_file: Any = None) -> Iterator[tuple[str, str | None]]:
        if self.extra["streaming"]:
            read = self._reporting(lambda f: self._stream(f, text_field), on_file)
        else:
            read = self._reporting(lambda f: readers.read(self._local(f), text_field), on_file)
        return sliced(self.files, self.split, read, None)


def _cached(repo: str, path: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, path, revision=revision, repo_type="dataset"), str)


def plan(repo: str, terms: list[SplitPart], *, streaming: bool = False,
         log: Any = None) -> list[SourcePart]:
    """One HubPart per split term, after listing the repository; reports the download size up front."""
    files, revision = list_files(repo)
    splits: dict[str, list[str]] = {}
    for path in sorted(files, key=natural_key):
        splits.setdefault(_split_of(path), []).append(path)
    parts: list[SourcePart] = []
    for term in terms:
        if term.split not in splits:
            raise OminixError(f"{repo} has no split {term.split!r} (it has: {', '.join(splits)})",
                              "choose one with --split")
        chosen, record_term = splits[term.split], term
        if term.percent:
            start, stop = term.bounds(len(chosen))
            chosen, record_term = chosen[start:stop], SplitPart(term.split)
        elif any(v is not None and v < 0 for v in (term.start, term.stop)):
            raise OminixError(
                f"split {term}: negative record indices need the size of the whole hub split",
                "use percentages or non-negative indices for hub datasets",
            )
        sizes = [files[p] for p in chosen]
        total = sum(sizes)
        if log is not None:
            cached = 0 if streaming else sum(s for p, s in zip(chosen, sizes) if _cached(repo, p, revision))
            verb = "will stream" if streaming else "will download"
            bound = "up to " if not record_term.whole else ""
            log(f"{repo} {term}: {len(chosen)} of {len(splits[term.split])} files; {verb} {bound}"
                f"{_human(total - cached)}" + (f" ({_human(cached)} already cached)" if cached else ""))
        parts.append(HubPart(repo, "hub", repo, record_term, chosen, sizes, None,
                             {"revision": revision, "streaming": streaming, "requested_split": str(term)}))
    return parts
