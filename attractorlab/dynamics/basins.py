"""Basins of attraction of batched maps: basin stability and basin maps on 2-D slices.

- :func:`basin_stability` (Menck et al. 2013): iterate ``f`` from sampled initial states until each row stops
  moving, assign each end state to the nearest known attractor, and report the fraction of samples per
  attractor with its binomial standard error ``sqrt(p (1 - p) / S)``.
- :func:`basin_map`: the same on a grid of initial states spanning the plane through three chosen states; each
  grid point is labelled by the attractor it reaches (the interactive basin maps of the report).
- :func:`sample_ball`: initial states uniformly in (or on the surface of) a ball around a state.

Conventions as in :mod:`attractorlab.dynamics.fixed_points`: a row has converged once
``||f(z) - z|| <= tol * max(||z||, 1)``; an end state belongs to attractor ``a`` when
``||z - a|| <= assign_tol * max(||a||, 1)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from .fixed_points import greedy_unique, to_numpy
from .jacobian import BatchedMap, Tensor, check_map, check_states


@dataclass
class BasinStats:
    """Basin stability of K known attractors from S sampled initial states.

    fraction, stderr, count: [K] share of samples reaching each attractor, binomial standard error, counts.
    unassigned, unassigned_stderr: share (and its standard error) of samples that reached none of them.
    assignment: [S] attractor index per sample, -1 if unassigned; steps: [S] iterations run (steps to converge
    for converged rows, ``max_steps`` otherwise); converged: [S] bool (stopped moving before ``max_steps``).
    new_attractors: [K', d] distinct converged end states far from every known attractor (when collected);
    new_assignment: [S] index into ``new_attractors``, -1 otherwise; final: [S, d] end states if requested.
    """

    fraction: Tensor
    stderr: Tensor
    count: Tensor
    unassigned: float
    unassigned_stderr: float
    assignment: Tensor
    steps: Tensor
    converged: Tensor
    new_attractors: Tensor
    new_assignment: Tensor
    final: Tensor | None = None

    def to_arrays(self) -> dict[str, np.ndarray]:
        """All fields as numpy arrays (``final`` only when present)."""
        names = ("fraction", "stderr", "count", "assignment", "steps", "converged", "new_attractors",
                 "new_assignment")
        out = {name: to_numpy(getattr(self, name)) for name in names}
        out["unassigned"] = np.asarray(self.unassigned)
        out["unassigned_stderr"] = np.asarray(self.unassigned_stderr)
        if self.final is not None:
            out["final"] = to_numpy(self.final)
        return out


@dataclass
class BasinMap:
    """Attractor reached from each point of a grid on a 2-D slice of state space.

    The slice is ``origin + x * basis[0] + y * basis[1]`` (orthonormal basis). label: [gy, gx] index into
    ``attractors`` (-1: none reached); steps: [gy, gx] iterations run; converged: [gy, gx] bool;
    xs: [gx], ys: [gy] grid coordinates; anchor_coords: [3, 2] coordinates of the anchor states in the plane;
    origin: [d]; basis: [2, d]; attractors: [K, d] the given attractors followed by any new ones found.
    """

    label: Tensor
    steps: Tensor
    converged: Tensor
    xs: Tensor
    ys: Tensor
    anchor_coords: Tensor
    origin: Tensor
    basis: Tensor
    attractors: Tensor

    def to_arrays(self) -> dict[str, np.ndarray]:
        """All fields as numpy arrays."""
        return {name: to_numpy(getattr(self, name)) for name in (
            "label", "steps", "converged", "xs", "ys", "anchor_coords", "origin", "basis", "attractors")}


def sample_ball(
    center: Tensor,
    radius: float,
    n: int,
    *,
    surface: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``n`` states uniformly distributed in the ball of ``radius`` around ``center [d]`` (on its sphere when
    ``surface``). Drawn with ``generator`` (a CPU generator); returns [n, d] in the dtype/device of center."""
    if not isinstance(center, torch.Tensor) or center.ndim != 1 or center.shape[0] < 1:
        raise ValueError(f"center must be a 1-D tensor [d], got {getattr(center, 'shape', type(center))}")
    if not (isinstance(radius, (int, float)) and radius >= 0 and math.isfinite(radius)):
        raise ValueError(f"radius must be a non-negative finite number, got {radius!r}")
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"n must be a positive integer, got {n!r}")
    d = center.shape[0]
    direction = torch.randn(n, d, generator=generator, dtype=torch.float64)
    direction = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-300)
    if surface:
        r = torch.ones(n, 1, dtype=torch.float64)
    else:
        r = torch.rand(n, 1, generator=generator, dtype=torch.float64) ** (1.0 / d)
    return center + (radius * r * direction).to(center)


def _check_positive(name: str, value, integer: bool = False) -> None:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or value <= 0:
        raise ValueError(f"{name} must be a positive {'integer' if integer else 'number'}, got {value!r}")


def _iterate(f: BatchedMap, z: Tensor, max_steps: int, tol: float) -> tuple[Tensor, Tensor, Tensor]:
    """Iterate ``z <- f(z)`` row by row until ``||f(z) - z|| <= tol * max(||z||, 1)`` or ``max_steps``.

    Rows stop changing once converged (only the moving rows are evaluated); rows that become non-finite stop
    too. z: [B, d]. Returns (end states [B, d], steps [B], converged [B]).
    """
    z = z.clone()
    b = z.shape[0]
    steps = torch.zeros(b, dtype=torch.long, device=z.device)
    converged = torch.zeros(b, dtype=torch.bool, device=z.device)
    moving = torch.isfinite(z).all(dim=1)
    with torch.no_grad():
        for _ in range(max_steps):
            idx = moving.nonzero()[:, 0]
            if idx.numel() == 0:
                break
            old = z[idx]
            new = f(old)
            finite = torch.isfinite(new).all(dim=1)
            done = finite & ((new - old).norm(dim=1) <= tol * old.norm(dim=1).clamp_min(1.0))
            z[idx[finite]] = new[finite]
            steps[idx[finite & ~done]] += 1
            converged[idx[done]] = True
            moving[idx[done | ~finite]] = False
    return z, steps, converged


def _assign(final: Tensor, attractors: Tensor, assign_tol: float) -> Tensor:
    """Index of the nearest attractor within ``assign_tol * max(||a||, 1)`` for each row, else -1.

    final: [S, d], attractors: [K, d] -> [S]."""
    s = final.shape[0]
    if attractors.shape[0] == 0:
        return torch.full((s,), -1, dtype=torch.long, device=final.device)
    dist = torch.cdist(final.to(attractors.dtype), attractors)
    dist = torch.where(torch.isfinite(dist), dist, torch.full_like(dist, math.inf))
    nearest, index = dist.min(dim=1)
    radius = assign_tol * attractors.norm(dim=1).clamp_min(1.0)
    return torch.where(nearest <= radius[index], index, torch.full_like(index, -1))


def _run(f, samples, attractors, max_steps, tol, assign_tol, batch_size, progress, desc):
    """Iterate all samples in batches; returns (final [S, d], steps [S], converged [S], assignment [S])."""
    finals, steps, conv = [], [], []
    starts = range(0, samples.shape[0], batch_size)
    for lo in tqdm(starts, desc=desc, disable=not progress, unit="batch"):
        zf, st, cv = _iterate(f, samples[lo : lo + batch_size], max_steps, tol)
        finals.append(zf)
        steps.append(st)
        conv.append(cv)
    final, steps_t, converged = torch.cat(finals), torch.cat(steps), torch.cat(conv)
    return final, steps_t, converged, _assign(final, attractors, assign_tol)


def _collect_new(final, converged, assignment, tol):
    """De-duplicate converged, unassigned end states into new attractors; returns (new [K', d], index [S])."""
    idx = (converged & (assignment < 0) & torch.isfinite(final).all(dim=1)).nonzero()[:, 0]
    labels, leaders = greedy_unique(final[idx], tol)
    new_assignment = torch.full_like(assignment, -1)
    new_assignment[idx] = labels
    return final[idx][leaders], new_assignment


def _check_common(f, attractors, samples, max_steps, tol, assign_tol, batch_size):
    samples = check_states(samples, "samples")
    check_map(f, samples)
    d = samples.shape[1]
    if attractors is None:
        attractors = samples.new_zeros(0, d)
    attractors = attractors.to(device=samples.device)
    if attractors.ndim != 2 or attractors.shape[1] != d:
        raise ValueError(f"attractors must have shape [K, {d}], got {tuple(attractors.shape)}")
    _check_positive("max_steps", max_steps, integer=True)
    _check_positive("tol", tol)
    _check_positive("assign_tol", assign_tol)
    _check_positive("batch_size", batch_size, integer=True)
    return attractors, samples


def basin_stability(
    f: BatchedMap,
    attractors: Tensor | None,
    samples: Tensor,
    *,
    max_steps: int = 1000,
    tol: float = 1e-6,
    assign_tol: float = 1e-2,
    batch_size: int = 4096,
    progress: bool = False,
    collect_new: bool = True,
    return_final: bool = False,
) -> BasinStats:
    """Fraction of ``samples`` whose orbit under ``f`` ends at each attractor.

    Args:
        f: batched, row-wise map ``[N, d] -> [N, d]``.
        attractors: [K, d] known attractors (e.g. the stable points of :func:`find_fixed_points`), or None.
        samples: [S, d] initial states (e.g. :func:`sample_ball`, or the model's own random initial states).
        max_steps: iteration cap per sample.
        tol: convergence tolerance, ``||f(z) - z|| <= tol * max(||z||, 1)``.
        assign_tol: an end state within ``assign_tol * max(||a||, 1)`` of attractor ``a`` belongs to it
            (converged or not: slow approaches count).
        batch_size: samples iterated together.
        progress: show a tqdm bar over batches.
        collect_new: de-duplicate converged end states near no known attractor into ``new_attractors``
            (end states closer than ``assign_tol * max(median norm, 1)`` are one attractor).
        return_final: keep the end states [S, d] in the result.

    Returns:
        :class:`BasinStats`.
    """
    attractors, samples = _check_common(f, attractors, samples, max_steps, tol, assign_tol, batch_size)
    final, steps, converged, assignment = _run(
        f, samples.detach(), attractors.detach(), max_steps, tol, assign_tol, batch_size, progress, "basins")
    s, k = samples.shape[0], attractors.shape[0]
    count = torch.bincount(assignment[assignment >= 0], minlength=k)[:k]
    fraction = count.to(torch.float64) / s
    unassigned = float((assignment < 0).sum()) / s
    if collect_new:
        new_attractors, new_assignment = _collect_new(final, converged, assignment, assign_tol)
    else:
        new_attractors, new_assignment = final.new_zeros(0, final.shape[1]), torch.full_like(assignment, -1)
    return BasinStats(
        fraction=fraction,
        stderr=(fraction * (1 - fraction) / s).sqrt(),
        count=count,
        unassigned=unassigned,
        unassigned_stderr=math.sqrt(unassigned * (1 - unassigned) / s),
        assignment=assignment,
        steps=steps,
        converged=converged,
        new_attractors=new_attractors,
        new_assignment=new_assignment,
        final=final if return_final else None,
    )


def _plane(anchors) -> tuple[Tensor, Tensor, Tensor]:
    """Origin [d], orthonormal basis [2, d] and anchor coordinates [3, 2] of the plane through three states.

    ``anchors`` is a [3, d] tensor (the plane through its rows, origin at the first) or a tuple
    ``(center, u, v)`` (origin ``center``, directions ``u`` and ``v``; anchors ``center``, ``center + u``,
    ``center + v``)."""
    if isinstance(anchors, (tuple, list)):
        if len(anchors) != 3:
            raise ValueError("anchors as a tuple must be (center, u, v)")
        center, u, v = (torch.as_tensor(a) for a in anchors)
        if not (center.ndim == u.ndim == v.ndim == 1 and center.shape == u.shape == v.shape):
            raise ValueError("center, u and v must be 1-D tensors of the same length d")
        points = torch.stack([center, center + u, center + v])
    else:
        points = anchors
        if not isinstance(points, torch.Tensor) or points.ndim != 2 or points.shape[0] != 3:
            shape = getattr(points, "shape", None)
            raise ValueError(f"anchors must be a [3, d] tensor or (center, u, v), got shape {shape}")
    if not points.is_floating_point() or not bool(torch.isfinite(points).all()):
        raise ValueError("anchors must be finite floating-point states")
    origin = points[0]
    e1 = points[1] - origin
    n1 = e1.norm()
    if n1 == 0:
        raise ValueError("the anchors do not span a plane (first two coincide)")
    e1 = e1 / n1
    e2 = points[2] - origin
    e2 = e2 - (e2 @ e1) * e1
    e2 = e2 - (e2 @ e1) * e1
    n2 = e2.norm()
    if n2 <= 1e-12 * max(float(n1), 1.0):
        raise ValueError("the anchors do not span a plane (they are collinear)")
    basis = torch.stack([e1, e2 / n2])
    coords = (points - origin) @ basis.T
    return origin, basis, coords


def basin_map(
    f: BatchedMap,
    anchors,
    *,
    resolution: tuple[int, int] = (64, 64),
    extent: tuple[float, float, float, float] | None = None,
    margin: float = 0.25,
    attractors: Tensor | None = None,
    max_steps: int = 1000,
    tol: float = 1e-6,
    assign_tol: float = 1e-2,
    batch_size: int = 4096,
    progress: bool = False,
    collect_new: bool = True,
) -> BasinMap:
    """Label a grid of initial states on the plane through three states by the attractor each one reaches.

    Args:
        f: batched, row-wise map ``[N, d] -> [N, d]``.
        anchors: [3, d] states spanning the plane (origin at the first), or ``(center [d], u [d], v [d])``.
        resolution: grid size ``(gx, gy)``.
        extent: ``(xmin, xmax, ymin, ymax)`` in plane coordinates; default: the anchors' bounding box enlarged
            by ``margin`` times its size on each side.
        attractors: [K, d] known attractors; labels index into them first.
        collect_new: grid points converging elsewhere define new attractors (labels K, K+1, ...).
        max_steps, tol, assign_tol, batch_size, progress: as in :func:`basin_stability`.

    Returns:
        :class:`BasinMap`; grid point ``(i, j)`` is ``origin + xs[j] * basis[0] + ys[i] * basis[1]``.
    """
    origin, basis, coords = _plane(anchors)
    if (not isinstance(resolution, (tuple, list)) or len(resolution) != 2
            or not all(isinstance(r, int) and r >= 2 for r in resolution)):
        raise ValueError(f"resolution must be two integers >= 2, got {resolution!r}")
    if extent is None:
        lo, hi = coords.min(dim=0).values, coords.max(dim=0).values
        pad = margin * (hi - lo).max().clamp_min(1e-12)
        extent = (float(lo[0] - pad), float(hi[0] + pad), float(lo[1] - pad), float(hi[1] + pad))
    if len(extent) != 4 or not (extent[0] < extent[1] and extent[2] < extent[3]):
        raise ValueError(f"extent must be (xmin, xmax, ymin, ymax), xmin < xmax, ymin < ymax, got {extent!r}")
    gx, gy = resolution
    xs = torch.linspace(extent[0], extent[1], gx, dtype=origin.dtype, device=origin.device)
    ys = torch.linspace(extent[2], extent[3], gy, dtype=origin.dtype, device=origin.device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    samples = origin + grid_x.reshape(-1, 1) * basis[0] + grid_y.reshape(-1, 1) * basis[1]
    known, samples = _check_common(f, attractors, samples, max_steps, tol, assign_tol, batch_size)
    final, steps, converged, label = _run(
        f, samples, known.detach(), max_steps, tol, assign_tol, batch_size, progress, "basin map")
    all_attractors = known
    if collect_new:
        new, new_label = _collect_new(final, converged, label, assign_tol)
        label = torch.where(new_label >= 0, new_label + known.shape[0], label)
        all_attractors = torch.cat([known.to(final.dtype), new])
    return BasinMap(
        label=label.reshape(gy, gx),
        steps=steps.reshape(gy, gx),
        converged=converged.reshape(gy, gx),
        xs=xs,
        ys=ys,
        anchor_coords=coords,
        origin=origin,
        basis=basis,
        attractors=all_attractors,
    )
