"""Benchmark the Sudoku generator, solver, loader and augmentation.

    python benchmarks/bench_generate.py --n 10000 --difficulty mixed --seed 0
    python benchmarks/bench_generate.py --cold          # measure numba compilation instead of cache loading

Reports generation speed (first call, which compiles or loads the numba kernels, separately from the
steady state), the rating histogram, augmentation speed, and for each CSV under ``--data`` (default: the
shared data folder beside the project, when present) loading time, full validation (unique solution equal
to the answer) and solver speed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10_000, help="number of puzzles to generate")
    p.add_argument("--difficulty", default="mixed", help="singles | search | mixed | LO-HI (rating band)")
    p.add_argument("--seed", type=int, default=0, help="generator seed")
    p.add_argument("--workers", type=int, default=None, help="threads (default: all cores)")
    p.add_argument(
        "--data", nargs="*", type=Path, default=None, help="CSV files or folders to load, validate and solve"
    )
    p.add_argument("--cold", action="store_true", help="compile the numba kernels from scratch (temp cache)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.cold:
        os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="numba-cold-")
    import numpy as np

    from attractorlab import sudoku as S

    difficulty: str | tuple[int, int] = args.difficulty
    if "-" in args.difficulty:
        lo, hi = args.difficulty.split("-")
        difficulty = (int(lo), int(hi))
    print(f"cores available: {len(os.sched_getaffinity(0))}, workers: {args.workers or 'all'}")

    t0 = time.perf_counter()
    S.generate(2, seed=args.seed, difficulty=difficulty, workers=args.workers)
    S.solve(S.encode("." * 81))
    what = "compile" if args.cold else "compile or cache load"
    print(f"first calls (numba {what}): {time.perf_counter() - t0:.2f} s")

    t0 = time.perf_counter()
    ps = S.generate(args.n, seed=args.seed, difficulty=difficulty, progress=True, workers=args.workers)
    dt = time.perf_counter() - t0
    print(f"generate n={args.n} difficulty={args.difficulty}: {dt:.2f} s, {args.n / dt:,.0f} puzzles/s")
    bands, counts = np.unique(S.difficulty_band(ps.rating), return_counts=True)
    print("bands: " + ", ".join(f"{b} {c}" for b, c in zip(bands, counts, strict=True)))
    edges = [0, 1, 2, 3, 4, 6, 11, 21, 51, 101, np.iinfo(np.int32).max]
    hist = np.histogram(ps.rating, bins=edges)[0]
    labels = [f"{a}" if b == a + 1 else f"{a}-{b - 1}" for a, b in zip(edges[:-1], edges[1:], strict=True)]
    labels[-1] = f"{edges[-2]}+"
    print("rating histogram: " + ", ".join(f"{lab}: {h}" for lab, h in zip(labels, hist, strict=True)))
    clues = (ps.tokens >= 2).sum(1)
    print(f"clues: mean {clues.mean():.1f}, min {clues.min()}, max {clues.max()}")
    check = S.solve(ps.tokens, workers=args.workers)
    good = (check.n_solutions == 1) & (check.solution == ps.solution).all(1) & (check.backtracks == ps.rating)
    print(f"all unique, solutions match, ratings reproduce: {bool(good.all())}")

    batch = ps[: min(768, len(ps))]
    S.augment(batch.tokens, batch.solution, 0)
    reps = 50
    t0 = time.perf_counter()
    for i in range(reps):
        S.augment(batch.tokens, batch.solution, i)
    print(f"augment {len(batch)} puzzles (numpy): {(time.perf_counter() - t0) / reps * 1e3:.2f} ms per batch")

    paths = args.data if args.data is not None else ([DEFAULT_DATA] if DEFAULT_DATA.is_dir() else [])
    files = sorted(f for p in paths for f in (p.glob("*.csv*") if p.is_dir() else [p]))
    for f in files:
        t0 = time.perf_counter()
        data = S.load_csv(f)
        t_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        checked = S.load_csv(f, verify=True)
        t_verify = time.perf_counter() - t0
        ok = checked.skipped == 0 and len(checked) == len(data)
        print(f"{f.name}: {len(data):,} rows, load {t_load:.2f} s, load+verify {t_verify:.2f} s, valid {ok}")
        for workers, label in ((1, "1 thread"), (args.workers, "all threads")):
            t0 = time.perf_counter()
            res = S.solve(data.tokens, max_solutions=1, workers=workers)
            dt = time.perf_counter() - t0
            print(f"  solve first solution, {label}: {len(data) / dt:,.0f} puzzles/s")
        agree = (res.backtracks == data.rating).mean()
        print(f"  rating equals the file's rating column: {agree:.2%}; median {np.median(data.rating):.0f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
