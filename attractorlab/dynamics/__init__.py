"""Model-agnostic analysis of batched maps ``f: [N, d] -> [N, d]``: fixed points, Jacobian spectra, basins of
attraction, embeddings, and convergence-vs-correctness statistics from run-file arrays.

Every function takes a callable on torch tensors (any float dtype, any device) that acts on rows
independently, plus tensors; nothing here imports the model or h5py. Residual tolerances are relative to the
state norm: a state has converged when ``||f(z) - z|| <= tol * max(||z||, 1)``.
"""

from .basins import BasinMap, BasinStats, basin_map, basin_stability, sample_ball
from .convergence import (
    ENDING_NAMES,
    AurocResult,
    DifficultyResult,
    Endings,
    ScoreROC,
    SplitCurves,
    auroc_scores,
    classify_endings,
    final_values,
    residual_curves,
    steps_vs_difficulty,
)
from .embedding import PCAEmbedder, UMAPEmbedder, embed
from .fixed_points import KIND_NAMES, FixedPoints, SlowPoints, find_fixed_points
from .jacobian import (
    Linearization,
    Spectrum,
    jacobian_matrix,
    jacobian_spectrum,
    spectral_radius,
    top_singular_values,
)

__all__ = [
    "ENDING_NAMES",
    "KIND_NAMES",
    "AurocResult",
    "BasinMap",
    "BasinStats",
    "DifficultyResult",
    "Endings",
    "FixedPoints",
    "Linearization",
    "PCAEmbedder",
    "ScoreROC",
    "SlowPoints",
    "Spectrum",
    "SplitCurves",
    "UMAPEmbedder",
    "auroc_scores",
    "basin_map",
    "basin_stability",
    "classify_endings",
    "embed",
    "final_values",
    "find_fixed_points",
    "jacobian_matrix",
    "jacobian_spectrum",
    "residual_curves",
    "sample_ball",
    "spectral_radius",
    "steps_vs_difficulty",
    "top_singular_values",
]
