"""Lyapunov exponents against maps whose exponents are known exactly."""

import math

import numpy as np
import pytest
import torch

from attractorlab.dynamics import REGIMES, classify_exponents, lyapunov_exponents

GEN = torch.Generator().manual_seed(0)


def test_linear_map_has_the_log_moduli_of_its_eigenvalues():
    # A = P diag(a) P^-1 with a non-orthogonal P: the exponents are log |a_i|, whatever the basis
    a = torch.tensor([1.5, -0.9, 0.5, 0.2], dtype=torch.float64)
    p = torch.eye(4, dtype=torch.float64) + 0.3 * torch.randn(4, 4, generator=GEN, dtype=torch.float64)
    m = p @ torch.diag(a) @ torch.linalg.inv(p)

    def f(z):
        return z @ m.T

    z0 = torch.randn(3, 4, generator=GEN, dtype=torch.float64) * 1e-3
    spec = lyapunov_exponents(f, z0, k=4, steps=400, transient=20, generator=GEN)
    want = torch.log(a.abs()).sort(descending=True).values
    torch.testing.assert_close(spec.exponents, want.expand(3, 4), atol=2e-2, rtol=0)
    assert spec.stretch.shape == (3, 400, 4) and spec.final.shape == (3, 4)


def test_scaled_rotation_stretches_every_direction_alike():
    r, theta = 0.8, 0.7
    rot = r * torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]],
                           dtype=torch.float64)
    spec = lyapunov_exponents(lambda z: z @ rot.T, torch.ones(2, 2, dtype=torch.float64), k=2, steps=50)
    torch.testing.assert_close(spec.exponents, torch.full((2, 2), math.log(r), dtype=torch.float64))
    assert (spec.stderr < 1e-12).all()  # a rotation stretches by exactly r every step


def test_product_of_a_chaotic_and_a_contracting_map():
    # x -> 4 x (1 - x) (the logistic map at r = 4: exponent ln 2 for almost every orbit), y -> 0.5 y (ln 0.5)
    def f(z):
        return torch.stack([4 * z[:, 0] * (1 - z[:, 0]), 0.5 * z[:, 1]], dim=1)

    z0 = torch.tensor([[0.123, 1.0], [0.377, -2.0], [0.61, 0.5]], dtype=torch.float64)
    spec = lyapunov_exponents(f, z0, k=2, steps=3000, transient=100, generator=GEN)
    np.testing.assert_allclose(spec.exponents[:, 0].numpy(), math.log(2), atol=0.06)
    np.testing.assert_allclose(spec.exponents[:, 1].numpy(), math.log(0.5), atol=1e-9)
    assert (spec.stderr[:, 0] < 0.05).all() and (spec.stderr[:, 0] > 0).all()
    regimes = classify_exponents(spec.largest, spec.stderr[:, 0])
    assert [REGIMES[c] for c in regimes] == ["chaotic"] * 3


def test_largest_exponent_alone_and_the_three_regimes():
    def f(z):  # row 0 contracts, row 1 is a rotation (neutral), row 2 expands: per-row scales
        s = torch.tensor([0.5, 1.0, 1.2], dtype=z.dtype)[: z.shape[0], None]
        c, si = math.cos(0.3), math.sin(0.3)
        return s * torch.stack([c * z[:, 0] - si * z[:, 1], si * z[:, 0] + c * z[:, 1]], dim=1)

    spec = lyapunov_exponents(f, torch.ones(3, 2, dtype=torch.float64) * 1e-3, k=1, steps=100)
    np.testing.assert_allclose(spec.largest.numpy(), np.log([0.5, 1.0, 1.2]), atol=1e-9)
    assert [REGIMES[c] for c in classify_exponents(spec.largest)] == ["contracting", "neutral", "chaotic"]


def test_float32_states_and_bad_arguments():
    spec = lyapunov_exponents(lambda z: 0.5 * z, torch.ones(2, 3), k=2, steps=10)
    assert spec.exponents.dtype == torch.float64
    np.testing.assert_allclose(spec.exponents.numpy(), math.log(0.5), atol=1e-6)
    with pytest.raises(ValueError, match="k must be"):
        lyapunov_exponents(lambda z: z, torch.ones(2, 3), k=4)
    with pytest.raises(ValueError, match="blocks"):
        lyapunov_exponents(lambda z: z, torch.ones(2, 3), steps=5, blocks=10)
    with pytest.raises(ValueError, match="map"):
        lyapunov_exponents(lambda z: z[:, :2], torch.ones(2, 3))
