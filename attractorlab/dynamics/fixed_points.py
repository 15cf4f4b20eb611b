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

A solve below float64 stops at the precision of its dtype (a float32 end can sit far from the exact point where
``J_F`` is ill-conditioned, and two ends of one point can lie farther apart than the de-duplication radius). With
``refine`` (the default) the converged ends are polished afterwards: in float64 when ``f`` evaluates float64
inputs in float64 (:attr:`FixedPoints.refined_dtype` says so; :attr:`FixedPoints.z_refined` holds the float64
points), else in the working dtype until the iteration stalls; they are then de-duplicated with a radius that
follows the precision each end reached, so that copies of one point merge and distinct points stay apart.

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
from .newton import Anchors, all_finite, krylov_model, lm_solve, lm_subproblem, residual_norm, state_scale

FIXED, SLOW, FAILED, NONFINITE = 0, 1, 2, 3
KIND_NAMES = ("fixed", "slow", "failed", "nonfinite")
"""Codes of :attr:`FixedPoints.kind` (per start): index into this tuple."""

_METHODS = ("newton", "adam")
_REFINE_TOL64 = 1e-12  # relative residual a float64 refinement aims at
_REFINE_EPS = 8.0  # a working-dtype polish aims at this many machine epsilons (and stops when it stalls)
_REFINE_ITERS, _REFINE_STALL = 20, 3
_PRECISION_MERGE = 4.0  # ends closer than this many times their summed precision are one point
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
    Refinement (see ``refine`` of :func:`find_fixed_points`):
        z_refined: [M, d] the polished points in ``refined_dtype`` (``z`` is their rounding to the working dtype);
        refined_residual: [M] float64 ``||f(z_refined) - z_refined||`` evaluated in ``refined_dtype``;
        refined_dtype: ``"float64"`` when the points were refined (or solved) in float64, else the working dtype
        (e.g. ``"float32"``: ``f`` does not evaluate float64 inputs in float64).
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
    z_refined: Tensor | None = None
    refined_residual: Tensor | None = None
    refined_dtype: str = ""

    def __len__(self) -> int:
        return int(self.z.shape[0])

    def to_arrays(self) -> dict[str, np.ndarray]:
        """All fields as numpy arrays (slow points prefixed ``slow_``), ready for HDF5."""
        out = {name: to_numpy(getattr(self, name)) for name in (
            "z", "residual", "rel_residual", "eigvals", "spectral_radius", "stable", "count", "assignment",
            "kind", "converged", "iterations", "final", "final_residual", "slow_assignment")}
        for name in ("z", "residual", "grad_ratio", "count"):
            out[f"slow_{name}"] = to_numpy(getattr(self.slow, name))
        if self.z_refined is not None and self.refined_residual is not None:
            out["z_refined"], out["refined_residual"] = to_numpy(self.z_refined), to_numpy(self.refined_residual)
            out["refined_dtype"] = np.asarray(self.refined_dtype, dtype="S")
        return out


def to_numpy(t: Tensor) -> np.ndarray:
    """A tensor on any device as a NumPy array (detached, on the CPU)."""
    return t.detach().cpu().numpy()


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
        finite = all_finite(F) & all_finite(g)
        res = F.norm(dim=1)
        moving = finite & (res > tol * state_scale(z[idx]))
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


def greedy_unique(z: Tensor, tol: float, precision: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Greedy leader clustering of rows already sorted by preference (best first).

    z: [C, d]; two rows are the same point when their distance is <= ``tol * max(median ||z||, 1)``, or, with
    ``precision [C]`` (an estimate of each row's distance to the exact point), <= ``4 * (precision_i +
    precision_j)`` when that is larger. Leaders are farther apart than their pair's radius: no point twice.
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
        near_radius = radius
        if precision is not None:
            near_radius = torch.clamp(_PRECISION_MERGE * (precision[free] + precision[lead]), min=radius)
        near = (z[free] - z[lead]).norm(dim=1) <= near_radius
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
    refine: bool = True,
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
        refine: after solving in a working dtype below float64, polish the converged ends to the precision the
            arithmetic allows: in float64 when ``f`` evaluates float64 inputs in float64 (tried on a few rows;
            ``refined_dtype == "float64"``), else by Levenberg-Marquardt in the working dtype until it stalls.
            Ends are then de-duplicated with a radius that follows the achieved precision: two ends are one point
            when closer than ``max(unique_tol * max(median ||z||, 1), 4 * (delta_i + delta_j))``, ``delta`` the
            length of the Newton correction left at an end that did not reach the refinement tolerance (0 for ends
            that did). float64 solves need no refinement; False keeps the working-dtype ends as they are.

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
    for name, flag in (("snap", snap), ("refine", refine)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be True or False, got {flag!r}")

    def fc(x: Tensor) -> Tensor:
        return f(x.to(in_dtype)).to(dtype)

    z = z0.detach().to(dtype)
    if noise > 0:
        z = z + noise * torch.randn(z.shape, generator=generator, dtype=torch.float64).to(z)
    start_ok = all_finite(z)
    z = torch.where(start_ok[:, None], z, torch.zeros_like(z))
    anchors = Anchors(_merge_radius(z, unique_tol), z) if snap else None

    finals, iters = [], []
    for lo in range(0, n, batch_size):
        zb, it = _solve_batch(fc, z[lo : lo + batch_size], tol, max_iter, method, krylov_dim, slow_tol,
                              fallback_iters, fallback_lr, anchors)
        finals.append(zb)
        iters.append(it)
    final, iterations = torch.cat(finals), torch.cat(iters)
    F = residual_norm(fc, final)
    finite = all_finite(F) & start_ok
    res = torch.where(finite, F.norm(dim=1), torch.full((n,), math.inf, dtype=dtype, device=z.device))
    converged = finite & (res <= tol * state_scale(final))
    kind = torch.full((n,), FAILED, dtype=torch.int8, device=z.device)
    kind[~finite] = NONFINITE
    kind[converged] = FIXED
    rest = (kind == FAILED).nonzero()[:, 0]
    ratio = torch.full((n,), math.inf, dtype=dtype, device=z.device)
    if rest.numel():
        ratio[rest] = _grad_ratio(fc, final[rest], F[rest])
        kind[rest[ratio[rest] <= slow_tol]] = SLOW

    idx = converged.nonzero()[:, 0]
    refined = _refine(f, fc, final[idx], res[idx], unique_tol, krylov_dim, slow_tol, refine)
    fixed = _unique_fixed(refined, idx, n, unique_tol, k, spectrum_method)
    slow, slow_assignment = _unique_slow(final, res, ratio, kind == SLOW, unique_tol)
    z_ref, res_ref, eig_u, rho_u, count_u, assignment = fixed
    z_u = z_ref.to(dtype)
    res_u = res_ref.to(dtype) if refined.map is fc else residual_norm(fc, z_u).norm(dim=1)
    final = torch.where(start_ok[:, None], final, z0.to(dtype))
    return FixedPoints(
        z=z_u, residual=res_u, rel_residual=res_u / z_u.norm(dim=1).clamp_min(torch.finfo(dtype).tiny),
        eigvals=eig_u, spectral_radius=rho_u.to(dtype), stable=rho_u < 1, count=count_u, assignment=assignment,
        kind=kind, converged=converged, iterations=iterations, final=final, final_residual=res,
        slow=slow, slow_assignment=slow_assignment, z_refined=z_ref, refined_residual=res_ref.double(),
        refined_dtype=str(z_ref.dtype).removeprefix("torch."),
    )


def _solve_batch(fc, z, tol, max_iter, method, krylov_dim, slow_tol, fallback_iters, fallback_lr, anchors):
    """Solve one chunk of starts z [n, d]; returns (final z [n, d], iterations [n])."""
    if method == "adam":
        return _adam_solve(fc, z, tol, max_iter, fallback_lr)
    z, F, iterations, done = lm_solve(fc, z, tol, max_iter, krylov_dim, slow_tol, anchors)
    retry = (~done & all_finite(F)).nonzero()[:, 0]
    if retry.numel() and fallback_iters > 0:
        z_fb, it_fb = _adam_solve(fc, z[retry], tol, fallback_iters, fallback_lr, patience=_FALLBACK_PATIENCE)
        iterations[retry] += it_fb
        # Polish only where the first-order run got below the second-order end; keep whichever end is better.
        res_fb = residual_norm(fc, z_fb).norm(dim=1)
        better = torch.isfinite(res_fb) & (res_fb < F[retry].norm(dim=1))
        retry, z_fb = retry[better], z_fb[better]
        if retry.numel():
            z_fb, F_fb, it_lm, _ = lm_solve(fc, z_fb, tol, max_iter, krylov_dim, slow_tol, anchors,
                                             _POLISH_STALL_WINDOW)
            iterations[retry] += it_lm
            improved = all_finite(F_fb) & (F_fb.norm(dim=1) < F[retry].norm(dim=1))
            z[retry[improved]] = z_fb[improved]
    return z, iterations


@dataclass
class _Refined:
    """Converged ends after refinement: z [C, d] and residual [C] in the refinement dtype, precision [C] float64
    (length of the Newton correction left, 0 where the refinement tolerance was met) and the map in that dtype."""

    z: Tensor
    residual: Tensor
    precision: Tensor
    map: BatchedMap


def _accepts_float64(f: BatchedMap, z: Tensor) -> bool:
    """Whether ``f`` evaluates float64 inputs in float64, tried on the first rows of z [C, d]: it must return a
    float64 tensor of the right shape whose finite values are not all float32 numbers (a map that casts to float32
    inside would return those). Errors such as a dtype mismatch with float32 weights mean no."""
    probe = z[:4].double()
    try:
        with torch.no_grad():
            out = f(probe)
    except (RuntimeError, TypeError):
        return False
    if not isinstance(out, torch.Tensor) or out.dtype != torch.float64 or out.shape != probe.shape:
        return False
    values = out[torch.isfinite(out)]
    return values.numel() > 0 and not bool((values == values.float().double()).all())


def _newton_step_norm(fr: BatchedMap, z: Tensor, F: Tensor, krylov_dim: int) -> Tensor:
    """``||s||`` of the (slightly damped) Newton correction ``J_F s = -F`` at rows z [n, d] with residuals F, from
    one Krylov model: an estimate of each row's distance to the exact root (float64 [n]; 0 where not finite)."""
    lin = Linearization(fr, z)
    g = lin.rmatvec(F) - F
    beta = F.norm(dim=1).double()
    eta = torch.full_like(beta, 1e-12)
    _, _, hess, bad = krylov_model(lin, F, g, min(krylov_dim, z.shape[1]), eta)
    scale_sq = (hess**2).sum(dim=1).amax(dim=1).clamp_min(1.0)
    y, _ = lm_subproblem(hess, beta, 1e-12 * scale_sq)
    step = y.norm(dim=1)
    return torch.where(torch.isfinite(step) & ~bad, step, torch.zeros_like(step))


def _refine(f: BatchedMap, fc: BatchedMap, z: Tensor, res: Tensor, unique_tol: float, krylov_dim: int,
            slow_tol: float, enabled: bool) -> _Refined:
    """Polish converged ends z [C, d] (working dtype, residuals res [C]) to the precision the arithmetic allows:
    in float64 when ``f`` evaluates float64 inputs, else in the working dtype. Ends within the de-duplication
    radius of a better one are one point already: only those leaders are polished (with twice the Krylov
    dimension, the last digits converge only linearly otherwise), and each end takes its leader's polished point. A
    polished point is kept only where its residual did not grow. Float64 ends (or ``enabled=False``) are returned
    as they are."""
    zeros = torch.zeros(z.shape[0], dtype=torch.float64, device=z.device)
    if not enabled or z.dtype == torch.float64 or z.shape[0] == 0:
        return _Refined(z, res, zeros, fc)
    if _accepts_float64(f, z):
        fr, zr, tol = f, z.double(), _REFINE_TOL64
    else:
        fr, zr, tol = fc, z, _REFINE_EPS * torch.finfo(z.dtype).eps
    order = torch.argsort(res, stable=True)
    labels, leaders = greedy_unique(zr[order], unique_tol)
    lead = order[leaders]
    kd = min(2 * krylov_dim, z.shape[1])
    anchors = Anchors(_merge_radius(zr, unique_tol), zr)
    z_new, F_new, _, _ = lm_solve(fr, zr[lead], tol, _REFINE_ITERS, kd, slow_tol, anchors, _REFINE_STALL)
    F_old = residual_norm(fr, zr[lead])
    better = all_finite(F_new) & (F_new.norm(dim=1) <= F_old.norm(dim=1))
    z_lead = torch.where(better[:, None], z_new, zr[lead])
    F_lead = torch.where(better[:, None], F_new, F_old)
    res_lead = F_lead.norm(dim=1)
    precision = torch.zeros_like(res_lead, dtype=torch.float64)
    loose = (~(res_lead <= tol * state_scale(z_lead))).nonzero()[:, 0]
    if loose.numel():
        precision[loose] = _newton_step_norm(fr, z_lead[loose], F_lead[loose], kd)
    of_end = torch.empty_like(labels)
    of_end[order] = labels
    return _Refined(z_lead[of_end], res_lead[of_end], precision[of_end], fr)


def _unique_fixed(refined: _Refined, idx: Tensor, n: int, unique_tol: float, k: int, spectrum_method: str):
    """De-duplicate the refined converged ends (of starts ``idx [C]``), sort them (stable first, then residual)
    and compute their spectra with the map of the refinement dtype. Returns (z [M, d], residual [M], eigvals
    [M, k], spectral radius [M], count [M], assignment [N])."""
    device, d = refined.z.device, refined.z.shape[1]
    order_res = torch.argsort(refined.residual, stable=True)
    idx, z_c, res_c = idx[order_res], refined.z[order_res], refined.residual[order_res]
    labels, leaders = greedy_unique(z_c, unique_tol, refined.precision[order_res])
    z_u, res_u = z_c[leaders], res_c[leaders]
    m = z_u.shape[0]
    if k > 0 and m > 0:
        eig = jacobian_spectrum(refined.map, z_u, min(k, d), method=spectrum_method)
        rho = eig.abs()[:, 0].to(res_u.dtype)
    else:
        eig = torch.zeros(m, min(k, d), dtype=torch.complex128, device=device)
        rho = spectral_radius(refined.map, z_u).to(res_u.dtype) if m > 0 else res_u.clone()
    order = torch.as_tensor(np.lexsort((to_numpy(res_u), to_numpy(~(rho < 1)))), device=device, dtype=torch.long)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(m, device=device)
    assignment = torch.full((n,), -1, dtype=torch.long, device=device)
    assignment[idx] = rank[labels]
    count = torch.bincount(assignment[assignment >= 0], minlength=m)
    return z_u[order], res_u[order], eig[order], rho[order], count, assignment


def _unique_slow(final, res, ratio, mask, unique_tol):
    idx = mask.nonzero()[:, 0]
    idx = idx[torch.argsort(res[idx], stable=True)]
    labels, leaders = greedy_unique(final[idx], unique_tol)
    assignment = torch.full((final.shape[0],), -1, dtype=torch.long, device=final.device)
    assignment[idx] = labels
    count = torch.bincount(labels, minlength=leaders.numel())
    slow = SlowPoints(z=final[idx][leaders], residual=res[idx][leaders], grad_ratio=ratio[idx][leaders],
                      count=count)
    return slow, assignment
