"""Probe: how large is the basin of the correct attractor, and does it shrink with puzzle difficulty?

For each sampled puzzle of a run file: noise-free rollouts from random initial states end near attractors;
``find_fixed_points`` polishes those ends into fixed points, whose readout says which is the solution;
``basin_stability`` then iterates fresh initial states drawn from the model's own initial-state distribution
and counts the share that lands on each stable fixed point. The correct attractor's share (its basin
stability, 0 when no correct attractor was found) is compared across the rating bands of the puzzles and
rank-correlated with the rating.

    python probes/basin_size_vs_difficulty.py --run trajectories/run.h5 --checkpoint model.pt --out-dir probes/out
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import plotly.graph_objects as go
import torch
from scipy.stats import spearmanr

from attractorlab import checkpoint, dynamics, recording
from attractorlab.attractors import puzzle_attractors
from attractorlab.tasks import get_task


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="run file whose puzzles (and ratings) are used")
    p.add_argument("--checkpoint", required=True, help="the model (the one the run was made with)")
    p.add_argument("--out-dir", default=".", help="folder for the figure (basin_size_vs_difficulty.html)")
    p.add_argument("--n-puzzles", type=int, default=12, help="puzzles sampled from the run")
    p.add_argument("--restarts", type=int, default=8, help="rollout ends per puzzle used to find attractors")
    p.add_argument("--samples", type=int, default=64, help="initial states per puzzle for basin stability")
    p.add_argument("--max-steps", type=int, default=64, help="outer steps for rollouts and basin iterations")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--seed", type=int, default=0, help="seed of the puzzle sample and the initial states")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model = checkpoint.load(args.checkpoint, args.device).requires_grad_(False)  # analysis only
    c = model.config
    rng = np.random.default_rng(args.seed)
    with recording.open_run(args.run) as run:
        idx = np.sort(rng.choice(run.n, min(args.n_puzzles, run.n), replace=False))
        tokens, solution, rating = run.puzzles.tokens[idx], run.puzzles.solution[idx], run.puzzles.rating[idx]
    rows = []
    for k in range(len(idx)):
        tok = torch.as_tensor(tokens[k][None], dtype=torch.long, device=model.device)
        f = model.as_map(tok)
        found = puzzle_attractors(model, tokens[k], solution[k], restarts=args.restarts,
                                  max_steps=args.max_steps, seed=args.seed + k, k=0)
        stable = found.stable
        attractors = found.fixed.z[torch.as_tensor(stable)].to(torch.float32)
        is_correct = found.label[stable] == 0
        gen = torch.Generator(device=model.device).manual_seed(args.seed + 1000 + k)
        samples = model.init_state(tok.expand(args.samples, -1), generator=gen).flatten()
        stats = dynamics.basin_stability(f, attractors, samples, max_steps=args.max_steps)
        fraction = stats.fraction.cpu().numpy()
        share = float(fraction[is_correct].sum())
        rows.append((share, float(np.sqrt(share * (1 - share) / args.samples)), len(attractors),
                     int(is_correct.sum()), stats.unassigned))
    share, stderr, n_att, n_correct, unassigned = (np.array(col) for col in zip(*rows, strict=True))
    bands = get_task(c.task).difficulty_band(rating)

    print(f"{len(idx)} puzzles, {args.samples} initial states each, {args.restarts} rollout ends for attractors")
    print(f"{'puzzle':>6} {'rating':>6} {'band':<8} {'attractors':>10} {'correct':>7} {'basin(correct)':>16} "
          f"{'unassigned':>10}")
    for k in range(len(idx)):
        print(f"{idx[k]:>6} {rating[k]:>6} {bands[k]:<8} {n_att[k]:>10} {n_correct[k]:>7} "
              f"{share[k]:>9.3f} ±{stderr[k]:.3f} {unassigned[k]:>10.3f}")
    print(f"{'band':<8} {'puzzles':>7} {'mean basin(correct)':>20} {'found correct':>13}")
    for band in np.unique(bands):
        m = bands == band
        print(f"{band:<8} {m.sum():>7} {share[m].mean():>20.3f} {(n_correct[m] > 0).mean():>13.0%}")
    if len(idx) >= 3 and np.ptp(share) > 0 and np.ptp(rating) > 0:
        rho = spearmanr(rating, share)
        print(f"Spearman rho(rating, basin of the correct attractor) = {rho.statistic:.3f} (p = {rho.pvalue:.3g})")
    else:
        print("Spearman rho undefined (fewer than 3 puzzles, or constant rating or basin size)")

    fig = go.Figure()
    for band in np.unique(bands):
        m = bands == band
        fig.add_scatter(x=rating[m], y=share[m], error_y={"array": stderr[m]}, mode="markers", name=str(band),
                        marker_size=10, text=[f"puzzle {i}" for i in idx[m]])
    fig.update_layout(title="Basin stability of the correct attractor vs difficulty", xaxis_title="rating",
                      yaxis_title="share of initial states reaching the solution", yaxis_range=[-0.02, 1.02],
                      template="plotly_white")
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, "basin_size_vs_difficulty.html")
    fig.write_html(path, include_plotlyjs=True)
    print(f"figure: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
