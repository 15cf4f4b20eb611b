"""Augmented copies of one puzzle in a reference split: loaded as one group, kept in run files, counted as one
puzzle in the summary and kept together when training data is subsampled or carved."""

from __future__ import annotations

import numpy as np
import pytest

from attractorlab import reference, sudoku, train
from attractorlab.cli import DEFAULT_CHECKPOINT, main
from attractorlab.recording import open_run
from attractorlab.solve import summarize
from attractorlab.tasks import PuzzleSet, get_task

GROUPS = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """A reference split of 4 puzzles with 3, 2, 1 and 4 augmented copies (consecutive rows of one group)."""
    task = get_task("sudoku")
    base = sudoku.generate(4, seed=5, difficulty="singles")
    rng = np.random.default_rng(0)
    rows = [task.augment(base.tokens[[g]], base.solution[[g]], rng) for g in GROUPS]
    tokens, solution = np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows])
    path = tmp_path_factory.mktemp("groups") / "test"
    reference.write_split(path, tokens, task.targets(solution), groups=GROUPS * 7 + 1, metadata={"vocab_size": 11})
    return path


def test_reference_split_loads_its_groups_and_exports_them_again(split, tmp_path):
    task = get_task("sudoku")
    puzzles = task.load(split)
    np.testing.assert_array_equal(puzzles.group, GROUPS)
    np.testing.assert_array_equal(puzzles[3:6].group, [1, 1, 2])
    both = PuzzleSet.concat([puzzles[:3], puzzles[:3]])
    np.testing.assert_array_equal(both.group, [0, 0, 0, 1, 1, 1])  # the second set's group is a new one
    np.testing.assert_array_equal(PuzzleSet.concat([puzzles[:2], sudoku.generate(2, seed=1)]).group, [0, 0, 1, 2])
    again = task.load(task.export(puzzles, tmp_path / "again"))
    np.testing.assert_array_equal(again.group, GROUPS)
    assert sudoku.generate(3, seed=0).group is None
    np.testing.assert_array_equal(sudoku.generate(3, seed=0).groups(), [0, 1, 2])
    with pytest.raises(ValueError, match="group must be"):
        PuzzleSet(puzzles.tokens, puzzles.solution, puzzles.source, puzzles.rating, group=[0, 1])


def test_summary_counts_the_copies_of_a_puzzle_as_one():
    n, b, t = len(GROUPS), 2, 3
    correct = np.zeros((n, b, t), bool)
    selected = np.zeros(n, np.int64)
    solved = np.array([1, 0, 1, 1, 1, 0, 1, 1, 1, 1], bool)  # puzzle 0: 2 of 3 copies, 1: both, 2: none, 3: all
    correct[:, 0, -1] = solved
    args = (np.ones((n, 81), np.uint8), np.full(n, -1), np.full(n, "ref", object), correct, np.ones((n, b), np.int32),
            selected, selected, "sudoku")
    s = summarize(*args, group=GROUPS)
    assert s.groups == 4 and s.accuracy == pytest.approx(0.8)
    assert s.group_accuracy == pytest.approx((2 / 3 + 1 + 0 + 1) / 4)
    assert s.group_all_correct == pytest.approx(2 / 4)
    assert "accuracy (group)   0.6667" in s.table()
    plain = summarize(*args)  # no groups, or every row its own: no group lines
    assert plain.groups == 0 and "group" not in plain.table()
    assert summarize(*args, group=np.arange(n)).groups == 0


def test_solve_records_groups_and_prints_the_group_accuracy(split, tmp_path, capsys):
    run = tmp_path / "run.h5"
    assert main(["solve", DEFAULT_CHECKPOINT, "--data", str(split), "--depth", "2", "--breadth", "1", "--out",
                 str(run), "--batch-size", "4", "--no-progress", "--device", "cpu"]) == 0
    assert "groups             4 (augmented copies" in capsys.readouterr().out
    with open_run(run) as r:
        np.testing.assert_array_equal(r.puzzles.group, GROUPS)


def test_training_subsamples_and_carves_whole_groups(split):
    cfg = train.TrainConfig.from_preset("tiny", data=str(split), n_train=2, n_eval=1, seed=3)
    pool, held = train.load_data(cfg)
    assert len(held) == 1 and len(np.unique(pool.group)) == 2
    sizes = np.bincount(GROUPS)
    assert len(pool) == sizes[np.unique(pool.group)].sum()  # every copy of a chosen puzzle
    assert held.group[0] not in set(pool.group)  # no copy of a held-out puzzle is trained on
    with pytest.raises(train.InputError, match="4 puzzles; need more than n_eval=4"):
        train.load_data(train.TrainConfig.from_preset("tiny", data=str(split), n_eval=4))
