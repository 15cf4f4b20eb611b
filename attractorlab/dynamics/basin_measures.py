"""Measures of a basin map's geometry: basin entropy and the boundary fraction.

Input: a 2-D grid of attractor labels, e.g. :attr:`~attractorlab.dynamics.basins.BasinMap.label` ``[gy, gx]``
(``-1`` = converged to no known attractor, counted as one more label, as Attractors.jl counts its ``-1``).

- :func:`basin_entropy` (Daza et al. 2016, "Basin entropy: a new tool to analyze uncertainty in dynamical
  systems", Sci. Rep. 6, 31416; as Attractors.jl's ``basin_entropy(basins, ε)`` computes it): the grid is cut
  into boxes of ``eps x eps`` cells (starting at the first cell; cells left over at the far edges are not
  used), each box gets the Gibbs entropy ``-sum_k p_k log p_k`` of its label fractions (natural log),
  ``S_b`` is the mean over all boxes and ``S_bb`` the mean over boundary boxes (those holding more than one label;
  NaN when there are none, Attractors.jl's 0/0). ``S_bb > log 2`` indicates a fractal boundary.
- :func:`boundary_fraction`: the fraction of cells with a 4-neighbour of another label.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ._records import as_record_array


@dataclass
class BasinEntropy:
    """Basin entropy of a label grid.

    sb: mean box entropy over all boxes; sbb: mean over boundary boxes (NaN without any); eps: box side in cells;
    n_boxes, n_boundary_boxes: box counts; box_entropy: [by, bx] entropy of each box.
    """

    sb: float
    sbb: float
    eps: int
    n_boxes: int
    n_boundary_boxes: int
    box_entropy: np.ndarray

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in asdict(self).items()}


def _labels(labels) -> np.ndarray:
    grid = as_record_array(labels, "labels")
    if grid.ndim != 2 or grid.size == 0:
        raise ValueError(f"labels must be a non-empty 2-D grid [gy, gx], got shape {grid.shape}")
    if not np.issubdtype(grid.dtype, np.integer):
        raise ValueError(f"labels must be integers (attractor indices, -1 = none), got {grid.dtype}")
    return grid


def basin_entropy(labels, eps: int = 20) -> BasinEntropy:
    """Basin entropy ``S_b`` and boundary basin entropy ``S_bb`` of ``labels [gy, gx]`` with boxes of
    ``eps x eps`` cells (Attractors.jl's default ``eps = 20``; both sides must be at least ``eps``)."""
    grid = _labels(labels)
    if isinstance(eps, bool) or not isinstance(eps, (int, np.integer)) or eps < 1:
        raise ValueError(f"eps must be a positive integer (box side in cells), got {eps!r}")
    gy, gx = grid.shape
    if gy < eps or gx < eps:
        raise ValueError(f"the grid {grid.shape} must be at least eps = {eps} cells on each side")
    by, bx = gy // eps, gx // eps
    boxes = grid[: by * eps, : bx * eps].reshape(by, eps, bx, eps).transpose(0, 2, 1, 3).reshape(by * bx, -1)
    _, codes = np.unique(boxes, return_inverse=True)
    codes = codes.reshape(boxes.shape)
    k = int(codes.max()) + 1
    counts = np.bincount((np.arange(by * bx)[:, None] * k + codes).ravel(), minlength=by * bx * k)
    p = counts.reshape(by * bx, k) / float(eps * eps)
    entropy = -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1)
    boundary = (p > 0).sum(axis=1) > 1
    n_boundary = int(boundary.sum())
    sbb = float(entropy[boundary].mean()) if n_boundary else float("nan")
    return BasinEntropy(float(entropy.mean()), sbb, int(eps), by * bx, n_boundary, entropy.reshape(by, bx))


def boundary_fraction(labels) -> float:
    """Fraction of cells of ``labels [gy, gx]`` with at least one 4-neighbour (up, down, left, right) of another
    label."""
    grid = _labels(labels)
    edge = np.zeros(grid.shape, dtype=bool)
    vertical = grid[1:, :] != grid[:-1, :]
    horizontal = grid[:, 1:] != grid[:, :-1]
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    return float(edge.mean())
