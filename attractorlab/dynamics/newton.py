"""The Krylov Levenberg-Marquardt core of :func:`~attractorlab.dynamics.fixed_points.find_fixed_points`.

Solves ``F(z) = f(z) - z = 0`` from the rows of ``z [n, d]`` with matrix-free Jacobian products (see the
docstring of :mod:`attractorlab.dynamics.fixed_points` for the method). Private to ``dynamics``.
"""

from __future__ import annotations

import math

import torch

from .jacobian import BatchedMap, Linearization, Tensor

_LAMBDA_INIT, _LAMBDA_MIN, _LAMBDA_MAX = 1e-6, 1e-16, 1e10
_ACCEPT, _GOOD, _BAD = 1e-4, 0.75, 0.25
_MAX_TRIALS = 8
_ETA_MAX = 1e-2
_CHECK_EVERY_SMALL, _LARGE_STATE = 10, 4096
_STALL_WINDOW, _STALL_FACTOR = 10, 0.5

def state_scale(z: Tensor) -> Tensor:
    """Per-row tolerance scale ``max(||z||, 1)``. z: [N, d] -> [N]."""
    return z.norm(dim=1).clamp_min(1.0)


def residual_norm(fc: BatchedMap, z: Tensor) -> Tensor:
    """``F(z) = f(z) - z`` with non-finite rows left as they are. z: [N, d] -> [N, d]."""
    with torch.no_grad():
        return fc(z) - z


def all_finite(x: Tensor) -> Tensor:
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


def krylov_model(lin: Linearization, F: Tensor, g: Tensor, m: int, eta: Tensor):
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


def lm_subproblem(hess: Tensor, beta: Tensor, mu: Tensor) -> tuple[Tensor, Tensor]:
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


class Anchors:
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


def lm_solve(fc: BatchedMap, z: Tensor, tol: float, max_iter: int, krylov_dim: int, slow_tol: float,
              anchors: Anchors | None = None, stall_window: int = _STALL_WINDOW):
    """Krylov Levenberg-Marquardt on ``F = f(z) - z`` from the rows of z [n, d]; with ``anchors``, converged rows
    are added to them and active rows that come within their radius stop on the nearest one. A row stops when
    its residual has not halved over ``stall_window`` iterations.

    Returns (z [n, d], F [n, d], iterations [n], done [n] bool: converged or stationary).
    """
    n, d = z.shape
    z = z.clone()
    F = residual_norm(fc, z)
    iters = torch.zeros(n, dtype=torch.long, device=z.device)
    lam = torch.full((n,), _LAMBDA_INIT, dtype=torch.float64, device=z.device)
    active = all_finite(F) & (F.norm(dim=1) > tol * state_scale(z))
    stationary = torch.zeros(n, dtype=torch.bool, device=z.device)
    history = [F.norm(dim=1)]
    double_backward = None
    if anchors is not None:
        start_done = all_finite(F) & ~active
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
        eta = (beta_f / state_scale(za).double()).clamp(1e-12, _ETA_MAX)
        basis, w_grad, hess, bad = krylov_model(lin, Fa, g, m, eta)
        double_backward = lin.double_backward
        scale_sq = (hess**2).sum(dim=1).amax(dim=1).clamp_min(1.0)
        accepted = torch.zeros_like(stat_a)
        for _ in range(_MAX_TRIALS):
            trial = ~accepted & ~stat_a & ~bad & (lam_a <= _LAMBDA_MAX)
            if not trial.any():
                break
            t = trial.nonzero()[:, 0]
            y, predicted = lm_subproblem(hess[t], beta_f[t], lam_a[t] * scale_sq[t])
            y = y.to(za.dtype)
            step = torch.bmm(y[:, None, :-1], basis[t])[:, 0] + y[:, -1:] * w_grad[t]
            z_new = za[t] + step
            F_new = residual_norm(fc, z_new)
            new_sq = torch.where(all_finite(F_new), F_new.norm(dim=1).double() ** 2, math.inf)
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
        converged = Fa.norm(dim=1) <= tol * state_scale(za)
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
    done = (F.norm(dim=1) <= tol * state_scale(z)) | stationary
    return z, F, iters, done & all_finite(F)
