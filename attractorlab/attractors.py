"""The attractors of one puzzle: the noise-free rollout ends of the puzzle from random initial states -> the fixed
points polished from them (:func:`attractorlab.dynamics.find_fixed_points`, with Jacobian spectra and stability)
-> labels by the task's read-out (:data:`LABELS`: correct, valid but not the solution, invalid) -> the basin
stability of the stable ones from fresh initial states (:func:`attractor_landscape`).

Used by :mod:`attractorlab.analyze` (the ``fixed_points`` and ``end_states`` analyses), :mod:`attractorlab.landscape`
(the landscape across training), the probes and the notebooks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from attractorlab import dynamics
from attractorlab.dynamics.fixed_points import to_numpy
from attractorlab.model import EquilibriumReasoner, LatentState
from attractorlab.rollout import RolloutConfig, rollout
from attractorlab.seeds import stream
from attractorlab.tasks import get_task

LABELS = ("correct", "valid, not the solution", "invalid")
"""How a fixed point's read-out relates to the puzzle; :attr:`PuzzleAttractors.label` indexes it."""


def label_states(model: EquilibriumReasoner, z: torch.Tensor, tokens: np.ndarray,
                 solution: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Readout of flat states ``[M, d]`` -> (label [M] in LABELS order, answers [M] as strings)."""
    if len(z) == 0:
        return np.zeros(0, np.int64), np.zeros(0, dtype=str)
    c, task = model.config, get_task(model.config.task)
    with torch.no_grad():
        logits, _ = model.readout(LatentState.unflatten(z.to(model.device).float(), c.seq_len, c.hidden_size))
    answers = task.answer(logits.float())
    inputs = torch.as_tensor(np.broadcast_to(tokens, answers.shape).copy(), device=answers.device)
    valid = task.is_valid(inputs, answers).cpu().numpy()
    right = task.is_correct(answers, torch.as_tensor(np.broadcast_to(solution, answers.shape).copy())).cpu().numpy()
    label = np.where(right, 0, np.where(valid, 1, 2))
    return label, task.answer_strings(answers.cpu().numpy())


def rollout_ends(model: EquilibriumReasoner, tokens: np.ndarray, solution: np.ndarray, restarts: int, depth: int,
                 seed: int, restart_std: float, noise: bool = False) -> torch.Tensor:
    """The flat final states ``[restarts, d]`` of ``restarts`` rollouts of one puzzle (``tokens, solution [L]``)
    run ``depth`` outer steps, noise-free unless ``noise``."""
    cfg = RolloutConfig(depth=depth, breadth=restarts, seed=seed, noise=noise, restart_std=restart_std)
    res = rollout(model, torch.as_tensor(tokens[None], dtype=torch.long), torch.as_tensor(solution[None]), cfg,
                  states="final",
                  state_fn=lambda s: s.flatten())
    return torch.as_tensor(res.states[0, :, 0])  # [restarts, d]


@dataclass
class PuzzleAttractors:
    """The fixed points found from the noise-free rollout ends of one puzzle, labelled by their read-out.

    fixed: the :class:`attractorlab.dynamics.FixedPoints` (``z [M, d]``, spectra, stability); label: ``[M]`` index
    into :data:`LABELS`; answers: ``[M]`` read-out answers as strings; starts: rollout ends used as starts.
    """

    fixed: dynamics.FixedPoints
    label: np.ndarray
    answers: np.ndarray
    starts: int

    @property
    def stable(self) -> np.ndarray:
        return to_numpy(self.fixed.stable).astype(bool)


def puzzle_attractors(model: EquilibriumReasoner, tokens: np.ndarray, solution: np.ndarray, *, restarts: int = 8,
                      max_steps: int = 48, seed: int = 0, tol: float | None = None, k: int = 6,
                      restart_std: float = 1.0, noise: bool = False) -> PuzzleAttractors:
    """Rollouts of one puzzle (``tokens, solution [L]``) from ``restarts`` random initial states, noise-free unless
    ``noise`` (then with the model's path noise) -> the fixed points of the noise-free map polished from their
    ends (with the top ``k`` Jacobian eigenvalues) -> labels by read-out. A fixed-start model (TRM) draws its
    restarts from a truncated normal of std ``restart_std``."""
    f = model.as_map(torch.as_tensor(tokens[None], dtype=torch.long))
    z0 = rollout_ends(model, tokens, solution, restarts, max_steps, seed, restart_std, noise)
    fps = dynamics.find_fixed_points(f, z0.to(model.device), k=k, tol=tol)
    label, answers = label_states(model, torch.as_tensor(fps.z), tokens, solution)
    return PuzzleAttractors(fps, label, answers, len(z0))


@dataclass
class Landscape:
    """One puzzle's attractor landscape: ``at_stable`` the share of restarts whose noise-free end converged to a
    stable fixed point, ``attractors`` how many distinct ones, ``correct_basin`` the basin stability of the correct
    attractor (0 when none was found), spectral radii ``[K]`` of the correct and of the other attractors; per
    attractor ``[A]``: its read-out ``answers``, ``labels`` (:data:`LABELS` order), ``radius`` and ``basin``
    (share of the basin samples that reach it; all 0 when no correct attractor was found, as basins are then not
    sampled)."""

    at_stable: float
    attractors: int
    correct_found: bool
    correct_basin: float
    radius_correct: np.ndarray
    radius_spurious: np.ndarray
    answers: np.ndarray
    labels: np.ndarray
    radius: np.ndarray
    basin: np.ndarray


def attractor_landscape(model: EquilibriumReasoner, tokens: np.ndarray, solution: np.ndarray, *, restarts: int = 8,
                        samples: int = 32, max_steps: int = 48, seed: int = 0, restart_std: float = 1.0,
                        tol: float = 1e-4, all_basins: bool = False, noise: bool = False) -> Landscape:
    """:func:`puzzle_attractors` of one puzzle (``tokens, solution [L]``), then the basin stability of its
    attractors from ``samples`` fresh initial states (the model's own distribution; a fixed-start model's
    restarts: a truncated normal of std ``restart_std``) iterated noise-free for up to ``max_steps``; basins are
    sampled only when a correct attractor exists unless ``all_basins``.

    ``noise``: the restarts and the basin samples first run ``max_steps`` outer steps with the model's path noise
    (e.g. TRM given test-time noise); the attractor a noisy orbit belongs to is then the one its noise-free
    continuation reaches, so ``at_stable`` and the basins say where the noisy dynamics end."""
    att = puzzle_attractors(model, tokens, solution, restarts=restarts, max_steps=max_steps, seed=seed,
                            restart_std=restart_std, noise=noise)
    stable, radius = att.stable, to_numpy(att.fixed.spectral_radius)
    correct = stable & (att.label == 0)
    basin = np.zeros(int(stable.sum()))
    if correct.any() or (all_basins and stable.any()):
        tok = torch.as_tensor(tokens[None], dtype=torch.long)
        if noise:
            starts = rollout_ends(model, tokens, solution, samples, max_steps, stream(seed, "analyze.basins"),
                                  restart_std, noise=True).to(model.device)
        else:
            gen = torch.Generator(device=model.device).manual_seed(stream(seed, "analyze.basins"))
            with torch.no_grad():
                starts = model.init_state(tok.expand(samples, -1), generator=gen, restart_std=restart_std).flatten()
        stats = dynamics.basin_stability(model.as_map(tok), att.fixed.z[torch.as_tensor(stable)].to(model.device),
                                         starts, max_steps=max_steps, tol=tol, collect_new=False)
        basin = to_numpy(stats.fraction).astype(np.float64)
    return Landscape(at_stable=float(to_numpy(att.fixed.count)[stable].sum() / att.starts),
                     attractors=int(stable.sum()),
                     correct_found=bool(correct.any()), correct_basin=float(basin[correct[stable]].sum()),
                     radius_correct=radius[correct], radius_spurious=radius[stable & ~correct],
                     answers=np.asarray(att.answers)[stable], labels=att.label[stable], radius=radius[stable],
                     basin=basin)
