"""Linear probes on latent states: what can be read out linearly, and from which step on.

- :func:`probe_cells`: per recorded step, a multinomial logistic regression decodes each cell's label (a
  Sudoku digit, a maze cell's on-path flag) from that cell's latent vector (one probe per step, shared over the
  L cells).
- :func:`probe_correctness`: per recorded step, a logistic regression predicts whether the puzzle ends solved
  from the whole (flattened) state.

Both cross-validate with folds over *puzzles* (all cells of a puzzle stay in one fold), seeded, and return a
:class:`ProbeResult` with the mean and standard deviation over folds.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from attractorlab.errors import InputError

N_SPLITS = 3
"""Cross-validation folds of the probes (folds split puzzles, so a run needs at least this many)."""


@dataclass
class ProbeResult:
    """Probe accuracy per recorded step.

    step: [T] indices of the probed steps; accuracy_mean, accuracy_std: [T] over folds; auroc_mean, auroc_std:
    [T] (correctness probes only, else NaN); chance: accuracy of always predicting the majority class;
    converged: [T] whether every fold's solver converged within ``max_iter``; n_samples: rows per step.
    """

    kind: str
    step: np.ndarray
    accuracy_mean: np.ndarray
    accuracy_std: np.ndarray
    auroc_mean: np.ndarray
    auroc_std: np.ndarray
    chance: float
    converged: np.ndarray
    n_samples: int

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in asdict(self).items()}


def _array(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        x = x.float() if str(x.dtype) in ("torch.float16", "torch.bfloat16") else x
        x = x.numpy()
    return np.asarray(x)


def _folds(groups_per_class: list[np.ndarray], n_splits: int, rng: np.random.Generator, n: int) -> np.ndarray:
    """Fold index per group: each class's groups shuffled and dealt round-robin (stratified when several)."""
    fold = np.empty(n, dtype=np.int64)
    for members in groups_per_class:
        members = rng.permutation(members)
        fold[members] = np.arange(members.size) % n_splits
    return fold


def _fit_score(X, y, fold, n_splits, C, max_iter, seed, auroc: bool):
    """Cross-validated accuracy (and AUROC) of a scaled logistic regression; returns arrays over folds."""
    acc, auc, converged = [], [], True
    for k in range(n_splits):
        train, test = fold != k, fold == k
        if not test.any() or np.unique(y[train]).size < 2:
            continue
        model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model.fit(X[train], y[train])
        for w in caught:
            if issubclass(w.category, ConvergenceWarning):
                converged = False
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        acc.append(model.score(X[test], y[test]))
        if auroc:
            auc.append(roc_auc_score(y[test], model.predict_proba(X[test])[:, 1])
                       if np.unique(y[test]).size == 2 else np.nan)
    return np.asarray(acc), np.asarray(auc), converged


def _check_common(n_splits: int, max_iter: int, C: float) -> None:
    if not isinstance(n_splits, int) or n_splits < 2:
        raise InputError(f"n_splits must be an integer >= 2, got {n_splits!r}")
    if not isinstance(max_iter, int) or max_iter < 1:
        raise InputError(f"max_iter must be a positive integer, got {max_iter!r}")
    if not (isinstance(C, (int, float)) and C > 0):
        raise InputError(f"C must be a positive number, got {C!r}")


def _steps(steps, t: int) -> np.ndarray:
    idx = np.arange(t) if steps is None else np.asarray(steps, dtype=np.int64).reshape(-1)
    if idx.size == 0 or idx.min() < -t or idx.max() >= t:
        raise InputError(f"steps must index the {t} recorded steps, got {steps!r}")
    return idx % t


def _nanstat(values: np.ndarray) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    return (float(values.mean()), float(values.std())) if values.size else (float("nan"), float("nan"))


def probe_cells(
    states,
    targets,
    *,
    steps=None,
    n_splits: int = N_SPLITS,
    max_samples: int = 10000,
    max_iter: int = 200,
    C: float = 1.0,
    seed: int = 0,
) -> ProbeResult:
    """Decode each cell's label from its latent vector, at each recorded step.

    Args:
        states: [N, T, L, h] or [N, T, L * h] latent states (numpy or torch).
        targets: [N, L] labels per cell in the task's answer encoding (0 = unknown, left out).
        steps: which of the T steps to probe (default: all).
        n_splits: cross-validation folds over puzzles.
        max_samples: at most this many (puzzle, cell) rows per step, drawn by puzzle with ``seed``.
        max_iter, C: logistic-regression iterations and inverse regularisation.

    Returns:
        :class:`ProbeResult` (``kind="cells"``); chance is the majority label frequency.
    """
    _check_common(n_splits, max_iter, C)
    x = _array(states, "states")
    y = _array(targets, "targets")
    if y.ndim != 2:
        raise InputError(f"targets must be [N, L] labels per cell, got shape {y.shape}")
    cells = y.shape[1]
    if x.ndim == 3 and x.shape[2] % cells == 0:
        x = x.reshape(x.shape[0], x.shape[1], cells, -1)
    if x.ndim != 4 or x.shape[2] != cells:
        raise InputError(f"states must be [N, T, {cells}, h] or [N, T, {cells}*h] for targets [N, {cells}], "
                         f"got {x.shape}")
    n, t = x.shape[:2]
    if y.shape[0] != n:
        raise InputError(f"targets must have shape ({n}, {cells}), got {y.shape}")
    if n < n_splits:
        raise InputError(f"need at least n_splits={n_splits} puzzles, got {n}")
    rng = np.random.default_rng(seed)
    puzzles = np.arange(n)
    per_puzzle = max(int((y > 0).sum(axis=1).mean()), 1)
    if n * per_puzzle > max_samples:
        puzzles = np.sort(rng.choice(n, max(max_samples // per_puzzle, n_splits), replace=False))
    fold_of_puzzle = _folds([np.arange(puzzles.size)], n_splits, rng, puzzles.size)
    yy = y[puzzles].reshape(-1)
    keep = yy > 0
    fold = np.repeat(fold_of_puzzle, cells)[keep]
    yy = yy[keep]
    if np.unique(yy).size < 2:
        raise InputError("targets must contain at least two different labels")
    chance = float(np.bincount(yy).max() / yy.size)
    idx = _steps(steps, t)
    out = np.full((4, idx.size), np.nan)
    conv = np.ones(idx.size, dtype=bool)
    for i, s in enumerate(idx):
        X = x[puzzles, s].reshape(-1, x.shape[3])[keep].astype(np.float64)
        acc, _, conv[i] = _fit_score(X, yy, fold, n_splits, C, max_iter, seed, auroc=False)
        out[0, i], out[1, i] = _nanstat(acc)
    return ProbeResult("cells", idx, out[0], out[1], out[2], out[3], chance, conv, int(yy.size))


def probe_correctness(
    states,
    correct,
    *,
    steps=None,
    n_splits: int = N_SPLITS,
    max_iter: int = 200,
    C: float = 1.0,
    seed: int = 0,
) -> ProbeResult:
    """Predict final correctness of each puzzle from its latent state, at each recorded step.

    Args:
        states: [N, T, D] (or [N, T, ...], flattened) latent states.
        correct: [N] bool, whether the puzzle ends solved.
        steps, n_splits, max_iter, C, seed: as in :func:`probe_cells`; folds are stratified by class.

    Returns:
        :class:`ProbeResult` (``kind="correctness"``) with accuracy and AUROC per step.
    """
    _check_common(n_splits, max_iter, C)
    x = _array(states, "states")
    y = _array(correct, "correct").astype(bool).reshape(-1)
    if x.ndim < 3 or x.shape[0] != y.size:
        raise InputError(f"states must be [N, T, D] with N = len(correct) = {y.size}, got {x.shape}")
    n, t = x.shape[:2]
    x = x.reshape(n, t, -1)
    if min(y.sum(), (~y).sum()) < n_splits:
        raise InputError(f"need at least n_splits={n_splits} correct and incorrect puzzles, "
                         f"got {int(y.sum())} and {int((~y).sum())}")
    rng = np.random.default_rng(seed)
    fold = _folds([np.flatnonzero(y), np.flatnonzero(~y)], n_splits, rng, n)
    chance = float(max(y.mean(), 1 - y.mean()))
    idx = _steps(steps, t)
    out = np.full((4, idx.size), np.nan)
    conv = np.ones(idx.size, dtype=bool)
    for i, s in enumerate(idx):
        acc, auc, conv[i] = _fit_score(x[:, s].astype(np.float64), y.astype(np.int64), fold, n_splits, C,
                                       max_iter, seed, auroc=True)
        out[0, i], out[1, i] = _nanstat(acc)
        out[2, i], out[3, i] = _nanstat(auc)
    return ProbeResult("correctness", idx, out[0], out[1], out[2], out[3], chance, conv, n)
