"""``ominix release push``: upload a release bundle to a Hugging Face Hub model repository.

The files uploaded are those the bundle's SHA256SUMS lists (and SHA256SUMS itself), each hashed
against it before anything is uploaded (also by ``--dry-run``), so the Hub copy verifies with
``sha256sum -c SHA256SUMS``; a bundle without one is walked. The model card of the
bundle's final model (``model/final/README.md``, Hub front matter) becomes the repository's README.md
unless the bundle has its own. The token comes from HF_TOKEN or ``huggingface-cli login`` and never
appears in a message: the Hub's error texts are scrubbed of it too.

With ``--checkpoint-branches`` each intermediate checkpoint of the bundle's checkpoint table goes to
a branch of its own (``step-00001000``, the Pythia and OLMo convention) holding that checkpoint's
files at the top, so ``from_pretrained(REPO, revision="step-00001000")`` loads it; the main branch
gets the final model's files at its top beside the bundle. A branch starts from the repository's
first commit, so it holds its checkpoint alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ominix.atomic import MARKER
from ominix.checkpoint import files_under
from ominix.errors import OminixError
from ominix.hubref import BUNDLE_MODEL, classify, valid_repo_id
from ominix.release import checkpoints
from ominix.release.bundle_files import MOF_FILE, SUMS, Progress, bundle_mof_file, read_sums, verify_bundle

CARD = "README.md"
MODEL_CARDS = (f"{BUNDLE_MODEL}/README.md", "model/README.md")  # the bundle's model dir, newest layout first
LOGIN_HINT = "run `huggingface-cli login` (a token with write access), or set HF_TOKEN"


@dataclass
class PushPlan:
    """What a push uploads: ``files`` maps the path in the repo to the local file."""

    bundle: Path
    repo_id: str
    revision: str
    private: bool
    files: dict[str, Path] = field(default_factory=dict)
    card_from: str | None = None  # the bundle file uploaded as the repo's README.md
    branches: dict[str, dict[str, Path]] = field(default_factory=dict)  # checkpoint branch -> its files

    @property
    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files.values())


def _listed(bundle: Path) -> list[str]:
    if not (bundle / SUMS).is_file():
        return [str(p.relative_to(bundle).as_posix()) for p in files_under(bundle) if p.name != MARKER]
    listed, malformed = read_sums(bundle)
    if malformed:
        raise OminixError(f"{bundle / malformed[0]}", "write the bundle again with `ominix mof report`")
    return [*listed, SUMS]


def _under(files: dict[str, Path], folder: str) -> dict[str, Path]:
    """The files of ``files`` inside ``folder``, by their path relative to it (its marker left out)."""
    prefix = f"{folder}/"
    return {rel[len(prefix):]: path for rel, path in files.items()
            if rel.startswith(prefix) and rel[len(prefix):] != MARKER}


def _checkpoint_branches(result: PushPlan) -> None:
    for row in checkpoints.read_table(result.bundle):
        files = _under(result.files, row["path"])
        if not files:
            raise OminixError(f"{result.bundle} lists checkpoint {row['path']} but its {SUMS} has no file of it",
                              f"run `ominix mof check {result.bundle}`, or write the bundle again")
        if row["path"] == BUNDLE_MODEL:
            result.files = {**result.files, **{rel: p for rel, p in files.items() if rel not in result.files}}
        else:
            result.branches[checkpoints.branch(row["step"])] = files


def _check_sums(bundle: Path, progress: Progress | None) -> None:
    """Refuse a bundle whose files no longer hash to its SHA256SUMS: the Hub copy would not verify."""
    changed = verify_bundle(bundle, progress=progress).changed
    if changed:
        rel, why = changed[0]
        raise OminixError(f"{bundle / rel}: {why}, so the bundle's {SUMS} no longer holds "
                          f"({len(changed)} file(s) in all)",
                          f"run `ominix mof check {bundle}`, then write the bundle again (`ominix mof report`)")


def plan(bundle: str | Path, repo_id: str, revision: str | None = None, private: bool = False,
         checkpoint_branches: bool = False, progress: Progress | None = None) -> PushPlan:
    """Check ``bundle`` (it is a bundle, every file its SHA256SUMS lists is present and hashes to
    its sum) and list the upload; ``checkpoint_branches`` adds a branch per intermediate checkpoint
    and the final model's files at the top of ``revision``; ``progress`` hears of the hashing."""
    bundle = Path(bundle).expanduser()
    if not valid_repo_id(repo_id) or "/" not in repo_id:
        raise OminixError(f"--repo-id {repo_id!r} is not a Hub model id",
                          "give ORG/NAME (letters, digits, '-', '_', '.'), e.g. --repo-id my-org/tiny-llama")
    if not bundle.is_dir() or bundle_mof_file(bundle) is None:
        what = "does not exist" if not bundle.exists() else f"is not a release bundle (no {MOF_FILE})"
        raise OminixError(f"{bundle} {what}", "pass the directory `ominix mof report` wrote")
    rels = _listed(bundle)
    missing = [rel for rel in rels if not (bundle / rel).is_file()]
    if missing:
        raise OminixError(f"{bundle} lacks {len(missing)} file(s) its {SUMS} lists, first {missing[0]}",
                          f"run `ominix mof check {bundle}`, or write the bundle again")
    if (bundle / SUMS).is_file():
        _check_sums(bundle, progress)
    result = PushPlan(bundle, repo_id, revision or "main", private, {rel: bundle / rel for rel in rels})
    if CARD not in result.files:
        result.card_from = next((c for c in MODEL_CARDS if c in result.files), None)
        if result.card_from:
            result.files[CARD] = bundle / result.card_from
    if checkpoint_branches:
        _checkpoint_branches(result)
        if result.revision in result.branches:
            raise OminixError(f"--revision {result.revision} is also the branch of a checkpoint",
                              "push the final model to another branch, e.g. --revision main")
    return result


def get_token() -> str:
    """The user's Hub token (HF_TOKEN, else the saved login); refuses with the login hint."""
    from huggingface_hub import get_token as hub_token

    token = hub_token()
    if not token:
        raise OminixError("no Hugging Face token: set HF_TOKEN or log in", LOGIN_HINT)
    return token


def _commit(api, repo_id: str, files: dict[str, Path], revision: str, message: str) -> str:
    from huggingface_hub import CommitOperationAdd

    ops = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(path)) for rel, path in sorted(files.items())]
    return api.create_commit(repo_id, ops, commit_message=message, revision=revision).commit_url


def push(p: PushPlan) -> dict[str, str]:
    """Create the repository (kept if it exists) and the branches, upload ``p.files`` to
    ``p.revision`` and each checkpoint branch's files to it, one commit each; returns each
    branch's commit URL."""
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        raise OminixError(f"cannot push {p.repo_id}: HF_HUB_OFFLINE is set",
                          "unset HF_HUB_OFFLINE on a machine with network (--dry-run lists the upload offline)")
    token = get_token()
    api = HfApi(token=token)
    try:
        api.create_repo(p.repo_id, private=p.private, exist_ok=True, repo_type="model")
        first = api.list_repo_commits(p.repo_id)[-1].commit_id if p.branches else None
        if p.revision != "main":
            api.create_branch(p.repo_id, branch=p.revision, exist_ok=True)
        urls = {}
        for name, files in p.branches.items():
            api.create_branch(p.repo_id, branch=name, revision=first, exist_ok=True)
            urls[name] = _commit(api, p.repo_id, files, name, f"OminiX checkpoint {name} of {p.bundle.name}")
        urls[p.revision] = _commit(api, p.repo_id, p.files, p.revision, f"OminiX release bundle {p.bundle.name}")
    except Exception as exc:  # noqa: BLE001 - requests, huggingface_hub and OS errors: one line, no token
        raise _push_error(exc, p, token) from exc
    return urls


def _push_error(exc: Exception, p: PushPlan, token: str) -> OminixError:
    from huggingface_hub import constants

    where = f"cannot push to {p.repo_id} ({constants.ENDPOINT})"
    failure = classify(exc)
    kind = failure.kind if failure else None
    if kind == "unreachable":
        return OminixError(f"{where}: the Hub cannot be reached ({failure.detail})",
                           "check the network, proxy and HF_ENDPOINT; then push again (the upload is one commit)")
    if kind == "token":
        return OminixError(f"{where}: the Hub refused the token (HTTP 401)", LOGIN_HINT)
    if kind == "forbidden":
        return OminixError(f"{where}: the token may not write to {p.repo_id.split('/')[0]} (HTTP 403)",
                           "use a token with write access to that user or organization")
    if failure is not None:
        text = f"{where}: the Hub answered HTTP {failure.status}" + (f": {failure.detail}" if failure.detail else "")
        return OminixError(text.replace(token, "***"), "check --repo-id and --revision, then push again")
    return OminixError(f"{where}: {type(exc).__name__}: {exc}".replace(token, "***"),
                       "run with --debug for the traceback")
