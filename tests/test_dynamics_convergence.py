"""Convergence-vs-correctness statistics on constructed run arrays with known answers."""

import numpy as np
import pytest
import torch

from attractorlab.dynamics import (
    ENDING_NAMES,
    auroc_scores,
    classify_endings,
    final_values,
    residual_curves,
    steps_vs_difficulty,
)

VALID, INVALID, CYCLE, DRIFT = (ENDING_NAMES.index(n) for n in ENDING_NAMES)


def run_arrays(n=6, b=2, t=10):
    """Correct trajectories decay like 10^-step; incorrect ones stay at 0.5."""
    correct_final = np.zeros((n, b), dtype=bool)
    correct_final[: n // 2] = True
    decay = 10.0 ** -np.arange(1, t + 1)
    residual = np.where(correct_final[..., None], decay, 0.5)
    correct = np.repeat(correct_final[..., None], t, axis=-1)
    return residual, correct, correct_final


def test_final_values_follow_steps():
    x = np.arange(12).reshape(2, 6)
    np.testing.assert_array_equal(final_values(x), [5, 11])
    np.testing.assert_array_equal(final_values(x, np.array([3, 0])), [2, 6])


def test_residual_curves_medians_and_quartiles():
    residual, _, correct_final = run_arrays()
    curves = residual_curves(torch.tensor(residual), correct_final)
    np.testing.assert_allclose(curves.correct_median, 10.0 ** -np.arange(1, 11))
    np.testing.assert_allclose(curves.incorrect_q25, 0.5)
    assert curves.n_correct == 6 and curves.n_incorrect == 6 and curves.step[0] == 1
    steps = np.full((6, 2), 10)
    steps[0] = 4
    masked = residual_curves(residual, correct_final, steps=steps)
    np.testing.assert_allclose(masked.correct_median[:4], 10.0 ** -np.arange(1, 5))
    assert set(curves.to_arrays()) >= {"correct_median", "incorrect_q75", "n_correct"}
    only_correct = residual_curves(residual[:3], correct_final[:3])
    assert np.isnan(only_correct.incorrect_median).all()


def test_auroc_perfect_reversed_and_single_class():
    residual, correct, correct_final = run_arrays()
    halt = np.where(correct, 2.0, -1.0)
    change = residual * 3
    res = auroc_scores(residual, correct, halt_logit=halt, logit_change=change)
    assert res.auroc() == {"final_residual": 1.0, "mean_last3_residual": 1.0, "halt_logit": 1.0,
                           "logit_change": 1.0}
    assert res.n_correct == 6 and res.n_incorrect == 6
    fpr, tpr = res.scores["final_residual"].fpr, res.scores["final_residual"].tpr
    assert fpr[0] == 0 and tpr[-1] == 1 and fpr.shape == tpr.shape
    reversed_ = auroc_scores(residual, ~correct_final)
    assert reversed_.auroc()["final_residual"] == 0.0
    single = auroc_scores(residual, np.ones_like(correct_final))
    assert np.isnan(single.auroc()["final_residual"])
    assert "one class" in single.scores["final_residual"].reason
    assert "final_residual/auroc" in res.to_arrays()


def test_auroc_partial_overlap_and_steps():
    residual = np.array([[[0.1, 0.1, 0.9]], [[0.2, 0.2, 0.2]], [[0.3, 0.3, 0.3]], [[0.4, 0.15, 0.15]]])
    correct = np.array([[True], [True], [False], [False]])
    res = auroc_scores(residual, correct, steps=np.array([[2], [3], [3], [3]]), window=2)
    # final residuals at steps-1: 0.1, 0.2 (correct) vs 0.3, 0.15 (incorrect): 3 of 4 pairs ordered right
    assert res.auroc()["final_residual"] == pytest.approx(0.75)
    assert res.auroc()["mean_last2_residual"] == pytest.approx(0.75)
    nan_res = residual.copy()
    nan_res[0, 0, 2] = np.nan  # a non-finite score counts as the worst: correct trajectory 0 ranks last
    assert auroc_scores(nan_res, correct).auroc()["final_residual"] == pytest.approx(0.25)  # 0.2 < 0.3 only


def test_steps_vs_difficulty():
    rating = np.array([1, 5, 2, 8, 3, 13, 21, 34], dtype=float)
    steps = np.stack([rating * 2, rating * 2 + 1], axis=1)
    res = steps_vs_difficulty(steps, rating, n_bins=4)
    assert res.rho == pytest.approx(1.0) and res.pvalue < 0.01 and res.n == 8
    assert res.bin_count.sum() == 8 and res.bin_mean_steps[0] < res.bin_mean_steps[-1]
    const = steps_vs_difficulty(np.ones(8), rating)
    assert np.isnan(const.rho) and "constant" in const.reason
    few = steps_vs_difficulty(np.array([1.0, 2.0]), np.array([1.0, 2.0]))
    assert np.isnan(few.rho) and "at least 3" in few.reason
    with pytest.raises(ValueError):
        steps_vs_difficulty(np.ones(3), np.ones(4))


def test_classify_endings_with_predictions():
    t = 24
    residual = np.full((6, t), 0.3)
    valid = np.zeros((6, t), dtype=bool)
    pred = np.zeros((6, t, 81), dtype=np.uint8)
    residual[0, -1] = 1e-5
    valid[0, -1] = True  # converged on a valid solution
    residual[1, -1] = 1e-5  # converged, invalid: a spurious fixed point
    pred[2, :, 0] = np.arange(t) % 3  # readout cycles with period 3
    pred[3, :, 5] = (np.arange(t) // 2) % 2  # period 4 (two steps each of two grids)
    residual[4] = np.linspace(1.0, 0.1, t)  # still moving, constant readout
    residual[5] = np.where(np.arange(t) % 2 == 0, 0.2, 0.4)  # residual 2-cycle, constant readout
    endings = classify_endings(residual, valid, pred=pred)
    assert endings.label.tolist() == [VALID, INVALID, CYCLE, CYCLE, DRIFT, CYCLE]
    assert endings.period.tolist() == [0, 0, 3, 4, 0, 2]
    assert endings.counts.tolist() == [1, 1, 3, 1]
    assert endings.fractions()["cycle"] == pytest.approx(0.5)
    assert set(endings.to_arrays()) == {"label", "period", "counts", "names"}


def test_classify_endings_without_predictions_and_with_steps():
    t = 20
    residual = np.stack([
        np.where(np.arange(t) % 3 == 0, 0.1, 0.3),  # residual period 3
        np.full(t, 0.25),  # constant: a 2-cycle or steady drift, cannot tell -> drifting
        np.concatenate([np.full(5, 0.2), np.full(t - 5, 1e-6)]),  # converges at step 6...
    ])[:, None, :]
    valid = np.ones((3, 1, t), dtype=bool)
    endings = classify_endings(residual, valid)
    assert endings.label[:, 0].tolist() == [CYCLE, DRIFT, VALID] and endings.period[0, 0] == 3
    halted = classify_endings(residual, valid, steps=np.array([[t], [t], [4]]))  # ...but halted at 4
    assert halted.label[2, 0] == DRIFT
    with pytest.raises(ValueError):
        classify_endings(residual, valid[:, :, :3])
    with pytest.raises(ValueError):
        classify_endings(residual, valid, max_period=1)
