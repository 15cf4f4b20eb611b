"""find_fixed_points against maps whose fixed points, spectra and slow points are known exactly."""

import itertools
import math

import numpy as np
import pytest
import torch

from attractorlab.dynamics import KIND_NAMES, FixedPoints, find_fixed_points

FIXED, SLOW, FAILED, NONFINITE = (KIND_NAMES.index(k) for k in ("fixed", "slow", "failed", "nonfinite"))


def affine_with_spectrum(eigs_real, blocks, d, seed=0, dtype=torch.float64):
    """f(z) = A z + b with A = S D S^-1: D holds the real eigenvalues and 2x2 blocks r R(theta)."""
    g = torch.Generator().manual_seed(seed)
    D = torch.zeros(d, d, dtype=torch.float64)
    i = 0
    for r, theta in blocks:
        D[i : i + 2, i : i + 2] = r * torch.tensor([[math.cos(theta), -math.sin(theta)],
                                                    [math.sin(theta), math.cos(theta)]], dtype=torch.float64)
        i += 2
    for lam in eigs_real:
        D[i, i] = lam
        i += 1
    S = torch.eye(d, dtype=torch.float64) + 0.3 * torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5
    A = (S @ D @ torch.linalg.inv(S)).to(dtype)
    b = torch.randn(d, generator=g, dtype=torch.float64).to(dtype)
    return A, b


def sorted_by_modulus(vals):
    vals = np.asarray(vals)
    return vals[np.lexsort((-vals.imag, -np.abs(vals)))]


def test_affine_saddle_exact_point_and_spectrum():
    d = 12
    blocks = [(1.1, 0.7)]  # an unstable rotation: the fixed point is a saddle (also 0.95, -0.6, ...)
    real = [0.95, -0.6, 0.5, 0.3, -0.2, 0.1, 0.05, 0.0, -0.01, 0.02]
    A, b = affine_with_spectrum(real, blocks, d)
    g = torch.Generator().manual_seed(1)
    z0 = 5 * torch.randn(6, d, generator=g, dtype=torch.float64)
    fps = find_fixed_points(lambda z: z @ A.T + b, z0, k=4)
    z_star = torch.linalg.solve(torch.eye(d, dtype=torch.float64) - A, b)
    assert isinstance(fps, FixedPoints) and len(fps) == 1
    assert torch.allclose(fps.z[0], z_star, atol=1e-8)
    expected = sorted_by_modulus([1.1 * np.exp(0.7j), 1.1 * np.exp(-0.7j), 0.95, -0.6])
    np.testing.assert_allclose(fps.eigvals[0].numpy(), expected, atol=1e-8)
    assert not bool(fps.stable[0]) and fps.spectral_radius[0] == pytest.approx(1.1, abs=1e-8)
    assert fps.count.tolist() == [6] and fps.assignment.tolist() == [0] * 6
    assert fps.converged.all() and (fps.kind == FIXED).all()
    assert (fps.iterations <= 8).all()  # Newton: a handful of steps on a linear problem


def cubic(a=0.5):
    """Separable map with fixed points at every z in {-1, 0, 1}^d; attractors are the corners."""
    return lambda z: z + a * (z - z**3)


def test_cubic_finds_all_attractors_and_saddles():
    d = 3
    g = torch.Generator().manual_seed(0)
    z0 = 3 * torch.rand(300, d, generator=g, dtype=torch.float64) - 1.5
    fps = find_fixed_points(cubic(), z0, k=d)
    lattice = {p for p in itertools.product((-1.0, 0.0, 1.0), repeat=d)}
    found = {tuple(float(round(x)) for x in row) for row in fps.z.tolist()}
    assert found == lattice and len(fps) == 27
    assert torch.allclose(fps.z, fps.z.round(), atol=1e-8)
    n_zero = (fps.z.round() == 0).sum(dim=1)
    assert torch.equal(fps.stable, n_zero == 0)  # corners are stable, anything with a 0 coordinate is not
    assert bool(fps.stable[:8].all()) and not bool(fps.stable[8:].any())  # sorted: stable first
    for vals, zeros in zip(fps.eigvals, n_zero.tolist(), strict=True):  # Jacobian diag(1 + a(1 - 3 z_i^2))
        expected = [1.5] * zeros + [0.0] * (d - zeros)
        np.testing.assert_allclose(vals.numpy(), expected, atol=1e-8)
    assert int(fps.count.sum()) == int(fps.converged.sum())
    assert torch.equal(fps.z[fps.assignment[fps.converged]], fps.z[fps.assignment[fps.converged]])
    dist = (fps.final[fps.converged] - fps.z[fps.assignment[fps.converged]]).norm(dim=1)
    assert bool((dist < 1e-6).all())


def test_rotation_conjugate_pair_order_and_stability():
    for r, stable in ((0.9, True), (1.2, False)):
        theta = 0.4
        R = r * torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]],
                             dtype=torch.float64)
        z0 = torch.tensor([[1.0, 2.0], [-3.0, 0.5]], dtype=torch.float64)
        fps = find_fixed_points(lambda z, R=R: z @ R.T, z0)
        assert len(fps) == 1 and torch.allclose(fps.z[0], torch.zeros(2, dtype=torch.float64), atol=1e-10)
        np.testing.assert_allclose(fps.eigvals[0].numpy(), [r * np.exp(0.4j), r * np.exp(-0.4j)], atol=1e-10)
        assert bool(fps.stable[0]) is stable


def test_saddle_node_ghost_is_a_slow_point_not_a_fixed_point():
    eps = 0.01
    fps = find_fixed_points(lambda z: z + z**2 + eps, torch.linspace(-1, 1, 7, dtype=torch.float64)[:, None])
    assert len(fps) == 0 and (fps.kind == SLOW).all()
    assert len(fps.slow) == 1 and fps.slow.count.tolist() == [7]
    assert abs(float(fps.slow.z[0, 0])) < 1e-4
    assert float(fps.slow.residual[0]) == pytest.approx(eps, rel=1e-4)
    assert (fps.assignment == -1).all() and (fps.slow_assignment == 0).all()


def test_kronecker_map_in_82944_dimensions_is_matrix_free():
    """f(Z) = tanh(A Z B^T) on 81 x 1024 states: fixed point 0, Jacobian B (x) A with known eigenvalues."""
    g = torch.Generator().manual_seed(0)
    a_eigs, b_eigs = torch.tensor([0.9, -0.5, 0.3]), torch.tensor([0.8, 0.4])
    QA = torch.linalg.qr(torch.randn(81, 81, generator=g, dtype=torch.float64))[0]
    QB = torch.linalg.qr(torch.randn(1024, 1024, generator=g, dtype=torch.float64))[0]
    da = torch.zeros(81, dtype=torch.float64)
    da[:3] = a_eigs
    db = torch.zeros(1024, dtype=torch.float64)
    db[:2] = b_eigs
    A, B = QA @ torch.diag(da) @ QA.T, QB @ torch.diag(db) @ QB.T

    def f(z):
        return torch.tanh((A @ z.reshape(-1, 81, 1024) @ B.T).reshape(z.shape[0], -1))

    z0 = 0.05 * torch.randn(2, 81 * 1024, generator=g, dtype=torch.float64)
    fps = find_fixed_points(f, z0, k=3, krylov_dim=8)
    assert len(fps) == 1 and float(fps.z.abs().max()) < 1e-9
    np.testing.assert_allclose(fps.eigvals[0].real.numpy(), [0.72, -0.4, 0.36], atol=1e-6)
    assert bool(fps.stable[0])


def test_nonfinite_starts_and_trials_are_handled():
    # sqrt is NaN below 0: Newton steps from 0.5 overshoot into it and must be rejected, not crash.
    z0 = torch.tensor([[4.0], [0.5], [2.0], [-1.0], [float("nan")]], dtype=torch.float64)
    fps = find_fixed_points(torch.sqrt, z0)
    assert len(fps) == 1 and float(fps.z[0, 0]) == pytest.approx(1.0, abs=1e-10)
    assert fps.kind.tolist() == [FIXED, FIXED, FIXED, NONFINITE, NONFINITE]
    assert fps.assignment.tolist() == [0, 0, 0, -1, -1]
    assert fps.eigvals[0, 0].real == pytest.approx(0.5, abs=1e-8)
    assert math.isinf(float(fps.final_residual[3]))


def test_map_that_returns_nan_for_some_rows():
    def f(z):
        return torch.where(z[:, :1] > 0, torch.full_like(z, float("nan")), 0.5 * z - 1.0)

    fps = find_fixed_points(f, torch.tensor([[-1.0, -1.0], [1.0, 0.0], [-3.0, 2.0]]))
    assert fps.kind.tolist() == [FIXED, NONFINITE, FIXED]
    assert torch.allclose(fps.z, torch.tensor([[-2.0, -2.0]]), atol=1e-4)


def test_non_convergence_is_reported():
    fps = find_fixed_points(cubic(), torch.tensor([[40.0, -25.0]], dtype=torch.float64), max_iter=1,
                            fallback_iters=0)
    assert len(fps) == 0 and fps.kind.tolist() == [FAILED]
    assert not bool(fps.converged[0]) and fps.assignment.tolist() == [-1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes_one_dimension_one_start(dtype):
    fps = find_fixed_points(lambda z: torch.cos(z), torch.tensor([[0.3]], dtype=dtype))
    assert len(fps) == 1 and fps.z.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert float(fps.z[0, 0]) == pytest.approx(0.7390851332151607, abs=tol)  # the Dottie number
    assert fps.eigvals[0, 0].real == pytest.approx(-math.sin(0.7390851332151607), abs=1e-4)
    assert bool(fps.stable[0])


def test_snapping_to_found_points_keeps_the_answer_and_saves_iterations():
    # A contracting random tanh network with a single attractor; krylov_dim 3 << d makes the final approach
    # linear (GMRES cannot resolve the Jacobian), which is what snapping skips.
    d = 48
    g = torch.Generator().manual_seed(0)
    W = 0.9 * torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5
    b = 0.3 * torch.randn(d, generator=g, dtype=torch.float64)
    f = lambda z: torch.tanh(z @ W.T + b)  # noqa: E731
    z0 = torch.randn(40, d, generator=g, dtype=torch.float64)
    snapped = find_fixed_points(f, z0, krylov_dim=3, k=2)
    alone = find_fixed_points(f, z0, krylov_dim=3, k=2, snap=False)
    assert len(snapped) == len(alone) == 1 and snapped.converged.all() and alone.converged.all()
    assert torch.allclose(snapped.z, alone.z, atol=1e-8)
    assert int(snapped.iterations.sum()) < int(alone.iterations.sum())
    on_anchor = (snapped.final[:, None, :] == snapped.final[None, :, :]).all(dim=2).sum(dim=1) > 1
    assert bool(on_anchor.any())  # some starts ended exactly on a point another start found
    # distinct points farther apart than the radius are never merged: the cubic lattice is assigned as before
    cube = 3 * torch.rand(200, 3, generator=g, dtype=torch.float64) - 1.5
    a, b_ = find_fixed_points(cubic(), cube, k=0), find_fixed_points(cubic(), cube, k=0, snap=False)
    assert torch.equal(a.z[a.assignment[a.converged]].round(), b_.z[b_.assignment[b_.converged]].round())
    assert torch.equal(a.converged, b_.converged)


def test_adam_method_batches_noise_and_arrays():
    A, b = affine_with_spectrum([0.5, -0.4, 0.3, 0.2], [], 4, seed=3)
    f = lambda z: z @ A.T + b  # noqa: E731
    z0 = torch.randn(10, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    adam = find_fixed_points(f, z0, method="adam", tol=1e-8, k=2)
    assert len(adam) == 1 and adam.converged.all()
    assert torch.allclose(adam.z[0], torch.linalg.solve(torch.eye(4, dtype=torch.float64) - A, b), atol=1e-6)
    one = find_fixed_points(f, z0, noise=0.5, generator=torch.Generator().manual_seed(7))
    chunked = find_fixed_points(f, z0, noise=0.5, generator=torch.Generator().manual_seed(7), batch_size=3)
    assert torch.allclose(one.final, chunked.final, atol=1e-9)
    arrays = one.to_arrays()
    assert arrays["z"].shape == (1, 4) and arrays["eigvals"].dtype == np.complex128
    assert arrays["assignment"].shape == (10,) and "slow_z" in arrays
    assert all(isinstance(v, np.ndarray) for v in arrays.values())


@pytest.mark.parametrize(
    "kwargs",
    [dict(z0=torch.zeros(3)), dict(z0=torch.zeros(2, 3, 4)), dict(z0=np.zeros((2, 2))),
     dict(z0=torch.zeros(2, 2, dtype=torch.long)), dict(method="bfgs"), dict(tol=-1.0), dict(max_iter=0),
     dict(krylov_dim=0), dict(k=-1), dict(noise=-0.1), dict(batch_size=0), dict(fallback_iters=-1),
     dict(fallback_lr=0.0), dict(snap=1), dict(f=lambda z: z[:, :1]), dict(f="not a map")],
)
def test_bad_arguments_raise_value_error(kwargs):
    args = dict(z0=torch.zeros(2, 2), f=lambda z: z) | kwargs
    with pytest.raises(ValueError):
        find_fixed_points(args.pop("f"), args.pop("z0"), **args)


def test_fallback_that_worsens_a_start_never_replaces_the_second_order_end(monkeypatch):
    from attractorlab.dynamics import fixed_points as module

    start = torch.tensor([[40.0, -25.0]], dtype=torch.float64)
    plain = find_fixed_points(cubic(), start, max_iter=1, fallback_iters=0)
    calls = []

    def worse(fc, z, tol, iters, lr, patience=None):
        calls.append(patience)
        return z + 100.0, torch.full((z.shape[0],), iters)

    monkeypatch.setattr(module, "_adam_solve", worse)
    fps = find_fixed_points(cubic(), start, max_iter=1, fallback_iters=5)
    assert calls == [module._FALLBACK_PATIENCE]  # the fallback ran, with its stall check
    assert torch.equal(fps.final, plain.final) and fps.kind.tolist() == [FAILED]
    assert fps.iterations.tolist() == [plain.iterations[0] + 5]


def test_fallback_stops_rows_that_stall():
    from attractorlab.dynamics.fixed_points import _adam_solve

    # F(z) = z^2 + 1 has no root; Adam on q creeps towards z = 0 and its residual stops falling
    z, count = _adam_solve(lambda z: z + z**2 + 1, torch.tensor([[3.0]], dtype=torch.float64), 1e-12, 5000, 1e-2,
                           patience=25)
    assert int(count[0]) < 5000 and abs(float(z[0, 0])) < 3.0


@pytest.mark.parametrize("m", [1, 5, 12])
def test_krylov_model_reproduces_the_linear_residual(m):
    """The reduced model the Levenberg-Marquardt step minimises is exact for an affine map: for any step
    ``s = W y`` in the step basis ``W = [V_j, w]``, ``||F + J_F s|| = ||beta e1 - H y||``, and W is orthonormal."""
    from attractorlab.dynamics.jacobian import Linearization
    from attractorlab.dynamics.newton import krylov_model

    d, n = 30, 4
    A, b = affine_with_spectrum([0.9, -0.5, 1.3], [(0.95, 0.4)], d)
    A[7:, 7:] += 0.4 * torch.randn(d - 7, d - 7, generator=torch.Generator().manual_seed(1), dtype=A.dtype)

    def f(z):
        return z @ A.T + b

    z = torch.randn(n, d, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    F = f(z) - z
    J_F = A - torch.eye(d, dtype=A.dtype)
    g = F @ J_F
    V, w, H, bad = krylov_model(Linearization(f, z), F, g, m, torch.zeros(n, dtype=torch.float64))
    W = torch.cat([V, w[:, None]], dim=1)  # [n, j+1, d]
    assert not bad.any() and H.shape == (n, V.shape[1] + 2, V.shape[1] + 1)
    torch.testing.assert_close(W @ W.transpose(1, 2), torch.eye(W.shape[1], dtype=W.dtype).expand_as(H[:, 1:]),
                               atol=1e-10, rtol=0)
    y = torch.randn(n, W.shape[1], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    step = torch.einsum("nj,njd->nd", y, W)
    e1 = torch.zeros(n, H.shape[1], dtype=H.dtype)
    e1[:, 0] = F.norm(dim=1)
    torch.testing.assert_close((F + step @ J_F.T).norm(dim=1), (e1 - torch.einsum("nij,nj->ni", H, y)).norm(dim=1),
                               atol=1e-9, rtol=1e-9)


def odd_tanh_rnn(d=16, g=2.0, seed=2, n=24):
    """``f(z) = tanh(W z)`` (odd: fixed points are 0 and symmetric pairs ``+-z*``) with starts sampled from
    trajectories plus noise; W float64."""
    gen = torch.Generator().manual_seed(seed)
    W = g * torch.randn(d, d, generator=gen, dtype=torch.float64) / d**0.5
    z = torch.randn(8, d, generator=gen, dtype=torch.float64)
    states = []
    for _ in range(30):
        z = torch.tanh(z @ W.T)
        states.append(z)
    states = torch.cat(states)
    pick = torch.randperm(states.shape[0], generator=gen)[:n]
    return W, states[pick] + 0.05 * torch.randn(n, d, generator=gen, dtype=torch.float64)


def q64(f, z):
    """FixedPointFinder's q = 0.5 ||f(z) - z||^2, recomputed in float64."""
    z = z.double()
    return 0.5 * ((f(z) - z) ** 2).sum(dim=1)


def test_float32_points_are_refined_in_float64_and_never_reported_twice():
    W, z0 = odd_tanh_rnn()
    f = lambda z: torch.tanh(z @ W.T.to(z.dtype))  # noqa: E731  (evaluates in the dtype it is given)
    plain = find_fixed_points(f, z0.float(), k=2, refine=False)
    assert plain.refined_dtype == "float32" and float(q64(f, plain.z).max()) > 1e-12  # float32 stops short
    fps = find_fixed_points(f, z0.float(), k=2)
    assert fps.refined_dtype == "float64" and fps.z.dtype == torch.float32 and fps.z_refined.dtype == torch.float64
    assert len(fps) == 3 and int(fps.count.sum()) == 24  # 0 and one symmetric pair, every start on one of them
    assert float(q64(f, fps.z_refined).max()) < 1e-22  # every reported point is a fixed point to float64 precision
    assert float(q64(f, fps.z).max()) < 1e-13  # and still one after rounding to float32
    torch.testing.assert_close(fps.refined_residual, (f(fps.z_refined) - fps.z_refined).norm(dim=1), rtol=0,
                               atol=1e-14)
    mirror = torch.cdist(fps.z_refined, -fps.z_refined).min(dim=1).values
    assert float(mirror.max()) < 1e-9  # the pair is symmetric to float64 precision (float32 alone: ~1e-5)
    gaps = torch.cdist(fps.z_refined, fps.z_refined) + 1e9 * torch.eye(3, dtype=torch.float64)
    assert float(gaps.min()) > 1.0  # no point twice
    arrays = fps.to_arrays()
    assert arrays["z_refined"].dtype == np.float64 and arrays["refined_dtype"] == b"float64"


def test_float32_map_that_rejects_float64_is_polished_in_float32():
    W, z0 = odd_tanh_rnn()
    W32 = W.float()
    fps = find_fixed_points(lambda z: torch.tanh(z @ W32.T), z0.float(), k=0)  # float64 input: dtype error
    assert fps.refined_dtype == "float32" and fps.z_refined.dtype == torch.float32
    assert len(fps) == 3 and float(fps.refined_residual.max()) < 1e-6  # a few float32 epsilons
    gaps = torch.cdist(fps.z, fps.z) + 1e9 * torch.eye(3)
    assert float(gaps.min()) > 1.0


def test_precision_radius_merges_imprecise_copies_but_not_distinct_points():
    from attractorlab.dynamics.fixed_points import greedy_unique

    z = torch.tensor([[0.0, 0.0], [0.02, 0.0], [1.0, 0.0], [1.0, 3e-4]], dtype=torch.float64)
    labels, leaders = greedy_unique(z, 1e-3)  # radius 1e-3: the two rough copies of 0 stay apart
    assert leaders.tolist() == [0, 1, 2]
    precision = torch.tensor([0.004, 0.004, 1e-9, 1e-9], dtype=torch.float64)
    labels, leaders = greedy_unique(z, 1e-3, precision)  # 0.02 <= 4 * (0.004 + 0.004): one point
    assert labels.tolist() == [0, 0, 1, 1] and leaders.tolist() == [0, 2]
