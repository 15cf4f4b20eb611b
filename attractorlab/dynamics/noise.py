"""The residual floor of a noisy walk around a stable fixed point: analytic, measured, and read off run files.

With path noise a state at a stable fixed point never comes to rest: the recorded residual
``r_t = ||z_t - z_{t-1}||`` (divided by ``||z_t||`` in run files) settles on a floor set by the noise, not at zero.
Three ways to know that floor:

- :func:`noise_floor` (analytic, from the linearisation). Around a fixed point ``z*`` of the noise-free outer step
  with Jacobian ``J`` (spectral radius < 1), the deviation ``e_t = z_t - z*`` follows ``e_t = J e_{t-1} + xi_t``,
  ``xi_t ~ N(0, Q)`` the noise one outer step accumulates. Assumed: the walk stays where the linearisation holds,
  the noise of different outer steps is independent, the walk is stationary. Then ``e ~ N(0, P)`` with
  ``P = J P J^T + Q`` (a discrete Lyapunov equation) and ``r_t = (J - I) e_{t-1} + xi_t ~ N(0, C)``,
  ``C = (J - I) P (J - I)^T + Q``. For ``J = a I`` and ``Q = sigma^2 I`` (d dimensions) ``C = 2 sigma^2 / (1 + a) I``:
  ``E r^2 = 2 d sigma^2 / (1 + a)``, i.e. ``r ~ sqrt(2 d) sigma`` for a strongly contracting map (``a = 0``),
  ``sqrt(d) sigma`` for a slow one (``a -> 1``), and growing without bound for ``a -> -1`` (a flip that barely
  contracts). ``||r||^2 = sum_i lambda_i chi^2_1`` (``lambda`` the eigenvalues of C) is matched to ``g chi^2_h``
  (Satterthwaite: same mean and variance), exact when C is isotropic: the mean, median and quantiles of ``r``
  follow from the chi distribution with ``h`` degrees of freedom.
- :func:`measure_noise_floor` (empirical): iterate the noisy map itself from the fixed point and record the
  residuals.
- :func:`floor_from_records` (robust, from a run file alone): a low quantile of the tail residuals of rollouts
  whose answer stopped changing.

The noise of one outer step of an Equilibrium Reasoner: ``H_cycles * (L_cycles + 1)`` updates each add
``noise_scale * eps`` to one of two equal streams; :func:`outer_step_sigma` turns that into the per-coordinate
std of ``xi`` under a simple model of how much of earlier updates' noise each update carries forward.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.linalg import solve_discrete_lyapunov
from scipy.special import gammaln
from scipy.stats import chi2

from ._records import answer_change_steps, as_record_array, record_lengths, tail_windows


@dataclass
class NoiseFloor:
    """Distribution of the per-step residual of a noisy walk around a fixed point.

    mean, median, high, rms: [...] (``[]`` analytic, ``[M]`` measured from M fixed points): ``E r``, the
    median, the ``quantile`` quantile and ``sqrt(E r^2)``, relative to the state norm when ``relative``;
    dof: [...] degrees of freedom ``h`` of the matched chi distribution (analytic; NaN when measured);
    samples: residuals per row behind a measured floor (0 analytic); residuals: [M, samples] the measured
    residuals (None analytic).
    """

    mean: np.ndarray
    median: np.ndarray
    high: np.ndarray
    rms: np.ndarray
    quantile: float
    relative: bool
    dof: np.ndarray
    samples: int = 0
    residuals: np.ndarray | None = None

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in asdict(self).items() if v is not None}


def _check_quantile(quantile: float, name: str = "quantile") -> None:
    if not (isinstance(quantile, (int, float)) and 0 < quantile < 1):
        raise ValueError(f"{name} must be a number in (0, 1), got {quantile!r}")


def outer_step_sigma(noise_scale: float, h_cycles: int, l_cycles: int, *, carry: float = 0.0) -> float:
    """Per-coordinate std of the noise one outer step adds to the full state (both streams, equal size).

    Each of the ``h_cycles * l_cycles`` updates of ``z_L`` and the ``h_cycles`` updates of ``z_H`` adds
    ``noise_scale * eps``; each update multiplies the noise its stream already carries by ``carry`` (a scalar model
    of the update's Jacobian on its own stream; cross-stream injection ignored). ``carry = 0``: only the last
    update of each stream counts, ``sigma = noise_scale`` (e.g. ``1 - lambda`` = 0.05 is close to it);
    ``carry = 1``: noise accumulates, ``sigma^2 = noise_scale^2 * h_cycles * (l_cycles + 1) / 2``.
    """
    if not (isinstance(noise_scale, (int, float)) and noise_scale >= 0):
        raise ValueError(f"noise_scale must be a non-negative number, got {noise_scale!r}")
    for name, value in (("h_cycles", h_cycles), ("l_cycles", l_cycles)):
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not (isinstance(carry, (int, float)) and 0 <= carry <= 1):
        raise ValueError(f"carry must be a number in [0, 1], got {carry!r}")

    def carried(n: int) -> float:
        c2 = carry * carry
        return float(n) if c2 == 1.0 else (1.0 - c2**n) / (1.0 - c2)

    return noise_scale * math.sqrt(0.5 * (carried(h_cycles * l_cycles) + carried(h_cycles)))


def _as_matrix(x, name: str) -> np.ndarray:
    arr = as_record_array(x, name).astype(np.float64)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"{name} must be a square [d, d] matrix, got shape {arr.shape}")
    return arr


def _step_covariances(sigma, d, jacobian, noise_cov) -> tuple[np.ndarray, float, int]:
    """Eigenvalues of C (the residual covariance), ``tr P`` and the dimension d."""
    q = None if noise_cov is None else _as_matrix(noise_cov, "noise_cov")
    scalar_j = jacobian is None or np.ndim(as_record_array(jacobian, "jacobian", 0)) == 0
    if q is None:
        if not (isinstance(sigma, (int, float)) and sigma >= 0 and math.isfinite(sigma)):
            raise ValueError(f"sigma must be a non-negative finite number, got {sigma!r}")
        if scalar_j and not (isinstance(d, int) and d >= 1):
            raise ValueError(f"d must be a positive integer with a scalar (or no) jacobian, got {d!r}")
    if scalar_j:
        a = 0.0 if jacobian is None else float(as_record_array(jacobian, "jacobian", 0))
        if not abs(a) < 1:
            raise ValueError(f"the jacobian must contract (|a| < 1) for a stationary floor, got a = {a}")
        if q is None:
            return np.full(d, 2.0 * sigma**2 / (1.0 + a)), d * sigma**2 / (1.0 - a * a), d
        return np.linalg.eigvalsh(2.0 * q / (1.0 + a)), float(np.trace(q)) / (1.0 - a * a), q.shape[0]
    j = _as_matrix(jacobian, "jacobian")
    dim = j.shape[0]
    if q is None:
        q = sigma**2 * np.eye(dim)
    if q.shape != j.shape:
        raise ValueError(f"noise_cov must have shape {j.shape} like the jacobian, got {q.shape}")
    rho = float(np.abs(np.linalg.eigvals(j)).max())
    if not rho < 1:
        raise ValueError(f"the jacobian must contract (spectral radius < 1) for a stationary floor, got {rho:.4g}")
    p = solve_discrete_lyapunov(j, q)
    jm = j - np.eye(dim)
    c = jm @ p @ jm.T + q
    return np.clip(np.linalg.eigvalsh(0.5 * (c + c.T)), 0.0, None), float(np.trace(p)), dim


def noise_floor(
    sigma: float | None = None,
    d: int | None = None,
    *,
    jacobian=None,
    noise_cov=None,
    z_norm: float | None = None,
    quantile: float = 0.99,
) -> NoiseFloor:
    """Analytic residual floor of the linearised noisy walk ``e_t = J e_{t-1} + xi_t`` (see the module docstring).

    Args:
        sigma: per-coordinate std of the noise of one step (``Q = sigma^2 I``), e.g. :func:`outer_step_sigma`.
        d: state dimension (needed when neither ``jacobian`` nor ``noise_cov`` is a matrix).
        jacobian: the step's Jacobian at the fixed point: None (``J = 0``, a strongly contracting map), a scalar
            ``a`` (``J = a I``) or a [d, d] matrix; it must contract.
        noise_cov: [d, d] covariance Q of one step's noise (instead of ``sigma``).
        z_norm: ``||z*||``; when given every value is relative, divided by ``sqrt(||z*||^2 + tr P)`` (the rms
            state norm), as the run files' residual ``||z_t - z_{t-1}|| / ||z_t||``.
        quantile: the level of :attr:`NoiseFloor.high`.

    Returns:
        :class:`NoiseFloor` with scalar fields.
    """
    _check_quantile(quantile)
    lam, trace_p, _ = _step_covariances(sigma, d, jacobian, noise_cov)
    tr_c, tr_c2 = float(lam.sum()), float((lam**2).sum())
    if tr_c <= 0:
        zero = np.asarray(0.0)
        return NoiseFloor(zero, zero, zero, zero, quantile, z_norm is not None, np.asarray(np.nan))
    h = tr_c**2 / tr_c2
    g = tr_c2 / tr_c
    mean = math.sqrt(2.0 * g) * math.exp(gammaln((h + 1.0) / 2.0) - gammaln(h / 2.0))
    median, high = (math.sqrt(g * chi2.ppf(p, h)) for p in (0.5, quantile))
    scale = 1.0
    if z_norm is not None:
        if not (isinstance(z_norm, (int, float)) and z_norm >= 0 and math.isfinite(z_norm)):
            raise ValueError(f"z_norm must be a non-negative finite number, got {z_norm!r}")
        scale = math.sqrt(z_norm**2 + trace_p)
    values = (np.asarray(v / scale) for v in (mean, median, high, math.sqrt(tr_c)))
    return NoiseFloor(*values, quantile=quantile, relative=z_norm is not None, dof=np.asarray(h))


def measure_noise_floor(
    f_noisy: Callable[[torch.Tensor], torch.Tensor],
    z_star: torch.Tensor,
    steps: int,
    *,
    burn_in: int = 20,
    quantile: float = 0.99,
    relative: bool = True,
) -> NoiseFloor:
    """Empirical residual floor: iterate the noisy map ``f_noisy`` (which draws its own noise) from each fixed
    point ``z_star [M, d]`` for ``burn_in`` steps, then record ``steps`` residuals per row.

    The residual is ``||z_t - z_{t-1}||``, divided by ``||z_t||`` when ``relative`` (as in run files). Returns a
    :class:`NoiseFloor` with fields ``[M]`` (mean, median, ``quantile`` quantile, rms) and the residuals
    ``[M, steps]``.
    """
    if not callable(f_noisy):
        raise ValueError(f"f_noisy must be a callable batched map [M, d] -> [M, d], got {type(f_noisy).__name__}")
    if not (isinstance(z_star, torch.Tensor) and z_star.ndim == 2 and z_star.is_floating_point()):
        raise ValueError(f"z_star must be a floating-point tensor [M, d], got {getattr(z_star, 'shape', z_star)!r}")
    for name, value, low in (("steps", steps, 1), ("burn_in", burn_in, 0)):
        if not (isinstance(value, int) and value >= low):
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    _check_quantile(quantile)
    z = z_star.detach().clone()
    out = torch.empty(z.shape[0], steps, dtype=torch.float64, device=z.device)
    with torch.no_grad():
        for t in range(burn_in + steps):
            new = f_noisy(z)
            if t >= burn_in:
                r = (new - z).double().norm(dim=1)
                out[:, t - burn_in] = r / new.double().norm(dim=1).clamp_min(1e-300) if relative else r
            z = new
    res = out.cpu().numpy()
    median, high = np.quantile(res, [0.5, quantile], axis=1)
    return NoiseFloor(mean=res.mean(axis=1), median=median, high=high, rms=np.sqrt((res**2).mean(axis=1)),
                      quantile=quantile, relative=relative, dof=np.full(res.shape[0], np.nan), samples=steps,
                      residuals=res)


@dataclass
class RecordedFloor:
    """The noise floor read off recorded residuals.

    floor: the ``quantile`` quantile of ``row_median`` over the rows used (NaN when none, ``reason`` says why);
    window: tail length; n_rows: rows used; row_median: [...] median residual of each row's last ``window``
    recorded steps; used: [...] rows whose answer did not change over that window (all rows without answers).
    """

    floor: float
    quantile: float
    window: int
    n_rows: int
    row_median: np.ndarray
    used: np.ndarray
    reason: str = ""

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in asdict(self).items()}


def floor_from_records(
    residual,
    *,
    pred=None,
    changed=None,
    steps=None,
    window: int = 8,
    quantile: float = 0.25,
) -> RecordedFloor:
    """Estimate the noise floor from recorded residuals alone: a low quantile, over rollouts whose read-out
    answer stopped changing, of the median residual of their last ``window`` recorded steps.

    Rows that settled on a fixed point sit at the floor; rows whose answer froze while the state still moves sit
    above it, hence a low quantile rather than the median. residual: [..., T] (e.g. ``[N, B, T]``); pred
    [..., T, L] or changed [..., T] (answer-change flags) select the rows, neither: all rows; steps: [...].
    Use the result as ``classify_endings(..., floor=result.floor)``.
    """
    res = as_record_array(residual, "residual").astype(np.float64)
    shape = res.shape
    if not (isinstance(window, int) and window >= 1):
        raise ValueError(f"window must be a positive integer, got {window!r}")
    _check_quantile(quantile)
    lengths = record_lengths(steps, shape).reshape(-1)
    width = min(window, shape[-1])
    win, ok = tail_windows(res.reshape(-1, shape[-1]), lengths, width)
    win = np.where(ok & np.isfinite(win), win, np.nan)
    n_ok = np.isfinite(win).sum(axis=1)
    row_median = np.full(win.shape[0], np.nan)
    has = n_ok > 0
    row_median[has] = np.nanmedian(win[has], axis=1)
    used = has.copy()
    if pred is not None or changed is not None:
        flags = answer_change_steps(pred, changed, shape).reshape(-1, shape[-1])
        fwin, fok = tail_windows(flags, lengths, width)
        used &= ~np.where(fok[:, 1:], fwin[:, 1:], False).any(axis=1)
    reason, floor = "", float("nan")
    if used.any():
        floor = float(np.quantile(row_median[used], quantile))
    else:
        reason = "no row with a stable answer and a finite residual over the window"
    return RecordedFloor(floor, quantile, width, int(used.sum()), row_median.reshape(shape[:-1]),
                         used.reshape(shape[:-1]), reason)
