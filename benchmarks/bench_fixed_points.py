"""Fixed-point finding: our Krylov Levenberg-Marquardt solver vs a FixedPointFinder-style Adam baseline.

Both methods start from the same states and are held to the same absolute residual ``||f(z) - z|| <= tol``.
The baseline re-implements the optimisation loop of FixedPointFinder (Golub & Sussillo 2018, TF version,
github.com/mattgolub/fixed-point-finder) with its published defaults:

- joint optimisation of the mean of ``q_i = 0.5 ||f(z_i) - z_i||^2`` over all starts;
- Adam with ``epsilon = 0.01`` (``adam_hps``), learning rate from recurrent-whisperer's
  ``AdaptiveLearningRate``: initial rate 1.0, times 0.95 when the latest loss is worse than all of the
  previous 5 and times 1/0.95 after 5 monotonic decreases, at most one change per 5 steps;
- ``AdaptiveGradNormClip``: global-norm clipping at the 95th percentile of the last 128 gradient norms
  (initial clip value 1e12, so the first step is unclipped);
- stop when every start has ``q < tol_q`` or ``|dq| < tol_dq * learning_rate`` (tol_q 1e-12, tol_dq 1e-20),
  or after ``max_iters = 5000``. Here ``tol_q = 0.5 tol^2`` so that ``q < tol_q`` means ``residual < tol``.

The ``true`` column counts distinct TRUE fixed points among what each method returns: points whose
``q = 0.5 ||f(z) - z||^2`` recomputed in float64 is below ``--true-q`` (1e-9), de-duplicated at 1e-3 of the median
norm. For the baseline the candidates are its converged end states; for find_fixed_points the unique points it
reports (``z_refined``: refined in float64 when the map accepts float64 inputs). With ``--dtype float32`` the
starts (and the map's arithmetic) are float32 and the column shows whether float32 results are real fixed points.

A case is one function returning a :class:`Case`; add it to ``CASES`` to benchmark another map.

    python benchmarks/bench_fixed_points.py                  # tanh RNN, d = 256, 300 starts
    python benchmarks/bench_fixed_points.py --dtype float32  # the same problem from float32 starts
    python benchmarks/bench_fixed_points.py --g 1.2 --n 500
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from attractorlab.cli import DEFAULT_CHECKPOINT
from attractorlab.dynamics import KIND_NAMES, find_fixed_points


@dataclass
class Case:
    """A benchmark problem: map ``f: [N, d] -> [N, d]``, start states ``z0 [N, d]``, absolute tolerance; ``f64``
    evaluates the same map in float64 (to check which results are true fixed points), None if there is none."""

    name: str
    f: Callable[[torch.Tensor], torch.Tensor]
    z0: torch.Tensor
    tol: float
    f64: Callable[[torch.Tensor], torch.Tensor] | None = None


@dataclass
class Outcome:
    """What one method produced: end states ``z [N, d]``, residuals ``[N]``, wall time, iterations, and the
    candidate fixed points ``points [M, d]`` it reports (None: its converged end states)."""

    method: str
    seconds: float
    z: torch.Tensor
    residual: torch.Tensor
    iterations: int
    note: str = ""
    points: torch.Tensor | None = None


def tanh_rnn_case(args: argparse.Namespace) -> Case:
    """``f(z) = tanh(W z + b)``, ``W = g * randn / sqrt(d)``; starts sampled from trajectories, plus noise. The map
    computes in the dtype of its input (weights drawn in float64, rounded once for float32)."""
    gen = torch.Generator().manual_seed(args.seed)
    dtype = getattr(torch, args.dtype)
    d = args.d
    weight64 = args.g * torch.randn(d, d, generator=gen, dtype=torch.float64) / d**0.5
    bias64 = 0.1 * torch.randn(d, generator=gen, dtype=torch.float64)
    params = {t: (weight64.to(t), bias64.to(t)) for t in (torch.float32, torch.float64)}

    def f(z: torch.Tensor) -> torch.Tensor:
        weight, bias = params[z.dtype]
        return torch.tanh(z @ weight.T + bias)

    n_traj, n_steps = 32, 100
    z = torch.randn(n_traj, d, generator=gen, dtype=torch.float64).to(dtype)
    states = []
    with torch.no_grad():
        for _ in range(n_steps):
            z = f(z)
            states.append(z)
    states = torch.stack(states).reshape(-1, d)
    pick = torch.randperm(states.shape[0], generator=gen)[: args.n]
    z0 = states[pick] + args.noise * torch.randn(args.n, d, generator=gen, dtype=torch.float64).to(dtype)
    return Case(f"tanh RNN d={d} g={args.g} N={args.n} {args.dtype}", f, z0, args.tol, f64=f)


def reasoner_cases(args: argparse.Namespace) -> list[Case]:
    """The trained reasoner's outer step (noise off), one case per generated puzzle (the map depends on the
    puzzle); starts are the states after ``--warm`` noisy outer steps from the model's own random initial
    states (trajectory samples of ``--n-reasoner`` restarts)."""
    from attractorlab import checkpoint, sudoku

    dtype = getattr(torch, args.dtype)
    model = checkpoint.load(args.checkpoint).requires_grad_(False).to(dtype)
    puzzles = sudoku.generate(args.puzzles, seed=args.seed, difficulty=args.difficulty)
    cases = []
    for i in range(args.puzzles):
        tokens = torch.as_tensor(puzzles.tokens[i : i + 1], dtype=torch.long)
        gen = torch.Generator().manual_seed(args.seed + i)
        with torch.no_grad():
            state = model.init_state(tokens.expand(args.n_reasoner, -1), generator=gen)
            for _ in range(args.warm):
                state = model.step(state, tokens.expand(args.n_reasoner, -1), generator=gen)
        z0 = state.flatten().to(dtype)
        cases.append(Case(f"reasoner puzzle {i}", model.as_map(tokens), z0,
                          args.reasoner_tol * float(z0.norm(dim=1).median())))
    return cases


def tanh_rnn_cases(args: argparse.Namespace) -> list[Case]:
    return [tanh_rnn_case(args)]


CASES: dict[str, Callable[[argparse.Namespace], list[Case]]] = {"tanh_rnn": tanh_rnn_cases,
                                                                  "reasoner": reasoner_cases}


class _AdaptiveLearningRate:
    """Learning-rate schedule of recurrent-whisperer's AdaptiveLearningRate with its defaults (no warm-up)."""

    def __init__(self, rate: float = 1.0, down: float = 0.95, up: float = 1 / 0.95, window: int = 5):
        self.rate, self.down, self.up, self.window = rate, down, up, window
        self.losses: list[float] = []
        self.step, self.last_change = 0, 0

    def update(self, loss: float) -> None:
        self.losses.append(loss)
        if self.step == 0:
            self.last_change = 0
        elif self.step >= self.last_change + self.window:
            recent = self.losses[-(self.window + 1) :]
            if all(recent[-1] > x for x in recent[:-1]):
                self.rate *= self.down
                self.last_change = self.step
            elif all(b < a for a, b in zip(recent[:-1], recent[1:], strict=True)):
                self.rate *= self.up
                self.last_change = self.step
        self.step += 1


class _AdaptiveGradNormClip:
    """recurrent-whisperer's AdaptiveGradNormClip: 95th percentile of the last 128 global gradient norms."""

    def __init__(self, window: int = 128, percentile: float = 95.0, initial: float = 1e12):
        self.window, self.percentile, self.value = window, percentile, initial
        self.norms: list[float] = []

    def update(self, norm: float) -> None:
        self.norms = (self.norms + [norm])[-self.window :]
        self.value = min(float(np.percentile(self.norms, self.percentile)), 1e12)


def fpf_adam(case: Case, max_iters: int = 5000, tol_dq: float = 1e-20) -> Outcome:
    """FixedPointFinder's joint Adam optimisation of q (see the module docstring for the defaults)."""
    tol_q = 0.5 * case.tol**2
    start = time.perf_counter()
    x = case.z0.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=1.0, eps=0.01)
    schedule, clipper = _AdaptiveLearningRate(), _AdaptiveGradNormClip()
    q_prev = torch.full((x.shape[0],), float("nan"), dtype=x.dtype)
    iteration = 1
    while True:
        for group in optimizer.param_groups:
            group["lr"] = schedule.rate
        residual = case.f(x) - x
        q = 0.5 * (residual**2).sum(dim=1)
        q_mean = q.mean()
        optimizer.zero_grad()
        q_mean.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_([x], clipper.value))
        optimizer.step()
        q, dq = q.detach(), (q.detach() - q_prev).abs()
        if iteration > 1 and bool(((dq < tol_dq * schedule.rate) | (q < tol_q)).all()):
            break
        if iteration + 1 > max_iters:
            break
        q_prev = q
        schedule.update(float(q_mean.detach()))
        clipper.update(grad_norm)
        iteration += 1
    seconds = time.perf_counter() - start
    z = x.detach()
    with torch.no_grad():
        res = (case.f(z) - z).norm(dim=1)
    return Outcome("FPF Adam (baseline)", seconds, z, res, iteration)


def ours(case: Case, snap: bool = True, repeats: int = 1, refine: bool = True, own_tol: bool = False) -> Outcome:
    """attractorlab's find_fixed_points at the same absolute tolerance (its own is relative, see there), or at its
    own default tolerance with ``own_tol``; the median wall time of ``repeats`` identical runs (the result is
    deterministic)."""
    scale = float(case.z0.norm(dim=1).clamp_min(1.0).max())
    tol = None if own_tol else case.tol / (2 * scale)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fps = find_fixed_points(case.f, case.z0, tol=tol, k=0, snap=snap, refine=refine)
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    kinds = torch.bincount(fps.kind.long(), minlength=len(KIND_NAMES)).tolist()
    note = ", ".join(f"{n} {name}" for name, n in zip(KIND_NAMES, kinds, strict=True))
    iterations = int(fps.iterations.max())
    name = "find_fixed_points" if snap and refine else ("  same, snap=False" if refine else "  same, refine=False")
    note += f"; {len(fps)} points reported (refined in {fps.refined_dtype})"
    return Outcome(name, seconds, fps.final, fps.final_residual, iterations, note, points=fps.z_refined)


def _unique_count(z: torch.Tensor, tol: float) -> int:
    scale = float(z.norm(dim=1).median().clamp_min(1.0)) * tol
    leaders: list[torch.Tensor] = []
    for row in z:
        if not any(float((row - lead).norm()) <= scale for lead in leaders):
            leaders.append(row)
    return len(leaders)


def true_count(case: Case, outcome: Outcome, true_q: float) -> str:
    """Distinct candidates of ``outcome`` with q = 0.5 ||f(z) - z||^2 < true_q recomputed in float64."""
    if case.f64 is None:
        return "n/a"
    z = outcome.points if outcome.points is not None else outcome.z[outcome.residual <= case.tol]
    z = z.double()
    with torch.no_grad():
        q = 0.5 * ((case.f64(z) - z) ** 2).sum(dim=1)
    true = z[q < true_q]
    return str(_unique_count(true, 1e-3) if true.shape[0] else 0)


def report(case: Case, outcomes: list[Outcome], true_q: float = 1e-9) -> None:
    print(f"\n== {case.name}: {case.z0.shape[0]} starts, tolerance ||f(z) - z|| <= {case.tol:g}; "
          f"true: q < {true_q:g} in float64")
    print(f"{'method':<22}{'seconds':>9}{'iters':>7}{'converged':>11}{'unique':>8}{'true':>6}{'median res':>12}"
          f"{'max res':>10}")
    for o in outcomes:
        ok = o.residual <= case.tol
        unique = _unique_count(o.z[ok], 1e-3) if bool(ok.any()) else 0
        print(f"{o.method:<22}{o.seconds:>9.2f}{o.iterations:>7d}{int(ok.sum()):>7d}/{len(ok):<3d}{unique:>8d}"
              f"{true_count(case, o, true_q):>6}{float(o.residual.median()):>12.2e}{float(o.residual.max()):>10.2e}"
              f"  {o.note}")


def report_total(results: list[tuple[Case, list[Outcome]]]) -> None:
    """Totals over cases and the speed-up of each of our variants over the baseline (the first outcome); a
    speed-up is a lower bound when the baseline stopped at its cap having converged fewer starts."""
    totals = []
    for i in range(len(results[0][1])):
        seconds = sum(outs[i].seconds for _, outs in results)
        converged = sum(int((outs[i].residual <= case.tol).sum()) for case, outs in results)
        starts = sum(len(outs[i].residual) for _, outs in results)
        totals.append((results[0][1][i].method, seconds, converged, starts))
    if len(results) > 1:
        print(f"\n== total over {len(results)} cases")
        for method, seconds, converged, starts in totals:
            print(f"{method:<22}{seconds:>9.2f}{'':>7}{converged:>7d}/{starts:<3d}")
    _, base_s, base_c, n = totals[0]
    for method, ours_s, ours_c, _ in totals[1:]:
        bound = "" if base_c >= ours_c else (f" (a lower bound: the baseline converged {base_c}/{n} within its "
                                             f"iteration cap, ours {ours_c}/{n})")
        print(f"speed-up of {method.strip()} (wall time, baseline / ours): {base_s / ours_s:.1f}x{bound}")


def solved_subset(case: Case, solved: torch.Tensor, args: argparse.Namespace) -> None:
    """Both methods again on only the starts the baseline solved (solved: [N] bool): the time each needs to
    reach the tolerance on starts where both can, without the time either spends on starts it cannot solve."""
    subset = Case(f"{case.name}, only the {int(solved.sum())} starts the baseline solved", case.f, case.z0[solved],
                  case.tol, case.f64)
    outcomes = [fpf_adam(subset, max_iters=args.max_iters), ours(subset, repeats=args.repeats)]
    report(subset, outcomes, args.true_q)
    print(f"speed-up on these starts (wall time, baseline / ours): {outcomes[0].seconds / outcomes[1].seconds:.1f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["tanh_rnn"], choices=list(CASES), help="cases to run")
    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT,
                        help="reasoner case: model checkpoint")
    parser.add_argument("--puzzles", type=int, default=4, help="reasoner case: generated puzzles (one map each)")
    parser.add_argument("--difficulty", default="singles", help="reasoner case: generator difficulty")
    parser.add_argument("--n-reasoner", type=int, default=8, help="reasoner case: start states per puzzle")
    parser.add_argument("--warm", type=int, default=8, help="reasoner case: noisy outer steps before starting")
    parser.add_argument("--reasoner-tol", type=float, default=1e-5,
                        help="reasoner case: tolerance relative to the median state norm")
    parser.add_argument("--d", type=int, default=256, help="state dimension of the tanh RNN")
    parser.add_argument("--g", type=float, default=1.5, help="gain of the tanh RNN weights")
    parser.add_argument("--n", type=int, default=300, help="number of start states")
    parser.add_argument("--noise", type=float, default=0.01, help="std of the noise added to sampled states")
    parser.add_argument("--tol", type=float, default=None,
                        help="absolute residual tolerance for both (default: FPF's tol_q = 1e-12 in float64; in "
                             "float32, where that is out of reach, q < 1e-9)")
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"],
                        help="dtype of the start states (and of the map's arithmetic): float32 starts test whether "
                             "float32 results are true fixed points")
    parser.add_argument("--true-q", type=float, default=1e-9,
                        help="a point is a TRUE fixed point when q = 0.5 ||f(z) - z||^2 recomputed in float64 is "
                             "below this")
    parser.add_argument("--max-iters", type=int, default=5000, help="baseline iteration cap (FPF default)")
    parser.add_argument("--no-snap-too", action="store_true",
                        help="also run find_fixed_points with snap=False (every start polished on its own)")
    parser.add_argument("--no-refine-too", action="store_true",
                        help="also run find_fixed_points with refine=False (points left at the working dtype's "
                             "precision)")
    parser.add_argument("--own-tol", action="store_true",
                        help="run find_fixed_points at its own default tolerance (relative 1e-10 in float64, 1e-5 "
                             "in float32), as a user would, instead of the baseline's; its converged column still "
                             "applies --tol")
    parser.add_argument("--repeats", type=int, default=3,
                        help="time find_fixed_points as the median of this many runs (the baseline runs once)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and start states")
    args = parser.parse_args(argv)
    if args.tol is None:
        args.tol = 2**0.5 * (1e-6 if args.dtype == "float64" else 10**-4.5)
    torch.set_num_threads(args.threads)
    for name in args.cases:
        cases = CASES[name](args)
        warm_up = Case(cases[0].name, cases[0].f, cases[0].z0[:4], cases[0].tol)
        fpf_adam(warm_up, max_iters=20)
        ours(warm_up)
        results = []
        for case in cases:
            own = args.own_tol
            outcomes = [fpf_adam(case, max_iters=args.max_iters), ours(case, repeats=args.repeats, own_tol=own)]
            if args.no_snap_too:
                outcomes.append(ours(case, snap=False, repeats=args.repeats, own_tol=own))
            if args.no_refine_too:
                outcomes.append(ours(case, repeats=args.repeats, refine=False, own_tol=own))
            results.append((case, outcomes))
            report(case, results[-1][1], args.true_q)
            solved = outcomes[0].residual <= case.tol
            if 0 < int(solved.sum()) < len(solved):
                solved_subset(case, solved, args)
        report_total(results)

if __name__ == "__main__":
    main()
