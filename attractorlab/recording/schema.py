"""Run-file schema: format constants, dataset tables and descriptions, :class:`StateSpec`, errors, and the
analysis result type and naming rule."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attractorlab.errors import AttractorlabError, InputError

SCHEMA = "attractorlab.run"
DEFAULT_TASK = "sudoku"  # the task of schema-1 files (which record none), and of writers that name none
SCHEMA_VERSION = 2  # 2: the root attribute ``task``, /puzzles [N, L] for the task's L, more /rollout arrays
LIBVER = ("v110", "v110")  # SWMR needs >= 1.10; "latest" (the 2.0 format) is unreadable by 1.10 tools
STATE_MODES = ("none", "final", "all", "cycles")
STATE_DTYPES = ("float16", "float32")
RESERVED_ATTRS = ("schema", "schema_version", "n_done", "breadth", "depth", "writer", "merged")
PUZZLE_FIELDS = {"tokens": ("u1", ("L",)), "solution": ("u1", ("L",)), "source": ("str", ()),
                 "rating": ("i4", ())}
"""``/puzzles`` datasets: name -> (dtype, per-puzzle shape); ``"L"`` is the task's sequence length."""
OPTIONAL_ROLLOUT = {"selected_majority": ("i4", ())}
DESCRIPTIONS = {  # dataset -> (axes, description), written as attributes for readers of the raw file
    "puzzles/tokens": ("N,L", "inputs in the task's token encoding (root attribute 'task')"),
    "puzzles/solution": ("N,L", "labels in the task's answer encoding, 0 = unknown"),
    "puzzles/source": ("N", "puzzle source (UTF-8)"),
    "puzzles/rating": ("N", "difficulty rating"),
    "puzzles/group": ("N", "optional: group of each instance (a reference split's augmented copies of one puzzle "
                      "share one); absent: every instance its own"),
    "rollout/residual": ("N,B,T", "||z_t - z_{t-1}|| / ||z_t|| of the full state after outer step t"),
    "rollout/halt_logit": ("N,B,T", "halting logit q after outer step t"),
    "rollout/logit_change": ("N,B,T", "norm of the change of all output logits at outer step t"),
    "rollout/cell_logit_change": ("N,B,T", "L2 change of each cell's logits at outer step t, mean over cells "
                                  "(the reference convergence score's per-step term)"),
    "rollout/pred": ("N,B,T,L", "read-out answer (the task's answer encoding) after outer step t"),
    "rollout/valid": ("N,B,T", "pred satisfies the task's constraints for the input (Sudoku: a valid grid keeping "
                      "the givens)"),
    "rollout/correct": ("N,B,T", "pred equals the known label"),
    "rollout/token_accuracy": ("N,B,T", "fraction of cells of pred equal to the label"),
    "rollout/steps": ("N,B", "outer steps run before halting; later entries repeat the last"),
    "rollout/selected": ("N", "restart chosen by the selection rule"),
    "rollout/selected_majority": ("N", "restart chosen by majority vote"),
    "states/data": ("N,B,S,...", "latent state snapshots after the outer steps in /states/steps"),
    "states/steps": ("S", "outer step of each snapshot (0 = initial state)"),
    "states/updates": ("S", "with mode cycles: index into /states/update_names of the inner update each snapshot "
                       "follows (-1 = the initial state)"),
    "states/update_names": ("U", "with mode cycles: the inner updates kept per recorded outer step, in order "
                            "(H{h}.L{l}: l-th update of z_L in H-cycle h; H{h}.H: the z_H update closing it)"),
    "states/projection": ("D,k", "basis applied to each stored vector (e.g. each cell's [z_H, z_L]) before storing"),
    "n_done": ("", "puzzles fully written (commit point; rows beyond it are unfinished)"),
}


class RunFileError(AttractorlabError, ValueError):
    """A run file that cannot be used: missing, not HDF5, not a run, too new, truncated or corrupt."""


class RunFileNotFoundError(RunFileError, FileNotFoundError):
    """The run file does not exist."""


@dataclass
class StateSpec:
    """Which latent states a run stores under ``/states``.

    mode: ``none`` | ``final`` (state after step T, frozen at halting) | ``all`` (initial state, every
    ``stride``-th outer step and step T) | ``cycles`` (the initial state, then inside each outer step ``all``
    keeps, the state after each inner update named in ``updates``). ``shape`` is one snapshot's shape, e.g.
    ``(2, L, D)`` for stacked (z_H, z_L) or ``(k,)`` for projected states; ``projection`` an optional
    ``[D_full, k]`` basis that the caller already applied, stored for reference.
    """

    mode: str = "none"
    stride: int = 1
    dtype: str = "float16"
    shape: tuple = ()
    projection: np.ndarray | None = None
    description: str = ""
    updates: tuple = ()

    def __post_init__(self) -> None:
        if self.mode not in STATE_MODES:
            raise InputError(f"unknown state mode {self.mode!r}; choose one of {', '.join(STATE_MODES)}")
        if isinstance(self.stride, bool) or not isinstance(self.stride, (int, np.integer)) or self.stride < 1:
            raise InputError(f"state stride must be a positive integer, got {self.stride!r}")
        if self.dtype not in STATE_DTYPES:
            raise InputError(f"state dtype must be one of {', '.join(STATE_DTYPES)}, got {self.dtype!r}")
        self.shape = tuple(int(s) for s in self.shape)
        if self.mode != "none" and (not self.shape or min(self.shape) < 1):
            raise InputError(f"state mode {self.mode!r} needs a non-empty positive shape, got {self.shape}")
        self.updates = tuple(str(u) for u in self.updates)
        if (self.mode == "cycles") != bool(self.updates):
            raise InputError("state mode 'cycles' needs the names of the inner updates to keep (and no other mode "
                             f"takes them); got mode {self.mode!r} with updates {list(self.updates)}")
        if self.projection is not None:
            self.projection = np.asarray(self.projection)
            if self.projection.ndim != 2 or not self.shape or self.shape[-1] != self.projection.shape[1]:
                raise InputError(f"projection must be [D_in, k] with shape (..., k); got projection "
                                 f"{self.projection.shape} and shape {self.shape}")

    def steps(self, depth: int) -> np.ndarray:
        """Outer step of each stored snapshot, ``[S]`` int32 (0 = initial state, t = after step t)."""
        if self.mode == "none":
            return np.zeros(0, np.int32)
        if self.mode == "final":
            return np.array([depth], np.int32)
        kept = [*range(self.stride, depth + 1, self.stride)] + ([depth] if depth % self.stride else [])
        if self.mode == "cycles":
            return np.array([0, *np.repeat(kept, len(self.updates))], np.int32)
        return np.array([0, *kept], np.int32)

    def update_index(self, depth: int) -> np.ndarray:
        """With mode ``cycles``: ``[S]`` int32 index into :attr:`updates` of each snapshot (-1 = initial state)."""
        n_steps = len(self.steps(depth)) - 1
        return np.array([-1, *np.tile(np.arange(len(self.updates)), n_steps // max(len(self.updates), 1))],
                        np.int32)

    def key(self) -> tuple:
        """Everything that must match for two runs to share a ``/states`` layout."""
        proj = None if self.projection is None else (self.projection.shape, self.projection.tobytes())
        return self.mode, self.stride, self.dtype, self.shape, proj, self.updates


def rollout_fields(breadth: int, depth: int, seq_len: int) -> dict[str, tuple[str, tuple]]:
    """Required ``/rollout`` datasets: name -> (dtype, per-puzzle shape)."""
    bt = (breadth, depth)
    return {"residual": ("f4", bt), "halt_logit": ("f4", bt), "logit_change": ("f4", bt),
            "pred": ("u1", (*bt, seq_len)), "valid": ("bool", bt), "correct": ("bool", bt),
            "steps": ("i4", (breadth,)), "selected": ("i4", ())}


def puzzle_fields(seq_len: int) -> dict[str, tuple[str, tuple]]:
    """``/puzzles`` datasets for instances of ``seq_len`` tokens."""
    return {k: (kind, tuple(seq_len if d == "L" else d for d in tail)) for k, (kind, tail) in PUZZLE_FIELDS.items()}


class AnalysisResult(dict):
    """``dict`` of arrays/scalars from ``/analysis/<name>``; the group's attributes in ``.attrs``."""

    attrs: dict


def check_name(name: str) -> str:
    parts = str(name).strip("/").split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise InputError(f"invalid analysis name {name!r}")
    return "/".join(parts)
