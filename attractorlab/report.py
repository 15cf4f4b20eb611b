"""Plotly figures of a run's analysis results and one standalone, offline HTML report.

Everything here *reads* ``/analysis/<name>`` results written by ``attractorlab analyze`` (see
``trajectories/README.md``) and only reshapes them for display: no statistics, no model calls. A figure is
made only when its analysis is stored; skipped or absent analyses are listed at the end of the report with
the ``skipped_reason`` stored in the file (or "not computed").

- :func:`build_figures` -> ``{name: plotly Figure}`` for a :class:`attractorlab.recording.Run`;
- :func:`write_report` -> one self-contained HTML file (plotly.js inlined once), written atomically.
"""

from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import plotly.offline
from plotly.subplots import make_subplots

from attractorlab.recording import AnalysisResult, Run, open_run
from attractorlab.results import EndStates, IncompleteResult, LyapunovSurvey, PuzzleBasins, RestartSelection
from attractorlab.tasks import Task, get_task

MAX_TRAJECTORIES = 100
CORRECT, INCORRECT, GREY = "#2ca02c", "#d62728", "#9e9e9e"
LABELS = {0: ("correct", CORRECT), 1: ("spurious (valid answer)", "#ff7f0e"), 2: ("invalid answer", "#9467bd")}
CORRECT_SHADES = ("#2ca02c", "#1b6e1b", "#74c476")
SPURIOUS_COLOURS = ("#ff7f0e", "#d62728", "#9467bd", "#1f77b4", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
ANALYSES = ("summary", "scaling", "convergence", "probes", "inner", "embedding", "end_states", "lyapunov", "selection",
            "fixed_points", "basins")
TEMPLATE = "plotly_white"
MONO = {"font": {"family": "DejaVu Sans Mono, Menlo, Consolas, monospace", "size": 12}, "align": "left"}


@dataclass(frozen=True)
class FigureInfo:
    """Where a figure goes in the report and what it shows."""

    section: str
    title: str
    caption: str


SECTIONS = {
    "Summary": "Headline numbers of the rollout: accuracy of the selected restart, majority vote and pass@B "
               "(any restart correct), steps used, AUROC of the convergence scores as correctness "
               "predictors, how rollouts ended, and accuracy per difficulty band and source.",
    "Test-time scaling": "Accuracy as depth (outer steps) and breadth (random restarts) grow. The selected "
                         "curve uses the label-free selection rule; the oracle curve counts a puzzle as solved "
                         "when any restart is correct, so the gap is what a perfect verifier would add.",
    "Convergence vs correctness": "Does settling into a fixed point mean the answer is right? Residuals "
                                  "split by outcome, ROC curves of convergence scores, steps against "
                                  "difficulty and how rollouts ended.",
    "Probes": "Linear probes read each cell's label out of the latent state at each outer step (the task's probe "
              "targets: a Sudoku cell's digit, a maze's open cell on or off the path).",
    "Trajectories": "Latent trajectories in a 2-D embedding of the state.",
    "Fixed points": "Fixed points found from trajectory states, with the eigenvalues of the Jacobian there. "
                    "A fixed point is stable (an attractor) when every eigenvalue lies inside the unit circle.",
    "Basins of attraction": "A 2-D slice of latent space through three anchor states; each initial state on "
                            "the grid is iterated until it converges and coloured by the attractor it reaches.",
}

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


def _get(res: AnalysisResult, key: str) -> np.ndarray:
    if key not in res:
        raise IncompleteResult(f"incomplete result: no '{key}' array")
    return np.asarray(res[key])


def _f32(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _pct(x: float) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * float(x):.1f}%"


def _num(x: object) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, (float, np.floating)):
        return "n/a" if not np.isfinite(x) else f"{float(x):.4g}"
    return str(x)


def _lighten(colour: str, amount: float) -> str:
    """``colour`` (#rrggbb) mixed with white: ``amount`` 0 keeps it, 1 gives white."""
    rgb = [int(colour[i:i + 2], 16) for i in (1, 3, 5)]
    return "rgb({},{},{})".format(*(round(c + (255 - c) * amount) for c in rgb))


def _rgba(colour: str, alpha: float) -> str:
    return "rgba({},{},{},{})".format(*(int(colour[i:i + 2], 16) for i in (1, 3, 5)), alpha)


def _grid_html(grid: str, task: Task) -> str:
    """A read-out answer (one character per cell) laid out as the task's board, for hover text."""
    grid = str(grid)
    if not grid:
        return "(no answer)"
    lines = task.render_string(grid).splitlines()
    # hover text collapses runs of spaces (a maze's open cells): all but the last space of a run become no-break
    return "<br>".join(re.sub(" (?= )", "\u00a0", html.escape(r)) for r in lines)


def _layout(fig: go.Figure, title: str, height: int, **kw: object) -> go.Figure:
    fig.update_layout(**{"title": {"text": title}, "height": height, "template": TEMPLATE,
                         "margin": {"t": 70, "b": 50}, **kw})
    return fig


def _puzzle_label(run: Run, index: int) -> str:
    """``puzzle 17 (source, rating 1234)`` when the puzzle row exists."""
    if 0 <= index < run.n:
        return f"puzzle {index} ({run.puzzles['source', index]}, rating {int(run.puzzles['rating', index])})"
    return f"puzzle {index}"


# ---------------------------------------------------------------- summary and scaling

def _answers(run: Run, per_outcome: int = 4, scale: int = 8) -> go.Figure | None:
    """The selected restart's final answer drawn over the input for up to ``per_outcome`` correct and as many
    wrong instances; ``None`` when the task draws no pictures or the run holds no puzzles."""
    task = get_task(run.task)
    if run.n == 0 or task.image(run.puzzles["tokens", 0]) is None:
        return None
    rows = np.arange(run.n)
    selected = run.rollout.selected
    correct = run.rollout.correct[rows, selected, -1]
    picks = [(i, True) for i in np.flatnonzero(correct)[:per_outcome]]
    picks += [(i, False) for i in np.flatnonzero(~correct)[:per_outcome]]
    picks.sort(key=lambda p: not p[1])
    cols = min(per_outcome, max(1, len(picks)))
    titles = [f"#{i} {'correct' if ok else 'wrong'}, rating {int(run.puzzles['rating', i])}" for i, ok in picks]
    fig = make_subplots(rows=-(-len(picks) // cols), cols=cols, subplot_titles=titles,
                        horizontal_spacing=0.03, vertical_spacing=0.08)
    for k, (i, _) in enumerate(picks):
        answer = run.rollout["pred", i, int(selected[i]), -1]
        fig.add_trace(go.Image(z=task.image(run.puzzles["tokens", i], answer, scale=scale), hoverinfo="skip"),
                      row=k // cols + 1, col=k % cols + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, FIGURES["answers"].title, 60 + 230 * (-(-len(picks) // cols)), margin={"t": 70, "b": 10})


def _summary(summary: AnalysisResult, conv: AnalysisResult | None) -> go.Figure:
    a = summary.attrs
    rows = [("puzzles", _num(a.get("n"))),
            ("breadth B / depth T", f"{_num(a.get('breadth'))} / {_num(a.get('depth'))}"),
            ("accuracy (selected)", _pct(a.get("accuracy"))),
            ("majority-vote accuracy", _pct(a.get("majority_accuracy"))),
            ("pass@B (any restart)", _pct(a.get("pass_at_b"))),
            ("mean / median steps", f"{_num(a.get('mean_steps'))} / {_num(a.get('median_steps'))}")]
    if conv is not None and "score_names" in conv and "auroc" in conv:
        rows += [(f"AUROC {n}", _num(v)) for n, v in zip(conv["score_names"], conv["auroc"], strict=True)]
    if conv is not None and "ending_names" in conv and "ending_counts" in conv:
        rows += [(f"ended: {n}", str(int(c))) for n, c in
                 zip(conv["ending_names"], conv["ending_counts"], strict=True)]
    tables = [("Overall", ["metric", "value"], list(map(list, zip(*rows, strict=True))))]
    for key, title in (("band", "By difficulty band"), ("source", "By source")):
        names, counts, acc = (_get(summary, f"{key}_{s}") for s in ("names", "count", "accuracy"))
        tables.append((title, [key, "puzzles", "accuracy"],
                       [list(map(str, names)), [str(int(c)) for c in counts], [_pct(x) for x in acc]]))
    fig = make_subplots(rows=1, cols=3, specs=[[{"type": "table"}] * 3], column_widths=[0.4, 0.3, 0.3],
                        subplot_titles=[t[0] for t in tables], horizontal_spacing=0.03)
    for col, (_, header, cells) in enumerate(tables, start=1):
        fig.add_trace(go.Table(header={"values": [f"<b>{h}</b>" for h in header], "fill_color": "#dfe6ee",
                                       "align": "left"},
                               cells={"values": cells, "align": "left", "height": 24}), row=1, col=col)
    height = 110 + 26 * max(len(c[2][0]) for c in tables)
    return _layout(fig, "Summary", height, margin={"t": 60, "b": 10, "l": 10, "r": 10})


def _scaling(res: AnalysisResult, axis: str) -> go.Figure:
    x_key, label = ("depth_steps", "outer steps (depth)") if axis == "depth" else \
        ("breadth_values", "random restarts (breadth)")
    x = _get(res, x_key)
    fig = go.Figure()
    for key, name, dash in (("accuracy", "selected restart", "solid"), ("oracle", "any restart (oracle)", "dash")):
        fig.add_trace(go.Scatter(x=x, y=_f32(_get(res, f"{axis}_{key}")), name=name, mode="lines+markers",
                                 line={"dash": dash}, hovertemplate=f"{axis} %{{x}}: %{{y:.1%}}<extra>{name}</extra>"))
    log = x.size > 1 and x.min() > 0 and x.max() / x.min() >= 16
    fig.update_xaxes(title=label, type="log" if log else "linear")
    fig.update_yaxes(title="exact accuracy", tickformat=".0%", range=[0, 1.02])
    return _layout(fig, FIGURES[f"scaling_{axis}"].title, 420)


# ---------------------------------------------------------------- convergence and probes

def _selection(res: AnalysisResult) -> go.Figure:
    sel = RestartSelection.from_result(res)
    fig = go.Figure()
    for acc, label, colour, dash in ((sel.attractor_accuracy, "attractor-aware", "#1f77b4", "solid"),
                                     (sel.convergence_accuracy, "convergence score", "#ff7f0e", "solid"),
                                     (sel.oracle_accuracy, "oracle (any restart)", GREY, "dot")):
        fig.add_trace(go.Scatter(x=sel.depths, y=acc, mode="lines+markers", name=label,
                                 line=dict(color=colour, dash=dash)))
    fig.update_xaxes(title="depth (outer steps)", type="log")
    fig.update_yaxes(title="accuracy", range=[0, 1.02])
    return _layout(fig, f"Restart selection by depth ({int(sel.puzzles)} puzzles)", 380)


def _inner(res: AnalysisResult) -> go.Figure:
    median = _get(res, "median_change")  # [K, H, L]
    steps, n_h, n_l = _get(res, "steps"), median.shape[1], median.shape[2]
    fig = go.Figure()
    x = [f"H{h + 1}.L{l + 1}" for h in range(n_h) for l in range(n_l)]
    shown = sorted({0, len(steps) // 2, len(steps) - 1})
    for j, k in enumerate(shown):
        fig.add_trace(go.Scatter(x=x, y=median[k].ravel(), mode="lines+markers", name=f"outer step {int(steps[k])}",
                                 line=dict(color=SPURIOUS_COLOURS[j % len(SPURIOUS_COLOURS)])))
    fig.update_xaxes(title="inner update of z_L")
    fig.update_yaxes(title="median relative change of z_L", type="log")
    return _layout(fig, f"Inside the outer step: does z_L settle? ({int(res.attrs.get('puzzles', 0))} puzzles)", 380)


def _residual_curves(res: AnalysisResult) -> go.Figure:
    steps = _get(res, "steps_axis")
    fig = go.Figure()
    for outcome, colour in (("correct", CORRECT), ("incorrect", INCORRECT)):
        med, lo, hi = (_get(res, f"residual_{outcome}_{s}") for s in ("median", "q25", "q75"))
        ok = np.isfinite(med) & np.isfinite(lo) & np.isfinite(hi)
        if not ok.any():
            continue
        x = steps[ok]
        fig.add_trace(go.Scatter(x=np.concatenate([x, x[::-1]]), y=_f32(np.concatenate([hi[ok], lo[ok][::-1]])),
                                 mode="lines", fill="toself", fillcolor=_rgba(colour, 0.2), line={"width": 0},
                                 hoverinfo="skip", showlegend=False, legendgroup=outcome))
        fig.add_trace(go.Scatter(x=x, y=_f32(med[ok]), name=f"{outcome} (median, IQR)", mode="lines",
                                 line={"color": colour}, legendgroup=outcome,
                                 hovertemplate="step %{x}: %{y:.3g}<extra>" + outcome + "</extra>"))
    fig.update_xaxes(title="outer step")
    fig.update_yaxes(title="residual ‖z_t − z_{t−1}‖ / ‖z_t‖", type="log", exponentformat="power")
    return _layout(fig, "Residual by final correctness", 420)


def _roc(res: AnalysisResult) -> go.Figure:
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": GREY},
                               name="chance", hoverinfo="skip"))
    for name, auc in zip(_get(res, "score_names"), _get(res, "auroc"), strict=True):
        auc_text = "n/a" if not np.isfinite(auc) else f"{float(auc):.3f}"
        fig.add_trace(go.Scatter(x=_f32(_get(res, f"fpr_{name}")), y=_f32(_get(res, f"tpr_{name}")), mode="lines",
                                 name=f"{name} (AUROC {auc_text})",
                                 hovertemplate="FPR %{x:.3f}, TPR %{y:.3f}<extra>" + str(name) + "</extra>"))
    fig.update_xaxes(title="false positive rate", range=[0, 1], constrain="domain")
    fig.update_yaxes(title="true positive rate", range=[0, 1.01], scaleanchor="x", scaleratio=1)
    return _layout(fig, "ROC: convergence score as a predictor of correctness", 480)


def _steps_vs_rating(res: AnalysisResult) -> go.Figure:
    steps = _get(res, "settle_answer") if "settle_answer" in res else _get(res, "steps")
    rating, correct = _get(res, "rating"), _get(res, "correct").astype(bool)
    fig = go.Figure()
    for mask, name, colour in ((correct, "correct", CORRECT), (~correct, "incorrect", INCORRECT)):
        fig.add_trace(go.Scattergl(x=_f32(rating[mask]), y=_f32(steps[mask]), mode="markers", name=name,
                                   marker={"color": colour, "size": 6, "opacity": 0.6},
                                   hovertemplate="rating %{x}, steps %{y}<extra>" + name + "</extra>"))
    rho, p = res.attrs.get("spearman_rho"), res.attrs.get("spearman_p")
    positive = rating[rating > 0]
    log = positive.size == rating.size and rating.size > 0 and positive.max() / positive.min() >= 100
    fig.update_xaxes(title="difficulty rating", type="log" if log else "linear")
    fig.update_yaxes(title="outer step the answer settles (selected restart)")
    easy = ""
    if res.attrs.get("easy_count"):
        easy = (f"; {res.attrs['easy_settled_within_5']} of {res.attrs['easy_count']} "
                f"'{res.attrs.get('easy_band', '')}' puzzles within 5 steps")
    return _layout(fig, f"Steps to settle vs difficulty (Spearman ρ = {_num(rho)}, p = {_num(p)}{easy})", 440)


def _halting(res: AnalysisResult) -> go.Figure:
    fig = go.Figure()
    for rule in _get(res, "halt_rules"):
        steps, acc = _get(res, f"halt_{rule}_mean_steps"), _get(res, f"halt_{rule}_accuracy")
        values = _get(res, f"halt_{rule}_values")
        fig.add_trace(go.Scatter(x=_f32(steps), y=_f32(acc), mode="lines+markers", name=str(rule),
                                 customdata=_f32(values),
                                 hovertemplate="%{customdata:.3g}: %{y:.3f} at %{x:.1f} steps<extra>" + str(rule)
                                 + "</extra>"))
    fig.update_xaxes(title="mean outer steps")
    fig.update_yaxes(title="accuracy (selected restart)", range=[0, 1.02])
    return _layout(fig, "Adaptive compute replayed from the run", 440)


def _endings(res: AnalysisResult, title: str = "How rollouts ended") -> go.Figure:
    names, counts = _get(res, "ending_names"), _get(res, "ending_counts")
    return _ending_bars(names, counts, title)


def _end_states(res: AnalysisResult) -> go.Figure:
    ends = EndStates.from_result(res)
    return _ending_bars(ends.ending_names, ends.ending_counts, "End states after a noise-free polish")


def _ending_bars(names: np.ndarray, counts: np.ndarray, title: str) -> go.Figure:
    fig = go.Figure(go.Bar(x=[str(n) for n in names], y=counts, marker_color="#4c78a8", text=counts,
                           textposition="outside", hovertemplate="%{x}: %{y}<extra></extra>"))
    fig.update_yaxes(title="restarts")
    return _layout(fig, title, 380)


def _lyapunov(res: AnalysisResult) -> go.Figure:
    lya = LyapunovSurvey.from_result(res)
    exponent, stderr, correct, names, regime = lya.exponent, lya.stderr, lya.correct.astype(bool), \
        lya.regime_names, lya.regime
    rows = np.arange(exponent.size)
    fig = go.Figure()
    for ok, label, colour in ((True, "correct", CORRECT), (False, "not correct", INCORRECT)):
        m = correct.ravel() == ok
        fig.add_trace(go.Scatter(
            x=rows[m], y=exponent.ravel()[m], mode="markers", name=label, marker=dict(color=colour, size=7),
            error_y=dict(type="data", array=stderr.ravel()[m], thickness=1, width=0),
            text=[str(names[r]) for r in regime.ravel()[m]],
            hovertemplate="end state %{x}: %{y:.4f} per step (%{text})<extra></extra>"))
    fig.add_hline(y=0, line_dash="dash", line_color=GREY)
    counts = ", ".join(f"{n} {c}" for n, c in zip(names, lya.regime_counts, strict=True))
    fig.update_xaxes(title="end state (puzzle x restart)")
    fig.update_yaxes(title="largest Lyapunov exponent")
    return _layout(fig, f"Largest Lyapunov exponents ({counts})", 380)


def _probes(res: AnalysisResult) -> go.Figure:
    steps, acc, std = _get(res, "steps"), _get(res, "cell_accuracy"), _get(res, "cell_accuracy_std")
    fig = go.Figure(go.Scatter(x=np.concatenate([steps, steps[::-1]]),
                               y=_f32(np.concatenate([acc + std, (acc - std)[::-1]])), mode="lines", fill="toself",
                               fillcolor=_rgba("#4c78a8", 0.2), line={"width": 0}, hoverinfo="skip",
                               showlegend=False))
    fig.add_trace(go.Scatter(x=steps, y=_f32(acc), mode="lines+markers", name="all cells", line={"color": "#4c78a8"},
                             hovertemplate="step %{x}: %{y:.1%}<extra>all cells</extra>"))
    if "correct_accuracy" in res:
        fig.add_trace(go.Scatter(x=steps, y=_f32(res["correct_accuracy"]), mode="lines+markers",
                                 name="puzzles solved correctly", line={"color": CORRECT, "dash": "dash"},
                                 hovertemplate="step %{x}: %{y:.1%}<extra>correct puzzles</extra>"))
    if "cell_chance" in res.attrs:  # always predicting the commoner label
        fig.add_hline(y=float(res.attrs["cell_chance"]), line={"dash": "dot", "color": GREY},
                      annotation_text="chance (majority label)", annotation_position="bottom right")
    fig.update_xaxes(title="outer step")
    fig.update_yaxes(title="probe cell accuracy", tickformat=".0%", range=[0, 1.02])
    return _layout(fig, "Linear probe accuracy vs outer step", 420)


# ---------------------------------------------------------------- trajectories

def _trajectories(res: AnalysisResult) -> go.Figure:
    coords, steps = _get(res, "coords"), _get(res, "steps")
    correct, puzzle = _get(res, "correct").astype(bool), _get(res, "puzzle_index")
    n, b, s = coords.shape[:3]
    take = min(n * b, MAX_TRAJECTORIES)
    xy = _f32(coords.reshape(n * b, s, 2)[:take])
    ok = correct.reshape(-1)[:take]
    ids = np.stack([np.repeat(puzzle, b), np.tile(np.arange(b), n)], axis=1)[:take]
    fig = go.Figure()
    for mask, name, colour in ((ok, "ends correct", CORRECT), (~ok, "ends incorrect", INCORRECT)):
        if mask.any():
            sep = np.full((int(mask.sum()), 1), np.nan, np.float32)
            fig.add_trace(go.Scattergl(x=np.concatenate([xy[mask, :, 0], sep], 1).ravel(),
                                       y=np.concatenate([xy[mask, :, 1], sep], 1).ravel(), mode="lines",
                                       name=name, line={"color": colour, "width": 1.5}, opacity=0.55,
                                       hoverinfo="skip"))
    fig.add_trace(go.Scattergl(
        x=xy[:, :, 0].ravel(), y=xy[:, :, 1].ravel(), mode="markers", name="snapshot (colour: step)",
        marker={"color": _f32(np.tile(steps, take)), "colorscale": "Viridis", "size": 5,
                "colorbar": {"title": {"text": "outer step"}, "len": 0.45, "y": 1, "yanchor": "top"}},
        customdata=np.repeat(ids, s, axis=0).astype(np.int32),
        hovertemplate="puzzle %{customdata[0]}, restart %{customdata[1]}<br>step %{marker.color}<extra></extra>"))
    end_colours = [CORRECT if c else INCORRECT for c in ok]
    for k, name, marker in ((0, "start", {"symbol": "circle-open", "color": "black", "size": 9}),
                            (s - 1, "end", {"symbol": "square", "color": end_colours, "size": 9,
                                            "line": {"color": "black", "width": 1}})):
        fig.add_trace(go.Scatter(x=xy[:, k, 0], y=xy[:, k, 1], mode="markers", name=name, marker=marker,
                                 customdata=ids, hovertemplate=f"{name}: puzzle %{{customdata[0]}}, restart "
                                                               "%{customdata[1]}<extra></extra>"))
    current = len(fig.data)
    fig.add_trace(go.Scatter(x=xy[:, 0, 0], y=xy[:, 0, 1], mode="markers", name="current state",
                             marker={"color": end_colours, "size": 12, "line": {"color": "black", "width": 1.5}},
                             customdata=ids, hovertemplate="puzzle %{customdata[0]}, restart %{customdata[1]}"
                                                           "<extra>current</extra>"))
    fig.frames = [go.Frame(name=str(int(t)), traces=[current], data=[go.Scatter(x=xy[:, k, 0], y=xy[:, k, 1])])
                  for k, t in enumerate(steps)]
    still = {"mode": "immediate", "frame": {"duration": 0, "redraw": False}, "transition": {"duration": 0}}
    method = str(res.attrs.get("method", "embedding")).upper()
    var = res.attrs.get("explained_variance")
    axis = [f"{method} {i + 1}" + (f" ({100 * float(var[i]):.1f}% var.)" if var is not None else "")
            for i in range(2)]
    fig.update_xaxes(title=axis[0])
    fig.update_yaxes(title=axis[1])
    shown = f"first {take} of {n * b}" if take < n * b else f"all {take}"
    return _layout(
        fig, f"Trajectories in {method} coordinates ({shown} restarts)", 680, margin={"t": 70, "b": 140},
        legend={"x": 1.02, "y": 0.5, "yanchor": "top"},
        updatemenus=[{"type": "buttons", "direction": "left", "x": 0, "xanchor": "left", "y": -0.14,
                      "yanchor": "top", "pad": {"t": 30}, "showactive": False,
                      "buttons": [{"label": "▶ play", "method": "animate",
                                   "args": [None, {**still, "frame": {"duration": 400, "redraw": False},
                                                   "fromcurrent": True}]},
                                  {"label": "❚❚ pause", "method": "animate", "args": [[None], still]}]}],
        sliders=[{"active": 0, "x": 0.2, "len": 0.8, "y": -0.14, "yanchor": "top",
                  "currentvalue": {"prefix": "outer step "},
                  "steps": [{"label": str(int(t)), "method": "animate", "args": [[str(int(t))], still]}
                            for t in steps]}])


# ---------------------------------------------------------------- fixed points

def _spectra(items: list[tuple[int, AnalysisResult]]) -> go.Figure:
    fig = go.Figure()
    for label, (name, colour) in LABELS.items():
        for stable_kind, symbol in ((True, "circle"), (False, "circle-open")):
            xs, ys, text = [], [], []
            for _, res in items:
                eig, lab, stable = _get(res, "eigvals"), _get(res, "label"), _get(res, "stable").astype(bool)
                pi = res.attrs.get("puzzle_index", "?")
                for m in np.flatnonzero((lab == label) & (stable == stable_kind)):
                    xs.append(eig[m].real)
                    ys.append(eig[m].imag)
                    text += [f"puzzle {pi}, fixed point {m}"] * eig.shape[1]
            if xs:
                kind = "stable" if stable_kind else "unstable"
                fig.add_trace(go.Scattergl(x=_f32(np.concatenate(xs)), y=_f32(np.concatenate(ys)), mode="markers",
                                           name=f"{name}, {kind}", text=text, legendgroup=name,
                                           marker={"color": colour, "symbol": symbol, "size": 8,
                                                   "line": {"color": colour, "width": 1.5}},
                                           hovertemplate=f"%{{text}} ({kind})<br>λ = %{{x:.3f}} %{{y:+.3f}}i"
                                                         "<extra></extra>"))
    fig.add_shape(type="circle", xref="x", yref="y", x0=-1, y0=-1, x1=1, y1=1,
                  line={"color": "black", "dash": "dash", "width": 1})
    fig.update_xaxes(title="Re λ", zeroline=True)
    fig.update_yaxes(title="Im λ", scaleanchor="x", scaleratio=1, zeroline=True)
    return _layout(fig, "Jacobian eigenvalues at fixed points", 560)


def _spectral_radius(items: list[tuple[int, AnalysisResult]]) -> go.Figure:
    fig = go.Figure()
    for label, (name, colour) in LABELS.items():
        rho, text = [], []
        for _, res in items:
            lab, radius, resid = _get(res, "label"), _get(res, "spectral_radius"), _get(res, "residual")
            pi = res.attrs.get("puzzle_index", "?")
            for m in np.flatnonzero(lab == label):
                rho.append(radius[m])
                text.append(f"puzzle {pi}, fixed point {m}, residual {resid[m]:.2g}")
        if rho:
            fig.add_trace(go.Box(y=_f32(rho), name=name, text=text, boxpoints="all", jitter=0.4, pointpos=0,
                                 marker={"color": colour, "size": 7}, line={"color": colour},
                                 fillcolor=_rgba(LABELS[label][1], 0.15),
                                 hovertemplate="%{text}<br>spectral radius %{y:.3f}<extra></extra>"))
    fig.add_hline(y=1, line={"dash": "dash", "color": "black", "width": 1})
    fig.update_yaxes(title="spectral radius of the Jacobian")
    return _layout(fig, "Spectral radius: correct vs spurious fixed points", 440, showlegend=False)


# ---------------------------------------------------------------- basins

def _attractor_styles(labels: np.ndarray) -> list[tuple[str, str]]:
    """(legend name, colour) per attractor: correct in greens, every other attractor its own colour."""
    out, n_ok, n_bad = [], 0, 0
    for k, lab in enumerate(int(v) for v in labels):
        if lab == 0:
            colour, n_ok = CORRECT_SHADES[n_ok % len(CORRECT_SHADES)], n_ok + 1
        else:
            colour, n_bad = SPURIOUS_COLOURS[n_bad % len(SPURIOUS_COLOURS)], n_bad + 1
        out.append((f"A{k}: {LABELS.get(lab, ('unknown', GREY))[0]}", colour))
    return out


def _puzzle_menu(titles: list[str], spans: list[tuple[int, int]], n_traces: int) -> list[dict]:
    """Dropdown switching the visible trace block (one per puzzle) and the title."""
    buttons = []
    for title, (lo, hi) in zip(titles, spans, strict=True):
        visible = [lo <= i < hi for i in range(n_traces)]
        buttons.append({"label": title.split(" (")[0], "method": "update",
                        "args": [{"visible": visible}, {"title.text": title}]})
    return [{"buttons": buttons, "direction": "down", "x": 0, "xanchor": "left", "y": 1.0, "yanchor": "bottom",
             "pad": {"b": 8}, "active": 0, "showactive": True}]


def _basin_maps(run: Run, items: list[tuple[int, AnalysisResult]]) -> go.Figure:
    fig, titles, spans = go.Figure(), [], []
    for _, res in items:
        lo, b = len(fig.data), PuzzleBasins.from_result(res)
        label_map, steps_map = b.map_label, _f32(b.map_steps)
        xs, ys = _f32(b.xs), _f32(b.ys)
        grids, styles = b.attractor_grid, _attractor_styles(b.attractor_label)
        finite = steps_map[np.isfinite(steps_map)]
        zmin, zmax = (float(finite.min()), float(finite.max()) + 1e-6) if finite.size else (0.0, 1.0)
        cells = [(k, name, colour, _grid_html(grids[k], get_task(run.task))) for k, (name, colour) in enumerate(styles)]
        cells.append((-1, "not converged", GREY, "(no attractor reached)"))
        for k, name, colour, grid in cells:
            mask = label_map == k
            if not mask.any():
                continue
            fig.add_trace(go.Heatmap(
                x=xs, y=ys, z=np.where(mask, steps_map, np.float32(np.nan)), zmin=zmin, zmax=zmax, name=name,
                colorscale=[[0, colour], [1, _lighten(colour, 0.7 if k >= 0 else 0.0)]], showscale=False,
                showlegend=True, hoverongaps=False, hoverlabel=MONO,
                hovertemplate=f"<b>{html.escape(name)}</b><br>steps: %{{z:.0f}}<br>at (%{{x:.3g}}, %{{y:.3g}})"
                              f"<br><br>{grid}<extra></extra>"))
        anchors = _f32(b.anchor_coords).reshape(-1, 2)
        fig.add_trace(go.Scatter(x=anchors[:, 0], y=anchors[:, 1], mode="markers+text", name="anchors",
                                 text=[str(a) for a in b.anchor_names], textposition="top center",
                                 textfont={"color": "black", "size": 12},
                                 marker={"symbol": "star-open", "size": 22, "color": "black",
                                         "line": {"width": 2}},
                                 hovertemplate="anchor %{text}<extra></extra>"))
        fp, stable = _f32(b.fp_coords).reshape(-1, 2), b.fp_stable.astype(bool)
        for mask, name, symbol in ((stable, "stable fixed point", "circle"),
                                   (~stable, "unstable fixed point", "circle-open")):
            fig.add_trace(go.Scatter(x=fp[mask, 0], y=fp[mask, 1], mode="markers", name=name,
                                     marker={"symbol": symbol, "color": "black", "size": 11,
                                             "line": {"width": 2, "color": "black" if symbol != "circle"
                                                      else "white"}},
                                     customdata=np.flatnonzero(mask),
                                     hovertemplate=f"{name} %{{customdata}}<extra></extra>"))
        spans.append((lo, len(fig.data)))
        measures = ""
        if b.basin_entropy is not None:
            measures = (f" (basin entropy {_num(b.basin_entropy)}, boundary {_num(b.boundary_basin_entropy)}; "
                        f"boundary cells {_pct(float(b.boundary_fraction or 0.0))})")
        titles.append(f"Basin map — {_puzzle_label(run, int(b.puzzle_index))}{measures}")
    for i, trace in enumerate(fig.data):
        trace.visible = spans[0][0] <= i < spans[0][1]
    menus = _puzzle_menu(titles, spans, len(fig.data)) if len(items) > 1 else []
    fig.update_xaxes(title="plane coordinate u", showgrid=False, zeroline=False)
    fig.update_yaxes(title="plane coordinate v", showgrid=False, zeroline=False, scaleanchor="x", scaleratio=1)
    return _layout(fig, titles[0], 680, updatemenus=menus, margin={"t": 100, "b": 50},
                   legend={"x": 1.02, "y": 1, "bgcolor": "rgba(255,255,255,0.85)"})


def _basin_stability(run: Run, items: list[tuple[int, AnalysisResult]]) -> go.Figure:
    fig, titles = go.Figure(), []
    for i, (_, res) in enumerate(items):
        b = PuzzleBasins.from_result(res)
        frac, err = _f32(b.fraction), _f32(b.stderr)
        styles = _attractor_styles(b.attractor_label) + [("not converged", GREY)]
        fig.add_trace(go.Bar(x=[s[0] for s in styles], y=frac, error_y={"type": "data", "array": err},
                             marker_color=[s[1] for s in styles], visible=i == 0, showlegend=False,
                             hovertemplate="%{x}: %{y:.1%} ± %{error_y.array:.1%}<extra></extra>"))
        titles.append(f"Basin stability — {_puzzle_label(run, int(b.puzzle_index))}, {_num(b.samples)} samples")
    menus = _puzzle_menu(titles, [(i, i + 1) for i in range(len(items))], len(items)) if len(items) > 1 else []
    fig.update_yaxes(title="fraction of initial states", tickformat=".0%", rangemode="tozero")
    return _layout(fig, titles[0], 440, updatemenus=menus, margin={"t": 100, "b": 60})


# ---------------------------------------------------------------- assembly

def _collect(run: Run) -> tuple[dict[str, go.Figure], list[tuple[str, str]]]:
    """All figures whose analyses are stored, and (analysis, reason) for those that are not."""
    keys = run.analysis_keys()
    missing: list[tuple[str, str]] = []
    results: dict[str, AnalysisResult] = {}
    groups: dict[str, list[tuple[int, AnalysisResult]]] = {"fixed_points": [], "basins": []}
    for name in ANALYSES:
        members = sorted((int(m.group(1)), k) for k in keys if (m := re.fullmatch(rf"{name}/p(\d+)", k)))
        if name in keys:
            res = run.read_analysis(name)
            if "skipped_reason" in res.attrs:
                missing.append((name, str(res.attrs["skipped_reason"])))
            else:
                results[name] = res
        elif name in groups and members:
            for k, key in members:
                res = run.read_analysis(key)
                if "skipped_reason" in res.attrs:
                    missing.append((key, str(res.attrs["skipped_reason"])))
                else:
                    groups[name].append((k, res))
        else:
            missing.append((name, "not computed"))
    builders = {
        "summary": ("summary", lambda: _summary(results["summary"], results.get("convergence"))),
        "scaling_depth": ("scaling", lambda: _scaling(results["scaling"], "depth")),
        "scaling_breadth": ("scaling", lambda: _scaling(results["scaling"], "breadth")),
        "selection": ("selection", lambda: _selection(results["selection"])),
        "inner": ("inner", lambda: _inner(results["inner"])),
        "residual_curves": ("convergence", lambda: _residual_curves(results["convergence"])),
        "roc": ("convergence", lambda: _roc(results["convergence"])),
        "steps_vs_rating": ("convergence", lambda: _steps_vs_rating(results["convergence"])),
        "endings": ("convergence", lambda: _endings(results["convergence"])),
        "halting": ("convergence", lambda: _halting(results["convergence"])),
        "end_states": ("end_states", lambda: _end_states(results["end_states"])),
        "lyapunov": ("lyapunov", lambda: _lyapunov(results["lyapunov"])),
        "probes": ("probes", lambda: _probes(results["probes"])),
        "trajectories": ("embedding", lambda: _trajectories(results["embedding"])),
        "spectra": ("fixed_points", lambda: _spectra(groups["fixed_points"])),
        "spectral_radius": ("fixed_points", lambda: _spectral_radius(groups["fixed_points"])),
        "basin_maps": ("basins", lambda: _basin_maps(run, groups["basins"])),
        "basin_stability": ("basins", lambda: _basin_stability(run, groups["basins"])),
    }
    figures: dict[str, go.Figure] = {}
    for fig_name, (source, build) in builders.items():
        if source not in results and not groups.get(source):
            continue
        try:
            figures[fig_name] = build()
        except IncompleteResult as err:
            missing.append((f"{source} ({fig_name})", str(err)))
    answers = _answers(run)
    if answers is not None:
        figures["answers"] = answers
    return figures, missing


def build_figures(run: Run) -> dict[str, go.Figure]:
    """Plotly figures of every analysis stored in ``run`` (an open :class:`~attractorlab.recording.Run`).

    Keys (only those whose analysis exists): ``summary, scaling_depth, scaling_breadth, residual_curves,
    roc, steps_vs_rating, endings, probes, trajectories, spectra, spectral_radius, basin_maps,
    basin_stability``. Figures hold the stored results reshaped for display; nothing is recomputed.
    """
    return _collect(run)[0]


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 0 24px 48px; color: #1f2933; line-height: 1.45; }
h1 { margin: 28px 0 4px; } h2 { margin-top: 40px; border-bottom: 1px solid #d5dde5; padding-bottom: 4px; }
h3 { margin: 24px 0 2px; font-size: 1.05em; } .meta { color: #52606d; font-size: 0.92em; }
.caption { color: #52606d; font-size: 0.92em; margin: 2px 0 6px; } nav a { margin-right: 14px; }
.figure { margin-bottom: 18px; } code { background: #f0f4f8; padding: 1px 4px; border-radius: 3px; }
"""


def _run_meta(run: Run) -> str:
    a = run.attrs
    parts = [f"{run.n} puzzles", f"breadth {run.breadth}", f"depth {run.depth}",
             f"created {a.get('created', '?')}", f"attractorlab {a.get('attractorlab_version', '?')}"]
    if a.get("checkpoint_sha256"):
        parts.append(f"checkpoint sha256 {str(a['checkpoint_sha256'])[:12]}")
    return html.escape(" · ".join(parts))


def _render(run: Run, figures: dict[str, go.Figure], missing: list[tuple[str, str]]) -> str:
    name = os.path.basename(run.path)
    body = [f"<h1>attractorlab report — {html.escape(name)}</h1>", f'<p class="meta">{_run_meta(run)}</p>']
    sections: dict[str, list[str]] = {}
    for fig_name, fig in figures.items():
        info = FIGURES[fig_name]
        div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{fig_name}", auto_play=False,
                          config={"displaylogo": False, "responsive": True})
        sections.setdefault(info.section, []).append(
            f'<div class="figure"><h3>{html.escape(info.title)}</h3>'
            f'<p class="caption">{html.escape(info.caption)}</p>{div}</div>')
    anchors = {s: "sec-" + re.sub(r"\W+", "-", s.lower()) for s in SECTIONS}
    links = [f'<a href="#{anchors[s]}">{html.escape(s)}</a>' for s in SECTIONS if s in sections]
    body.append("<nav>" + "".join(links) + '<a href="#sec-missing">Not in this report</a></nav>')
    for section, text in SECTIONS.items():
        if section in sections:
            body.append(f'<h2 id="{anchors[section]}">{html.escape(section)}</h2><p>{html.escape(text)}</p>')
            body.extend(sections[section])
    body.append('<h2 id="sec-missing">Not in this report</h2>')
    if missing:
        items = "".join(f"<li><code>{html.escape(n)}</code>: {html.escape(r)}</li>" for n, r in missing)
        body.append(f"<p>Analyses without figures, with the reason stored in the run file:</p><ul>{items}</ul>")
    else:
        body.append("<p>Every analysis is included.</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>attractorlab report — {html.escape(name)}</title><style>{_CSS}</style>"
            f"<script type=\"text/javascript\">{plotly.offline.get_plotlyjs()}</script></head>"
            f"<body>{''.join(body)}</body></html>\n")


def write_report(run_path: str | os.PathLike, out_html: str | os.PathLike) -> list[str]:
    """Write the standalone HTML report of the run file ``run_path`` to ``out_html``; returns figure names.

    The file works offline (plotly.js is inlined once) and is written atomically (temporary file in the
    same folder, then ``os.replace``). Missing or skipped analyses are listed at the end with their reason.
    """
    out_html = os.fspath(out_html)
    with open_run(run_path) as run:
        figures, missing = _collect(run)
        text = _render(run, figures, missing)
    tmp = f"{out_html}.{os.getpid()}.tmp"
    try:
        with open(tmp, "x", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, out_html)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return list(figures)
