"""Benchmark the maze generator (and the batched validity check on what it made).

    python benchmarks/bench_maze_generate.py --n 10000 --grid 30
    python benchmarks/bench_maze_generate.py --n 2000 --grid 11 15 30 --difficulty mixed
    python benchmarks/bench_maze_generate.py --cold          # measure numba compilation instead of cache loading

Prints one row per grid: mazes, seconds, mazes/s, path length min/mean/max, the duplicates the de-duplication
replaced (rows that differ from the raw stream) and the duplicates left (always 0), then the time of
``is_valid`` on the generated labels.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10_000, help="number of mazes per grid")
    p.add_argument("--grid", type=int, nargs="+", default=[30], help="board sides to measure (30 = Maze-Unique)")
    p.add_argument("--difficulty", default="reference",
                   help="reference | short | long | mixed | LO-HI (inclusive path-length band)")
    p.add_argument("--seed", type=int, default=0, help="generator seed")
    p.add_argument("--workers", type=int, default=None, help="threads (default: all cores)")
    p.add_argument("--cold", action="store_true", help="compile the numba kernels from scratch (temp cache)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.cold:
        os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="numba-cold-")
    import numpy as np
    import torch

    from attractorlab.tasks import maze

    difficulty: str | tuple[int, int] = args.difficulty
    if "-" in args.difficulty:
        lo, hi = args.difficulty.split("-")
        difficulty = (int(lo), int(hi))
    print(f"cores available: {len(os.sched_getaffinity(0))}, workers: {args.workers or 'all'}, "
          f"difficulty: {args.difficulty}")
    t0 = time.perf_counter()
    maze.generate(2, grid=min(args.grid), workers=args.workers)
    print(f"first call (numba {'compile' if args.cold else 'compile or cache load'}): "
          f"{time.perf_counter() - t0:.2f} s")
    print(f"{'n':>7} {'grid':>5} {'seconds':>8} {'mazes/s':>9} {'len min':>8} {'mean':>7} {'max':>5} "
          f"{'replaced':>9} {'dup left':>9} {'valid ms':>9}")
    for grid in args.grid:
        kw = dict(grid=grid, difficulty=difficulty, workers=args.workers)
        t0 = time.perf_counter()
        ps = maze.generate(args.n, args.seed, **kw)
        dt = time.perf_counter() - t0
        raw = maze.generate(args.n, args.seed, dedupe=False, **kw)
        replaced = int((raw.tokens != ps.tokens).any(1).sum())
        left = args.n - len(np.unique(ps.tokens, axis=0))
        tokens, labels = torch.from_numpy(ps.tokens), torch.from_numpy(ps.solution)
        t0 = time.perf_counter()
        valid = maze.is_valid(tokens, labels)
        t_valid = time.perf_counter() - t0
        if not bool(valid.all()):
            raise SystemExit(f"grid {grid}: {int((~valid).sum())} generated labels are not valid paths")
        r = ps.rating
        print(f"{args.n:>7} {grid:>5} {dt:>8.2f} {args.n / dt:>9,.0f} {r.min():>8} {r.mean():>7.1f} {r.max():>5} "
              f"{replaced:>9} {left:>9} {t_valid * 1e3:>9.1f}")


if __name__ == "__main__":
    main()
