"""Linking convergence to correctness, from the plain arrays of a run file.

Inputs follow the run-file layout (``trajectories/README``): per puzzle ``N``, restart ``B`` and outer step
``T``, e.g. ``residual [N, B, T]``, ``halt_logit [N, B, T]``, ``correct [N, B, T]``, ``valid [N, B, T]``,
``steps [N, B]`` (entries after halting repeat the last), ``pred [N, B, T, 81]``, ``rating [N]``. Any leading
shape ``[..., T]`` works; numpy arrays or torch tensors. Results are small dataclasses of numpy arrays with
``to_arrays()``.

- :func:`residual_curves`: median and quartiles per step, correct vs incorrect trajectories.
- :func:`auroc_scores`: how well convergence scores (final residual, mean of the last residuals, halting
  logit, logit change) predict final correctness (AUROC and ROC curves).
- :func:`steps_vs_difficulty`: Spearman correlation of steps-to-halt with the puzzle rating.
- :func:`classify_endings`: each trajectory ends converged on a valid solution, converged on an invalid one
  (a spurious fixed point), in a cycle (with its period) or still drifting.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score, roc_curve

CONVERGED_VALID, CONVERGED_INVALID, CYCLE, DRIFTING = 0, 1, 2, 3
ENDING_NAMES = ("converged_valid", "converged_invalid", "cycle", "drifting")
"""Codes of :attr:`Endings.label`: index into this tuple."""


def _array(x, name: str, ndim_min: int = 1) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim < ndim_min:
        raise ValueError(f"{name} must have at least {ndim_min} dimensions, got shape {x.shape}")
    return x


def _lengths(steps, shape: tuple[int, ...]) -> np.ndarray:
    """Recorded length of each trajectory: ``steps`` clipped to ``[1, T]`` (T when steps is None)."""
    lead, t = shape[:-1], shape[-1]
    if steps is None:
        return np.full(lead, t, dtype=np.int64)
    steps = _array(steps, "steps", 0)
    if steps.shape != lead:
        raise ValueError(f"steps must have shape {lead}, got {steps.shape}")
    return np.clip(steps.astype(np.int64), 1, t)


def final_values(x, steps=None) -> np.ndarray:
    """Value of ``x [..., T]`` at the last recorded step, ``steps - 1`` (``T - 1`` without steps): ``[...]``.
    """
    x = _array(x, "x")
    idx = _lengths(steps, x.shape) - 1
    return np.take_along_axis(x, idx[..., None], axis=-1)[..., 0]


def _tail_mean(x: np.ndarray, lengths: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``window`` recorded values of each row of x [..., T]."""
    t = x.shape[-1]
    offsets = np.arange(window)
    idx = np.clip(lengths[..., None] - window + offsets, 0, t - 1)
    keep = lengths[..., None] - window + offsets >= 0
    vals = np.take_along_axis(x.astype(np.float64), idx, axis=-1)
    return np.where(keep, vals, 0.0).sum(-1) / keep.sum(-1)


def _correct_final(correct, shape: tuple[int, ...], steps) -> np.ndarray:
    correct = _array(correct, "correct").astype(bool)
    if correct.shape == shape:
        return final_values(correct, steps)
    if correct.shape == shape[:-1]:
        return correct
    raise ValueError(f"correct must have shape {shape} or {shape[:-1]}, got {correct.shape}")


@dataclass
class SplitCurves:
    """Per-step median and quartiles of a quantity, split by final correctness.

    step: [T] (1-based); correct_* / incorrect_*: [T] (NaN where a group has no recorded value);
    n_correct, n_incorrect: trajectory counts.
    """

    step: np.ndarray
    correct_median: np.ndarray
    correct_q25: np.ndarray
    correct_q75: np.ndarray
    incorrect_median: np.ndarray
    incorrect_q25: np.ndarray
    incorrect_q75: np.ndarray
    n_correct: int
    n_incorrect: int

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in asdict(self).items()}


def _quantiles(rows: np.ndarray) -> np.ndarray:
    """25th, 50th and 75th percentiles of each column of rows [M, T], ignoring NaN -> [3, T]."""
    out = np.full((3, rows.shape[1]), np.nan)
    for t in range(rows.shape[1]):
        col = rows[:, t][~np.isnan(rows[:, t])]
        if col.size:
            out[:, t] = np.percentile(col, [25, 50, 75])
    return out


def residual_curves(residual, correct_final, *, steps=None) -> SplitCurves:
    """Median / quartile curves of ``residual [..., T]`` for finally-correct vs incorrect trajectories.

    ``correct_final`` is ``[...]`` (or ``[..., T]``, then its value at the last recorded step). With
    ``steps``, values after a trajectory halted are left out. Works for any per-step quantity (e.g.
    ``halt_logit``).
    """
    values = _array(residual, "residual").astype(np.float64)
    shape = values.shape
    label = _correct_final(correct_final, shape, steps).reshape(-1)
    values = values.reshape(-1, shape[-1])
    lengths = _lengths(steps, shape).reshape(-1)
    values = np.where(np.arange(shape[-1]) < lengths[:, None], values, np.nan)
    values = np.where(np.isfinite(values), values, np.nan)
    good, bad = _quantiles(values[label]), _quantiles(values[~label])
    return SplitCurves(
        step=np.arange(1, shape[-1] + 1),
        correct_q25=good[0], correct_median=good[1], correct_q75=good[2],
        incorrect_q25=bad[0], incorrect_median=bad[1], incorrect_q75=bad[2],
        n_correct=int(label.sum()), n_incorrect=int((~label).sum()),
    )


@dataclass
class ScoreROC:
    """ROC analysis of one score (higher score = predicts correct).

    auroc: NaN when undefined (then ``reason`` says why); fpr, tpr, thresholds: the ROC curve.
    """

    name: str
    auroc: float
    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    reason: str = ""


@dataclass
class AurocResult:
    """AUROC of several convergence scores as predictors of final correctness.

    scores: name -> :class:`ScoreROC`; n_correct / n_incorrect: class sizes.
    """

    scores: dict[str, ScoreROC]
    n_correct: int
    n_incorrect: int

    def auroc(self) -> dict[str, float]:
        """Name -> AUROC."""
        return {name: s.auroc for name, s in self.scores.items()}

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat dict: ``{name}/auroc``, ``{name}/fpr``, ``{name}/tpr``, ``{name}/thresholds``, class sizes."""
        out: dict[str, np.ndarray] = {"n_correct": np.asarray(self.n_correct),
                                      "n_incorrect": np.asarray(self.n_incorrect)}
        for name, s in self.scores.items():
            out[f"{name}/auroc"] = np.asarray(s.auroc)
            out[f"{name}/fpr"], out[f"{name}/tpr"], out[f"{name}/thresholds"] = s.fpr, s.tpr, s.thresholds
        return out


def _roc(name: str, score: np.ndarray, label: np.ndarray) -> ScoreROC:
    empty = np.zeros(0)
    if label.all() or not label.any():
        which = "correct" if label.all() else "incorrect"
        return ScoreROC(name, float("nan"), empty, empty, empty, f"only one class (all {which})")
    finite = np.isfinite(score)
    if not finite.any():
        return ScoreROC(name, float("nan"), empty, empty, empty, "no finite score")
    score = np.where(finite, score, score[finite].min() - 1.0)
    fpr, tpr, thresholds = roc_curve(label, score)
    return ScoreROC(name, float(roc_auc_score(label, score)), fpr, tpr, thresholds)


def auroc_scores(
    residual,
    correct,
    *,
    halt_logit=None,
    logit_change=None,
    steps=None,
    window: int = 3,
) -> AurocResult:
    """AUROC of convergence scores as predictors of final correctness, over all trajectories.

    Scores (higher = predicted correct): ``final_residual`` (minus the residual at the last recorded step),
    ``mean_last{window}_residual`` (minus the mean of the last ``window`` residuals), ``halt_logit`` (its
    final value, when given) and ``logit_change`` (minus the mean of the last ``window`` values: the reference
    convergence score, when given). residual, halt_logit, logit_change: [..., T]; correct: [..., T] or [...].
    """
    res = _array(residual, "residual").astype(np.float64)
    shape = res.shape
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive integer, got {window!r}")
    label = _correct_final(correct, shape, steps).reshape(-1)
    lengths = _lengths(steps, shape)
    raw = {"final_residual": -final_values(res, steps),
           f"mean_last{window}_residual": -_tail_mean(res, lengths, window)}
    for name, x, sign, reducer in (("halt_logit", halt_logit, 1.0, "final"),
                                   ("logit_change", logit_change, -1.0, "tail")):
        if x is None:
            continue
        x = _array(x, name).astype(np.float64)
        if x.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got {x.shape}")
        raw[name] = sign * (final_values(x, steps) if reducer == "final" else _tail_mean(x, lengths, window))
    scores = {name: _roc(name, s.reshape(-1), label) for name, s in raw.items()}
    return AurocResult(scores, n_correct=int(label.sum()), n_incorrect=int((~label).sum()))


@dataclass
class DifficultyResult:
    """Steps to halt against puzzle difficulty.

    rho, pvalue: Spearman correlation of mean steps per puzzle with rating (NaN with ``reason`` if undefined);
    n: puzzles; bin_edges [n_bins+1] (rating quantiles), bin_mean_steps, bin_count [n_bins].
    """

    rho: float
    pvalue: float
    n: int
    bin_edges: np.ndarray
    bin_mean_steps: np.ndarray
    bin_count: np.ndarray
    reason: str = ""

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in asdict(self).items()}


def steps_vs_difficulty(steps, rating, *, n_bins: int = 5) -> DifficultyResult:
    """Spearman correlation between steps to halt (``[N]``, or ``[N, B]`` averaged over restarts) and
    ``rating [N]``, plus mean steps in ``n_bins`` rating-quantile bins."""
    steps = _array(steps, "steps").astype(np.float64)
    rating = _array(rating, "rating").astype(np.float64)
    if rating.ndim != 1 or steps.shape[0] != rating.shape[0] or steps.ndim > 2:
        raise ValueError(f"steps must be [N] or [N, B] and rating [N], got {steps.shape} and {rating.shape}")
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    per_puzzle = steps.mean(axis=1) if steps.ndim == 2 else steps
    keep = np.isfinite(per_puzzle) & np.isfinite(rating)
    x, y = rating[keep], per_puzzle[keep]
    edges = np.unique(np.quantile(x, np.linspace(0, 1, n_bins + 1))) if x.size else np.zeros(0)
    which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, max(len(edges) - 2, 0))
    n_b = max(len(edges) - 1, 1) if x.size else 0
    count = np.bincount(which, minlength=n_b)[:n_b] if x.size else np.zeros(0, dtype=np.int64)
    sums = np.bincount(which, weights=y, minlength=n_b)[:n_b] if x.size else np.zeros(0)
    mean = np.divide(sums, count, out=np.full(n_b, np.nan), where=count > 0)
    reason = ""
    if x.size < 3:
        reason = f"need at least 3 puzzles, got {x.size}"
    elif np.ptp(x) == 0 or np.ptp(y) == 0:
        reason = "constant input (" + ("rating" if np.ptp(x) == 0 else "steps") + ")"
    if reason:
        rho = pvalue = float("nan")
    else:
        res = spearmanr(x, y)
        rho, pvalue = float(res.statistic), float(res.pvalue)
    return DifficultyResult(rho, pvalue, int(x.size), edges, mean, count, reason)


@dataclass
class Endings:
    """How each trajectory ends.

    label: [...] int8 codes into :data:`ENDING_NAMES`; period: [...] cycle period (0 unless ``CYCLE``);
    counts: [4] trajectories per ending; names: the ending names.
    """

    label: np.ndarray
    period: np.ndarray
    counts: np.ndarray
    names: tuple[str, ...] = ENDING_NAMES

    def fractions(self) -> dict[str, float]:
        total = max(int(self.counts.sum()), 1)
        return {name: float(c) / total for name, c in zip(self.names, self.counts, strict=True)}

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"label": self.label, "period": self.period, "counts": self.counts,
                "names": np.asarray(self.names, dtype=object).astype("S")}


def _tail_windows(x: np.ndarray, lengths: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Last ``width`` recorded entries of each row of x [M, T, ...].

    Returns (windows [M, width, ...], valid [M, width])."""
    t = x.shape[1]
    pos = lengths[:, None] - width + np.arange(width)
    valid = pos >= 0
    idx = np.clip(pos, 0, t - 1)
    return x[np.arange(x.shape[0])[:, None], idx], valid


def _smallest_period(same, valid: np.ndarray, max_period: int, min_period: int) -> np.ndarray:
    """Smallest p in [min_period, max_period] with ``same(p)[m, i]`` for every valid i >= p and at least two
    full periods in the window; 0 if none. ``same(p)`` compares window entries i and i - p -> [M, W - p]."""
    period = np.zeros(valid.shape[0], dtype=np.int64)
    n_valid = valid.sum(axis=1)
    for p in range(max_period, min_period - 1, -1):
        if p >= valid.shape[1]:
            continue
        both = valid[:, p:] & valid[:, :-p]
        ok = np.where(both, same(p), True).all(axis=1) & (n_valid >= 2 * p)
        period = np.where(ok, p, period)
    return period


def classify_endings(
    residual,
    valid,
    *,
    pred=None,
    steps=None,
    tol: float = 1e-3,
    max_period: int = 8,
    tail: int | None = None,
    cycle_rtol: float = 1e-3,
) -> Endings:
    """Classify each trajectory's ending from its recorded residuals (and predictions).

    - converged (final residual <= ``tol``): ``converged_valid`` if the final prediction is valid, else
      ``converged_invalid`` (a fixed point that is not a solution);
    - ``cycle``: with ``pred [..., T, 81]``, the predictions over the last ``tail`` steps repeat with a
      smallest period 2..``max_period``; without ``pred`` (or with a constant readout), the residuals repeat
      with a smallest period of at least 2 (relative tolerance ``cycle_rtol``; the state's period may then be
      a multiple);
    - ``drifting``: everything else (including constant non-zero residuals, which cannot tell a 2-cycle from
      steady motion).

    residual, valid: [..., T]; steps: [...] (only recorded steps are used); tail defaults to
    ``3 * max_period`` steps and needs two full periods.
    """
    res = _array(residual, "residual").astype(np.float64)
    shape = res.shape
    valid = _array(valid, "valid").astype(bool)
    if valid.shape != shape:
        raise ValueError(f"valid must have shape {shape}, got {valid.shape}")
    if not isinstance(max_period, int) or max_period < 2:
        raise ValueError(f"max_period must be an integer >= 2, got {max_period!r}")
    tail = 3 * max_period if tail is None else tail
    if not isinstance(tail, int) or tail < 4:
        raise ValueError(f"tail must be an integer >= 4, got {tail!r}")
    lengths = _lengths(steps, shape).reshape(-1)
    flat = res.reshape(-1, shape[-1])
    converged = final_values(flat, lengths) <= tol
    final_valid = final_values(valid.reshape(-1, shape[-1]), lengths)
    width = min(tail, shape[-1])
    period = np.zeros(flat.shape[0], dtype=np.int64)
    readout_constant = np.ones(flat.shape[0], dtype=bool)
    if pred is not None:
        p_arr = _array(pred, "pred", 2)
        if p_arr.shape[:-1] != shape:
            raise ValueError(f"pred must have shape {shape + (p_arr.shape[-1],)}, got {p_arr.shape}")
        win, ok = _tail_windows(p_arr.reshape(flat.shape[0], shape[-1], -1), lengths, width)
        period = _smallest_period(lambda p: (win[:, p:] == win[:, :-p]).all(axis=-1), ok, max_period, 1)
        readout_constant = period == 1
        period = np.where(readout_constant, 0, period)
    win, ok = _tail_windows(flat, lengths, width)
    scale = np.maximum(np.abs(win), np.finfo(np.float64).tiny)
    res_period = _smallest_period(lambda p: np.abs(win[:, p:] - win[:, :-p]) <= cycle_rtol * scale[:, p:],
                                  ok, max_period, 1)
    res_period = np.where(res_period == 1, 0, res_period)
    period = np.where(readout_constant & (period == 0), res_period, period)
    label = np.full(flat.shape[0], DRIFTING, dtype=np.int8)
    label[period > 0] = CYCLE
    label[converged & final_valid] = CONVERGED_VALID
    label[converged & ~final_valid] = CONVERGED_INVALID
    period = np.where(label == CYCLE, period, 0)
    counts = np.bincount(label, minlength=len(ENDING_NAMES))
    return Endings(label=label.reshape(shape[:-1]), period=period.reshape(shape[:-1]).astype(np.int32),
                   counts=counts)
