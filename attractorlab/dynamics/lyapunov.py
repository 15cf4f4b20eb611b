"""Lyapunov exponents of a batched map along its own orbits: matrix-free, with QR re-orthonormalisation.

For ``z_{t+1} = f(z_t)`` the ``k`` largest exponents are the average log stretch rates of a ``k``-dimensional
tangent frame carried along the orbit (Benettin et al. 1980): every step the frame ``Q [d, k]`` is pushed forward
by Jacobian-vector products ``J(z_t) Q`` (``torch.func.jvp``; no ``d x d`` Jacobian is formed) and
re-orthonormalised by a QR factorisation, whose ``log |R_jj|`` are the stretch factors of that step. Rows are
independent orbits, all advanced together. Exponents are per application of ``f`` (per outer step for a reasoner),
in natural-log units: ``> 0`` chaos (nearby orbits separate), ``~ 0`` a neutral direction (slow drift, a torus,
a marginal cycle), ``< 0`` contraction onto a fixed point or a stable cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .jacobian import BatchedMap, check_map, check_states, compute_dtype, prepare_forward_ad

REGIMES = ("contracting", "neutral", "chaotic")
"""Names of :func:`classify_exponents` codes 0, 1, 2."""


@dataclass
class LyapunovSpectrum:
    """Top-``k`` Lyapunov exponents of ``N`` orbits.

    exponents: [N, k] sorted decreasing (per step, natural log); stderr: [N, k] standard error from ``blocks``
    batch means of the per-step stretch factors; stretch: [N, steps, k] the per-step ``log |R_jj|`` (their
    running mean shows convergence); final: [N, d] the orbit's last state.
    """

    exponents: Tensor
    stderr: Tensor
    stretch: Tensor
    final: Tensor

    @property
    def largest(self) -> Tensor:
        """[N] the largest exponent."""
        return self.exponents[:, 0]


def _push(f: BatchedMap, z: Tensor, frame: Tensor) -> tuple[Tensor, Tensor]:
    """``f(z)`` and ``J(z) frame`` for ``z [N, d]``, ``frame [N, d, k]``: one JVP over the k stacked copies."""
    n, d, k = frame.shape
    zs = z.repeat(k, 1)  # [k N, d], copy j of every row in block j
    vs = frame.permute(2, 0, 1).reshape(k * n, d)
    out, tangent = torch.func.jvp(f, (zs,), (vs,))
    return out[:n], tangent.reshape(k, n, d).permute(1, 2, 0)


def lyapunov_exponents(f: BatchedMap, z0: Tensor, *, k: int = 1, steps: int = 500, transient: int = 0,
                       blocks: int = 10, generator: torch.Generator | None = None) -> LyapunovSpectrum:
    """The ``k`` largest Lyapunov exponents of the orbits of ``f`` from ``z0 [N, d]``.

    ``transient`` steps are run first (frame aligned, nothing averaged), then ``steps`` steps are averaged;
    ``stderr`` comes from ``blocks`` batch means of those steps. The initial frame is random (``generator``) and
    orthonormal. Half precisions are promoted to float32; for exponents near zero use float64 states.
    """
    z = check_states(z0, "z0")
    check_map(f, z)
    n, d = z.shape
    if not 1 <= k <= d:
        raise ValueError(f"k must be in [1, d={d}], got {k}")
    if steps < 1 or transient < 0 or not 1 <= blocks <= steps:
        raise ValueError(f"need steps >= 1, transient >= 0 and 1 <= blocks <= steps (got {steps}, {transient}, "
                         f"{blocks})")
    dtype = compute_dtype(z.dtype)
    z = z.to(dtype)
    prepare_forward_ad()
    device = generator.device if generator is not None else z.device
    frame = torch.linalg.qr(torch.randn(n, d, k, generator=generator, device=device, dtype=dtype).to(z.device)).Q
    stretch = torch.empty(n, steps, k, dtype=torch.float64, device=z.device)
    with torch.no_grad():
        for t in range(transient + steps):
            z, pushed = _push(f, z, frame)
            frame, r = torch.linalg.qr(pushed)
            if t >= transient:
                stretch[:, t - transient] = torch.log(torch.diagonal(r, dim1=-2, dim2=-1).abs().double())
    exponents = stretch.mean(1)
    means = torch.stack([chunk.mean(1) for chunk in torch.tensor_split(stretch, blocks, dim=1)], 1)  # [N, b, k]
    stderr = means.std(1, unbiased=True) / np.sqrt(blocks) if blocks > 1 else torch.full_like(exponents, np.nan)
    order = torch.argsort(exponents, dim=1, descending=True)  # QR keeps them ordered except for near-ties
    pick = order[:, None, :].expand(-1, steps, -1)
    return LyapunovSpectrum(exponents.gather(1, order), stderr.gather(1, order), stretch.gather(2, pick), z)


def classify_exponents(largest: Tensor | np.ndarray, stderr: Tensor | np.ndarray | None = None,
                       tol: float = 1e-3) -> np.ndarray:
    """``[N]`` codes into :data:`REGIMES` from the largest exponent: ``> tol`` chaotic, ``< -tol`` contracting,
    else neutral. With ``stderr`` the band widens to ``max(tol, 2 stderr)``, so an estimate is called chaotic or
    contracting only when it is clear of zero."""
    lam = np.asarray(largest, dtype=np.float64)
    band = np.full_like(lam, tol) if stderr is None else np.maximum(tol, 2 * np.asarray(stderr, np.float64))
    return np.where(lam > band, 2, np.where(lam < -band, 0, 1)).astype(np.int64)
