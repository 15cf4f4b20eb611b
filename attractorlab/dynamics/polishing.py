"""Noise-free polish of end states: which fixed point (if any) each noisy rollout was sitting at.

Under path noise the recorded residual only says a state moves about as much as the noise makes it move. A caller
with the model can decide exactly: take the end states, run a few steps of the deterministic map ``f`` (the
noise-free outer step, e.g. ``model.as_map(tokens)``) and solve for the fixed point nearby.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .fixed_points import FIXED, FixedPoints, find_fixed_points, to_numpy
from .jacobian import BatchedMap, Tensor, check_map, check_states


@dataclass
class Polished:
    """Per end state (M): the fixed point it polishes to.

    fixed: [M] bool, a fixed point was reached; point: [M] index into ``points`` (-1 if not); z: [M, d] the
    polished point (the end of the solve where none was reached; float64 when the points were refined in float64);
    residual: [M] float64 ``||f(z) - z||`` of it; spectral_radius: [M] float64 of the Jacobian there (NaN if no
    point); stable: [M] bool (spectral radius < 1); distance: [M] float64 ``||z - state||``, how far the end
    state sat from its point; points: the :class:`FixedPoints` of the solve.
    """

    fixed: Tensor
    point: Tensor
    z: Tensor
    residual: Tensor
    spectral_radius: Tensor
    stable: Tensor
    distance: Tensor
    points: FixedPoints

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Per-state fields, then the fixed points' arrays prefixed ``points/``."""
        out = {name: to_numpy(getattr(self, name)) for name in (
            "fixed", "point", "z", "residual", "spectral_radius", "stable", "distance")}
        out.update({f"points/{k}": v for k, v in self.points.to_arrays().items()})
        return out


def polish(f: BatchedMap, states: Tensor, *, steps: int = 5, **find_kwargs) -> Polished:
    """Run ``steps`` noise-free steps of ``f`` from the end states ``states [M, d]``, then
    :func:`~attractorlab.dynamics.fixed_points.find_fixed_points` from there (``find_kwargs`` are passed on;
    ``k`` defaults to 0: spectral radius only; ``refine`` defaults to False), and report for each state the fixed
    point it reaches, its residual, spectral radius and stability (attractor or not).

    Which point a state sits at and whether it attracts are decided at the solve's tolerance in the working dtype;
    the float64 refinement of the points made polishing the shipped reasoner's end states 2.9x slower and changed
    neither (``benchmarks/bench_polish.py``), so it runs only with ``refine=True`` (then ``z`` holds the float64
    points).
    """
    states = check_states(states, "states")
    check_map(f, states)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    z = states.detach()
    with torch.no_grad():
        for _ in range(steps):
            z = f(z)
    find_kwargs.setdefault("k", 0)
    find_kwargs.setdefault("refine", False)
    fps = find_fixed_points(f, z, **find_kwargs)
    fixed = fps.kind == FIXED
    point = fps.assignment.clone()
    at = point.clamp_min(0)
    source = fps.z_refined if fps.z_refined is not None else fps.z
    res_points = fps.refined_residual if fps.refined_residual is not None else fps.residual.double()
    if len(fps):
        z_out = torch.where(fixed[:, None], source[at], fps.final.to(source.dtype))
        residual = torch.where(fixed, res_points[at], fps.final_residual.double())
        rho = torch.where(fixed, fps.spectral_radius.double()[at], torch.nan)
    else:
        z_out = fps.final
        residual, rho = fps.final_residual.double(), torch.full_like(fps.final_residual, torch.nan).double()
    distance = (z_out.double() - states.double()).norm(dim=1)
    return Polished(fixed=fixed, point=point, z=z_out, residual=residual, spectral_radius=rho,
                    stable=fixed & (rho < 1), distance=distance, points=fps)


def select_attractor(polished: Polished, fallback: np.ndarray | None = None) -> int:
    """Attractor-aware choice among the restarts of one puzzle, from their polished end states (``polished`` of
    the ``B`` restarts together, so restarts on the same point share ``point``).

    Among the restarts that sit at a stable fixed point, take the attractor reached by the most restarts (ties:
    the smaller spectral radius), and on it the restart whose end state was closest to it. With no restart at an
    attractor, the restart with the lowest ``fallback [B]`` score (e.g. the convergence score), else restart 0.
    """
    stable = to_numpy(polished.stable).astype(bool)
    if not stable.any():
        if fallback is None:
            return 0
        score = np.where(np.isfinite(fallback), fallback, np.inf)
        return int(np.argmin(score))
    point, rho = to_numpy(polished.point), to_numpy(polished.spectral_radius)
    distance = to_numpy(polished.distance)
    candidates = np.unique(point[stable])
    votes = np.array([(point[stable] == c).sum() for c in candidates])
    radius = np.array([rho[point == c].min() for c in candidates])
    best = candidates[np.lexsort((radius, -votes))[0]]
    on_best = np.flatnonzero(stable & (point == best))
    return int(on_best[np.argmin(distance[on_best])])
