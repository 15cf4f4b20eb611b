"""Numba kernels behind :mod:`attractorlab.sudoku`: exact solver, singles propagation and generator.

Internal module: the public API lives in ``sudoku.py``. Conventions used throughout:

- a grid is 81 cells in row-major order;
- ``cand [81] uint16`` holds the candidate digits of each cell as a bitmask, bit ``d - 1`` for digit ``d``
  (so ``0x1FF`` = any digit, a single bit = a decided cell, ``0`` = contradiction);
- puzzles arrive in the token encoding (1 = blank, 2..10 = digits 1..9) and solutions leave as digits 1..9;
- randomness comes from a per-puzzle SplitMix64 stream seeded from ``(seed, index, attempt)``, so results do
  not depend on the number of threads or on how the work is chunked.

The solver keeps an explicit stack of candidate arrays (no recursion). After every assignment it runs
*singles propagation* to a fixed point: naked singles (a cell with one candidate removes it from its 20
peers) and hidden singles (a digit with one possible place in a row, column or box goes there). It branches
on the undecided cell with the fewest candidates (lowest index on ties) and tries digits in increasing order
(random order in the generator's grid filler). A *backtrack* is a guess whose propagation runs into a
contradiction; the difficulty rating of a puzzle is the number of backtracks before the first solution.
"""

from __future__ import annotations

import numpy as np
from numba import njit

FULL = 0x1FF
MAX_DEPTH = 82


def _tables() -> tuple[np.ndarray, np.ndarray]:
    """Unit and peer index tables: ``units [27, 9]`` (rows, columns, boxes) and ``peers [81, 20]``."""
    rows = [[r * 9 + c for c in range(9)] for r in range(9)]
    cols = [[r * 9 + c for r in range(9)] for c in range(9)]
    boxes = [
        [(br + i) * 9 + bc + j for i in range(3) for j in range(3)] for br in (0, 3, 6) for bc in (0, 3, 6)
    ]
    units = np.array(rows + cols + boxes, dtype=np.int64)
    peers = np.zeros((81, 20), dtype=np.int64)
    for cell in range(81):
        ps = sorted({p for u in units if cell in u for p in u} - {cell})
        peers[cell] = ps
    return units, peers


UNITS, PEERS = _tables()


@njit(cache=True)
def _popcount(m: int) -> int:
    n = 0
    while m:
        m &= m - 1
        n += 1
    return n


@njit(cache=True)
def _lowest_digit(m: int) -> int:
    """Digit (1..9) of the lowest set bit of a non-zero mask."""
    d = 1
    while not (m & 1):
        m >>= 1
        d += 1
    return d


@njit(cache=True)
def _splitmix64(state: np.ndarray) -> np.uint64:
    """Advance ``state [1] uint64`` and return the next 64 random bits."""
    state[0] += np.uint64(0x9E3779B97F4A7C15)
    z = state[0]
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True)
def randint(state: np.ndarray, n: int) -> int:
    """Uniform integer in ``[0, n)`` (``n`` small, so the modulo bias is negligible)."""
    return int((_splitmix64(state) >> np.uint64(11)) % np.uint64(n))


@njit(cache=True)
def seed_state(seed: np.uint64, index: int, attempt: int) -> np.ndarray:
    state = np.empty(1, dtype=np.uint64)
    state[0] = seed
    _splitmix64(state)
    state[0] ^= np.uint64(index) * np.uint64(0xD1B54A32D192ED03)
    _splitmix64(state)
    state[0] ^= np.uint64(attempt) * np.uint64(0x8CB92BA72F3D8DD7)
    _splitmix64(state)
    return state


@njit(cache=True)
def _propagate(cand: np.ndarray, done: np.ndarray) -> bool:
    """Naked + hidden singles on ``cand [81]`` in place until nothing changes; False on contradiction.

    ``done [81] bool`` marks decided cells whose digit was already removed from their peers.
    """
    while True:
        progress = False
        for c in range(81):
            m = cand[c]
            if m == 0:
                return False
            if not done[c] and (m & (m - 1)) == 0:
                done[c] = True
                progress = True
                for k in range(20):
                    p = PEERS[c, k]
                    if cand[p] & m:
                        cand[p] &= ~m
                        if cand[p] == 0:
                            return False
        for u in range(27):
            once = 0
            twice = 0
            for k in range(9):
                m = cand[UNITS[u, k]]
                twice |= once & m
                once |= m
            if once != FULL:
                return False
            hidden = once & ~twice
            if hidden:
                for k in range(9):
                    c = UNITS[u, k]
                    m = cand[c] & hidden
                    if m and cand[c] != m:
                        if m & (m - 1):
                            return False
                        cand[c] = m
                        progress = True
        if not progress:
            return True


@njit(cache=True)
def _initial_candidates(tokens: np.ndarray, cand: np.ndarray, done: np.ndarray) -> None:
    """Fill ``cand``/``done`` from ``tokens [81]`` (1 = blank, 2..10 = digits) without propagating."""
    for c in range(81):
        t = tokens[c]
        cand[c] = FULL if t < 2 else (1 << (t - 2))
        done[c] = False


@njit(cache=True)
def _search(
    cand0: np.ndarray,
    max_solutions: int,
    randomized: bool,
    rng: np.ndarray,
    out: np.ndarray,
) -> tuple[int, int]:
    """Depth-first search from ``cand0 [81]`` (not yet propagated).

    Call it with typed arguments (``np.int64(1)``, ``np.bool_(False)``), not literals: numba would compile
    a separate copy of this large function for every literal combination.

    Writes the first solution found (digits 1..9) to ``out [81]``. Returns ``(n_solutions, backtracks)``
    with ``n_solutions`` capped at ``max_solutions`` and ``backtracks`` counted up to the first solution
    (all backtracks when there is none).
    """
    cand = np.empty((MAX_DEPTH, 81), dtype=np.uint16)
    done = np.zeros((MAX_DEPTH, 81), dtype=np.bool_)
    branch_cell = np.empty(MAX_DEPTH, dtype=np.int64)
    remaining = np.zeros(MAX_DEPTH, dtype=np.int64)
    cand[0, :] = cand0
    n_solutions = 0
    backtracks = 0
    first_backtracks = -1
    if not _propagate(cand[0], done[0]):
        return 0, 0
    depth = 0
    expand = True
    while True:
        if expand:
            best = -1
            best_count = 10
            for c in range(81):
                k = _popcount(cand[depth, c])
                if 1 < k < best_count:
                    best = c
                    best_count = k
                    if k == 2:
                        break
            if best < 0:
                if n_solutions == 0:
                    first_backtracks = backtracks
                    for c in range(81):
                        out[c] = _lowest_digit(cand[depth, c])
                n_solutions += 1
                if n_solutions >= max_solutions:
                    break
                depth -= 1
            else:
                branch_cell[depth] = best
                remaining[depth] = cand[depth, best]
        expand = False
        if depth < 0:
            break
        m = remaining[depth]
        if m == 0:
            depth -= 1
            if depth < 0:
                break
            continue
        if randomized:
            pick = randint(rng, _popcount(m))
            bit = m & -m
            for _ in range(pick):
                m &= m - 1
                bit = m & -m
        else:
            bit = m & -m
        remaining[depth] &= ~bit
        c = branch_cell[depth]
        cand[depth + 1, :] = cand[depth]
        done[depth + 1, :] = done[depth]
        cand[depth + 1, c] = bit
        if _propagate(cand[depth + 1], done[depth + 1]):
            depth += 1
            expand = True
        else:
            backtracks += 1
    if first_backtracks < 0:
        first_backtracks = backtracks
    return n_solutions, first_backtracks


@njit(cache=True, nogil=True)
def solve_batch(
    tokens: np.ndarray,
    max_solutions: int,
    solution: np.ndarray,
    n_solutions: np.ndarray,
    backtracks: np.ndarray,
) -> None:
    """Solve ``tokens [N, 81]`` (token encoding) deterministically; results go to the output arrays.

    ``solution [N, 81] uint8`` gets the digits of the first solution (zeros when there is none),
    ``n_solutions [N] int8`` the number of solutions capped at ``max_solutions`` and ``backtracks [N] int64``
    the backtracks before the first solution. Releases the GIL, so threads can share a batch.
    """
    cand = np.empty(81, dtype=np.uint16)
    done = np.empty(81, dtype=np.bool_)
    rng = np.zeros(1, dtype=np.uint64)
    out = np.zeros(81, dtype=np.uint8)
    for i in range(tokens.shape[0]):
        _initial_candidates(tokens[i], cand, done)
        ns, bt = _search(cand, max_solutions, np.bool_(False), rng, out)
        n_solutions[i] = ns
        backtracks[i] = bt
        if ns > 0:
            solution[i] = out
        else:
            solution[i] = 0


@njit(cache=True)
def _singles_solve(cand: np.ndarray, done: np.ndarray) -> bool:
    if not _propagate(cand, done):
        return False
    for c in range(81):
        if cand[c] & (cand[c] - 1):
            return False
    return True


@njit(cache=True)
def _random_grid(rng: np.ndarray, out: np.ndarray) -> None:
    """Fill ``out [81]`` with a random complete grid (randomised digit order in the search)."""
    cand = np.full(81, FULL, dtype=np.uint16)
    # Seed the first row with a random permutation so grids differ already before any branching.
    digits = np.arange(1, 10)
    for k in range(8, 0, -1):
        j = randint(rng, k + 1)
        digits[k], digits[j] = digits[j], digits[k]
    for c in range(9):
        cand[c] = 1 << (digits[c] - 1)
    _search(cand, np.int64(1), np.bool_(True), rng, out)


@njit(cache=True)
def _shuffled_cells(rng: np.ndarray) -> np.ndarray:
    order = np.arange(81)
    for k in range(80, 0, -1):
        j = randint(rng, k + 1)
        order[k], order[j] = order[j], order[k]
    return order


@njit(cache=True)
def _minimalise(grid: np.ndarray, puzzle: np.ndarray, rng: np.ndarray, singles_only: bool) -> None:
    """Remove clues of ``puzzle [81]`` (tokens; solution ``grid [81]``) in random order, in place.

    A clue stays removed only if the puzzle keeps a unique solution (``singles_only``: stays solvable by
    singles propagation alone, which implies uniqueness). The result is minimal for that criterion.
    """
    cand = np.empty(81, dtype=np.uint16)
    done = np.empty(81, dtype=np.bool_)
    scratch = np.zeros(81, dtype=np.uint8)
    order = _shuffled_cells(rng)
    for k in range(81):
        c = order[k]
        if puzzle[c] < 2:
            continue
        puzzle[c] = 1
        _initial_candidates(puzzle, cand, done)
        if singles_only:
            keep_removed = _singles_solve(cand, done)
        else:
            # Still unique iff no solution puts another digit in cell c.
            cand[c] = FULL & ~(1 << (grid[c] - 1))
            n_other, _ = _search(cand, np.int64(1), np.bool_(False), rng, scratch)
            keep_removed = n_other == 0
        if not keep_removed:
            puzzle[c] = grid[c] + 1


@njit(cache=True)
def _rating(puzzle: np.ndarray) -> int:
    cand = np.empty(81, dtype=np.uint16)
    done = np.empty(81, dtype=np.bool_)
    _initial_candidates(puzzle, cand, done)
    out = np.zeros(81, dtype=np.uint8)
    rng = np.zeros(1, dtype=np.uint64)
    _, bt = _search(cand, np.int64(1), np.bool_(False), rng, out)
    return bt


@njit(cache=True, nogil=True)
def generate_batch(
    seed: np.uint64,
    start: int,
    singles_only: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    max_attempts: int,
    tokens: np.ndarray,
    solution: np.ndarray,
    rating: np.ndarray,
    attempts: np.ndarray,
) -> None:
    """Generate puzzles ``start .. start + n - 1`` of the stream seeded by ``seed`` into the output arrays.

    Per puzzle (inputs indexed ``0 .. n - 1``): ``singles_only [n] bool`` selects the singles reduction
    (rating 0 by construction); otherwise a minimal puzzle is made and kept if its rating lies in
    ``[lo[i], hi[i]]``. Attempts ``0, 1, ...`` use independent random streams until one fits or
    ``max_attempts`` is reached. Outputs: ``tokens [n, 81] uint8``, ``solution [n, 81] uint8`` (digits),
    ``rating [n] int64`` and ``attempts [n] int64`` (``-1`` where no attempt fitted; that row is left as is).
    """
    grid = np.zeros(81, dtype=np.uint8)
    puzzle = np.zeros(81, dtype=np.uint8)
    for i in range(singles_only.shape[0]):
        attempts[i] = -1
        for attempt in range(max_attempts):
            rng = seed_state(seed, start + i, attempt)
            _random_grid(rng, grid)
            for c in range(81):
                puzzle[c] = grid[c] + 1
            _minimalise(grid, puzzle, rng, singles_only[i])
            r = 0 if singles_only[i] else _rating(puzzle)
            if lo[i] <= r <= hi[i]:
                tokens[i] = puzzle
                solution[i] = grid
                rating[i] = r
                attempts[i] = attempt + 1
                break


@njit(cache=True, nogil=True)
def apply_symmetry(
    tokens: np.ndarray,
    solution: np.ndarray,
    row_perm: np.ndarray,
    col_perm: np.ndarray,
    transpose: np.ndarray,
    digit_perm: np.ndarray,
    out_tokens: np.ndarray,
    out_solution: np.ndarray,
) -> None:
    """Write the transformed ``tokens``/``solution [N, 81]`` to ``out_tokens``/``out_solution``.

    New cell ``(r, c)`` of row ``i`` takes old cell ``(row_perm[i, r], col_perm[i, c])``, or
    ``(col_perm[i, c], row_perm[i, r])`` when ``transpose[i]``; digit ``d`` becomes
    ``digit_perm[i, d - 1] + 1`` (tokens: pad 0 and blank 1 are kept; solution: 0 is kept).
    """
    for i in range(tokens.shape[0]):
        for r in range(9):
            for c in range(9):
                if transpose[i]:
                    src = col_perm[i, c] * 9 + row_perm[i, r]
                else:
                    src = row_perm[i, r] * 9 + col_perm[i, c]
                t = tokens[i, src]
                out_tokens[i, r * 9 + c] = t if t < 2 else digit_perm[i, t - 2] + 2
                d = solution[i, src]
                out_solution[i, r * 9 + c] = d if d == 0 else digit_perm[i, d - 1] + 1
