"""Solving a collection: data -> batches of :func:`attractorlab.rollout.rollout` -> a run file, with resume and
torchrun shards, and the summary table of a solved run.

Batch ``i`` uses seed ``config.seed + i`` so a resumed run reproduces an uninterrupted one. With ``world > 1``
this process takes every ``world``-th batch (a shard), as one rank of a torchrun job.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch

from attractorlab import reference
from attractorlab.errors import InputError
from attractorlab.graphed import require_cuda_graphs
from attractorlab.model import EquilibriumReasoner, LatentState, require_compiler
from attractorlab.rollout import RolloutConfig, RolloutResult, inner_updates, reference_score, rollout
from attractorlab.tasks import PuzzleSet, Task, get_task
from attractorlab.tasks.base import number_groups


@dataclass
class SolveSummary:
    """Headline numbers of a solve run (over all instances with a known label)."""

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
    paper: dict[str, float] | None = None  # the reference evaluation's metrics (see paper_metrics)
    protocol: str = ""
    groups: int = 0  # puzzles when the data groups copies of one puzzle (a reference split's augmentations), else 0
    group_accuracy: float = float("nan")  # mean over groups of the share of its copies solved
    group_all_correct: float = float("nan")  # share of groups with every copy solved
    graded: int = 0  # instances with a known answer (the accuracies' denominator)

    def table(self) -> str:
        graded = "" if self.graded == self.n else (f" ({self.graded} with a known answer; the rest are not graded)"
                                                   if self.graded else " (none with a known answer: nothing graded)")
        lines = [f"puzzles            {self.n}{graded}",
                 f"accuracy (select)  {_rate(self.accuracy)}",
                 f"accuracy (vote)    {_rate(self.majority_accuracy)}",
                 f"pass@B (oracle)    {_rate(self.pass_at_b)}",
                 f"steps mean/median  {self.mean_steps:.1f} / {self.median_steps:.0f}"]
        if self.groups:
            lines += [f"groups             {self.groups} (augmented copies of one puzzle count as one)",
                      f"accuracy (group)   {_rate(self.group_accuracy)}",
                      f"all copies solved  {_rate(self.group_all_correct)}"]
        if self.seconds:
            lines.append(f"time               {self.seconds:.1f} s ({self.compute_steps / self.seconds:.0f} "
                         "puzzle-steps/s)")
        rows = [(f"{title} {key}", count, acc) for title, table in (("band", self.by_band), ("source", self.by_source))
                for key, (count, acc) in table.items()]
        width = max([31] + [len(name) for name, _, _ in rows])
        lines += [f"{name:<{width}} {count:>6}  {_rate(acc)}" for name, count, acc in rows]
        if self.paper:
            lines.append(f"paper metrics ({self.protocol or 'this run'}; the reference evaluation's definitions)")
            lines += [f"  {k:<32} {_rate(v)}" for k, v in self.paper.items() if k not in ("puzzles", "breadth")]
        return "\n".join(lines)


def _rate(x: float) -> str:
    return "n/a" if np.isnan(x) else f"{x:.4f}"


def summarize(solution: np.ndarray, rating: np.ndarray, source: np.ndarray, correct: np.ndarray,
              steps: np.ndarray, selected: np.ndarray, selected_majority: np.ndarray,
              task: str | Task, group: np.ndarray | None = None) -> SolveSummary:
    """Summary from run-file arrays: ``correct [N, B, T]``, ``steps [N, B]``, ``selected [N]`` ...; with ``group
    [N]`` where some rows are copies of one puzzle, the per-group accuracies too (known rows only)."""
    n = len(selected)
    known = (solution > 0).any(axis=1)
    final = correct[:, :, -1]
    rows = np.arange(n)
    sel = final[rows, selected]
    maj = final[rows, selected_majority]

    def mean(x: np.ndarray, mask: np.ndarray) -> float:
        return float(x[mask].mean()) if mask.any() else float("nan")

    bands = get_task(task).difficulty_band(rating)
    by_band = {b: (int(((bands == b) & known).sum()), mean(sel, (bands == b) & known)) for b in np.unique(bands)}
    by_source = {str(s): (int(((source == s) & known).sum()), mean(sel, (source == s) & known))
                 for s in np.unique(source)}
    used = steps[rows, selected]
    out = SolveSummary(n=n, accuracy=mean(sel, known), majority_accuracy=mean(maj, known),
                       pass_at_b=mean(final.any(axis=1), known), mean_steps=float(used.mean()) if n else 0.0,
                       median_steps=float(np.median(used)) if n else 0.0, by_band=by_band, by_source=by_source,
                       graded=int(known.sum()))
    if group is not None and known.any():
        g = number_groups(np.asarray(group)[known])
        if g.max() + 1 < known.sum():  # some puzzle has several copies
            size = np.bincount(g)
            solved = np.bincount(g, weights=sel[known].astype(np.float64))
            out.groups = int(len(size))
            out.group_accuracy = float((solved / size).mean())
            out.group_all_correct = float((solved == size).mean())
    return out


def summarize_run(run) -> SolveSummary:
    """:func:`summarize` of an open run file (:class:`attractorlab.recording.Run`), with :func:`paper_metrics`."""
    p, r = run.puzzles, run.rollout
    summary = summarize(p.solution, p.rating, p.source, r.correct, r.steps, r.selected, r.selected_majority,
                        run.task, group=p.group if "group" in p else None)
    summary.paper = paper_metrics(run)
    summary.protocol = str(run.config.get("protocol", ""))
    return summary


def paper_metrics(run) -> dict[str, float] | None:
    """The reference evaluation's metrics of a run's final step over instances with a known label: mean pass rate
    (its "exact accuracy"), unbiased pass@k, majority vote, convergence-selected top-1 (the reference score),
    token accuracy (:func:`attractorlab.reference.evaluation_metrics`). None for runs without the needed arrays."""
    r = run.rollout
    if run.n == 0 or not {"cell_logit_change", "token_accuracy"} <= set(r.keys()):
        return None
    known = (run.puzzles.solution > 0).any(axis=1)
    if not known.any():
        return None
    score = reference_score(r.cell_logit_change, r.steps)
    return reference.evaluation_metrics(r.correct[:, :, -1][known], r.lazy("pred")[:, :, -1][known], score[known],
                                        r.token_accuracy[:, :, -1][known])


def random_projection(full_dim: int, k: int, seed: int) -> np.ndarray:
    """A fixed Gaussian basis ``[full_dim, k]`` with orthonormal columns (stored with the run)."""
    if not 1 <= k <= full_dim:
        raise InputError(f"projection dimension must be in [1, {full_dim}], got {k}")
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(full_dim, k, generator=gen, dtype=torch.float64))
    return q.float().numpy()


def _state_layout(model: EquilibriumReasoner, project: int, seed: int):
    """(state_fn, snapshot shape, basis) for ``--project K`` (each cell's [z_H, z_L] on K dims) or full states."""
    c = model.config
    if not project:
        return None, (2, c.seq_len, c.hidden_size), None
    basis = random_projection(2 * c.hidden_size, project, seed)
    basis_t = torch.as_tensor(basis, device=model.device)

    def state_fn(s: LatentState) -> torch.Tensor:
        return torch.cat([s.z_H, s.z_L], dim=-1).float() @ basis_t  # [rows, L, K]

    return state_fn, (c.seq_len, project), basis


def solve_puzzles(model: EquilibriumReasoner, puzzles: PuzzleSet, config: RolloutConfig, out: str | None, *,
                  batch_size: int = 64, states: str = "none", state_stride: int = 1, state_dtype: str = "float16",
                  project: int = 0, updates: tuple[str, ...] | None = None, resume: bool = False,
                  overwrite: bool = False, attrs: dict | None = None,
                  progress: bool = True, rank: int = 0, world: int = 1, compile: bool = False,
                  cuda_graphs: bool = False) -> SolveSummary:
    """Roll out every instance (batch by batch) and append each finished batch to the run file ``out``.

    ``states``, ``state_stride``, ``state_dtype``, ``project`` and ``updates`` (the inner updates ``states="cycles"``
    keeps: names or patterns, default all) say which latent states the run file stores; ``compile`` runs the outer
    step under ``torch.compile``; ``cuda_graphs`` replays it from CUDA graphs (:mod:`attractorlab.graphed`)."""
    from tqdm import tqdm

    from attractorlab import recording  # h5py only when a run is actually solved

    if batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    if len(puzzles) == 0:
        raise InputError("no puzzles to solve (the data holds no rows)")
    if compile:
        require_compiler(model.device)
    if cuda_graphs:
        require_cuda_graphs(model.device, states)
    task = get_task(model.config.task)
    task.check(puzzles)
    state_fn, shape, basis = _state_layout(model, project, config.seed)
    updates = inner_updates(model, updates) if states == "cycles" else ()
    spec = recording.StateSpec(mode=states, stride=state_stride, dtype=state_dtype,
                               shape=shape if states != "none" else (), projection=basis, updates=updates)
    batches = [(i, i * batch_size) for i in range(-(-len(puzzles) // batch_size))][rank::world]
    writer = None
    if out is not None:
        writer = recording.RunWriter(out, breadth=config.breadth, depth=config.depth, attrs=attrs or {},
                                     states=spec, resume=resume, overwrite=overwrite, task=task.name,
                                     seq_len=task.seq_len)
    done_puzzles = writer.n_done if writer is not None else 0
    collected: list[tuple[PuzzleSet, RolloutResult]] = []
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
            res = rollout(model, torch.tensor(chunk.tokens, dtype=torch.long), torch.tensor(chunk.solution),
                          cfg, state_fn=state_fn, state_stride=state_stride, states=states, updates=updates,
                          compile=compile, cuda_graphs=cuda_graphs)
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
            summary = summarize_run(run)
    else:
        summary = _summarize_collected(collected, puzzles, task)
    summary.seconds, summary.compute_steps = seconds, compute
    return summary


def _summarize_collected(collected: list, puzzles: PuzzleSet, task: Task) -> SolveSummary:
    if not collected:  # a rank whose shard was empty
        empty = puzzles[:0]
        return summarize(empty.solution, empty.rating, empty.source, np.zeros((0, 1, 1), bool),
                         np.zeros((0, 1), np.int32), np.zeros(0, np.int32), np.zeros(0, np.int32), task)
    ps = PuzzleSet.concat([c for c, _ in collected])
    rs = [r for _, r in collected]

    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(r, name) for r in rs])

    return summarize(ps.solution, ps.rating, ps.source, cat("correct"), cat("steps"), cat("selected"),
                     cat("selected_majority"), task)
