"""The stored form of the analyses: one small container per analysis, written and read the same way.

``analyze`` builds a container and stores its :meth:`StoredResult.to_arrays` and :meth:`StoredResult.to_attrs` (under
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

    Fields with a default (``None``) are details a figure does not need; results written without them still read
    (a figure that needs one asks with :meth:`need`). A *family* field, ``dict[str, np.ndarray]`` declared with
    :func:`family`, holds one array per name of another array field and is stored as one array per name
    (``family("fpr_{}", "score_names")``: ``fpr_<name>`` for each entry of ``score_names``).
    """

    analysis: ClassVar[str] = ""

    @classmethod
    def _array_fields(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls) if str(f.type).startswith("np.ndarray")}

    @classmethod
    def _families(cls) -> dict[str, tuple[str, str]]:
        return {f.name: (f.metadata["key"], f.metadata["names"]) for f in dataclasses.fields(cls)
                if "key" in f.metadata}

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The array fields (those set) and every family member, as stored under ``/analysis/<name>``."""
        out = {name: np.asarray(getattr(self, name)) for name in sorted(self._array_fields())
               if getattr(self, name) is not None}
        for name, (key, _) in self._families().items():
            out.update({key.format(member): np.asarray(a) for member, a in getattr(self, name).items()})
        return out

    def to_attrs(self) -> dict[str, Any]:
        """The scalar fields (those set), as stored in the group's attributes."""
        skip = self._array_fields() | set(self._families())
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in skip and getattr(self, f.name) is not None}

    def need(self: R, *names: str) -> R:
        """``self``, after checking that the optional fields ``names`` are set (else :class:`IncompleteResult`)."""
        for name in names:
            if getattr(self, name) is None:
                raise IncompleteResult(f"incomplete {self.analysis or type(self).__name__} result: no '{name}'")
        return self

    @classmethod
    def from_result(cls: type[R], res: Any) -> R:
        """Rebuild from an :class:`attractorlab.recording.AnalysisResult` (arrays by key, scalars in ``.attrs``);
        fields with a default may be absent (older files)."""
        arrays, families, attrs, values = cls._array_fields(), cls._families(), getattr(res, "attrs", {}), {}
        for f in dataclasses.fields(cls):
            if f.name in families:
                continue
            source = res if f.name in arrays else attrs
            if f.name in source:
                values[f.name] = np.asarray(source[f.name]) if f.name in arrays else source[f.name]
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                kind = "array" if f.name in arrays else "attribute"
                raise IncompleteResult(f"incomplete {cls.analysis or cls.__name__} result: no '{f.name}' {kind}")
        for name, (key, names) in families.items():
            members = [str(m) for m in values.get(names, [])]
            missing = [key.format(m) for m in members if key.format(m) not in res]
            if missing:
                raise IncompleteResult(f"incomplete {cls.analysis or cls.__name__} result: no '{missing[0]}' array")
            values[name] = {m: np.asarray(res[key.format(m)]) for m in members}
        return cls(**values)


def family(key: str, names: str) -> Any:
    """A :class:`StoredResult` field of one array per entry of the array field ``names``, each stored under
    ``key.format(entry)``."""
    return dataclasses.field(default_factory=dict, metadata={"key": key, "names": names})


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


@dataclass
class RunSummary(StoredResult):
    """Headline numbers of a run (``summary``): scalars from :func:`attractorlab.solve.summarize_run`, and the
    accuracy by difficulty band and by source, ``*_names / *_count / *_accuracy [K]``."""

    analysis: ClassVar[str] = "summary"
    band_names: np.ndarray
    band_count: np.ndarray
    band_accuracy: np.ndarray
    source_names: np.ndarray
    source_count: np.ndarray
    source_accuracy: np.ndarray
    n: int | None = None
    breadth: int | None = None
    depth: int | None = None
    accuracy: float | None = None
    majority_accuracy: float | None = None
    pass_at_b: float | None = None
    mean_steps: float | None = None
    median_steps: float | None = None


@dataclass
class ScalingCurves(StoredResult):
    """Accuracy against depth and breadth (``scaling``).

    depth_steps: [T] 1..T; depth_accuracy: [T] the restart the convergence score selects from the first d steps;
    depth_oracle: [T] any restart right; breadth_values: [K]; breadth_accuracy, breadth_oracle: [K] at the final
    depth with the first b restarts.
    """

    analysis: ClassVar[str] = "scaling"
    depth_steps: np.ndarray
    depth_accuracy: np.ndarray
    depth_oracle: np.ndarray
    breadth_values: np.ndarray
    breadth_accuracy: np.ndarray
    breadth_oracle: np.ndarray


@dataclass
class ConvergenceStudy(StoredResult):
    """Convergence against correctness (``convergence``), on the selected restart of each of N puzzles.

    steps_axis: [T]; residual_{correct,incorrect}_{median,q25,q75}: [T] residual curves by final outcome;
    score_names: [S] convergence scores, auroc: [S] and the ROC curve of each, fpr / tpr: {score: [P]}; steps,
    settle_answer, settle_residual, rating, correct: [N] (settle_*: the outer step the answer / the residual
    settles); ending_names, ending_counts: [E] how every restart's trajectory ends, ending and period: [N, B] per
    restart; halt_rules: [R] post-hoc halting rules with halt_values, halt_mean_steps, halt_accuracy: {rule: [V]}
    (accuracy against mean steps as each rule's threshold moves). Scalars: Spearman's rho of settling step vs
    rating and its p-value, the noise floor (0: noise-free), and how many puzzles of the easiest band settle
    within 5 steps.
    """

    analysis: ClassVar[str] = "convergence"
    steps_axis: np.ndarray
    residual_correct_median: np.ndarray
    residual_correct_q25: np.ndarray
    residual_correct_q75: np.ndarray
    residual_incorrect_median: np.ndarray
    residual_incorrect_q25: np.ndarray
    residual_incorrect_q75: np.ndarray
    score_names: np.ndarray
    auroc: np.ndarray
    steps: np.ndarray
    rating: np.ndarray
    correct: np.ndarray
    settle_answer: np.ndarray | None = None
    settle_residual: np.ndarray | None = None
    ending_names: np.ndarray | None = None
    ending_counts: np.ndarray | None = None
    ending: np.ndarray | None = None
    period: np.ndarray | None = None
    halt_rules: np.ndarray | None = None
    fpr: dict[str, np.ndarray] = family("fpr_{}", "score_names")
    tpr: dict[str, np.ndarray] = family("tpr_{}", "score_names")
    halt_values: dict[str, np.ndarray] = family("halt_{}_values", "halt_rules")
    halt_mean_steps: dict[str, np.ndarray] = family("halt_{}_mean_steps", "halt_rules")
    halt_accuracy: dict[str, np.ndarray] = family("halt_{}_accuracy", "halt_rules")
    spearman_rho: float | None = None
    spearman_p: float | None = None
    noise_floor: float | None = None
    easy_band: str | None = None
    easy_count: int | None = None
    easy_settled_within_5: int | None = None


@dataclass
class TrajectoryEmbedding(StoredResult):
    """Recorded trajectories in 2-D (``embedding``): coords [n, B, S, 2] at the snapshot steps [S] of puzzles
    puzzle_index [n]; correct: [n, B] final outcome; explained_variance: [2] (PCA only); method: pca or umap."""

    analysis: ClassVar[str] = "embedding"
    coords: np.ndarray
    steps: np.ndarray
    puzzle_index: np.ndarray
    correct: np.ndarray
    explained_variance: np.ndarray | None = None
    method: str = "embedding"


@dataclass
class CellProbes(StoredResult):
    """Linear decodability by outer step (``probes``): cell_accuracy and cell_accuracy_std [S] of the per-cell
    label probes at the snapshot steps [S]; correct_accuracy: [S] a probe of the puzzle's final correctness (when
    both outcomes occur); cell_chance: the majority-label rate."""

    analysis: ClassVar[str] = "probes"
    steps: np.ndarray
    cell_accuracy: np.ndarray
    cell_accuracy_std: np.ndarray
    correct_accuracy: np.ndarray | None = None
    cell_chance: float | None = None


@dataclass
class InnerSettling(StoredResult):
    """Does z_L settle inside each H-cycle? (``inner``): steps [K] recorded outer steps; change [n, B, K, H, L]
    relative change of z_L at each inner update; contraction [n, B, K, H] geometric-mean ratio of successive
    changes; median_change [K, H, L]; settling_fraction [K, H] share of restarts with contraction < 1."""

    analysis: ClassVar[str] = "inner"
    steps: np.ndarray
    median_change: np.ndarray
    update_names: np.ndarray | None = None
    change: np.ndarray | None = None
    contraction: np.ndarray | None = None
    settling_fraction: np.ndarray | None = None
    puzzles: int = 0
    H_cycles: int | None = None
    L_cycles: int | None = None


@dataclass
class PuzzleFixedPoints(StoredResult):
    """The attractors of one puzzle (``fixed_points/p<k>``): the fields of
    :meth:`attractorlab.dynamics.FixedPoints.to_arrays` (``z [M, d]``, eigvals [M, k], spectral_radius, stable,
    residual, count [M], and per start) with each point's label [M] (index into the analysis labels) and
    read-out answer grid [M] as a string; puzzle_index and the number of starts."""

    analysis: ClassVar[str] = "fixed_points"
    eigvals: np.ndarray
    spectral_radius: np.ndarray
    stable: np.ndarray
    residual: np.ndarray
    label: np.ndarray
    grid: np.ndarray
    z: np.ndarray | None = None
    count: np.ndarray | None = None
    rel_residual: np.ndarray | None = None
    assignment: np.ndarray | None = None
    kind: np.ndarray | None = None
    converged: np.ndarray | None = None
    iterations: np.ndarray | None = None
    final: np.ndarray | None = None
    final_residual: np.ndarray | None = None
    slow_assignment: np.ndarray | None = None
    slow_z: np.ndarray | None = None
    slow_residual: np.ndarray | None = None
    slow_grad_ratio: np.ndarray | None = None
    slow_count: np.ndarray | None = None
    z_refined: np.ndarray | None = None
    refined_residual: np.ndarray | None = None
    refined_dtype: np.ndarray | None = None
    puzzle_index: int = -1
    starts: int = 0


__all__ = ["CellProbes", "ConvergenceStudy", "EndStates", "IncompleteResult", "InnerSettling", "LyapunovSurvey",
           "PuzzleBasins", "PuzzleFixedPoints", "RestartSelection", "RunSummary", "ScalingCurves", "StoredResult",
           "TrajectoryEmbedding", "family"]
