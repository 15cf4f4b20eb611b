"""Linear probes on synthetic states where the answer is linearly encoded only from some step on."""

import numpy as np
import pytest
import torch

from attractorlab.probing import ProbeResult, probe_cells, probe_correctness


def cell_states(n=40, t=4, h=16, onset=2, seed=0):
    """States [n, t, 81, h]: pure noise before ``onset``, digit embedding + small noise from ``onset`` on."""
    rng = np.random.default_rng(seed)
    digits = rng.integers(1, 10, size=(n, 81))
    codes = rng.normal(size=(10, h))
    states = rng.normal(size=(n, t, 81, h))
    states[:, onset:] = codes[digits][:, None] + 0.1 * states[:, onset:]
    return states, digits


def test_probe_cells_accuracy_jumps_at_the_onset():
    states, digits = cell_states()
    digits[0, :10] = 0  # unknown cells are left out
    res = probe_cells(states, digits, n_splits=3, max_iter=300)
    assert isinstance(res, ProbeResult) and res.kind == "cells"
    assert res.step.tolist() == [0, 1, 2, 3]
    assert bool((res.accuracy_mean[:2] < 0.25).all()) and bool((res.accuracy_mean[2:] > 0.99).all())
    assert 0.08 < res.chance < 0.2 and res.n_samples == 40 * 81 - 10
    assert res.accuracy_std.shape == (4,) and np.isnan(res.auroc_mean).all()
    flat = probe_cells(torch.tensor(states.reshape(40, 4, -1), dtype=torch.float32), digits, steps=[-1])
    assert flat.step.tolist() == [3] and flat.accuracy_mean[0] > 0.99
    small = probe_cells(states, digits, steps=[3], max_samples=810)
    assert small.n_samples <= 810 + 81


def test_probe_correctness_auroc_after_onset():
    rng = np.random.default_rng(1)
    n, t, d = 90, 3, 20
    correct = rng.random(n) < 0.5
    states = rng.normal(size=(n, t, d))
    states[:, 1:, 0] += np.where(correct, 3.0, -3.0)[:, None]
    res = probe_correctness(states, correct, n_splits=3)
    assert res.kind == "correctness"
    assert res.auroc_mean[0] < 0.8 and bool((res.auroc_mean[1:] > 0.97).all())
    assert bool((res.accuracy_mean[1:] > 0.9).all()) and 0.5 <= res.chance < 0.7
    assert set(res.to_arrays()) >= {"accuracy_mean", "auroc_mean", "step", "converged"}


def test_probe_reports_non_convergence_instead_of_warning():
    states, digits = cell_states(n=12, t=1, h=8, onset=0)
    res = probe_cells(states, digits, max_iter=1)
    assert res.converged.tolist() == [False]


@pytest.mark.parametrize(
    "call",
    [
        lambda: probe_cells(np.zeros((4, 2, 80, 3)), np.ones((4, 81))),
        lambda: probe_cells(np.zeros((4, 2, 81, 3)), np.ones((4, 80))),
        lambda: probe_cells(np.zeros((4, 2, 81, 3)), np.ones((4, 81))),  # a single digit
        lambda: probe_cells(np.zeros((2, 2, 81, 3)), np.arange(162).reshape(2, 81) % 9 + 1),
        lambda: probe_cells(np.zeros((4, 2, 81, 3)), np.arange(324).reshape(4, 81) % 9 + 1, n_splits=1),
        lambda: probe_cells(np.zeros((4, 2, 81, 3)), np.arange(324).reshape(4, 81) % 9 + 1, steps=[5]),
        lambda: probe_correctness(np.zeros((6, 2)), np.ones(6, dtype=bool)),
        lambda: probe_correctness(np.zeros((6, 2, 3)), np.array([1, 0, 0, 0, 0, 0], dtype=bool)),
        lambda: probe_correctness(np.zeros((6, 2, 3)), np.ones(5, dtype=bool)),
    ],
)
def test_bad_input(call):
    with pytest.raises(ValueError):
        call()
