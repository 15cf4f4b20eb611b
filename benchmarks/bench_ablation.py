"""The EqR ablation ladder at CPU scale: from a weight-tied model to TRM to EqR, one switch per rung.

    .venv/bin/python benchmarks/bench_ablation.py run                 # train + evaluate every rung not yet done
    .venv/bin/python benchmarks/bench_ablation.py run --rungs trm,eqr  # some rungs only (the table fills in parts)
    .venv/bin/python benchmarks/bench_ablation.py table               # the table from the results file

Every rung trains the same budget (the ``tiny`` preset unless ``--preset``: same data, optimizer steps and seed)
and differs from the rung before it by one switch. Training is resumable (``--resume`` of each rung's checkpoint in
``--dir``); every rung's per-puzzle outcomes on the same unseen puzzles (breadth 1 at each depth, and breadth
``--breadth`` at the deepest depth for rungs with random initial states) are appended to ``--results``, so a run
cut short continues where it stopped. The paper's Sudoku-Extreme numbers (depth 16, full-size models) are printed
beside ours.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from attractorlab import checkpoint, train
from attractorlab.model import TRM_SETTINGS
from attractorlab.rollout import RolloutConfig, convergence_score, rollout, select_lowest_score
from attractorlab.runtime import tune_cpu_memory
from attractorlab.tasks import get_task


@dataclass(frozen=True)
class Rung:
    name: str
    adds: str
    paper: float | None  # the paper's Sudoku-Extreme accuracy (%) at depth 16
    overrides: dict = field(default_factory=dict)


_TRM = dict(TRM_SETTINGS)
RUNGS = (
    Rung("weight-tied", "one stream, 1 segment, full backprop, fixed start", 32.6,
         dict(_TRM, hierarchical=False, halt_max_steps=1, full_backprop=True, act=False)),
    Rung("segments", "+ segmented training (last-cycle gradient)", 74.7,
         dict(_TRM, hierarchical=False, act=False)),
    Rung("hierarchy", "+ the z_H / z_L hierarchy", 76.5, dict(_TRM, act=False)),
    Rung("trm", "+ ACT (halting head) = TRM", 84.8, dict(_TRM)),
    Rung("random-init", "+ random initial states", 86.0, dict(lambda_=1.0, noise_scale=0.0)),
    Rung("eqr", "+ damping and path noise = EqR", 86.4, dict()),
)
FIELDS = ("rung", "puzzle", "breadth", "depth", "correct", "selected_correct", "token_accuracy")


def _eval_puzzles(args: argparse.Namespace, task, pool_tokens: np.ndarray):
    """``--n-eval`` generated puzzles none of which is in the training pool."""
    puzzles = task.generate(args.n_eval + 50, seed=args.eval_seed, difficulty=args.difficulty)
    seen = {row.tobytes() for row in pool_tokens}
    fresh = np.array([row.tobytes() not in seen for row in puzzles.tokens])
    return puzzles[np.flatnonzero(fresh)[:args.n_eval]]


def _done(results: str) -> set[tuple[str, int]]:
    if not os.path.exists(results):
        return set()
    with open(results, newline="") as fh:
        return {(r["rung"], int(r["breadth"])) for r in csv.DictReader(fh)}


def _append(results: str, rows: list[dict]) -> None:
    """Append rows with one write to a file opened for appending (two processes may share the results file)."""
    os.makedirs(os.path.dirname(results) or ".", exist_ok=True)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=FIELDS)
    writer.writerows(rows)
    fd = os.open(results, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size == 0:
            os.write(fd, (",".join(FIELDS) + "\r\n").encode())
        os.write(fd, text.getvalue().encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _evaluate(model, puzzles, rung: Rung, breadth: int, depths: list[int], args) -> list[dict]:
    """Per-puzzle outcomes at every depth (one rollout to the deepest; selection by convergence)."""
    cfg = RolloutConfig(depth=max(depths), breadth=breadth, seed=args.seed)
    tok, sol = torch.as_tensor(puzzles.tokens, dtype=torch.long), torch.as_tensor(puzzles.solution)
    rows = []
    for start in range(0, len(puzzles), args.batch_size):
        res = rollout(model, tok[start:start + args.batch_size], sol[start:start + args.batch_size], cfg)
        for d in depths if breadth == 1 else depths[-1:]:
            correct = res.correct[:, :, d - 1]
            score = convergence_score(res.logit_change[:, :, :d], np.full(correct.shape, d), args.window)
            pick = select_lowest_score(score)
            chosen = correct[np.arange(len(correct)), pick]
            cells = res.token_accuracy[np.arange(len(correct)), pick, d - 1]
            for i in range(len(correct)):
                rows.append({"rung": rung.name, "puzzle": start + i, "breadth": breadth, "depth": d,
                             "correct": int(correct[i].any()), "selected_correct": int(chosen[i]),
                             "token_accuracy": f"{cells[i]:.4f}"})
    return rows


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    wanted = args.rungs.split(",") if args.rungs else [r.name for r in RUNGS]
    unknown = set(wanted) - {r.name for r in RUNGS}
    if unknown:
        names = ", ".join(r.name for r in RUNGS)
        raise SystemExit(f"unknown rungs: {', '.join(sorted(unknown))} (choose from {names})")
    depths = [int(d) for d in args.depths.split(",")]
    os.makedirs(args.dir, exist_ok=True)
    for rung in RUNGS:
        if rung.name not in wanted:
            continue
        cfg = train.TrainConfig.from_preset(args.preset, seed=args.seed, eval_depths=(1, min(16, max(depths))),
                                            n_eval=min(50, args.n_eval),
                                            **{k: v for k, v in (("steps", args.steps), ("n_train", args.n_train))
                                               if v}, **rung.overrides)
        out = os.path.join(args.dir, f"{rung.name}.pt")
        resume = os.path.exists(out)
        t0 = time.time()
        if not (resume and checkpoint.read(out)["train_state"]["step"] >= cfg.steps):
            print(f"[{rung.name}] training {cfg.steps} steps ({'resumed' if resume else 'new'}): {rung.adds}",
                  flush=True)
            train.train(cfg, out, device="cpu", resume=resume, progress=args.progress,
                        steps=cfg.steps if resume else None)
        model = checkpoint.load(out)
        pool, _ = train.load_data(cfg)
        puzzles = _eval_puzzles(args, get_task(cfg.model.task), pool.tokens)
        done = _done(args.results)
        breadths = [1] + ([args.breadth] if args.breadth > 1 and cfg.model.initial_state == "random" else [])
        for b in breadths:
            if (rung.name, b) in done:
                continue
            _append(args.results, _evaluate(model, puzzles, rung, b, depths, args))
        print(f"[{rung.name}] done in {time.time() - t0:.0f} s", flush=True)
    table(args)


def table(args: argparse.Namespace) -> None:
    if not os.path.exists(args.results):
        raise SystemExit(f"{args.results} does not exist yet: run `bench_ablation.py run` first")
    with open(args.results, newline="") as fh:
        rows = list(csv.DictReader(fh))
    depths = sorted({int(r["depth"]) for r in rows if r["breadth"] == "1"})
    wide = sorted({int(r["breadth"]) for r in rows} - {1})
    head = f"{'rung':<12} {'adds':<46}" + "".join(f" {'D' + str(d):>12}" for d in depths)
    head += f" {'cells D' + str(depths[-1]):>9}"
    head += "".join(f" {f'D{depths[-1]} B{b} sel':>13} {'pass@' + str(b):>7}" for b in wide) + f" {'paper':>6}"
    print(head)
    for rung in RUNGS:
        mine = [r for r in rows if r["rung"] == rung.name]
        if not mine:
            continue
        line = f"{rung.name:<12} {rung.adds[:46]:<46}"
        for d in depths:
            hits = np.array([int(r["correct"]) for r in mine if r["breadth"] == "1" and int(r["depth"]) == d])
            line += f" {_pct(hits):>12}"
        cells = [float(r["token_accuracy"]) for r in mine if r["breadth"] == "1" and int(r["depth"]) == depths[-1]]
        line += f" {np.mean(cells):>9.3f}" if cells else f" {'-':>9}"
        for b in wide:
            sel = np.array([int(r["selected_correct"]) for r in mine if int(r["breadth"]) == b])
            anyb = np.array([int(r["correct"]) for r in mine if int(r["breadth"]) == b])
            line += f" {_pct(sel):>13} {_pct(anyb, ci=False):>7}" if sel.size else f" {'-':>13} {'-':>7}"
        print(line + f" {rung.paper:>6.1f}")
    n = len({r["puzzle"] for r in rows})
    print(f"{n} unseen puzzles; ours: exact accuracy % (+- 95% Wilson half-width), cells: mean fraction of cells "
          "right (breadth 1, deepest depth); paper: Sudoku-Extreme accuracy %, full-size models")


def _pct(hits: np.ndarray, ci: bool = True) -> str:
    """Accuracy in %, with the half-width of the 95% Wilson interval."""
    if hits.size == 0:
        return "-"
    n, p, z = hits.size, hits.mean(), 1.96
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return f"{100 * p:.1f}+-{100 * half:.1f}" if ci else f"{100 * p:.1f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["run", "table"])
    p.add_argument("--rungs", help="comma-separated rung names (default: all)")
    p.add_argument("--preset", default="tiny", help="training budget every rung shares")
    p.add_argument("--steps", type=int, help="optimizer steps per rung (default: the preset's)")
    p.add_argument("--n-train", type=int, help="training pool size (default: the preset's)")
    p.add_argument("--seed", type=int, default=0, help="training and rollout seed")
    p.add_argument("--difficulty", default="singles",
                   help="difficulty of the evaluation puzzles (default singles: what a CPU-budget model can solve)")
    p.add_argument("--n-eval", type=int, default=300, help="unseen evaluation puzzles")
    p.add_argument("--eval-seed", type=int, default=2026, help="generator seed of the evaluation puzzles")
    p.add_argument("--depths", default="1,4,16,64", help="evaluation depths")
    p.add_argument("--breadth", type=int, default=8, help="restarts at the deepest depth (random-start rungs)")
    p.add_argument("--window", type=int, default=3, help="steps of the convergence score used for selection")
    p.add_argument("--batch-size", type=int, default=100, help="puzzles per rollout batch")
    p.add_argument("--dir", default="runs/ablation", help="the rungs' checkpoints")
    p.add_argument("--results", default="benchmarks/results/ablation_outcomes.csv", help="per-puzzle outcomes")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no training progress bar")
    args = p.parse_args(argv)
    run(args) if args.command == "run" else table(args)


if __name__ == "__main__":
    tune_cpu_memory(rerun=True)  # as the CLI runs
    main()
