"""``attractorlab analyze``: run every analysis a run file allows and store the results under ``/analysis``.

What runs depends on what the file holds:

- always (scalars): ``summary``, ``scaling`` (accuracy vs depth and breadth), ``convergence`` (residual curves
  by outcome, AUROC of convergence scores, steps vs difficulty, how trajectories end);
- with recorded states: ``embedding`` (PCA or UMAP of the trajectories) and ``probes`` (linear decodability);
- with the checkpoint: ``fixed_points`` (from trajectory ends, with Jacobian spectra) and ``basins`` (basin
  stability under the model's own initial-state distribution and a 2-D basin map) for a sample of puzzles; the
  attractors of one puzzle come from :mod:`attractorlab.attractors`.

Results are cached in the run file: a second call skips what is there unless ``force``. An analysis that cannot
run is stored as an empty group whose ``skipped_reason`` says why, so reports can tell the reader.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from attractorlab import checkpoint as ckpt
from attractorlab import dynamics, probing, recording
from attractorlab.attractors import (
    LABELS,
    Landscape,
    PuzzleAttractors,
    attractor_landscape,
    label_states,
    puzzle_attractors,
    to_numpy,
)
from attractorlab.errors import InputError
from attractorlab.model import EquilibriumReasoner, update_names
from attractorlab.results import (
    CellProbes,
    ConvergenceStudy,
    EndStates,
    InnerSettling,
    LyapunovSurvey,
    PuzzleBasins,
    PuzzleFixedPoints,
    RestartSelection,
    RunSummary,
    ScalingCurves,
    StoredResult,
    TrajectoryEmbedding,
)
from attractorlab.rollout import (
    ATTRACTOR_SOLVE,
    RolloutConfig,
    convergence_score,
    scores_by_depth,
    select_lowest_score,
)
from attractorlab.seeds import stream
from attractorlab.solve import summarize_run
from attractorlab.tasks import get_task

ANALYSES = ("summary", "scaling", "convergence", "embedding", "probes", "inner", "end_states", "lyapunov", "selection",
            "fixed_points", "basins")
END_STATES = ("attractor: correct", "attractor: valid, not the solution", "attractor: invalid", "unstable fixed point",
              "no fixed point")
"""How a recorded end state ends after a noise-free polish (the ``end_states`` analysis)."""


@dataclass
class AnalyzeOptions:
    """Sizes of the model-based analyses (defaults finish in minutes on a laptop CPU)."""

    n_puzzles: int = 3  # puzzles sampled for fixed points and basins
    n_polish: int = 20  # puzzles whose recorded end states are polished to their fixed points
    n_lyapunov: int = 8  # puzzles whose recorded end states get their largest Lyapunov exponent
    lyapunov_steps: int = 100  # noise-free outer steps averaged per exponent (after 10 transient steps)
    n_selection: int = 10  # puzzles whose restarts are chosen by their attractors at each recorded depth
    restarts: int = 8  # trajectory ends used as fixed-point starts per puzzle
    basin_samples: int = 64  # initial states per puzzle for basin stability
    grid: int | None = None  # basin map resolution (grid x grid); None: 48 on a GPU, 12 on a CPU
    max_steps: int = 48  # outer steps to reach an attractor
    embed_method: str = "pca"
    max_embed: int = 100  # puzzles drawn in the embedding
    tol: float = 1e-4  # relative residual at which a state counts as a fixed point
    seed: int = 0
    restart_std: float | None = None  # fixed-start models (TRM): restarts and basin samples from a truncated normal
    # of this std (None: the run's --restart-std)

    def __post_init__(self) -> None:
        for name in ("n_puzzles", "n_polish", "n_lyapunov", "lyapunov_steps", "n_selection", "restarts",
                     "basin_samples", "grid", "max_steps", "max_embed"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.basin_samples < 3:
            raise InputError(f"basin_samples must be >= 3 (the basin map's plane passes through three of them), "
                             f"got {self.basin_samples}")
        if self.restart_std is not None and not self.restart_std > 0:
            raise InputError(f"restart_std must be > 0, got {self.restart_std!r}")
        if self.embed_method not in ("pca", "umap"):
            raise InputError(f"embedding method must be pca or umap, got {self.embed_method!r}")


@dataclass
class AnalysisStatus:
    name: str
    status: str  # "computed" | "cached" | "skipped"
    reason: str = ""


# --- scalar analyses (need only the rollout arrays) ---------------------------------------------------------

def summary_arrays(run: recording.Run) -> RunSummary:
    s = summarize_run(run)
    return RunSummary(
        n=s.n, breadth=run.breadth, depth=run.depth, accuracy=s.accuracy, majority_accuracy=s.majority_accuracy,
        pass_at_b=s.pass_at_b, mean_steps=s.mean_steps, median_steps=s.median_steps,
        band_names=np.array(list(s.by_band), dtype=str),
        band_count=np.array([c for c, _ in s.by_band.values()], np.int64),
        band_accuracy=np.array([a for _, a in s.by_band.values()], np.float64),
        source_names=np.array(list(s.by_source), dtype=str),
        source_count=np.array([c for c, _ in s.by_source.values()], np.int64),
        source_accuracy=np.array([a for _, a in s.by_source.values()], np.float64))


def depth_selection(logit_change: np.ndarray, steps: np.ndarray, window: int = 3) -> np.ndarray:
    """``[n, B, T], [n, B] -> [n, T]``: the restart the convergence score selects at each depth ``d`` from the
    first ``d`` steps only (a restart chosen at the final depth may not have been the choice at depth ``d``)."""
    return np.argmin(np.nan_to_num(scores_by_depth(logit_change, steps, window), nan=np.inf), axis=1)


def scaling_arrays(run: recording.Run) -> ScalingCurves:
    """Accuracy vs depth (the restart selected from the first d steps, and any restart) and vs breadth."""
    r = run.rollout
    known = (run.puzzles.solution > 0).any(axis=1)
    correct = r.correct[known]  # [n, B, T]
    rows = np.arange(correct.shape[0])
    by_depth = depth_selection(r.logit_change[known], r.steps[known])  # [n, T]
    breadths = sorted({b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256) if b <= run.breadth} | {run.breadth})
    score = convergence_score(r.logit_change[known], r.steps[known])
    acc_b, oracle_b = [], []
    for b in breadths:
        sel = select_lowest_score(score[:, :b])
        acc_b.append(correct[rows, sel, -1].mean() if len(rows) else np.nan)
        oracle_b.append(correct[:, :b, -1].any(axis=1).mean() if len(rows) else np.nan)
    return ScalingCurves(
        depth_steps=np.arange(1, run.depth + 1),
        depth_accuracy=(np.take_along_axis(correct, by_depth[:, None, :], axis=1)[:, 0].mean(axis=0) if len(rows)
                        else np.full(run.depth, np.nan)),
        depth_oracle=correct.any(axis=1).mean(axis=0) if len(rows) else np.full(run.depth, np.nan),
        breadth_values=np.array(breadths), breadth_accuracy=np.array(acc_b, np.float64),
        breadth_oracle=np.array(oracle_b, np.float64))


def run_noise_floor(run: recording.Run) -> dynamics.RecordedFloor | None:
    """The residual floor of a run made with path noise, read off its records (None for noise-free runs)."""
    cfg = run.config
    noisy = cfg.get("rollout", {}).get("noise", False) and cfg.get("model", {}).get("noise_scale", 0) > 0
    if not noisy:
        return None
    r = run.rollout
    return dynamics.floor_from_records(r.residual, pred=r.pred, steps=r.steps)


def convergence_arrays(run: recording.Run) -> ConvergenceStudy:
    """Residual curves by outcome, AUROC of convergence scores, steps to settle vs rating, how trajectories end
    (against the noise floor under path noise), and post-hoc halting curves (accuracy vs mean steps per rule)."""
    r, p = run.rollout, run.puzzles
    rows = np.arange(run.n)
    sel = r.selected
    correct = r.correct[rows, sel, -1]
    steps = r.steps[rows, sel]
    residual = r.residual[rows, sel]  # [N, T] of the selected restart
    pred = r.pred[rows, sel]  # [N, T, L]
    curves = dynamics.residual_curves(residual, correct, steps=steps)
    roc = dynamics.auroc_scores(residual, correct, halt_logit=r.halt_logit[rows, sel],
                                logit_change=r.logit_change[rows, sel], steps=steps)
    recorded = run_noise_floor(run)
    floor = recorded.floor if recorded is not None and np.isfinite(recorded.floor) else None
    # the residual has settled once it stays within the noise floor (noise-free runs: the halting tolerance)
    settle_floor = floor if floor is not None else float(run.config.get("rollout", {}).get("tol", 1e-3))
    settle = dynamics.steps_to_settle(pred=pred, residual=residual, floor=settle_floor, steps=steps)
    corr = dynamics.steps_vs_difficulty(settle, p.rating, which="answer")
    endings = dynamics.classify_endings(r.residual, r.valid, pred=r.pred, steps=r.steps, floor=floor)
    halting = dynamics.halting_curves(residual, r.halt_logit[rows, sel], pred, r.correct[rows, sel], steps=steps)
    task = get_task(run.task)
    easiest = task.difficulty_band(p.rating) == task.bands[0] if task.bands else np.zeros(run.n, bool)
    scores, rules = roc.scores, halting.curves
    return ConvergenceStudy(
        steps_axis=curves.step, **{f"residual_{group}_{stat}": getattr(curves, f"{group}_{stat}")
                                   for group in ("correct", "incorrect") for stat in ("median", "q25", "q75")},
        score_names=np.array(list(scores), dtype=str), auroc=np.array([s.auroc for s in scores.values()], np.float64),
        fpr={n: s.fpr for n, s in scores.items()}, tpr={n: s.tpr for n, s in scores.items()},
        steps=steps, settle_answer=settle.answer_step, settle_residual=settle.residual_step,
        rating=np.asarray(p.rating), correct=correct, ending_names=np.array(endings.names, dtype=str),
        ending_counts=np.asarray(endings.counts), ending=np.asarray(endings.label), period=np.asarray(endings.period),
        halt_rules=np.array(list(rules), dtype=str),
        halt_values={r: np.asarray(c.values, np.float64) for r, c in rules.items()},
        halt_mean_steps={r: c.mean_steps for r, c in rules.items()},
        halt_accuracy={r: c.accuracy for r, c in rules.items()},
        spearman_rho=corr.rho, spearman_p=corr.pvalue, noise_floor=floor if floor else 0.0,
        easy_band=task.bands[0] if task.bands else "", easy_count=int(easiest.sum()),
        easy_settled_within_5=int((easiest & (settle.answer_step <= 5)).sum()))


# --- analyses of recorded states ---------------------------------------------------------------------------

def _state_matrix(run: recording.Run, idx: np.ndarray) -> np.ndarray:
    """Recorded states of puzzles ``idx`` as float32 ``[n, B, S, F]``."""
    data = run.states.data[np.sort(idx)]
    return data.reshape(*data.shape[:3], -1).astype(np.float32)


def embedding_arrays(run: recording.Run, opts: AnalyzeOptions) -> TrajectoryEmbedding:
    idx = np.arange(min(run.n, opts.max_embed))
    X = _state_matrix(run, idx)
    n, b, s, f = X.shape
    coords, fitted = dynamics.embed(X.reshape(-1, f), method=opts.embed_method, n_components=2,
                                    random_state=opts.seed)
    ev = getattr(fitted, "explained_variance_ratio_", None)
    return TrajectoryEmbedding(coords=np.asarray(coords, np.float32).reshape(n, b, s, 2),
                               steps=np.asarray(run.states.steps), puzzle_index=idx,
                               correct=run.rollout.correct[idx][:, :, -1], method=opts.embed_method,
                               explained_variance=None if ev is None else np.asarray(ev, np.float64))


def _inner_predecessors(steps: np.ndarray, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """For a ``cycles`` layout (``steps [S]``, every update in ``names`` kept): the snapshots that follow a z_L
    update, ``[K, H, L]`` indices (K recorded outer steps), and the snapshot each one's z_L comes from,
    ``[K, H, L]`` (-1 where that state is not stored: the first update of a step whose previous step was not
    recorded)."""
    is_l = np.array([".L" in name for name in names])
    n_h = sum(name.endswith(".H") for name in names)
    per = len(names)
    k = (len(steps) - 1) // per
    at = 1 + np.arange(k * per).reshape(k, per)  # snapshot of each (recorded step, update)
    prev = at - 1
    first = steps[at[:, 0]] - 1  # the outer step the first update starts from
    ok_first = np.r_[first[:1] == 0, first[1:] == steps[at[:-1, -1]]]
    prev[:, 0] = np.where(ok_first, prev[:, 0], -1)
    shape = (k, n_h, -1)
    return at[:, is_l].reshape(shape), prev[:, is_l].reshape(shape)


def _all_updates(run: recording.Run) -> bool:
    """Whether a ``cycles`` run kept every inner update of its model's outer step."""
    m = run.config.get("model", {})
    return run.states.update_names == update_names(m.get("H_cycles", 0), m.get("L_cycles", 0))


def _ends_stored(run: recording.Run) -> bool:
    """Whether each restart's last snapshot is its end state (a ``cycles`` run must have kept the closing update)."""
    if run.states.mode != "cycles":
        return True
    return run.states.update_names[-1] == f"H{run.config.get('model', {}).get('H_cycles')}.H"


def inner_arrays(run: recording.Run, opts: AnalyzeOptions) -> InnerSettling:
    """Does z_L settle inside each H-cycle? From a ``--states cycles`` run that kept every inner update: the
    relative change of z_L at each of its updates, ``||z_L^(l) - z_L^(l-1)|| / ||z_L^(l)||`` (l = 1..L_cycles of
    H-cycle h; z_L^(0) the z_L the cycle starts from; NaN where that state is not stored or the restart had
    halted), ``change [n, B, K, H, L]`` for the K recorded outer steps, and its contraction across the cycle,
    ``contraction [n, B, K, H]``: the geometric mean ratio of successive changes (< 1: z_L settles while z_H is
    held)."""
    n = min(run.n, 300)
    steps, names = np.asarray(run.states.steps), run.states.update_names
    at, prev = _inner_predecessors(steps, names)
    k, n_h, n_l = at.shape
    change = np.full((n, run.breadth, k, n_h, n_l), np.nan)
    halted = np.asarray(run.rollout.steps[:n])[:, :, None] < steps[at[:, 0, 0]][None, None, :]  # [n, B, K]
    for i in range(n):
        z_L = np.asarray(run.states.data[i][:, :, 1], np.float32).reshape(run.breadth, len(steps), -1)
        now, before = z_L[:, at], z_L[:, np.maximum(prev, 0)]
        rel = np.linalg.norm(now - before, axis=-1) / np.maximum(np.linalg.norm(now, axis=-1), 1e-30)
        change[i] = np.where((prev >= 0)[None] & ~halted[i][:, :, None, None], rel, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices (halted rows, unstored predecessors)
        contraction = np.exp(np.nanmean(np.diff(np.log(change), axis=-1), axis=-1)) if n_l > 1 else \
            np.full(change.shape[:-1], np.nan)
        median = np.nanmedian(change.reshape(-1, k, n_h, n_l), axis=0)
        settling = np.nanmean(np.where(np.isnan(contraction), np.nan, contraction < 1).reshape(-1, k, n_h), axis=0)
    return InnerSettling(steps=steps[at[:, 0, 0]], update_names=np.array(names, dtype=str), change=change,
                         contraction=contraction, median_change=median, settling_fraction=settling, puzzles=n,
                         H_cycles=n_h, L_cycles=n_l)


def probe_arrays(run: recording.Run, opts: AnalyzeOptions) -> CellProbes:
    """Per-cell label probes on z_H (full states) or on each cell's projected state; correctness probe."""
    n = min(run.n, 300)
    data = np.asarray(run.states.data[np.arange(n)], np.float32)[:, 0]  # restart 0: [n, S, *shape]
    cells = data if run.states.projection is not None else data[:, :, 0]  # [n, S, L, h]
    targets = get_task(run.task).probe_targets(run.puzzles.tokens[:n], run.puzzles.solution[:n])
    result = probing.probe_cells(cells, targets, seed=opts.seed)
    correct = run.rollout.correct[:n, 0, -1]
    both = 1 < correct.sum() < n - 1
    return CellProbes(steps=np.asarray(run.states.steps), cell_accuracy=result.accuracy_mean,
                      cell_accuracy_std=result.accuracy_std, cell_chance=result.chance,
                      correct_accuracy=probing.probe_correctness(data.reshape(n, data.shape[1], -1), correct,
                                                                 seed=opts.seed).accuracy_mean if both else None)


# --- analyses that need the model ---------------------------------------------------------------------------

def distinct_endings(final_pred: np.ndarray) -> np.ndarray:
    """``[N, B, L] -> [N]``: how many different final answers the B restarts of each puzzle reached."""
    weights = np.random.default_rng(0).integers(1, 2**31, final_pred.shape[-1], dtype=np.int64)
    keys = np.sort((final_pred.astype(np.int64) * weights).sum(-1), axis=1)  # a hash of each answer, [N, B]
    return 1 + (np.diff(keys, axis=1) != 0).sum(axis=1)


def sample_puzzles(run: recording.Run, k: int, seed: int) -> np.ndarray:
    """Up to k puzzles: first those whose restarts ended on more than one answer (more than one attractor, or a
    spurious one beside the solution), then the rest; within each group alternating correct and incorrect
    (selected restart) when both exist."""
    rows = np.arange(run.n)
    ok = run.rollout.correct[rows, run.rollout.selected, -1]
    several = distinct_endings(run.rollout.lazy("pred")[:, :, -1]) > 1
    rng = np.random.default_rng(seed)
    picked: list[int] = []
    for group in (several, ~several):
        good, bad = rng.permutation(rows[group & ok]), rng.permutation(rows[group & ~ok])
        picked += [x for pair in zip(good, bad, strict=False) for x in pair]
        picked += [x for x in np.concatenate([good, bad]) if x not in picked]
    return np.array(picked[:k], dtype=np.int64)


def fixed_point_arrays(model: EquilibriumReasoner, run: recording.Run, opts: AnalyzeOptions,
                       puzzle: int, k: int) -> PuzzleFixedPoints:
    tokens, solution = run.puzzles.tokens[puzzle], run.puzzles.solution[puzzle]
    found = puzzle_attractors(model, tokens, solution, restarts=opts.restarts, max_steps=opts.max_steps,
                              seed=stream(opts.seed, "analyze.fixed_points", k), tol=opts.tol,
                              restart_std=opts.restart_std or RolloutConfig.restart_std)
    return PuzzleFixedPoints(**found.fixed.to_arrays(), label=found.label, grid=found.answers,
                             puzzle_index=int(puzzle), starts=found.starts)


def end_state_arrays(model: EquilibriumReasoner, run: recording.Run, opts: AnalyzeOptions) -> EndStates:
    """Each recorded end state of the first ``n_polish`` puzzles, polished noise-free to the fixed point it sits at
    (:func:`attractorlab.dynamics.polish`) and classified by :data:`END_STATES`: whether path noise hid an
    attractor (correct, spurious or invalid), an unstable fixed point, or no fixed point at all."""
    n = min(run.n, opts.n_polish)
    cls = np.zeros((n, run.breadth), np.int64)
    radius = np.full((n, run.breadth), np.nan)
    distance = np.full((n, run.breadth), np.nan)
    for i in range(n):
        tokens, solution = run.puzzles.tokens[i], run.puzzles.solution[i]
        ends = torch.as_tensor(np.asarray(run.states.data[i][:, -1], np.float32)).flatten(1).to(model.device)
        polished = dynamics.polish(model.as_map(torch.as_tensor(tokens[None], dtype=torch.long)), ends, tol=opts.tol)
        label, _ = label_states(model, polished.z.float(), tokens, solution)
        fixed, stable = to_numpy(polished.fixed).astype(bool), to_numpy(polished.stable).astype(bool)
        cls[i] = np.where(~fixed, 4, np.where(stable, label, 3))
        radius[i], distance[i] = to_numpy(polished.spectral_radius), to_numpy(polished.distance)
    return EndStates(puzzle_index=np.arange(n), end_state=cls, spectral_radius=radius, distance=distance,
                     ending_names=np.array(END_STATES, dtype=str),
                     ending_counts=np.bincount(cls.ravel(), minlength=len(END_STATES)), puzzles=n)


def lyapunov_arrays(model: EquilibriumReasoner, run: recording.Run, opts: AnalyzeOptions) -> LyapunovSurvey:
    """The largest Lyapunov exponent of the noise-free outer step along the orbit from each recorded end state
    of the first ``n_lyapunov`` puzzles (:func:`attractorlab.dynamics.lyapunov_exponents`), and its regime
    (:data:`attractorlab.dynamics.REGIMES`): what the rollouts that did not converge are doing (chaos, a neutral
    drift, or a slow approach to a fixed point or a stable cycle)."""
    n = min(run.n, opts.n_lyapunov)
    exponent, stderr = np.zeros((n, run.breadth)), np.zeros((n, run.breadth))
    for i in range(n):
        ends = torch.as_tensor(np.asarray(run.states.data[i][:, -1], np.float32)).flatten(1).to(model.device)
        f = model.as_map(torch.as_tensor(run.puzzles.tokens[i][None], dtype=torch.long))
        gen = torch.Generator().manual_seed(stream(opts.seed, "analyze.lyapunov", i))
        spec = dynamics.lyapunov_exponents(f, ends, k=1, steps=opts.lyapunov_steps, transient=10,
                                           blocks=min(10, opts.lyapunov_steps), generator=gen)
        exponent[i], stderr[i] = to_numpy(spec.largest), to_numpy(spec.stderr[:, 0])
    regime = dynamics.classify_exponents(exponent, stderr)
    correct = np.asarray(run.rollout.correct[:n, :, -1], bool)
    return LyapunovSurvey(puzzle_index=np.arange(n), exponent=exponent, stderr=stderr, regime=regime,
                          correct=correct, regime_names=np.array(dynamics.REGIMES, dtype=str),
                          regime_counts=np.bincount(regime.ravel(), minlength=len(dynamics.REGIMES)), puzzles=n,
                          steps=opts.lyapunov_steps)


def _selection_depths(steps: np.ndarray, most: int = 6) -> np.ndarray:
    """Indices into the snapshot steps: at most ``most`` depths >= 1, spread on a log scale, the last included."""
    positive = np.flatnonzero(steps > 0)
    if len(positive) <= most:
        return positive
    targets = np.geomspace(steps[positive[0]], steps[positive[-1]], most)
    return np.unique([positive[np.argmin(np.abs(np.log(steps[positive]) - np.log(t)))] for t in targets])


def selection_arrays(model: EquilibriumReasoner, run: recording.Run, opts: AnalyzeOptions) -> RestartSelection:
    """Restart selection by depth for the first ``n_selection`` puzzles: the attractor-aware choice
    (:func:`attractorlab.dynamics.select_attractor` on the restarts' states polished noise-free at that depth,
    the convergence score as fallback) against the convergence-score choice and the oracle (any restart right)."""
    n, r = min(run.n, opts.n_selection), run.rollout
    snaps = _selection_depths(np.asarray(run.states.steps))
    depths = np.asarray(run.states.steps)[snaps].astype(np.int64)
    correct = np.asarray(r.correct[:n], bool)  # [n, B, T]
    scores = scores_by_depth(r.logit_change[:n], r.steps[:n])  # [n, B, T]
    attractor, convergence = np.zeros((n, len(depths)), bool), np.zeros((n, len(depths)), bool)
    at_attractor = np.zeros((n, len(depths)), np.int64)
    for i in range(n):
        f = model.as_map(torch.as_tensor(run.puzzles.tokens[i][None], dtype=torch.long))
        for j, (snap, d) in enumerate(zip(snaps, depths, strict=True)):
            states = torch.as_tensor(np.asarray(run.states.data[i][:, snap], np.float32)).flatten(1)
            polished = dynamics.polish(f, states.to(model.device), **{**ATTRACTOR_SOLVE, "tol": opts.tol})
            fallback = np.nan_to_num(scores[i, :, d - 1], nan=np.inf)
            attractor[i, j] = correct[i, dynamics.select_attractor(polished, fallback), d - 1]
            convergence[i, j] = correct[i, int(np.argmin(fallback)), d - 1]
            at_attractor[i, j] = int(to_numpy(polished.stable).sum())
    oracle = correct[:, :, depths - 1].any(axis=1)
    return RestartSelection(depths=depths, attractor_correct=attractor, convergence_correct=convergence,
                            oracle_correct=oracle, restarts_at_attractor=at_attractor,
                            attractor_accuracy=attractor.mean(0), convergence_accuracy=convergence.mean(0),
                            oracle_accuracy=oracle.mean(0), puzzles=n)


def basin_arrays(model: EquilibriumReasoner, run: recording.Run, opts: AnalyzeOptions, puzzle: int,
                 fixed: PuzzleFixedPoints, k: int, progress: bool) -> PuzzleBasins:
    tok = torch.as_tensor(run.puzzles.tokens[puzzle][None], dtype=torch.long)
    f = model.as_map(tok)
    gen = torch.Generator(device=model.device).manual_seed(stream(opts.seed, "analyze.basins", k))
    with torch.no_grad():
        samples = model.init_state(tok.expand(opts.basin_samples, -1), generator=gen,
                                   restart_std=opts.restart_std or RolloutConfig.restart_std).flatten()
    stable = np.asarray(fixed.stable, bool)
    attractors = torch.as_tensor(fixed.z[stable]).to(model.device)
    att_label, att_grid = fixed.label[stable], fixed.grid[stable]
    stats = dynamics.basin_stability(f, attractors, samples, max_steps=opts.max_steps, tol=opts.tol,
                                     collect_new=False, progress=progress)
    # The slice: through the first attractor (the correct one when found) and two sampled initial states.
    order = np.argsort(att_label, kind="stable")
    anchors, names = [], []
    if len(order):
        anchors.append(attractors[order[0]])
        names.append(f"attractor ({LABELS[att_label[order[0]]]})")
    for i in range(3 - len(anchors)):
        anchors.append(samples[i])
        names.append(f"initial state {i + 1}")
    bmap = dynamics.basin_map(f, torch.stack(anchors), resolution=(opts.grid, opts.grid), attractors=attractors,
                              max_steps=opts.max_steps, tol=opts.tol, collect_new=False, progress=progress)
    labels = to_numpy(bmap.label)
    entropy = dynamics.basin_entropy(labels, eps=max(2, min(opts.grid // 4, 20)))
    fp_z = torch.as_tensor(fixed.z).to(model.device)
    fp_coords = to_numpy((fp_z - bmap.origin.to(fp_z)) @ bmap.basis.to(fp_z).T)
    return PuzzleBasins(
        fraction=np.append(to_numpy(stats.fraction), stats.unassigned),
        stderr=np.append(to_numpy(stats.stderr), stats.unassigned_stderr), attractor_label=att_label,
        attractor_grid=att_grid, map_label=labels, map_steps=to_numpy(bmap.steps), xs=to_numpy(bmap.xs),
        ys=to_numpy(bmap.ys),
        anchor_coords=to_numpy(bmap.anchor_coords), anchor_names=np.array(names, dtype=str), fp_coords=fp_coords,
        fp_stable=stable, puzzle_index=int(puzzle), samples=opts.basin_samples,
        basin_entropy=entropy.sb, boundary_basin_entropy=entropy.sbb,
        boundary_fraction=dynamics.boundary_fraction(labels), entropy_box=entropy.eps)


# --- orchestration -------------------------------------------------------------------------------------------

def resolve_checkpoint(run: recording.Run, given: str | None) -> str | None:
    """The checkpoint to use: ``given`` or the run's recorded path; its sha256 must match the run's."""
    path = given or run.attrs.get("checkpoint_path")
    if not path:
        return None
    if not os.path.isfile(path):
        if given:
            raise InputError(f"{given} is a directory, not a checkpoint file" if os.path.isdir(given)
                             else f"checkpoint not found: {given}")
        return None
    expected = run.attrs.get("checkpoint_sha256")
    if expected and ckpt.file_sha256(path) != expected:
        raise InputError(f"checkpoint {path} does not match the run (sha256 differs from the one recorded in "
                         f"{run.path}); pass the checkpoint the run was made with")
    return path


def analyze(run_path: str, *, checkpoint: str | None = None, only: list[str] | None = None, force: bool = False,
            options: AnalyzeOptions | None = None, device: str | torch.device = "cpu", progress: bool = True,
            log: Callable[[str], None] = print) -> list[AnalysisStatus]:
    """Run the analyses that ``run_path``'s contents allow; results go to ``/analysis/<name>``."""
    opts = options or AnalyzeOptions()
    if opts.grid is None:  # basin maps as fine as the device makes cheap
        opts = dataclasses.replace(opts, grid=48 if torch.device(device).type == "cuda" else 12)
    wanted = list(ANALYSES) if not only else list(only)
    unknown = sorted(set(wanted) - set(ANALYSES))
    if unknown:
        raise InputError(f"unknown analysis {', '.join(unknown)}; choose from {', '.join(ANALYSES)}")
    with recording.open_run(run_path) as run:
        if run.n == 0:
            raise InputError(f"{run_path} holds no finished puzzles yet")
        ckpt_path = resolve_checkpoint(run, checkpoint)
        cached = set(run.analysis_keys())
        if opts.restart_std is None:
            recorded = run.config.get("rollout", {}).get("restart_std", RolloutConfig.restart_std)
            opts = dataclasses.replace(opts, restart_std=float(recorded))
    statuses: list[AnalysisStatus] = []

    def store(name: str, result: StoredResult) -> None:
        recording.write_analysis(run_path, name, result.to_arrays(), result.to_attrs(), overwrite=True)

    def skip(name: str, reason: str) -> None:
        recording.write_analysis(run_path, name, {}, {"skipped_reason": reason}, overwrite=True)
        statuses.append(AnalysisStatus(name, "skipped", reason))
        log(f"  {name:<13} skipped: {reason}")

    from tqdm import tqdm

    model = None
    bar = tqdm(wanted, disable=not progress, unit="analysis", dynamic_ncols=True)
    for name in bar:
        bar.set_description(name)
        if not force and any(k.startswith(name + "/") for k in cached) or (
                not force and name in cached and not _was_skipped(run_path, name)):
            statuses.append(AnalysisStatus(name, "cached"))
            log(f"  {name:<13} cached (use --force to recompute)")
            continue
        with recording.open_run(run_path) as run:
            if name in ("embedding", "probes") and not run.has_states:
                skip(name, "the run has no recorded states (solve with --states final|all)")
                continue
            if name == "probes" and (run.states.mode != "all"):
                skip(name, "probes need states at every recorded step (solve with --states all)")
                continue
            if name == "probes" and run.n < probing.N_SPLITS:
                skip(name, f"probes are cross-validated over puzzles: they need at least {probing.N_SPLITS} "
                     f"puzzles, the run has {run.n}")
                continue
            if name in ("end_states", "lyapunov") and not (run.has_states and run.states.projection is None
                                                           and _ends_stored(run)):
                skip(name, "needs full recorded end states (solve with --states final|all, without --project)")
                continue
            if name == "inner" and not (run.has_states and run.states.mode == "cycles"
                                        and run.states.projection is None and _all_updates(run)):
                skip(name, "needs the state after every inner update (solve with --states cycles, no --capture, "
                     "without --project)")
                continue
            if name == "selection" and not (run.has_states and run.states.mode == "all"
                                            and run.states.projection is None):
                skip(name, "needs full recorded states at every depth (solve with --states all, without --project)")
                continue
            if name in ("end_states", "lyapunov", "selection", "fixed_points", "basins") and ckpt_path is None:
                skip(name, "no checkpoint available (pass --checkpoint)")
                continue
            log(f"  {name:<13} computing ...")
            if name == "summary":
                store(name, summary_arrays(run))
            elif name == "scaling":
                store(name, scaling_arrays(run))
            elif name == "convergence":
                store(name, convergence_arrays(run))
            elif name == "embedding":
                store(name, embedding_arrays(run, opts))
            elif name == "probes":
                store(name, probe_arrays(run, opts))
            elif name == "inner":
                store(name, inner_arrays(run, opts))
            else:
                model = model or ckpt.load(ckpt_path, device).requires_grad_(False)
                if name == "end_states":
                    store(name, end_state_arrays(model, run, opts))
                elif name == "lyapunov":
                    store(name, lyapunov_arrays(model, run, opts))
                elif name == "selection":
                    store(name, selection_arrays(model, run, opts))
                else:
                    _model_analysis(name, model, run, run_path, opts, progress, store)
        statuses.append(AnalysisStatus(name, "computed"))
    return statuses


def _model_analysis(name: str, model: EquilibriumReasoner, run: recording.Run, run_path: str,
                    opts: AnalyzeOptions, progress: bool, store: Callable[[str, StoredResult], None]) -> None:
    puzzles = sample_puzzles(run, opts.n_puzzles, opts.seed)
    for k, puzzle in enumerate(puzzles):
        if name == "fixed_points":
            store(f"fixed_points/p{k}", fixed_point_arrays(model, run, opts, int(puzzle), k))
        else:
            key = f"fixed_points/p{k}"
            if key not in run.analysis_keys():
                store(key, fixed_point_arrays(model, run, opts, int(puzzle), k))
            with recording.open_run(run_path) as fresh:
                fixed = PuzzleFixedPoints.from_result(fresh.read_analysis(key)).need("z")
            store(f"basins/p{k}", basin_arrays(model, run, opts, int(puzzle), fixed, k, progress))


def _was_skipped(run_path: str, name: str) -> bool:
    with recording.open_run(run_path) as run:
        return "skipped_reason" in run.read_analysis(name).attrs


# LABELS, PuzzleAttractors, puzzle_attractors, Landscape and attractor_landscape live in attractorlab.attractors
__all__ = ["ANALYSES", "END_STATES", "LABELS", "AnalysisStatus", "AnalyzeOptions", "Landscape", "PuzzleAttractors",
           "analyze", "attractor_landscape", "basin_arrays", "convergence_arrays", "depth_selection",
           "distinct_endings", "embedding_arrays", "end_state_arrays", "fixed_point_arrays", "inner_arrays",
           "lyapunov_arrays", "probe_arrays", "puzzle_attractors", "resolve_checkpoint", "run_noise_floor",
           "sample_puzzles", "scaling_arrays", "selection_arrays", "summary_arrays"]
