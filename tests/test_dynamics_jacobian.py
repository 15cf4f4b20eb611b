"""Jacobian spectra: dense vs Arnoldi vs exact (Kronecker-structured maps with known spectra)."""

import itertools
import math

import numpy as np
import pytest
import torch

from attractorlab.dynamics import (
    Linearization,
    Spectrum,
    jacobian_matrix,
    jacobian_spectrum,
    spectral_radius,
    top_singular_values,
)


def kronecker_map(n1, n2, seed=0, dtype=torch.float64):
    """f(Z) = tanh(A Z B^T) on [n1, n2] states; at Z = 0 the Jacobian is B (x) A (row-major vec: A (x) B).

    A is symmetric (real spectrum) so that the only ties in modulus among the products are conjugate pairs."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n1, n1, generator=g, dtype=torch.float64) / n1**0.5
    A = (A + A.T) / 2**0.5
    B = torch.randn(n2, n2, generator=g, dtype=torch.float64) / n2**0.5
    A, B = A.to(dtype), B.to(dtype)

    def f(z):
        return torch.tanh((A @ z.reshape(-1, n1, n2) @ B.T).reshape(z.shape[0], -1))

    exact = torch.linalg.eigvals(A.double())[:, None] * torch.linalg.eigvals(B.double())[None, :]
    return f, exact.reshape(-1).numpy(), A, B


def top_by_modulus(vals, k):
    vals = np.asarray(vals)
    return vals[np.lexsort((-vals.imag, -np.abs(vals)))][:k]


def test_arnoldi_matches_exact_kronecker_spectrum():
    f, exact, _, _ = kronecker_map(12, 400)
    z = torch.zeros(1, 12 * 400, dtype=torch.float64)
    vals = jacobian_spectrum(f, z, k=6, method="arnoldi")
    assert vals.shape == (1, 6) and vals.dtype == torch.complex128
    np.testing.assert_allclose(vals[0].numpy(), top_by_modulus(exact, 6), rtol=1e-6, atol=1e-8)
    assert jacobian_spectrum(f, z, k=6).shape == (1, 6)  # auto -> arnoldi above DENSE_MAX_DIM


def test_dense_and_arnoldi_agree_on_a_nonlinear_map_at_several_points():
    g = torch.Generator().manual_seed(1)
    d = 300
    W = 1.3 * torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5
    W1 = torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5

    def f(z):
        return torch.tanh(z @ W.T) @ W1.T * 0.5 + torch.sin(z) * 0.1

    z = torch.randn(3, d, generator=g, dtype=torch.float64)
    dense = jacobian_spectrum(f, z, k=5, method="dense")
    arnoldi = jacobian_spectrum(f, z, k=5, method="arnoldi")
    np.testing.assert_allclose(arnoldi.numpy(), dense.numpy(), rtol=1e-7, atol=1e-9)
    jac = torch.func.jacrev(lambda x: f(x[None])[0])(z[1])
    expected = top_by_modulus(torch.linalg.eigvals(jac).numpy(), 5)
    np.testing.assert_allclose(dense[1].numpy(), expected, atol=1e-10)
    np.testing.assert_allclose(jacobian_matrix(f, z)[1].numpy(), jac.numpy(), atol=1e-12)


def test_rotation_pairs_sorting_which_and_vectors():
    theta = 0.3
    D = torch.zeros(5, 5, dtype=torch.float64)
    D[:2, :2] = 0.9 * torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    D[2, 2], D[3, 3], D[4, 4] = -0.95, 0.5, 0.2
    f = lambda z: z @ D.T  # noqa: E731
    z = torch.zeros(2, 5, dtype=torch.float64)
    vals = jacobian_spectrum(f, z, k=3)
    expected = [-0.95, 0.9 * np.exp(0.3j), 0.9 * np.exp(-0.3j)]
    np.testing.assert_allclose(vals.numpy(), [expected, expected], atol=1e-12)
    lr = jacobian_spectrum(f, z[0], k=2, which="LR")
    np.testing.assert_allclose(lr.numpy(), expected[1:], atol=1e-12)
    spec = jacobian_spectrum(f, z, k=3, return_vectors=True)
    assert isinstance(spec, Spectrum) and spec.eigvecs.shape == (2, 5, 3)
    Dc = D.to(torch.complex128)
    for j in range(3):
        v = spec.eigvecs[0, :, j]
        assert torch.allclose(Dc @ v, spec.eigvals[0, j] * v, atol=1e-10)


def svd_products(A, B):
    """Singular values of A (x) B, decreasing."""
    products = torch.linalg.svdvals(A)[:, None] * torch.linalg.svdvals(B)[None, :]
    return np.sort(products.reshape(-1).numpy())[::-1]


def test_top_singular_values_dense_arnoldi_exact():
    f, _, A, B = kronecker_map(10, 300, seed=2)
    z = torch.zeros(1, 3000, dtype=torch.float64)
    exact = svd_products(A, B)
    arnoldi = top_singular_values(f, z, k=4)
    np.testing.assert_allclose(arnoldi[0].numpy(), exact[:4], rtol=1e-7)
    small_f, _, A2, B2 = kronecker_map(4, 5, seed=3)
    dense = top_singular_values(small_f, torch.zeros(2, 20, dtype=torch.float64), k=3)
    np.testing.assert_allclose(dense.numpy(), np.tile(svd_products(A2, B2)[:3], (2, 1)), rtol=1e-10)


def test_spectral_radius_power_iteration_with_complex_dominant_pair():
    d = 40
    D = torch.diag(torch.linspace(0.1, 0.6, d, dtype=torch.float64))
    D[:2, :2] = 0.95 * torch.tensor([[math.cos(1.0), -math.sin(1.0)], [math.sin(1.0), math.cos(1.0)]])
    Q = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0]
    M = Q @ D @ Q.T
    scales = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)

    def f(z):  # at (s, 0, ..., 0) the Jacobian is blockdiag(0, s M): spectral radius 0.95 |s|
        return torch.cat([0 * z[:, :1], z[:, :1] * (z[:, 1:] @ M.T)], dim=1)

    points = torch.zeros(3, d + 1, dtype=torch.float64)
    points[:, 0] = scales
    rho = spectral_radius(f, points, iters=60, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(rho.numpy(), 0.95 * scales.numpy(), rtol=1e-6)
    crowded = torch.linspace(0.95, 1.0, d, dtype=torch.float64)  # the Ritz value cannot settle in 40 steps
    z0 = torch.zeros(1, d, dtype=torch.float64)
    rho_crowded = spectral_radius(lambda z: z * crowded, z0, iters=40, block=2)
    assert float(rho_crowded[0]) == pytest.approx(1.0, abs=0.02)
    nan_map = lambda z: torch.where(z[:, :1] > 0, float("nan"), 0.5 * z)  # noqa: E731
    rho_nan = spectral_radius(nan_map, torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), iters=5)
    assert math.isnan(float(rho_nan[0])) and float(rho_nan[1]) == pytest.approx(0.5, abs=1e-6)


def test_spectral_radius_of_jacobians_with_exact_zeros_and_repeated_eigenvalues():
    # the lattice points of a separable cubic map: Jacobians diag(1.5 or 0); the block iteration drives entries of
    # the projected matrix to ~1e-190, which LAPACK's eigenvalue solver cannot handle unless they are dropped
    lattice = torch.tensor(list(itertools.product((-1.0, 0.0, 1.0), repeat=3)), dtype=torch.float64)
    expected = torch.where((lattice == 0).any(dim=1), 1.5, 0.0)
    for seed in range(20):
        rho = spectral_radius(lambda z: z + 0.5 * (z - z**3), lattice, generator=torch.Generator().manual_seed(seed))
        np.testing.assert_allclose(rho.numpy(), expected.numpy(), atol=1e-8)


def test_nonfinite_points_give_nan_eigenvalues():
    f = lambda z: torch.sqrt(z)  # noqa: E731
    vals = jacobian_spectrum(f, torch.tensor([[4.0], [-1.0]], dtype=torch.float64), k=1)
    assert vals[0, 0].real == pytest.approx(0.25) and torch.isnan(vals[1, 0].real)


def test_float32_input():
    f, exact, _, _ = kronecker_map(8, 160, seed=4, dtype=torch.float32)
    vals = jacobian_spectrum(f, torch.zeros(1, 1280), k=3, method="arnoldi")
    np.testing.assert_allclose(vals[0].numpy(), top_by_modulus(exact, 3), rtol=1e-4, atol=1e-5)


class _NoDoubleBackward(torch.autograd.Function):
    """x -> 2 sin(x), with a backward that cannot be differentiated again."""

    @staticmethod
    def forward(x):
        return 2 * torch.sin(x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * torch.cos(x) * grad

    @staticmethod
    def jvp(ctx, tangent):
        (x,) = ctx.saved_tensors
        return 2 * torch.cos(x) * tangent

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.save_for_forward(inputs[0])


def test_linearization_caches_products_and_falls_back_without_double_backward():
    z = torch.randn(4, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v = torch.randn(4, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lin = Linearization(torch.tanh, z)
    expected = (1 - torch.tanh(z) ** 2) * v
    assert torch.allclose(lin.matvec(v), expected) and lin.double_backward is True
    assert torch.allclose(lin.matvec(2 * v), 2 * expected) and torch.allclose(lin.rmatvec(v), expected)
    lin2 = Linearization(_NoDoubleBackward.apply, z)
    assert torch.allclose(lin2.matvec(v), 2 * torch.cos(z) * v) and lin2.double_backward is False
    assert torch.allclose(lin2.matvec(v), 2 * torch.cos(z) * v)


@pytest.mark.parametrize(
    "kwargs",
    [dict(k=0), dict(which="SM"), dict(method="eig"), dict(z=torch.zeros(2, 3, 4)), dict(z=torch.zeros(0, 3)),
     dict(z=np.zeros((2, 3)))],
)
def test_bad_arguments(kwargs):
    args = dict(z=torch.zeros(2, 3)) | kwargs
    with pytest.raises(ValueError):
        jacobian_spectrum(lambda x: x, args.pop("z"), **args)
    with pytest.raises(ValueError):
        spectral_radius(lambda x: x, torch.zeros(2, 3), iters=0)
