"""The benchmarks behind the README's numbers still run, on inputs small enough for the test suite.

They are scripts, not part of the package: each is imported from its file and its ``main(argv)`` is called with
tiny sizes; the checks are on what it prints (the tables the README quotes), not on timings.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

from attractorlab.cli import DEFAULT_CHECKPOINT

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_fixed_points_benchmark_compares_both_methods(capsys):
    bench = _load("bench_fixed_points")
    bench.main(["--d", "16", "--n", "12", "--max-iters", "300", "--repeats", "1", "--no-snap-too"])
    out = capsys.readouterr().out
    assert "FPF Adam (baseline)" in out and "find_fixed_points" in out and "snap=False" in out
    rows = re.findall(r"^find_fixed_points\s+([\d.]+)\s+(\d+)\s+(\d+)/12", out, flags=re.M)
    assert rows and float(rows[0][0]) > 0 and int(rows[0][2]) >= 1
    assert re.search(r"speed-up of find_fixed_points \(wall time, baseline / ours\): [\d.]+x", out)


def test_fixed_points_benchmark_reasoner_case_builds_starts_from_the_model():
    bench = _load("bench_fixed_points")
    args = bench.argparse.Namespace(checkpoint=DEFAULT_CHECKPOINT, puzzles=2,
                                    difficulty="singles", n_reasoner=3, warm=2, reasoner_tol=1e-5,
                                    dtype="float32", seed=0)
    cases = bench.reasoner_cases(args)
    assert len(cases) == 2
    for case in cases:
        assert case.z0.shape[0] == 3 and case.f(case.z0).shape == case.z0.shape and case.tol > 0


def test_rollout_benchmark_runs_the_shipped_maze_model(capsys):
    bench = _load("bench_rollout")
    bench.main(["scaling", "--task", "maze", "--n", "3", "--difficulty", "reference", "--depths", "1,4",
                "--breadths", "1"])
    out = capsys.readouterr().out
    assert "3 puzzles (reference" in out and re.search(r"^\s+4\s+32\s+[\d.]+ / [\d.]+$", out, flags=re.M), out


def test_rollout_benchmarks_print_their_tables(capsys, tmp_path):
    bench = _load("bench_rollout")
    bench.main(["scaling", "--n", "3", "--difficulty", "singles", "--depths", "1,3", "--breadths", "1,2"])
    out = capsys.readouterr().out
    assert re.search(r"^\s+3\s+\d+\s+[\d.]+ / [\d.]+\s+[\d.]+ / [\d.]+$", out, flags=re.M), out
    plot = tmp_path / "curve.html"
    bench.main(["adaptive", "--n", "4", "--depth", "4", "--plot", str(plot)])
    out = capsys.readouterr().out
    assert "fixed depth" in out and plot.stat().st_size > 0
    bench.main(["batching", "--n", "2", "--depth", "2", "--rows", "1,4"])
    out = capsys.readouterr().out
    assert re.search(r"4 rows \(2 puzzles x breadth 2\): puzzle-steps/s chunks\s+[\d.]+\s+one pass\s+[\d.]+\s+"
                     r"\([\d.]+x, same answers\)", out), out
    bench.main(["throughput", "--n", "2", "--depth", "2", "--batch-size", "2"])
    out = capsys.readouterr().out
    assert "puzzle-steps/s" in out and "--states all" in out


def test_scaling_results_file_resumes_a_killed_run_to_the_same_table(capsys, tmp_path):
    bench = _load("bench_rollout")
    argv = ["scaling", "--difficulty", "singles", "--depths", "1,3", "--breadths", "1,2", "--batch-size", "2"]
    whole, part = tmp_path / "whole.csv", tmp_path / "part.csv"
    bench.main([*argv, "--n", "5", "--results", str(whole)])
    table = capsys.readouterr().out.splitlines()[1:]
    assert b"\r" not in whole.read_bytes()  # plain newlines, for awk and friends
    lines = whole.read_text().splitlines()
    assert lines[0] == ",".join(bench.RESULT_FIELDS) and len(lines) == 1 + 5 * 2 * 2
    # a kill after the first batch (puzzles 0 and 1 at breadth 1) leaves the header and that batch's rows
    part.write_text("\n".join(lines[:1 + 2 * 2]) + "\n")
    bench.main([*argv, "--n", "5", "--results", str(part)])
    out = capsys.readouterr().out
    assert f"{(3 * 1 + 5 * 2) * 3} puzzle-steps computed" in out and out.splitlines()[1:] == table
    assert sorted(part.read_text().splitlines()) == sorted(lines)
    bench.main([*argv, "--n", "6", "--results", str(part)])  # one more puzzle: only it is computed
    assert f"{1 * (1 + 2) * 3} puzzle-steps computed" in capsys.readouterr().out
    assert len(part.read_text().splitlines()) == 1 + 6 * 2 * 2


def test_generator_benchmark(capsys):
    bench = _load("bench_generate")
    sample = Path(__file__).parent / "data" / "sudoku_sample.csv"
    bench.main(["--n", "20", "--workers", "1", "--data", str(sample)])
    out = capsys.readouterr().out
    assert "all unique, solutions match, ratings reproduce: True" in out
    assert re.search(r"sudoku_sample.csv: [\d,]+ rows, .* valid True", out)


def test_spectrum_benchmark_is_accurate_on_a_small_kronecker_map(capsys):
    _load("bench_spectrum").main(["--width", "8", "--kinds", "outliers"])
    out = capsys.readouterr().out
    assert "d = 648" in out
    error = float(re.search(r"jacobian_spectrum \(ARPACK\)\s+[\d.]+ s\s+max rel. error ([\d.e+-]+)", out).group(1))
    assert error < 1e-6


def test_weight_tying_benchmark(capsys):
    _load("bench_weight_tying").main(["--steps", "2", "--n-eval", "4", "--depths", "1,2"])
    out = capsys.readouterr().out
    assert "feedforward stack" in out and re.search(r"weight-tied reasoner, depth\s+2", out)


def test_rollout_benchmark_offset_splits_one_order_into_parts():
    bench = _load("bench_rollout")
    sample = str(Path(__file__).parent / "data" / "sudoku_sample.csv")
    for data in (None, sample):
        def pick(offset, n, data=data):
            args = bench.argparse.Namespace(data=data, difficulty="singles", n=n, offset=offset, seed=0)
            return bench._puzzles(args).tokens

        whole = pick(0, 5)
        assert len(whole) == 5
        assert (pick(1, 2) == whole[1:3]).all() and (pick(3, 2) == whole[3:]).all()


def test_ablation_ladder_runs_every_rung_appends_outcomes_and_continues_in_parts(capsys, tmp_path):
    bench = _load("bench_ablation")
    common = ["--steps", "2", "--n-train", "16", "--n-eval", "5", "--depths", "1,2", "--breadth", "2",
              "--dir", str(tmp_path / "rungs"), "--results", str(tmp_path / "out.csv"), "--no-progress",
              "--threads", "1"]
    bench.main(["run", "--rungs", "trm", *common])
    first = (tmp_path / "out.csv").read_text().splitlines()
    assert len(first) == 1 + 5 * 2  # header + 5 puzzles x 2 depths at breadth 1 (a fixed start: no breadth run)
    bench.main(["run", *common])  # trm is done: the other five rungs are trained and evaluated
    out = capsys.readouterr().out
    assert out.count("[trm] training") == 1 and all(out.count(f"[{r.name}] training") == 1 for r in bench.RUNGS)
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert lines[:len(first)] == first and len(lines) == len(first) + 5 * 5 * 2 + 2 * 5  # + breadth 2 of 2 rungs
    table = out.split("rung ")[-1]
    for rung in bench.RUNGS:
        assert re.search(rf"^{rung.name} .* {rung.paper}$", table, flags=re.M), rung.name
    checkpoints = {p.stem: bench.checkpoint.load(p).config for p in (tmp_path / "rungs").glob("*.pt")}
    assert checkpoints["weight-tied"].hierarchical is False and checkpoints["trm"].family == "trm"
    assert checkpoints["eqr"].family == "eqr" and checkpoints["random-init"].noise_scale == 0.0


def test_throughput_benchmark_prints_rates_beside_the_matmul_peak_and_the_reference_order(capsys):
    bench = _load("bench_throughput")
    bench.main(["--batch", "2", "--repeats", "1", "--matmul-n", "128", "--threads", "1"])
    out = capsys.readouterr().out
    assert re.search(r"dense 128\^3 fp32 matmul [\d.]+ GFLOP/s", out)
    rows = re.findall(r"^shipped\s+(mlp_t|attention)\s+(forward|train)\s+2\s+([\d.]+)\s+([\d.]+)", out, flags=re.M)
    assert [(v, s) for v, s, _, _ in rows] == [("mlp_t", "forward"), ("mlp_t", "train"), ("attention", "forward"),
                                               ("attention", "train")]
    assert all(float(rate) > 0 and float(gflop) > 0 for _, _, rate, gflop in rows)
    # by hand: 16 blocks per outer step, each 2 SwiGLUs of 2 x (81 x 512 x 128 + 81 x 256 x 128) FLOPs per puzzle
    assert rows[0][3] == f"{16 * 2 * 2 * (81 * 512 * 128 + 81 * 256 * 128) / 1e9:.3f}"
    # attention (11 x 11 maze): per block the q/k/v, output and SwiGLU projections, and Q K^T and P V of 8 heads
    per_block = 2 * 121 * 128 * (384 + 128 + 512) + 2 * 121 * 256 * 128 + 2 * 2 * 8 * 121 * 121 * 16
    assert rows[2][3] == f"{16 * per_block / 1e9:.3f}"
    core = re.findall(r"^shipped\s+attention\s+(attn-core|fwd-bound)\s+2\s+([\d.]+)\s+([\d.]+)", out, flags=re.M)
    assert [(s, g) for s, _, g in core] == [("attn-core", f"{16 * 2 * 2 * 8 * 121 * 121 * 16 / 1e9:.3f}"),
                                            ("fwd-bound", rows[2][3])]
    assert len(re.findall(r"[\d.]+x$", out, flags=re.M)) == 2  # the reference-order ratio of both forwards


def test_polish_benchmark_compares_the_three_solve_settings(capsys):
    bench = _load("bench_polish")
    bench.main(["--n", "1", "--difficulty", "singles", "--depth", "12", "--breadth", "2", "--threads", "1"])
    out = capsys.readouterr().out
    rows = re.findall(r"^(refine|default|selection)\s+([\d.]+)\s+([\d.]+)x\s+([\d.]+)\s+([\d.]+)$", out, flags=re.M)
    assert [r[0] for r in rows] == ["refine", "default", "selection"]
    assert rows[0][2] == "1.00" and rows[0][3] == "1.000" and rows[0][4] == "1.000"  # the reference against itself
    assert all(0 <= float(r[3]) <= 1 and float(r[1]) > 0 for r in rows)
