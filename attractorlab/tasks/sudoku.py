"""Sudoku task: encoding, puzzle sets, validity, symmetry augmentation, exact solver, generator (CSV files:
:mod:`attractorlab.tasks.sudoku_csv`).

Encoding (identical to the reference EqR code): a puzzle is 81 tokens in row-major order with
``0 = pad``, ``1 = blank`` and ``2..10`` = digits ``1..9``. Solutions are stored as *digits* ``1..9``
(``0`` = unknown); training labels are the solution in the token encoding (``digit + 1``).

Difficulty: the rating of a puzzle is the number of backtracks of the deterministic solver in
:mod:`attractorlab.tasks._sudoku_kernels` (singles propagation, MRV branching, digits in increasing order) up
to the first solution; ``0`` means naked and hidden singles alone solve it.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from attractorlab.errors import InputError
from attractorlab.tasks import _sudoku_kernels as _k
from attractorlab.tasks import base

PAD = 0
BLANK = 1
VOCAB_SIZE = 11
SEQ_LEN = 81
CSV_HEADER = "source,question,answer,rating"

_UNITS = _k.UNITS  # [27, 9] cell indices of rows, columns, boxes
_POW2 = np.array([0] + [1 << d for d in range(1, 10)] + [0], dtype=np.int16)  # digit -> bit, 0 outside 1..9
_POPCOUNT = np.array([bin(v).count("1") for v in range(1 << 13)], dtype=np.int8)  # set bits of sums of _POW2

# Byte -> value lookup tables for parsing; 255 marks an invalid character.
Q_LUT = np.full(256, 255, dtype=np.uint8)  # question character -> token
Q_LUT[[ord("."), ord("0")]] = BLANK
Q_LUT[ord("1") : ord("9") + 1] = np.arange(2, 11)
A_LUT = np.full(256, 255, dtype=np.uint8)  # answer character -> digit
A_LUT[ord("1") : ord("9") + 1] = np.arange(1, 10)
_TOKEN_CHARS = np.frombuffer(b"..123456789", dtype=np.uint8)  # token -> character


# --------------------------------------------------------------------------------------------- encoding


def encode(puzzles: str | Sequence[str] | np.ndarray) -> np.ndarray:
    """Puzzles -> tokens ``uint8`` (1 = blank, 2..10 = digits 1..9).

    Accepts one 81-character string (``.`` or ``0`` for blanks) -> ``[81]``, a list of such strings ->
    ``[N, 81]``, or a digit array ``[N, 81]`` / ``[81]`` with ``0`` for blanks -> same shape.
    """
    if isinstance(puzzles, str):
        return encode([puzzles])[0]
    if isinstance(puzzles, np.ndarray) or (len(puzzles) > 0 and not isinstance(puzzles[0], str)):
        return digits_to_tokens(puzzles)
    if len(puzzles) == 0:
        return np.zeros((0, 81), dtype=np.uint8)
    bad = [i for i, s in enumerate(puzzles) if not isinstance(s, str) or len(s) != 81 or not s.isascii()]
    if bad:
        raise InputError(f"puzzle {bad[0]} is not an 81-character ASCII string: {puzzles[bad[0]]!r}")
    raw = np.frombuffer("".join(puzzles).encode("ascii"), dtype=np.uint8).reshape(-1, 81)
    tokens = Q_LUT[raw]
    if (tokens == 255).any():
        i, j = np.argwhere(tokens == 255)[0]
        raise InputError(
            f"puzzle {i} has invalid character {chr(raw[i, j])!r} at position {j} (use 1-9, '.' or '0')"
        )
    return tokens


def decode(grid: np.ndarray, *, digits: bool = False) -> list[str]:
    """Tokens (digits with ``digits=True``) ``[N, 81]`` or ``[81]`` -> 81-character strings, ``.`` = blank."""
    grid = np.atleast_2d(np.asarray(grid))
    tokens = digits_to_tokens(grid) if digits else _check_range(grid, 0, 10, "tokens")
    chars = _TOKEN_CHARS[tokens.reshape(-1, 81)]
    return [row.tobytes().decode("ascii") for row in chars]


def tokens_to_digits(tokens: np.ndarray) -> np.ndarray:
    """Tokens ``[..., 81]`` -> digits ``uint8`` (pad and blank -> 0, 2..10 -> 1..9)."""
    tokens = _check_range(np.asarray(tokens), 0, 10, "tokens")
    return np.where(tokens >= 2, tokens - 1, 0).astype(np.uint8)


def digits_to_tokens(digits: np.ndarray) -> np.ndarray:
    """Digits ``[..., 81]`` (0 = blank) -> tokens ``uint8`` (blank -> 1, 1..9 -> 2..10)."""
    digits = _check_range(np.asarray(digits), 0, 9, "digits")
    return (digits + 1).astype(np.uint8)


def _check_range(a: np.ndarray, lo: int, hi: int, what: str) -> np.ndarray:
    if a.shape[-1:] != (81,):
        raise InputError(f"{what} must have 81 cells in the last axis, got shape {a.shape}")
    if a.dtype.kind not in "iub":
        raise InputError(f"{what} must be integers, got dtype {a.dtype}")
    if a.size and (a.min() < lo or a.max() > hi):
        raise InputError(f"{what} must lie in {lo}..{hi}, got values {a.min()}..{a.max()}")
    return a.astype(np.uint8, copy=False)


# ---------------------------------------------------------------------------------------------- PuzzleSet


class PuzzleSet(base.PuzzleSet):
    """Sudoku puzzles as arrays: a :class:`attractorlab.tasks.PuzzleSet` checked against the Sudoku encoding.

    Attributes:
        tokens: ``[N, 81] uint8`` puzzles in the token encoding (1 = blank, 2..10 = digits 1..9).
        solution: ``[N, 81] uint8`` solution digits 1..9, or a row of zeros when unknown.
        source: ``[N]`` object array of ``str`` (rows from one source share one string).
        rating: ``[N] int32`` solver backtracks up to the first solution, ``-1`` when unknown.
        skipped: rows dropped by ``load_csv(..., skip_invalid=True)``; 0 otherwise.
    """

    def __post_init__(self) -> None:
        tokens = np.asarray(self.tokens)
        if tokens.ndim != 2:
            raise InputError(f"tokens must be [N, 81], got shape {tokens.shape}")
        self.tokens = _check_range(tokens, 1, 10, "tokens")
        n = len(self.tokens)
        solution = np.asarray(self.solution)
        if solution.shape != (n, 81):
            raise InputError(f"solution must be [{n}, 81] like tokens, got shape {solution.shape}")
        self.solution = _check_range(solution, 0, 9, "solution")
        known = (self.solution > 0).sum(axis=1)
        if ((known != 0) & (known != 81)).any():
            raise InputError("each solution row must be complete (digits 1..9) or all zeros (unknown)")
        given = self.tokens >= 2
        if (given & (known[:, None] == 81) & (self.solution != self.tokens - 1)).any():
            raise InputError("a solution disagrees with the given digits of its puzzle")
        super().__post_init__()

    @property
    def labels(self) -> np.ndarray:
        """``[N, 81] uint8`` training targets: the solution as tokens (digit + 1), ``PAD`` where unknown."""
        return np.where(self.solution > 0, self.solution + 1, PAD).astype(np.uint8)


# ----------------------------------------------------------------------------------------------- validity


@functools.lru_cache(maxsize=8)
def _device_tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """:data:`_POW2` and :data:`_UNITS` on ``device``, copied there once (a copy per call would make every graded
    rollout step wait for the GPU)."""
    return torch.as_tensor(_POW2, device=device), torch.as_tensor(_UNITS, device=device)


def is_valid_solution(puzzle: Any, grid: Any) -> Any:
    """True iff ``grid`` is a complete valid Sudoku grid that keeps every given of ``puzzle``.

    Args:
        puzzle: ``[81]`` or ``[N, 81]`` in the token encoding (givens are tokens >= 2).
        grid: same shape, *digits* 1..9 (anything else, e.g. 0, makes the grid invalid).

    Returns ``bool`` for a single numpy grid, a ``[N] bool`` numpy array for a batch; for torch tensors a
    bool tensor of shape ``[]`` or ``[N]`` on the inputs' device. Vectorised (no loop over puzzles):
    each digit d maps to the bit 2**d, and a unit of 9 cells is valid iff its bits sum to 0b1111111110
    (9 powers of two reach a 9-bit popcount only if they are all distinct).
    """
    torch = sys.modules.get("torch")
    is_torch = torch is not None and isinstance(grid, torch.Tensor)
    if is_torch:
        p, g = torch.as_tensor(puzzle, device=grid.device), grid
    else:
        p, g = np.asarray(puzzle), np.asarray(grid)
    if p.shape != g.shape or g.shape[-1:] != (81,) or g.ndim > 2:
        raise InputError(
            f"puzzle and grid must both be [81] or [N, 81], got {tuple(p.shape)} and {tuple(g.shape)}"
        )
    if is_torch:
        g, p = g.long(), p.long()
        pow2, units = _device_tables(g.device)
        bits = pow2[g.clamp(0, 10)]
        ok = (bits[..., units].sum(-1) == 0x3FE).all(-1)
        return ok & ~((p >= 2) & (g != p - 1)).any(-1)
    if g.dtype.kind not in "iu" or p.dtype.kind not in "iu":
        raise InputError(f"puzzle and grid must be integer arrays, got {p.dtype} and {g.dtype}")
    bits = _POW2[np.minimum(g, 10) if g.dtype.kind == "u" else np.clip(g, 0, 10)]
    ok = (bits[..., _UNITS].sum(-1, dtype=np.int16) == 0x3FE).all(-1)
    ok &= ~((p >= 2) & (g.astype(np.int16) != p.astype(np.int16) - 1)).any(-1)
    return bool(ok) if g.ndim == 1 else ok


def givens_conflict(puzzle: np.ndarray) -> np.ndarray:
    """``[N] bool``: True where the givens of ``puzzle [N, 81]`` (token encoding) repeat a digit in a row, column or
    box, so that no solution can exist. Vectorised: the distinct powers of two 2**d of a unit's given digits sum
    without a carry, so the sum's popcount equals their count iff no digit repeats."""
    p = np.asarray(puzzle)
    digit = np.where((p >= 2) & (p <= 10), p.astype(np.int16) - 1, 0)[..., _UNITS]  # [N, 27, 9]
    total = _POW2[digit].sum(-1, dtype=np.int16)  # at most 9 x 2**9
    return (_POPCOUNT[total] != (digit > 0).sum(-1)).any(-1)


# ------------------------------------------------------------------------------------------- augmentation


def augment(tokens: Any, solution: Any, seed: int | np.random.Generator | None = None) -> tuple[Any, Any]:
    """Apply an independent random Sudoku symmetry to each puzzle and its solution.

    The transform of each row is: optional transpose, then a permutation of the 3 bands, of the rows
    within each band, of the 3 stacks and of the columns within each stack, then a relabelling of the
    digits 1..9 (blanks and pads stay as they are). It maps valid puzzles to valid puzzles.

    Args:
        tokens: ``[N, 81]`` or ``[81]`` token encoding (numpy array or torch tensor; tensors on another
            device take a round trip through the CPU).
        solution: same shape, digits 0..9 (0 rows = unknown stay 0).
        seed: int, ``numpy.random.Generator`` (consumed) or None.

    Returns ``(tokens, solution)`` of the input type, dtype and device.
    """
    torch = sys.modules.get("torch")
    is_torch = torch is not None and isinstance(tokens, torch.Tensor)
    t_np = tokens.detach().cpu().numpy() if is_torch else np.asarray(tokens)
    s_np = solution.detach().cpu().numpy() if is_torch else np.asarray(solution)
    if t_np.shape != s_np.shape or t_np.shape[-1:] != (81,) or t_np.ndim > 2:
        raise InputError(
            f"tokens and solution must both be [81] or [N, 81], got {t_np.shape} and {s_np.shape}"
        )
    _check_range(t_np, 0, 10, "tokens")
    _check_range(s_np, 0, 9, "solution")
    n = 1 if t_np.ndim == 1 else len(t_np)
    rng = np.random.default_rng(seed)
    row_perm, col_perm = _line_permutation(rng, n), _line_permutation(rng, n)
    transpose = rng.random(n) < 0.5
    digit_perm = rng.random((n, 9)).argsort(1)
    t_in, s_in = np.ascontiguousarray(t_np.reshape(n, 81)), np.ascontiguousarray(s_np.reshape(n, 81))
    t_out, s_out = np.empty_like(t_in), np.empty_like(s_in)
    _k.apply_symmetry(t_in, s_in, row_perm, col_perm, transpose, digit_perm, t_out, s_out)
    t_out, s_out = t_out.reshape(t_np.shape), s_out.reshape(s_np.shape)
    if is_torch:
        return torch.from_numpy(t_out).to(tokens.device), torch.from_numpy(s_out).to(solution.device)
    return t_out, s_out


def _line_permutation(rng: np.random.Generator, n: int) -> np.ndarray:
    """``[n, 9]`` random row (or column) orders that permute the 3 bands and the 3 lines inside each band."""
    bands = rng.random((n, 3)).argsort(1)
    inside = rng.random((n, 3, 3)).argsort(2)
    return (bands[:, :, None] * 3 + inside).reshape(n, 9)


# ----------------------------------------------------------------------------------------- solver, rating


@dataclass(eq=False)
class SolveResult:
    """Output of :func:`solve` for ``N`` puzzles.

    Attributes:
        solution: ``[N, 81] uint8`` digits of the first solution found (zeros when there is none).
        n_solutions: ``[N] int8`` number of solutions, capped at ``max_solutions`` (2 by default).
        backtracks: ``[N] int64`` failed guesses before the first solution (= the difficulty rating).
    """

    solution: np.ndarray
    n_solutions: np.ndarray
    backtracks: np.ndarray


def _workers(workers: int | None) -> int:
    if workers is None:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    return workers


def _as_puzzle_tokens(puzzles: Any, digits: bool) -> np.ndarray:
    if isinstance(puzzles, str) or (isinstance(puzzles, list) and puzzles and isinstance(puzzles[0], str)):
        return np.atleast_2d(encode(puzzles))
    arr = np.atleast_2d(np.asarray(puzzles))
    if arr.ndim != 2:
        raise InputError(f"puzzles must be [N, 81] or [81], got shape {arr.shape}")
    if digits:
        return digits_to_tokens(arr)
    if arr.size and arr.min() < 1:
        raise InputError(
            "puzzle tokens must be 1 (blank) or 2..10 (digits); for digit arrays pass digits=True"
        )
    return np.ascontiguousarray(_check_range(arr, 1, 10, "tokens"))


def solve(
    puzzles: Any, *, digits: bool = False, max_solutions: int = 2, workers: int | None = None
) -> SolveResult:
    """Solve puzzles exactly with the deterministic backtracking solver (parallel over puzzles).

    Args:
        puzzles: tokens ``[N, 81]`` / ``[81]``, digits with ``digits=True`` (0 = blank), or 81-char strings.
        max_solutions: stop counting at this many solutions (2 tells unique from ambiguous).
        workers: threads (default: all available cores).
    """
    if max_solutions < 1:
        raise InputError(f"max_solutions must be >= 1, got {max_solutions}")
    tokens = _as_puzzle_tokens(puzzles, digits)
    n = len(tokens)
    res = SolveResult(np.zeros((n, 81), np.uint8), np.zeros(n, np.int8), np.zeros(n, np.int64))

    def run(a: int, b: int) -> None:
        outputs = (res.solution[a:b], res.n_solutions[a:b], res.backtracks[a:b])
        _k.solve_batch(tokens[a:b], max_solutions, *outputs)

    size = max(64, -(-n // (4 * _workers(workers))))
    ranges = [(a, min(a + size, n)) for a in range(0, n, size)]
    if len(ranges) <= 1:
        for a, b in ranges:
            run(a, b)
    else:
        with ThreadPoolExecutor(_workers(workers)) as pool:
            list(pool.map(lambda r: run(*r), ranges))
    return res


def rate(puzzles: Any, *, digits: bool = False, workers: int | None = None) -> np.ndarray:
    """``[N] int32`` difficulty ratings (solver backtracks up to the first solution; -1 if unsolvable)."""
    res = solve(puzzles, digits=digits, max_solutions=1, workers=workers)
    return np.where(res.n_solutions > 0, res.backtracks, -1).astype(np.int32)


def difficulty_band(rating: Any) -> np.ndarray:
    """Rating -> band name: ``"singles"`` (0), ``"few"`` (1-5), ``"search"`` (6+), ``"unknown"`` (< 0)."""
    r = np.asarray(rating)
    return np.where(r < 0, "unknown", np.where(r == 0, "singles", np.where(r <= 5, "few", "search")))


# -------------------------------------------------------------------------------------------- generator

_GEN_CHUNK = 32


def generate(
    n: int,
    seed: int = 0,
    *,
    difficulty: str | tuple[int, int] = "mixed",
    progress: bool = False,
    max_attempts: int = 1000,
    workers: int | None = None,
) -> PuzzleSet:
    """Generate ``n`` puzzles with unique solutions and ratings, deterministically from ``seed``.

    Every puzzle starts from a random solved grid whose clues are removed in random order:

    - ``"singles"``: a clue is removed only while singles propagation still solves the puzzle (hence the
      solution is unique); rating 0, about 25 clues.
    - ``"search"``: a clue is removed while the solution stays unique (a minimal puzzle); kept if its rating
      is >= 1, otherwise a new grid is tried. About 40% of minimal puzzles need search; ratings are mostly
      1-10 (median ~2).
    - ``"mixed"``: even indices are ``"singles"`` puzzles, odd indices ``"search"`` puzzles (so any prefix is
      half and half).
    - ``(lo, hi)``: minimal puzzles with ``lo <= rating <= hi`` (rejection sampling; bands above ~20 are
      rare among minimal puzzles and slow).

    Puzzle ``i`` depends only on ``(seed, i)``, not on ``workers``. ``source`` is ``"generated:<band>"``.

    Raises:
        ValueError: bad arguments, or no puzzle in the band within ``max_attempts`` grids for some index.
    """
    if not isinstance(n, int | np.integer) or n < 0:
        raise InputError(f"n must be a non-negative integer, got {n!r}")
    if max_attempts < 1:
        raise InputError(f"max_attempts must be >= 1, got {max_attempts}")
    search = (1, np.iinfo(np.int64).max)
    if difficulty in ("singles", "search", "mixed"):
        singles = np.arange(n) % 2 == 0 if difficulty == "mixed" else np.full(n, difficulty == "singles")
        lo_arr, hi_arr = (np.where(singles, 0, bound).astype(np.int64) for bound in search)
        source = np.where(singles, "generated:singles", "generated:search").astype(object)
    elif (
        isinstance(difficulty, tuple) and len(difficulty) == 2 and all(isinstance(v, int) for v in difficulty)
    ):
        lo, hi = difficulty
        if not 0 <= lo <= hi:
            raise InputError(f"rating band must satisfy 0 <= lo <= hi, got {difficulty}")
        singles = np.zeros(n, dtype=bool)
        lo_arr, hi_arr = np.full(n, lo, np.int64), np.full(n, hi, np.int64)
        source = np.full(n, f"generated:{lo}-{hi}", dtype=object)
    else:
        raise InputError(
            f"difficulty must be 'singles', 'search', 'mixed' or (lo, hi) ints, got {difficulty!r}"
        )
    tokens, solution = np.zeros((n, 81), np.uint8), np.zeros((n, 81), np.uint8)
    rating, attempts = np.zeros(n, np.int64), np.zeros(n, np.int64)
    seed64 = np.uint64(int(seed) % 2**64)

    def run(a: int, b: int) -> int:
        s = slice(a, b)
        outputs = (tokens[s], solution[s], rating[s], attempts[s])
        _k.generate_batch(seed64, a, singles[s], lo_arr[s], hi_arr[s], max_attempts, *outputs)
        return b - a

    ranges = [(a, min(a + _GEN_CHUNK, n)) for a in range(0, n, _GEN_CHUNK)]
    with (
        ThreadPoolExecutor(_workers(workers)) as pool,
        tqdm(total=n, disable=not progress, desc="generate") as bar,
    ):
        for (a, b), done in zip(ranges, pool.map(lambda r: run(*r), ranges), strict=True):
            failed = np.flatnonzero(attempts[a:b] < 0)
            if len(failed):
                pool.shutdown(wait=False, cancel_futures=True)
                i = a + failed[0]
                raise InputError(
                    f"no puzzle with rating in [{lo_arr[i]}, {hi_arr[i]}] within max_attempts={max_attempts} "
                    f"grids (index {i}); lower the band or raise max_attempts"
                )
            bar.update(done)
    return PuzzleSet(tokens, solution, source, rating)


def load_reference_split(path: str | os.PathLike, set_name: str = "all") -> PuzzleSet:
    """Puzzles of a reference dataset split directory: ``all__inputs.npy`` (tokens) and ``all__labels.npy`` (digit
    + 1, 0 where unlabelled); every augmented copy is one row, its source ``reference:<split>``."""
    from attractorlab import reference

    split = reference.read_split(path, set_name)
    if split.inputs.shape[1:] != (SEQ_LEN,):
        raise InputError(f"{path}: Sudoku splits have {SEQ_LEN} cells per row, got {split.inputs.shape[1]}")
    labels = np.asarray(split.labels)
    solution = np.where(labels >= 2, labels - 1, 0).astype(np.uint8)
    rows = np.flatnonzero(~(np.asarray(split.inputs) >= 1).all(axis=1))
    if len(rows):
        raise InputError(f"{path}: row {rows[0]} of {set_name}__inputs.npy holds a pad token (0) in a Sudoku grid")
    name = Path(path).resolve().name
    return PuzzleSet(np.asarray(split.inputs), solution, f"reference:{name}", np.full(len(labels), -1, np.int32),
                     group=split.example_groups())


def __getattr__(name: str) -> Any:
    """``load_csv`` and ``save_csv`` live in :mod:`attractorlab.tasks.sudoku_csv` (imported
    on first use)."""
    if name in ("load_csv", "save_csv"):
        from attractorlab.tasks import sudoku_csv

        return getattr(sudoku_csv, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ------------------------------------------------------------------------------------------------- the task

BANDS = ("singles", "few", "search")


class SudokuTask(base.Task):
    """Sudoku as a :class:`attractorlab.tasks.Task`: answers are digits 1..9 (0 = unknown or not a digit)."""

    name = "sudoku"
    seq_len = SEQ_LEN
    vocab_size = VOCAB_SIZE
    token_names = ("pad", "blank", *(str(d) for d in range(1, 10)))
    board_shape = (9, 9)
    difficulties = ("mixed", "singles", "search")
    bands = BANDS
    answer_names = "solution digits 1..9, 0 = unknown"

    def answer(self, logits: Any, *, full_vocab: bool = False) -> Any:
        """The most likely digit per cell, ``[..., 81, 11] -> [..., 81] uint8``. By default only the digit tokens
        compete; with ``full_vocab`` a cell whose argmax is pad or blank reads as 0 (never valid or correct)."""
        if full_vocab:
            token = logits.argmax(-1)
            return (token - 1).clamp_min(0).to(torch.uint8)
        return (logits[..., 2:].argmax(-1) + 1).to(torch.uint8)

    def targets(self, solution: np.ndarray) -> np.ndarray:
        return np.where(solution > 0, solution + 1, PAD).astype(np.uint8)

    def is_valid(self, inputs: Any, answer: Any) -> Any:
        return is_valid_solution(inputs, answer)

    def difficulty_band(self, rating: Any) -> np.ndarray:
        return difficulty_band(rating)

    def check(self, puzzles: base.PuzzleSet) -> PuzzleSet:
        if isinstance(puzzles, PuzzleSet):
            return puzzles
        return PuzzleSet(puzzles.tokens, puzzles.solution, puzzles.source, puzzles.rating, puzzles.skipped,
                         group=puzzles.group)

    def augment(self, tokens: np.ndarray, solution: np.ndarray,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return augment(tokens, solution, rng)

    def load(self, path: str | os.PathLike, **options: Any) -> PuzzleSet:
        """A Sudoku-Extreme CSV (or plain puzzle list, see :func:`load_csv`) or a reference dataset split directory
        (``data/sudoku-extreme-1k-aug-1000/test``: inputs are tokens, labels digit + 1; memory-mapped)."""
        from attractorlab.tasks.sudoku_csv import load_csv

        if Path(path).is_dir():
            return load_reference_split(path, **options)
        return load_csv(path, **options)

    def export(self, puzzles: PuzzleSet, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write ``puzzles`` as a reference dataset split directory (the HRM layout the reference code reads)."""
        from attractorlab import reference

        return reference.write_split(path, puzzles.tokens, self.targets(puzzles.solution), groups=puzzles.group,
                                     metadata={"vocab_size": VOCAB_SIZE, "pad_id": PAD, "ignore_label_id": 0,
                                               "blank_identifier_id": 0}, overwrite=overwrite)

    def generate(self, n: int, seed: int = 0, *, difficulty: str | tuple[int, int] | None = None,
                 progress: bool = False) -> PuzzleSet:
        return generate(n, seed, difficulty=difficulty or "mixed", progress=progress)

    def render(self, tokens: np.ndarray, answer: np.ndarray | None = None) -> str:
        """9 lines of 9 characters in boxes of 3: the answer's digits, or the puzzle's givens and ``.``."""
        cells = decode(np.asarray(answer), digits=True)[0] if answer is not None else decode(np.asarray(tokens))[0]
        rows = [" ".join(cells[r * 9 + c * 3:r * 9 + c * 3 + 3] for c in range(3)) for r in range(9)]
        return "\n".join(rows[i] + ("\n" if i in (2, 5) else "") for i in range(9))

    def render_string(self, answer: str) -> str:
        """81 characters -> 9 lines of 9 (blocks of 3 separated by spaces)."""
        if len(answer) != 81:
            return answer
        return "\n".join(" ".join(answer[r * 9 + c:r * 9 + c + 3] for c in (0, 3, 6)) for r in range(9))


TASK = SudokuTask()
