"""How to install an optional extra (pyproject's ``[project.optional-dependencies]``) without
replacing the stack that is there: ``pip install 'ominix[eval]'`` re-resolves every dependency of
OminiX, ColossalAI's pins included, and may swap the installed torch for another build (a CPU or a
lean install became a 6.7 GB CUDA one). The route a hint names installs the extra's own packages
with the installed torch and transformers given as requirements pip finds satisfied, so pip keeps
them or refuses, and never replaces them. ColossalAI is left unnamed: named, pip would install the
dependencies the lean install leaves out on purpose. docs/INSTALL.md explains it.
"""

from __future__ import annotations

import re
import shlex
from importlib import metadata

KEPT = ("torch", "transformers")  # what an extra's install may not replace (OminiX pins transformers)
_EXTRA_MARKER = re.compile(r"""^(?P<req>[^;]+);\s*extra\s*==\s*["'](?P<extra>[^"']+)["']\s*$""")


def extra_requirements(extra: str) -> list[str]:
    """The packages of ``extra`` as the installed OminiX declares them (empty when OminiX is run
    from a source tree that was never installed)."""
    try:
        declared = metadata.requires("ominix") or []
    except metadata.PackageNotFoundError:
        return []
    found = (_EXTRA_MARKER.match(r) for r in declared)
    return [m["req"].strip() for m in found if m and m["extra"] == extra]


def _installed_pins() -> list[str]:
    pins = []
    for name in KEPT:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return pins


def install_hint(extra: str) -> str:
    """The command that installs ``extra`` and keeps the installed torch and transformers."""
    packages = extra_requirements(extra) or [f"ominix[{extra}]"]
    command = shlex.join(["pip", "install", *packages, *_installed_pins()])
    return f"{command} (the installed torch stays: docs/INSTALL.md)"
