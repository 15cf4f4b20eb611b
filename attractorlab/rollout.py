"""Test-time scaling: iterate the reasoner deep (depth) and wide (breadth), halt adaptively, select.

One call of :func:`rollout` runs ``n`` instances x ``B`` random restarts for up to ``T`` outer steps as one batch.
Rows that halt are dropped from the batch (compaction), so easy instances that converge in a few steps stop
costing compute; their recorded values are frozen at the halting step. Memory stays flat in depth: no graph
is kept and only per-step scalars, read-out answers and grades (plus optional state snapshots) are stored.
The task of the model (``model.config.task``) reads answers out of the logits and grades them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from attractorlab import dynamics
from attractorlab.errors import InputError
from attractorlab.graphed import graphed_step, require_cuda_graphs
from attractorlab.model import EquilibriumReasoner, LatentState, autocast
from attractorlab.seeds import check_seed
from attractorlab.tasks import Task, get_task

SELECT_RULES = ("convergence", "reference", "majority", "attractor")
ATTRACTOR_SOLVE = {"tol": 1e-4, "krylov_dim": 10, "max_iter": 15, "fallback_iters": 0}
"""The fixed-point solve of the attractor-aware selection (:func:`select_by_attractor`, the ``selection`` analysis):
a restart that sits at an attractor converges in a few Newton steps from where it ended, so the solve is bounded
(no first-order fallback); an end it does not converge from is not at an attractor. On the shipped model's hard
puzzles it is 2.0x cheaper than ``dynamics.polish``'s defaults with the same choices (``benchmarks/bench_polish.py``);
those defaults, which also find the unstable fixed points farther away, remain for the ``end_states`` analysis."""


# --- halting rules: (q, residual, answer, previous answer, settled counter, config) -> (done, counter) ----------

def _halt_never(q, res, answer, prev, below, cfg):
    return torch.zeros_like(q, dtype=torch.bool), below


def _halt_q(q, res, answer, prev, below, cfg):
    return q > 0, below


def _halt_patience(settled: torch.Tensor, below: torch.Tensor, cfg: RolloutConfig):
    below = torch.where(settled, below + 1, 0)
    return below >= cfg.patience, below


def _halt_converge(q, res, answer, prev, below, cfg):
    return _halt_patience(res < cfg.tol, below, cfg)


def _halt_stable(q, res, answer, prev, below, cfg):
    return _halt_patience((answer == prev).all(dim=1), below, cfg)


HALTING: dict[str, Callable] = {"never": _halt_never, "q": _halt_q, "converge": _halt_converge,
                                "stable": _halt_stable}
"""Halting rules by name: ``q`` (the learned halting logit is positive), ``converge`` (relative residual below
``tol`` for ``patience`` steps), ``stable`` (answer unchanged for ``patience`` steps), ``never`` (fixed depth)."""
HALT_RULES = tuple(HALTING)


@dataclass
class RolloutConfig:
    """How deep, how wide, when to stop and how to choose among restarts.

    ``select``: ``convergence`` (lowest mean norm of the change of all logits over the last ``window`` steps),
    ``reference`` (the reference evaluation's score: the per-cell L2 change of the logits averaged over cells,
    then over the last ``window`` steps), ``majority`` (the most common final answer) or ``attractor`` (each
    restart's end state polished noise-free to the fixed point it sits at; the attractor most restarts reached, see
    :func:`select_by_attractor`; costs a fixed-point solve per instance whose restarts disagree). ``full_vocab`` reads
    answers out with an argmax over the full vocabulary, as the reference evaluation does. ``restart_std``: for a
    model with a fixed initial state (TRM), breadth > 1 starts every restart from a zero-mean truncated normal of
    this std, as the reference evaluation does (``different_init_reset_std``); breadth 1 starts from the stored
    vectors. Models with random initial states ignore it.
    """

    depth: int = 64
    breadth: int = 1
    halt: str = "never"
    tol: float = 1e-3
    patience: int = 2
    select: str = "convergence"
    window: int = 3
    noise: bool = True
    seed: int = 0
    full_vocab: bool = False
    restart_std: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 1:
            raise InputError(f"depth must be a positive integer, got {self.depth!r}")
        if isinstance(self.breadth, bool) or not isinstance(self.breadth, int) or self.breadth < 1:
            raise InputError(f"breadth must be a positive integer, got {self.breadth!r}")
        if self.halt not in HALTING:
            raise InputError(f"unknown halt rule {self.halt!r}; choose one of {', '.join(HALTING)}")
        if self.select not in SELECT_RULES:
            raise InputError(f"unknown selection rule {self.select!r}; choose one of {', '.join(SELECT_RULES)}")
        if not 0 < self.tol < float("inf"):
            raise InputError(f"tol must be a finite number > 0, got {self.tol!r}")
        if self.patience < 1 or self.window < 1:
            raise InputError("patience and window must be >= 1")
        if not 0 < self.restart_std < float("inf"):
            raise InputError(f"restart_std must be a finite number > 0, got {self.restart_std!r}")
        check_seed(self.seed, limit=2**63 - 1)  # batch i of a solve runs seed + i: more than any run seed


@dataclass
class RolloutResult:
    """Per-step records for n instances x B restarts x T steps (numpy, the run-file layout; L = seq_len)."""

    residual: np.ndarray  # [n, B, T] float32
    logit_change: np.ndarray  # [n, B, T] float32, norm of the change of all logits
    cell_logit_change: np.ndarray  # [n, B, T] float32, per-cell L2 change averaged over cells (reference)
    halt_logit: np.ndarray  # [n, B, T] float32
    pred: np.ndarray  # [n, B, T, L] uint8 answers in the task's answer encoding
    valid: np.ndarray  # [n, B, T] bool
    correct: np.ndarray  # [n, B, T] bool
    token_accuracy: np.ndarray  # [n, B, T] float32, fraction of cells equal to the label
    steps: np.ndarray  # [n, B] int32
    selected: np.ndarray  # [n] int32 (the configured rule)
    selected_majority: np.ndarray  # [n] int32
    states: np.ndarray | None = None  # [n, B, S, *state_shape]
    state_steps: np.ndarray | None = None  # [S] int32, outer step of each snapshot (0 = initial state)
    compute_steps: int = 0  # row-steps actually computed (sum over rows of steps run)

    RECORDED = ("residual", "logit_change", "cell_logit_change", "halt_logit", "pred", "valid", "correct",
                "token_accuracy", "steps", "selected", "selected_majority")

    def as_dict(self) -> dict[str, np.ndarray]:
        """The arrays a run file stores under ``/rollout``."""
        return {name: getattr(self, name) for name in self.RECORDED}

    @property
    def final_correct(self) -> np.ndarray:
        """[n, B] correctness at each restart's last step."""
        return self.correct[:, :, -1]

    @property
    def selected_correct(self) -> np.ndarray:
        """[n] correctness of the selected restart."""
        return self.final_correct[np.arange(len(self.selected)), self.selected]

    @property
    def pass_at_b(self) -> np.ndarray:
        """[n] whether any restart is correct (oracle selection)."""
        return self.final_correct.any(axis=1)


# --- selection among restarts --------------------------------------------------------------------------------

def convergence_score(logit_change: np.ndarray, steps: np.ndarray, window: int = 3) -> np.ndarray:
    """Mean logit change over the last ``window`` steps before halting: ``[n, B, T], [n, B] -> [n, B]``."""
    t = logit_change.shape[-1]
    last = np.clip(steps.astype(np.int64), 1, t)[..., None]  # 1-based last step
    offsets = np.arange(window)[None, None, :]
    idx = last - 1 - offsets
    vals = np.take_along_axis(logit_change, np.clip(idx, 0, t - 1), axis=-1)
    vals = np.where(idx >= 0, vals, np.nan)
    return np.nanmean(vals, axis=-1)


def reference_score(cell_logit_change: np.ndarray, steps: np.ndarray, window: int = 3) -> np.ndarray:
    """The reference evaluation's convergence score ``[n, B, T], [n, B] -> [n, B]``: the per-cell logit change
    averaged over cells (``cell_logit_change``), then over the last ``window`` changes *between* outer steps (the
    change from the initial state's logits is never used); NaN for a restart that ran a single step."""
    if cell_logit_change.shape[-1] < 2:
        return np.full(steps.shape, np.nan)
    score = convergence_score(cell_logit_change[..., 1:], np.maximum(steps - 1, 1), window)
    return np.where(steps >= 2, score, np.nan)


def scores_by_depth(logit_change: np.ndarray, steps: np.ndarray, window: int = 3) -> np.ndarray:
    """The convergence score each restart would have if the run had stopped at depth ``d`` (``d = 1..T``):
    ``[n, B, T], [n, B] -> [n, B, T]``; a restart that halted before ``d`` keeps its score at halting."""
    t = logit_change.shape[-1]
    csum = np.concatenate([np.zeros((*logit_change.shape[:-1], 1)), np.cumsum(logit_change, axis=-1)], axis=-1)
    last = np.minimum(np.arange(1, t + 1)[None, None, :], steps[..., None].astype(np.int64))  # [n, B, T]
    first = np.maximum(last - window, 0)
    total = np.take_along_axis(csum, last, axis=-1) - np.take_along_axis(csum, first, axis=-1)
    return total / (last - first)


def select_lowest_score(score: np.ndarray) -> np.ndarray:
    """[n, B] -> [n]: the restart with the lowest convergence score (NaN/inf last)."""
    return np.argmin(np.nan_to_num(score, nan=np.inf), axis=1).astype(np.int32)


def select_majority(final_pred: np.ndarray, score: np.ndarray) -> np.ndarray:
    """[n, B, L], [n, B] -> [n]: the most common final answer; ties go to the lowest score."""
    n, b, _ = final_pred.shape
    same = (final_pred[:, :, None, :] == final_pred[:, None, :, :]).all(-1)  # [n, B, B]
    votes = same.sum(-1).astype(np.float64)  # [n, B]
    rank = np.argsort(np.argsort(np.nan_to_num(score, nan=np.inf), axis=1), axis=1)
    key = votes - rank / (b + 1.0)
    return np.argmax(key, axis=1).astype(np.int32)


def _select(res: dict[str, np.ndarray], cfg: RolloutConfig,
            by_attractor: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """(selected by the configured rule, selected by majority vote), each ``[n]``; ``by_attractor(final answers
    [n, B, L], convergence score [n, B])`` makes the ``attractor`` choice (it needs the model and the end states)."""
    n, b = res["steps"].shape
    score = convergence_score(res["logit_change"], res["steps"], cfg.window)
    final_pred = res["pred"][np.arange(n)[:, None], np.arange(b)[None, :], res["steps"] - 1]
    majority = select_majority(final_pred, score)
    if cfg.select == "reference":  # changes between outer steps only: no score uses the initial state
        return select_lowest_score(reference_score(res["cell_logit_change"], res["steps"], cfg.window)), majority
    if cfg.select == "attractor" and by_attractor is not None:
        return by_attractor(final_pred, score), majority
    return (majority if cfg.select == "majority" else select_lowest_score(score)), majority


def select_by_attractor(model: EquilibriumReasoner, tokens: torch.Tensor, ends: torch.Tensor, answers: np.ndarray,
                        score: np.ndarray) -> np.ndarray:
    """Attractor-aware restart choice, ``[n]`` int32: for each instance (``tokens [n, L]``), the restarts' end states
    (``ends [n, B, d]``, flat latent states) are polished noise-free to the fixed point each sits at
    (:func:`attractorlab.dynamics.polish` with :data:`ATTRACTOR_SOLVE`) and
    :func:`attractorlab.dynamics.select_attractor` takes the attractor
    most restarts reached, falling back to the lowest ``score [n, B]`` (the convergence score) where no restart
    sits at one. Instances whose restarts all end with the same answer (``answers [n, B, L]``) keep the score's
    choice without a solve: every choice gives that answer."""
    chosen = select_lowest_score(score)
    agree = (answers == answers[:, :1]).all(axis=(1, 2))
    for i in np.flatnonzero(~agree):
        polished = dynamics.polish(model.as_map(tokens[i : i + 1]), ends[i].to(model.device), **ATTRACTOR_SOLVE)
        chosen[i] = dynamics.select_attractor(polished, score[i])
    return chosen


# --- state snapshots -----------------------------------------------------------------------------------------

class _Snapshots:
    """Records ``state_fn(state)`` per row: ``none``, ``final`` (at halting), ``all`` (step 0, every
    ``stride``-th step and the last; halted rows repeat their frozen state) or ``cycles`` (step 0, then inside each
    step ``all`` keeps, the state after each inner update named in ``updates``)."""

    def __init__(self, mode: str, stride: int, depth: int, state_fn: Callable[[LatentState], torch.Tensor],
                 updates: tuple[str, ...] = ()):
        self.mode, self.state_fn, self.updates = mode, state_fn, set(updates)
        self.at = [0, *range(stride, depth + 1, stride)] + ([depth] if depth % stride else [])
        self.due = set(self.at)
        self.frames: list[torch.Tensor] = []
        self.current: torch.Tensor | None = None
        self.per_step = len(updates) if mode == "cycles" else 1

    def inside(self, t: int, active: torch.Tensor) -> Callable[[str, LatentState], None] | None:
        """The ``on_update`` hook for outer step ``t`` (None unless mode ``cycles`` keeps that step)."""
        if self.mode != "cycles" or t not in self.due:
            return None
        rows = active.cpu()

        def keep(name: str, state: LatentState) -> None:
            if name in self.updates:
                self.current[rows] = self.state_fn(state).float().cpu()
                self.frames.append(self.current.clone())

        return keep

    def halted(self, state: LatentState, active: torch.Tensor, done: torch.Tensor) -> None:
        if self.mode in ("final", "cycles"):
            self.current[active[done].cpu()] = self.state_fn(_rows(state, done)).float().cpu()

    def start(self, state: LatentState) -> None:
        if self.mode != "none":
            self.current = self.state_fn(state).float().cpu()
        if self.mode in ("all", "cycles"):
            self.frames.append(self.current.clone())

    def after_step(self, t: int, state: LatentState, active: torch.Tensor) -> None:
        if self.mode == "all" and t in self.due:
            self.current[active.cpu()] = self.state_fn(state).float().cpu()
            self.frames.append(self.current.clone())

    def arrays(self, n: int, b: int, depth: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """``states [n, B, S, *shape]`` and ``state_steps [S]`` (None, None without states)."""
        if self.mode == "none":
            return None, None
        if self.mode == "final":
            return self.current.view(n, b, 1, *self.current.shape[1:]).numpy(), np.asarray([depth], np.int32)
        steps = np.asarray([0, *np.repeat(self.at[1:], self.per_step)], np.int32)
        self.frames += [self.current.clone() for _ in steps[len(self.frames):]]  # all rows halted early
        data = torch.stack(self.frames, dim=1)
        return data.view(n, b, len(self.frames), *data.shape[2:]).numpy(), steps


def _rows(state: LatentState, keep: torch.Tensor) -> LatentState:
    return LatentState(state.z_H[keep], state.z_L[keep])


def inner_updates(model: EquilibriumReasoner, updates: Sequence[str] | None = None) -> tuple[str, ...]:
    """The inner updates ``states="cycles"`` keeps, in the order they happen: ``updates`` (names of
    ``model.update_names()`` or shell-style patterns such as ``H*.L*``), default all."""
    names = model.update_names()
    if updates is None:
        return tuple(names)
    unknown = [u for u in updates if not fnmatch.filter(names, u)]
    if unknown or not updates:
        raise InputError(f"no inner update matches {', '.join(unknown) or 'an empty list'}; this model's updates "
                         f"are {', '.join(names)}")
    return tuple(n for n in names if any(fnmatch.fnmatchcase(n, u) for u in updates))


# --- the rollout -----------------------------------------------------------------------------------------------

class _Records:
    """Per-row, per-step records on the device ``[rows, T]`` (answers ``[rows, T, L]``)."""

    SCALARS = ("residual", "logit_change", "cell_logit_change", "halt_logit", "token_accuracy")
    FLAGS = ("valid", "correct")

    def __init__(self, rows: int, depth: int, seq_len: int, device: torch.device) -> None:
        self.data = {k: torch.zeros(rows, depth, device=device) for k in self.SCALARS}
        self.data.update({k: torch.zeros(rows, depth, dtype=torch.bool, device=device) for k in self.FLAGS})
        self.data["pred"] = torch.zeros(rows, depth, seq_len, dtype=torch.uint8, device=device)
        self.steps = torch.full((rows,), depth, dtype=torch.int32, device=device)

    def put(self, active: torch.Tensor, t: int, **values: torch.Tensor) -> None:
        for key, value in values.items():
            self.data[key][active, t] = value.to(self.data[key].dtype)

    def frozen(self, n: int, b: int) -> dict[str, np.ndarray]:
        """Entries past each row's halting step repeat the last computed one; numpy ``[n, B, T, ...]``."""
        depth = self.data["residual"].shape[1]
        last = torch.minimum(torch.arange(depth, device=self.steps.device)[None, :], (self.steps - 1).long()[:, None])
        out = {}
        for key, value in self.data.items():
            index = last.view(*last.shape, *([1] * (value.dim() - 2))).expand_as(value)
            out[key] = value.gather(1, index).view(n, b, *value.shape[1:]).cpu().numpy()
        out["steps"] = self.steps.view(n, b).cpu().numpy()
        return out


def relative_change(new: LatentState, old: LatentState) -> torch.Tensor:
    """``||new - old|| / ||new||`` per row over both streams ``[rows]`` (float32): the norms of the concatenated
    flat states, taken stream by stream (no copy of the two into one)."""
    def norms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.hypot(torch.linalg.vector_norm(a.float(), dim=(1, 2)),
                           torch.linalg.vector_norm(b.float(), dim=(1, 2)))

    change = norms(new.z_H - old.z_H, new.z_L - old.z_L)
    return change / norms(new.z_H, new.z_L).clamp_min(1e-30)


def _grade(task: Task, answer: torch.Tensor, tok: torch.Tensor, sol: torch.Tensor | None) -> dict[str, torch.Tensor]:
    valid = task.is_valid(tok, answer)
    if sol is None:
        zeros = torch.zeros(len(answer), device=answer.device)
        return {"valid": valid, "correct": zeros.bool(), "token_accuracy": zeros}
    return {"valid": valid, "correct": task.is_correct(answer, sol), "token_accuracy": task.token_accuracy(answer, sol)}


def rollout(model: EquilibriumReasoner, tokens: torch.Tensor, solution: torch.Tensor | None, config: RolloutConfig,
            *, state_fn: Callable[[LatentState], torch.Tensor] | None = None, state_stride: int = 1,
            states: str = "none", updates: tuple[str, ...] | None = None,
            on_step: Callable[[int, int], None] | None = None, compile: bool = False,
            cuda_graphs: bool = False) -> RolloutResult:
    """Run ``n`` instances x ``B`` restarts for up to ``config.depth`` outer steps.

    tokens: ``[n, L]`` token encoding; solution: ``[n, L]`` labels in the task's answer encoding (0 = unknown) or
    None. states: ``none`` | ``final`` | ``all`` (every ``state_stride``-th step, plus the initial state) |
    ``cycles`` (inside those steps, the state after each inner update in ``updates``, default all of
    ``model.update_names()``); ``state_fn`` maps a LatentState to the stored per-row snapshot ``[rows, *shape]``
    (default: stack of z_H, z_L).
    on_step(t, active_rows) is called after every outer step (progress reporting). ``compile`` runs the outer step
    under ``torch.compile`` (:meth:`EquilibriumReasoner.compiled_step`; not with ``states="cycles"``, whose capture
    needs the eager step). ``cuda_graphs`` replays the outer step from CUDA graphs on buckets of rows
    (:func:`attractorlab.graphed.graphed_step`; CUDA only, not with ``states="cycles"``).
    """
    device, cfg, task = model.device, config, get_task(model.config.task)
    n, b, T = tokens.shape[0], cfg.breadth, cfg.depth
    tok = tokens.to(device).repeat_interleave(b, dim=0)  # [rows, L]
    sol = None if solution is None else solution.to(device).repeat_interleave(b, dim=0)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    snaps = _Snapshots(states, state_stride, T, state_fn or (lambda s: torch.stack([s.z_H, s.z_L], dim=1)),
                       inner_updates(model, updates) if states == "cycles" else ())
    rec = _Records(n * b, T, model.config.seq_len, device)
    by_attractor = cfg.select == "attractor" and b > 1
    ends = _Snapshots("final" if by_attractor else "none", 1, T, lambda s: s.flatten())
    halting = HALTING[cfg.halt]
    if cuda_graphs:
        require_cuda_graphs(device, states)
        step = graphed_step(model, n * b, compile=compile)
    else:
        step = model.compiled_step() if compile and states != "cycles" else model.step
    with torch.inference_mode(), autocast(device):
        state = model.init_state(tok, generator=gen, restart_std=cfg.restart_std if b > 1 else None)
        x = model.embed(tok)
        prev_logits = model.readout(state)[0].float()
        prev_answer = task.answer(prev_logits, full_vocab=cfg.full_vocab)
        active = torch.arange(n * b, device=device)
        below = torch.zeros(n * b, dtype=torch.int32, device=device)
        snaps.start(state)
        ends.start(state)
        compute = 0
        for t in range(T):
            prev = state
            state = step(state, tok[active], noise=cfg.noise, generator=gen, x=x, on_update=snaps.inside(t + 1, active))
            compute += int(active.numel())
            res = relative_change(state, prev)
            logits, q = model.readout(state)
            logits = logits.float()
            delta = logits - prev_logits
            answer = task.answer(logits, full_vocab=cfg.full_vocab)
            rec.put(active, t, residual=res, logit_change=delta.flatten(1).norm(dim=1),
                    cell_logit_change=delta.norm(dim=-1).mean(-1), halt_logit=q, pred=answer,
                    **_grade(task, answer, tok[active], None if sol is None else sol[active]))
            done, below[active] = halting(q, res, answer, prev_answer, below[active], cfg)
            prev_logits, prev_answer = logits, answer
            if t == T - 1:
                done = torch.ones_like(done)
            snaps.after_step(t + 1, state, active)
            if (cfg.halt != "never" or t == T - 1) and done.any():  # fixed depth: no device sync per step
                rec.steps[active[done]] = t + 1
                snaps.halted(state, active, done)
                ends.halted(state, active, done)
                keep = ~done
                active, state, x = active[keep], _rows(state, keep), x[keep]
                prev_logits, prev_answer = prev_logits[keep], prev_answer[keep]
            if on_step is not None:
                on_step(t + 1, int(active.numel()))
            if active.numel() == 0:
                break
    out = rec.frozen(n, b)
    def choose(answers: np.ndarray, score: np.ndarray) -> np.ndarray:
        return select_by_attractor(model, tokens, ends.current.clone().view(n, b, -1), answers, score)

    out["selected"], out["selected_majority"] = _select(out, cfg, choose if by_attractor else None)
    states_np, state_steps = snaps.arrays(n, b, T)
    return RolloutResult(**out, states=states_np, state_steps=state_steps, compute_steps=compute)


def accuracy_at_depths(model: EquilibriumReasoner, tokens: torch.Tensor, solution: torch.Tensor,
                       depths: list[int], *, batch_size: int = 256, seed: int = 0) -> dict[int, float]:
    """Exact accuracy (breadth 1, fixed depth) at each depth in ``depths``, one rollout to the deepest."""
    if not depths:
        raise InputError("depths must not be empty")
    cfg = RolloutConfig(depth=max(depths), breadth=1, halt="never", seed=seed)
    hits = np.zeros(len(depths))
    for start in range(0, tokens.shape[0], batch_size):
        res = rollout(model, tokens[start:start + batch_size], solution[start:start + batch_size], cfg)
        hits += np.array([res.correct[:, 0, d - 1].sum() for d in depths])
    return {d: float(h / tokens.shape[0]) for d, h in zip(depths, hits, strict=True)}
