"""Probe: do random initial states and path noise turn the solution into an attractor with a large basin?

For each model (e.g. the ``trm`` and ``eqr`` rungs of ``benchmarks/bench_ablation.py``) on the same generated
puzzles: noise-free rollouts from ``--restarts`` random initial states end near attractors, which
``find_fixed_points`` polishes and labels by their read-out (correct / spurious valid / invalid); the fraction of
restarts that end at a stable fixed point, the number of distinct attractors per puzzle, the basin stability of
the correct attractor (``--samples`` fresh initial states iterated to their attractor) and the spectral radius at
correct and at spurious attractors. Then accuracy against depth, past the training depth (does a model degrade
when it thinks longer than it was trained to?). Every fixed-start model is measured twice, the second time with
path noise of ``--test-noise`` added at test time: its restarts and basin samples then run ``--max-steps`` noisy
outer steps, and the attractor each belongs to is the one its noise-free continuation reaches. Restarts of a
fixed-start model (TRM) are drawn as the reference evaluation draws them: a zero-mean truncated normal of std
``--restart-std``.

    python probes/trm_vs_eqr_attractors.py --checkpoints runs/ablation/trm.pt runs/ablation/eqr.pt --out-dir probes/out
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import numpy as np
import plotly.graph_objects as go
import torch

from attractorlab import checkpoint, recording
from attractorlab.attractors import attractor_landscape
from attractorlab.model import EquilibriumReasoner
from attractorlab.rollout import RolloutConfig, rollout
from attractorlab.tasks import PuzzleSet, get_task


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoints", nargs="+", required=True, help="models to compare (same task)")
    p.add_argument("--names", nargs="+", help="a label per checkpoint (default: its family and file name)")
    p.add_argument("--out-dir", default=".", help="folder for the figure (trm_vs_eqr_attractors.html)")
    p.add_argument("--run", help="take the puzzles from this run file (default: generate them)")
    p.add_argument("--n-puzzles", type=int, default=12, help="puzzles for the landscape, the same for every model")
    p.add_argument("--difficulty", default="singles", help="generator difficulty of the puzzles")
    p.add_argument("--restarts", type=int, default=8, help="rollout ends per puzzle used to find attractors")
    p.add_argument("--samples", type=int, default=32, help="initial states per puzzle for basin stability")
    p.add_argument("--max-steps", type=int, default=64, help="outer steps for rollouts and basin iterations")
    p.add_argument("--depths", default="1,4,8,16,64,256", help="depths of the accuracy-against-depth curve")
    p.add_argument("--n-depth", type=int, default=200, help="puzzles for the accuracy-against-depth curve")
    p.add_argument("--test-noise", type=float, default=0.01,
                   help="path noise added at test time to fixed-start models (0 = skip that comparison)")
    p.add_argument("--restart-std", type=float, default=1.0, help="restart std of fixed-start models")
    p.add_argument("--seed", type=int, default=0, help="seed of the puzzles and initial states")
    return p


def landscape(model: EquilibriumReasoner, puzzles: PuzzleSet, args: argparse.Namespace,
              noise: bool = False) -> dict[str, np.ndarray]:
    """Per-puzzle :func:`attractorlab.attractors.attractor_landscape` values (radii pooled over puzzles); ``noise``:
    restarts and basin samples run with the model's path noise before their noise-free continuation."""
    lands = [attractor_landscape(model, puzzles.tokens[i], puzzles.solution[i], restarts=args.restarts,
                                 samples=args.samples, max_steps=args.max_steps, seed=args.seed + i,
                                 restart_std=args.restart_std, noise=noise) for i in range(len(puzzles))]
    return {"restarts at a stable fixed point": np.array([x.at_stable for x in lands]),
            "distinct attractors per puzzle": np.array([x.attractors for x in lands]),
            "correct attractor found": np.array([x.correct_found for x in lands]),
            "basin stability of the correct attractor": np.array([x.correct_basin for x in lands]),
            "spectral radius, correct attractors": np.concatenate([x.radius_correct for x in lands]),
            "spectral radius, spurious attractors": np.concatenate([x.radius_spurious for x in lands])}


def accuracy_by_depth(model: EquilibriumReasoner, puzzles: PuzzleSet, depths: list[int], seed: int) -> np.ndarray:
    """``[len(depths)]`` exact accuracy at breadth 1, path noise as the model is configured."""
    res = rollout(model, torch.as_tensor(puzzles.tokens, dtype=torch.long), torch.as_tensor(puzzles.solution),
                  RolloutConfig(depth=max(depths), breadth=1, seed=seed))
    return np.array([res.correct[:, 0, d - 1].mean() for d in depths])


def with_noise(model: EquilibriumReasoner, noise: float) -> EquilibriumReasoner:
    """The same weights with path noise ``noise`` at test time."""
    noisy = EquilibriumReasoner(dataclasses.replace(model.config, noise_scale=noise))
    noisy.load_state_dict(model.state_dict())
    return noisy.eval()


def _mean(x: np.ndarray) -> str:
    x = np.asarray(x, float)
    if x.size == 0:
        return "-"
    se = x.std(ddof=1) / np.sqrt(x.size) if x.size > 1 else float("nan")
    return f"{x.mean():.3f} +- {se:.3f}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = args.names or [None] * len(args.checkpoints)
    if len(names) != len(args.checkpoints):
        print("error: give one --names entry per checkpoint", file=sys.stderr)
        return 2
    try:
        models = [checkpoint.load(p) for p in args.checkpoints]
    except checkpoint.CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    tasks = {m.config.task for m in models}
    if len(tasks) != 1:
        print(f"error: the checkpoints solve different tasks ({', '.join(sorted(tasks))})", file=sys.stderr)
        return 2
    task = get_task(tasks.pop())
    depths = [int(d) for d in args.depths.split(",")]
    if args.run:
        with recording.open_run(args.run) as run:
            t = run.puzzles
            puzzles = PuzzleSet(t.tokens[:], t.solution[:], t.source[:], t.rating[:])
    else:
        puzzles = task.generate(max(args.n_puzzles, args.n_depth), seed=args.seed + 4242, difficulty=args.difficulty)
    labels = [n or f"{m.config.family.upper()} ({os.path.basename(p)})"
              for n, m, p in zip(names, models, args.checkpoints, strict=True)]
    rows: dict[str, list[str]] = {}
    curves: dict[str, np.ndarray] = {}
    columns = []
    for label, model in zip(labels, models, strict=True):
        variants = [(label, model, False)]
        if model.config.initial_state == "fixed" and args.test_noise > 0:
            variants.append((f"{label} + test-time noise {args.test_noise}", with_noise(model, args.test_noise), True))
        for name, variant, noisy in variants:
            columns.append(name)
            for key, value in landscape(variant, puzzles[:args.n_puzzles], args, noise=noisy).items():
                rows.setdefault(key, []).append(_mean(value))
            curves[name] = accuracy_by_depth(variant, puzzles[:args.n_depth], depths, args.seed)
    width = max(len(k) for k in rows) + 2
    source = args.run or f"generated {args.difficulty}"
    print(f"{min(args.n_puzzles, len(puzzles))} puzzles ({source}), {args.restarts} restarts, {args.samples} basin "
          "samples (mean +- standard error over puzzles; spectral radii pooled over attractors; a test-time noise "
          "column: restarts and basin samples run with that path noise, then continue noise-free)")
    print(" " * width + "".join(f"{lab[:28]:>30}" for lab in columns))
    for key, values in rows.items():
        print(f"{key:<{width}}" + "".join(f"{v:>30}" for v in values))
    train_depth = {lab: m.config.halt_max_steps for lab, m in zip(labels, models, strict=True)}
    print(f"\naccuracy against depth ({min(args.n_depth, len(puzzles))} puzzles, breadth 1; training depth "
          f"{', '.join(f'{k}: {v}' for k, v in train_depth.items())})")
    print(f"{'':<{width}}" + "".join(f"{'D' + str(d):>8}" for d in depths))
    for label, acc in curves.items():
        print(f"{label[:width - 1]:<{width}}" + "".join(f"{a:>8.3f}" for a in acc))
    fig = go.Figure([go.Scatter(x=depths, y=acc, mode="lines+markers", name=label) for label, acc in curves.items()])
    fig.update_layout(title="Accuracy against depth", xaxis=dict(title="outer steps", type="log"),
                      yaxis=dict(title="exact accuracy", range=[0, 1]))
    os.makedirs(args.out_dir, exist_ok=True)
    out = os.path.join(args.out_dir, "trm_vs_eqr_attractors.html")
    fig.write_html(out, include_plotlyjs=True)
    print(f"figure: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
