"""The commented release.yaml template that ``ominix mof init`` writes, built from ReleaseConfig so
that it always lists exactly the fields the loader accepts."""

from __future__ import annotations

from pathlib import Path

import yaml

from ominix.atomic import check_replaceable, write_text

HEADER = """\
# Release metadata of a Model Openness Framework (MOF) bundle, read by
#   ominix mof report RUN_DIR --release release.yaml --out BUNDLE_DIR
# Licenses are SPDX ids (https://spdx.org/licenses/). Components take the license of their content
# type (code, data, document), else the distribution license. Type-appropriate licenses per MOT:
#   code:     Apache-2.0, MIT, BSD-style, ...      (OminiX itself is Apache-2.0: the code default)
#   data:     CDLA-Permissive-2.0, CC0-1.0, PDDL-1.0, ...
#   document: CC-BY-4.0, CC-BY-SA-4.0, CC0-1.0, ...
# The data license covers what this release distributes as data (weights, checkpoints, datasets as
# prepared); it must be compatible with the licenses of the sources, which DATA_CARD.md lists.
# A research paper is needed for Class I; it also stands in for a missing technical report.
# Paths (license texts, technical report, research paper) are relative to this file; a license
# without a path gets a file naming its SPDX id (Apache-2.0 ships with its full text).
"""

EXAMPLES = {
    "licenses": {
        "distribution": {"name": None, "path": None},
        "code": {"name": "Apache-2.0", "path": None},
        "data": {"name": "CDLA-Permissive-2.0", "path": None},
        "document": {"name": "CC-BY-4.0", "path": None},
    },
}


def render() -> str:
    from ominix.config import ReleaseConfig

    lines = [HEADER]
    defaults = ReleaseConfig().model_dump(mode="json")
    for name, info in ReleaseConfig.model_fields.items():
        lines.append(f"# {info.description}")
        value = {name: EXAMPLES.get(name, defaults[name])}
        lines.append(yaml.safe_dump(value, sort_keys=False, width=100).rstrip())
        lines.append("")
    return "\n".join(lines)


def write(out: Path, force: bool = False) -> Path:
    """Write the template to ``out``. The user edits it afterwards, so an existing file is replaced
    only with ``force``, and never when it is not a regular file (``ominix.atomic.check_replaceable``)."""
    check_replaceable(out, "release-template", force)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, render())
    return out
