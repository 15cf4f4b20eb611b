"""Rollout benchmarks: throughput with and without recording, adaptive compute, test-time scaling.

    .venv/bin/python benchmarks/bench_rollout.py throughput --n 128 --depth 32
    .venv/bin/python benchmarks/bench_rollout.py batching --n 64 --depth 3
    .venv/bin/python benchmarks/bench_rollout.py adaptive --n 300 --depth 64
    .venv/bin/python benchmarks/bench_rollout.py scaling --data ../shared/data/puzzles5_forum_hardest_1905_11+.csv.gz
    .venv/bin/python benchmarks/bench_rollout.py scaling --task maze --difficulty reference --depths 1,4,16,64

``--task maze`` runs the shipped maze model (11 x 11) on generated mazes; any other checkpoint runs on its own
task's instances.

All four measure, side by side in one run, the configurations they compare.
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time

import numpy as np
import torch

from attractorlab import checkpoint
from attractorlab.cli import SHIPPED
from attractorlab.model import pick_device
from attractorlab.rollout import RolloutConfig, convergence_score, rollout, select_lowest_score
from attractorlab.runtime import tune_cpu_memory
from attractorlab.solve import solve_puzzles as solve
from attractorlab.tasks import PuzzleSet, Task, get_task


def _puzzles(args: argparse.Namespace, task: Task | None = None) -> PuzzleSet:
    """``--n`` instances of ``task`` (default Sudoku) from position ``--offset`` of a fixed order (a seeded shuffle
    of the file, or the generator's sequence), so that ``--offset`` splits one long benchmark into parts."""
    task = task or get_task("sudoku")
    if args.data:
        p = task.check(task.load(args.data))
        return p[np.random.default_rng(args.seed).permutation(len(p))[args.offset : args.offset + args.n]]
    band = args.difficulty.split("-")
    difficulty = (int(band[0]), int(band[1])) if len(band) == 2 else args.difficulty
    return task.generate(args.offset + args.n, seed=args.seed + 12345, difficulty=difficulty)[args.offset :]


def throughput(model, puzzles, args) -> None:
    cfg = RolloutConfig(depth=args.depth, breadth=args.breadth, seed=args.seed)
    rows_steps = len(puzzles) * args.breadth * args.depth
    with tempfile.TemporaryDirectory() as tmp:
        runs = [("rollout only", None, "none", False),
                ("rollout + recording (no states)", os.path.join(tmp, "a.h5"), "none", False),
                ("rollout + recording (--states all, float16)", os.path.join(tmp, "b.h5"), "all", False)]
        if model.device.type == "cuda":
            runs.append(("rollout only, CUDA graphs", None, "none", True))
        for graphs in {run[3] for run in runs}:  # warm-up (records the graphs)
            solve(model, puzzles[: args.batch_size], cfg, None, batch_size=args.batch_size, progress=False,
                  cuda_graphs=graphs)
        timings = {}
        for label, out, states, graphs in runs:
            t0 = time.perf_counter()
            solve(model, puzzles, cfg, out, batch_size=args.batch_size, states=states, progress=False,
                  cuda_graphs=graphs)
            timings[label] = (time.perf_counter() - t0, out)
        base = timings["rollout only"][0]
        print(f"{len(puzzles)} puzzles x B{args.breadth} x T{args.depth} = {rows_steps} puzzle-steps, "
              f"batch {args.batch_size}, {model.device}, {torch.get_num_threads()} threads")
        for label, (sec, out) in timings.items():
            size = os.path.getsize(out) / 2**20 if out else 0.0
            extra = f", file {size:.1f} MiB, {size / sec:.1f} MiB/s" if out else ""
            print(f"  {label:<45} {sec:7.2f} s  {rows_steps / sec:8.0f} puzzle-steps/s  "
                  f"overhead {100 * (sec / base - 1):+5.1f}%{extra}")


def batching(model, puzzles, args) -> None:
    """Puzzle-steps per second against rows per batch (puzzles x breadth), side by side in one run. On a CPU each
    batch also runs with its layers in one pass over all rows (``model.row_chunk_bytes = 0``) beside the default
    (chunks of ``model.row_chunk(rows)`` boards for large batches), in turn, and the two must give the same
    answers."""
    tok = torch.as_tensor(puzzles.tokens, dtype=torch.long)
    rollout(model, tok[:4], None, RolloutConfig(depth=1, seed=args.seed))  # warm-up
    chunked = model.row_chunk_bytes
    passes = {"chunks": chunked, "one pass": 0} if model.device.type == "cpu" else {"": chunked}
    print(f"depth {args.depth}, {model.device}, {torch.get_num_threads()} threads"
          + (f", chunks of {model.chunk_boards} boards above {8 * model.chunk_boards} rows" if len(passes) > 1 else ""))
    for rows in (int(r) for r in args.rows.split(",")):
        n = min(rows, len(puzzles))
        breadth = max(1, rows // n)
        rates, answers = {}, {}
        for label, chunk_bytes in passes.items():
            model.row_chunk_bytes = chunk_bytes
            t0 = time.perf_counter()
            res = rollout(model, tok[:n], None, RolloutConfig(depth=args.depth, breadth=breadth, seed=args.seed))
            rates[label] = n * breadth * args.depth / (time.perf_counter() - t0)
            answers[label] = res.pred
        model.row_chunk_bytes = chunked
        line = "  ".join(f"{label} {rate:8.1f}" for label, rate in rates.items())
        if len(passes) > 1:
            same = np.array_equal(answers["chunks"], answers["one pass"])
            line += f"  ({rates['chunks'] / rates['one pass']:.2f}x, {'same' if same else 'DIFFERENT'} answers)"
        print(f"  {n * breadth:>6} rows ({n} puzzles x breadth {breadth}): puzzle-steps/s {line}")


def adaptive(model, puzzles, args) -> None:
    """Fixed depth vs adaptive halting, by default without path noise so that latent convergence can be detected;
    wall time includes the compute saved by dropping halted rows. Rules: ``converge`` (relative latent residual below
    tol for 2 steps), ``stable`` (the read-out answer unchanged for ``patience`` steps), learned ``q > 0``."""
    tok, sol = torch.as_tensor(puzzles.tokens, dtype=torch.long), torch.as_tensor(puzzles.solution)
    rows = []
    t0 = time.perf_counter()
    noise = args.noise
    fixed = rollout(model, tok, sol, RolloutConfig(depth=args.depth, seed=args.seed, noise=noise))
    t_fixed = time.perf_counter() - t0
    for d in sorted({1, 2, 4, 8, 16, 32, 64, args.depth}):
        if d <= args.depth:
            rows.append((f"fixed depth {d}", float(fixed.correct[:, 0, d - 1].mean()), float(d), None))
    rows[-1] = (*rows[-1][:3], t_fixed)
    fixed_rows = list(rows)
    rules = [("converge", 1e-2, 2), ("converge", 1e-3, 2), ("stable", 0.0, 2), ("stable", 0.0, 3),
             ("stable", 0.0, 4), ("q", 1e-3, 2)]
    for halt, tol, patience in rules:
        t0 = time.perf_counter()
        res = rollout(model, tok, sol, RolloutConfig(depth=args.depth, halt=halt, tol=tol or 1e-3, patience=patience,
                                                     seed=args.seed, noise=noise))
        label = {"converge": f"converge tol {tol:g}", "stable": f"stable answer x{patience}",
                 "q": "learned halting q > 0"}[halt]
        rows.append((label, float(res.final_correct.mean()), float(res.steps.mean()), time.perf_counter() - t0))
    print(f"{len(puzzles)} puzzles ({args.data or args.difficulty}), depth cap {args.depth}, "
          f"path noise {'on' if noise else 'off'}")
    print(f"  {'rule':<24} {'accuracy':>9} {'mean steps':>11} {'seconds':>8} {'fewer steps than cap':>21}"
          f" {'than shallowest equal fixed depth':>34}")
    for label, acc, steps, sec in rows:
        # the shallowest fixed depth whose accuracy is at least this rule's: the fair comparison at equal accuracy
        equal = next((d for name, a, d, _ in fixed_rows if a >= acc - 1e-9), None)
        vs_equal = "" if equal is None else f"{equal / steps:.1f}x (depth {equal:g})"
        print(f"  {label:<24} {acc:9.3f} {steps:11.2f} {'' if sec is None else f'{sec:8.1f}':>8}"
              f" {args.depth / steps:20.1f}x {vs_equal:>34}")
    if args.plot:
        _plot_adaptive(fixed.correct[:, 0].mean(axis=0), rows[len(fixed_rows):], args)


def _plot_adaptive(fixed_curve: np.ndarray, rules: list, args: argparse.Namespace) -> None:
    """Accuracy vs mean outer steps: the fixed-depth curve (every depth) and one marker per halting rule."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_scatter(x=np.arange(1, len(fixed_curve) + 1), y=fixed_curve, mode="lines", name="fixed depth")
    for label, acc, steps, _ in rules:
        fig.add_scatter(x=[steps], y=[acc], mode="markers", marker_size=10, name=label)
    fig.update_layout(title=f"Adaptive compute: accuracy vs mean outer steps (cap {args.depth}, "
                      f"path noise {'on' if args.noise else 'off'})",
                      xaxis_title="mean outer steps per puzzle", yaxis_title="exact accuracy", xaxis_type="log")
    fig.write_html(args.plot, include_plotlyjs="cdn")
    print(f"wrote {args.plot}")


RESULT_FIELDS = ["source", "noise", "order_seed", "puzzle", "breadth", "depth", "selected", "oracle"]


def _read_results(path: str | None) -> dict:
    """A ``--results`` file as {(source, noise, order_seed, puzzle, breadth, depth): (selected, oracle)}."""
    if not path or not os.path.exists(path):
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and set(rows[0]) != set(RESULT_FIELDS):
        raise SystemExit(f"{path}: not a scaling results file (its columns: {', '.join(rows[0])})")
    return {(r["source"], *(int(r[k]) for k in RESULT_FIELDS[1:6])): (int(r["selected"]), int(r["oracle"]))
            for r in rows}


def _append_results(path: str, rows: list[tuple]) -> None:
    """Append one finished batch and flush it to disk, so that a killed run keeps every finished batch."""
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    with open(path, "a", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        if new:
            writer.writerow(RESULT_FIELDS)
        writer.writerows(rows)
        f.flush()
        os.fsync(f.fileno())


def scaling(model, puzzles, args) -> None:
    """One fixed-depth rollout per breadth and batch to the deepest depth; accuracy at each shallower depth is read
    off the same trajectories (selection uses only the steps up to that depth).

    With ``--results FILE`` every finished batch appends its per-puzzle outcomes to a CSV file, puzzles already in
    it are left out of their batch, and the table covers the requested puzzles as found in the file: one long
    table can be run in parts (``--offset``, several machines, files concatenated) and resumed after a kill.
    """
    depths = [int(d) for d in args.depths.split(",")]
    breadths = [int(b) for b in args.breadths.split(",")]
    tok, sol = torch.as_tensor(puzzles.tokens, dtype=torch.long), torch.as_tensor(puzzles.solution)
    source = os.path.basename(args.data) if args.data else f"generated:{args.difficulty}"
    key = (source, int(not args.no_noise), args.seed)  # what a result belongs to besides puzzle, breadth, depth
    index = args.offset + np.arange(len(puzzles))
    results = _read_results(args.results)
    t0, computed = time.perf_counter(), 0
    for b in breadths:
        for s in range(0, len(puzzles), args.batch_size):
            todo = [j for j in range(s, min(s + args.batch_size, len(puzzles)))
                    if any((*key, int(index[j]), b, d) not in results for d in depths)]
            if not todo:
                continue
            batch = [int(i) for i in index[todo]]
            part = rollout(model, tok[todo], sol[todo],
                           RolloutConfig(depth=max(depths), breadth=b, seed=args.seed + s, noise=not args.no_noise))
            computed += len(batch) * b * max(depths)
            new = []
            for d in depths:
                score = convergence_score(part.logit_change[:, :, :d], np.full(part.correct.shape[:2], d))
                selected = part.correct[np.arange(len(batch)), select_lowest_score(score), d - 1]
                oracle = part.correct[:, :, d - 1].any(axis=1)
                new += [(*key, i, b, d, int(hit), int(any_hit))
                        for i, hit, any_hit in zip(batch, selected, oracle, strict=True)]
            results.update({row[:6]: row[6:] for row in new})
            if args.results:
                _append_results(args.results, new)
    print(f"{len(puzzles)} puzzles ({args.data or args.difficulty}, positions {args.offset}-"
          f"{args.offset + len(puzzles) - 1} of order {args.seed}), noise {'off' if args.no_noise else 'on'}, "
          f"{computed} puzzle-steps computed in {time.perf_counter() - t0:.0f} s; exact accuracy selected / "
          f"oracle pass@B")
    print("  depth  layers " + "".join(f"{'B' + str(b):>16}" for b in breadths))
    for d in depths:
        layers = d * model.config.layer_equivalents_per_step
        hits = np.array([[results[(*key, int(i), b, d)] for i in index] for b in breadths]).mean(axis=1)  # [B, 2]
        print(f"  {d:>5} {layers:>7} " + "".join(f"{sel:9.3f} / {orc:4.3f}" for sel, orc in hits))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["throughput", "batching", "adaptive", "scaling"], help="which benchmark")
    parser.add_argument("--task", choices=list(SHIPPED), default="sudoku",
                        help="whose shipped model to run when --checkpoint is not given: sudoku or maze (11 x 11)")
    parser.add_argument("--checkpoint", help="model checkpoint (default: the shipped model of --task)")
    parser.add_argument("--data", help="puzzle file (default: generated puzzles)")
    parser.add_argument("--difficulty", default="mixed",
                        help="generated instances: the task's difficulties (Sudoku: mixed, singles, search; maze: "
                             "mixed, reference, short, long) or a rating band LO-HI such as 1-5 (maze: path length)")
    parser.add_argument("--n", type=int, default=128, help="number of puzzles")
    parser.add_argument("--offset", type=int, default=0,
                        help="skip this many puzzles of the same order first (the restarts of each batch are seeded "
                             "by --seed plus the batch's first position counted from the offset)")
    parser.add_argument("--depth", type=int, default=32, help="depth (throughput, adaptive cap)")
    parser.add_argument("--breadth", type=int, default=1, help="breadth (throughput)")
    parser.add_argument("--depths", default="1,4,16,64,256,1024", help="depths (scaling)")
    parser.add_argument("--breadths", default="1,8,64", help="breadths (scaling)")
    parser.add_argument("--rows", default="16,64,256,1024", help="rows per batch (batching)")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="puzzles per batch (rows = puzzles x breadth; on a CPU, 64 rows or fewer run fastest: "
                             "see batching)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (also the order of --data puzzles)")
    parser.add_argument("--results",
                        help="scaling: append per-puzzle outcomes to this CSV file, skip puzzles already in it, and "
                             "print the table of every requested puzzle in it (runs in parts, resumes after a kill)")
    parser.add_argument("--no-noise", action="store_true", help="scaling: roll out without path noise")
    parser.add_argument("--noise", action="store_true",
                        help="adaptive: keep the path noise on (latent convergence then never fires)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, ...")
    parser.add_argument("--plot", help="adaptive: write the accuracy-vs-steps curve to this HTML file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        device = pick_device(args.device)
    except ValueError as err:
        parser.error(str(err))
    model = checkpoint.load(args.checkpoint or SHIPPED[args.task], device)
    puzzles = _puzzles(args, get_task(model.config.task))
    benchmarks = {"throughput": throughput, "batching": batching, "adaptive": adaptive, "scaling": scaling}
    benchmarks[args.what](model, puzzles, args)


if __name__ == "__main__":
    tune_cpu_memory(rerun=True)  # as the CLI runs
    main()
