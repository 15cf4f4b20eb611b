"""Noise floors against closed forms, end-state classification under path noise, and the noise-free polish."""

import math

import numpy as np
import pytest
import torch

from attractorlab.dynamics import (
    ENDING_NAMES,
    classify_endings,
    floor_from_records,
    measure_noise_floor,
    noise_floor,
    outer_step_sigma,
    polish,
    select_attractor,
)

VALID, INVALID, CYCLE, DRIFT = range(len(ENDING_NAMES))


def chi_mean(d: int, c: float) -> float:
    """E||r|| for r ~ N(0, c I_d): sqrt(2 c) Gamma((d + 1) / 2) / Gamma(d / 2)."""
    return math.sqrt(2 * c) * math.exp(math.lgamma((d + 1) / 2) - math.lgamma(d / 2))


def test_analytic_floor_of_a_scaled_identity_is_the_chi_closed_form():
    d, a, sigma = 50, 0.6, 0.01
    c = 2 * sigma**2 / (1 + a)  # stationary e ~ N(0, sigma^2 / (1 - a^2) I); r = (a - 1) e + xi ~ N(0, c I)
    nf = noise_floor(sigma, d, jacobian=a)
    assert float(nf.mean) == pytest.approx(chi_mean(d, c), rel=1e-12)
    assert float(nf.rms) == pytest.approx(math.sqrt(d * c), rel=1e-12) and float(nf.dof) == pytest.approx(d)
    assert float(nf.median) < float(nf.high) and nf.quantile == 0.99 and not nf.relative
    strong = noise_floor(sigma, d)  # J = 0: the bound from the noise alone, sqrt(2 d) sigma
    assert float(strong.rms) == pytest.approx(math.sqrt(2 * d) * sigma)
    as_matrix = noise_floor(sigma, jacobian=a * np.eye(d))  # the Lyapunov route agrees with the scalar one
    assert float(as_matrix.mean) == pytest.approx(float(nf.mean), rel=1e-9)
    rel = noise_floor(sigma, d, jacobian=a, z_norm=3.0)
    trace_p = d * sigma**2 / (1 - a * a)
    assert rel.relative and float(rel.mean) == pytest.approx(chi_mean(d, c) / math.sqrt(9.0 + trace_p))


def test_measured_floor_matches_the_closed_form():
    d, a, sigma = 50, 0.6, 0.01
    gen = torch.Generator().manual_seed(0)

    def noisy(z):
        return a * z + sigma * torch.randn(z.shape, generator=gen, dtype=z.dtype)

    m = measure_noise_floor(noisy, torch.zeros(32, d, dtype=torch.float64), 200, relative=False)
    assert m.residuals.shape == (32, 200) and m.samples == 200 and m.mean.shape == (32,)
    exact = chi_mean(d, 2 * sigma**2 / (1 + a))
    assert float(m.mean.mean()) == pytest.approx(exact, rel=0.02)
    analytic = noise_floor(sigma, d, jacobian=a)
    assert float(np.median(m.residuals)) == pytest.approx(float(analytic.median), rel=0.02)
    assert float(np.quantile(m.residuals, 0.99)) == pytest.approx(float(analytic.high), rel=0.05)


def test_measured_floor_matches_the_lyapunov_floor_of_a_general_contraction():
    d, sigma = 12, 0.02
    gen = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    A = q @ torch.diag(torch.linspace(-0.7, 0.9, d, dtype=torch.float64)) @ q.T
    A[0, 1] += 0.3  # not normal
    analytic = noise_floor(sigma, jacobian=A)

    def noisy(z):
        return z @ A.T + sigma * torch.randn(z.shape, generator=gen, dtype=z.dtype)

    z_star = torch.ones(64, d, dtype=torch.float64) * 0.0
    m = measure_noise_floor(noisy, z_star, 150, burn_in=60, relative=False)
    assert float(m.mean.mean()) == pytest.approx(float(analytic.mean), rel=0.03)
    assert float(np.sqrt((m.residuals**2).mean())) == pytest.approx(float(analytic.rms), rel=0.03)


def test_outer_step_sigma_limits_and_bad_input():
    assert outer_step_sigma(0.01, 3, 6) == pytest.approx(0.01)  # only the last update of each stream counts
    assert outer_step_sigma(0.01, 3, 6, carry=1.0) == pytest.approx(0.01 * math.sqrt(21 / 2))  # accumulates
    assert 0.01 < outer_step_sigma(0.01, 3, 6, carry=0.5) < 0.01 * math.sqrt(21 / 2)
    for kwargs in (dict(jacobian=1.0, d=4), dict(jacobian=np.diag([0.5, -1.2])), dict(d=0), dict(quantile=1.0)):
        with pytest.raises(ValueError):
            noise_floor(0.01, **{"d": 4} | kwargs)
    with pytest.raises(ValueError):
        outer_step_sigma(0.01, 0, 6)
    with pytest.raises(ValueError):
        measure_noise_floor(lambda z: z, torch.zeros(3), 5)


def noisy_walks(n=16, d=64, t=40, a=0.5, sigma=0.01, drift=0.0, center=1.0, seed=0):
    """Rows z_t = z* + t v + e_t, e_t = a e_{t-1} + sigma eps (stationary start), z* = center * ones, ||v|| about
    ``drift``: relative residuals [n, t]."""
    rng = np.random.default_rng(seed)
    z_star = np.full(d, center)
    e = rng.normal(0, sigma / math.sqrt(1 - a * a), (n, d))
    v = drift * rng.normal(size=d) / math.sqrt(d)
    zs = []
    for step in range(t + 1):
        zs.append(z_star + step * v + e)
        e = a * e + sigma * rng.normal(size=(n, d))
    zs = np.stack(zs, axis=1)
    return np.linalg.norm(np.diff(zs, axis=1), axis=-1) / np.linalg.norm(zs[:, 1:], axis=-1)


def test_noisy_walk_at_a_fixed_point_is_converged_under_its_floor():
    d, a, sigma = 64, 0.5, 0.01
    residual = noisy_walks(d=d, a=a, sigma=sigma)
    valid = np.ones_like(residual, dtype=bool)
    assert (classify_endings(residual, valid).label == DRIFT).all()  # the old tolerance sits below the noise
    floor = float(noise_floor(sigma, d, jacobian=a, z_norm=math.sqrt(d)).mean)
    assert float(np.median(residual)) == pytest.approx(floor, rel=0.05)
    endings = classify_endings(residual, valid, floor=floor)
    assert (endings.label == VALID).all() and endings.counts.tolist() == [16, 0, 0, 0]
    np.testing.assert_allclose(endings.threshold, 2 * floor)
    assert set(endings.to_arrays()) == {"label", "period", "counts", "names", "threshold"}
    per_row = np.full(16, floor)
    per_row[:4] = 0.0  # rows without a floor are classified as before: drifting
    mixed = classify_endings(residual, valid, floor=per_row)
    assert mixed.label.tolist() == [DRIFT] * 4 + [VALID] * 12 and np.isnan(mixed.threshold[:4]).all()
    unchanged = classify_endings(residual, valid, floor=0.0)
    assert unchanged.threshold is None and (unchanged.label == DRIFT).all()
    pred = np.zeros(residual.shape + (3,), dtype=np.uint8)
    pred[0, -2, 1] = 1  # the answer still changed within the window: not converged
    with_pred = classify_endings(residual, valid, pred=pred, floor=floor)
    assert with_pred.label[0] == DRIFT and (with_pred.label[1:] == VALID).all()


def test_slow_drift_above_the_floor_stays_moving():
    d, a, sigma, center = 64, 0.5, 0.01, 10.0  # a large norm: 40 steps of drift barely change it
    floor = float(noise_floor(sigma, d, jacobian=a, z_norm=center * math.sqrt(d)).mean)
    drift = 4 * floor * center * math.sqrt(d)  # per-step displacement: four floors
    residual = noisy_walks(d=d, a=a, sigma=sigma, drift=drift, center=center)
    endings = classify_endings(residual, np.ones_like(residual, dtype=bool), floor=floor)
    assert (endings.label == DRIFT).all()


def noisy_two_cycle(n=8, d=64, t=30, sigma=0.01, seed=0):
    """z -> c - tanh(g (z - c)) + noise (c = 2, g = 3): a stable 2-cycle c +- a*, states of unequal norm."""
    rng = np.random.default_rng(seed)
    c, g = 2.0, 3.0
    z = c + rng.uniform(0.2, 1.0, (n, d))
    zs = [z]
    for _ in range(t):
        z = c - np.tanh(g * (z - c)) + sigma * rng.normal(size=(n, d))
        zs.append(z)
    zs = np.stack(zs, axis=1)
    residual = np.linalg.norm(np.diff(zs, axis=1), axis=-1) / np.linalg.norm(zs[:, 1:], axis=-1)
    return residual, (zs[:, 1:] > c).astype(np.uint8)


def test_noisy_two_cycle_is_periodic_with_period_two():
    d, sigma = 64, 0.01
    residual, pred = noisy_two_cycle(d=d, sigma=sigma)
    valid = np.zeros_like(residual, dtype=bool)
    # the floor of a state of the cycle's smaller norm (about sqrt(d)): the scale of the noise on its residuals
    floor = float(noise_floor(sigma, d, z_norm=math.sqrt(d)).mean)
    from_residual = classify_endings(residual, valid, floor=floor)
    assert (from_residual.label == CYCLE).all() and (from_residual.period == 2).all()
    from_pred = classify_endings(residual, valid, pred=pred, floor=floor)
    assert (from_pred.label == CYCLE).all() and (from_pred.period == 2).all()
    assert (classify_endings(residual, valid).label == DRIFT).all()  # the exact tolerance misses it


def test_floor_from_records_uses_rows_whose_answer_stopped_changing():
    rng = np.random.default_rng(0)
    n, b, t = 10, 4, 20
    residual = np.abs(0.01 * (1 + 0.05 * rng.normal(size=(n, b, t))))
    pred = np.zeros((n, b, t, 5), dtype=np.uint8)
    residual[:, 0] = 0.05  # restart 0 still moves and its answer keeps changing...
    pred[:, 0, :, 0] = np.arange(t) % 2
    est = floor_from_records(residual, pred=pred)
    assert est.n_rows == n * (b - 1) and not est.used[:, 0].any() and est.used[:, 1:].all()
    assert est.floor == pytest.approx(0.01, rel=0.05) and est.row_median.shape == (n, b)
    everything = floor_from_records(residual, quantile=0.5)  # ...without answers it is used too
    assert everything.n_rows == n * b
    flags = np.zeros((n, b, t), dtype=bool)
    flags[:, 0] = True
    assert floor_from_records(residual, changed=flags).n_rows == n * (b - 1)
    none = floor_from_records(residual, changed=np.ones((n, b, t), dtype=bool))
    assert math.isnan(none.floor) and "no row" in none.reason
    assert set(est.to_arrays()) >= {"floor", "row_median", "used"}


def cubic(a=0.5):
    """Separable map with fixed points at every z in {-1, 0, 1}^d; attractors are the corners."""
    return lambda z: z + a * (z - z**3)


def test_polish_finds_the_attractor_under_each_noisy_end_state():
    gen = torch.Generator().manual_seed(0)
    corners = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    ends = corners + 0.05 * torch.randn(3, 2, generator=gen, dtype=torch.float64)
    result = polish(cubic(), ends)
    assert result.fixed.all() and result.stable.all() and len(result.points) == 3
    torch.testing.assert_close(result.z, corners, atol=1e-10, rtol=0)
    assert (result.residual < 1e-10).all() and (result.spectral_radius - 0.0).abs().max() < 1e-8
    torch.testing.assert_close(result.distance, (ends - corners).norm(dim=1))
    saddle = polish(cubic(), torch.tensor([[0.01, 0.98]], dtype=torch.float64), steps=0)
    assert bool(saddle.fixed[0]) and not bool(saddle.stable[0])
    assert float(saddle.spectral_radius[0]) == pytest.approx(1.5)
    arrays = result.to_arrays()
    assert arrays["z"].shape == (3, 2) and "points/z" in arrays
    with pytest.raises(ValueError):
        polish(cubic(), ends, steps=-1)


def test_polish_decides_in_the_working_dtype_unless_asked_to_refine():
    def f(z):  # attractors at the corners of {-sqrt 2, sqrt 2}^2: no float32 number is one
        return z + 0.5 * (z - z**3 / 2)

    gen = torch.Generator().manual_seed(2)
    corners = math.sqrt(2) * torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    ends = (corners + 0.05 * torch.randn(3, 2, generator=gen, dtype=torch.float64)).float()
    plain, refined = polish(f, ends), polish(f, ends, refine=True)
    assert plain.z.dtype == torch.float32 and refined.z.dtype == torch.float64
    assert plain.point.tolist() == refined.point.tolist() and plain.point[0] == plain.point[2] != plain.point[1]
    assert plain.stable.all() and refined.stable.all() and len(plain.points) == 2
    assert float((refined.z - corners).abs().max()) < 1e-12
    assert float((plain.z.double() - corners).abs().max()) < 1e-5


def test_attractor_selection_takes_the_most_visited_attractor_where_the_convergence_score_disagrees():
    gen = torch.Generator().manual_seed(1)
    ends = torch.tensor([[1.0, 1.0]] * 3 + [[-1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    ends[:3] += torch.tensor([0.05, 0.01, 0.03], dtype=torch.float64)[:, None] * torch.randn(3, 2, generator=gen,
                                                                                            dtype=torch.float64)
    ends[3] += 1e-4  # the lone restart at (-1, 1) moves least: the convergence score prefers it
    polished = polish(cubic(), ends)
    assert polished.stable.tolist() == [True, True, True, True, False]  # the last sits on a saddle
    fallback = np.array([0.5, 0.4, 0.6, 0.01, 0.02])
    assert int(np.argmin(fallback)) == 3
    assert select_attractor(polished, fallback) == 1  # on (1, 1), the attractor three restarts reached; closest
    at_saddle = polish(cubic(), torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64))
    assert not at_saddle.stable.any()
    assert select_attractor(at_saddle, np.array([0.3, 0.1])) == 1 and select_attractor(at_saddle) == 0


@pytest.mark.parametrize("kwargs", [dict(floor=-0.1), dict(floor=np.ones(5)), dict(floor=np.nan),
                                    dict(floor=0.1, floor_margin=0.0), dict(floor=0.1, window=0)])
def test_classify_endings_rejects_bad_floors(kwargs):
    residual = np.full((4, 10), 0.01)
    with pytest.raises(ValueError):
        classify_endings(residual, np.ones_like(residual, dtype=bool), **kwargs)
