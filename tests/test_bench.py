"""The benchmarks under bench/ run OminiX and their same-run baselines and write the standard JSON.

Every training launch of this file runs once, in the module's ``bench_runs`` fixture, two at a time
(the machine's two cores): starting torch, ColossalAI and torchrun is what these runs cost, not
their steps, so each launch serves every assertion it can.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import REPO, in_private_netns, run_cli

BENCH = REPO / "bench"


def _bench_module(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


def _run(argv: list[str], cwd: Path) -> dict:
    """One bench command: its output and how long it took (the time limit below is sized by it)."""
    start = time.monotonic()
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=900, cwd=cwd)
    return {"rc": done.returncode, "out": done.stdout, "err": done.stderr, "seconds": time.monotonic() - start}


@pytest.fixture(scope="module")
def bench_runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every bench launch of this file on one prepared corpus: the throughput bench with its baseline
    and the CLI, the checkpoint-save bench, and the loss match's sides and one-call runs."""
    if not in_private_netns():
        pytest.fail("these benches start torchrun: run them via `make test` (private network namespace)")
    root = tmp_path_factory.mktemp("bench")
    data = root / "data"
    prepared = run_cli("data", "prepare", "--config", "tiny", "--out", str(data), timeout=300)
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    match = [str(BENCH / "loss_match.py"), "--data", str(data), "--plugin", "ddp", "--set", "schedule.warmup_steps=1"]
    side = [*match, "--steps", "20000", "--side"]  # more steps than any stopped side can make
    jobs = {
        "plain": [*side, "plain", "--stop-after", "3", "--out", str(root / "plain.json")],
        "optimised": [*side, "optimised", "--stop-after", "3", "--out", str(root / "optimised.json")],
        "throughput": [str(BENCH / "train_throughput.py"), "tiny", "--plugin", "ddp", "--micro-batch", "2",
                       "--global-batch", "4", "--warmup", "2", "--steps", "2", "--data", str(data), "--cli", str(data),
                       "--cli-set", "logging.log_every=2", "--cli-set", "checkpoint.every=2", "--profile", "1",
                       "--out", str(root / "tt.json")],
        "checkpoint": [str(BENCH / "checkpoint_save.py"), "tiny", "--plugin", "ddp", "--steps", "1", "--dir",
                       str(root), "--out", str(root / "cs.json")],
        # eager on both sides: the one call's three runs differ only in what --seed, --optimised-set
        # and --control-set give each
        "one_call": [*match, "--steps", "1", "--tol", "10", "--set", "model.compile=false", "--set",
                     "model.loss_chunk=0", "--seed", "3", "--optimised-set", "model.initializer_range=0.1",
                     "--control-set", "schedule.seed=42", "--out", str(root / "one_call.json")],
        "bad_backend": [*side, "optimised", "--compile-backend", "no_such_backend", "--out", str(root / "bad.json")],
    }
    with ThreadPoolExecutor(2) as pool:
        running = {name: pool.submit(_run, argv, root) for name, argv in jobs.items()}
        # a wall-clock limit past the plain side's whole run (start, 3 steps, save, exit): the
        # stopped run has its first steps, and far fewer than its 20000
        limit = round(1.5 * running["plain"].result()["seconds"])
        running["cut"] = pool.submit(_run, [*side, "plain", "--time-limit", str(limit), "--out",
                                            str(root / "cut.json")], root)
        runs = {name: future.result() for name, future in running.items()}
    return {"root": root, "data": data, "limit": limit, **runs}


def _ok(run: dict) -> dict:
    assert run["rc"] == 0, run["err"][-3000:]
    return run


def test_train_throughput_bench_runs_both_sides_and_the_cli_at_the_same_step(bench_runs: dict) -> None:
    """Each side in its own process, so a 7B comparison fits the host; --global-batch makes every
    side accumulate; --data feeds the bench the training loop's loader; --cli adds `ominix train
    launch` of the same shape to the same results file; --profile traces a step more per side."""
    _ok(bench_runs["throughput"])
    root = bench_runs["root"]
    result = json.loads((root / "tt.json").read_text())
    assert {"name", "card", "date", "command", "value", "unit", "baseline", "ratio", "mfu"} <= set(result)
    assert result["card"] == "cpu" and result["mfu"] is None  # no peak for a CPU: n/a, not a guess
    assert "micro 2 x accum 2" in result["name"]
    models = [r["model"] for r in result["rows"]]
    assert models == ["ominix", "baseline: transformers LlamaForCausalLM", "ominix train launch"]
    assert result["value"] > 0 and result["baseline"] > 0
    assert result["ratio"] == round(result["value"] / result["baseline"], 3)
    pids = {r["pid"] for r in result["rows"][:2]}
    assert len(pids) == 2 and os.getpid() not in pids
    cli = result["rows"][-1]
    # the timed steps are 3-4; step 5, profiled on every side, is not timed
    assert cli["timed_steps"] == 2 and len(cli["losses"]) == 3
    assert result["cli"] == cli["tokens_per_s"] > 0
    assert result["cli_vs_bench"] == round(cli["tokens_per_s"] / result["value"], 3)
    saves = cli["checkpoint_saves"]
    assert [s["step"] for s in saves] == [2, 4, 5] and all(s["bytes"] > 0 for s in saves)
    for name in ("ominix", "cli"):
        summary = json.loads((root / "profile" / name / "steps_5-5.json").read_text())
        assert summary["host_phase_s"]["forward"] > 0 and summary["host_phase_s"]["backward"] > 0
        assert (root / "profile" / name / "steps_5-5.trace.json.gz").stat().st_size > 0


def test_train_throughput_ratio_is_none_without_a_figure() -> None:
    """--no-baseline, or a side that failed: no ratio of one figure to a missing one."""
    ratio = _bench_module("train_throughput").ratio
    assert ratio(3.0, 2.0) == 1.5 and ratio(3.0, None) is None and ratio(None, 2.0) is None


def test_checkpoint_save_bench_times_the_blocked_part_against_the_synchronous_save(bench_runs: dict) -> None:
    _ok(bench_runs["checkpoint"])
    result = json.loads((bench_runs["root"] / "cs.json").read_text())
    assert {"name", "card", "date", "command", "value", "unit", "baseline", "ratio"} <= set(result)
    assert result["latest_ok"] and result["checkpoint_bytes"] > 10 << 20  # the tiny preset's 15 MB, written
    assert 0 < result["blocked_s"] <= result["total_s"] and result["baseline"] == result["sync_s"] > 0


def _pair(root: Path, first: str, second: str, out: str) -> dict:
    _ok(_run([str(BENCH / "loss_match.py"), "--pair", str(root / first), str(root / second), "--out",
              str(root / out)], root))
    return json.loads((root / out).read_text())


def test_loss_match_trains_each_side_alone_and_pairs_them(bench_runs: dict) -> None:
    """--side trains the plain and the optimised (compiled layers + chunked loss) run of the same
    seed on real prepared data, one per call, and --pair compares them; on the CPU in fp32 the two
    curves agree closely. --stop-after N stops a side after N of its --steps (SIGTERM: it saves and
    exits), so its learning rate follows the whole run's schedule."""
    plain = _ok(bench_runs["plain"])
    _ok(bench_runs["optimised"])
    root = bench_runs["root"]
    assert "plain stopped after step 3 of 20000 (SIGTERM)" in plain["err"]
    side = json.loads((root / "plain.json").read_text())
    assert side["stopped_after"] == 3 and len(side["losses"]["plain"]) == 3 and side["key"]["steps"] == 20000
    data_id = side["key"]["data"]
    assert len(data_id) == 16 and int(data_id, 16) >= 0  # the corpus's content is part of what must match
    result = _pair(root, "plain.json", "optimised.json", "lm.json")
    assert result["ok"] and result["value"] < 1e-3 and len(result["losses"]["plain"]) == 3
    assert result["losses"]["plain"][-1] < result["losses"]["plain"][0]  # it trained
    assert result["name"] == "loss match tiny ddp x1, first 3 of 20000 steps: optimised vs plain"
    assert len(result["commands"]) == 2


def test_loss_match_stops_a_side_at_its_time_limit_and_pairs_it_with_a_whole_one(bench_runs: dict) -> None:
    """--time-limit S stops a side after S seconds the same way and writes the steps made; --pair
    compares a stopped side with another on the steps both have."""
    cut = _ok(bench_runs["cut"])
    root, limit = bench_runs["root"], bench_runs["limit"]
    made = json.loads((root / "cut.json").read_text())["stopped_after"]
    assert 1 <= made < 20000 and f"plain stopped at the time limit ({limit} s), after step {made} of 20000" in cut["err"]
    result = _pair(root, "cut.json", "plain.json", "control.json")  # two real runs of one schedule
    steps = min(made, 3)
    assert result["name"] == f"loss match tiny ddp x1, first {steps} of 20000 steps: plain vs plain (control)"
    assert result["value"] == 0 and len(result["losses"]["control"]) == steps  # eager, fp32 on the CPU: equal


def test_loss_match_changes_the_optimised_side_alone(bench_runs: dict) -> None:
    """--optimised-set reaches the optimised run only, --control-set the control alone, --seed every
    run; --compile-backend is the backend of every torch.compile in the optimised run's processes.
    A run's first loss (before any update) tells its initial weights and first batch apart."""
    _ok(bench_runs["one_call"])
    result = json.loads((bench_runs["root"] / "one_call.json").read_text())
    plain, changed = result["first_loss"]
    assert result["seed"] == 3 and abs(changed - plain) > 0.01  # other initial weights on one side only
    control = result["losses"]["control"]
    assert result["control"]["value"] > 0.01 and len(control) == 1
    # the control put back the preset's seed (42) and nothing else: it starts where the plain side
    # of the other runs (no --seed) starts, and the plain run of seed 3 elsewhere
    preset_seed = json.loads((bench_runs["root"] / "plain.json").read_text())["losses"]["plain"][0]
    assert control[0] == pytest.approx(preset_seed, abs=1e-5) and abs(plain - preset_seed) > 0.01
    failed = bench_runs["bad_backend"]
    assert failed["rc"] != 0 and "no_such_backend" in failed["out"] + failed["err"]


def test_loss_match_pairs_only_sides_of_the_same_settings() -> None:
    sys.path.insert(0, str(BENCH))
    try:
        from loss_match import pair
    finally:
        sys.path.pop(0)
    key = {"preset": "tinyllama-1.1b", "plugin": "gemini", "nproc": 1, "steps": 3, "seed": 7, "sets": ["a=1"]}

    def side(name: str, losses: list[float], **changed: object) -> dict:
        return {"side": name, "key": {**key, **changed}, "card": "H200", "date": "2026-12-02",
                "command": f"--side {name}", "losses": {name: losses}}

    control = pair(side("plain", [9.0, 8.0, 7.0]), side("plain", [9.0, 8.1, 7.0]), 0.02)
    assert control["name"] == "loss match tinyllama-1.1b gemini x1, 3 steps: plain vs plain (control), seed 7"
    assert control["value"] == round(0.1 / 3, 5) and not control["ok"] and "control" in control["losses"]
    with pytest.raises(SystemExit, match="differ in seed, sets"):
        pair(side("plain", [1.0]), side("optimised", [1.0], seed=8, sets=[]), 0.02)
    with pytest.raises(SystemExit, match="differ in data$"):  # another corpus, or one file from before the key had it
        pair(side("plain", [1.0]), side("optimised", [1.0], data="0123abcd"), 0.02)
    with pytest.raises(SystemExit, match="a plain side first"):
        pair(side("optimised", [1.0]), side("plain", [1.0]), 0.02)


def test_loss_match_summary_is_a_curve_check() -> None:
    sys.path.insert(0, str(BENCH))
    try:
        from loss_match import summarize
    finally:
        sys.path.pop(0)
    plain = [7.0 - 0.01 * i for i in range(50)]
    spike = [x + (0.4 if i == 16 else 0.005) for i, x in enumerate(plain)]
    drift = [x + 0.2 for x in plain]
    s = summarize(plain, spike, 0.05)
    assert s["ok"] and s["max_abs_diff_step"] == 17 and s["max_abs_diff"] == 0.4
    assert not summarize(plain, drift, 0.05)["ok"]


def test_loss_match_combines_seeds_by_their_mean() -> None:
    """--combine checks the mean over seeds: one seed over the bound passes when the others are
    under it, a systematic offset of one sign fails, and one file per seed of one comparison."""
    sys.path.insert(0, str(BENCH))
    try:
        from loss_match import combine, summarize
    finally:
        sys.path.pop(0)
    plain = [7.0 - 0.01 * i for i in range(20)]

    def seed(n: int, offsets: list[float]) -> dict:
        fast = [x + offsets[i % len(offsets)] for i, x in enumerate(plain)]
        control = {"value": 0.01, "last10_mean_loss_diff": -0.01, "settings": "the plain run again"}
        return {"name": f"loss match tiny gemini x1, 20 steps: optimised vs plain, seed {n}", "seed": n,
                "date": "2026-12-02", **summarize(plain, fast, 0.02), "control": control}

    chaos = [seed(1, [0.03, -0.03]), seed(2, [0.01, -0.01]), seed(3, [0.005, -0.005])]
    assert not chaos[0]["ok"]
    result = combine(chaos, 0.02)
    assert result["ok"] and result["value"] == 0.015 and result["seeds"] == [1, 2, 3]
    assert [r["value"] for r in result["per_seed"]] == [0.03, 0.01, 0.005]
    assert result["control"]["value"] == 0.01 and result["name"].endswith("mean over 3 seeds")
    assert not combine([seed(1, [0.03]), seed(2, [0.03]), seed(3, [0.01])], 0.02)["ok"]  # one sign, every seed
    with pytest.raises(SystemExit, match="one results file per seed"):
        combine([chaos[0], chaos[0]], 0.02)
    other = {**chaos[1], "name": "loss match 1.1b gemini x1, 20 steps: optimised vs plain, seed 2"}
    with pytest.raises(SystemExit, match="one comparison"):
        combine([chaos[0], other], 0.02)


def test_the_benches_measure_a_child_its_peak_memory_and_all_its_output() -> None:
    """bench/childproc.py: the peak RSS of a child (and of what it runs) and its CPU time; output
    beyond a pipe's capacity does not block it; a failure stops the bench with the output."""
    sys.path.insert(0, str(BENCH))
    try:
        import childproc
    finally:
        sys.path.pop(0)
    hold = "import sys; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); sys.stderr.write('.' * 2**20)"
    inner = [sys.executable, "-c", hold]
    r = childproc.run([sys.executable, "-c", f"import subprocess; subprocess.run({inner!r})"])
    assert r["rc"] == 0 and r["peak_rss_bytes"] >= 300 * 2**20 and r["cpu_seconds"] > 0
    assert len(r["stderr"]) == 2**20  # a megabyte through a 64 KiB pipe, all of it
    with pytest.raises(SystemExit, match=r"failed \(3\)"):
        childproc.run([sys.executable, "-c", "import sys; print('why'); sys.exit(3)"])
    assert childproc.run([sys.executable, "-c", "raise SystemExit(2)"], check=False)["rc"] == 2


def test_source_corpus_is_sorted_cut_and_readable(tmp_path: Path) -> None:
    """bench/source_corpus.py writes the Python files under a tree, in path order, up to --mb, as a
    .jsonl.zst that ominix's readers take; an empty tree is an error, not an empty corpus."""
    from ominix.data.readers import read

    tree = tmp_path / "tree"
    for name in ("b/z.py", "a/y.py", "a/x.py", "c.py", "small.py", "a/__pycache__/x.py"):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text(f"# {name}\n" + ("x = 1\n" * 200 if name != "small.py" else ""))
    script = [sys.executable, str(REPO / "bench" / "source_corpus.py")]
    out = tmp_path / "c.jsonl.zst"
    done = subprocess.run([*script, str(tree), "--mb", "0.0024", "--out", str(out)], check=True,
                          capture_output=True, text=True, timeout=60)
    texts = [text.split("\n", 1)[0] for text, _ in read(out, "text")]
    assert texts == ["# a/x.py", "# a/y.py"]  # sorted, small and cached files skipped, cut once 2.4 KB are in
    assert "2 files" in done.stdout and "sha256" in done.stdout
    empty = subprocess.run([*script, str(tmp_path / "nothing"), "--out", str(tmp_path / "e.jsonl.zst")],
                           capture_output=True, text=True, timeout=60)
    assert empty.returncode != 0 and "no Python file" in empty.stderr and not (tmp_path / "e.jsonl.zst").exists()
