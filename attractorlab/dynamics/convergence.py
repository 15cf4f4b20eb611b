"""Linking convergence to correctness, from the plain arrays of a run file.

Inputs follow the run-file layout (``trajectories/README``): per puzzle ``N``, restart ``B`` and outer step
``T``, e.g. ``residual [N, B, T]``, ``halt_logit [N, B, T]``, ``correct [N, B, T]``, ``valid [N, B, T]``,
``steps [N, B]`` (entries after halting repeat the last), ``pred [N, B, T, L]``, ``rating [N]``. Any leading
shape ``[..., T]`` works; numpy arrays or torch tensors. Results are small dataclasses of numpy arrays with
``to_arrays()``.

- :func:`residual_curves`: median and quartiles per step, correct vs incorrect trajectories.
- :func:`auroc_scores`: how well convergence scores (final residual, mean of the last residuals, halting
  logit, logit change) predict final correctness (AUROC and ROC curves).
- :func:`steps_vs_difficulty`: Spearman correlation of steps (to halt, or to settle:
  :func:`~attractorlab.dynamics.settling.steps_to_settle`) with the puzzle rating.
- :func:`classify_endings`: each trajectory ends converged on a valid solution, converged on an invalid one
  (a spurious fixed point), in a cycle (with its period) or still drifting; under path noise against the
  residual's noise floor (:mod:`attractorlab.dynamics.noise`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score, roc_curve

from ._records import as_record_array, final_values, record_lengths, tail_mean, tail_windows
from .settling import Settling

CONVERGED_VALID, CONVERGED_INVALID, CYCLE, DRIFTING = 0, 1, 2, 3
ENDING_NAMES = ("converged_valid", "converged_invalid", "cycle", "drifting")
"""Codes of :attr:`Endings.label`: index into this tuple."""


def _correct_final(correct, shape: tuple[int, ...], steps) -> np.ndarray:
    correct = as_record_array(correct, "correct").astype(bool)
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
    values = as_record_array(residual, "residual").astype(np.float64)
    shape = values.shape
    label = _correct_final(correct_final, shape, steps).reshape(-1)
    values = values.reshape(-1, shape[-1])
    lengths = record_lengths(steps, shape).reshape(-1)
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
    res = as_record_array(residual, "residual").astype(np.float64)
    shape = res.shape
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive integer, got {window!r}")
    label = _correct_final(correct, shape, steps).reshape(-1)
    lengths = record_lengths(steps, shape)
    raw = {"final_residual": -final_values(res, steps),
           f"mean_last{window}_residual": -tail_mean(res, lengths, window)}
    for name, x, sign, reducer in (("halt_logit", halt_logit, 1.0, "final"),
                                   ("logit_change", logit_change, -1.0, "tail")):
        if x is None:
            continue
        x = as_record_array(x, name).astype(np.float64)
        if x.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got {x.shape}")
        raw[name] = sign * (final_values(x, steps) if reducer == "final" else tail_mean(x, lengths, window))
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


def _steps_per_puzzle(steps, which: str, unsettled: str) -> np.ndarray:
    """Steps [N] or [N, B] as float64, from an array or a :class:`~attractorlab.dynamics.settling.Settling`."""
    if which not in ("answer", "residual"):
        raise ValueError(f"which must be 'answer' or 'residual', got {which!r}")
    if unsettled not in ("keep", "drop"):
        raise ValueError(f"unsettled must be 'keep' or 'drop', got {unsettled!r}")
    settled = None
    if isinstance(steps, Settling):
        settled = steps.answer_settled if which == "answer" else steps.residual_settled
        steps = steps.answer_step if which == "answer" else steps.residual_step
        if steps is None:
            raise ValueError(f"the Settling result has no {which} steps")
    steps = as_record_array(steps, "steps").astype(np.float64)
    if unsettled == "drop" and settled is not None:
        steps = np.where(settled, steps, np.nan)
    return steps


def steps_vs_difficulty(steps, rating, *, n_bins: int = 5, which: str = "answer",
                        unsettled: str = "keep") -> DifficultyResult:
    """Spearman correlation between steps (``[N]``, or ``[N, B]`` averaged over restarts) and ``rating [N]``,
    plus mean steps in ``n_bins`` rating-quantile bins.

    ``steps`` is steps to halt (``/rollout/steps``: flat at the depth for a run without early halting), steps to
    settle, or a :class:`~attractorlab.dynamics.settling.Settling` from
    :func:`~attractorlab.dynamics.settling.steps_to_settle` (``which``: its ``answer`` or ``residual`` steps).
    A rollout that never settled carries ``T + 1`` and ranks as the slowest (``unsettled="keep"``); with
    ``unsettled="drop"`` (a Settling only) it is left out and a puzzle's mean runs over its other restarts.
    """
    steps = _steps_per_puzzle(steps, which, unsettled)
    rating = as_record_array(rating, "rating").astype(np.float64)
    if rating.ndim != 1 or steps.shape[0] != rating.shape[0] or steps.ndim > 2:
        raise ValueError(f"steps must be [N] or [N, B] and rating [N], got {steps.shape} and {rating.shape}")
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    per_puzzle = steps
    if steps.ndim == 2 and unsettled == "drop":
        finite = np.isfinite(steps)
        count = finite.sum(axis=1)
        total = np.where(finite, steps, 0.0).sum(axis=1)
        per_puzzle = np.divide(total, count, out=np.full(count.shape, np.nan), where=count > 0)
    elif steps.ndim == 2:
        per_puzzle = steps.mean(axis=1)
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
    counts: [4] trajectories per ending; names: the ending names; threshold: [...] the residual level a
    trajectory had to stay within to count as converged (``floor_margin * floor``; only when a noise floor was
    given, NaN for rows classified without one).
    """

    label: np.ndarray
    period: np.ndarray
    counts: np.ndarray
    names: tuple[str, ...] = ENDING_NAMES
    threshold: np.ndarray | None = None

    def fractions(self) -> dict[str, float]:
        total = max(int(self.counts.sum()), 1)
        return {name: float(c) / total for name, c in zip(self.names, self.counts, strict=True)}

    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {"label": self.label, "period": self.period, "counts": self.counts,
               "names": np.asarray(self.names, dtype=object).astype("S")}
        if self.threshold is not None:
            out["threshold"] = self.threshold
        return out


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


def _floor_rows(floor, lead: tuple[int, ...], floor_margin: float, window: int) -> np.ndarray:
    """The noise floor per trajectory ``[M]`` (0: classify without one) from a scalar or an array
    broadcastable to ``lead``."""
    if not (isinstance(floor_margin, (int, float)) and floor_margin > 0 and np.isfinite(floor_margin)):
        raise ValueError(f"floor_margin must be a positive finite number, got {floor_margin!r}")
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive integer, got {window!r}")
    rows = int(np.prod(lead))
    if floor is None:
        return np.zeros(rows)
    arr = as_record_array(floor, "floor", 0).astype(np.float64)
    if not (np.isfinite(arr).all() and (arr >= 0).all()):
        raise ValueError("floor must be finite and >= 0 (0 or None: no noise floor)")
    try:
        return np.broadcast_to(arr, lead).reshape(rows)
    except ValueError:
        raise ValueError(f"floor must be a scalar or broadcastable to {lead}, got shape {arr.shape}") from None


def _converged_under_noise(flat, p_flat, lengths, threshold, window) -> np.ndarray:
    """Rows [M] whose last ``window`` recorded residuals (flat [M, T]) all lie within ``threshold [M]`` and,
    with predictions (p_flat [M, T, L] or None), whose read-out did not change over those steps."""
    win, ok = tail_windows(flat, lengths, min(window, flat.shape[1]))
    within = np.where(ok, win <= threshold[:, None], True).all(axis=1)
    if p_flat is None:
        return within
    pwin, pok = tail_windows(p_flat, lengths, min(window, flat.shape[1]))
    same = (pwin == pwin[:, -1:]).all(axis=-1)
    return within & np.where(pok, same, True).all(axis=1)


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
    floor=None,
    floor_margin: float = 2.0,
    window: int = 3,
) -> Endings:
    """Classify each trajectory's ending from its recorded residuals (and predictions).

    - converged: without a noise floor (``floor`` None or 0, the default) when the final residual is
      ``<= tol``; with a floor (path noise keeps the residual of a state at a stable fixed point near its noise
      floor, see :mod:`attractorlab.dynamics.noise`) when every residual of the last ``window`` recorded steps
      is ``<= floor_margin * floor`` and, with ``pred``, the read-out did not change over them. Then
      ``converged_valid`` if the final prediction is valid, else ``converged_invalid`` (a fixed point that is
      not a solution);
    - ``cycle``: with ``pred [..., T, L]``, the predictions over the last ``tail`` steps repeat with a
      smallest period 2..``max_period``; without ``pred`` (or with a constant readout), the residuals repeat
      with a smallest period of at least 2 (relative tolerance ``cycle_rtol``, plus ``floor_margin * floor`` under
      noise; the
      state's period may then be a multiple: a 2-cycle shows in the relative residual only when its two states
      differ in norm);
    - ``drifting`` (still moving): everything else (including constant non-zero residuals, which cannot tell a
      2-cycle from steady motion, and motion slower than the floor, which only a noise-free polish can tell
      from rest: :func:`~attractorlab.dynamics.polishing.polish`).

    residual, valid: [..., T]; steps: [...] (only recorded steps are used); tail defaults to
    ``3 * max_period`` steps and needs two full periods; floor: a scalar or an array broadcastable to [...]
    (per trajectory, in the units of ``residual``).
    """
    res = as_record_array(residual, "residual").astype(np.float64)
    shape = res.shape
    valid = as_record_array(valid, "valid").astype(bool)
    if valid.shape != shape:
        raise ValueError(f"valid must have shape {shape}, got {valid.shape}")
    if not isinstance(max_period, int) or max_period < 2:
        raise ValueError(f"max_period must be an integer >= 2, got {max_period!r}")
    tail = 3 * max_period if tail is None else tail
    if not isinstance(tail, int) or tail < 4:
        raise ValueError(f"tail must be an integer >= 4, got {tail!r}")
    floor_m = _floor_rows(floor, shape[:-1], floor_margin, window)
    noisy = floor_m > 0
    lengths = record_lengths(steps, shape).reshape(-1)
    flat = res.reshape(-1, shape[-1])
    final_valid = final_values(valid.reshape(-1, shape[-1]), lengths)
    width = min(tail, shape[-1])
    period = np.zeros(flat.shape[0], dtype=np.int64)
    readout_constant = np.ones(flat.shape[0], dtype=bool)
    p_flat = None
    if pred is not None:
        p_arr = as_record_array(pred, "pred", 2)
        if p_arr.shape[:-1] != shape:
            raise ValueError(f"pred must have shape {shape + (p_arr.shape[-1],)}, got {p_arr.shape}")
        p_flat = p_arr.reshape(flat.shape[0], shape[-1], -1)
        win, ok = tail_windows(p_flat, lengths, width)
        period = _smallest_period(lambda p: (win[:, p:] == win[:, :-p]).all(axis=-1), ok, max_period, 1)
        readout_constant = period == 1
        period = np.where(readout_constant, 0, period)
    converged = final_values(flat, lengths) <= tol
    if noisy.any():
        threshold = floor_margin * floor_m
        converged = np.where(noisy, _converged_under_noise(flat, p_flat, lengths, threshold, window), converged)
    win, ok = tail_windows(flat, lengths, width)
    slack = cycle_rtol * np.maximum(np.abs(win), np.finfo(np.float64).tiny) + floor_margin * floor_m[:, None]
    res_period = _smallest_period(lambda p: np.abs(win[:, p:] - win[:, :-p]) <= slack[:, p:], ok, max_period, 1)
    res_period = np.where(res_period == 1, 0, res_period)
    period = np.where(readout_constant & (period == 0), res_period, period)
    label = np.full(flat.shape[0], DRIFTING, dtype=np.int8)
    label[period > 0] = CYCLE
    label[converged & final_valid] = CONVERGED_VALID
    label[converged & ~final_valid] = CONVERGED_INVALID
    period = np.where(label == CYCLE, period, 0)
    counts = np.bincount(label, minlength=len(ENDING_NAMES))
    threshold_out = None
    if floor is not None and noisy.any():
        threshold_out = np.where(noisy, floor_margin * floor_m, np.nan).reshape(shape[:-1])
    return Endings(label=label.reshape(shape[:-1]), period=period.reshape(shape[:-1]).astype(np.int32),
                   counts=counts, threshold=threshold_out)
