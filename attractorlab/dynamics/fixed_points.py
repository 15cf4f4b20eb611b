"""Fixed points and slow points of batched maps, found by a matrix-free second-order solver.

A fixed point of ``f: [N, d] -> [N, d]`` is a root of ``F(z) = f(z) - z``. From each start state the solver
runs a Levenberg-Marquardt / Newton-Krylov iteration. Per outer step, all N starts together:

1. linearise ``f`` once (:class:`~attractorlab.dynamics.jacobian.Linearization`: cached Jacobian products);
2. a batched Arnoldi process builds a Krylov basis ``V`` of ``J_F = df/dz - I`` from ``-F``
   (``J_F V_m = V_{m+1} H``), augmented by the gradient ``J_F^T F`` of ``q = 0.5 ||F||^2``;
3. the damped Gauss-Newton step ``min_y ||beta e1 - H y||^2 + mu ||y||^2`` is solved by a small QR, with
   ``mu`` adapted per start by a trust-region ratio test: far from a root the step bends towards the
   gradient of ``q``, near a root it is a Newton step, so the iteration converges quadratically to
   attractors, saddles and repellers alike.

Starts that stall (residual not halved in 10 iterations) are handed to a first-order fallback (Adam on ``q``)
and polished again (stopping after 5 iterations without halving). Most samples of starts end at a few points,
and the last part of each approach costs the most (convergence is only linear where GMRES cannot resolve the
Jacobian in ``krylov_dim`` steps): with ``snap`` a start whose iterate comes within the de-duplication radius
of a fixed point already found in the same call stops there and ends on that point, which the de-duplication
would have merged it with anyway. A start that ends at a stationary point of ``q`` with ``q > 0``
(``||J_F^T F|| <= slow_tol ||F||``) is a *slow point*: reported in :attr:`FixedPoints.slow`, never among the
fixed points.

Conventions shared by ``attractorlab.dynamics``: tolerances on residuals are relative to the state norm,
``||F(z)|| <= tol * max(||z||, 1)`` (absolute for states of norm below one); ``f`` must act on rows
independently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .jacobian import (
    BatchedMap,
    Linearization,
    Tensor,
    check_map,
    check_states,
    compute_dtype,
    jacobian_spectrum,
    spectral_radius,
)

FIXED, SLOW, FAILED, NONFINITE = 0, 1, 2, 3
KIND_NAMES = ("fixed", "slow", "failed", "nonfinite")
"""Codes of :attr:`FixedPoints.kind` (per start): index into this tuple."""

_METHODS = ("newton", "adam")
_LAMBDA_INIT, _LAMBDA_MIN, _LAMBDA_MAX = 1e-6, 1e-16, 1e10
_ACCEPT, _GOOD, _BAD = 1e-4, 0.75, 0.25
_MAX_TRIALS = 8
_ETA_MAX = 1e-2
_CHECK_EVERY_SMALL, _LARGE_STATE = 10, 4096
_STALL_WINDOW, _STALL_FACTOR = 10, 0.5
_POLISH_STALL_WINDOW = 5  # starts polished after the fallback have stalled once: a shorter leash
_FALLBACK_PATIENCE = 25


@dataclass
class SlowPoints:
    """Unique slow points: local minima of ``q = 0.5 ||f(z) - z||^2`` with ``q > 0``.

    z: [S, d]; residual: [S] ``||f(z) - z||``; grad_ratio: [S] ``||J_F^T F|| / ||F||`` (small at a slow
    point); count: [S] number of starts that ended there.
    """

    z: Tensor
    residual: Tensor
    grad_ratio: Tensor
    count: Tensor

    def __len__(self) -> int:
        return int(self.z.shape[0])


@dataclass
class FixedPoints:
    """Unique fixed points found from N starts, with per-start bookkeeping.

    Unique points (M), sorted stable first, then by increasing residual:
        z: [M, d]; residual: [M] ``||f(z) - z||``; rel_residual: [M] ``residual / ||z||``;
        eigvals: [M, k] complex128, top-k Jacobian eigenvalues by decreasing modulus;
        spectral_radius: [M]; stable: [M] bool (spectral radius < 1, i.e. an attractor of the discrete map);
        count: [M] number of starts that landed on each point.
    Per start (N):
        assignment: [N] index into the unique points, -1 unless ``kind == FIXED``;
        kind: [N] int8 codes into :data:`KIND_NAMES` (fixed, slow, failed, nonfinite);
        converged: [N] bool (``kind == FIXED``); iterations: [N] solver iterations (second- plus first-order);
        final: [N, d] end state of each start; final_residual: [N] its residual;
        slow_assignment: [N] index into :attr:`slow`, -1 unless ``kind == SLOW``.
    slow: the unique slow points (:class:`SlowPoints`).
    """

    z: Tensor
    residual: Tensor
    rel_residual: Tensor
    eigvals: Tensor
    spectral_radius: Tensor
    stable: Tensor
    count: Tensor
    assignment: Tensor
    kind: Tensor
    converged: Tensor
    iterations: Tensor
    final: Tensor
    final_residual: Tensor
    slow: SlowPoints
    slow_assignment: Tensor
    kind_names: tuple[str, ...] = field(default=KIND_NAMES)

    def __len__(self) -> int:
        return int(self.z.shape[0])

    def to_arrays(self) -> dict[str, np.ndarray]:
        """All fields as numpy arrays (slow points prefixed ``slow_``), ready for HDF5."""
        out = {name: _numpy(getattr(self, name)) for name in (
            "z", "residual", "rel_residual", "eigvals", "spectral_radius", "stable", "count", "assignment",
            "kind", "converged", "iterations", "final", "final_residual", "slow_assignment")}
        for name in ("z", "residual", "grad_ratio", "count"):
            out[f"slow_{name}"] = _numpy(getattr(self.slow, name))
        return out


def _numpy(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _scale(z: Tensor) -> Tensor:
    """Per-row tolerance scale ``max(||z||, 1)``. z: [N, d] -> [N]."""
    return z.norm(dim=1).clamp_min(1.0)


def _residual(fc: BatchedMap, z: Tensor) -> Tensor:
    """``F(z) = f(z) - z`` with non-finite rows left as they are. z: [N, d] -> [N, d]."""
    with torch.no_grad():
        return fc(z) - z


def _finite(x: Tensor) -> Tensor:
    return torch.isfinite(x).all(dim=1)


def _orthogonalize(w: Tensor, vs: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Remove from rows of w [n, d] their components on the orthonormal rows of vs [n, j, d].

    Classical Gram-Schmidt, repeated once when some row lost more than 30% of its norm (the DGKS criterion).
    Returns (w [n, d], coefficients [n, j], norm of w before [n] and after [n]).
    """
    norm_in = w.norm(dim=1)
    coef = torch.bmm(w[:, None, :], vs.transpose(1, 2))[:, 0]  # this operand order is several times faster
    w = w - torch.bmm(coef[:, None, :], vs)[:, 0]
    norm_out = w.norm(dim=1)
    if bool((norm_out < 0.7 * norm_in).any()):
        c = torch.bmm(w[:, None, :], vs.transpose(1, 2))[:, 0]
        w = w - torch.bmm(c[:, None, :], vs)[:, 0]
        coef = coef + c
        norm_out = w.norm(dim=1)
    return w, coef, norm_in, norm_out


def _normalize(w: Tensor, norm: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
    """Unit rows of w [n, d] given their norms [n]; rows that are ~0 relative to ``reference`` [n] become 0.
    Returns (unit rows [n, d], norms [n] with 0 for the dropped rows)."""
    alive = norm > 1e-10 * reference.clamp_min(torch.finfo(w.dtype).tiny)
    norm = torch.where(alive, norm, torch.zeros_like(norm))
    return w * torch.where(alive, 1.0 / norm.clamp_min(torch.finfo(w.dtype).tiny), 0.0)[:, None], norm


def _krylov_model(lin: Linearization, F: Tensor, g: Tensor, m: int, eta: Tensor):
    """Subspace and projected Jacobian for one Levenberg-Marquardt step at n states.

    A batched Arnoldi process on ``J_F = J - I`` (``J`` from ``lin``) from ``-F``, ``J_F V_j = V_{j+1} H``,
    stopped after ``m`` steps or once every row's GMRES residual is below ``eta [n] * ||F||``, then augmented
    by the gradient ``g = J_F^T F`` of ``q`` so that a stationary point of the reduced problem is a stationary
    point of ``q`` (plain Newton-GMRES can stagnate where ``F`` is orthogonal to ``J_F K``).

    F, g: [n, d]. Returns the orthonormal step basis ``W = [V_j, w]`` as (V_j [n, j, d], w [n, d]), then
    H [n, j+2, j+1] float64 with ``J_F W = V_{j+2} H`` and ``-F = ||F|| V_{j+2} e1``, and bad [n] (a Jacobian
    product was not finite).
    """
    n, d = F.shape
    # The GMRES residual costs a small QR per check: for large states the Jacobian products dominate, so check
    # every step and stop as early as possible; for small ones check every few steps.
    check_every = 1 if d >= _LARGE_STATE else _CHECK_EVERY_SMALL
    basis = F.new_zeros(n, m + 2, d)
    hess = torch.zeros(n, m + 2, m + 1, dtype=torch.float64, device=F.device)
    f_norm = F.norm(dim=1)
    basis[:, 0] = _normalize(-F, f_norm, f_norm)[0]

    def add_image(v: Tensor, j: int, in_basis: bool) -> Tensor:
        """Column j: image of v under J_F, orthogonalised against basis[:, :j+1], stored as basis vector j+1.

        When v is basis vector j (Arnoldi), J v is orthogonalised instead and the shift -I enters H as -1 on
        the diagonal: the same basis, without J v - v losing most of its norm to v (which would call for a
        second Gram-Schmidt pass)."""
        image = lin.matvec(v)
        w, coef, norm_in, norm_out = _orthogonalize(image if in_basis else image - v, basis[:, : j + 1])
        basis[:, j + 1], h_next = _normalize(w, norm_out, norm_in)
        hess[:, : j + 1, j] = coef.double()
        if in_basis:
            hess[:, j, j] -= 1.0
        hess[:, j + 1, j] = h_next.double()
        return h_next

    j = 0
    while j < m:
        h_next = add_image(basis[:, j], j, in_basis=True)
        j += 1
        if not bool((h_next > 0).any()):
            break
        if j % check_every == 0 and j < m:
            q = torch.linalg.qr(hess[:, : j + 1, :j])[0]
            gmres_rel = (1.0 - (q[:, 0, :] ** 2).sum(dim=1)).clamp_min(0.0).sqrt()
            if bool((gmres_rel <= eta).all()):
                break
    w_grad, _, g_norm, w_norm = _orthogonalize(g, basis[:, :j])
    w_grad = _normalize(w_grad, w_norm, g_norm)[0]
    add_image(w_grad, j, in_basis=False)
    hess = hess[:, : j + 2, : j + 1]
    bad = ~torch.isfinite(hess).flatten(1).all(dim=1)
    return basis[:, :j], w_grad, torch.where(bad[:, None, None], 0.0, hess), bad


def _lm_subproblem(hess: Tensor, beta: Tensor, mu: Tensor) -> tuple[Tensor, Tensor]:
    """Solve ``min_y ||beta e1 - H y||^2 + mu ||y||^2`` by QR of ``[H; sqrt(mu) I]``.

    hess: [n, p+1, p] float64, beta, mu: [n]. Returns y [n, p] and the decrease of the linear model,
    ``||beta e1||^2 - ||beta e1 - H y||^2 = y^T H^T beta e1 + mu ||y||^2`` (no cancellation).
    """
    p = hess.shape[2]
    eye = torch.eye(p, dtype=hess.dtype, device=hess.device)
    q, r = torch.linalg.qr(torch.cat([hess, mu.sqrt()[:, None, None] * eye], dim=1))
    rhs = beta[:, None] * q[:, 0, :]
    y = torch.linalg.solve_triangular(r, rhs[:, :, None], upper=True)[:, :, 0]
    grad = beta[:, None] * hess[:, 0, :]
    return y, (y * grad).sum(dim=1) + mu * (y * y).sum(dim=1)


class _Anchors:
    """Fixed points found so far in one call (z, F: [K, d]); an iterate within ``radius`` of one snaps to it."""

    def __init__(self, radius: float, like: Tensor):
        self.radius = radius
        self.z, self.F = like.new_zeros(0, like.shape[1]), like.new_zeros(0, like.shape[1])

    def add(self, z: Tensor, F: Tensor) -> None:
        """Keep the converged rows of z, F [c, d] that are not within ``radius`` of a known point."""
        if z.shape[0] and self.z.shape[0]:
            keep = self._distance(z).amin(dim=1) > self.radius
            z, F = z[keep], F[keep]
        self.z, self.F = torch.cat([self.z, z]), torch.cat([self.F, F])

    def nearest(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """For rows of z [n, d]: (hit [n] bool: a known point lies within ``radius``, index [n] of the nearest)."""
        if z.shape[0] == 0 or self.z.shape[0] == 0:
            return torch.zeros(z.shape[0], dtype=torch.bool, device=z.device), torch.zeros(
                z.shape[0], dtype=torch.long, device=z.device)
        dist, which = self._distance(z).min(dim=1)
        return dist <= self.radius, which

    def _distance(self, z: Tensor) -> Tensor:
        return torch.cdist(z, self.z, compute_mode="donot_use_mm_for_euclid_dist")


def _lm_solve(fc: BatchedMap, z: Tensor, tol: float, max_iter: int, krylov_dim: int, slow_tol: float,
              anchors: _Anchors | None = None, stall_window: int = _STALL_WINDOW):
    """Krylov Levenberg-Marquardt on ``F = f(z) - z`` from the rows of z [n, d]; with ``anchors``, converged rows
    are added to them and active rows that come within their radius stop on the nearest one. A row stops when
    its residual has not halved over ``stall_window`` iterations.

    Returns (z [n, d], F [n, d], iterations [n], done [n] bool: converged or stationary).
    """
    n, d = z.shape
    z = z.clone()
    F = _residual(fc, z)
    iters = torch.zeros(n, dtype=torch.long, device=z.device)
    lam = torch.full((n,), _LAMBDA_INIT, dtype=torch.float64, device=z.device)
    active = _finite(F) & (F.norm(dim=1) > tol * _scale(z))
    stationary = torch.zeros(n, dtype=torch.bool, device=z.device)
    history = [F.norm(dim=1)]
    double_backward = None
    if anchors is not None:
        start_done = _finite(F) & ~active
        anchors.add(z[start_done], F[start_done])
    m = min(krylov_dim, d)

    for it in range(max_iter):
        idx = active.nonzero()[:, 0]
        if idx.numel() == 0:
            break
        za, Fa, lam_a = z[idx], F[idx], lam[idx]
        lin = Linearization(fc, za, double_backward)
        g = lin.rmatvec(Fa) - Fa
        beta_f = Fa.norm(dim=1).double()
        stat_a = g.norm(dim=1).double() <= slow_tol * beta_f
        eta = (beta_f / _scale(za).double()).clamp(1e-12, _ETA_MAX)
        basis, w_grad, hess, bad = _krylov_model(lin, Fa, g, m, eta)
        double_backward = lin.double_backward
        scale_sq = (hess**2).sum(dim=1).amax(dim=1).clamp_min(1.0)
        accepted = torch.zeros_like(stat_a)
        for _ in range(_MAX_TRIALS):
            trial = ~accepted & ~stat_a & ~bad & (lam_a <= _LAMBDA_MAX)
            if not trial.any():
                break
            t = trial.nonzero()[:, 0]
            y, predicted = _lm_subproblem(hess[t], beta_f[t], lam_a[t] * scale_sq[t])
            y = y.to(za.dtype)
            step = torch.bmm(y[:, None, :-1], basis[t])[:, 0] + y[:, -1:] * w_grad[t]
            z_new = za[t] + step
            F_new = _residual(fc, z_new)
            new_sq = torch.where(_finite(F_new), F_new.norm(dim=1).double() ** 2, math.inf)
            rho = (beta_f[t] ** 2 - new_sq) / predicted.clamp_min(1e-300)
            ok = (rho > _ACCEPT) & (predicted > 0)
            factor = torch.where(ok & (rho > _GOOD), 0.1, torch.where(ok & (rho < _BAD), 2.0, 1.0))
            lam_a[t] = torch.where(ok, lam_a[t] * factor, lam_a[t] * 10.0).clamp_min(_LAMBDA_MIN)
            ok_t = t[ok]
            za[ok_t], Fa[ok_t] = z_new[ok], F_new[ok]
            accepted[ok_t] = True
        z[idx], F[idx], lam[idx] = za, Fa, lam_a
        iters[idx] += 1
        stationary[idx] = stat_a
        converged = Fa.norm(dim=1) <= tol * _scale(za)
        stuck = ~accepted & ~converged
        active[idx] = ~converged & ~stat_a & ~bad & ~(stuck & (lam_a > _LAMBDA_MAX))
        if anchors is not None:
            anchors.add(za[converged], Fa[converged])
            live = active.nonzero()[:, 0]
            hit, which = anchors.nearest(z[live])
            snapped = live[hit]
            z[snapped], F[snapped] = anchors.z[which[hit]], anchors.F[which[hit]]
            active[snapped] = False
        history.append(F.norm(dim=1))
        if it + 1 >= stall_window:
            active &= ~(history[-1] > _STALL_FACTOR * history[-1 - stall_window])
    done = (F.norm(dim=1) <= tol * _scale(z)) | stationary
    return z, F, iters, done & _finite(F)


def _gradient(fc: BatchedMap, z: Tensor) -> tuple[Tensor, Tensor]:
    """``F(z)`` and the gradient of ``q = 0.5 ||F||^2``, ``J_F^T F``. z: [n, d] -> ([n, d], [n, d])."""
    F, vjp_fn = torch.func.vjp(lambda x: fc(x) - x, z)
    F = F.detach()
    return F, vjp_fn(torch.where(torch.isfinite(F), F, 0.0))[0].detach()


def _grad_ratio(fc: BatchedMap, z: Tensor, F: Tensor) -> Tensor:
    """``||J_F^T F|| / ||F||`` per row (0 at a stationary point of q). z, F: [n, d] -> [n]."""
    _, g = _gradient(fc, z)
    return g.norm(dim=1) / F.norm(dim=1).clamp_min(torch.finfo(F.dtype).tiny)


def _adam_solve(fc: BatchedMap, z: Tensor, tol: float, iters: int, lr: float, patience: int | None = None):
    """First-order fallback: per-row Adam on ``q = 0.5 ||F||^2``; converged rows stop moving.

    With ``patience`` set, a row also stops once its residual has not fallen by a quarter over the last
    ``patience`` iterations (a stalled first-order run would only burn time). Returns (z [n, d], iterations [n]).
    """
    z = z.clone()
    n = z.shape[0]
    lr_rows = lr * (z.norm(dim=1, keepdim=True) / math.sqrt(z.shape[1])).clamp_min(1e-3)
    m1, m2 = torch.zeros_like(z), torch.zeros_like(z)
    count = torch.zeros(n, dtype=torch.long, device=z.device)
    active = torch.ones(n, dtype=torch.bool, device=z.device)
    checkpoint_res = torch.full((n,), math.inf, dtype=z.dtype, device=z.device)
    b1, b2, eps = 0.9, 0.999, 1e-8
    for it in range(iters):
        idx = active.nonzero()[:, 0]
        if idx.numel() == 0:
            break
        F, g = _gradient(fc, z[idx])
        finite = _finite(F) & _finite(g)
        res = F.norm(dim=1)
        moving = finite & (res > tol * _scale(z[idx]))
        if patience is not None and it % patience == 0:
            moving &= res < 0.75 * checkpoint_res[idx]
            checkpoint_res[idx] = res
        active[idx] = moving
        idx, g = idx[moving], g[moving]
        count[idx] += 1
        m1[idx] = b1 * m1[idx] + (1 - b1) * g
        m2[idx] = b2 * m2[idx] + (1 - b2) * g * g
        c = count[idx].to(z.dtype)[:, None]
        step = (m1[idx] / (1 - b1**c)) / ((m2[idx] / (1 - b2**c)).sqrt() + eps)
        z[idx] = z[idx] - lr_rows[idx] * step
    return z, count


def _merge_radius(z: Tensor, tol: float) -> float:
    """Distance under which two states are one point: ``tol * max(median ||z||, 1)``. z: [C, d]."""
    return tol * float(z.norm(dim=1).median().clamp_min(1.0))


def _greedy_unique(z: Tensor, tol: float) -> tuple[Tensor, Tensor]:
    """Greedy leader clustering of rows already sorted by preference (best first).

    z: [C, d]; two rows are the same point when their distance is <= ``tol * max(median ||z||, 1)``.
    Returns (labels [C] into the leaders, leaders [M] row indices).
    """
    c = z.shape[0]
    labels = torch.full((c,), -1, dtype=torch.long, device=z.device)
    leaders = []
    if c == 0:
        return labels, torch.zeros(0, dtype=torch.long, device=z.device)
    radius = _merge_radius(z, tol)
    while True:
        free = (labels < 0).nonzero()[:, 0]
        if free.numel() == 0:
            break
        lead = int(free[0])
        near = (z[free] - z[lead]).norm(dim=1) <= radius
        labels[free[near]] = len(leaders)
        labels[lead] = len(leaders)
        leaders.append(lead)
    return labels, torch.tensor(leaders, dtype=torch.long, device=z.device)


def _check_args(f, z0, tol, max_iter, method, krylov_dim, k, unique_tol, slow_tol, noise, fallback):
    z0 = check_states(z0, "z0")
    check_map(f, z0)
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    for name, value in (("tol", tol), ("unique_tol", unique_tol), ("slow_tol", slow_tol)):
        if value is not None and not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    for name, value in (("max_iter", max_iter), ("krylov_dim", krylov_dim)):
        if value is not None and not (isinstance(value, int) and value >= 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not (isinstance(k, int) and k >= 0):
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
    if not (isinstance(noise, (int, float)) and noise >= 0):
        raise ValueError(f"noise must be a non-negative number, got {noise!r}")
    iters, lr = fallback
    if not (isinstance(iters, int) and iters >= 0) or not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"fallback_iters must be an integer >= 0 and fallback_lr > 0, got {iters!r}, {lr!r}")
    return z0


def find_fixed_points(
    f: BatchedMap,
    z0: Tensor,
    *,
    tol: float | None = None,
    max_iter: int | None = None,
    method: str = "newton",
    krylov_dim: int = 20,
    k: int = 6,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
    unique_tol: float = 1e-3,
    slow_tol: float = 1e-4,
    fallback_iters: int = 200,
    fallback_lr: float = 1e-2,
    batch_size: int | None = None,
    spectrum_method: str = "auto",
    snap: bool = True,
) -> FixedPoints:
    """Find fixed points (and slow points) of ``f`` from the start states ``z0``.

    Args:
        f: batched, row-wise map ``[N, d] -> [N, d]`` (any float dtype, any device; half precisions are solved
            in float32).
        z0: [N, d] start states, typically sampled from trajectories.
        tol: residual tolerance, ``||f(z) - z|| <= tol * max(||z||, 1)``; default 1e-10 in float64, 1e-5 else.
        max_iter: outer iterations (default 50 for ``"newton"``, 5000 for ``"adam"``).
        method: ``"newton"`` (Krylov Levenberg-Marquardt, Adam fallback for stalled starts) or ``"adam"``
            (first-order only, as FixedPointFinder).
        krylov_dim: Arnoldi steps per outer iteration (memory ``N * d * krylov_dim``).
        k: Jacobian eigenvalues per unique point (0: only the spectral radius, by subspace iteration).
        noise: std of Gaussian noise added to z0 (drawn with ``generator``, a CPU generator).
        unique_tol: converged points closer than ``unique_tol * max(median ||z||, 1)`` are one point.
        slow_tol: an unconverged end with ``||J_F^T F|| <= slow_tol * ||F||`` is a slow point.
        fallback_iters, fallback_lr: Adam fallback length and step size (relative to the RMS of each state;
            the step size is also that of ``method="adam"``).
        batch_size: solve the starts in chunks of this many rows (default: all at once).
        spectrum_method: passed to :func:`jacobian_spectrum` as ``method``.
        snap: a start whose iterate comes within the de-duplication radius (``unique_tol``) of a fixed point
            already found from another start stops and ends exactly on that point (much faster when many starts
            share a few points); False polishes every start on its own.

    Returns:
        :class:`FixedPoints`. Starts where ``f`` is not finite are ``kind == NONFINITE``; starts that neither
        converge nor reach a stationary point of ``q`` are ``FAILED``.
    """
    z0 = _check_args(f, z0, tol, max_iter, method, krylov_dim, k, unique_tol, slow_tol, noise,
                     (fallback_iters, fallback_lr))
    n, d = z0.shape
    in_dtype, dtype = z0.dtype, compute_dtype(z0.dtype)
    if tol is None:
        tol = 1e-10 if dtype == torch.float64 else 1e-5
    if max_iter is None:
        max_iter = 50 if method == "newton" else 5000
    batch_size = n if batch_size is None else batch_size
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(snap, bool):
        raise ValueError(f"snap must be True or False, got {snap!r}")

    def fc(x: Tensor) -> Tensor:
        return f(x.to(in_dtype)).to(dtype)

    z = z0.detach().to(dtype)
    if noise > 0:
        z = z + noise * torch.randn(z.shape, generator=generator, dtype=torch.float64).to(z)
    start_ok = _finite(z)
    z = torch.where(start_ok[:, None], z, torch.zeros_like(z))
    anchors = _Anchors(_merge_radius(z, unique_tol), z) if snap else None

    finals, iters = [], []
    for lo in range(0, n, batch_size):
        zb, it = _solve_batch(fc, z[lo : lo + batch_size], tol, max_iter, method, krylov_dim, slow_tol,
                              fallback_iters, fallback_lr, anchors)
        finals.append(zb)
        iters.append(it)
    final, iterations = torch.cat(finals), torch.cat(iters)
    F = _residual(fc, final)
    finite = _finite(F) & start_ok
    res = torch.where(finite, F.norm(dim=1), torch.full((n,), math.inf, dtype=dtype, device=z.device))
    converged = finite & (res <= tol * _scale(final))
    kind = torch.full((n,), FAILED, dtype=torch.int8, device=z.device)
    kind[~finite] = NONFINITE
    kind[converged] = FIXED
    rest = (kind == FAILED).nonzero()[:, 0]
    ratio = torch.full((n,), math.inf, dtype=dtype, device=z.device)
    if rest.numel():
        ratio[rest] = _grad_ratio(fc, final[rest], F[rest])
        kind[rest[ratio[rest] <= slow_tol]] = SLOW

    fixed = _unique_fixed(fc, final, res, converged, unique_tol, k, spectrum_method)
    slow_mask = kind == SLOW
    slow, slow_assignment = _unique_slow(final, res, ratio, slow_mask, unique_tol)
    z_u, res_u, eig_u, rho_u, count_u, assignment = fixed
    final = torch.where(start_ok[:, None], final, z0.to(dtype))
    return FixedPoints(
        z=z_u, residual=res_u, rel_residual=res_u / z_u.norm(dim=1).clamp_min(torch.finfo(dtype).tiny),
        eigvals=eig_u, spectral_radius=rho_u, stable=rho_u < 1, count=count_u, assignment=assignment,
        kind=kind, converged=converged, iterations=iterations, final=final, final_residual=res,
        slow=slow, slow_assignment=slow_assignment,
    )


def _solve_batch(fc, z, tol, max_iter, method, krylov_dim, slow_tol, fallback_iters, fallback_lr, anchors):
    """Solve one chunk of starts z [n, d]; returns (final z [n, d], iterations [n])."""
    if method == "adam":
        return _adam_solve(fc, z, tol, max_iter, fallback_lr)
    z, F, iterations, done = _lm_solve(fc, z, tol, max_iter, krylov_dim, slow_tol, anchors)
    retry = (~done & _finite(F)).nonzero()[:, 0]
    if retry.numel() and fallback_iters > 0:
        z_fb, it_fb = _adam_solve(fc, z[retry], tol, fallback_iters, fallback_lr, patience=_FALLBACK_PATIENCE)
        iterations[retry] += it_fb
        # Polish only where the first-order run got below the second-order end; keep whichever end is better.
        res_fb = _residual(fc, z_fb).norm(dim=1)
        better = torch.isfinite(res_fb) & (res_fb < F[retry].norm(dim=1))
        retry, z_fb = retry[better], z_fb[better]
        if retry.numel():
            z_fb, F_fb, it_lm, _ = _lm_solve(fc, z_fb, tol, max_iter, krylov_dim, slow_tol, anchors,
                                             _POLISH_STALL_WINDOW)
            iterations[retry] += it_lm
            improved = _finite(F_fb) & (F_fb.norm(dim=1) < F[retry].norm(dim=1))
            z[retry[improved]] = z_fb[improved]
    return z, iterations


def _unique_fixed(fc, final, res, converged, unique_tol, k, spectrum_method):
    """De-duplicate converged ends, sort (stable first, then residual) and compute their spectra."""
    n, d = final.shape
    idx = converged.nonzero()[:, 0]
    idx = idx[torch.argsort(res[idx], stable=True)]
    labels, leaders = _greedy_unique(final[idx], unique_tol)
    z_u, res_u = final[idx][leaders], res[idx][leaders]
    m = z_u.shape[0]
    if k > 0 and m > 0:
        eig = jacobian_spectrum(fc, z_u, min(k, d), method=spectrum_method)
        rho = eig.abs()[:, 0].to(res.dtype)
    else:
        eig = torch.zeros(m, min(k, d), dtype=torch.complex128, device=final.device)
        rho = spectral_radius(fc, z_u) if m > 0 else res_u.clone()
    order = torch.as_tensor(np.lexsort((_numpy(res_u), _numpy(~(rho < 1)))), device=final.device,
                            dtype=torch.long)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(m, device=final.device)
    assignment = torch.full((n,), -1, dtype=torch.long, device=final.device)
    assignment[idx] = rank[labels]
    count = torch.bincount(assignment[assignment >= 0], minlength=m)
    return z_u[order], res_u[order], eig[order], rho[order], count, assignment


def _unique_slow(final, res, ratio, mask, unique_tol):
    idx = mask.nonzero()[:, 0]
    idx = idx[torch.argsort(res[idx], stable=True)]
    labels, leaders = _greedy_unique(final[idx], unique_tol)
    assignment = torch.full((final.shape[0],), -1, dtype=torch.long, device=final.device)
    assignment[idx] = labels
    count = torch.bincount(labels, minlength=leaders.numel())
    slow = SlowPoints(z=final[idx][leaders], residual=res[idx][leaders], grad_ratio=ratio[idx][leaders],
                      count=count)
    return slow, assignment
