"""Jacobian spectra of batched maps, matrix-free.

Every function takes a batched map ``f: [N, d] -> [N, d]`` that acts on each row independently (the Jacobian
of row ``i`` of the output depends only on row ``i`` of the input) and states ``z: [N, d]``. Jacobian-vector
products come from ``torch.func.jvp`` (and ``torch.func.vjp`` for transposed products), so no dense ``d x d``
matrix is ever formed except on the explicit dense path, which is meant for ``d <= DENSE_MAX_DIM``.

- :func:`jacobian_spectrum`: top-k eigenvalues of ``df/dz`` at each point (ARPACK on a ``LinearOperator``
  whose matvec is a Jacobian-vector product, or a dense eigendecomposition for small ``d``).
- :func:`top_singular_values`: top-k singular values (transient growth), via ``svds`` with JVP/VJP.
- :func:`spectral_radius`: batched subspace iteration with a Rayleigh-Ritz step; cheap and device-resident,
  exact on complex-conjugate dominant pairs once the block has converged.
- :func:`jacobian_matrix`: the dense Jacobians ``[N, d, d]`` (small ``d`` only).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, LinearOperator, eigs, svds

Tensor = torch.Tensor
BatchedMap = Callable[[Tensor], Tensor]

DENSE_MAX_DIM = 1024
"""``method="auto"`` uses the dense path up to this state dimension and Arnoldi above it."""

_WHICH = ("LM", "LR")
_METHODS = ("auto", "dense", "arnoldi")
_DENSE_CHUNK_ELEMENTS = 1 << 24


@dataclass
class Spectrum:
    """Top-k eigenpairs of the Jacobian at N points.

    eigvals: [N, k] complex128, sorted by ``which`` (decreasing modulus for ``"LM"``).
    eigvecs: [N, d, k] complex128 right eigenvectors (unit norm), column ``j`` belongs to ``eigvals[:, j]``.
    """

    eigvals: Tensor
    eigvecs: Tensor


def check_states(z: Tensor, name: str = "z") -> Tensor:
    """Validate a batch of states ``[N, d]`` (floating point, N >= 1, d >= 1) and return it."""
    if not isinstance(z, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
    if z.ndim != 2 or z.shape[0] < 1 or z.shape[1] < 1:
        raise ValueError(f"{name} must have shape [N, d] with N, d >= 1, got {tuple(z.shape)}")
    if not z.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {z.dtype}")
    return z


def check_map(f: BatchedMap, z: Tensor) -> None:
    """Raise ValueError unless ``f`` is callable and maps the first row of ``z [N, d]`` to a [1, d] tensor."""
    if not callable(f):
        raise ValueError(f"f must be a callable batched map [N, d] -> [N, d], got {type(f).__name__}")
    with torch.no_grad():
        out = f(z[:1])
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, z.shape[1]):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        d = z.shape[1]
        raise ValueError(f"f must map [N, {d}] to [N, {d}]; for [1, {d}] it returned {shape}")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype used for linear algebra on states of ``dtype``: half precisions are promoted to float32."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


_forward_ad_ready = False


def prepare_forward_ad() -> None:
    """Load torch's forward-AD decompositions once; torch 2.13 emits a DeprecationWarning about its own
    internal use of ``torch.jit.script`` when doing so, which says nothing about this code."""
    global _forward_ad_ready
    if not _forward_ad_ready:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*torch.jit.script.* is deprecated", DeprecationWarning)
            x = torch.zeros(1)
            torch.func.jvp(torch.sin, (x,), (x,))
        _forward_ad_ready = True


def jvp(f: BatchedMap, z: Tensor, v: Tensor) -> Tensor:
    """Row-wise Jacobian-vector products ``J(z_i) v_i``. z, v: [N, d] -> [N, d] (dtype of v)."""
    prepare_forward_ad()
    return torch.func.jvp(f, (z,), (v.to(z.dtype),))[1].to(v.dtype)


class Linearization:
    """The Jacobian of a row-wise map at fixed states ``z [N, d]``, cached for repeated products.

    ``rmatvec`` is a cached ``torch.func.vjp``. ``matvec`` differentiates that VJP once more (``J v`` is the
    gradient of ``<J^T u, v>`` with respect to ``u``), which reuses the recorded graph and costs about one
    forward pass per product instead of the three of a fresh ``torch.func.jvp``. With ``double_backward=None``
    the first product is checked against ``torch.func.jvp`` and maps without double-backward support (or
    that disagree) fall back to fresh JVPs; the outcome is kept in :attr:`double_backward` so that later
    linearisations of the same map can skip the check. ``value`` is ``f(z)``.
    """

    def __init__(self, f: BatchedMap, z: Tensor, double_backward: bool | None = None):
        self._f, self._z = f, z
        value, self._vjp = torch.func.vjp(f, z)
        self.value = value.detach()
        self.double_backward = double_backward
        self._jvp = None

    def rmatvec(self, u: Tensor) -> Tensor:
        """``J^T u`` per row. u: [N, d] -> [N, d]."""
        return self._vjp(u.to(self.value.dtype))[0].detach().to(u.dtype)

    def matvec(self, v: Tensor) -> Tensor:
        """``J v`` per row. v: [N, d] -> [N, d]."""
        if self.double_backward is False:
            return jvp(self._f, self._z, v)
        if self._jvp is None:
            try:
                _, self._jvp = torch.func.vjp(self._vjp, torch.zeros_like(self.value))
                cached = self._cached(v)
            except (RuntimeError, NotImplementedError):
                self.double_backward = False
                return jvp(self._f, self._z, v)
            if self.double_backward is None:
                try:
                    exact = jvp(self._f, self._z, v)
                except (RuntimeError, NotImplementedError):  # no forward-mode AD: trust double backward
                    self.double_backward = True
                    return cached
                tol = 1e3 * torch.finfo(exact.dtype).eps * (exact.abs().max() + 1)
                self.double_backward = bool(((cached - exact).abs() <= tol).all())
                return exact
            return cached
        return self._cached(v)

    def _cached(self, v: Tensor) -> Tensor:
        return self._jvp((v.to(self.value.dtype),))[0].detach().to(v.dtype)


def _check_k(k: int, d: int) -> int:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return min(int(k), d)


def _check_method(method: str, d: int, k: int) -> str:
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if method == "auto":
        return "dense" if d <= DENSE_MAX_DIM else "arnoldi"
    if method == "arnoldi" and k >= d - 1:
        return "dense"
    return method


def _sort_order(vals: np.ndarray, which: str) -> np.ndarray:
    """Indices sorting eigenvalues ``vals [n]`` by ``which``; conjugate pairs: positive imaginary first."""
    primary = -np.abs(vals) if which == "LM" else -vals.real
    return np.lexsort((-vals.imag, primary))


def _finite_rows(f: BatchedMap, z: Tensor) -> Tensor:
    with torch.no_grad():
        return torch.isfinite(f(z)).all(dim=1) & torch.isfinite(z).all(dim=1)


def jacobian_matrix(f: BatchedMap, z: Tensor) -> Tensor:
    """Dense Jacobians ``J[n, i, j] = d f_i / d z_j`` at each point. z: [N, d] -> [N, d, d].

    Built from JVPs with identity tangents on a row-expanded batch of ``N * d`` states (chunked), so it costs
    d forward-mode passes per point. Only for small d.
    """
    z = check_states(z)
    n, d = z.shape
    rows_per_chunk = max(1, _DENSE_CHUNK_ELEMENTS // (d * d))
    eye = torch.eye(d, dtype=z.dtype, device=z.device)
    blocks = []
    for start in range(0, n, rows_per_chunk):
        zc = z[start : start + rows_per_chunk]
        m = zc.shape[0]
        cols = jvp(f, zc.repeat_interleave(d, dim=0), eye.repeat(m, 1))
        blocks.append(cols.reshape(m, d, d).transpose(1, 2))
    return torch.cat(blocks, dim=0)


def _dense_spectrum(f: BatchedMap, z: Tensor, k: int, which: str, vectors: bool):
    jac = jacobian_matrix(f, z).detach().to("cpu", torch.float64).numpy()
    finite = _finite_rows(f, z).cpu().numpy()
    n = jac.shape[0]
    vals_out = np.full((n, k), np.nan + 0j)
    vecs_out = np.full((n, jac.shape[1], k), np.nan + 0j) if vectors else None
    for i in range(n):
        if not (finite[i] and np.isfinite(jac[i]).all()):
            continue
        if vectors:
            vals, vecs = np.linalg.eig(jac[i])
        else:
            vals, vecs = np.linalg.eigvals(jac[i]), None
        order = _sort_order(vals, which)[:k]
        vals_out[i] = vals[order]
        if vectors:
            vecs_out[i] = vecs[:, order]
    return vals_out, vecs_out


def _row_operator(f: BatchedMap, zi: Tensor) -> LinearOperator:
    """LinearOperator (float64) for the Jacobian at one state ``zi [1, d]``, with a cached linearisation."""
    d = zi.shape[1]
    lin = Linearization(f, zi)

    def to_torch(x: np.ndarray) -> Tensor:
        return torch.as_tensor(np.ascontiguousarray(x, dtype=np.float64).reshape(1, d)).to(zi)

    def to_numpy(y: Tensor) -> np.ndarray:
        return y.detach().to("cpu", torch.float64).numpy().reshape(d)

    return LinearOperator((d, d), dtype=np.float64, matvec=lambda x: to_numpy(lin.matvec(to_torch(x))),
                          rmatvec=lambda x: to_numpy(lin.rmatvec(to_torch(x))))


def _arnoldi_spectrum(f, z, k, which, vectors, tol, ncv, maxiter, seed):
    n, d = z.shape
    finite = _finite_rows(f, z).cpu().numpy()
    k_arpack = min(k + 1, d - 2)
    ncv = min(d, max(2 * k_arpack + 1, 40) if ncv is None else ncv)
    rng = np.random.default_rng(seed)
    vals_out = np.full((n, k), np.nan + 0j)
    vecs_out = np.full((n, d, k), np.nan + 0j) if vectors else None
    for i in range(n):
        v0 = rng.standard_normal(d)
        if not finite[i]:
            continue
        op = _row_operator(f, z[i : i + 1])
        try:
            res = eigs(op, k=k_arpack, which=which, tol=tol, ncv=ncv, maxiter=maxiter, v0=v0,
                       return_eigenvectors=vectors)
        except ArpackNoConvergence as err:  # keep what converged, the rest stays NaN
            res = (err.eigenvalues, err.eigenvectors) if vectors else err.eigenvalues
        except ArpackError:
            continue
        vals, vecs = res if vectors else (res, None)
        order = _sort_order(vals, which)[:k]
        vals_out[i, : len(order)] = vals[order]
        if vectors:
            vecs_out[i, :, : len(order)] = vecs[:, order]
    return vals_out, vecs_out


def jacobian_spectrum(
    f: BatchedMap,
    z: Tensor,
    k: int = 6,
    *,
    which: str = "LM",
    method: str = "auto",
    return_vectors: bool = False,
    tol: float = 1e-8,
    ncv: int | None = None,
    maxiter: int | None = None,
    seed: int = 0,
) -> Tensor | Spectrum:
    """Top-k eigenvalues of the Jacobian ``df/dz`` at each state.

    Args:
        f: batched map ``[N, d] -> [N, d]``, row-wise.
        z: [N, d] (or [d] for a single point) states at which to linearise.
        k: number of eigenvalues (clipped to d).
        which: ``"LM"`` (largest modulus, the default) or ``"LR"`` (largest real part).
        method: ``"dense"`` (full Jacobian + LAPACK), ``"arnoldi"`` (ARPACK on a ``LinearOperator`` of cached
            Jacobian products, float64 on the numpy side, one point at a time) or ``"auto"`` (dense for
            ``d <= DENSE_MAX_DIM``).
        return_vectors: also return right eigenvectors, as a :class:`Spectrum`.
        tol, ncv, maxiter: ARPACK controls (relative accuracy of Ritz values, Krylov dimension, restarts).
        seed: seeds ARPACK's starting vectors, so results are deterministic.

    Returns:
        complex128 tensor [N, k] (or [k] for a 1-D ``z``) on ``z.device``, sorted by decreasing modulus for
        ``"LM"`` (decreasing real part for ``"LR"``); a conjugate pair lists the positive imaginary part
        first.
        Rows where ``f`` is not finite, and eigenvalues ARPACK did not converge, are NaN. With
        ``return_vectors`` a :class:`Spectrum`.
    """
    single = isinstance(z, torch.Tensor) and z.ndim == 1
    z = check_states(z[None] if single else z).detach()
    check_map(f, z)
    d = z.shape[1]
    if which not in _WHICH:
        raise ValueError(f"which must be one of {_WHICH}, got {which!r}")
    k = _check_k(k, d)
    method = _check_method(method, d, k)
    if method == "dense":
        vals, vecs = _dense_spectrum(f, z, k, which, return_vectors)
    else:
        vals, vecs = _arnoldi_spectrum(f, z, k, which, return_vectors, tol, ncv, maxiter, seed)
    eigvals = torch.as_tensor(vals, dtype=torch.complex128, device=z.device)
    if not return_vectors:
        return eigvals[0] if single else eigvals
    eigvecs = torch.as_tensor(vecs, dtype=torch.complex128, device=z.device)
    return Spectrum(eigvals=eigvals[0], eigvecs=eigvecs[0]) if single else Spectrum(eigvals, eigvecs)


def top_singular_values(
    f: BatchedMap,
    z: Tensor,
    k: int = 6,
    *,
    method: str = "auto",
    tol: float = 1e-8,
    seed: int = 0,
) -> Tensor:
    """Top-k singular values of the Jacobian at each state (transient growth of perturbations).

    z: [N, d]; returns float64 [N, k], decreasing. ``method`` as in :func:`jacobian_spectrum`; the
    matrix-free path runs ``scipy.sparse.linalg.svds`` (ARPACK) with cached ``J v`` and ``J^T u`` products.
    Non-finite rows (and points where ARPACK fails) are NaN.
    """
    z = check_states(z).detach()
    check_map(f, z)
    n, d = z.shape
    k = _check_k(k, d)
    method = _check_method(method, d, k)
    if method == "arnoldi" and k >= d:
        method = "dense"
    out = np.full((n, k), np.nan)
    if method == "dense":
        jac = jacobian_matrix(f, z).detach().to("cpu", torch.float64)
        finite = torch.isfinite(jac).flatten(1).all(dim=1) & _finite_rows(f, z).cpu()
        out[finite.numpy()] = torch.linalg.svdvals(jac[finite])[:, :k].numpy()
    else:
        finite = _finite_rows(f, z).cpu().numpy()
        rng = np.random.default_rng(seed)
        for i in range(n):
            v0 = rng.standard_normal(d)
            if not finite[i]:
                continue
            op = _row_operator(f, z[i : i + 1])
            try:
                s = svds(op, k=k, tol=tol, v0=v0, return_singular_vectors=False, solver="arpack")
            except (ArpackNoConvergence, ArpackError):
                continue
            out[i] = np.sort(s)[::-1]
    return torch.as_tensor(out, dtype=torch.float64, device=z.device)


def spectral_radius(
    f: BatchedMap,
    z: Tensor,
    iters: int = 50,
    *,
    block: int = 4,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Estimate the spectral radius of the Jacobian at each state by batched subspace iteration.

    A block of ``block`` orthonormal vectors per point is pushed through the Jacobian up to ``iters`` times
    (cached Jacobian products on a row-expanded batch ``[N * block, d]``, on the device of ``z``; the iteration
    stops early once every point's Ritz value has settled for 3 steps). Where the largest Ritz value of the
    projected ``block x block`` matrix has settled (relative change < 1e-6 over the last step) it is returned; a
    block of at least 2 resolves a dominant complex-conjugate pair, where plain power iteration oscillates.
    Where it has not (crowded spectra converge like ``(|lambda_{block+1}| / |lambda_1|) ** iters``), the growth
    rate of the leading vector, the geometric mean of ``||J q||`` over the second half of the iterations, is
    returned instead: correct to ``O(1 / iters)``.

    z: [N, d]; returns [N] (real dtype of z); NaN where ``f`` or its Jacobian products are not finite.
    """
    z = check_states(z).detach()
    if not isinstance(iters, int) or iters < 2:
        raise ValueError(f"iters must be an integer >= 2, got {iters!r}")
    if not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive integer, got {block!r}")
    check_map(f, z)
    n, d = z.shape
    p = min(block, d)
    lin = Linearization(f, z.repeat_interleave(p, dim=0))
    start = torch.randn(n, d, p, generator=generator, dtype=torch.float64, device="cpu")
    q = torch.linalg.qr(start.to(device=z.device, dtype=compute_dtype(z.dtype)))[0]
    finite = torch.isfinite(lin.value).reshape(n, -1).all(dim=1)
    ritz = torch.zeros(n, dtype=torch.float64, device=z.device)
    log_growth = []
    calm = torch.zeros(n, dtype=torch.long, device=z.device)
    for _ in range(iters):
        w = lin.matvec(q.transpose(1, 2).reshape(n * p, d)).reshape(n, p, d).transpose(1, 2)
        finite &= torch.isfinite(w).flatten(1).all(dim=1)
        w = torch.where(finite[:, None, None], w, 0.0)
        projected = (q.transpose(1, 2) @ w).double()
        # entries ~1e-100 below the largest make LAPACK's eigenvalue solver fail; they change nothing here
        negligible = projected.abs() <= 1e-14 * projected.abs().amax(dim=(1, 2), keepdim=True)
        projected = torch.where(negligible, 0.0, projected)
        ritz_prev, ritz = ritz, torch.linalg.eigvals(projected).abs().amax(dim=1)
        q, r = torch.linalg.qr(w)
        log_growth.append(r[:, 0, 0].abs().double().log())
        calm = torch.where((ritz - ritz_prev).abs() <= 1e-6 * ritz, calm + 1, 0)
        if bool(((calm >= 3) | ~finite).all()):  # every Ritz value settled for 3 steps: stop early
            break
    growth = torch.stack(log_growth[len(log_growth) // 2 :]).mean(dim=0).exp()
    settled = calm >= 1
    rho = torch.where(settled, ritz, growth)
    return torch.where(finite, rho, torch.full_like(rho, float("nan"))).to(z.dtype)
