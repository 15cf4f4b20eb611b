"""Polishing recorded end states to their fixed points: the cost of each solve setting and whether it decides alike.

    .venv/bin/python benchmarks/bench_polish.py --n 6 --difficulty search --depth 8 --breadth 8 --threads 1

Rolls the shipped model (or ``--checkpoint``) out with path noise, then polishes every puzzle's end states
noise-free with three settings of :func:`attractorlab.dynamics.polish`, side by side in one process:

- ``refine``: the float64 refinement of the points (``refine=True``, the behaviour before it became optional);
- ``default``: the solve in the working dtype (``polish``'s defaults, used by the ``end_states`` analysis);
- ``selection``: the bounded solve of the attractor-aware selection (``rollout.ATTRACTOR_SOLVE``).

For each: the wall time over all puzzles, its speed-up against ``refine``, and how often it agrees with ``refine``
on whether each end state sits at an attractor and on the restart :func:`attractorlab.dynamics.select_attractor`
chooses (the convergence score as fallback).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from attractorlab import checkpoint, dynamics
from attractorlab.cli import DEFAULT_CHECKPOINT
from attractorlab.rollout import ATTRACTOR_SOLVE, RolloutConfig, convergence_score, rollout
from attractorlab.tasks import get_task

SETTINGS = {"refine": {"tol": 1e-4, "refine": True}, "default": {"tol": 1e-4}, "selection": ATTRACTOR_SOLVE}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="model whose end states are polished")
    p.add_argument("--n", type=int, default=6, help="generated puzzles")
    p.add_argument("--difficulty", default="search", help="difficulty of the generated puzzles")
    p.add_argument("--depth", type=int, default=8, help="outer steps before the end states are taken")
    p.add_argument("--breadth", type=int, default=8, help="restarts per puzzle")
    p.add_argument("--seed", type=int, default=0, help="seed of the puzzles and the rollout")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = checkpoint.load(args.checkpoint).requires_grad_(False)
    puzzles = get_task(model.config.task).generate(args.n, seed=args.seed, difficulty=args.difficulty)
    tokens = torch.as_tensor(puzzles.tokens, dtype=torch.long)
    cfg = RolloutConfig(depth=args.depth, breadth=args.breadth, seed=args.seed)
    res = rollout(model, tokens, torch.as_tensor(puzzles.solution), cfg, states="final", state_fn=lambda s: s.flatten())
    ends = torch.as_tensor(res.states[:, :, 0])  # [n, B, d]
    score = np.nan_to_num(convergence_score(res.logit_change, res.steps, cfg.window), nan=np.inf)
    seconds = dict.fromkeys(SETTINGS, 0.0)
    stable = {name: [] for name in SETTINGS}
    chosen = {name: [] for name in SETTINGS}
    for i in range(args.n):
        f = model.as_map(tokens[i : i + 1])
        for name, kwargs in SETTINGS.items():
            t0 = time.perf_counter()
            polished = dynamics.polish(f, ends[i], **kwargs)
            seconds[name] += time.perf_counter() - t0
            stable[name].append(polished.stable.numpy())
            chosen[name].append(dynamics.select_attractor(polished, score[i]))
    print(f"{args.n} {args.difficulty} puzzles x {args.breadth} end states after {args.depth} noisy outer steps "
          f"({torch.get_num_threads()} threads)")
    print(f"{'setting':<10} {'seconds':>8} {'speed-up':>9} {'same stable flag':>17} {'same choice':>12}")
    ref_stable, ref_choice = np.concatenate(stable["refine"]), np.array(chosen["refine"])
    for name in SETTINGS:
        same_flag = (np.concatenate(stable[name]) == ref_stable).mean()
        same_choice = (np.array(chosen[name]) == ref_choice).mean()
        print(f"{name:<10} {seconds[name]:>8.1f} {seconds['refine'] / seconds[name]:>8.2f}x {same_flag:>17.3f} "
              f"{same_choice:>12.3f}")


if __name__ == "__main__":
    main()
