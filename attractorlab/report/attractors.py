"""Figures of the per-puzzle analyses: fixed points (Jacobian spectra, spectral radius) and basins of
attraction (basin maps, basin stability)."""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go

from attractorlab.recording import Run
from attractorlab.report.style import (
    GREY,
    LABELS,
    MONO,
    attractor_styles,
    f32,
    grid_html,
    layout,
    lighten,
    num,
    pct,
    puzzle_label,
    puzzle_menu,
    rgba,
)
from attractorlab.results import PuzzleBasins, PuzzleFixedPoints
from attractorlab.tasks import get_task

# ---------------------------------------------------------------- fixed points

def spectra(points: list[PuzzleFixedPoints]) -> go.Figure:
    fig = go.Figure()
    for label, (name, colour) in LABELS.items():
        for stable_kind, symbol in ((True, "circle"), (False, "circle-open")):
            xs, ys, text = [], [], []
            for fp in points:
                eig, lab, stable, pi = fp.eigvals, fp.label, fp.stable.astype(bool), fp.puzzle_index
                for m in np.flatnonzero((lab == label) & (stable == stable_kind)):
                    xs.append(eig[m].real)
                    ys.append(eig[m].imag)
                    text += [f"puzzle {pi}, fixed point {m}"] * eig.shape[1]
            if xs:
                kind = "stable" if stable_kind else "unstable"
                fig.add_trace(go.Scattergl(x=f32(np.concatenate(xs)), y=f32(np.concatenate(ys)), mode="markers",
                                           name=f"{name}, {kind}", text=text, legendgroup=name,
                                           marker={"color": colour, "symbol": symbol, "size": 8,
                                                   "line": {"color": colour, "width": 1.5}},
                                           hovertemplate=f"%{{text}} ({kind})<br>λ = %{{x:.3f}} %{{y:+.3f}}i"
                                                         "<extra></extra>"))
    fig.add_shape(type="circle", xref="x", yref="y", x0=-1, y0=-1, x1=1, y1=1,
                  line={"color": "black", "dash": "dash", "width": 1})
    fig.update_xaxes(title="Re λ", zeroline=True)
    fig.update_yaxes(title="Im λ", scaleanchor="x", scaleratio=1, zeroline=True)
    return layout(fig, "Jacobian eigenvalues at fixed points", 560)


def spectral_radius(points: list[PuzzleFixedPoints]) -> go.Figure:
    fig = go.Figure()
    for label, (name, colour) in LABELS.items():
        rho, text = [], []
        for fp in points:
            lab, radius, resid, pi = fp.label, fp.spectral_radius, fp.residual, fp.puzzle_index
            for m in np.flatnonzero(lab == label):
                rho.append(radius[m])
                text.append(f"puzzle {pi}, fixed point {m}, residual {resid[m]:.2g}")
        if rho:
            fig.add_trace(go.Box(y=f32(rho), name=name, text=text, boxpoints="all", jitter=0.4, pointpos=0,
                                 marker={"color": colour, "size": 7}, line={"color": colour},
                                 fillcolor=rgba(LABELS[label][1], 0.15),
                                 hovertemplate="%{text}<br>spectral radius %{y:.3f}<extra></extra>"))
    fig.add_hline(y=1, line={"dash": "dash", "color": "black", "width": 1})
    fig.update_yaxes(title="spectral radius of the Jacobian")
    return layout(fig, "Spectral radius: correct vs spurious fixed points", 440, showlegend=False)


# ---------------------------------------------------------------- basins

def basin_maps(run: Run, items: list[PuzzleBasins]) -> go.Figure:
    fig, titles, spans = go.Figure(), [], []
    for b in items:
        lo = len(fig.data)
        label_map, steps_map = b.map_label, f32(b.map_steps)
        xs, ys = f32(b.xs), f32(b.ys)
        grids, styles = b.attractor_grid, attractor_styles(b.attractor_label)
        finite = steps_map[np.isfinite(steps_map)]
        zmin, zmax = (float(finite.min()), float(finite.max()) + 1e-6) if finite.size else (0.0, 1.0)
        cells = [(k, name, colour, grid_html(grids[k], get_task(run.task))) for k, (name, colour) in enumerate(styles)]
        cells.append((-1, "not converged", GREY, "(no attractor reached)"))
        for k, name, colour, grid in cells:
            mask = label_map == k
            if not mask.any():
                continue
            fig.add_trace(go.Heatmap(
                x=xs, y=ys, z=np.where(mask, steps_map, np.float32(np.nan)), zmin=zmin, zmax=zmax, name=name,
                colorscale=[[0, colour], [1, lighten(colour, 0.7 if k >= 0 else 0.0)]], showscale=False,
                showlegend=True, hoverongaps=False, hoverlabel=MONO,
                hovertemplate=f"<b>{html.escape(name)}</b><br>steps: %{{z:.0f}}<br>at (%{{x:.3g}}, %{{y:.3g}})"
                              f"<br><br>{grid}<extra></extra>"))
        anchors = f32(b.anchor_coords).reshape(-1, 2)
        fig.add_trace(go.Scatter(x=anchors[:, 0], y=anchors[:, 1], mode="markers+text", name="anchors",
                                 text=[str(a) for a in b.anchor_names], textposition="top center",
                                 textfont={"color": "black", "size": 12},
                                 marker={"symbol": "star-open", "size": 22, "color": "black",
                                         "line": {"width": 2}},
                                 hovertemplate="anchor %{text}<extra></extra>"))
        fp, stable = f32(b.fp_coords).reshape(-1, 2), b.fp_stable.astype(bool)
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
            measures = (f" (basin entropy {num(b.basin_entropy)}, boundary {num(b.boundary_basin_entropy)}; "
                        f"boundary cells {pct(float(b.boundary_fraction or 0.0))})")
        titles.append(f"Basin map — {puzzle_label(run, int(b.puzzle_index))}{measures}")
    for i, trace in enumerate(fig.data):
        trace.visible = spans[0][0] <= i < spans[0][1]
    menus = puzzle_menu(titles, spans, len(fig.data)) if len(items) > 1 else []
    fig.update_xaxes(title="plane coordinate u", showgrid=False, zeroline=False)
    fig.update_yaxes(title="plane coordinate v", showgrid=False, zeroline=False, scaleanchor="x", scaleratio=1)
    return layout(fig, titles[0], 680, updatemenus=menus, margin={"t": 100, "b": 50},
                   legend={"x": 1.02, "y": 1, "bgcolor": "rgba(255,255,255,0.85)"})


def basin_stability(run: Run, items: list[PuzzleBasins]) -> go.Figure:
    fig, titles = go.Figure(), []
    for i, b in enumerate(items):
        frac, err = f32(b.fraction), f32(b.stderr)
        styles = attractor_styles(b.attractor_label) + [("not converged", GREY)]
        fig.add_trace(go.Bar(x=[s[0] for s in styles], y=frac, error_y={"type": "data", "array": err},
                             marker_color=[s[1] for s in styles], visible=i == 0, showlegend=False,
                             hovertemplate="%{x}: %{y:.1%} ± %{error_y.array:.1%}<extra></extra>"))
        titles.append(f"Basin stability — {puzzle_label(run, int(b.puzzle_index))}, {num(b.samples)} samples")
    menus = puzzle_menu(titles, [(i, i + 1) for i in range(len(items))], len(items)) if len(items) > 1 else []
    fig.update_yaxes(title="fraction of initial states", tickformat=".0%", rangemode="tozero")
    return layout(fig, titles[0], 440, updatemenus=menus, margin={"t": 100, "b": 60})
