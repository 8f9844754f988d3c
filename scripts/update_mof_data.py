"""Regenerate ominix/release/data/ from MOT's reference files (tests/data/mot, vendored; or a given dir:
a newer checkout of MOT's data files).

    python scripts/update_mof_data.py [MOF_DIR]

Writes three files OminiX reads at run time, small and sorted so that a diff shows what MOT changed:
components.json (the 17 components of mof.settings.yml), licenses.json (type-appropriate SPDX ids
per content type from mof-licenses.json; the ids flagged OSI-approved or FSF-libre and every known
id from licenses.json) and mof_schema.json (a verbatim copy).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "ominix" / "release" / "data"
COMPONENT_KEYS = ("id", "name", "description", "content_type", "class", "required")


def components(mof: Path) -> list[dict]:
    settings = yaml.safe_load((mof / "mof.settings.yml").read_text())["components"]
    rows = [{k: c[k] for k in COMPONENT_KEYS} for c in settings]
    # Display order: Class III first, then within a class MOT's own weight.
    weight = {c["id"]: c["weight"] for c in settings}
    return sorted(rows, key=lambda c: (-c["class"], weight[c["id"]]))


def licenses(mof: Path) -> dict:
    mof_list = json.loads((mof / "mof-licenses.json").read_text())
    spdx = json.loads((mof / "licenses.json").read_text())
    by_type: dict[str, set[str]] = {"code": set(), "data": set(), "document": set()}
    for lic in mof_list["licenses"]:
        types = lic["ContentType"]
        for t in [types] if isinstance(types, str) else types:
            by_type[t].add(lic["licenseId"])
    open_ids = {l["licenseId"] for l in spdx["licenses"] if l.get("isOsiApproved") or l.get("isFsfLibre")}
    known = {l["licenseId"] for l in spdx["licenses"]} | {i for ids in by_type.values() for i in ids}
    return {
        "spdx_list_version": spdx["licenseListVersion"],
        "mof_list_version": mof_list["licenseListVersion"],
        "type_appropriate": {t: sorted(ids) for t, ids in by_type.items()},
        "osi_or_fsf": sorted(open_ids),
        "known": sorted(known),
    }


def main(argv: list[str]) -> None:
    mof = Path(argv[0]) if argv else REPO / "tests" / "data" / "mot"
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "components.json").write_text(json.dumps(components(mof), indent=1) + "\n")
    (OUT / "licenses.json").write_text(json.dumps(licenses(mof), separators=(",", ":")) + "\n")
    shutil.copyfile(mof / "mof_schema.json", OUT / "mof_schema.json")
    commit = (mof / "SOURCE_COMMIT").read_text().split()[0] if (mof / "SOURCE_COMMIT").is_file() else "unknown"
    (OUT / "SOURCE").write_text(f"components.json, licenses.json, mof_schema.json: Model Openness Tool data "
                                f"(MIT license), commit {commit}; regenerate with scripts/update_mof_data.py.\n"
                                "Apache-2.0.txt: the text of OminiX's own license (its code components).\n")
    print(f"wrote {OUT} from {mof}")


if __name__ == "__main__":
    main(sys.argv[1:])
