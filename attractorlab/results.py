"""The stored form of the model-based analyses: one small container per analysis, written and read the same way.

``analyze`` builds a container and stores it with :meth:`StoredResult.to_stored` (array fields under
``/analysis/<name>/<field>``, scalar fields as the group's attributes); ``report`` reads the group back with
:meth:`StoredResult.from_result`. The field names are the stored keys, so the two sides cannot drift apart, and
the names are those of files written before these containers existed (they read unchanged).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np

from attractorlab.errors import AttractorlabError

R = TypeVar("R", bound="StoredResult")


class IncompleteResult(AttractorlabError, KeyError):
    """A stored analysis lacks a field its container needs (written by an older or interrupted analyze)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "incomplete result"


@dataclass
class StoredResult:
    """Base of the analysis containers: fields typed ``np.ndarray`` are arrays, the others scalar attributes.

    Fields with a default (``None``) are details a figure does not need; results written without them still read.
    """

    analysis: ClassVar[str] = ""

    @classmethod
    def _array_fields(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls) if str(f.type).startswith("np.ndarray")}

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The array fields (those set), as stored under ``/analysis/<name>``."""
        return {name: np.asarray(getattr(self, name)) for name in sorted(self._array_fields())
                if getattr(self, name) is not None}

    def to_attrs(self) -> dict[str, Any]:
        """The scalar fields (those set), as stored in the group's attributes."""
        arrays = self._array_fields()
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in arrays and getattr(self, f.name) is not None}

    def to_stored(self) -> dict[str, dict]:
        """``{"arrays": ..., "attrs": ...}``: what ``analyze`` writes for this result."""
        return {"arrays": self.to_arrays(), "attrs": self.to_attrs()}

    @classmethod
    def from_result(cls: type[R], res: Any) -> R:
        """Rebuild from an :class:`attractorlab.recording.AnalysisResult` (arrays by key, scalars in ``.attrs``);
        fields with a default may be absent (older files)."""
        arrays, attrs, values = cls._array_fields(), getattr(res, "attrs", {}), {}
        for f in dataclasses.fields(cls):
            source = res if f.name in arrays else attrs
            if f.name in source:
                values[f.name] = np.asarray(source[f.name]) if f.name in arrays else source[f.name]
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                kind = "array" if f.name in arrays else "attribute"
                raise IncompleteResult(f"incomplete {cls.analysis or cls.__name__} result: no '{f.name}' {kind}")
        return cls(**values)


@dataclass
class EndStates(StoredResult):
    """Recorded end states of the first ``puzzles`` puzzles, polished noise-free (``end_states``).

    puzzle_index: [n]; end_state: [n, B] index into ``ending_names``; spectral_radius, distance: [n, B] of the
    fixed point each end polished to (NaN where none); ending_counts: [len(ending_names)] totals.
    """

    analysis: ClassVar[str] = "end_states"
    ending_names: np.ndarray
    ending_counts: np.ndarray
    end_state: np.ndarray
    puzzle_index: np.ndarray | None = None
    spectral_radius: np.ndarray | None = None
    distance: np.ndarray | None = None
    puzzles: int = 0


@dataclass
class LyapunovSurvey(StoredResult):
    """Largest Lyapunov exponent along the orbit from each recorded end state (``lyapunov``).

    puzzle_index: [n]; exponent, stderr: [n, B] per outer step; regime: [n, B] index into ``regime_names``;
    correct: [n, B] the end state's answer was right; regime_counts: [len(regime_names)]; steps: outer steps
    averaged per exponent.
    """

    analysis: ClassVar[str] = "lyapunov"
    exponent: np.ndarray
    stderr: np.ndarray
    regime: np.ndarray
    correct: np.ndarray
    regime_names: np.ndarray
    regime_counts: np.ndarray
    puzzle_index: np.ndarray | None = None
    puzzles: int = 0
    steps: int = 0


@dataclass
class RestartSelection(StoredResult):
    """Choosing a restart by its attractor against the convergence score and the oracle, by depth (``selection``).

    depths: [K] outer steps; attractor_correct, convergence_correct, oracle_correct: [n, K] bool per puzzle;
    restarts_at_attractor: [n, K] restarts sitting at a stable fixed point; *_accuracy: [K] means over puzzles.
    """

    analysis: ClassVar[str] = "selection"
    depths: np.ndarray
    attractor_accuracy: np.ndarray
    convergence_accuracy: np.ndarray
    oracle_accuracy: np.ndarray
    attractor_correct: np.ndarray | None = None
    convergence_correct: np.ndarray | None = None
    oracle_correct: np.ndarray | None = None
    restarts_at_attractor: np.ndarray | None = None
    puzzles: int = 0


@dataclass
class PuzzleBasins(StoredResult):
    """Basin stability of one puzzle's stable attractors and a 2-D basin map through them (``basins/p<k>``).

    fraction, stderr: [K + 1] share of the samples reaching each of the K stable attractors, then "none";
    attractor_label: [K] index into the analysis labels; attractor_grid: [K] read-out answers as strings;
    map_label: [gy, gx] attractor reached (-1: none); map_steps: [gy, gx]; xs: [gx]; ys: [gy];
    anchor_coords: [3, 2] and anchor_names: [3] the states spanning the slice; fp_coords: [M, 2] every fixed point
    of the puzzle in the plane; fp_stable: [M] bool. Scalars: basin entropy of the map (whole and on boundary
    boxes of side ``entropy_box`` cells) and the share of boundary cells.
    """

    analysis: ClassVar[str] = "basins"
    fraction: np.ndarray
    stderr: np.ndarray
    attractor_label: np.ndarray
    attractor_grid: np.ndarray
    map_label: np.ndarray
    map_steps: np.ndarray
    xs: np.ndarray
    ys: np.ndarray
    anchor_coords: np.ndarray
    anchor_names: np.ndarray
    fp_coords: np.ndarray
    fp_stable: np.ndarray
    puzzle_index: int = -1
    samples: int = 0
    basin_entropy: float | None = None
    boundary_basin_entropy: float | None = None
    boundary_fraction: float | None = None
    entropy_box: int | None = None


__all__ = ["EndStates", "IncompleteResult", "LyapunovSurvey", "PuzzleBasins", "RestartSelection", "StoredResult"]
