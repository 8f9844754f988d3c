"""The bad-input sweep (tests/sweep_cases.py): each case run through ``python -m ominix`` as a user
would, asserting its outcome class (clean error, usage error, right result, named notice).

The shared inputs (the session's prepared tiny dataset, a 3-step one-process run and its export) are built once;
the selected cases then run one per core (at most 4) in one session fixture, and each test reads
its result.
`python scripts/bad_input_sweep.py` runs the same cases and writes docs/BAD_INPUTS.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.sweep_cases import CASES, Case, Observed, as_expected, build_fixtures, run_all


@pytest.fixture(scope="session")
def observed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
             data_dir: Path) -> dict[str, Observed]:
    from tests.conftest import in_private_netns

    if not in_private_netns():
        pytest.fail("the sweep trains a tiny run: run it via `make test` (private network namespace)")
    wanted = {item.callspec.params["case"].id for item in request.session.items
              if hasattr(item, "callspec") and isinstance(item.callspec.params.get("case"), Case)}
    shared = build_fixtures(tmp_path_factory.mktemp("sweep-shared"), data_dir)
    return run_all([c for c in CASES if c.id in wanted], shared, tmp_path_factory.mktemp("sweep-cases"))


def _param(case: Case):
    marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
    return pytest.param(case, id=case.id, marks=marks)


def test_at_least_sixty_cases_cover_every_command() -> None:
    assert len(CASES) >= 60
    commands = {c.command for c in CASES}
    assert {"config show", "config schema", "config presets", "data prepare", "data inspect", "train launch",
            "train check-hosts", "checkpoint list", "checkpoint export", "infer", "eval", "mof check",
            "mof report", "mof init", "quickstart"} <= commands


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_case(case: Case, observed: dict[str, Observed]) -> None:
    seen = observed[case.id]
    assert as_expected(case, seen), (
        f"{case.command}: {case.wrong}: expected {case.expect}"
        f"{f' naming {case.needle!r}' if case.needle else ''}, got {seen.outcome} "
        f"(exit {seen.code}): {seen.first_line}")


def test_docs_table_lists_every_case() -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "BAD_INPUTS.md").read_text()
    missing = [c.id for c in CASES if f"| `{c.id}` |" not in text]
    assert not missing, f"regenerate docs/BAD_INPUTS.md (python scripts/bad_input_sweep.py): {missing}"
