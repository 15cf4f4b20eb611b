"""Maze task (Maze-Unique, the EqR paper's second task): encoding, generator, validity, text and reference I/O.

Encoding (identical to the reference builder ``dataset/build_maze_unique_dataset.py``, ``CHARSET = "# SGo"``):
a ``grid x grid`` board in row-major order with ``0 = pad``, ``1 = wall '#'``, ``2 = open ' '``,
``3 = start 'S'``, ``4 = goal 'G'``, ``5 = path 'o'`` (vocab 6). The input is the board; the label is the
board with the cells strictly between S and G on the path marked ``o`` (S and G stay in the label) and the
loss covers every cell. The answer encoding *is* the token encoding (``0`` = unknown), so
:meth:`MazeTask.targets` returns labels unchanged.

Path length (the difficulty rating) is the reference's ``length``: the number of moves from S to G on the
path, i.e. its ``o`` cells + 1 (the path has ``length + 1`` cells with S and G).

Generator: as the reference's ``--maze-mode perfect``, a perfect maze is carved by randomised depth-first
search on the lattice of odd coordinates of the largest odd square in the top-left corner (for the even 30 x 30
board a 29 x 29 maze, last row and column wall); a length is drawn uniformly from the band, then mazes are
carved and start cells drawn uniformly among the open cells until one has cells at exactly that BFS distance;
the goal is drawn uniformly among them. Bands (:func:`path_bands`) for a grid ``g`` whose maze has ``M``
moves at most (open cells - 1):

- ``"reference"``: ``[round(10 g / 3), round(14 g / 3)]`` = 100-140 for 30 x 30 (the paper's), 50-70 for 15;
  on small grids the top is capped at ``3 M / 4`` and the bottom is ``5 / 7`` of the top (11 x 11: 26-36);
- ``"short"``: from half the reference bottom to just below it; ``"long"``: from just above the reference top
  to the top plus the reference width, capped at ``5 M / 6``;
- ``"mixed"`` (generator only): rows cycle short, reference, long.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from attractorlab.tasks import _maze_kernels as _k
from attractorlab.tasks import base
from attractorlab.tasks.base import PuzzleSet, TaskError

PAD, WALL, OPEN, START, GOAL, PATH = 0, 1, 2, 3, 4, 5
VOCAB_SIZE = 6
GRID = 30
BANDS = ("short", "reference", "long")
CHARS = ".# SGo"  # token -> character (pad never appears on a board)
_TOKEN_CHARS = np.frombuffer((CHARS + "?").encode("ascii"), dtype=np.uint8)  # "?" for tokens >= 6
_CHAR_LUT = np.full(256, 255, dtype=np.uint8)  # character -> token, 255 = not a board character
_CHAR_LUT[np.frombuffer(b"# SGo", dtype=np.uint8)] = np.arange(WALL, PATH + 1)
# Cell colours of :func:`image`: pad, wall, open, start, goal, path; and a path drawn over a non-open cell.
PALETTE = np.array([[0, 0, 0], [40, 40, 48], [245, 245, 245], [46, 160, 67], [214, 39, 40], [31, 119, 180]],
                   dtype=np.uint8)
BAD_PATH_COLOUR = np.array([255, 127, 14], dtype=np.uint8)
_GEN_CHUNK = 256
_MAX_DEDUPE_ROUNDS = 50


# ---------------------------------------------------------------------------------------------- sizes, bands


def _check_grid(grid: Any) -> int:
    if not isinstance(grid, int | np.integer) or grid < 5:
        raise TaskError(f"a maze grid must be an integer >= 5, got {grid!r}")
    return int(grid)


def grid_of(seq_len: int) -> int:
    """The board side of ``seq_len`` cells (a maze board is square)."""
    g = math.isqrt(int(seq_len))
    if g * g != seq_len or g < 5:
        raise TaskError(f"a maze board has grid x grid cells with grid >= 5, got {seq_len} cells")
    return g


def max_moves(grid: int) -> int:
    """The longest path a perfect maze on this grid can have: its open cells - 1."""
    k = ((grid if grid % 2 else grid - 1) - 1) // 2
    return 2 * k * k - 2


def path_bands(grid: int = GRID) -> dict[str, tuple[int, int]]:
    """Named path-length bands ``{"short", "reference", "long": (lo, hi)}`` (inclusive) of a grid."""
    grid = _check_grid(grid)
    moves = max_moves(grid)
    lo, hi = (10 * grid + 1) // 3, (14 * grid + 1) // 3
    if hi > 3 * moves // 4:
        hi = 3 * moves // 4
        lo = (5 * hi + 3) // 7
    long_hi = max(hi + 1, min(2 * hi - lo, 5 * moves // 6))
    return {"short": (max(1, (lo + 1) // 2), lo - 1), "reference": (lo, hi), "long": (hi + 1, long_hi)}


def difficulty_band(rating: Any, grid: int = GRID) -> np.ndarray:
    """Path lengths ``[N]`` -> band names ``[N]``: below, inside or above the reference band; ``"unknown"``
    for ``rating < 0``."""
    r = np.asarray(rating)
    lo, hi = path_bands(grid)["reference"]
    return np.where(r < 0, "unknown", np.where(r < lo, "short", np.where(r <= hi, "reference", "long")))


# ------------------------------------------------------------------------------------------------ generator


def _length_plan(n: int, grid: int, difficulty: str | tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row length bands ``lo, hi [n] int64`` and source strings ``[n]`` for a difficulty."""
    if isinstance(difficulty, tuple):
        ints = len(difficulty) == 2 and all(isinstance(v, int) for v in difficulty)
        if not ints or not 1 <= difficulty[0] <= difficulty[1] <= max_moves(grid):
            raise TaskError(f"a length band must be ints 1 <= lo <= hi <= {max_moves(grid)}, got {difficulty}")
        lo, hi = np.full(n, difficulty[0], np.int64), np.full(n, difficulty[1], np.int64)
        return lo, hi, np.full(n, f"generated:maze{grid}:{difficulty[0]}-{difficulty[1]}", dtype=object)
    if difficulty == "mixed":
        which = np.arange(n) % len(BANDS)
    elif difficulty in BANDS:
        which = np.full(n, BANDS.index(difficulty))
    else:
        raise TaskError(f"difficulty must be one of {', '.join((*BANDS, 'mixed'))} or (lo, hi), got {difficulty!r}")
    table = np.array([path_bands(grid)[b] for b in BANDS], np.int64)  # [3, 2]
    sources = np.array([f"generated:maze{grid}:{b}" for b in BANDS], dtype=object)
    return table[which, 0], table[which, 1], sources[which]


def _run_kernel(seed: np.uint64, index: np.ndarray, rounds: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                grid: int, limits: tuple[int, int], workers: int, progress: bool) -> tuple[np.ndarray, ...]:
    """Rows ``index`` of the stream in parallel chunks -> ``tokens, labels [n, L]``, ``rating, grids_used [n]``."""
    n = len(index)
    tokens, labels = np.zeros((n, grid * grid), np.uint8), np.zeros((n, grid * grid), np.uint8)
    rating, used = np.zeros(n, np.int64), np.zeros(n, np.int64)

    def run(a: int, b: int) -> int:
        s = slice(a, b)
        _k.generate_batch(seed, index[s], rounds[s], lo[s], hi[s], grid, *limits, tokens[s], labels[s],
                          rating[s], used[s])
        return b - a

    ranges = [(a, min(a + _GEN_CHUNK, n)) for a in range(0, n, _GEN_CHUNK)]
    with ThreadPoolExecutor(workers) as pool, tqdm(total=n, disable=not progress, desc="generate") as bar:
        for done in pool.map(lambda r: run(*r), ranges):
            bar.update(done)
    failed = np.flatnonzero(used < 0)
    if len(failed):
        i = failed[0]
        raise TaskError(f"no {grid}x{grid} maze with path length {rating[i]} within max_grids={limits[0]} mazes "
                        f"(index {index[i]}); pick a shorter band or raise max_grids")
    return tokens, labels, rating, used


def _duplicates(tokens: np.ndarray) -> np.ndarray:
    """Indices of rows of ``tokens [N, L]`` equal to an earlier row."""
    rows = np.ascontiguousarray(tokens).view(f"V{tokens.shape[1]}").ravel()
    _, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
    return np.flatnonzero(first[inverse.ravel()] != np.arange(len(rows)))


def generate(n: int, seed: int = 0, *, grid: int = GRID, difficulty: str | tuple[int, int] = "reference",
             progress: bool = False, workers: int | None = None, dedupe: bool = True, max_grids: int = 1000,
             max_starts: int = 200) -> PuzzleSet:
    """``n`` perfect mazes with their unique S-G path as the label, deterministically from ``seed``.

    Args:
        difficulty: a band of :func:`path_bands` (``"reference"``, ``"short"``, ``"long"``), ``"mixed"`` (rows
            cycle through them) or an inclusive ``(lo, hi)`` path-length band.
        dedupe: replace a board equal to an earlier one of the set (its row draws again from the next round
            of its stream), so row ``i`` depends only on ``(seed, i)`` unless it was a duplicate.
        max_grids, max_starts: mazes carved per row, start cells tried per maze, before giving up.

    Returns a :class:`PuzzleSet` with ``rating`` = path length and ``source`` ``"generated:maze<grid>:<band>"``.
    """
    grid = _check_grid(grid)
    if not isinstance(n, int | np.integer) or n < 0:
        raise TaskError(f"n must be a non-negative integer, got {n!r}")
    if max_grids < 1 or max_starts < 1:
        raise TaskError(f"max_grids and max_starts must be >= 1, got {max_grids} and {max_starts}")
    lo, hi, source = _length_plan(int(n), grid, difficulty)
    seed64, index, rounds = np.uint64(int(seed) % 2**64), np.arange(n, dtype=np.int64), np.zeros(n, np.int64)
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if workers < 1:
        raise TaskError(f"workers must be >= 1, got {workers}")
    args = (grid, (max_grids, max_starts), workers)
    tokens, labels, rating, _ = _run_kernel(seed64, index, rounds, lo, hi, *args, progress)
    for _ in range(_MAX_DEDUPE_ROUNDS if dedupe else 0):
        dup = _duplicates(tokens)
        if len(dup) == 0:
            break
        rounds[dup] += 1
        tokens[dup], labels[dup], rating[dup], _ = _run_kernel(seed64, dup, rounds[dup], lo[dup], hi[dup], *args,
                                                               False)
    if dedupe and len(_duplicates(tokens)):
        raise TaskError(f"fewer than {n} distinct {grid}x{grid} mazes in this band; ask for fewer or a larger grid")
    return PuzzleSet(tokens, labels, source, rating.astype(np.int32))


def solve(tokens: Any) -> tuple[np.ndarray, np.ndarray]:
    """BFS shortest paths: boards ``[N, L]`` -> ``(labels [N, L] uint8, length [N] int64)``; ``length = -1``
    (label = board) where a board lacks exactly one S and one G or G is unreachable."""
    tokens = np.ascontiguousarray(np.atleast_2d(np.asarray(tokens)), dtype=np.uint8)
    labels, length = np.empty_like(tokens), np.empty(len(tokens), np.int64)
    _k.solve_batch(grid_of(tokens.shape[1]), tokens, labels, length)
    return labels, length


# ------------------------------------------------------------------------------------------------- validity


def is_valid(inputs: Any, answer: Any) -> Any:
    """True where ``answer`` marks one simple 4-connected path of ``o`` cells from S to G.

    Args:
        inputs: boards ``[N, L]`` or ``[L]`` (torch on any device, or numpy).
        answer: same shape: every ``o`` cell must be open in the input, every other cell equal to the input,
            S and G have exactly one neighbour in ``{o, S, G}`` and every ``o`` exactly two, and walking from S
            reaches G after visiting every such cell (no extra cycles). In a perfect maze this is the unique path.

    Returns ``[N] bool`` (``[]`` for one board) as a tensor on ``answer``'s device, or numpy for numpy answers.
    Vectorised: the walk along the path is one batched gather per step.
    """
    numpy_in = not isinstance(answer, torch.Tensor)
    a = torch.tensor(np.asarray(answer)) if numpy_in else answer
    x = inputs.to(a.device) if isinstance(inputs, torch.Tensor) else torch.tensor(np.asarray(inputs), device=a.device)
    if x.shape != a.shape or a.ndim not in (1, 2):
        raise TaskError(f"inputs and answer must both be [L] or [N, L], got {tuple(x.shape)} and {tuple(a.shape)}")
    if a.dtype.is_floating_point or a.dtype == torch.bool:
        raise TaskError(f"answers must be integer tokens, got {a.dtype}")
    grid = grid_of(a.shape[-1])
    ok = _valid_rows(x.reshape(-1, grid * grid), a.reshape(-1, grid * grid), grid)
    ok = ok.reshape(a.shape[:-1])
    return ok.numpy() if numpy_in else ok


def _count(mask: torch.Tensor) -> torch.Tensor:
    """``[n]`` true cells per row of ``mask [n, L] bool`` (a bool sum is several times slower)."""
    return mask.to(torch.uint8).sum(1, dtype=torch.int32)


def _valid_rows(x: torch.Tensor, a: torch.Tensor, grid: int) -> torch.Tensor:
    """``[n] bool`` validity of answers ``a`` for boards ``x`` (both ``[n, L]`` integers)."""
    n, w = x.shape[0], grid + 2
    on_path = a == PATH
    keep = torch.where(on_path, x == OPEN, a == x).all(1)
    start, goal = x == START, x == GOAL
    ok = keep & (_count(start) == 1) & (_count(goal) == 1)
    cells = on_path | start | goal
    padded = F.pad(cells.view(n, grid, grid).to(torch.uint8), (1, 1, 1, 1))  # [n, w, w]
    degree = (padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]).flatten(1)
    need = 2 - (start | goal).to(torch.uint8)
    ok &= (~cells | (degree == need)).all(1)
    rows = ok.nonzero().squeeze(1)
    if len(rows):
        ends = torch.stack([start[rows].to(torch.uint8).argmax(1), goal[rows].to(torch.uint8).argmax(1)])
        ends = (ends // grid + 1) * w + ends % grid + 1  # board cell -> padded cell
        ok[rows] = _walk_reaches_goal(padded[rows], ends[0], ends[1], _count(cells[rows]))
    return ok


def _walk_reaches_goal(padded: torch.Tensor, start: torch.Tensor, goal: torch.Tensor,
                       count: torch.Tensor) -> torch.Tensor:
    """Walk from ``start`` along the path cells ``padded [m, w, w]`` (every cell of degree 2, the two ends of
    degree 1) and tell ``[m]`` whether it reaches ``goal`` after exactly ``count - 1`` moves, i.e. through
    every path cell (``start, goal [m]`` are flat indices into the padded board)."""
    w = padded.shape[1]
    padded = padded.flatten(1)
    offsets = torch.tensor([w, -w, 1, -1], device=padded.device)
    cur, prev, steps = start, torch.full_like(start, -1), torch.zeros_like(start)
    for _ in range(int(count.max()) - 1):
        moving = cur != goal
        nb = cur[:, None] + offsets  # [m, 4] the neighbours; exactly one is on the path and not prev
        free = (padded.gather(1, nb) > 0) & (nb != prev[:, None])
        nxt = nb.gather(1, free.to(torch.uint8).argmax(1, keepdim=True)).squeeze(1)
        prev = torch.where(moving, cur, prev)
        cur = torch.where(moving, nxt, cur)
        steps += moving
    return (cur == goal) & (steps == count - 1)


# --------------------------------------------------------------------------------------------- augmentation


def _dihedral(boards: np.ndarray, t: int) -> np.ndarray:
    """Symmetry ``t`` (0 identity, 1-3 rotations by 90/180/270, 4 left-right and 5 up-down mirror, 6 transpose,
    7 anti-transpose) of boards ``[k, g, g]``."""
    if t < 4:
        return np.rot90(boards, t, axes=(1, 2))
    if t < 6:
        return np.flip(boards, axis=6 - t)
    return boards.transpose(0, 2, 1) if t == 6 else np.rot90(boards, 2, axes=(1, 2)).transpose(0, 2, 1)


def dihedral_augment(tokens: np.ndarray, solution: np.ndarray,
                     rng: int | np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """An independent random symmetry of the square (one of 8) per row of ``tokens, solution [N, L]`` (or ``[L]``)."""
    tokens, solution = np.asarray(tokens), np.asarray(solution)
    if tokens.shape != solution.shape or tokens.ndim not in (1, 2):
        raise TaskError(f"tokens and solution must both be [L] or [N, L], got {tokens.shape} and {solution.shape}")
    g = grid_of(tokens.shape[-1])
    t_in, s_in = tokens.reshape(-1, g, g), solution.reshape(-1, g, g)
    which = np.random.default_rng(rng).integers(8, size=len(t_in))
    t_out, s_out = np.empty_like(t_in), np.empty_like(s_in)
    for t in range(8):
        rows = which == t
        t_out[rows], s_out[rows] = _dihedral(t_in[rows], t), _dihedral(s_in[rows], t)
    return t_out.reshape(tokens.shape), s_out.reshape(solution.shape)


# ------------------------------------------------------------------------------------------------ text I/O


def _blocks(text: str) -> list[tuple[int, list[str]]]:
    """``(first line number, lines)`` of the blocks of non-empty lines (``\\r`` dropped)."""
    blocks: list[tuple[int, list[str]]] = []
    for no, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if line == "":
            continue
        if blocks and blocks[-1][0] + len(blocks[-1][1]) == no:
            blocks[-1][1].append(line)
        else:
            blocks.append((no, [line]))
    return blocks


def _encode_block(where: str, first: int, lines: list[str], grid: int) -> np.ndarray:
    """The tokens ``[grid * grid] uint8`` of one text block; :class:`TaskError` naming the line otherwise."""
    if len(lines) != grid:
        raise TaskError(f"{where}:{first}: a maze block has {len(lines)} lines, expected {grid} "
                        "(blocks are separated by one empty line)")
    for j, line in enumerate(lines):
        if len(line) != grid:
            raise TaskError(f"{where}:{first + j}: line has {len(line)} characters, expected {grid} "
                            "(keep trailing open cells as spaces)")
    codes = np.frombuffer("".join(lines).encode("utf-32-le"), dtype=np.uint32)
    tokens = _CHAR_LUT[np.minimum(codes, 255)]
    tokens[codes > 255] = 255
    bad = np.flatnonzero(tokens == 255)
    if len(bad):
        row, col = divmod(int(bad[0]), grid)
        raise TaskError(f"{where}:{first + row}: unknown character {lines[row][col]!r} in column {col + 1} "
                        "(use '#', ' ', 'S', 'G' or 'o')")
    return tokens


def parse_text(text: str, grid: int = GRID, *, where: str = "<text>", source: str = "text") -> PuzzleSet:
    """Mazes from text: blocks of ``grid`` lines of ``grid`` characters (``#``, space, ``S``, ``G``, ``o``)
    separated by empty lines. A block with ``o`` cells is a label (its input has them open; the path must be
    valid); otherwise the label is the BFS path. ``where`` names the text in errors (``where:line: ...``)."""
    grid = _check_grid(grid)
    blocks = _blocks(text)
    if not blocks:
        raise TaskError(f"{where}: no maze found (expected blocks of {grid} lines of {grid} characters)")
    boards = np.stack([_encode_block(where, first, lines, grid) for first, lines in blocks])
    tokens = np.where(boards == PATH, OPEN, boards).astype(np.uint8)
    marked = (boards == PATH).any(1)
    solved, length = solve(tokens)
    labels = np.where(marked[:, None], boards, solved).astype(np.uint8)
    good = np.where(marked, is_valid(tokens, labels), length >= 0)
    if not good.all():
        i = int(np.flatnonzero(~good)[0])
        n_start, n_goal = int((tokens[i] == START).sum()), int((tokens[i] == GOAL).sum())
        why = (f"needs exactly one S and one G, found {n_start} and {n_goal}" if (n_start, n_goal) != (1, 1)
               else "its 'o' cells are not one simple path from S to G" if marked[i] else "G is not reachable from S")
        raise TaskError(f"{where}:{blocks[i][0]}: the maze {why}")
    rating = ((labels == PATH).sum(1) + 1).astype(np.int32)
    return PuzzleSet(tokens, labels, source, rating)


def load_text(path: str | os.PathLike, grid: int = GRID) -> PuzzleSet:
    """Mazes from a text file of blocks (see :func:`parse_text`; gzip detected from the content)."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"maze file not found: {path}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TaskError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    return parse_text(text, grid, where=str(path), source=path.name.split(".")[0])


def save_text(puzzles: PuzzleSet, path: str | os.PathLike) -> Path:
    """Write mazes as text blocks (the label with its ``o`` path when known, else the input); returns the path."""
    path = Path(path)
    boards = np.where(puzzles.known[:, None], puzzles.solution, puzzles.tokens)
    path.write_text("\n\n".join(render(board) for board in boards) + "\n", encoding="utf-8")
    return path


def load_reference(path: str | os.PathLike, grid: int = GRID, *, set_name: str = "all",
                   verify: bool = True) -> PuzzleSet:
    """Mazes of a reference dataset split directory (``dataset.json`` + ``all__inputs.npy``, ``all__labels.npy``,
    ...), e.g. ``data/maze-30x30-unique-1k/test`` (the arrays stay memory-mapped); with ``verify`` every label
    must be a valid path. Write one with ``reference.write_split(path, puzzles.tokens, puzzles.solution)``."""
    from attractorlab import reference

    path = Path(path)
    split = reference.read_split(path, set_name)
    inputs, labels = np.asarray(split.inputs, dtype=np.uint8), np.asarray(split.labels, dtype=np.uint8)
    if inputs.shape[1:] != (grid * grid,):
        raise TaskError(f"{path}: boards have {inputs.shape[1]} cells, a {grid}x{grid} maze task expects "
                        f"{grid * grid}; load it with maze.task_for({math.isqrt(inputs.shape[1])})")
    if max(int(inputs.max(initial=0)), int(labels.max(initial=0))) >= VOCAB_SIZE:
        raise TaskError(f"{path}: tokens must lie below {VOCAB_SIZE} for a maze dataset")
    known = labels.any(1)
    if verify and not is_valid(inputs[known], labels[known]).all():
        bad = int(np.flatnonzero(known)[~is_valid(inputs[known], labels[known])][0])
        raise TaskError(f"{path}: the label of row {bad} is not one simple path from S to G")
    rating = np.where(known, (labels == PATH).sum(1) + 1, -1).astype(np.int32)
    return PuzzleSet(inputs, labels, f"reference:{path.parent.name}/{path.name}", rating, group=split.example_groups())


# ----------------------------------------------------------------------------------------------- rendering


def _board(tokens: Any, answer: Any = None) -> tuple[np.ndarray, np.ndarray | None, int]:
    tokens = np.asarray(tokens.cpu() if isinstance(tokens, torch.Tensor) else tokens).reshape(-1)
    answer = None if answer is None else np.asarray(answer.cpu() if isinstance(answer, torch.Tensor) else answer)
    if answer is not None and answer.size != tokens.size:
        raise TaskError(f"answer must have the board's {tokens.size} cells, got {answer.size}")
    return tokens, None if answer is None else answer.reshape(-1), grid_of(tokens.size)


def render(tokens: Any, answer: Any = None) -> str:
    """A board ``[L]`` as ``grid`` lines of ``#``, space, ``S``, ``G``, ``o``; an answer's ``o`` cells are drawn
    over it (``.`` marks a pad token and ``?`` a token outside the vocabulary)."""
    tokens, answer, grid = _board(tokens, answer)
    chars = _TOKEN_CHARS[np.minimum(tokens, VOCAB_SIZE)]
    if answer is not None:
        chars = np.where(answer == PATH, ord("o"), chars).astype(np.uint8)
    return "\n".join(chars.reshape(grid, grid)[r].tobytes().decode("ascii") for r in range(grid))


def image(tokens: Any, answer: Any = None, *, scale: int = 1) -> np.ndarray:
    """A board ``[L]`` as an RGB image ``[grid * scale, grid * scale, 3] uint8`` (:data:`PALETTE`); an answer's
    path is drawn over it, in :data:`BAD_PATH_COLOUR` where it covers a cell that is not open."""
    tokens, answer, grid = _board(tokens, answer)
    rgb = PALETTE[np.minimum(tokens, PATH)]
    if answer is not None:
        path = answer == PATH
        rgb[path] = PALETTE[PATH]
        rgb[path & (tokens != OPEN)] = BAD_PATH_COLOUR
    rgb = rgb.reshape(grid, grid, 3)
    return np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)


# ------------------------------------------------------------------------------------------------- the task


class MazeTask(base.Task):
    """Mazes on a ``grid x grid`` board as a :class:`attractorlab.tasks.Task` (answers are board tokens).

    Args:
        grid: board side (>= 5); the task is named ``"maze"`` for the paper's 30 and ``"maze<grid>"`` otherwise.
        dihedral: :meth:`augment` applies a random symmetry of the square (the registered tasks do; training
            augments only when asked, ``train --augment``: the maze presets train without, as the reference).
    """

    vocab_size = VOCAB_SIZE
    token_names = ("pad", "wall", "open", "start", "goal", "path")
    difficulties = ("reference", "short", "long", "mixed")
    bands = BANDS
    answer_names = "board tokens: 1 wall, 2 open, 3 start, 4 goal, 5 path; 0 = unknown"

    def __init__(self, grid: int = GRID, *, dihedral: bool = False) -> None:
        self.grid = _check_grid(grid)
        self.name = "maze" if self.grid == GRID else f"maze{self.grid}"
        self.seq_len = self.grid * self.grid
        self.board_shape = (self.grid, self.grid)
        self.dihedral = bool(dihedral)
        self.path_bands = path_bands(self.grid)

    def answer(self, logits: torch.Tensor, *, full_vocab: bool = False) -> torch.Tensor:
        """``[..., L, 6] -> [..., L] uint8``: the argmax over every token, as the reference evaluates (the answer
        encoding is the token encoding, so ``full_vocab`` changes nothing; a predicted pad reads as unknown)."""
        return logits.argmax(-1).to(torch.uint8)

    def targets(self, solution: np.ndarray) -> np.ndarray:
        return np.asarray(solution, dtype=np.uint8)

    def probe_targets(self, tokens: np.ndarray, solution: np.ndarray) -> np.ndarray:
        """Open cells only: ``1`` off the path, ``2`` on it (walls, S and G are copied from the input, left out)."""
        tokens, solution = np.asarray(tokens), np.asarray(solution)
        return np.where(tokens == OPEN, np.where(solution == PATH, 2, 1), 0).astype(np.uint8)

    def is_valid(self, inputs: Any, answer: Any) -> Any:
        if answer.shape[-1:] != (self.seq_len,):
            raise TaskError(f"{self.name} answers have {self.seq_len} cells, got shape {tuple(answer.shape)}")
        return is_valid(inputs, answer)

    def difficulty_band(self, rating: Any) -> np.ndarray:
        return difficulty_band(rating, self.grid)

    def check(self, puzzles: PuzzleSet) -> PuzzleSet:
        super().check(puzzles)
        if puzzles.tokens.size and (puzzles.tokens.min() < WALL or puzzles.tokens.max() > GOAL):
            raise TaskError(f"{self.name} inputs hold wall, open, S and G tokens (1..4) only")
        marked = puzzles.solution != PATH
        if (puzzles.known[:, None] & marked & (puzzles.solution != puzzles.tokens)).any():
            raise TaskError(f"{self.name} labels must equal their board outside the 'o' path cells")
        return puzzles

    def augment(self, tokens: np.ndarray, solution: np.ndarray,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return dihedral_augment(tokens, solution, rng) if self.dihedral else (tokens, solution)

    def load(self, path: str | os.PathLike, **options: Any) -> PuzzleSet:
        """A reference split directory (:func:`load_reference`) or a text file of mazes (:func:`load_text`)."""
        if Path(path).is_dir():
            return load_reference(path, self.grid, **options)
        return load_text(path, self.grid, **options)

    def generate(self, n: int, seed: int = 0, *, difficulty: str | tuple[int, int] | None = None,
                 progress: bool = False) -> PuzzleSet:
        return generate(n, seed, grid=self.grid, difficulty=difficulty or "reference", progress=progress)

    def render(self, tokens: np.ndarray, answer: np.ndarray | None = None) -> str:
        return render(tokens, answer)

    def image(self, tokens: np.ndarray, answer: np.ndarray | None = None, *, scale: int = 1) -> np.ndarray:
        return image(tokens, answer, scale=scale)

    def answer_strings(self, answers: np.ndarray) -> np.ndarray:
        """``[M, L]`` answers -> ``[M]`` strings of board characters (``.`` unknown, ``?`` out of vocabulary)."""
        answers = np.atleast_2d(np.asarray(answers))
        chars = _TOKEN_CHARS[np.minimum(answers, VOCAB_SIZE)]
        return np.array([row.tobytes().decode("ascii") for row in chars], dtype=str)


@functools.cache
def task_for(grid: int = GRID) -> MazeTask:
    """The maze task of a grid size, augmenting by the symmetries of the square (one shared instance per size)."""
    return MazeTask(grid, dihedral=True)


def builtin_tasks() -> list[MazeTask]:
    """The standard sizes for the registry: the paper's 30 x 30 (``"maze"``) and the CPU sizes 11 and 15."""
    return [task_for(30), task_for(11), task_for(15)]


TASK = task_for(GRID)
