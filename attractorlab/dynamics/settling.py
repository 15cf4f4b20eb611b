"""When does a rollout settle, and what would each halting rule have done? From one fixed-depth run's arrays.

Inputs follow the run-file layout (``[..., T]`` per outer step, e.g. ``[N, B, T]``; ``pred [..., T, L]``); steps are
1-based outer steps, as in ``/rollout/steps``.

- :func:`steps_to_settle`: the first step after which the read-out answer never changes, and the first step after
  which the residual stays within the noise floor: steps to *settle*, not steps *run* (which is flat at the
  depth for a run without early halting).
- :func:`replay_halting`: replay a halting rule of ``attractorlab.rollout`` (``q``, ``converge``, ``stable``,
  ``never``) post hoc on a run that did not halt: the step each rollout would have halted at and whether it was
  correct there.
- :func:`halting_curves`: accuracy against mean steps for each rule over a sweep of its threshold: the
  adaptive-compute curve without re-running.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np

from ._records import answer_change_steps, as_record_array, last_index_where, record_lengths

HALT_RULES = ("never", "q", "converge", "stable")
"""The halting rules of ``attractorlab.rollout`` that :func:`replay_halting` reproduces."""


def _check_window(window: int, name: str = "window") -> None:
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"{name} must be a positive integer, got {window!r}")


@dataclass
class Settling:
    """Steps to settle per rollout (1-based outer steps; ``never = T + 1`` where a rollout did not settle).

    answer_step, answer_settled: [...] first step from which the read-out answer stays the final one, and whether
    it was held for at least ``window`` steps (None without answers); residual_step, residual_settled: [...]
    first step from which the residual stays ``<= margin * floor`` to the last recorded step (None without
    residuals); depth: T; never: the sentinel ``T + 1``.
    """

    answer_step: np.ndarray | None
    answer_settled: np.ndarray | None
    residual_step: np.ndarray | None
    residual_settled: np.ndarray | None
    depth: int
    never: int

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in asdict(self).items() if v is not None}


def _settle(flags: np.ndarray, lengths: np.ndarray, window: int, t: int, offset: int):
    """The settle step from flags [M, T]: ``offset`` (1-based) steps after the last flag among the first
    ``lengths [M]`` steps (offset 1: a flag marks the arrival of the final state, 2: a step that is not settled),
    and whether it was held ``length - s + 1 >= window`` steps. Returns (step [M] int32, ``t + 1`` where not
    settled; settled [M] bool)."""
    step = last_index_where(flags, lengths) + offset
    settled = lengths - step + 1 >= window
    return np.where(settled, step, t + 1).astype(np.int32), settled


def steps_to_settle(
    pred=None,
    residual=None,
    floor=None,
    *,
    changed=None,
    steps=None,
    margin: float = 1.0,
    window: int = 1,
) -> Settling:
    """Steps to settle, from answers and/or residuals.

    - answer: the first step ``s`` after which the read-out never changes again, i.e. ``1 +`` the last step whose
      answer differs from the previous one (step 1 counts as a change: the initial read-out is not recorded),
      so ``s`` is in ``1..length``; with ``window > 1`` a rollout whose final answer was held fewer than
      ``window`` steps has not settled.
    - residual: the first step ``s`` from which ``residual <= margin * floor`` at every recorded step to the last;
      a rollout whose last residual is above it has not settled.

    Not settled: ``never = T + 1`` (so that it sorts after every real step; the ``*_settled`` masks tell them
    apart). Args: pred [..., T, L] or ``changed [..., T]`` (answer-change flags as from the rollout, True where
    the answer differs from the previous step's); residual [..., T]; floor: scalar or broadcastable to [...]
    (needed with residual; :mod:`attractorlab.dynamics.noise`); steps [...]: recorded lengths (later entries are
    ignored).
    """
    if pred is None and changed is None and residual is None:
        raise ValueError("give pred (or changed) and/or residual")
    _check_window(window)
    ref = residual if residual is not None else changed
    shape = as_record_array(ref, "residual").shape if ref is not None else as_record_array(pred, "pred", 2).shape[:-1]
    t = shape[-1]
    lengths = record_lengths(steps, shape).reshape(-1)
    answer_step = answer_settled = residual_step = residual_settled = None
    if pred is not None or changed is not None:
        flags = answer_change_steps(pred, changed, shape).reshape(-1, t).copy()
        flags[:, 0] = True
        answer_step, answer_settled = _settle(flags, lengths, window, t, offset=1)
        answer_step, answer_settled = answer_step.reshape(shape[:-1]), answer_settled.reshape(shape[:-1])
    if residual is not None:
        res = as_record_array(residual, "residual").astype(np.float64)
        if floor is None:
            raise ValueError("floor is needed to settle on residuals (0 for exact convergence)")
        if not (isinstance(margin, (int, float)) and margin > 0):
            raise ValueError(f"margin must be a positive number, got {margin!r}")
        floor_arr = as_record_array(floor, "floor", 0).astype(np.float64)
        if not (np.isfinite(floor_arr).all() and (floor_arr >= 0).all()):
            raise ValueError("floor must be finite and >= 0")
        threshold = np.broadcast_to(floor_arr, shape[:-1]).reshape(-1, 1) * margin
        above = ~(res.reshape(-1, t) <= threshold)
        residual_step, residual_settled = _settle(above, lengths, window, t, offset=2)
        residual_step, residual_settled = residual_step.reshape(shape[:-1]), residual_settled.reshape(shape[:-1])
    return Settling(answer_step, answer_settled, residual_step, residual_settled, t, t + 1)


class HaltReplay(NamedTuple):
    """Outcome of replaying a halting rule: ``steps_used [...]`` (1-based step it halts at) and
    ``correct_at_halt [...]`` (correctness there). Unpacks as ``steps_used, correct_at_halt = ...``."""

    steps_used: np.ndarray
    correct_at_halt: np.ndarray

    def mean_steps(self) -> float:
        return float(self.steps_used.mean()) if self.steps_used.size else float("nan")

    def accuracy(self) -> float:
        return float(self.correct_at_halt.mean()) if self.correct_at_halt.size else float("nan")

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"steps_used": self.steps_used, "correct_at_halt": self.correct_at_halt}


def _run_length(settled: np.ndarray) -> np.ndarray:
    """Consecutive True entries ending at each step (the rollout's ``below`` counter). settled: [M, T]."""
    pos = np.arange(settled.shape[1])
    last_reset = np.maximum.accumulate(np.where(settled, -1, pos), axis=1)
    return pos - last_reset


def _as_dtype_of(threshold: float, x: np.ndarray) -> np.ndarray:
    """The threshold in x's floating dtype: the rollout compares a float32 tensor with a Python float in float32."""
    return np.asarray(threshold, dtype=x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64)


def _rule_input(x, name: str, rule: str, shape: tuple) -> np.ndarray:
    """The recorded array a halting rule reads, checked against the run's ``[..., T]`` shape."""
    if x is None:
        raise ValueError(f"rule {rule!r} needs {name}")
    arr = as_record_array(x, name)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    return arr


def _halt_flags(rule, shape, residual, halt_logit, pred, changed, initial_pred, tol, patience, threshold):
    """Where the rule says stop, before the forced halt: [M, T] bool."""
    m, t = int(np.prod(shape[:-1])), shape[-1]
    if rule == "never":
        return np.zeros((m, t), dtype=bool)
    if rule == "q":
        q = _rule_input(halt_logit, "halt_logit", rule, shape)
        return (q > _as_dtype_of(threshold, q)).reshape(m, t)
    _check_window(patience, "patience")
    if rule == "converge":
        res = _rule_input(residual, "residual", rule, shape)
        settled = (res < _as_dtype_of(tol, res)).reshape(m, t)
    else:
        if pred is None and changed is None:
            raise ValueError("rule 'stable' needs pred (or changed)")
        settled = ~answer_change_steps(pred, changed, shape, initial_pred).reshape(m, t)
    return _run_length(settled) >= patience


def replay_halting(
    rule: str,
    residual=None,
    halt_logit=None,
    pred=None,
    correct=None,
    tol: float = 1e-3,
    patience: int = 2,
    *,
    threshold: float = 0.0,
    initial_pred=None,
    changed=None,
    steps=None,
) -> HaltReplay:
    """Replay a halting rule of ``attractorlab.rollout`` on the arrays of one run that ran every step.

    The live rule, reproduced exactly: at outer step t (1-based) the rollout halts when
    ``q``: ``halt_logit > threshold`` (0 in the rollout); ``converge``: ``residual < tol`` held for ``patience``
    consecutive steps (the ``below`` counter, reset by any step that misses); ``stable``: the read-out answer equal
    to the previous step's for ``patience`` consecutive steps (at step 1 the previous answer is the read-out of
    the initial state, ``initial_pred [..., L]``: run files do not record it, and without it step 1 counts as a
    change); ``never``: no rule. Every rollout halts at the last step ``T`` at the latest (or at its recorded
    ``steps`` when the run itself halted earlier: entries after it repeat the last and are not used).
    Comparisons are made in the dtype of the recorded arrays (float32 in run files), as the rollout does.

    Args: residual, halt_logit, correct: [..., T]; pred [..., T, L] or ``changed [..., T]`` (answer-change flags);
    correct is required (it fixes the shape). Returns :class:`HaltReplay` (``steps_used``, ``correct_at_halt``).
    """
    if rule not in HALT_RULES:
        raise ValueError(f"unknown halt rule {rule!r}; choose one of {', '.join(HALT_RULES)}")
    if correct is None:
        raise ValueError("correct [..., T] is required")
    ok = as_record_array(correct, "correct").astype(bool)
    shape = ok.shape
    t = shape[-1]
    lengths = record_lengths(steps, shape).reshape(-1)
    stop = _halt_flags(rule, shape, residual, halt_logit, pred, changed, initial_pred, tol, patience, threshold)
    stop = stop | (np.arange(t) == lengths[:, None] - 1)
    first = np.argmax(stop, axis=1)
    correct_at = np.take_along_axis(ok.reshape(-1, t), first[:, None], axis=1)[:, 0]
    return HaltReplay((first + 1).astype(np.int32).reshape(shape[:-1]), correct_at.reshape(shape[:-1]))


@dataclass
class HaltingCurve:
    """Accuracy against mean steps for one rule over a sweep of its parameter.

    rule; parameter: its name (``depth``, ``threshold``, ``tol`` or ``patience``); values: [P] the swept values;
    mean_steps, accuracy: [P] over all rollouts (accuracy = mean correctness at the halting step).
    """

    rule: str
    parameter: str
    values: np.ndarray
    mean_steps: np.ndarray
    accuracy: np.ndarray


@dataclass
class HaltingCurves:
    """:class:`HaltingCurve` per rule (``curves``: rule -> curve)."""

    curves: dict[str, HaltingCurve]

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat dict ``{rule}/values``, ``{rule}/mean_steps``, ``{rule}/accuracy``, ``{rule}/parameter``."""
        out: dict[str, np.ndarray] = {}
        for rule, c in self.curves.items():
            out[f"{rule}/values"], out[f"{rule}/mean_steps"], out[f"{rule}/accuracy"] = (
                c.values, c.mean_steps, c.accuracy)
            out[f"{rule}/parameter"] = np.asarray(c.parameter, dtype="S")
        return out


def _default_values(rule: str, x: np.ndarray | None, t: int, n_points: int) -> np.ndarray:
    """Sweep values: quantiles of the finite halting logits (and 0) for ``q``, of the positive finite residuals
    for ``converge``, patience 1..min(T, 16) for ``stable``, depths 1..T for ``never``."""
    if rule == "never":
        return np.arange(1, t + 1)
    if rule == "stable":
        return np.arange(1, min(t, 16) + 1)
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype(np.float64)
    vals = x[np.isfinite(x)]
    if rule == "converge":
        vals = vals[vals > 0]
    if vals.size == 0:
        return np.zeros(1) if rule == "q" else np.ones(1)
    qs = np.quantile(vals, np.linspace(0, 1, n_points), method="inverted_cdf").astype(dtype)
    if rule == "converge":
        return np.unique(np.nextafter(qs, dtype.type(np.inf)))  # residual < tol: halts on the quantile itself
    return np.unique(np.append(qs, 0.0))


def halting_curves(
    residual=None,
    halt_logit=None,
    pred=None,
    correct=None,
    *,
    rules: tuple[str, ...] | None = None,
    values: dict[str, np.ndarray] | None = None,
    tol: float = 1e-3,
    patience: int = 2,
    initial_pred=None,
    changed=None,
    steps=None,
    n_points: int = 21,
) -> HaltingCurves:
    """Accuracy vs mean steps for each halting rule over a sweep of its parameter, from one fixed-depth run.

    Sweeps: ``never`` over the depth (halting at step d for every rollout: the fixed-depth curve), ``q`` over
    the threshold on the halting logit, ``converge`` over ``tol`` (at the given ``patience``), ``stable`` over
    ``patience``; ``values`` (rule -> array) overrides the defaults (``n_points`` quantiles of the recorded
    values). ``rules`` defaults to every rule whose inputs are given. Inputs as in :func:`replay_halting`.
    """
    if correct is None:
        raise ValueError("correct [..., T] is required")
    have = {"never": True, "q": halt_logit is not None, "converge": residual is not None,
            "stable": pred is not None or changed is not None}
    rules = tuple(r for r in HALT_RULES if have[r]) if rules is None else tuple(rules)
    needs = {"q": "halt_logit", "converge": "residual", "stable": "pred (or changed)"}
    for rule in rules:
        if rule not in HALT_RULES:
            raise ValueError(f"unknown halt rule {rule!r}; choose one of {', '.join(HALT_RULES)}")
        if not have[rule]:
            raise ValueError(f"rule {rule!r} needs {needs[rule]}")
    values = dict(values or {})
    ok = as_record_array(correct, "correct").astype(bool)
    t = ok.shape[-1]
    common = dict(residual=residual, halt_logit=halt_logit, pred=pred, correct=ok, tol=tol, patience=patience,
                  initial_pred=initial_pred, changed=changed, steps=steps)
    source = {"q": halt_logit, "converge": residual}
    names = {"never": "depth", "q": "threshold", "converge": "tol", "stable": "patience"}
    curves = {}
    for rule in rules:
        x = None if source.get(rule) is None else as_record_array(source[rule], rule)
        sweep = np.asarray(values[rule]) if rule in values else _default_values(rule, x, t, n_points)
        steps_acc = np.array([_sweep_point(rule, v, common) for v in sweep]).reshape(-1, 2)
        curves[rule] = HaltingCurve(rule, names[rule], sweep, steps_acc[:, 0], steps_acc[:, 1])
    return HaltingCurves(curves)


def _sweep_point(rule: str, value, common: dict) -> tuple[float, float]:
    """(mean steps, accuracy) of one rule at one parameter value."""
    if rule == "never":
        ok = common["correct"]
        depth = int(value)
        if not 1 <= depth <= ok.shape[-1]:
            raise ValueError(f"depths must lie in 1..{ok.shape[-1]}, got {depth}")
        lengths = record_lengths(common["steps"], ok.shape)
        used = np.minimum(lengths, depth)
        correct_at = np.take_along_axis(ok, (used - 1)[..., None], axis=-1)[..., 0]
        return float(used.mean()), float(correct_at.mean())
    kwargs = dict(common)
    if rule == "q":
        kwargs["threshold"] = float(value)
    elif rule == "converge":
        kwargs["tol"] = float(value)
    else:
        kwargs["patience"] = int(value)
    replay = replay_halting(rule, **kwargs)
    return replay.mean_steps(), replay.accuracy()
