"""Probe: does the residual predict correctness better than the halting logit?

Over every recorded rollout (or only the selected restart per puzzle), final correctness is predicted by
convergence scores (``attractorlab.dynamics.auroc_scores``): minus the final residual ``||z_t - z_{t-1}|| /
||z_t||``, minus the mean of the last residuals, the learned halting logit and minus the logit change (the
reference selection score). AUROCs get 95% bootstrap intervals, resampling puzzles (restarts of one puzzle
stay together); the paired difference residual - halting logit gets one too. A second panel asks how early
each score knows: AUROC of the score at step t for the final outcome.

    python probes/residual_vs_halting.py --run trajectories/run.h5 --out-dir probes/out
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from plotly.subplots import make_subplots

from attractorlab import dynamics, recording

RESIDUAL, HALT = "final_residual", "halt_logit"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="run file (any run: only the rollout scalars are used)")
    p.add_argument("--out-dir", default=".", help="folder for the figure (residual_vs_halting.html)")
    p.add_argument("--selected", action="store_true", help="only the selected restart of each puzzle")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of puzzles for the CIs")
    p.add_argument("--window", type=int, default=3, help="steps averaged by the mean-residual and logit scores")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    return p


def interval(values: np.ndarray) -> tuple[float, float]:
    """95% percentile interval of the finite values (NaN, NaN when there are none)."""
    finite = values[np.isfinite(values)]
    return tuple(np.percentile(finite, [2.5, 97.5])) if finite.size else (float("nan"), float("nan"))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with recording.open_run(args.run) as run:
        r = run.rollout
        arrays = {"residual": r.residual, "halt_logit": r.halt_logit, "logit_change": r.logit_change,
                  "correct": r.correct[:, :, -1], "steps": r.steps}
        if args.selected:
            arrays = {k: v[np.arange(run.n), r.selected][:, None] for k, v in arrays.items()}

    def scores(idx: np.ndarray) -> dynamics.AurocResult:
        a = {k: v[idx] for k, v in arrays.items()}
        return dynamics.auroc_scores(a["residual"], a["correct"], halt_logit=a["halt_logit"],
                                     logit_change=a["logit_change"], steps=a["steps"], window=args.window)

    n = len(arrays["correct"])
    full = scores(np.arange(n))
    rng = np.random.default_rng(args.seed)
    boot = {name: np.full(args.bootstrap, np.nan) for name in full.scores}
    for i in range(args.bootstrap):
        for name, value in scores(rng.integers(0, n, n)).auroc().items():
            boot[name][i] = value
    print(f"{n} puzzles, {full.n_correct} correct / {full.n_incorrect} incorrect rollouts "
          f"({'selected restart' if args.selected else 'all restarts'}), {args.bootstrap} bootstrap resamples")
    print(f"{'score':<24} {'AUROC':>7} {'95% CI':>17}")
    for name, roc in full.scores.items():
        lo, hi = interval(boot[name])
        note = f"  ({roc.reason})" if roc.reason else ""
        print(f"{name:<24} {roc.auroc:>7.3f} [{lo:6.3f}, {hi:6.3f}]{note}")
    diff = full.scores[RESIDUAL].auroc - full.scores[HALT].auroc
    lo, hi = interval(boot[RESIDUAL] - boot[HALT])
    verdict = ("undefined" if np.isnan(lo) else "residual better" if lo > 0 else "halting logit better" if hi < 0
               else "no clear difference at 95%")
    print(f"{'residual - halt_logit':<24} {diff:>7.3f} [{lo:6.3f}, {hi:6.3f}]  -> {verdict}")

    T = arrays["residual"].shape[-1]
    by_step = {RESIDUAL: np.full(T, np.nan), HALT: np.full(T, np.nan)}
    for t in range(1, T + 1):
        res = dynamics.auroc_scores(arrays["residual"][..., :t], arrays["correct"],
                                    halt_logit=arrays["halt_logit"][..., :t], steps=np.minimum(arrays["steps"], t))
        for name in by_step:
            by_step[name][t - 1] = res.scores[name].auroc

    fig = make_subplots(rows=1, cols=2, subplot_titles=("ROC (final step)", "AUROC of the score at step t"))
    for name, roc in full.scores.items():
        fig.add_scatter(x=roc.fpr, y=roc.tpr, name=f"{name} ({roc.auroc:.3f})", mode="lines", row=1, col=1)
    for name, curve in by_step.items():
        fig.add_scatter(x=np.arange(1, T + 1), y=curve, name=f"{name} at step t (final outcome)", mode="lines+markers",
                        row=1, col=2)
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line_dash="dash", line_color="grey", showlegend=False,
                    row=1, col=1)
    fig.update_xaxes(title_text="false positive rate", row=1, col=1)
    fig.update_yaxes(title_text="true positive rate", row=1, col=1)
    fig.update_xaxes(title_text="outer step t", row=1, col=2)
    fig.update_yaxes(title_text="AUROC", range=[0, 1.02], row=1, col=2)
    fig.update_layout(title="Does the residual predict correctness better than the halting logit?",
                      template="plotly_white")
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, "residual_vs_halting.html")
    fig.write_html(path, include_plotlyjs=True)
    print(f"figure: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
