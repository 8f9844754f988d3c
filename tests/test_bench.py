"""The training-throughput benchmark runs OminiX and its same-run baseline and writes the standard JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


def test_train_throughput_bench_smoke(private_netns: None, tmp_path: Path) -> None:
    out = tmp_path / "tt.json"
    subprocess.run([sys.executable, str(REPO / "bench" / "train_throughput.py"), "tiny", "--plugin", "ddp",
                    "--warmup", "1", "--steps", "1", "--out", str(out)], check=True, capture_output=True,
                   timeout=600, cwd=tmp_path)
    result = json.loads(out.read_text())
    assert {"name", "card", "date", "command", "value", "unit", "baseline", "ratio", "mfu"} <= set(result)
    assert result["card"] == "cpu" and result["mfu"] is None  # no peak for a CPU: n/a, not a guess
    assert [r["model"] for r in result["rows"]] == ["ominix", "baseline: transformers LlamaForCausalLM"]
    assert result["value"] > 0 and result["baseline"] > 0
    pids = {r["pid"] for r in result["rows"]}  # each side in its own process, so a 7B comparison fits the host
    assert len(pids) == 2 and os.getpid() not in pids


def test_checkpoint_save_bench_times_the_blocked_part_against_the_synchronous_save(private_netns: None,
                                                                                    tmp_path: Path) -> None:
    out = tmp_path / "cs.json"
    subprocess.run([sys.executable, str(REPO / "bench" / "checkpoint_save.py"), "tiny", "--plugin", "ddp",
                    "--steps", "1", "--dir", str(tmp_path), "--out", str(out)], check=True, capture_output=True,
                   timeout=600, cwd=tmp_path)
    result = json.loads(out.read_text())
    assert {"name", "card", "date", "command", "value", "unit", "baseline", "ratio"} <= set(result)
    assert result["latest_ok"] and result["checkpoint_bytes"] > 10 << 20  # the tiny preset's 15 MB, written
    assert 0 < result["blocked_s"] <= result["total_s"] and result["baseline"] == result["sync_s"] > 0


def test_loss_match_trains_each_side_alone_and_pairs_them(private_netns: None, tmp_path: Path) -> None:
    """bench/loss_match.py --side trains the plain and the optimised (compiled layers + chunked loss)
    run of the same seed on real prepared data, one per call, and --pair compares them; on the CPU
    in fp32 the two curves agree closely. (The one-call path: the next test.)"""
    from tests.conftest import run_cli

    data = tmp_path / "data"
    assert run_cli("data", "prepare", "--config", "tiny", "--out", str(data), timeout=300).returncode == 0
    bench = [sys.executable, str(REPO / "bench" / "loss_match.py")]
    for side in ("plain", "optimised"):
        subprocess.run([*bench, "--data", str(data), "--plugin", "ddp", "--steps", "3", "--set",
                        "schedule.warmup_steps=1", "--side", side, "--out", str(tmp_path / f"{side}.json")],
                       check=True, capture_output=True, timeout=900, cwd=tmp_path)
    out = tmp_path / "lm.json"
    subprocess.run([*bench, "--pair", str(tmp_path / "plain.json"), str(tmp_path / "optimised.json"), "--out",
                    str(out)], check=True, capture_output=True, timeout=60, cwd=tmp_path)
    result = json.loads(out.read_text())
    assert result["ok"] and result["value"] < 1e-3 and len(result["losses"]["plain"]) == 3
    data_id = json.loads((tmp_path / "plain.json").read_text())["key"]["data"]
    assert len(data_id) == 16 and int(data_id, 16) >= 0  # the corpus's content is part of what must match
    assert result["losses"]["plain"][-1] < result["losses"]["plain"][0]  # it trained
    assert result["name"] == "loss match tiny ddp x1, 3 steps: optimised vs plain" and len(result["commands"]) == 2


def test_loss_match_stops_a_side_early_on_the_whole_runs_schedule(private_netns: None, tmp_path: Path) -> None:
    """--stop-after N stops a side's run after N of its --steps (SIGTERM: it saves and exits), so its
    learning rate follows the whole run's schedule, and --time-limit S after S seconds; either writes
    the steps made. --pair compares a stopped side with a whole one on the steps both have."""
    from tests.conftest import run_cli

    data = tmp_path / "data"
    assert run_cli("data", "prepare", "--config", "tiny", "--out", str(data), timeout=300).returncode == 0

    def side_run(steps: int, *stop: str, out: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(REPO / "bench" / "loss_match.py"), "--data", str(data), "--plugin",
                               "ddp", "--steps", str(steps), "--set", "schedule.warmup_steps=1", "--side", "plain",
                               *stop, "--out", str(tmp_path / out)], capture_output=True, text=True, timeout=600,
                              cwd=tmp_path)

    stopped = side_run(400, "--stop-after", "2", out="stopped.json")
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    assert "plain stopped after step 2 of 400 (SIGTERM)" in stopped.stderr
    side = json.loads((tmp_path / "stopped.json").read_text())
    assert side["stopped_after"] == 2 and len(side["losses"]["plain"]) == 2 and side["key"]["steps"] == 400
    cut = side_run(400, "--time-limit", "20", out="cut.json")  # ~100 of the 400 steps here
    assert cut.returncode == 0, cut.stderr[-2000:]  # a wall-clock limit: the steps made so far, written
    made = json.loads((tmp_path / "cut.json").read_text())["stopped_after"]
    assert 2 <= made < 400 and f"plain stopped at the time limit (20 s), after step {made} of 400" in cut.stderr
    out = tmp_path / "lm.json"
    subprocess.run([sys.executable, str(REPO / "bench" / "loss_match.py"), "--pair", str(tmp_path / "cut.json"),
                    str(tmp_path / "stopped.json"), "--out", str(out)], check=True, capture_output=True, timeout=60)
    result = json.loads(out.read_text())  # two real runs of the same schedule, on the steps both made
    assert result["name"] == "loss match tiny ddp x1, first 2 of 400 steps: plain vs plain (control)"
    assert result["value"] == 0 and len(result["losses"]["control"]) == 2


def test_loss_match_pairs_only_sides_of_the_same_settings() -> None:
    sys.path.insert(0, str(REPO / "bench"))
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


def test_loss_match_changes_the_optimised_side_alone(private_netns: None, tmp_path: Path) -> None:
    """--optimised-set reaches the optimised run only (eager against eager with one change), and
    --compile-backend is the backend of every torch.compile in the optimised run's processes."""
    from tests.conftest import run_cli

    data = tmp_path / "data"
    assert run_cli("data", "prepare", "--config", "tiny", "--out", str(data), timeout=300).returncode == 0
    bench = [sys.executable, str(REPO / "bench" / "loss_match.py"), "--data", str(data), "--plugin", "ddp",
             "--steps", "1", "--tol", "10"]
    out = tmp_path / "lm.json"
    subprocess.run([*bench, "--set", "model.compile=false", "--set", "model.loss_chunk=0",
                    "--optimised-set", "model.initializer_range=0.1", "--out", str(out)],
                   check=True, capture_output=True, timeout=900, cwd=tmp_path)
    plain, changed = json.loads(out.read_text())["first_loss"]
    assert abs(changed - plain) > 0.01  # other initial weights on one side only
    # --seed reaches every run and --control-set the control alone: the control put back the
    # preset's seed (42), so it starts elsewhere than the plain run of seed 3
    subprocess.run([*bench, "--set", "model.compile=false", "--set", "model.loss_chunk=0", "--seed", "3",
                    "--control-set", "schedule.seed=42", "--out", str(out)],
                   check=True, capture_output=True, timeout=900, cwd=tmp_path)
    result = json.loads(out.read_text())
    assert result["seed"] == 3 and result["value"] == 0  # eager against eager, fp32 on the CPU: equal
    assert result["control"]["value"] > 0.01 and len(result["losses"]["control"]) == 1
    failed = subprocess.run([*bench, "--compile-backend", "no_such_backend"], capture_output=True, text=True,
                            timeout=900, cwd=tmp_path)
    assert failed.returncode != 0 and "no_such_backend" in failed.stdout + failed.stderr


def test_loss_match_summary_is_a_curve_check() -> None:
    sys.path.insert(0, str(REPO / "bench"))
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
    sys.path.insert(0, str(REPO / "bench"))
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


def test_decode_levers_headline_is_best_against_cublas() -> None:
    sys.path.insert(0, str(REPO / "bench"))
    try:
        from decode_levers import _headline
    finally:
        sys.path.pop(0)
    rows = [{"variant": "eager step, CUDA graph", "tokens_per_s": 400.0},
            {"variant": "compiled, cuBLAS GEMV", "tokens_per_s": 700.0},
            {"variant": "compiled, tuned reductions", "tokens_per_s": 875.0}]
    head = _headline(rows)
    assert head["value"] == 875.0 and head["value_variant"] == "compiled, tuned reductions"
    assert head["baseline"] == 700.0 and head["ratio"] == 1.25
    assert _headline(rows[2:])["baseline"] is None  # no baseline in the run: none invented


def test_train_throughput_bench_records_the_cli_at_the_same_step(private_netns: None, tmp_path: Path) -> None:
    """--global-batch makes every side accumulate; --data feeds the bench the training loop's loader;
    --cli adds `ominix train launch` of the same shape to the same results file."""
    from tests.conftest import run_cli

    data = tmp_path / "data"
    assert run_cli("data", "prepare", "--config", "tiny", "--out", str(data), timeout=300).returncode == 0
    out = tmp_path / "tt.json"
    subprocess.run([sys.executable, str(REPO / "bench" / "train_throughput.py"), "tiny", "--plugin", "ddp",
                    "--micro-batch", "2", "--global-batch", "4", "--warmup", "2", "--steps", "2", "--no-baseline",
                    "--data", str(data), "--cli", str(data), "--cli-set", "logging.log_every=2",
                    "--cli-set", "checkpoint.every=2", "--profile", "1", "--out", str(out)],
                   check=True, capture_output=True, timeout=600, cwd=tmp_path)
    result = json.loads(out.read_text())
    assert "micro 2 x accum 2" in result["name"]
    assert result["baseline"] is None and result["ratio"] is None  # no baseline side: no ratio of one to itself
    cli = result["rows"][-1]
    # the timed steps are 3-4; step 5, profiled on both sides, is not timed
    assert cli["model"] == "ominix train launch" and cli["timed_steps"] == 2 and len(cli["losses"]) == 3
    assert result["cli"] == cli["tokens_per_s"] > 0
    assert result["cli_vs_bench"] == round(cli["tokens_per_s"] / result["value"], 3)
    assert [s["step"] for s in cli["checkpoint_saves"]] == [2, 4, 5] and all(s["bytes"] > 0 for s in cli["checkpoint_saves"])
    for side in ("ominix", "cli"):
        summary = json.loads((tmp_path / "profile" / side / "steps_5-5.json").read_text())
        assert summary["host_phase_s"]["forward"] > 0 and summary["host_phase_s"]["backward"] > 0
        assert (tmp_path / "profile" / side / "steps_5-5.trace.json.gz").stat().st_size > 0


def test_the_benches_measure_a_child_its_peak_memory_and_all_its_output() -> None:
    """bench/childproc.py: the peak RSS of a child (and of what it runs) and its CPU time; output
    beyond a pipe's capacity does not block it; a failure stops the bench with the output."""
    sys.path.insert(0, str(REPO / "bench"))
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


def test_grad_bias_compares_eager_and_compiled_gradients_with_fp64(tmp_path: Path) -> None:
    """bench/grad_bias.py: one bf16 step, eager twice and compiled, each against fp64 of the same
    weights; rounding leaves the projection on the fp64 gradient at ~1, and eager repeats itself."""
    out = tmp_path / "gb.json"
    subprocess.run([sys.executable, str(REPO / "bench" / "grad_bias.py"), "--device", "cpu", "--hidden", "128",
                    "--layers", "1", "--seq", "64", "--batch", "2", "--checkpointing", "--out", str(out)],
                   check=True, capture_output=True, timeout=600, cwd=tmp_path)
    result = json.loads(out.read_text())
    for variant in ("eager", "eager_again", "compiled"):
        assert 0 < result[variant]["rel_error"] < 0.05 and abs(result[variant]["projection"] - 1) < 0.01
        assert abs(result[variant]["loss"] - result["loss_fp64"]) < 0.01
        assert "model.layers.0.mlp.down_proj.weight" in result[variant]["parameters"]
    assert result["eager"]["rel_error"] == result["eager_again"]["rel_error"]  # the CPU is deterministic


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
