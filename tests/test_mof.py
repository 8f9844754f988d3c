"""MOF: packaged facts against MOT's reference data, MOT's classification of its own test releases,
and the release bundle of a run directory built from real files in the documented layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ominix.cli.mof_cmd import app
from ominix.release import mof
from tests.conftest import REPO, run_cli

# MOT's reference files (MIT; see tests/data/mot/LICENSE and SOURCE_COMMIT), vendored so a clone runs these
SHARED_MOF = REPO / "tests" / "data" / "mot"
TEST_DATA = SHARED_MOF / "test_data"
RELEASES = sorted(TEST_DATA.glob("*.yml"))


def _types(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def test_packaged_components_and_licenses_match_mot() -> None:
    settings = yaml.safe_load((SHARED_MOF / "mof.settings.yml").read_text())["components"]
    assert len(mof.components()) == 17
    packaged = {c.name: c for c in mof.components()}
    for ref in settings:
        c = packaged[ref["name"]]
        assert (c.id, c.description, c.content_type, c.mof_class, c.required) == (
            ref["id"], ref["description"], ref["content_type"], ref["class"], ref["required"])
    facts = mof.license_facts()
    for lic in json.loads((SHARED_MOF / "mof-licenses.json").read_text())["licenses"]:
        for kind in _types(lic["ContentType"]):
            assert lic["licenseId"] in facts["type_appropriate"][kind]
    n_appropriate = sum(len(v) for v in facts["type_appropriate"].values())
    assert n_appropriate == sum(len(_types(lic["ContentType"])) for lic in
                                json.loads((SHARED_MOF / "mof-licenses.json").read_text())["licenses"])
    spdx = json.loads((SHARED_MOF / "licenses.json").read_text())["licenses"]
    assert facts["osi_or_fsf"] == {x["licenseId"] for x in spdx if x.get("isOsiApproved") or x.get("isFsfLibre")}
    assert {x["licenseId"] for x in spdx} <= facts["known"]
    assert mof.schema() == json.loads((SHARED_MOF / "mof_schema.json").read_text())
    # Small enough to ship: the three data files together stay far below the 300 kB SPDX list.
    assert sum(p.stat().st_size for p in (REPO / "ominix/release/data").glob("*.json")) < 25_000


def test_license_status_rules() -> None:
    assert mof.license_status("MIT", "code") == "type-appropriate"
    assert mof.license_status("MIT", "document") == "open"  # OSI-approved, not a document license
    assert mof.license_status("CC-BY-2.5-AU", "data") == "open"  # an open-data family
    assert mof.license_status("OpenMDW-1.0", "document") == "type-appropriate"
    assert mof.license_status("unlicensed", "code") == "unlicensed"
    assert mof.license_status("CC-BY-NC-4.0", "data") == "invalid"
    # Listed as type-appropriate by MOT but not open: MOT's evaluator fails them.
    assert mof.license_status("C-UDA-1.0", "data") == "invalid"
    assert mof.license_status("MulanPSL-1.0", "code") == "invalid"


@pytest.mark.parametrize("path", RELEASES, ids=[p.stem[:48] for p in RELEASES])
def test_check_gives_mots_class_and_progress(path: Path) -> None:
    expected = json.loads((TEST_DATA / "expected_classification.json").read_text())
    name = yaml.safe_load(path.read_text())["release"]["name"]
    result = CliRunner().invoke(app, ["check", str(path), "--json"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.output)
    assert {k: got[k] for k in ("class", "label", "progress")} == expected[name]
    assert len(got["components"]) == 17


def test_every_mot_test_release_is_covered() -> None:
    names = {yaml.safe_load(p.read_text())["release"]["name"] for p in RELEASES}
    assert names == set(json.loads((TEST_DATA / "expected_classification.json").read_text()))


def test_check_table_names_what_the_next_class_needs() -> None:
    path = next(p for p in RELEASES if p.name.startswith("Class2RTestFile"))
    result = CliRunner().invoke(app, ["check", str(path)])
    assert result.exit_code == 0
    assert "Class II - Open Tooling Model" in result.output
    assert "Missing for Class I" in result.output
    for name in ("Data preprocessing code", "Model parameters (Intermediate)", "Datasets"):
        assert f"{name}: not in the release" in result.output


@pytest.mark.parametrize("text,match", [
    ("framework: [unclosed", "is not valid YAML"),
    ("framework:\n  name: Model Openness Framework\n  version: '1.0'\n  date: '2024-12-15'\n"
     "release:\n  name: x\n  producer: p\n  license: {}\n  components:\n  - name: Model weights\n",
     "unknown component name 'Model weights'"),
    ("framework:\n  name: Model Openness Framework\n  version: '1.0'\n  date: '2024-12-15'\n"
     "release:\n  name: x\n  license: {}\n  components: []\n", "'producer' is a required property"),
])
def test_check_rejects_bad_files_in_one_line(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.yml"
    path.write_text(text)
    proc = run_cli("mof", "check", str(path))
    assert proc.returncode == 2
    assert match in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 2


def test_check_explains_unknown_and_closed_licenses(tmp_path: Path) -> None:
    path = tmp_path / "m.yml"
    path.write_text(yaml.safe_dump({
        "framework": {"name": "Model Openness Framework", "version": "1.0", "date": "2024-12-15"},
        "release": {"name": "m", "producer": "p", "license": {}, "components": [
            {"name": "Model architecture", "license": "MIT"},
            {"name": "Model parameters (Final)", "license": "CC-BY-NC-4.0"},
            {"name": "Model card", "license": "My-Own-License"},
            {"name": "Data card"}]}}))
    result = CliRunner().invoke(app, ["check", str(path)])
    assert result.exit_code == 0, result.output
    assert "Model parameters (Final): license CC-BY-NC-4.0 is not open" in result.output
    assert "Model card: license 'My-Own-License' is not an SPDX id MOT knows" in result.output
    assert "Data card: present but has no license" in result.output
    assert "Technical report: not in the release" in result.output


def test_check_of_a_binary_file_is_one_error(tmp_path: Path) -> None:
    path = tmp_path / "model.yml"
    path.write_bytes(b"\x00\xff\xfe\x80 binary" * 4)
    proc = run_cli("mof", "check", str(path))
    assert proc.returncode == 2
    assert f"{path} is not UTF-8 text" in proc.stderr and "Traceback" not in proc.stderr


def test_check_of_a_directory_with_mof_yaml_but_no_checksums_fails_and_lone_file_ignores_no_verify(
        tmp_path: Path) -> None:
    path = next(p for p in RELEASES if p.name.startswith("Class2RTestFile"))
    lone = CliRunner().invoke(app, ["check", str(path), "--no-verify", "--json"])
    assert lone.exit_code == 0 and json.loads(lone.output)["class"] == 2 and "bundle" not in json.loads(lone.output)
    (tmp_path / "mof.yaml").write_text(path.read_text())
    proc = run_cli("mof", "check", str(tmp_path))
    assert proc.returncode == 1
    assert "problem: SHA256SUMS (not a bundle written by `ominix mof report`): missing" in proc.stderr


def _every_component(**licenses: dict) -> dict:
    """A release of all 17 components under one distribution license; ``licenses`` sets a
    component's own ``license:`` by name."""
    return {"framework": {"name": "Model Openness Framework", "version": "1.0", "date": "2024-12-15"},
            "release": {"name": "m", "producer": "p", "license": {"distribution": {"name": "Apache-2.0"}},
                        "components": [{"name": c.name, **licenses.get(c.name, {})} for c in mof.components()]}}


def _check(tmp_path: Path, document: dict) -> dict:
    path = tmp_path / "m.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    result = CliRunner().invoke(app, ["check", str(path), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.parametrize("license_id", ["C-UDA-1.0", "PDDL-1.0", "CC-PDDC"])
def test_listed_but_not_open_weights_license_fails_class_three_as_in_mot(tmp_path: Path, license_id: str) -> None:
    # mof-licenses.json lists these for data, but none is OSI, FSF or an open-data family: MOT's
    # evaluator puts the component in 'invalid', so Class III (6 required) stands at 5 of 6.
    assert _check(tmp_path, _every_component())["class"] == 1  # the control: Apache-2.0 everywhere
    got = _check(tmp_path, _every_component(**{"Model parameters (Final)": {"license": license_id}}))
    assert (got["class"], got["progress"]) == (0, {"1": 0, "2": 0, "3": pytest.approx(500 / 6)})
    weights = next(c for c in got["components"] if c["name"] == "Model parameters (Final)")
    assert (weights["license"], weights["status"], weights["included"]) == (license_id, "invalid", False)


def test_empty_component_license_is_unlicensed_not_the_release_license(tmp_path: Path) -> None:
    # MOT takes a component's own license when the key is set, and '' resolves to unlicensed.
    got = _check(tmp_path, _every_component(**{"Model parameters (Final)": {"license": ""}}))
    assert (got["class"], got["progress"]) == (0, {"1": 0, "2": 0, "3": pytest.approx(500 / 6)})
    weights = next(c for c in got["components"] if c["name"] == "Model parameters (Final)")
    assert (weights["license"], weights["status"]) == (None, "unlicensed")


@pytest.mark.parametrize("where", ["framework", "release"])
def test_unquoted_date_fails_the_schema_as_in_mot(tmp_path: Path, where: str) -> None:
    path = tmp_path / "m.yml"
    text = yaml.safe_dump(_every_component(), sort_keys=False)
    if where == "release":
        text = text.replace("  name: m\n", "  name: m\n  date: 2025-01-31\n")
    else:
        text = text.replace("date: '2024-12-15'", "date: 2024-12-15")
    path.write_text(text)
    proc = run_cli("mof", "check", str(path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{where}.date: unquoted date" in proc.stderr and "hint: quote it: date: '" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 2


def test_lone_model_file_must_be_named_yml_as_mot_reads(tmp_path: Path) -> None:
    official = next(p for p in RELEASES if p.name.startswith("Class2RTestFile"))
    for name in ("model.yaml", "model.json"):
        (tmp_path / name).write_text(official.read_text())
        proc = run_cli("mof", "check", str(tmp_path / name))
        assert proc.returncode == 2 and "MOT reads MOF model files named *.yml only" in proc.stderr
        assert f"hint: rename it: mv {tmp_path / name} {tmp_path / 'model.yml'}" in proc.stderr
