"""Test-time scaling: iterate the reasoner deep (depth) and wide (breadth), halt adaptively, select.

One call of :func:`rollout` runs ``n`` puzzles x ``B`` random restarts for up to ``T`` outer steps as one batch.
Rows that halt are dropped from the batch (compaction), so easy puzzles that converge in a few steps stop
costing compute; their recorded values are frozen at the halting step. Memory stays flat in depth: no graph
is kept and only per-step scalars (plus optional state snapshots) are stored.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from attractorlab import sudoku
from attractorlab.model import EquilibriumReasoner, LatentState, autocast
from attractorlab.sudoku import is_valid_solution

HALT_RULES = ("never", "q", "converge", "stable")
SELECT_RULES = ("convergence", "majority")


def answer_digits(logits: torch.Tensor) -> torch.Tensor:
    """The read-out grid: the most likely digit per cell. logits: [N, 81, 11] -> [N, 81] uint8 digits 1-9."""
    return (logits[..., 2:].argmax(-1) + 1).to(torch.uint8)


@dataclass
class RolloutConfig:
    """How deep, how wide, when to stop and how to choose among restarts."""

    depth: int = 64
    breadth: int = 1
    halt: str = "never"
    tol: float = 1e-3
    patience: int = 2
    select: str = "convergence"
    window: int = 3
    noise: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 1:
            raise ValueError(f"depth must be a positive integer, got {self.depth!r}")
        if isinstance(self.breadth, bool) or not isinstance(self.breadth, int) or self.breadth < 1:
            raise ValueError(f"breadth must be a positive integer, got {self.breadth!r}")
        if self.halt not in HALT_RULES:
            raise ValueError(f"unknown halt rule {self.halt!r}; choose one of {', '.join(HALT_RULES)}")
        if self.select not in SELECT_RULES:
            raise ValueError(f"unknown selection rule {self.select!r}; choose one of {', '.join(SELECT_RULES)}")
        if not self.tol > 0:
            raise ValueError(f"tol must be > 0, got {self.tol!r}")
        if self.patience < 1 or self.window < 1:
            raise ValueError("patience and window must be >= 1")


@dataclass
class RolloutResult:
    """Per-step records for n puzzles x B restarts x T steps (numpy, the run-file layout)."""

    residual: np.ndarray  # [n, B, T] float32
    logit_change: np.ndarray  # [n, B, T] float32
    halt_logit: np.ndarray  # [n, B, T] float32
    pred: np.ndarray  # [n, B, T, 81] uint8 digits
    valid: np.ndarray  # [n, B, T] bool
    correct: np.ndarray  # [n, B, T] bool
    steps: np.ndarray  # [n, B] int32
    selected: np.ndarray  # [n] int32 (the configured rule)
    selected_majority: np.ndarray  # [n] int32
    states: np.ndarray | None = None  # [n, B, S, *state_shape]
    state_steps: np.ndarray | None = None  # [S] int32, outer step of each snapshot (0 = initial state)
    compute_steps: int = 0  # row-steps actually computed (sum over rows of steps run)

    def as_dict(self) -> dict[str, np.ndarray]:
        names = ("residual", "logit_change", "halt_logit", "pred", "valid", "correct", "steps", "selected",
                 "selected_majority")
        return {name: getattr(self, name) for name in names}

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


def convergence_score(logit_change: np.ndarray, steps: np.ndarray, window: int = 3) -> np.ndarray:
    """Mean logit change over the last ``window`` steps before halting: ``[n, B, T], [n, B] -> [n, B]``."""
    t = logit_change.shape[-1]
    last = np.clip(steps.astype(np.int64), 1, t)[..., None]  # 1-based last step
    offsets = np.arange(window)[None, None, :]
    idx = last - 1 - offsets
    vals = np.take_along_axis(logit_change, np.clip(idx, 0, t - 1), axis=-1)
    vals = np.where(idx >= 0, vals, np.nan)
    return np.nanmean(vals, axis=-1)


def select_lowest_score(score: np.ndarray) -> np.ndarray:
    """[n, B] -> [n]: the restart with the lowest convergence score (NaN/inf last)."""
    return np.argmin(np.nan_to_num(score, nan=np.inf), axis=1).astype(np.int32)


def select_majority(final_pred: np.ndarray, score: np.ndarray) -> np.ndarray:
    """[n, B, 81], [n, B] -> [n]: the most common final answer; ties go to the lowest score."""
    n, b, _ = final_pred.shape
    same = (final_pred[:, :, None, :] == final_pred[:, None, :, :]).all(-1)  # [n, B, B]
    votes = same.sum(-1).astype(np.float64)  # [n, B]
    rank = np.argsort(np.argsort(np.nan_to_num(score, nan=np.inf), axis=1), axis=1)
    key = votes - rank / (b + 1.0)
    return np.argmax(key, axis=1).astype(np.int32)


def rollout(model: EquilibriumReasoner, tokens: torch.Tensor, solution: torch.Tensor | None, config: RolloutConfig,
            *, state_fn: Callable[[LatentState], torch.Tensor] | None = None, state_stride: int = 1,
            states: str = "none", on_step: Callable[[int, int], None] | None = None) -> RolloutResult:
    """Run ``n`` puzzles x ``B`` restarts for up to ``config.depth`` outer steps.

    tokens: ``[n, 81]`` token encoding; solution: ``[n, 81]`` digits (0 = unknown) or None.
    states: ``none`` | ``final`` | ``all`` (every ``state_stride``-th step, plus the initial state);
    ``state_fn`` maps a LatentState to the stored per-row snapshot ``[rows, *shape]`` (default: stack of z_H, z_L).
    on_step(t, active_rows) is called after every outer step (progress reporting).
    """
    device = model.device
    cfg = config
    n, b, T = tokens.shape[0], cfg.breadth, cfg.depth
    rows = n * b
    tok = tokens.to(device).repeat_interleave(b, dim=0)  # [rows, 81]
    sol = None if solution is None else solution.to(device).repeat_interleave(b, dim=0)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    state_fn = state_fn or (lambda s: torch.stack([s.z_H, s.z_L], dim=1))

    residual = torch.zeros(rows, T, device=device)
    logit_change = torch.zeros(rows, T, device=device)
    halt_logit = torch.zeros(rows, T, device=device)
    pred = torch.zeros(rows, T, 81, dtype=torch.uint8, device=device)
    steps = torch.full((rows,), T, dtype=torch.int32, device=device)
    snapshots: list[torch.Tensor] = []
    snap_steps: list[int] = []
    snap_at = [0, *range(state_stride, T + 1, state_stride)] + ([T] if T % state_stride else [])
    snap_set = set(snap_at)

    with torch.inference_mode(), autocast(device):
        state = model.init_state(tok, generator=gen)
        x = model.embed(tok)
        logits, _ = model.readout(state)
        prev_logits = logits.float()
        prev_answer = answer_digits(prev_logits)
        active = torch.arange(rows, device=device)
        below = torch.zeros(rows, dtype=torch.int32, device=device)
        current = state_fn(state).float().cpu() if states != "none" else None  # [rows, *shape], frozen at halt
        if states == "all":
            snapshots.append(current.clone())
            snap_steps.append(0)
        compute = 0
        for t in range(T):
            flat_prev = state.flatten()
            state = model.step(state, tok[active], noise=cfg.noise, generator=gen, x=x)
            compute += int(active.numel())
            flat = state.flatten()
            res = (flat - flat_prev).float().norm(dim=1) / flat.float().norm(dim=1).clamp_min(1e-30)
            logits, q = model.readout(state)
            logits = logits.float()
            dlog = (logits - prev_logits).flatten(1).norm(dim=1)
            prev_logits = logits
            residual[active, t] = res
            logit_change[active, t] = dlog
            halt_logit[active, t] = q
            answer = answer_digits(logits)
            pred[active, t] = answer
            if cfg.halt == "q":
                done = q > 0
            elif cfg.halt in ("converge", "stable"):
                settled = res < cfg.tol if cfg.halt == "converge" else (answer == prev_answer).all(dim=1)
                below[active] = torch.where(settled, below[active] + 1, 0)
                done = below[active] >= cfg.patience
            else:
                done = torch.zeros_like(q, dtype=torch.bool)
            prev_answer = answer
            if t == T - 1:
                done = torch.ones_like(done)
            if states == "all" and (t + 1) in snap_set:
                current[active.cpu()] = state_fn(state).float().cpu()
                snapshots.append(current.clone())
                snap_steps.append(t + 1)
            if done.any():
                steps[active[done]] = t + 1
                if states == "final":
                    current[active[done].cpu()] = state_fn(_rows(state, done)).float().cpu()
                keep = ~done
                active, state, x = active[keep], _rows(state, keep), x[keep]
                prev_logits, prev_answer = prev_logits[keep], prev_answer[keep]
            if on_step is not None:
                on_step(t + 1, int(active.numel()))
            if active.numel() == 0:
                break

    if states == "all":  # every row halted early: the remaining snapshots repeat the frozen states
        for step in snap_at[len(snapshots):]:
            snapshots.append(current.clone())
            snap_steps.append(step)
    # Freeze each row after its halting step: entries past it repeat the last computed one.
    last = torch.minimum(torch.arange(T, device=device)[None, :], (steps - 1).long()[:, None])  # [rows, T]
    residual, logit_change, halt_logit = (a.gather(1, last) for a in (residual, logit_change, halt_logit))
    pred = pred.gather(1, last[..., None].expand(-1, -1, 81))
    pred_np = pred.view(n, b, T, 81).cpu().numpy()
    flat_pred = pred.view(rows * T, 81)
    valid = is_valid_solution(tok.repeat_interleave(T, dim=0), flat_pred).view(n, b, T)
    if sol is not None:
        known = (sol > 0).all(dim=1).repeat_interleave(T, dim=0)
        correct = ((flat_pred == sol.to(torch.uint8).repeat_interleave(T, dim=0)).all(dim=1) & known).view(n, b, T)
    else:
        correct = torch.zeros(n, b, T, dtype=torch.bool)
    steps_np = steps.view(n, b).cpu().numpy()
    lc = logit_change.view(n, b, T).cpu().numpy()
    score = convergence_score(lc, steps_np, cfg.window)
    final_pred = pred_np[np.arange(n)[:, None], np.arange(b)[None, :], steps_np - 1]
    lowest = select_lowest_score(score)
    majority = select_majority(final_pred, score)
    states_np, state_steps = None, None
    if states == "all":
        states_np = torch.stack(snapshots, dim=1).view(n, b, len(snapshots), *snapshots[0].shape[1:]).numpy()
        state_steps = np.asarray(snap_steps, dtype=np.int32)
    elif states == "final":
        states_np = current.view(n, b, 1, *current.shape[1:]).numpy()
        state_steps = np.asarray([T], dtype=np.int32)
    return RolloutResult(
        residual=residual.view(n, b, T).cpu().numpy(), logit_change=lc,
        halt_logit=halt_logit.view(n, b, T).cpu().numpy(), pred=pred_np,
        valid=valid.cpu().numpy(), correct=correct.cpu().numpy(), steps=steps_np,
        selected=lowest if cfg.select == "convergence" else majority, selected_majority=majority,
        states=states_np, state_steps=state_steps, compute_steps=compute)


def _rows(state: LatentState, keep: torch.Tensor) -> LatentState:
    return LatentState(state.z_H[keep], state.z_L[keep])


def accuracy_at_depths(model: EquilibriumReasoner, tokens: torch.Tensor, solution: torch.Tensor,
                       depths: list[int], *, batch_size: int = 256, seed: int = 0) -> dict[int, float]:
    """Exact accuracy (breadth 1, fixed depth) at each depth in ``depths``, one rollout to the deepest."""
    if not depths:
        raise ValueError("depths must not be empty")
    cfg = RolloutConfig(depth=max(depths), breadth=1, halt="never", seed=seed)
    hits = np.zeros(len(depths))
    for start in range(0, tokens.shape[0], batch_size):
        res = rollout(model, tokens[start:start + batch_size], solution[start:start + batch_size], cfg)
        hits += np.array([res.correct[:, 0, d - 1].sum() for d in depths])
    return {d: float(h / tokens.shape[0]) for d, h in zip(depths, hits, strict=True)}


# --- solving a puzzle collection into a run file --------------------------------------------------------------

@dataclass
class SolveSummary:
    """Headline numbers of a solve run (over all puzzles with a known solution)."""

    n: int
    accuracy: float  # selected restart
    majority_accuracy: float
    pass_at_b: float  # oracle over restarts
    mean_steps: float
    median_steps: float
    by_band: dict[str, tuple[int, float]]  # band -> (count, accuracy)
    by_source: dict[str, tuple[int, float]]
    seconds: float = 0.0
    compute_steps: int = 0

    def table(self) -> str:
        lines = [f"puzzles            {self.n}",
                 f"accuracy (select)  {self.accuracy:.4f}",
                 f"accuracy (vote)    {self.majority_accuracy:.4f}",
                 f"pass@B (oracle)    {self.pass_at_b:.4f}",
                 f"steps mean/median  {self.mean_steps:.1f} / {self.median_steps:.0f}"]
        if self.seconds:
            lines.append(f"time               {self.seconds:.1f} s ({self.compute_steps / self.seconds:.0f} "
                         "puzzle-steps/s)")
        for title, table in (("band", self.by_band), ("source", self.by_source)):
            for key, (count, acc) in table.items():
                lines.append(f"{title} {key:<24} {count:>6}  {acc:.4f}")
        return "\n".join(lines)


def summarize(solution: np.ndarray, rating: np.ndarray, source: np.ndarray, correct: np.ndarray,
              steps: np.ndarray, selected: np.ndarray, selected_majority: np.ndarray) -> SolveSummary:
    """Summary from run-file arrays: ``correct [N, B, T]``, ``steps [N, B]``, ``selected [N]`` ..."""
    n = len(selected)
    known = (solution > 0).all(axis=1)
    final = correct[:, :, -1]
    rows = np.arange(n)
    sel = final[rows, selected]
    maj = final[rows, selected_majority]

    def mean(x: np.ndarray, mask: np.ndarray) -> float:
        return float(x[mask].mean()) if mask.any() else float("nan")

    bands = sudoku.difficulty_band(rating)
    by_band = {b: (int(((bands == b) & known).sum()), mean(sel, (bands == b) & known)) for b in np.unique(bands)}
    by_source = {str(s): (int(((source == s) & known).sum()), mean(sel, (source == s) & known))
                 for s in np.unique(source)}
    used = steps[rows, selected]
    return SolveSummary(n=n, accuracy=mean(sel, known), majority_accuracy=mean(maj, known),
                        pass_at_b=mean(final.any(axis=1), known), mean_steps=float(used.mean()) if n else 0.0,
                        median_steps=float(np.median(used)) if n else 0.0, by_band=by_band, by_source=by_source)


def random_projection(full_dim: int, k: int, seed: int) -> np.ndarray:
    """A fixed Gaussian basis ``[full_dim, k]`` with orthonormal columns (stored with the run)."""
    if not 1 <= k <= full_dim:
        raise ValueError(f"projection dimension must be in [1, {full_dim}], got {k}")
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(full_dim, k, generator=gen, dtype=torch.float64))
    return q.float().numpy()


def solve(model: EquilibriumReasoner, puzzles: sudoku.PuzzleSet, config: RolloutConfig, out: str | None, *,
          batch_size: int = 64, states: str = "none", state_stride: int = 1, state_dtype: str = "float16",
          project: int = 0, resume: bool = False, overwrite: bool = False, attrs: dict | None = None,
          progress: bool = True, rank: int = 0, world: int = 1) -> SolveSummary:
    """Roll out every puzzle (batch by batch) and append each finished batch to the run file ``out``.

    Batch ``i`` uses seed ``config.seed + i`` so a resumed run reproduces an uninterrupted one. With
    ``world > 1`` this process takes every ``world``-th batch (a shard), as one rank of a torchrun job.
    """
    from tqdm import tqdm

    from attractorlab import recording  # h5py only when a run is actually solved

    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    cell_dim = 2 * model.config.hidden_size
    basis = random_projection(cell_dim, project, config.seed) if project else None
    if basis is not None:
        basis_t = torch.as_tensor(basis, device=model.device)
        shape: tuple = (model.config.seq_len, project)

        def state_fn(s: LatentState) -> torch.Tensor:
            return torch.cat([s.z_H, s.z_L], dim=-1).float() @ basis_t  # [rows, 81, K]
    else:
        shape = (2, model.config.seq_len, model.config.hidden_size)
        state_fn = None
    spec = recording.StateSpec(mode=states, stride=state_stride, dtype=state_dtype,
                               shape=shape if states != "none" else (), projection=basis)
    batches = [(i, i * batch_size) for i in range(-(-len(puzzles) // batch_size))][rank::world]
    writer = None
    if out is not None:
        writer = recording.RunWriter(out, breadth=config.breadth, depth=config.depth, attrs=attrs or {},
                                     states=spec, resume=resume, overwrite=overwrite)
    done_puzzles = writer.n_done if writer is not None else 0
    collected: list[tuple[sudoku.PuzzleSet, RolloutResult]] = []
    total = sum(min(batch_size, len(puzzles) - start) for _, start in batches)
    bar = tqdm(total=total, disable=not progress, unit="puzzle", dynamic_ncols=True)
    hits = count = compute = 0
    t0 = time.time()
    try:
        written = 0
        for index, start in batches:
            chunk = puzzles[start:start + batch_size]
            if written + len(chunk) <= done_puzzles:  # finished in the run being resumed
                written += len(chunk)
                bar.update(len(chunk))
                continue
            cfg = dataclasses.replace(config, seed=config.seed + index)
            res = rollout(model, torch.as_tensor(chunk.tokens, dtype=torch.long), torch.as_tensor(chunk.solution),
                          cfg, state_fn=state_fn, state_stride=state_stride, states=states)
            if writer is not None:
                states_np = None if res.states is None else res.states.astype(state_dtype)
                writer.append(chunk, res.as_dict(), states_np)
            collected.append((chunk, res))
            written += len(chunk)
            compute += res.compute_steps
            hits += int(res.selected_correct.sum())
            count += len(chunk)
            bar.update(len(chunk))
            bar.set_postfix(acc=f"{hits / max(count, 1):.3f}", pz_s=f"{count / max(time.time() - t0, 1e-9):.1f}")
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    seconds = time.time() - t0
    if out is not None and world == 1:
        with recording.open_run(out) as run:
            p, r = run.puzzles, run.rollout
            summary = summarize(p.solution, p.rating, p.source, r.correct, r.steps, r.selected, r.selected_majority)
    else:
        summary = summarize(*_concat(collected))
    summary.seconds, summary.compute_steps = seconds, compute
    return summary


def _concat(collected: list) -> tuple:
    if not collected:
        return (np.zeros((0, 81), np.uint8), np.zeros(0, np.int32), np.zeros(0, str), np.zeros((0, 1, 1), bool),
                np.zeros((0, 1), np.int32), np.zeros(0, np.int32), np.zeros(0, np.int32))
    ps = [c for c, _ in collected]
    rs = [r for _, r in collected]
    return (np.concatenate([p.solution for p in ps]), np.concatenate([p.rating for p in ps]),
            np.concatenate([p.source for p in ps]), np.concatenate([r.correct for r in rs]),
            np.concatenate([r.steps for r in rs]), np.concatenate([r.selected for r in rs]),
            np.concatenate([r.selected_majority for r in rs]))
