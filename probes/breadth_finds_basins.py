"""Probe: does breadth help by finding other basins?

Each random restart of a puzzle falls into some basin. With the first b of B recorded restarts, this probe
counts per puzzle the distinct answers the readout ends on (attractors as the readout sees them), whether any
of them is the solution (pass@b, a perfect verifier) and whether the label-free selection rule picks it
(lowest convergence score). With ``--checkpoint`` it also counts distinct latent attractors: B noise-free
restarts per puzzle are rolled out and their ends polished by ``find_fixed_points``, so two restarts that read
out the same grid from different fixed points count twice. If pass@b rises with b while the number of distinct
answers grows, breadth pays by reaching other basins, not by re-sampling the same one.

    python probes/breadth_finds_basins.py --run trajectories/run.h5 [--checkpoint model.pt] --out-dir probes/out
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch
from plotly.subplots import make_subplots

from attractorlab import checkpoint, dynamics, recording
from attractorlab.model import LatentState
from attractorlab.rollout import RolloutConfig, convergence_score, rollout, select_lowest_score


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="run file recorded with breadth > 1")
    p.add_argument("--out-dir", default=".", help="folder for the figure (breadth_finds_basins.html)")
    p.add_argument("--checkpoint", help="also count distinct latent attractors with this model (slower)")
    p.add_argument("--n-puzzles", type=int, default=16, help="puzzles for the latent attractor count")
    p.add_argument("--max-steps", type=int, default=64, help="outer steps of the noise-free restarts")
    p.add_argument("--device", default="cpu", help="torch device for --checkpoint")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise-free restarts")
    return p


def distinct(labels: np.ndarray, b: int) -> float:
    """Mean number of distinct rows among the first b restarts: labels [n, B, ...] -> float."""
    return float(np.mean([len(np.unique(x[:b].reshape(b, -1), axis=0)) for x in labels]))


def distinct_attractors(attractor: np.ndarray, b: int) -> float:
    """Mean number of distinct attractors (index >= 0) among the first b restarts: [n, B] -> float."""
    return float(np.mean([len(set(a[:b].tolist()) - {-1}) for a in attractor]))


def latent_attractors(args: argparse.Namespace, tokens: np.ndarray, breadth: int) -> np.ndarray:
    """[n, B] index of the stable fixed point each noise-free restart converges to (-1: none)."""
    model = checkpoint.load(args.checkpoint, args.device).requires_grad_(False)  # analysis only
    out = np.full((len(tokens), breadth), -1)
    for k, puzzle in enumerate(tokens):
        tok = torch.as_tensor(puzzle[None], dtype=torch.long, device=model.device)
        cfg = RolloutConfig(depth=args.max_steps, breadth=breadth, noise=False, seed=args.seed + k)
        ends = rollout(model, tok, None, cfg, states="final", state_fn=LatentState.flatten).states[0, :, 0]
        fps = dynamics.find_fixed_points(model.as_map(tok), torch.as_tensor(ends, device=model.device), k=0)
        assignment = fps.assignment.cpu().numpy()
        stable = np.append(fps.stable.cpu().numpy(), False)  # index -1 (no fixed point) -> False
        out[k] = np.where(stable[assignment], assignment, -1)
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with recording.open_run(args.run) as run:
        r, B, n = run.rollout, run.breadth, run.n
        final_pred = r.lazy("pred")[:, :, -1]  # [n, B, 81] (entries after halting repeat the last)
        final_correct = r.lazy("correct")[:, :, -1]
        score = convergence_score(r.logit_change, r.steps)
        tokens = run.puzzles.tokens[: args.n_puzzles]
    breadths = sorted({b for b in (1, 2, 4, 8, 16, 32, 64, 128) if b <= B} | {B})
    rows = np.arange(n)
    table = {"distinct answers": [distinct(final_pred, b) for b in breadths],
             "pass@b": [final_correct[:, :b].any(axis=1).mean() for b in breadths],
             "selected accuracy": [final_correct[rows, select_lowest_score(score[:, :b])].mean() for b in breadths]}
    if args.checkpoint:
        attractor = latent_attractors(args, tokens, B)
        table["distinct attractors"] = [distinct_attractors(attractor, b) for b in breadths]
        table["no attractor reached"] = [(attractor[:, :b] < 0).mean() for b in breadths]

    print(f"{n} puzzles, breadth up to {B}" + (f"; latent attractors on {len(tokens)} puzzles" if args.checkpoint
                                               else ""))
    print(f"{'b':>4} " + " ".join(f"{name:>20}" for name in table))
    for i, b in enumerate(breadths):
        print(f"{b:>4} " + " ".join(f"{values[i]:>20.3f}" for values in table.values()))

    fig = make_subplots(rows=1, cols=2, subplot_titles=("Basins reached per puzzle", "Accuracy"))
    for name, values in table.items():
        col = 2 if name in ("pass@b", "selected accuracy") else 1
        fig.add_scatter(x=breadths, y=values, name=name, mode="lines+markers", row=1, col=col)
    fig.update_xaxes(title_text="breadth b (random restarts)", type="log")
    fig.update_yaxes(title_text="mean count (fraction for 'no attractor')", row=1, col=1)
    fig.update_yaxes(title_text="fraction of puzzles", range=[0, 1.02], row=1, col=2)
    fig.update_layout(title="Does breadth help by finding other basins?", template="plotly_white")
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, "breadth_finds_basins.html")
    fig.write_html(path, include_plotlyjs=True)
    print(f"figure: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
