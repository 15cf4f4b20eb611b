"""Shared helpers for run-file arrays ``[..., T]`` (numpy arrays or torch tensors): validation, recorded
lengths, values at the last recorded step and tail windows. Private to ``dynamics``."""

from __future__ import annotations

import numpy as np


def as_record_array(x, name: str, ndim_min: int = 1) -> np.ndarray:
    """``x`` (numpy array, torch tensor or nested sequence) as a numpy array with at least ``ndim_min`` axes."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim < ndim_min:
        raise ValueError(f"{name} must have at least {ndim_min} dimensions, got shape {x.shape}")
    return x


def record_lengths(steps, shape: tuple[int, ...]) -> np.ndarray:
    """Recorded length of each trajectory: ``steps`` clipped to ``[1, T]`` (T when steps is None)."""
    lead, t = shape[:-1], shape[-1]
    if steps is None:
        return np.full(lead, t, dtype=np.int64)
    steps = as_record_array(steps, "steps", 0)
    if steps.shape != lead:
        raise ValueError(f"steps must have shape {lead}, got {steps.shape}")
    return np.clip(steps.astype(np.int64), 1, t)


def final_values(x, steps=None) -> np.ndarray:
    """Value of ``x [..., T]`` at the last recorded step, ``steps - 1`` (``T - 1`` without steps): ``[...]``.
    """
    x = as_record_array(x, "x")
    idx = record_lengths(steps, x.shape) - 1
    return np.take_along_axis(x, idx[..., None], axis=-1)[..., 0]


def tail_mean(x: np.ndarray, lengths: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``window`` recorded values of each row of x [..., T]."""
    t = x.shape[-1]
    offsets = np.arange(window)
    idx = np.clip(lengths[..., None] - window + offsets, 0, t - 1)
    keep = lengths[..., None] - window + offsets >= 0
    vals = np.take_along_axis(x.astype(np.float64), idx, axis=-1)
    return np.where(keep, vals, 0.0).sum(-1) / keep.sum(-1)


def tail_windows(x: np.ndarray, lengths: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Last ``width`` recorded entries of each row of x [M, T, ...].

    Returns (windows [M, width, ...], valid [M, width])."""
    t = x.shape[1]
    pos = lengths[:, None] - width + np.arange(width)
    valid = pos >= 0
    idx = np.clip(pos, 0, t - 1)
    return x[np.arange(x.shape[0])[:, None], idx], valid


def answer_change_steps(pred, changed, shape: tuple[int, ...], initial_pred=None) -> np.ndarray:
    """Whether the read-out changed at each step: ``[..., T]`` bool, True at step t when the answer differs from
    the one at step t - 1 (and at step 1 from ``initial_pred [..., L]``, the read-out of the initial state;
    without it step 1 counts as a change: run files do not record the initial read-out).

    Exactly one of ``pred [..., T, L]`` (answers) and ``changed [..., T]`` (flags, used as given) is needed.
    """
    if (pred is None) == (changed is None):
        raise ValueError("give exactly one of pred [..., T, L] and changed [..., T]")
    if changed is not None:
        flags = as_record_array(changed, "changed").astype(bool)
        if flags.shape != shape:
            raise ValueError(f"changed must have shape {shape}, got {flags.shape}")
        return flags
    p = as_record_array(pred, "pred", 2)
    if p.shape[:-1] != shape:
        raise ValueError(f"pred must have shape {shape + (p.shape[-1],)}, got {p.shape}")
    flags = np.empty(shape, dtype=bool)
    flags[..., 1:] = (p[..., 1:, :] != p[..., :-1, :]).any(axis=-1)
    if initial_pred is None:
        flags[..., 0] = True
    else:
        init = as_record_array(initial_pred, "initial_pred")
        if init.shape != shape[:-1] + p.shape[-1:]:
            raise ValueError(f"initial_pred must have shape {shape[:-1] + p.shape[-1:]}, got {init.shape}")
        flags[..., 0] = (p[..., 0, :] != init).any(axis=-1)
    return flags


def last_index_where(mask: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Index of the last True entry of each row of mask [M, T] among its first ``lengths [M]`` entries; -1 if
    none."""
    t = mask.shape[1]
    pos = np.arange(t)
    hit = mask & (pos < lengths[:, None])
    return np.where(hit, pos, -1).max(axis=1)
