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

import plotly.graph_objects as go
import plotly.offline

from attractorlab.errors import OutputError, check_output_file
from attractorlab.recording import Run, open_run
from attractorlab.report import attractors
from attractorlab.report import figures as plots
from attractorlab.report.style import (
    CORRECT,
    CORRECT_SHADES,
    FIGURES,
    GREY,
    INCORRECT,
    LABELS,
    MAX_TRAJECTORIES,
    MONO,
    SPURIOUS_COLOURS,
    TEMPLATE,
    FigureInfo,
    grid_html,
)
from attractorlab.results import (
    CellProbes,
    ConvergenceStudy,
    EndStates,
    IncompleteResult,
    InnerSettling,
    LyapunovSurvey,
    PuzzleBasins,
    PuzzleFixedPoints,
    RestartSelection,
    RunSummary,
    ScalingCurves,
    StoredResult,
    TrajectoryEmbedding,
)

__all__ = ["ANALYSES", "CORRECT", "CORRECT_SHADES", "FIGURES", "GREY", "INCORRECT", "LABELS", "MAX_TRAJECTORIES",
           "MONO", "SECTIONS", "SPURIOUS_COLOURS", "TEMPLATE", "FigureInfo", "build_figures", "grid_html",
           "write_report"]

ANALYSES = ("summary", "scaling", "convergence", "probes", "inner", "embedding", "end_states", "lyapunov", "selection",
            "fixed_points", "basins")

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

CONTAINERS: dict[str, type[StoredResult]] = {
    "summary": RunSummary, "scaling": ScalingCurves, "convergence": ConvergenceStudy, "embedding": TrajectoryEmbedding,
    "probes": CellProbes, "inner": InnerSettling, "end_states": EndStates, "lyapunov": LyapunovSurvey,
    "selection": RestartSelection, "fixed_points": PuzzleFixedPoints, "basins": PuzzleBasins}
"""The container each stored analysis reads back into (``fixed_points`` and ``basins``: one per puzzle)."""

# ---------------------------------------------------------------- assembly

def _collect(run: Run) -> tuple[dict[str, go.Figure], list[tuple[str, str]]]:
    """All figures whose analyses are stored, and (analysis, reason) for those that are not."""
    keys = run.analysis_keys()
    missing: list[tuple[str, str]] = []
    results: dict[str, StoredResult] = {}
    groups: dict[str, list[StoredResult]] = {"fixed_points": [], "basins": []}
    broken: dict[str, str] = {}  # analysis -> why its stored result does not read into its container

    def read(key: str, container: type[StoredResult]) -> StoredResult | None:
        res = run.read_analysis(key)
        if "skipped_reason" in res.attrs:
            missing.append((key, str(res.attrs["skipped_reason"])))
            return None
        try:
            return container.from_result(res)
        except IncompleteResult as err:
            broken[key.split("/")[0]] = str(err)
            return None

    for name in ANALYSES:
        members = sorted((int(m.group(1)), k) for k in keys if (m := re.fullmatch(rf"{name}/p(\d+)", k)))
        if name in keys:
            if (result := read(name, CONTAINERS[name])) is not None:
                results[name] = result
        elif name in groups and members:
            groups[name] += [r for _, key in members if (r := read(key, CONTAINERS[name])) is not None]
        else:
            missing.append((name, "not computed"))
    builders = {
        "summary": ("summary", lambda: plots.summary(results["summary"], results.get("convergence"))),
        "scaling_depth": ("scaling", lambda: plots.scaling(results["scaling"], "depth")),
        "scaling_breadth": ("scaling", lambda: plots.scaling(results["scaling"], "breadth")),
        "selection": ("selection", lambda: plots.selection(results["selection"])),
        "inner": ("inner", lambda: plots.inner(results["inner"])),
        "residual_curves": ("convergence", lambda: plots.residual_curves(results["convergence"])),
        "roc": ("convergence", lambda: plots.roc(results["convergence"])),
        "steps_vs_rating": ("convergence", lambda: plots.steps_vs_rating(results["convergence"])),
        "endings": ("convergence", lambda: plots.endings(results["convergence"])),
        "halting": ("convergence", lambda: plots.halting(results["convergence"])),
        "end_states": ("end_states", lambda: plots.end_states(results["end_states"])),
        "lyapunov": ("lyapunov", lambda: plots.lyapunov(results["lyapunov"])),
        "probes": ("probes", lambda: plots.probes(results["probes"])),
        "trajectories": ("embedding", lambda: plots.trajectories(results["embedding"])),
        "spectra": ("fixed_points", lambda: attractors.spectra(groups["fixed_points"])),
        "spectral_radius": ("fixed_points", lambda: attractors.spectral_radius(groups["fixed_points"])),
        "basin_maps": ("basins", lambda: attractors.basin_maps(run, groups["basins"])),
        "basin_stability": ("basins", lambda: attractors.basin_stability(run, groups["basins"])),
    }
    figures: dict[str, go.Figure] = {}
    for fig_name, (source, build) in builders.items():
        if source in broken:
            missing.append((f"{source} ({fig_name})", broken[source]))
        if source not in results and not groups.get(source):
            continue
        try:
            figures[fig_name] = build()
        except IncompleteResult as err:
            missing.append((f"{source} ({fig_name})", str(err)))
    answers = plots.answers(run)
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
    check_output_file(out_html, "report")
    with open_run(run_path) as run:
        figures, missing = _collect(run)
        text = _render(run, figures, missing)
    write_html(text, out_html)
    return list(figures)


def write_html(page: str | go.Figure, path: str | os.PathLike, what: str = "report") -> None:
    """Write an HTML page (or a figure, with plotly.js inlined) to ``path`` atomically: a temporary file in the
    same folder, then ``os.replace``; a failure leaves no partial file and raises :class:`OutputError`."""
    path = os.fspath(path)
    text = page if isinstance(page, str) else page.to_html(include_plotlyjs=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "x", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(err, OSError):
            raise OutputError(f"cannot write the {what} {path} ({err.strerror or err})") from None
        raise
