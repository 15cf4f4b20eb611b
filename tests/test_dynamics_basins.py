"""Basin stability and basin maps on maps whose basins are known exactly by symmetry."""

import math

import numpy as np
import pytest
import torch

from attractorlab.dynamics import BasinMap, BasinStats, basin_map, basin_stability, sample_ball


def cubic(z, a=0.5):
    """Separable: on [-1, 1] each coordinate goes monotonically to the sign of its start (0 stays 0)."""
    return z + a * (z - z**3)


CORNERS = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]], dtype=torch.float64)


def quadrant(z):
    """Index into CORNERS of the quadrant of each row."""
    x, y = z[:, 0] > 0, z[:, 1] > 0
    return torch.where(x & y, 0, torch.where(~x & y, 1, torch.where(~x & ~y, 2, 3)))


def limit_cycle(z, a=0.3, omega=0.5):
    """(1 + a (1 - |z|^2)) R(omega) z: a repelling origin and an attracting invariant circle |z| = 1."""
    c, s = math.cos(omega), math.sin(omega)
    rot = torch.tensor([[c, -s], [s, c]], dtype=z.dtype)
    return (1 + a * (1 - (z**2).sum(dim=1, keepdim=True))) * (z @ rot.T)


def test_uniform_box_splits_into_quadrant_basins():
    g = torch.Generator().manual_seed(0)
    samples = 2 * torch.rand(2000, 2, generator=g, dtype=torch.float64) - 1
    stats = basin_stability(cubic, CORNERS, samples, batch_size=512)
    assert isinstance(stats, BasinStats)
    assert torch.equal(stats.assignment, quadrant(samples))
    counts = torch.bincount(quadrant(samples), minlength=4)
    assert torch.equal(stats.count, counts)
    np.testing.assert_allclose(stats.fraction.numpy(), counts.numpy() / 2000)
    p = stats.fraction.numpy()
    np.testing.assert_allclose(stats.stderr.numpy(), np.sqrt(p * (1 - p) / 2000))
    assert bool((np.abs(p - 0.25) < 4 * stats.stderr.numpy()).all())  # exact value 1/4 by symmetry
    assert stats.unassigned == 0.0 and stats.unassigned_stderr == 0.0
    assert stats.converged.all() and len(stats.new_attractors) == 0 and stats.final is None
    assert int(stats.steps.max()) < 100 and int(stats.steps.min()) >= 1


def test_unknown_attractors_are_collected():
    samples = 2 * torch.rand(400, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) - 1
    stats = basin_stability(cubic, CORNERS[:2], samples, return_final=True)
    lower = samples[:, 1] < 0
    assert stats.unassigned == pytest.approx(float(lower.float().mean()))
    assert torch.equal(stats.assignment >= 0, ~lower)
    found = {tuple(row) for row in stats.new_attractors.round().tolist()}
    assert found == {(-1.0, -1.0), (1.0, -1.0)}
    assert torch.equal(stats.new_assignment >= 0, lower)
    assert stats.final.shape == (400, 2)
    assert set(stats.to_arrays()) >= {"fraction", "stderr", "unassigned", "assignment", "steps", "final"}


def test_limit_cycle_is_never_assigned_to_the_repelling_origin():
    gen = torch.Generator().manual_seed(2)
    samples = sample_ball(torch.zeros(2, dtype=torch.float64), 2.0, 300, generator=gen)
    origin = torch.zeros(1, 2, dtype=torch.float64)
    stats = basin_stability(limit_cycle, origin, samples, max_steps=300, return_final=True)
    assert stats.unassigned == 1.0 and stats.fraction.tolist() == [0.0]
    assert not stats.converged.any() and len(stats.new_attractors) == 0
    assert torch.allclose(stats.final.norm(dim=1), torch.ones(300, dtype=torch.float64), atol=1e-6)
    assert bool((stats.steps == 300).all())


def test_nonfinite_rows_are_unassigned():
    def f(z):
        return torch.where(z[:, :1] > 0.5, torch.full_like(z, float("inf")), cubic(z))

    samples = torch.tensor([[0.9, 0.5], [-0.5, 0.5], [float("nan"), 0.0]], dtype=torch.float64)
    stats = basin_stability(f, CORNERS, samples)
    assert stats.assignment.tolist() == [-1, 1, -1]
    assert stats.unassigned == pytest.approx(2 / 3)


def test_basin_map_on_the_plane_of_three_states():
    anchors = torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.0, 2.0]], dtype=torch.float64)
    bmap = basin_map(cubic, anchors, resolution=(8, 6), extent=(-1, 1, -0.9, 0.9), attractors=CORNERS[:3],
                     progress=True)
    assert isinstance(bmap, BasinMap) and bmap.label.shape == (6, 8) and bmap.steps.shape == (6, 8)
    np.testing.assert_allclose(bmap.anchor_coords.numpy(), [[0, 0], [0.5, 0], [0, 2]], atol=1e-12)
    np.testing.assert_allclose((bmap.basis @ bmap.basis.T).numpy(), np.eye(2), atol=1e-12)
    gy, gx = torch.meshgrid(bmap.ys, bmap.xs, indexing="ij")
    states = bmap.origin + gx.reshape(-1, 1) * bmap.basis[0] + gy.reshape(-1, 1) * bmap.basis[1]
    assert torch.equal(bmap.label.reshape(-1), quadrant(states))  # the fourth corner was found as new label 3
    assert torch.allclose(bmap.attractors[3], CORNERS[3], atol=1e-5) and bmap.attractors.shape == (4, 2)
    assert bmap.converged.all() and set(bmap.to_arrays()) >= {"label", "xs", "ys", "anchor_coords", "basis"}


def test_basin_map_from_center_and_directions_in_higher_dimensions():
    d = 5
    center = torch.zeros(d, dtype=torch.float64)
    u, v = torch.zeros(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
    u[0], v[1] = 1.0, 1.0
    bmap = basin_map(cubic, (center, 3 * u, v), resolution=(4, 4), extent=(-0.8, 0.8, -0.8, 0.8))
    assert bmap.attractors.shape == (4, d)  # no attractors given: four found, first reached first
    corners = {tuple(row) for row in bmap.attractors[:, :2].round().tolist()}
    assert corners == {(1.0, 1.0), (-1.0, 1.0), (-1.0, -1.0), (1.0, -1.0)}
    np.testing.assert_allclose(bmap.anchor_coords.numpy(), [[0, 0], [3, 0], [0, 1]], atol=1e-12)
    default = basin_map(cubic, (center, u, v), resolution=(3, 3), max_steps=5)
    np.testing.assert_allclose(default.xs.numpy(), [-0.25, 0.5, 1.25])


def test_sample_ball():
    center = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    inside = sample_ball(center, 0.3, 500, generator=torch.Generator().manual_seed(0))
    assert inside.shape == (500, 3) and bool(((inside - center).norm(dim=1) <= 0.3 + 1e-12).all())
    r = (inside - center).norm(dim=1) / 0.3
    assert float((r**3).mean()) == pytest.approx(0.5, abs=0.05)  # uniform in the ball: r^3 ~ U(0, 1)
    shell = sample_ball(center, 0.3, 50, surface=True, generator=torch.Generator().manual_seed(0))
    assert torch.allclose((shell - center).norm(dim=1), torch.full((50,), 0.3, dtype=torch.float64))
    again = sample_ball(center, 0.3, 500, generator=torch.Generator().manual_seed(0))
    assert torch.equal(inside, again)


@pytest.mark.parametrize(
    "call",
    [
        lambda: basin_stability(cubic, CORNERS, torch.zeros(3)),
        lambda: basin_stability(cubic, torch.zeros(2, 3), torch.zeros(4, 2)),
        lambda: basin_stability(cubic, CORNERS, torch.zeros(4, 2), max_steps=0),
        lambda: basin_stability(cubic, CORNERS, torch.zeros(4, 2), assign_tol=-1.0),
        lambda: basin_stability("f", CORNERS, torch.zeros(4, 2)),
        lambda: basin_map(cubic, torch.zeros(3, 2)),
        lambda: basin_map(cubic, torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])),
        lambda: basin_map(cubic, torch.eye(3)[:2]),
        lambda: basin_map(cubic, torch.eye(3), resolution=(1, 5)),
        lambda: basin_map(cubic, torch.eye(3), extent=(1, 0, 0, 1)),
        lambda: sample_ball(torch.zeros(2, 2), 1.0, 3),
        lambda: sample_ball(torch.zeros(2), -1.0, 3),
        lambda: sample_ball(torch.zeros(2), 1.0, 0),
    ],
)
def test_bad_arguments(call):
    with pytest.raises(ValueError):
        call()
