"""Rollout benchmarks: throughput with and without recording, adaptive compute, test-time scaling.

    .venv/bin/python benchmarks/bench_rollout.py throughput --n 128 --depth 32
    .venv/bin/python benchmarks/bench_rollout.py adaptive --n 300 --depth 64
    .venv/bin/python benchmarks/bench_rollout.py scaling --data ../shared/data/puzzles5_forum_hardest_1905_11+.csv.gz

All three measure, side by side in one run, the configurations they compare.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch

from attractorlab import checkpoint, sudoku
from attractorlab.rollout import RolloutConfig, rollout, solve


def _puzzles(args: argparse.Namespace) -> sudoku.PuzzleSet:
    if args.data:
        p = sudoku.load_csv(args.data)
        return p[np.random.default_rng(args.seed).permutation(len(p))[: args.n]]
    return sudoku.generate(args.n, seed=args.seed + 12345, difficulty=args.difficulty)


def throughput(model, puzzles, args) -> None:
    cfg = RolloutConfig(depth=args.depth, breadth=args.breadth, seed=args.seed)
    rows_steps = len(puzzles) * args.breadth * args.depth
    with tempfile.TemporaryDirectory() as tmp:
        solve(model, puzzles[: args.batch_size], cfg, None, batch_size=args.batch_size, progress=False)  # warm-up
        timings = {}
        for label, out, states in (("rollout only", None, "none"),
                                   ("rollout + recording (no states)", os.path.join(tmp, "a.h5"), "none"),
                                   ("rollout + recording (--states all, float16)", os.path.join(tmp, "b.h5"), "all")):
            t0 = time.perf_counter()
            solve(model, puzzles, cfg, out, batch_size=args.batch_size, states=states, progress=False)
            timings[label] = (time.perf_counter() - t0, out)
        base = timings["rollout only"][0]
        print(f"{len(puzzles)} puzzles x B{args.breadth} x T{args.depth} = {rows_steps} puzzle-steps, "
              f"batch {args.batch_size}, {torch.get_num_threads()} threads")
        for label, (sec, out) in timings.items():
            size = os.path.getsize(out) / 2**20 if out else 0.0
            extra = f", file {size:.1f} MiB, {size / sec:.1f} MiB/s" if out else ""
            print(f"  {label:<45} {sec:7.2f} s  {rows_steps / sec:8.0f} puzzle-steps/s  "
                  f"overhead {100 * (sec / base - 1):+5.1f}%{extra}")


def adaptive(model, puzzles, args) -> None:
    tok, sol = torch.as_tensor(puzzles.tokens, dtype=torch.long), torch.as_tensor(puzzles.solution)
    rows = []
    fixed = rollout(model, tok, sol, RolloutConfig(depth=args.depth, seed=args.seed))
    for d in (1, 2, 4, 8, 16, 32, args.depth):
        if d <= args.depth:
            rows.append((f"fixed depth {d}", float(fixed.correct[:, 0, d - 1].mean()), float(d)))
    for tol in (1e-2, 3e-3, 1e-3, 3e-4):
        res = rollout(model, tok, sol, RolloutConfig(depth=args.depth, halt="converge", tol=tol, patience=2,
                                                     seed=args.seed))
        rows.append((f"converge tol {tol:g}", float(res.final_correct.mean()), float(res.steps.mean())))
    res = rollout(model, tok, sol, RolloutConfig(depth=args.depth, halt="q", seed=args.seed))
    rows.append(("learned halting q > 0", float(res.final_correct.mean()), float(res.steps.mean())))
    print(f"{len(puzzles)} puzzles ({args.data or args.difficulty}), depth cap {args.depth}")
    print(f"  {'rule':<24} {'accuracy':>9} {'mean steps':>11}")
    for label, acc, steps in rows:
        print(f"  {label:<24} {acc:9.3f} {steps:11.2f}")


def scaling(model, puzzles, args) -> None:
    depths = [int(d) for d in args.depths.split(",")]
    breadths = [int(b) for b in args.breadths.split(",")]
    tok, sol = torch.as_tensor(puzzles.tokens, dtype=torch.long), torch.as_tensor(puzzles.solution)
    print(f"{len(puzzles)} puzzles ({args.data or args.difficulty}); accuracy selected / oracle pass@B")
    print("  depth " + "".join(f"{'B' + str(b):>16}" for b in breadths))
    for d in depths:
        cells = []
        for b in breadths:
            hit = hit_oracle = 0
            for s in range(0, len(puzzles), args.batch_size):
                res = rollout(model, tok[s:s + args.batch_size], sol[s:s + args.batch_size],
                              RolloutConfig(depth=d, breadth=b, seed=args.seed + s))
                hit += int(res.selected_correct.sum())
                hit_oracle += int(res.pass_at_b.sum())
            cells.append(f"{hit / len(puzzles):7.3f} / {hit_oracle / len(puzzles):5.3f}")
        print(f"  {d:>5} " + "".join(f"{c:>16}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["throughput", "adaptive", "scaling"], help="which benchmark")
    parser.add_argument("--checkpoint", default="checkpoints/sudoku-small.pt", help="model checkpoint")
    parser.add_argument("--data", help="puzzle file (default: generated puzzles)")
    parser.add_argument("--difficulty", default="mixed", help="difficulty of generated puzzles")
    parser.add_argument("--n", type=int, default=128, help="number of puzzles")
    parser.add_argument("--depth", type=int, default=32, help="depth (throughput, adaptive cap)")
    parser.add_argument("--breadth", type=int, default=1, help="breadth (throughput)")
    parser.add_argument("--depths", default="1,4,16,64,256,1024", help="depths (scaling)")
    parser.add_argument("--breadths", default="1,8,64", help="breadths (scaling)")
    parser.add_argument("--batch-size", type=int, default=64, help="puzzles per batch")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args()
    model = checkpoint.load(args.checkpoint)
    puzzles = _puzzles(args)
    {"throughput": throughput, "adaptive": adaptive, "scaling": scaling}[args.what](model, puzzles, args)


if __name__ == "__main__":
    main()
