"""``ominix release``: publish a release bundle (``release push`` to the Hugging Face Hub)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(help="Publish a release bundle written by `ominix mof report`.", no_args_is_help=True)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@app.command("push")
def push(
    bundle: Path = typer.Argument(..., help="Bundle directory written by `ominix mof report`."),
    repo_id: str = typer.Option(..., "--repo-id", help="Hub model repository ORG/NAME (created if missing)."),
    private: bool = typer.Option(False, "--private/--no-private",
                                 help="Create the repository private (an existing one keeps its visibility)."),
    revision: str = typer.Option(None, "--revision", help="Branch to commit to (created if missing); default main."),
    dry_run: bool = typer.Option(False, "--dry-run/--no-dry-run",
                                 help="List what would be uploaded (files, total size, repo, branch); needs no token."),
    checkpoint_branches: bool = typer.Option(
        False, "--checkpoint-branches/--no-checkpoint-branches",
        help="Also push each intermediate checkpoint to its own branch (step-00001000) and the final "
             "model's files to the top of --revision, so from_pretrained loads each branch."),
    as_json: bool = typer.Option(False, "--json/--no-json", help="Print the plan (and commit URLs) as JSON."),
) -> None:
    """Upload a release bundle to a Hugging Face Hub model repository, one commit per branch.

    Uploads every file the bundle's SHA256SUMS lists, and the final model's card as README.md;
    every file is hashed against SHA256SUMS first (also with --dry-run), a mismatch uploads nothing.
    The token comes from HF_TOKEN or `huggingface-cli login` and is never printed.

    Examples:

      ominix release push runs/tiny/release --repo-id my-org/tiny-llama --dry-run

      ominix release push runs/tiny/release --repo-id my-org/tiny-llama --checkpoint-branches --dry-run

      ominix release push runs/tiny/release --repo-id my-org/tiny-llama --private --revision v0.1
    """
    from ominix.cli.progress_view import shown_progress
    from ominix.release import push as hub

    with shown_progress(not as_json) as progress:
        p = hub.plan(bundle, repo_id, revision, private, checkpoint_branches, progress)
    sizes = {name: {rel: path.stat().st_size for rel, path in sorted(files.items())}
             for name, files in p.branches.items()}
    summary = {"repo_id": p.repo_id, "revision": p.revision, "private": p.private, "bundle": str(p.bundle),
               "files": {rel: path.stat().st_size for rel, path in sorted(p.files.items())},
               "total_bytes": p.total_bytes, "readme_from": p.card_from, "branches": sizes}
    if not as_json:
        what = "would upload" if dry_run else "uploading"
        typer.echo(f"{what} {len(p.files)} files ({_size(p.total_bytes)}) from {p.bundle} to "
                   f"{p.repo_id} (branch {p.revision}{', private' if p.private else ''})")
        if dry_run:
            for rel, size in summary["files"].items():
                note = f"  (from {p.card_from})" if rel == hub.CARD and p.card_from else ""
                typer.echo(f"  {_size(size):>10}  {rel}{note}")
        for name, files in sizes.items():
            typer.echo(f"{what} {len(files)} files ({_size(sum(files.values()))}) to branch {name}")
            if dry_run:
                for rel, size in files.items():
                    typer.echo(f"  {_size(size):>10}  {rel}")
    if not dry_run:
        urls = hub.push(p)
        summary["commit_url"] = urls.pop(p.revision)
        summary["branch_commit_urls"] = urls
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    elif not dry_run:
        typer.echo(f"pushed: {summary['commit_url']}")
        for name, url in summary["branch_commit_urls"].items():
            typer.echo(f"pushed {name}: {url}")
