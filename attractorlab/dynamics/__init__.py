"""Model-agnostic analysis of batched maps ``f: [N, d] -> [N, d]``: fixed points, Jacobian spectra, basins of
attraction and their geometry, embeddings, and convergence-vs-correctness statistics from run-file arrays
(noise floors, end-state classification under path noise, steps to settle, post-hoc halting).

Every function takes a callable on torch tensors (any float dtype, any device) that acts on rows
independently, plus tensors; nothing here imports the model or h5py. Residual tolerances are relative to the
state norm: a state has converged when ``||f(z) - z|| <= tol * max(||z||, 1)``.
"""

from .basin_measures import BasinEntropy, basin_entropy, boundary_fraction
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
from .lyapunov import REGIMES, LyapunovSpectrum, classify_exponents, lyapunov_exponents
from .noise import (
    NoiseFloor,
    RecordedFloor,
    floor_from_records,
    measure_noise_floor,
    noise_floor,
    outer_step_sigma,
)
from .polishing import Polished, polish, select_attractor
from .settling import (
    HALT_RULES,
    HaltingCurve,
    HaltingCurves,
    HaltReplay,
    Settling,
    halting_curves,
    replay_halting,
    steps_to_settle,
)

__all__ = [
    "ENDING_NAMES",
    "HALT_RULES",
    "KIND_NAMES",
    "REGIMES",
    "AurocResult",
    "BasinEntropy",
    "BasinMap",
    "BasinStats",
    "DifficultyResult",
    "Endings",
    "FixedPoints",
    "HaltReplay",
    "HaltingCurve",
    "HaltingCurves",
    "Linearization",
    "LyapunovSpectrum",
    "NoiseFloor",
    "PCAEmbedder",
    "Polished",
    "RecordedFloor",
    "ScoreROC",
    "Settling",
    "SlowPoints",
    "Spectrum",
    "SplitCurves",
    "UMAPEmbedder",
    "auroc_scores",
    "basin_entropy",
    "basin_map",
    "basin_stability",
    "boundary_fraction",
    "classify_endings",
    "classify_exponents",
    "embed",
    "final_values",
    "find_fixed_points",
    "floor_from_records",
    "halting_curves",
    "jacobian_matrix",
    "jacobian_spectrum",
    "lyapunov_exponents",
    "measure_noise_floor",
    "noise_floor",
    "outer_step_sigma",
    "polish",
    "replay_halting",
    "residual_curves",
    "sample_ball",
    "select_attractor",
    "spectral_radius",
    "steps_to_settle",
    "steps_vs_difficulty",
    "top_singular_values",
]
