"""The code behind a release: OminiX's version and git commit, its source, and the environment."""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import ominix
from ominix.release.run_record import training_record

PACKAGE_DIR = Path(ominix.__file__).parent
# The MOF code components, as parts of the OminiX package (paths relative to the package).
CODE_PARTS = {
    "Model architecture": "model.py",
    "Data preprocessing code": "data",
    "Training code": "train",
    "Inference code": "infer",
    "Evaluation code": "eval",
}


def git_info(path: Path = PACKAGE_DIR) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the checkout holding ``path``."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:  # an installed wheel, or no git on this machine
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no", "--", str(path))
    return {"commit": commit.strip(), "dirty": bool(status.strip()) if status is not None else None}


def package_versions() -> dict[str, str]:
    """``{distribution name: version}`` of every package installed in this environment."""
    versions = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            versions[name] = dist.version
    return dict(sorted(versions.items(), key=lambda kv: kv[0].lower()))


def requirements_txt(versions: dict[str, str]) -> str:
    head = (f"# Packages installed when this release was made (Python {platform.python_version()}, "
            f"{platform.platform()}).\n")
    return head + "".join(f"{name}=={version}\n" for name, version in versions.items())


def provenance(artifacts: Any, command: str | None) -> dict[str, Any]:
    """Everything needed to reproduce the run's code and environment."""
    manifest = artifacts.manifest or {}
    return {
        "ominix_version": ominix.__version__,
        "git": git_info(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "release_command": command,
        "data_preprocessing_command": manifest.get("command"),
        "data_prepared_by_ominix": manifest.get("ominix_version"),
        "run_dir": str(artifacts.run_dir),
        "data_dir": str(artifacts.data_dir) if artifacts.data_dir else None,
        "training": {
            key: artifacts.final.state.get(key)
            for key in ("step", "tokens", "world_size", "dp", "tp", "pp", "plugin", "data_manifest_sha256")
        },
        "training_run": training_record(artifacts.metrics),  # also model/metadata/training_run.json
    }


def copy_source(dest: Path) -> None:
    """Copy the OminiX package's source (no caches) to ``dest/ominix``."""
    shutil.copytree(PACKAGE_DIR, dest / "ominix",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
