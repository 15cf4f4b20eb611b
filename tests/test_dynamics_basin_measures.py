"""Basin entropy (Daza et al. 2016, as Attractors.jl computes it) and boundary fraction on hand-made grids."""

import math

import numpy as np
import pytest
import torch

from attractorlab.dynamics import basin_entropy, boundary_fraction


def test_single_basin_has_zero_entropy_and_no_boundary():
    res = basin_entropy(np.zeros((40, 40), dtype=np.int64))
    assert res.sb == 0.0 and math.isnan(res.sbb) and res.n_boxes == 4 and res.n_boundary_boxes == 0
    assert boundary_fraction(torch.zeros(40, 40, dtype=torch.long)) == 0.0


def test_straight_split_through_two_of_four_boxes():
    grid = np.ones((40, 40), dtype=np.int64)
    grid[:, :10] = 0  # the boundary runs through the middle of the two left boxes of side 20
    res = basin_entropy(grid, eps=20)
    assert res.sbb == pytest.approx(math.log(2)) and res.sb == pytest.approx(math.log(2) / 2)
    assert res.n_boundary_boxes == 2 and res.box_entropy.shape == (2, 2)
    np.testing.assert_allclose(res.box_entropy, [[math.log(2), 0.0], [math.log(2), 0.0]])
    assert boundary_fraction(grid) == pytest.approx(80 / 1600)  # columns 9 and 10
    aligned = grid.copy()
    aligned[:, :20] = 0  # a split along box edges: every box is pure
    assert basin_entropy(aligned, eps=20).sb == 0.0


def test_four_labels_in_one_box_including_unconverged():
    grid = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, -1, -1], [2, 2, -1, -1]])
    res = basin_entropy(grid, eps=4)
    assert res.sb == pytest.approx(math.log(4)) and res.sbb == pytest.approx(math.log(4))
    assert boundary_fraction(grid) == pytest.approx(12 / 16)  # all but the four outer corners
    checker = np.indices((4, 4)).sum(axis=0) % 2
    assert basin_entropy(checker, eps=2).sb == pytest.approx(math.log(2)) and boundary_fraction(checker) == 1.0


def test_cells_beyond_the_last_full_box_are_not_used():
    grid = np.zeros((45, 50), dtype=np.int64)
    grid[44, :] = 5
    grid[:, 45:] = 7
    res = basin_entropy(grid, eps=20)
    assert res.n_boxes == 4 and res.sb == 0.0
    assert set(res.to_arrays()) == {"sb", "sbb", "eps", "n_boxes", "n_boundary_boxes", "box_entropy"}


@pytest.mark.parametrize("labels, eps", [(np.zeros((10, 10), dtype=int), 20), (np.zeros((30, 30)), 20),
                                         (np.zeros(30, dtype=int), 2), (np.zeros((4, 4), dtype=int), 0)])
def test_bad_grids_raise_value_error(labels, eps):
    with pytest.raises(ValueError):
        basin_entropy(labels, eps)
