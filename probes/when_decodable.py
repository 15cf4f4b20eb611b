"""Probe: when does the answer become linearly decodable, and how long before the readout commits to it?

A linear probe (``attractorlab.probing.probe_cells``, cross-validated over puzzles) decodes each blank cell's
solution digit from that cell's recorded latent state at every recorded step. The model's own readout is
followed on the same trajectories: the step from which each cell's readout digit no longer changes (commit)
and from which it is correct for good. If the probe reaches its accuracy long before the readout does, the
answer is present in the state before the dynamics settle on it.

    python probes/when_decodable.py --run trajectories/run.h5 --out-dir probes/out

The run needs states at every recorded step: ``attractorlab solve ... --states all [--project K]``.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import plotly.graph_objects as go

from attractorlab import probing, recording


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="run file recorded with --states all")
    p.add_argument("--out-dir", default=".", help="folder for the figure (when_decodable.html)")
    p.add_argument("--max-puzzles", type=int, default=200, help="puzzles used (the first ones in the file)")
    p.add_argument("--restart", type=int, default=0, help="which restart's trajectory to probe")
    p.add_argument("--level", type=float, default=0.9,
                   help="'reached' means this fraction of the curve's final gain over chance accuracy")
    p.add_argument("--seed", type=int, default=0, help="seed of the probes' folds and subsampling")
    return p


def first_reached(steps: np.ndarray, curve: np.ndarray, level: float, chance: float) -> float:
    """First step where ``curve`` has gained ``level`` of its final gain over chance (NaN: it never rises)."""
    gain = curve - chance
    hit = np.flatnonzero(gain >= level * gain[-1])
    return float(steps[hit[0]]) if hit.size and gain[-1] > 0 else float("nan")


def settled_from(agree: np.ndarray) -> np.ndarray:
    """``agree [n, T, 81]`` -> first outer step (1-based) from which ``agree`` holds to the end; T + 1 if never."""
    suffix = np.flip(np.logical_and.accumulate(np.flip(agree, 1), axis=1), 1)
    return agree.shape[1] - suffix.sum(axis=1) + 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with recording.open_run(args.run) as run:
        if run.states is None or run.states.mode != "all":
            print(f"{args.run}: needs states at every recorded step (solve with --states all)", file=sys.stderr)
            return 2
        if not 0 <= args.restart < run.breadth:
            print(f"--restart must be in [0, {run.breadth})", file=sys.stderr)
            return 2
        n = min(run.n, args.max_puzzles)
        full = run.states.data.ndim == 6  # [N, B, S, 2, 81, D]: probe z_H; projected runs hold [N, B, S, 81, k]
        data = run.states.data[:n, args.restart, :, 0] if full else run.states.data[:n, args.restart]
        cells = np.asarray(data, np.float32)  # [n, S, 81, h]
        state_steps = np.asarray(run.states.steps)
        tokens, solution = run.puzzles.tokens[:n], run.puzzles.solution[:n]
        pred = run.rollout.lazy("pred")[:n, args.restart]  # [n, T, 81]
    blank = (tokens == 1) & (solution > 0)
    if not blank.any():
        print(f"{args.run}: no blank cell with a known solution", file=sys.stderr)
        return 2
    probe = probing.probe_cells(cells, np.where(blank, solution, 0), seed=args.seed)

    T = pred.shape[1]
    readout_acc = np.array([(pred[:, t - 1] == solution)[blank].mean() if t else np.nan for t in state_steps])
    commit = settled_from(pred == pred[:, -1:])[blank]
    ends_correct = (pred[:, -1] == solution)[blank]
    correct_from = settled_from(pred == solution[:, None])[blank][ends_correct]
    committed = np.array([(commit <= t).mean() for t in state_steps])

    print(f"{n} puzzles, restart {args.restart}, {int(blank.sum())} blank cells, probe chance {probe.chance:.3f}")
    print(f"{'step':>5} {'probe acc':>14} {'readout acc':>12} {'committed':>10}")
    for i, t in enumerate(state_steps):
        ro = "-" if t == 0 else f"{readout_acc[i]:.3f}"
        print(f"{t:>5} {probe.accuracy_mean[i]:>8.3f} ±{probe.accuracy_std[i]:.3f} {ro:>12} {committed[i]:>10.3f}")
    decodable = first_reached(state_steps, probe.accuracy_mean, args.level, probe.chance)
    readable = first_reached(state_steps[1:], readout_acc[1:], args.level, probe.chance)
    median_commit = float(np.median(commit)) if commit.size else float("nan")
    median_correct = float(np.median(correct_from)) if correct_from.size else float("nan")
    print(f"probe reaches {args.level:.0%} of its final gain over chance at step {decodable:g}; "
          f"readout at step {readable:g} (lead {readable - decodable:g} steps)")
    print(f"readout commits (median over blank cells) at step {median_commit:g} of {T}; cells that end correct "
          f"are correct for good from step {median_correct:g} ({ends_correct.mean():.1%} of cells end correct)")

    fig = go.Figure()
    band = np.concatenate([probe.accuracy_mean + probe.accuracy_std, (probe.accuracy_mean - probe.accuracy_std)[::-1]])
    fig.add_scatter(x=np.concatenate([state_steps, state_steps[::-1]]), y=band, fill="toself", line_width=0,
                    fillcolor="rgba(31,119,180,0.2)", hoverinfo="skip", showlegend=False)
    fig.add_scatter(x=state_steps, y=probe.accuracy_mean, name="linear probe accuracy", mode="lines+markers")
    fig.add_scatter(x=state_steps[1:], y=readout_acc[1:], name="readout accuracy", mode="lines+markers")
    fig.add_scatter(x=state_steps, y=committed, name="readout committed", mode="lines+markers", line_dash="dot")
    fig.add_hline(y=probe.chance, line_dash="dash", line_color="grey", annotation_text="chance")
    fig.update_layout(title="When is the answer decodable? (blank cells)", xaxis_title="outer step",
                      yaxis_title="fraction of blank cells", yaxis_range=[0, 1.02], template="plotly_white")
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, "when_decodable.html")
    fig.write_html(path, include_plotlyjs=True)
    print(f"figure: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
