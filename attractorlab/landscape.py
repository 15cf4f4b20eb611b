"""The attractor landscape across training: the same puzzles' attractors in every checkpoint of a run, matched
from checkpoint to checkpoint, with births, deaths, stability and basin sizes against the training step.

Checkpoints are the snapshots ``train --snapshot-every`` keeps (or any checkpoints of one task). In each, every
puzzle's stable fixed points come from :func:`attractorlab.attractors.attractor_landscape` (noise-free restarts,
fixed points, basin stability from fresh initial states). Attractors of consecutive checkpoints are matched by
their read-out answer (the weights, and with them the latent coordinates, change between checkpoints; the answer
is what identifies an attractor for the task), so an answer's attractor is *born* at the first checkpoint where it
is found and *dies* when a later checkpoint no longer has it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from attractorlab import checkpoint
from attractorlab.attractors import attractor_landscape
from attractorlab.errors import InputError
from attractorlab.rollout import RolloutConfig, rollout
from attractorlab.tasks import PuzzleSet


@dataclass
class LandscapeTrack:
    """``C`` checkpoints x ``N`` puzzles.

    steps: [C] training step of each checkpoint; accuracy: [C] exact accuracy of the puzzles (breadth 1, depth
    ``depth``); attractors: [C, N] stable attractors found; correct_found: [C, N] bool; correct_basin: [C, N];
    correct_radius: [C, N] spectral radius of the correct attractor (NaN where none); births, deaths: [C] how many
    (puzzle, answer) attractors appear / disappear at each checkpoint (births at the first checkpoint count all);
    correct_birth: [N] step at which the correct attractor was first found (-1: never).
    """

    steps: np.ndarray
    accuracy: np.ndarray
    attractors: np.ndarray
    correct_found: np.ndarray
    correct_basin: np.ndarray
    correct_radius: np.ndarray
    births: np.ndarray
    deaths: np.ndarray
    correct_birth: np.ndarray

    def table(self) -> str:
        lines = [f"{'step':>8} {'accuracy':>9} {'attractors':>11} {'correct found':>14} {'correct basin':>14} "
                 f"{'radius (correct)':>17} {'births':>7} {'deaths':>7}"]
        for c, step in enumerate(self.steps):
            radius = self.correct_radius[c]
            r = f"{np.nanmean(radius):.3f}" if np.isfinite(radius).any() else "-"
            lines.append(f"{int(step):>8} {self.accuracy[c]:>9.3f} {self.attractors[c].mean():>11.2f} "
                         f"{self.correct_found[c].mean():>14.2f} {self.correct_basin[c].mean():>14.3f} {r:>17} "
                         f"{int(self.births[c]):>7} {int(self.deaths[c]):>7}")
        return "\n".join(lines)


def checkpoint_step(path: str | os.PathLike) -> int:
    """The training step a checkpoint records (``meta.step``)."""
    meta = checkpoint.read(path).get("meta", {})
    if "step" not in meta:
        raise InputError(f"{path} records no training step (use the snapshots `train --snapshot-every` keeps)")
    return int(meta["step"])


def track(paths: list[str | os.PathLike], puzzles: PuzzleSet, *, restarts: int = 8, samples: int = 32,
          max_steps: int = 48, depth: int = 16, seed: int = 0, noise: bool = True,
          device: str = "cpu") -> LandscapeTrack:
    """The landscape of ``puzzles`` in each checkpoint of ``paths`` (sorted by training step); the accuracy column
    runs ``depth`` outer steps with path noise unless ``noise=False``."""
    if not paths:
        raise InputError("give at least one checkpoint")
    for name, value in (("restarts", restarts), ("samples", samples), ("max_steps", max_steps), ("depth", depth)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    step_of = {path: checkpoint_step(path) for path in paths}  # each file's meta read once
    ordered = sorted(paths, key=step_of.__getitem__)
    tasks = set()
    n = len(puzzles)
    rows = {k: [] for k in ("attractors", "found", "basin", "radius", "accuracy")}
    answers: list[list[set[str]]] = []
    for path in ordered:
        model = checkpoint.load(path, device).requires_grad_(False)
        tasks.add(model.config.task)
        if len(tasks) > 1:
            raise InputError(f"the checkpoints solve different tasks ({', '.join(sorted(tasks))})")
        lands = [attractor_landscape(model, puzzles.tokens[i], puzzles.solution[i], restarts=restarts,
                                     samples=samples, max_steps=max_steps, seed=seed + i)
                 for i in range(n)]
        rows["attractors"].append([x.attractors for x in lands])
        rows["found"].append([x.correct_found for x in lands])
        rows["basin"].append([x.correct_basin for x in lands])
        rows["radius"].append([x.radius_correct.min() if x.radius_correct.size else np.nan for x in lands])
        answers.append([set(x.answers.tolist()) for x in lands])
        res = rollout(model, torch.as_tensor(puzzles.tokens, dtype=torch.long), torch.as_tensor(puzzles.solution),
                      RolloutConfig(depth=depth, breadth=1, seed=seed, noise=noise))
        rows["accuracy"].append(float(res.correct[:, 0, -1].mean()))
    steps = np.array([step_of[p] for p in ordered])
    births = np.array([sum(len(a - (answers[c - 1][i] if c else set())) for i, a in enumerate(answers[c]))
                       for c in range(len(ordered))])
    deaths = np.array([0] + [sum(len(answers[c - 1][i] - a) for i, a in enumerate(answers[c]))
                             for c in range(1, len(ordered))])
    found = np.array(rows["found"], bool)
    first = np.where(found.any(0), found.argmax(0), -1)
    return LandscapeTrack(steps=steps, accuracy=np.array(rows["accuracy"]), attractors=np.array(rows["attractors"]),
                          correct_found=found, correct_basin=np.array(rows["basin"]),
                          correct_radius=np.array(rows["radius"], np.float64), births=births, deaths=deaths,
                          correct_birth=np.where(first >= 0, steps[np.clip(first, 0, None)], -1))


def figure(result: LandscapeTrack):
    """Accuracy, correct-attractor share and basin, and mean attractors per puzzle against the training step."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(specs=[[{"secondary_y": True}]])
    x = result.steps
    for y, name in ((result.accuracy, "accuracy"), (result.correct_found.mean(1), "correct attractor found"),
                    (result.correct_basin.mean(1), "basin of the correct attractor")):
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=name), secondary_y=False)
    fig.add_trace(go.Scatter(x=x, y=result.attractors.mean(1), mode="lines+markers", name="attractors per puzzle",
                             line=dict(dash="dot")), secondary_y=True)
    fig.update_layout(title="Attractor landscape across training", template="plotly_white", height=420)
    fig.update_xaxes(title="training step")
    fig.update_yaxes(title="share", range=[0, 1.02], secondary_y=False)
    fig.update_yaxes(title="attractors per puzzle", secondary_y=True)
    return fig
