"""The maze task: generator (perfect mazes, bands, determinism, de-duplication), validity on hand-made boards,
text and reference-directory I/O, rendering, symmetries and the Task interface."""

from __future__ import annotations

import gzip
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

import attractorlab.tasks as tasks
from attractorlab.tasks import maze
from attractorlab.tasks.base import PuzzleSet, TaskError

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# A 7 x 7 perfect maze (3 x 3 lattice cells) and its path; a dead-end branch runs along the bottom.
MAZE7 = """\
#######
#S#   #
# # # #
#   #G#
# #####
#     #
#######"""
PATH7 = """\
#######
#S#ooo#
#o#o#o#
#ooo#G#
# #####
#     #
#######"""


def board(text: str) -> np.ndarray:
    """``[L] uint8`` tokens of a drawn board (``o`` kept)."""
    lut = {"#": maze.WALL, " ": maze.OPEN, "S": maze.START, "G": maze.GOAL, "o": maze.PATH}
    return np.array([lut[ch] for ch in text.replace("\n", "")], dtype=np.uint8)


def edit(text: str, cells: dict[tuple[int, int], str]) -> str:
    rows = [list(r) for r in text.split("\n")]
    for (r, c), ch in cells.items():
        rows[r][c] = ch
    return "\n".join("".join(r) for r in rows)


def is_perfect(tokens: np.ndarray, grid: int) -> bool:
    """The non-wall cells of a board form a tree: connected and cells - 1 == 4-neighbour edges."""
    free = (tokens != maze.WALL).reshape(grid, grid)
    edges = (free[1:] & free[:-1]).sum() + (free[:, 1:] & free[:, :-1]).sum()
    return ndimage.label(free)[1] == 1 and free.sum() - 1 == edges


# ------------------------------------------------------------------------------------------------ generator


@pytest.fixture(scope="module")
def mazes30() -> PuzzleSet:
    return maze.generate(200, seed=5)


def test_generated_mazes_are_perfect_with_the_bfs_path_as_label(mazes30):
    for grid, ps in ((30, mazes30), (11, maze.generate(100, seed=1, grid=11, difficulty="mixed"))):
        assert ps.tokens.shape == (len(ps), grid * grid) and ps.tokens.dtype == np.uint8
        assert all(is_perfect(t, grid) for t in ps.tokens)
        assert ((ps.tokens == maze.START).sum(1) == 1).all() and ((ps.tokens == maze.GOAL).sum(1) == 1).all()
        assert not (ps.tokens == maze.PATH).any()
        np.testing.assert_array_equal(maze.solve(ps.tokens)[0], ps.solution)
        np.testing.assert_array_equal(ps.rating, (ps.solution == maze.PATH).sum(1) + 1)


def test_30x30_layout_and_reference_band_match_the_reference_builder(mazes30):
    assert maze.path_bands(30)["reference"] == (100, 140)
    boards = mazes30.tokens.reshape(-1, 30, 30)
    for edge in (boards[:, 0], boards[:, -2:].reshape(len(boards), -1), boards[:, :, 0], boards[:, :, -2:]):
        assert (edge == maze.WALL).all()  # outer wall of the 29 x 29 maze + the wall row and column at 29
    assert (boards[:, 2::2, 2::2] == maze.WALL).all()  # lattice corners are walls
    assert mazes30.rating.min() >= 100 and mazes30.rating.max() <= 140 and mazes30.rating.std() > 5
    assert set(mazes30.source) == {"generated:maze30:reference"}


@pytest.mark.parametrize("grid", [11, 15, 30])
def test_every_band_generates_lengths_inside_it(grid):
    ps = maze.generate(30, seed=2, grid=grid, difficulty="mixed")
    bands = maze.path_bands(grid)
    names = np.array([s.rsplit(":", 1)[1] for s in ps.source])
    assert list(names[:3]) == ["short", "reference", "long"]
    for name, (lo, hi) in bands.items():
        assert lo <= hi and (ps.rating[names == name] >= lo).all() and (ps.rating[names == name] <= hi).all()
    np.testing.assert_array_equal(maze.difficulty_band(ps.rating, grid), names)
    assert bands["short"][1] + 1 == bands["reference"][0] and bands["reference"][1] + 1 == bands["long"][0]


def test_generator_is_seeded_and_row_i_depends_only_on_seed_and_i():
    a = maze.generate(40, seed=7, grid=15)
    np.testing.assert_array_equal(a.tokens, maze.generate(40, seed=7, grid=15, workers=1).tokens)
    b = maze.generate(15, seed=7, grid=15)
    np.testing.assert_array_equal(a.tokens[:15], b.tokens)
    np.testing.assert_array_equal(a.solution[:15], b.solution)
    assert not (maze.generate(15, seed=8, grid=15).tokens == b.tokens).all(1).any()


def test_duplicates_are_drawn_again_and_other_rows_kept():
    raw = maze.generate(300, seed=0, grid=7, dedupe=False)
    dup = maze._duplicates(raw.tokens)
    assert len(dup) > 0  # a 3 x 3 lattice has few mazes: the raw stream repeats boards
    ps = maze.generate(300, seed=0, grid=7)
    assert len(np.unique(ps.tokens, axis=0)) == 300
    keep = np.setdiff1d(np.arange(300), dup)
    np.testing.assert_array_equal(ps.tokens[keep], raw.tokens[keep])
    assert maze.is_valid(ps.tokens, ps.solution).all()
    assert len(np.unique(maze.generate(300, seed=1).tokens, axis=0)) == 300


def test_generator_errors_are_one_line_task_errors():
    with pytest.raises(TaskError, match="fewer than 500 distinct 5x5"):
        maze.generate(500, grid=5)
    with pytest.raises(TaskError, match="path length 48 within max_grids=3"):
        maze.generate(2, grid=11, difficulty=(48, 48), max_grids=3)
    with pytest.raises(TaskError, match="difficulty must be one of short, reference, long, mixed"):
        maze.generate(2, difficulty="hard")
    with pytest.raises(TaskError, match="1 <= lo <= hi <= 390"):
        maze.generate(2, difficulty=(10, 400))
    with pytest.raises(TaskError, match="grid must be an integer >= 5"):
        maze.generate(2, grid=4)


# ------------------------------------------------------------------------------------------------- validity

INPUT7 = board(MAZE7)
# Cells (row, col) of the 7 x 7 maze edited into the valid answer PATH7.
BAD7 = {
    "through a wall": edit(MAZE7, {(1, 2): "o", (1, 3): "o", (1, 4): "o", (1, 5): "o", (2, 5): "o"}),
    "broken path": edit(PATH7, {(3, 2): " "}),
    "branching path": edit(PATH7, {(4, 1): "o"}),
    "not reaching G": edit(PATH7, {(2, 5): " "}),
    "changes a wall": edit(PATH7, {(4, 3): " "}),
    "path over G": edit(PATH7, {(3, 5): "o"}),
}
# A board with an open room: S-G along the top and a ring of o cells around a pillar below it.
ROOM = "#######\n#S   G#\n#######\n#     #\n# ### #\n#     #\n#######"
ROOM_PATH = "#######\n#SoooG#\n#######\n#     #\n# ### #\n#     #\n#######"
ROOM_CYCLE = "#######\n#SoooG#\n#######\n#ooooo#\n#o###o#\n#ooooo#\n#######"


def validity_cases() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``inputs, answers [M, 49]`` and the expected ``[M]`` validity of the hand-made boards."""
    cases = [(MAZE7, PATH7, True), *((MAZE7, bad, False) for bad in BAD7.values()),
             (ROOM, ROOM_PATH, True), (ROOM, ROOM_CYCLE, False), (MAZE7, MAZE7, False),
             (edit(MAZE7, {(5, 5): "S"}), edit(PATH7, {(5, 5): "S"}), False)]
    padded = board(PATH7)
    padded[0] = maze.PAD  # an answer with a pad cell
    inputs = np.stack([board(i) for i, _, _ in cases] + [INPUT7])
    answers = np.stack([board(a) for _, a, _ in cases] + [padded])
    return inputs, answers, np.array([v for _, _, v in cases] + [False])


def test_validity_on_hand_made_mazes():
    inputs, answers, expected = validity_cases()
    np.testing.assert_array_equal(maze.is_valid(inputs, answers), expected)
    assert maze.is_valid(INPUT7, board(PATH7)).shape == () and maze.is_valid(INPUT7, board(PATH7))
    np.testing.assert_array_equal(maze.solve(INPUT7)[0][0], board(PATH7))


def test_torch_and_numpy_give_the_same_validity(mazes30):
    inputs, answers, expected = validity_cases()
    got = maze.is_valid(torch.from_numpy(inputs), torch.from_numpy(answers))
    assert got.dtype == torch.bool and got.tolist() == expected.tolist()
    rng = np.random.default_rng(0)
    noisy = mazes30.solution.copy()
    flip = rng.random(noisy.shape) < 0.002
    noisy[flip] = rng.integers(0, 6, size=flip.sum())
    ref = maze.is_valid(mazes30.tokens, noisy)
    assert ref.dtype == bool and 0 < ref.sum() < len(ref)
    assert maze.is_valid(torch.from_numpy(mazes30.tokens), torch.from_numpy(noisy).long()).numpy().tolist() == \
        ref.tolist()


def test_validity_rejects_mismatched_shapes():
    with pytest.raises(TaskError, match="both be"):
        maze.is_valid(np.zeros((2, 49), np.uint8), np.zeros((3, 49), np.uint8))
    with pytest.raises(TaskError, match="grid x grid"):
        maze.is_valid(np.zeros((2, 50), np.uint8), np.zeros((2, 50), np.uint8))


# ---------------------------------------------------------------------------------------------------- text I/O


def test_text_round_trip_with_and_without_paths(tmp_path):
    ps = maze.generate(6, seed=3, grid=11, difficulty="mixed")
    path = maze.save_text(ps, tmp_path / "mazes.txt")
    back = maze.load_text(path, 11)
    np.testing.assert_array_equal(back.tokens, ps.tokens)
    np.testing.assert_array_equal(back.solution, ps.solution)
    np.testing.assert_array_equal(back.rating, ps.rating)
    assert set(back.source) == {"mazes"}
    unsolved = PuzzleSet(ps.tokens, np.zeros_like(ps.solution), "x", np.full(len(ps), -1, np.int32))
    (tmp_path / "plain.txt.gz").write_bytes(gzip.compress(maze.save_text(unsolved, tmp_path / "p.txt").read_bytes()))
    again = maze.task_for(11).load(tmp_path / "plain.txt.gz")
    np.testing.assert_array_equal(again.solution, ps.solution)  # labels from BFS


def test_render_round_trips_through_the_text_loader():
    ps = maze.generate(3, seed=4, grid=15)
    text = "\n\n".join(maze.render(t, s) for t, s in zip(ps.tokens, ps.solution, strict=True))
    back = maze.parse_text(text, 15)
    np.testing.assert_array_equal(back.tokens, ps.tokens)
    np.testing.assert_array_equal(back.solution, ps.solution)
    assert maze.render(INPUT7) == MAZE7 and maze.render(INPUT7, board(PATH7)) == PATH7
    assert maze.task_for(15).render(ps.tokens[0], ps.solution[0]) == text.split("\n\n")[0]


@pytest.mark.parametrize("text, message", [
    (MAZE7 + "\n\n" + MAZE7[:-1], r"f.txt:15: line has 6 characters, expected 7 \(keep trailing open"),
    (MAZE7.replace("S", "x"), r"f.txt:2: unknown character 'x' in column 2"),
    (MAZE7.replace("S", "é"), r"f.txt:2: unknown character 'é'"),
    (MAZE7 + "\n#######", r"f.txt:1: a maze block has 8 lines, expected 7"),
    (MAZE7.replace("G", " "), r"f.txt:1: the maze needs exactly one S and one G, found 1 and 0"),
    (edit(MAZE7, {(2, 5): "#"}), r"f.txt:1: the maze G is not reachable from S"),
    ("\n\n" + BAD7["branching path"], r"f.txt:3: the maze its 'o' cells are not one simple path"),
    ("\n \n", r"f.txt:2: a maze block has 1 lines"),
    ("", r"f.txt: no maze found"),
])
def test_text_errors_name_the_file_and_line(tmp_path, text, message):
    path = tmp_path / "f.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TaskError, match=message):
        maze.load_text(path, 7)


def test_load_errors_for_missing_or_binary_files(tmp_path):
    with pytest.raises(TaskError, match="maze file not found"):
        maze.TASK.load(tmp_path / "nope.txt")
    (tmp_path / "b.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(TaskError, match="not a UTF-8 text file"):
        maze.load_text(tmp_path / "b.txt")


def test_reference_directory_round_trip(tmp_path):
    from attractorlab import reference

    ps = maze.generate(8, seed=6, grid=11)
    split = tmp_path / "maze-11x11-unique" / "test"
    reference.write_split(split, ps.tokens, ps.solution, metadata={"vocab_size": maze.VOCAB_SIZE})
    back = maze.task_for(11).load(split)
    np.testing.assert_array_equal(back.tokens, ps.tokens)
    np.testing.assert_array_equal(back.solution, ps.solution)
    np.testing.assert_array_equal(back.rating, ps.rating)
    assert back.source[0] == "reference:maze-11x11-unique/test"
    with pytest.raises(TaskError, match=r"121 cells, a 15x15 maze task expects 225; .*task_for\(11\)"):
        maze.task_for(15).load(split)
    broken = ps.solution.copy()
    broken[0][broken[0] == maze.PATH] = maze.OPEN
    reference.write_split(tmp_path / "bad", ps.tokens, broken, metadata={"vocab_size": 6})
    with pytest.raises(TaskError, match="label of row 0 is not one simple path"):
        maze.load_reference(tmp_path / "bad", 11)
    assert len(maze.load_reference(tmp_path / "bad", 11, verify=False)) == 8


# ------------------------------------------------------------------------------------------ figures, symmetries


def test_image_colours_cells_and_marks_a_path_off_the_open_cells():
    img = maze.image(INPUT7, board(BAD7["through a wall"]), scale=3)
    assert img.shape == (21, 21, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[0, 0], maze.PALETTE[maze.WALL])
    np.testing.assert_array_equal(img[3 * 1 + 1, 3 * 1 + 1], maze.PALETTE[maze.START])
    np.testing.assert_array_equal(img[3 * 1, 3 * 3], maze.PALETTE[maze.PATH])
    np.testing.assert_array_equal(img[3 * 1, 3 * 2], maze.BAD_PATH_COLOUR)
    np.testing.assert_array_equal(maze.image(INPUT7)[5, 5], maze.PALETTE[maze.OPEN])


def test_dihedral_augment_gives_eight_valid_symmetries():
    n = 64
    tokens, solution = np.tile(INPUT7, (n, 1)), np.tile(board(PATH7), (n, 1))
    t, s = maze.dihedral_augment(tokens, solution, np.random.default_rng(0))
    assert maze.is_valid(t, s).all() and len(np.unique(t, axis=0)) == 8
    assert (maze.solve(t)[0] == s).all()
    task = maze.MazeTask(7, dihedral=True)
    t2, _ = task.augment(tokens, solution, np.random.default_rng(0))
    np.testing.assert_array_equal(t2, t)
    same = maze.MazeTask(7).augment(tokens, solution, np.random.default_rng(0))
    assert same[0] is tokens and same[1] is solution


# ------------------------------------------------------------------------------------------------- the task


def test_task_interface_and_registry(mazes30):
    task = maze.TASK
    assert (task.name, task.seq_len, task.vocab_size, task.board_shape) == ("maze", 900, 6, (30, 30))
    assert task.token_names == ("pad", "wall", "open", "start", "goal", "path")
    assert task.difficulties[0] == "reference" and task.bands == ("short", "reference", "long")
    assert [t.name for t in maze.builtin_tasks()] == ["maze", "maze11", "maze15"]
    assert maze.task_for(30) is task and maze.task_for(15).seq_len == 225
    tasks.register(maze.task_for(15))
    assert tasks.get_task("maze15") is maze.task_for(15)
    ps = task.check(task.generate(4, seed=1, difficulty="long"))
    assert set(task.difficulty_band(ps.rating)) == {"long"}
    assert task.difficulty_band(np.array([-1]))[0] == "unknown"
    assert task.targets(ps.solution) is not None and (task.targets(ps.solution) == ps.solution).all()
    logits = torch.nn.functional.one_hot(torch.from_numpy(ps.solution).long(), 6).float()
    answer = task.answer(logits)
    assert answer.dtype == torch.uint8 and (answer.numpy() == ps.solution).all()
    tok = torch.from_numpy(ps.tokens)
    assert task.is_valid(tok, answer).all() and task.is_correct(answer, torch.from_numpy(ps.solution)).all()
    assert not task.is_correct(tok, torch.from_numpy(ps.solution)).any()
    assert len(task.answer_strings(ps.solution)[0]) == 900 and "o" in task.answer_strings(ps.solution)[0]
    with pytest.raises(TaskError, match="maze answers have 900 cells"):
        task.is_valid(torch.zeros(2, 49), torch.zeros(2, 49))


def test_task_check_rejects_foreign_instances():
    task = maze.task_for(11)
    ps = maze.generate(2, grid=11)
    with pytest.raises(TaskError, match="maze11 instances have 121 tokens"):
        task.check(maze.generate(2, grid=15))
    with pytest.raises(TaskError, match="inputs hold wall, open, S and G tokens"):
        task.check(PuzzleSet(ps.solution, ps.solution, "x", ps.rating))
    wrong = ps.solution.copy()
    wrong[:, 0] = maze.OPEN
    with pytest.raises(TaskError, match="labels must equal their board"):
        task.check(PuzzleSet(ps.tokens, wrong, "x", ps.rating))


def test_benchmark_prints_its_table(capsys):
    spec = importlib.util.spec_from_file_location("_bench_maze_generate", BENCHMARKS / "bench_maze_generate.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--n", "300", "--grid", "7", "11", "--workers", "1"])
    out = capsys.readouterr().out
    rows = re.findall(r"^\s+300\s+(\d+)\s+[\d.]+\s+[\d,]+\s+(\d+)\s+[\d.]+\s+(\d+)\s+(\d+)\s+0\s+[\d.]+$", out, re.M)
    assert [r[0] for r in rows] == ["7", "11"], out
    assert int(rows[0][3]) > 0  # 7 x 7 boards repeat in 300 draws: the de-duplication replaced some


def test_probe_targets_are_on_or_off_the_path_for_open_cells_only():
    task = maze.MazeTask(7)
    tokens, label = board(MAZE7)[None], board(PATH7)[None]
    y = task.probe_targets(tokens, label)[0].reshape(7, 7)
    assert (y[board(MAZE7).reshape(7, 7) != maze.OPEN] == 0).all()  # walls, S and G are left out
    assert y[1, 3] == 2 and y[2, 1] == 2 and y[5, 1] == 1 and y[4, 1] == 1  # on the path / on the dead end
    assert (y == 2).sum() == (label == maze.PATH).sum() and (y == 1).sum() == 6


def test_registered_mazes_augment_only_when_training_asks():
    from attractorlab.cli import build_parser
    from attractorlab.train import PuzzleStream, TrainConfig

    task = tasks.get_task("maze11")
    assert task.dihedral
    assert not TrainConfig.from_preset("maze-tiny").augment
    args = build_parser().parse_args(["train", "--preset", "maze-tiny", "--augment", "--out", "x.pt"])
    assert args.augment is True
    pool = task.generate(4, seed=0)
    stream = PuzzleStream(pool, seed=0, augment=True, task=task)
    tokens, solution = stream.draw(64)
    assert not all(any(np.array_equal(t, p) for p in pool.tokens) for t in tokens)  # symmetric copies appear
    assert task.is_valid(torch.as_tensor(tokens), torch.as_tensor(solution)).all()
