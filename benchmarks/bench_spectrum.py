"""Top Jacobian eigenvalues of a 41,472-dimensional map (81 x 512: one EqR latent stream), matrix-free.

The map is ``f(Z) = tanh(A Z B^T)`` on states ``Z [81, 512]`` flattened row-major. At ``Z = 0`` its
Jacobian is ``A (x) B``, whose eigenvalues are all products ``a_i b_j`` of the eigenvalues of the small
factors, so the top-6 are known exactly from two dense eigendecompositions. Two spectra are measured:

- ``outliers``: a few planted dominant modes (a complex pair among them) above a random bulk, the shape
  expected near a trained attractor;
- ``bulk``: plain random factors (A symmetric, B Gaussian), whose top eigenvalues are crowded: the hard case
  for Arnoldi.

For each: wall time and the largest relative error of ``jacobian_spectrum(..., k=6)`` (ARPACK with cached
linearisation products), ``spectral_radius`` (batched subspace iteration) and ``top_singular_values`` (svds).
The target is 1e-3 relative accuracy in well under a minute on 2 CPU cores.

    python benchmarks/bench_spectrum.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from attractorlab.dynamics import jacobian_spectrum, spectral_radius, top_singular_values

N_CELLS, WIDTH = 81, 512


def factors(kind: str, seed: int, width: int = WIDTH) -> tuple[torch.Tensor, torch.Tensor]:
    """The small factors A [81, 81] and B [width, width] of the Jacobian ``A (x) B``."""
    g = torch.Generator().manual_seed(seed)

    def randn(n: int) -> torch.Tensor:
        return torch.randn(n, n, generator=g, dtype=torch.float64) / n**0.5

    a_bulk = (randn(N_CELLS) + randn(N_CELLS).T) / 2
    b_bulk = randn(width)
    if kind == "bulk":
        return a_bulk, b_bulk
    qa = torch.linalg.qr(torch.randn(N_CELLS, 2, generator=g, dtype=torch.float64))[0]
    qb = torch.linalg.qr(torch.randn(width, 2, generator=g, dtype=torch.float64))[0]
    c, s = np.cos(0.5), np.sin(0.5)
    rotation = 1.1 * torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    a = 0.4 * a_bulk + qa @ torch.diag(torch.tensor([1.2, -0.9], dtype=torch.float64)) @ qa.T
    b = 0.5 * b_bulk + qb @ rotation @ qb.T
    return a, b


def kronecker_map(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype):
    a, b = a.to(dtype), b.to(dtype)

    def f(z: torch.Tensor) -> torch.Tensor:
        return torch.tanh((a @ z.reshape(-1, N_CELLS, b.shape[0]) @ b.T).reshape(z.shape[0], -1))

    return f


def exact_top(values: np.ndarray, k: int) -> np.ndarray:
    return values[np.lexsort((-values.imag, -np.abs(values)))][:k]


def relative_error(found: np.ndarray, exact: np.ndarray) -> float:
    """Largest relative error after pairing by rank (exact ties in the ranking are paired by value)."""
    return float(max(np.min(np.abs(exact - x) / np.abs(exact)) for x in found))


def modulus_error(found: np.ndarray, exact: np.ndarray) -> float:
    """Largest relative error of the sorted moduli: were the top-k by modulus found, whatever their order?"""
    return float(np.max(np.abs(np.sort(np.abs(found)) - np.sort(np.abs(exact))) / np.sort(np.abs(exact))))


def run(kind: str, args: argparse.Namespace) -> None:
    a, b = factors(kind, args.seed, args.width)
    dtype = getattr(torch, args.dtype)
    f = kronecker_map(a, b, dtype)
    z = torch.zeros(1, N_CELLS * args.width, dtype=dtype)
    eig_a, eig_b = np.linalg.eigvals(a.numpy()), np.linalg.eigvals(b.numpy())
    products = (eig_a[:, None] * eig_b[None, :]).reshape(-1)
    exact = exact_top(products, args.k)
    sv = np.sort((np.linalg.svd(a.numpy(), compute_uv=False)[:, None]
                  * np.linalg.svd(b.numpy(), compute_uv=False)[None, :]).reshape(-1))[::-1][: args.k]
    print(f"\n== {kind}: d = {N_CELLS * args.width}, {args.dtype}; exact top-{args.k + 2} moduli "
          f"{np.array2string(np.abs(exact_top(products, args.k + 2)), precision=5)}")

    start = time.perf_counter()
    found = jacobian_spectrum(f, z, k=args.k, method="arnoldi", tol=args.tol)[0].numpy()
    seconds = time.perf_counter() - start
    print(f"jacobian_spectrum (ARPACK)    {seconds:7.2f} s   max rel. error "
          f"{relative_error(found, exact):.2e} (moduli {modulus_error(found, exact):.2e})")

    start = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    rho = float(spectral_radius(f, z, iters=args.power_iters, block=4, generator=gen))
    seconds = time.perf_counter() - start
    print(f"spectral_radius ({args.power_iters} its)     {seconds:7.2f} s   rel. error "
          f"{abs(rho - abs(exact[0])) / abs(exact[0]):.2e}")

    start = time.perf_counter()
    sing = top_singular_values(f, z, k=args.k, tol=args.tol)[0].numpy()
    seconds = time.perf_counter() - start
    print(f"top_singular_values (svds)    {seconds:7.2f} s   max rel. error {relative_error(sing, sv):.2e}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", default=["outliers", "bulk"], choices=["outliers", "bulk"],
                        help="spectra to measure")
    parser.add_argument("--k", type=int, default=6, help="number of eigenvalues")
    parser.add_argument("--width", type=int, default=WIDTH, help="columns of the state (d = 81 x width)")
    parser.add_argument("--tol", type=float, default=1e-6, help="ARPACK relative tolerance")
    parser.add_argument("--power-iters", type=int, default=100, help="iterations for spectral_radius")
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"], help="state dtype")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random factors")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for kind in args.kinds:
        run(kind, args)


if __name__ == "__main__":
    main()
