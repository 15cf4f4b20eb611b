"""The reference evaluation's metrics (``evaluators/eval_fn.py: evaluate, _update_di, _finish_di, _update_conv,
_finish_conv``, ``utils/metrics.py: compute_pass_at_k``): see :func:`evaluation_metrics`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from attractorlab.errors import InputError
from attractorlab.reference.errors import is_int

DEFAULT_KS = (1, 2, 4, 8, 16, 32, 64, 128)
"""The k of the reference's pass@k (``eval_fn._update_di``): reported for every k below the breadth."""


def logit_change(prev_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``[..., L, V] x2 -> [...]``: L2 norm over the vocabulary of the change per cell, averaged over cells
    (computed in float32; the reference subtracts in the logits' dtype)."""
    if prev_logits.shape != logits.shape or logits.ndim < 2:
        raise InputError(f"expected two [..., L, V] logits of one shape, got {list(prev_logits.shape)} and "
                         f"{list(logits.shape)}")
    return (logits.float() - prev_logits.float()).norm(dim=-1).mean(dim=-1)


def convergence_scores(changes: np.ndarray, window: int = 3) -> np.ndarray:
    """Convergence score of each restart (lower = more converged), ``[..., T] -> [...]``.

    ``changes[..., t]`` is :func:`logit_change` between outer steps ``t + 1`` and ``t + 2`` (steps counted from
    1, logits taken after each step: the random initial state has no logits, so no score uses it; D outer steps
    give T = D - 1 changes). The score is the mean of the last ``window`` changes; when ``window`` is 0 or
    ``>= T`` the reference averages all T (``eval_fn.evaluate``: ``if window > 0 and window < deltas.shape[0]``).
    ``config/eval/depth_breadth.yaml`` sets ``convergence_window: 3``. At depth 1 the reference reports no score.
    """
    changes = np.asarray(changes, dtype=np.float64)
    if changes.ndim < 1 or changes.shape[-1] < 1:
        raise InputError("convergence scores need at least one logit change, i.e. two outer steps")
    if not is_int(window) or window < 0:
        raise InputError(f"window must be an integer >= 0, got {window!r}")
    if 0 < window < changes.shape[-1]:
        changes = changes[..., -window:]
    return changes.mean(axis=-1)


def pass_at_k(n: int, c: np.ndarray, k: int) -> np.ndarray:
    """Unbiased pass@k (Chen et al. 2021): ``1 - C(n - c, k) / C(n, k)`` for ``c`` correct of ``n`` samples.

    Computed as ``1 - prod_{i = n - c + 1}^{n} (1 - k / i)``, stable for large n; 1 where ``n - c < k``.
    Same values as the reference ``utils/metrics.py: compute_pass_at_k(n, k, c)`` (there k > n gives 0; here
    it is an error).
    """
    if not is_int(n) or n < 1 or not is_int(k) or not 1 <= k <= n:
        raise InputError(f"pass@k needs integers 1 <= k <= n, got n={n!r}, k={k!r}")
    c = np.asarray(c)
    if not np.issubdtype(c.dtype, np.integer) or (c < 0).any() or (c > n).any():
        raise InputError(f"c must hold integer counts in [0, {n}]")
    keep = np.concatenate([[1.0], np.cumprod(1.0 - k / np.arange(n, k, -1, dtype=np.float64))])
    return np.where(c > n - k, 1.0, 1.0 - keep[np.minimum(c, n - k)])


def majority_vote(answers: np.ndarray) -> np.ndarray:
    """``[n, B, L] -> [n] int64``: the first restart holding each puzzle's most frequent exact answer.

    Ties go to the answer that appeared first, as in ``eval_fn._update_di`` (votes in an insertion-ordered dict,
    ``max`` keeps the first maximum).
    """
    answers = np.asarray(answers)
    if answers.ndim != 3 or 0 in answers.shape or not np.issubdtype(answers.dtype, np.integer):
        raise InputError(f"answers must be a non-empty [n, B, L] integer array, got {answers.dtype} "
                         f"{list(answers.shape)}")
    n, b, _ = answers.shape
    small = answers.min() >= 0 and answers.max() < 256
    tokens = np.ascontiguousarray(answers, dtype=np.uint8 if small else np.int64).reshape(n * b, -1)
    puzzle = np.repeat(np.arange(n, dtype=">u8"), b).view(np.uint8).reshape(n * b, 8)
    rows = np.ascontiguousarray(np.concatenate([puzzle, tokens.view(np.uint8)], axis=1))
    keys = rows.view(np.dtype((np.void, rows.shape[1]))).ravel()  # one exact byte string per (puzzle, answer)
    _, first, inverse, counts = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    votes, first_restart = counts[inverse].reshape(n, b), (first[inverse] % b).reshape(n, b)
    winner = np.where(votes == votes.max(axis=1, keepdims=True), first_restart, b)
    return winner.min(axis=1).astype(np.int64)


def evaluation_metrics(correct: np.ndarray, answers: np.ndarray, scores: np.ndarray | None = None,
                       token_accuracy: np.ndarray | None = None, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """The reference's depth x breadth report for ``n`` puzzles x ``B`` restarts.

    ``correct: [n, B]`` exact full answers, ``answers: [n, B, L]``, ``scores: [n, B]`` convergence scores,
    ``token_accuracy: [n, B]`` fraction of labelled cells right. Keys (reference names: :func:`reference_names`):

    - ``exact_accuracy``: mean over all n x B rows (= mean pass rate; the paper's "exact accuracy").
    - ``pass@k``: unbiased pass@k per puzzle, averaged, for each k in ``ks`` below B and for k = B (= any
      restart right).
    - ``majority_vote_accuracy`` (+ ``majority_vote_token_accuracy``): the :func:`majority_vote` answer.
    - ``convergence_top1_accuracy``: the restart with the lowest score (ties: the first); for k in ``ks``,
      1 < k < B, ``convergence_top{k}_accuracy`` (mean over the k lowest) and ``convergence_top{k}_any``.
      ``convergence_selected_score``: mean lowest score.
    - ``token_accuracy``: mean over all rows. ``puzzles``, ``breadth``: n and B.
    """
    correct = np.asarray(correct).astype(bool)
    if correct.ndim != 2 or 0 in correct.shape:
        raise InputError(f"correct must be a non-empty [n, B] array, got shape {list(correct.shape)}")
    n, b = correct.shape
    for name, value in (("answers", answers), ("scores", scores), ("token_accuracy", token_accuracy)):
        if value is not None and np.shape(value)[:2] != (n, b):
            raise InputError(f"{name} must start with [n, B] = [{n}, {b}], got shape {list(np.shape(value))}")
    if not all(is_int(k) and k >= 1 for k in ks):
        raise InputError(f"ks must be positive integers, got {ks!r}")
    counts = correct.sum(axis=1)
    out = {"puzzles": float(n), "breadth": float(b), "exact_accuracy": float(correct.mean())}
    for k in sorted({k for k in ks if k < b} | {b}):
        out[f"pass@{k}"] = float(pass_at_k(b, counts, k).mean())
    winner = majority_vote(answers)[:, None]
    out["majority_vote_accuracy"] = float(np.take_along_axis(correct, winner, 1).mean())
    if token_accuracy is not None:
        token_accuracy = np.asarray(token_accuracy, dtype=np.float64)
        out["token_accuracy"] = float(token_accuracy.mean())
        out["majority_vote_token_accuracy"] = float(np.take_along_axis(token_accuracy, winner, 1).mean())
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64)
        order = np.argsort(scores, axis=1, kind="stable")
        chosen = np.take_along_axis(correct, order, 1)
        out["convergence_top1_accuracy"] = float(chosen[:, 0].mean())
        out["convergence_selected_score"] = float(np.take_along_axis(scores, order[:, :1], 1).mean())
        for k in sorted({k for k in ks if 1 < k < b}):
            out[f"convergence_top{k}_accuracy"] = float(chosen[:, :k].mean())
            out[f"convergence_top{k}_any"] = float(chosen[:, :k].any(axis=1).mean())
    return out


def reference_names(metrics: Mapping[str, float], top_k: int = 1) -> dict[str, float]:
    """Rename :func:`evaluation_metrics` output to the keys ``evaluate.py`` writes for set ``all`` with
    ``different_init=B convergence_top_k=top_k`` (the ``eval_metrics_step_*.json`` names)."""
    b = int(metrics["breadth"])
    if b == 1:  # the reference reports breadth metrics only for different_init > 1
        return {name: float(metrics[ours]) for ours, name in (("exact_accuracy", "all/exact_accuracy"),
                                                              ("token_accuracy", "all/accuracy")) if ours in metrics}
    table = {"exact_accuracy": ["all/exact_accuracy", "different_init/avg_pass_rate"],
             "token_accuracy": ["all/accuracy"],
             f"pass@{b}": ["different_init/any_correct"],
             "majority_vote_accuracy": ["different_init/majority_vote_acc", "majority_vote/exact_accuracy"],
             "majority_vote_token_accuracy": ["majority_vote/accuracy"],
             f"convergence_top{top_k}_accuracy": ["convergence_top_k/exact_accuracy"],
             f"convergence_top{top_k}_any": ["convergence_top_k/any_correct"]}
    table.update({f"pass@{k}": [f"different_init/pass@{k}"] for k in DEFAULT_KS if k < b})
    table.update({f"convergence_top{k}_accuracy": table.get(f"convergence_top{k}_accuracy", []) +
                  [f"convergence_top_k/cumulative_exact_acc_top{k}"] for k in range(1, top_k + 1)})
    if top_k == 1:
        table["convergence_top1_accuracy"].append("convergence_top_k/any_correct")
        table["convergence_selected_score"] = ["convergence_top_k/avg_convergence_score"]
    return {name: float(metrics[ours]) for ours, names in table.items() if ours in metrics for name in names}
