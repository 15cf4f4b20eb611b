"""Colours, constants, the figure catalogue and the small helpers shared by the report's figure modules."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from attractorlab.recording import Run
from attractorlab.tasks import Task

MAX_TRAJECTORIES = 100
CORRECT, INCORRECT, GREY = "#2ca02c", "#d62728", "#9e9e9e"
LABELS = {0: ("correct", CORRECT), 1: ("spurious (valid answer)", "#ff7f0e"), 2: ("invalid answer", "#9467bd")}
CORRECT_SHADES = ("#2ca02c", "#1b6e1b", "#74c476")
SPURIOUS_COLOURS = ("#ff7f0e", "#d62728", "#9467bd", "#1f77b4", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
TEMPLATE = "plotly_white"
MONO = {"font": {"family": "DejaVu Sans Mono, Menlo, Consolas, monospace", "size": 12}, "align": "left"}


@dataclass(frozen=True)
class FigureInfo:
    """Where a figure goes in the report and what it shows."""

    section: str
    title: str
    caption: str


FIGURES = {
    "summary": FigureInfo("Summary", "Summary", "Overall metrics (left), per difficulty band and per source."),
    "answers": FigureInfo("Summary", "Answers drawn",
                          "The selected restart's final answer over the input, for the first correct and the "
                          "first wrong instances of the run (tasks with pictures, e.g. mazes: the predicted "
                          "path in blue, path cells on walls, start or goal in orange)."),
    "scaling_depth": FigureInfo("Test-time scaling", "Accuracy vs depth",
                                "Accuracy after t outer steps: selected restart vs any restart (oracle)."),
    "scaling_breadth": FigureInfo("Test-time scaling", "Accuracy vs breadth",
                                  "Accuracy with B random restarts: selected restart vs any restart (oracle)."),
    "selection": FigureInfo("Test-time scaling", "Choosing a restart by its attractor",
                            "Accuracy against depth when the restart is chosen by where it ended (the attractor "
                            "most restarts sit at, after a noise-free polish), by the convergence score, or by an "
                            "oracle that knows the answer."),
    "residual_curves": FigureInfo("Convergence vs correctness", "Residual by outcome",
                                  "Relative state change per outer step; lines are medians, bands the "
                                  "inter-quartile range, split by final correctness."),
    "roc": FigureInfo("Convergence vs correctness", "ROC of convergence scores",
                      "How well each convergence score separates correct from incorrect answers."),
    "steps_vs_rating": FigureInfo("Convergence vs correctness", "Steps to settle vs difficulty",
                                  "The outer step after which the selected restart's answer never changes again, "
                                  "against the puzzle's difficulty rating (Spearman rank correlation and how many "
                                  "of the easiest puzzles settle within 5 steps in the title; T + 1 = never)."),
    "halting": FigureInfo("Convergence vs correctness", "Adaptive compute, replayed",
                          "Accuracy against mean outer steps for each halting rule, replayed from the recorded "
                          "run over a sweep of its threshold (no re-run): fixed depth, learned q, latent "
                          "convergence, stable answer."),
    "endings": FigureInfo("Convergence vs correctness", "How rollouts ended", "Count of each end state."),
    "end_states": FigureInfo("Fixed points", "Recorded end states, polished",
                             "Each recorded end state after a few noise-free steps and a fixed-point solve: an "
                             "attractor (by its read-out), an unstable fixed point, or none."),
    "lyapunov": FigureInfo("Fixed points", "Largest Lyapunov exponent of each end state",
                           "Average log stretch rate per noise-free outer step along the orbit from each recorded "
                           "end state (± standard error): below zero the orbit contracts onto a fixed point or a "
                           "stable cycle, near zero it drifts along a neutral direction, above zero it is "
                           "chaotic. Green: the restart's answer was correct."),
    "inner": FigureInfo("Convergence vs correctness", "Inside the outer step",
                        "Median relative change of z_L at each of its updates inside the outer step (x: H-cycle "
                        "and L update), for the first, middle and last recorded outer step: falling along each "
                        "H-cycle, z_L settles while z_H is held."),
    "probes": FigureInfo("Probes", "Probe accuracy vs step",
                         "Cell accuracy of linear label probes per outer step (band: ±1 std over folds; dotted: "
                         "chance, the share of the commoner label)."),
    "trajectories": FigureInfo("Trajectories", "Trajectories",
                               "Lines: trajectories coloured by final correctness; dots: snapshots coloured "
                               "by outer step; open circles: starts; squares: ends. Press play or drag the "
                               "slider to move the current states along the trajectories."),
    "spectra": FigureInfo("Fixed points", "Jacobian spectra",
                          "Leading eigenvalues at each fixed point in the complex plane (dashed: unit "
                          "circle). Filled: eigenvalues of stable fixed points, open: unstable ones."),
    "spectral_radius": FigureInfo("Fixed points", "Spectral radius by fixed-point label",
                                  "Spectral radius of correct, spurious and invalid fixed points (below the "
                                  "dashed line at 1: stable)."),
    "basin_maps": FigureInfo("Basins of attraction", "Basin maps",
                             "Colour: attractor reached (green: correct solution, other colours: spurious "
                             "attractors, grey: not converged); lighter shades took more steps. Filled "
                             "circles: stable fixed points, open circles: unstable ones; stars: anchors. "
                             "Hover a cell for the steps and the grid it converges to; pick a puzzle in "
                             "the menu."),
    "basin_stability": FigureInfo("Basins of attraction", "Basin stability",
                                  "Fraction of sampled initial states reaching each attractor, ± standard "
                                  "error; pick a puzzle in the menu."),
}


def f32(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def pct(x: float) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * float(x):.1f}%"


def num(x: object) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, (float, np.floating)):
        return "n/a" if not np.isfinite(x) else f"{float(x):.4g}"
    return str(x)


def lighten(colour: str, amount: float) -> str:
    """``colour`` (#rrggbb) mixed with white: ``amount`` 0 keeps it, 1 gives white."""
    rgb = [int(colour[i:i + 2], 16) for i in (1, 3, 5)]
    return "rgb({},{},{})".format(*(round(c + (255 - c) * amount) for c in rgb))


def rgba(colour: str, alpha: float) -> str:
    return "rgba({},{},{},{})".format(*(int(colour[i:i + 2], 16) for i in (1, 3, 5)), alpha)


def grid_html(grid: str, task: Task) -> str:
    """A read-out answer (one character per cell) laid out as the task's board, for hover text."""
    grid = str(grid)
    if not grid:
        return "(no answer)"
    lines = task.render_string(grid).splitlines()
    # hover text collapses runs of spaces (a maze's open cells): all but the last space of a run become no-break
    return "<br>".join(re.sub(" (?= )", "\u00a0", html.escape(r)) for r in lines)


def layout(fig: go.Figure, title: str, height: int, **kw: object) -> go.Figure:
    fig.update_layout(**{"title": {"text": title}, "height": height, "template": TEMPLATE,
                         "margin": {"t": 70, "b": 50}, **kw})
    return fig


def puzzle_label(run: Run, index: int) -> str:
    """``puzzle 17 (source, rating 1234)`` when the puzzle row exists."""
    if 0 <= index < run.n:
        return f"puzzle {index} ({run.puzzles['source', index]}, rating {int(run.puzzles['rating', index])})"
    return f"puzzle {index}"


def attractor_styles(labels: np.ndarray) -> list[tuple[str, str]]:
    """(legend name, colour) per attractor: correct in greens, every other attractor its own colour."""
    out, n_ok, n_bad = [], 0, 0
    for k, lab in enumerate(int(v) for v in labels):
        if lab == 0:
            colour, n_ok = CORRECT_SHADES[n_ok % len(CORRECT_SHADES)], n_ok + 1
        else:
            colour, n_bad = SPURIOUS_COLOURS[n_bad % len(SPURIOUS_COLOURS)], n_bad + 1
        out.append((f"A{k}: {LABELS.get(lab, ('unknown', GREY))[0]}", colour))
    return out


def puzzle_menu(titles: list[str], spans: list[tuple[int, int]], n_traces: int) -> list[dict]:
    """Dropdown switching the visible trace block (one per puzzle) and the title."""
    buttons = []
    for title, (lo, hi) in zip(titles, spans, strict=True):
        visible = [lo <= i < hi for i in range(n_traces)]
        buttons.append({"label": title.split(" (")[0], "method": "update",
                        "args": [{"visible": visible}, {"title.text": title}]})
    return [{"buttons": buttons, "direction": "down", "x": 0, "xanchor": "left", "y": 1.0, "yanchor": "bottom",
             "pad": {"b": 8}, "active": 0, "showactive": True}]
