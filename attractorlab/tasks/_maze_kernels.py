"""Numba kernels behind :mod:`attractorlab.tasks.maze`: perfect-maze carving, breadth-first search, generator.

Internal module: the public API lives in ``maze.py``. Conventions used throughout:

- a board is ``grid * grid`` cells in row-major order, cell ``r * grid + c``; ``open_ [grid * grid] bool``
  marks the cells that are not walls;
- the perfect maze lives on the largest odd square ``m = grid`` (odd grid) or ``grid - 1`` (even grid) in
  the top-left corner: lattice cells at odd coordinates ``(2 i + 1, 2 j + 1)``, ``i, j < (m - 1) // 2``,
  joined through the cell between two lattice neighbours; everything else (the outer wall, and for an even
  grid the last row and column) stays wall, as in the reference builder;
- randomness comes from the per-instance SplitMix64 stream of :mod:`attractorlab.tasks._sudoku_kernels`,
  seeded from ``(seed, index, round)``, so instance ``i`` does not depend on threads or chunking.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from attractorlab.tasks._sudoku_kernels import randint, seed_state

WALL, OPEN, START, GOAL, PATH = 1, 2, 3, 4, 5
# Neighbour order (down, up, right, left) as in the reference's carving loop.
DR = np.array([1, -1, 0, 0], dtype=np.int64)
DC = np.array([0, 0, 1, -1], dtype=np.int64)


@njit(cache=True)
def carve(grid: int, rng: np.ndarray, open_: np.ndarray) -> None:
    """Carve a perfect maze into ``open_ [grid * grid] bool`` (overwritten) by randomised depth-first search.

    The walk starts at a uniformly random lattice cell; at every step it moves to a uniformly random unvisited
    lattice neighbour (opening the cell between), or backtracks when there is none.
    """
    open_[:] = False
    m = grid if grid % 2 == 1 else grid - 1
    k = (m - 1) // 2
    if k < 1:
        return
    visited = np.zeros(k * k, dtype=np.bool_)
    stack = np.empty(k * k, dtype=np.int64)
    choice = np.empty(4, dtype=np.int64)
    stack[0] = randint(rng, k * k)
    visited[stack[0]] = True
    open_[(2 * (stack[0] // k) + 1) * grid + 2 * (stack[0] % k) + 1] = True
    top = 1
    while top > 0:
        cur = stack[top - 1]
        i, j = cur // k, cur % k
        n_free = 0
        for d in range(4):
            ni, nj = i + DR[d], j + DC[d]
            if 0 <= ni < k and 0 <= nj < k and not visited[ni * k + nj]:
                choice[n_free] = ni * k + nj
                n_free += 1
        if n_free == 0:
            top -= 1
            continue
        nxt = choice[randint(rng, n_free)]
        ni, nj = nxt // k, nxt % k
        visited[nxt] = True
        open_[(i + ni + 1) * grid + j + nj + 1] = True
        open_[(2 * ni + 1) * grid + 2 * nj + 1] = True
        stack[top] = nxt
        top += 1


@njit(cache=True)
def bfs(grid: int, open_: np.ndarray, start: int, dist: np.ndarray, parent: np.ndarray,
        queue: np.ndarray) -> int:
    """4-connected breadth-first search over the open cells from ``start``; returns the cells reached.

    Writes ``dist [grid * grid] int64`` (moves from ``start``, ``-1`` unreached) and ``parent`` (the previous
    cell on a shortest path, ``-1`` at ``start`` and unreached cells); ``queue`` is scratch of the same size.
    """
    dist[:] = -1
    parent[:] = -1
    dist[start] = 0
    queue[0] = start
    head, tail = 0, 1
    while head < tail:
        v = queue[head]
        head += 1
        r, c = v // grid, v % grid
        for d in range(4):
            nr, nc = r + DR[d], c + DC[d]
            if 0 <= nr < grid and 0 <= nc < grid:
                u = nr * grid + nc
                if open_[u] and dist[u] < 0:
                    dist[u] = dist[v] + 1
                    parent[u] = v
                    queue[tail] = u
                    tail += 1
    return tail


@njit(cache=True)
def _write(open_: np.ndarray, start: int, goal: int, parent: np.ndarray, tokens: np.ndarray,
           label: np.ndarray) -> None:
    """Board tokens and label (the path between ``start`` and ``goal`` marked ``PATH``) from a BFS tree."""
    for v in range(open_.shape[0]):
        tokens[v] = OPEN if open_[v] else WALL
    tokens[start] = START
    tokens[goal] = GOAL
    label[:] = tokens
    v = parent[goal]
    while v != start:
        label[v] = PATH
        v = parent[v]


@njit(cache=True)
def _pick_at_distance(dist: np.ndarray, length: int, rng: np.ndarray) -> int:
    """A uniformly random cell with ``dist == length``, or ``-1`` when there is none."""
    count = 0
    for v in range(dist.shape[0]):
        count += dist[v] == length
    if count == 0:
        return -1
    target = randint(rng, count)
    for v in range(dist.shape[0]):
        if dist[v] == length:
            if target == 0:
                return v
            target -= 1
    return -1


@njit(cache=True)
def _open_cell(open_: np.ndarray, n_open: int, rng: np.ndarray) -> int:
    """A uniformly random open cell (``n_open`` of them)."""
    target = randint(rng, n_open)
    for v in range(open_.shape[0]):
        if open_[v]:
            if target == 0:
                return v
            target -= 1
    return -1


@njit(cache=True)
def _diameter(grid: int, open_: np.ndarray, dist: np.ndarray, parent: np.ndarray, queue: np.ndarray) -> int:
    """The longest shortest path (moves) of a maze whose open cells form a tree (two BFS sweeps)."""
    first = np.argmax(open_)
    if not open_[first]:
        return -1
    reached = bfs(grid, open_, first, dist, parent, queue)
    bfs(grid, open_, queue[reached - 1], dist, parent, queue)
    return int(dist.max())


@njit(cache=True, nogil=True)
def _scratch(size: int):
    """Work arrays of one board of ``size`` cells: open mask, BFS distance, parent and queue."""
    return (np.zeros(size, dtype=np.bool_), np.empty(size, dtype=np.int64), np.empty(size, dtype=np.int64),
            np.empty(size, dtype=np.int64))


@njit(cache=True, nogil=True)
def generate_batch(seed: np.uint64, index: np.ndarray, rounds: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                   grid: int, max_grids: int, max_starts: int, tokens: np.ndarray, labels: np.ndarray,
                   rating: np.ndarray, grids_used: np.ndarray) -> None:
    """Generate instances ``index [n]`` of the stream seeded by ``seed`` into row ``0 .. n - 1`` of the outputs.

    Row ``i`` draws its path length uniformly in ``[lo[i], hi[i]]`` from the stream of
    ``(seed, index[i], rounds[i])``, then carves up to ``max_grids`` mazes (one whose diameter is shorter than
    the length is skipped at once); for each maze it tries up to ``max_starts`` uniformly random open start
    cells and takes the goal uniformly among the cells at exactly that BFS distance. Outputs: ``tokens, labels
    [n, grid * grid] uint8``, ``rating [n] int64`` (the length drawn) and ``grids_used [n] int64`` (``-1``
    where no maze fitted; that row's boards are left as they were).
    """
    open_, dist, parent, queue = _scratch(grid * grid)
    for i in range(lo.shape[0]):
        rng = seed_state(seed, index[i], rounds[i])
        length = lo[i] + randint(rng, hi[i] - lo[i] + 1)
        rating[i] = length
        grids_used[i] = -1
        for g in range(max_grids):
            carve(grid, rng, open_)
            n_open = int(open_.sum())
            start, goal = -1, -1
            tries = max_starts if _diameter(grid, open_, dist, parent, queue) >= length else 0
            for _ in range(tries):
                start = _open_cell(open_, n_open, rng)
                bfs(grid, open_, start, dist, parent, queue)
                goal = _pick_at_distance(dist, length, rng)
                if goal >= 0:
                    break
            if goal >= 0:
                _write(open_, start, goal, parent, tokens[i], labels[i])
                grids_used[i] = g + 1
                break


@njit(cache=True, nogil=True)
def solve_batch(grid: int, tokens: np.ndarray, labels: np.ndarray, length: np.ndarray) -> None:
    """Shortest S-G paths of boards ``tokens [n, grid * grid]`` (open, start and goal cells are passable).

    Writes ``labels`` (the board with the path marked ``PATH``) and ``length [n] int64`` (moves from start to
    goal; ``-1`` when a board lacks exactly one start and one goal or the goal is unreachable, label = board).
    """
    size = grid * grid
    open_, dist, parent, queue = _scratch(size)
    for i in range(tokens.shape[0]):
        labels[i] = tokens[i]
        length[i] = -1
        start, goal, n_start, n_goal = -1, -1, 0, 0
        for v in range(size):
            t = tokens[i, v]
            open_[v] = t == OPEN or t == START or t == GOAL
            if t == START:
                start, n_start = v, n_start + 1
            elif t == GOAL:
                goal, n_goal = v, n_goal + 1
        if n_start != 1 or n_goal != 1:
            continue
        bfs(grid, open_, start, dist, parent, queue)
        if dist[goal] < 0:
            continue
        length[i] = dist[goal]
        v = parent[goal]
        while v != start:
            labels[i, v] = PATH
            v = parent[v]
