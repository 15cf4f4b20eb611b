"""Figures of the run-level analyses: summary, scaling, answers, convergence, restart selection, inner steps,
probes, Lyapunov exponents, end states and trajectories."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from attractorlab.recording import Run
from attractorlab.report.style import (
    CORRECT,
    FIGURES,
    GREY,
    INCORRECT,
    MAX_TRAJECTORIES,
    SPURIOUS_COLOURS,
    f32,
    layout,
    num,
    pct,
    rgba,
)
from attractorlab.results import (
    CellProbes,
    ConvergenceStudy,
    EndStates,
    InnerSettling,
    LyapunovSurvey,
    RestartSelection,
    RunSummary,
    ScalingCurves,
    TrajectoryEmbedding,
)
from attractorlab.tasks import get_task

# ---------------------------------------------------------------- summary and scaling

def answers(run: Run, per_outcome: int = 4, scale: int = 8) -> go.Figure | None:
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
    return layout(fig, FIGURES["answers"].title, 60 + 230 * (-(-len(picks) // cols)), margin={"t": 70, "b": 10})


def summary(s: RunSummary, c: ConvergenceStudy | None) -> go.Figure:
    rows = [("puzzles", num(s.n)), ("breadth B / depth T", f"{num(s.breadth)} / {num(s.depth)}"),
            ("accuracy (selected)", pct(s.accuracy)), ("majority-vote accuracy", pct(s.majority_accuracy)),
            ("pass@B (any restart)", pct(s.pass_at_b)),
            ("mean / median steps", f"{num(s.mean_steps)} / {num(s.median_steps)}")]
    if c is not None:
        rows += [(f"AUROC {n}", num(v)) for n, v in zip(c.score_names, c.auroc, strict=True)]
    if c is not None and c.ending_names is not None and c.ending_counts is not None:
        rows += [(f"ended: {n}", str(int(k))) for n, k in zip(c.ending_names, c.ending_counts, strict=True)]
    tables = [("Overall", ["metric", "value"], list(map(list, zip(*rows, strict=True))))]
    for key, title in (("band", "By difficulty band"), ("source", "By source")):
        names, counts, acc = (getattr(s, f"{key}_{part}") for part in ("names", "count", "accuracy"))
        tables.append((title, [key, "puzzles", "accuracy"],
                       [list(map(str, names)), [str(int(c)) for c in counts], [pct(x) for x in acc]]))
    fig = make_subplots(rows=1, cols=3, specs=[[{"type": "table"}] * 3], column_widths=[0.4, 0.3, 0.3],
                        subplot_titles=[t[0] for t in tables], horizontal_spacing=0.03)
    for col, (_, header, cells) in enumerate(tables, start=1):
        fig.add_trace(go.Table(header={"values": [f"<b>{h}</b>" for h in header], "fill_color": "#dfe6ee",
                                       "align": "left"},
                               cells={"values": cells, "align": "left", "height": 24}), row=1, col=col)
    height = 110 + 26 * max(len(c[2][0]) for c in tables)
    return layout(fig, "Summary", height, margin={"t": 60, "b": 10, "l": 10, "r": 10})


def scaling(curves: ScalingCurves, axis: str) -> go.Figure:
    x, label = (curves.depth_steps, "outer steps (depth)") if axis == "depth" else \
        (curves.breadth_values, "random restarts (breadth)")
    fig = go.Figure()
    for key, name, dash in (("accuracy", "selected restart", "solid"), ("oracle", "any restart (oracle)", "dash")):
        fig.add_trace(go.Scatter(x=x, y=f32(getattr(curves, f"{axis}_{key}")), name=name, mode="lines+markers",
                                 line={"dash": dash}, hovertemplate=f"{axis} %{{x}}: %{{y:.1%}}<extra>{name}</extra>"))
    log = x.size > 1 and x.min() > 0 and x.max() / x.min() >= 16
    fig.update_xaxes(title=label, type="log" if log else "linear")
    fig.update_yaxes(title="exact accuracy", tickformat=".0%", range=[0, 1.02])
    return layout(fig, FIGURES[f"scaling_{axis}"].title, 420)


# ---------------------------------------------------------------- convergence and probes

def selection(sel: RestartSelection) -> go.Figure:
    fig = go.Figure()
    for acc, label, colour, dash in ((sel.attractor_accuracy, "attractor-aware", "#1f77b4", "solid"),
                                     (sel.convergence_accuracy, "convergence score", "#ff7f0e", "solid"),
                                     (sel.oracle_accuracy, "oracle (any restart)", GREY, "dot")):
        fig.add_trace(go.Scatter(x=sel.depths, y=acc, mode="lines+markers", name=label,
                                 line=dict(color=colour, dash=dash)))
    fig.update_xaxes(title="depth (outer steps)", type="log")
    fig.update_yaxes(title="accuracy", range=[0, 1.02])
    return layout(fig, f"Restart selection by depth ({int(sel.puzzles)} puzzles)", 380)


def inner(settling: InnerSettling) -> go.Figure:
    median = settling.median_change  # [K, H, L]
    steps, n_h, n_l = settling.steps, median.shape[1], median.shape[2]
    fig = go.Figure()
    x = [f"H{h + 1}.L{l + 1}" for h in range(n_h) for l in range(n_l)]
    shown = sorted({0, len(steps) // 2, len(steps) - 1})
    for j, k in enumerate(shown):
        fig.add_trace(go.Scatter(x=x, y=median[k].ravel(), mode="lines+markers", name=f"outer step {int(steps[k])}",
                                 line=dict(color=SPURIOUS_COLOURS[j % len(SPURIOUS_COLOURS)])))
    fig.update_xaxes(title="inner update of z_L")
    fig.update_yaxes(title="median relative change of z_L", type="log")
    return layout(fig, f"Inside the outer step: does z_L settle? ({int(settling.puzzles)} puzzles)", 380)


def residual_curves(conv: ConvergenceStudy) -> go.Figure:
    steps = conv.steps_axis
    fig = go.Figure()
    for outcome, colour in (("correct", CORRECT), ("incorrect", INCORRECT)):
        med, lo, hi = (getattr(conv, f"residual_{outcome}_{s}") for s in ("median", "q25", "q75"))
        ok = np.isfinite(med) & np.isfinite(lo) & np.isfinite(hi)
        if not ok.any():
            continue
        x = steps[ok]
        fig.add_trace(go.Scatter(x=np.concatenate([x, x[::-1]]), y=f32(np.concatenate([hi[ok], lo[ok][::-1]])),
                                 mode="lines", fill="toself", fillcolor=rgba(colour, 0.2), line={"width": 0},
                                 hoverinfo="skip", showlegend=False, legendgroup=outcome))
        fig.add_trace(go.Scatter(x=x, y=f32(med[ok]), name=f"{outcome} (median, IQR)", mode="lines",
                                 line={"color": colour}, legendgroup=outcome,
                                 hovertemplate="step %{x}: %{y:.3g}<extra>" + outcome + "</extra>"))
    fig.update_xaxes(title="outer step")
    fig.update_yaxes(title="residual ‖z_t − z_{t−1}‖ / ‖z_t‖", type="log", exponentformat="power")
    return layout(fig, "Residual by final correctness", 420)


def roc(conv: ConvergenceStudy) -> go.Figure:
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": GREY},
                               name="chance", hoverinfo="skip"))
    for name, auc in zip(conv.score_names, conv.auroc, strict=True):
        auc_text = "n/a" if not np.isfinite(auc) else f"{float(auc):.3f}"
        fig.add_trace(go.Scatter(x=f32(conv.fpr[str(name)]), y=f32(conv.tpr[str(name)]), mode="lines",
                                 name=f"{name} (AUROC {auc_text})",
                                 hovertemplate="FPR %{x:.3f}, TPR %{y:.3f}<extra>" + str(name) + "</extra>"))
    fig.update_xaxes(title="false positive rate", range=[0, 1], constrain="domain")
    fig.update_yaxes(title="true positive rate", range=[0, 1.01], scaleanchor="x", scaleratio=1)
    return layout(fig, "ROC: convergence score as a predictor of correctness", 480)


def steps_vs_rating(conv: ConvergenceStudy) -> go.Figure:
    steps = conv.settle_answer if conv.settle_answer is not None else conv.steps
    rating, correct = conv.rating, conv.correct.astype(bool)
    fig = go.Figure()
    for mask, name, colour in ((correct, "correct", CORRECT), (~correct, "incorrect", INCORRECT)):
        fig.add_trace(go.Scattergl(x=f32(rating[mask]), y=f32(steps[mask]), mode="markers", name=name,
                                   marker={"color": colour, "size": 6, "opacity": 0.6},
                                   hovertemplate="rating %{x}, steps %{y}<extra>" + name + "</extra>"))
    rho, p = conv.spearman_rho, conv.spearman_p
    positive = rating[rating > 0]
    log = positive.size == rating.size and rating.size > 0 and positive.max() / positive.min() >= 100
    fig.update_xaxes(title="difficulty rating", type="log" if log else "linear")
    fig.update_yaxes(title="outer step the answer settles (selected restart)")
    easy = ""
    if conv.easy_count:
        easy = f"; {conv.easy_settled_within_5} of {conv.easy_count} '{conv.easy_band or ''}' puzzles within 5 steps"
    return layout(fig, f"Steps to settle vs difficulty (Spearman ρ = {num(rho)}, p = {num(p)}{easy})", 440)


def halting(conv: ConvergenceStudy) -> go.Figure:
    conv.need("halt_rules")
    fig = go.Figure()
    for rule in map(str, conv.halt_rules):
        steps, acc, values = conv.halt_mean_steps[rule], conv.halt_accuracy[rule], conv.halt_values[rule]
        fig.add_trace(go.Scatter(x=f32(steps), y=f32(acc), mode="lines+markers", name=str(rule),
                                 customdata=f32(values),
                                 hovertemplate="%{customdata:.3g}: %{y:.3f} at %{x:.1f} steps<extra>" + str(rule)
                                 + "</extra>"))
    fig.update_xaxes(title="mean outer steps")
    fig.update_yaxes(title="accuracy (selected restart)", range=[0, 1.02])
    return layout(fig, "Adaptive compute replayed from the run", 440)


def endings(conv: ConvergenceStudy, title: str = "How rollouts ended") -> go.Figure:
    conv.need("ending_names", "ending_counts")
    return _ending_bars(conv.ending_names, conv.ending_counts, title)


def end_states(ends: EndStates) -> go.Figure:
    return _ending_bars(ends.ending_names, ends.ending_counts, "End states after a noise-free polish")


def _ending_bars(names: np.ndarray, counts: np.ndarray, title: str) -> go.Figure:
    fig = go.Figure(go.Bar(x=[str(n) for n in names], y=counts, marker_color="#4c78a8", text=counts,
                           textposition="outside", hovertemplate="%{x}: %{y}<extra></extra>"))
    fig.update_yaxes(title="restarts")
    return layout(fig, title, 380)


def lyapunov(lya: LyapunovSurvey) -> go.Figure:
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
    return layout(fig, f"Largest Lyapunov exponents ({counts})", 380)


def probes(probe: CellProbes) -> go.Figure:
    steps, acc, std = probe.steps, probe.cell_accuracy, probe.cell_accuracy_std
    fig = go.Figure(go.Scatter(x=np.concatenate([steps, steps[::-1]]),
                               y=f32(np.concatenate([acc + std, (acc - std)[::-1]])), mode="lines", fill="toself",
                               fillcolor=rgba("#4c78a8", 0.2), line={"width": 0}, hoverinfo="skip",
                               showlegend=False))
    fig.add_trace(go.Scatter(x=steps, y=f32(acc), mode="lines+markers", name="all cells", line={"color": "#4c78a8"},
                             hovertemplate="step %{x}: %{y:.1%}<extra>all cells</extra>"))
    if probe.correct_accuracy is not None:
        fig.add_trace(go.Scatter(x=steps, y=f32(probe.correct_accuracy), mode="lines+markers",
                                 name="puzzles solved correctly", line={"color": CORRECT, "dash": "dash"},
                                 hovertemplate="step %{x}: %{y:.1%}<extra>correct puzzles</extra>"))
    if probe.cell_chance is not None:  # always predicting the commoner label
        fig.add_hline(y=float(probe.cell_chance), line={"dash": "dot", "color": GREY},
                      annotation_text="chance (majority label)", annotation_position="bottom right")
    fig.update_xaxes(title="outer step")
    fig.update_yaxes(title="probe cell accuracy", tickformat=".0%", range=[0, 1.02])
    return layout(fig, "Linear probe accuracy vs outer step", 420)


# ---------------------------------------------------------------- trajectories

def trajectories(emb: TrajectoryEmbedding) -> go.Figure:
    coords, steps, correct, puzzle = emb.coords, emb.steps, emb.correct.astype(bool), emb.puzzle_index
    n, b, s = coords.shape[:3]
    take = min(n * b, MAX_TRAJECTORIES)
    xy = f32(coords.reshape(n * b, s, 2)[:take])
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
        marker={"color": f32(np.tile(steps, take)), "colorscale": "Viridis", "size": 5,
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
    method, var = str(emb.method).upper(), emb.explained_variance
    axis = [f"{method} {i + 1}" + (f" ({100 * float(var[i]):.1f}% var.)" if var is not None else "")
            for i in range(2)]
    fig.update_xaxes(title=axis[0])
    fig.update_yaxes(title=axis[1])
    shown = f"first {take} of {n * b}" if take < n * b else f"all {take}"
    return layout(
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
