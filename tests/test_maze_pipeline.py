"""A maze model end to end through the command line: train a few steps, solve with recording, analyze, report with
the answers drawn, and the maze demo."""

from __future__ import annotations

import numpy as np
import pytest

from attractorlab import checkpoint, report
from attractorlab.cli import DEFAULT_CHECKPOINT, main
from attractorlab.recording import open_run
from attractorlab.tasks import get_task


@pytest.fixture(scope="module")
def maze_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("maze") / "maze.pt"
    assert main(["train", "--preset", "maze-tiny", "--out", str(path), "--steps", "3", "--n-train", "16",
                 "--n-eval", "4", "--eval-every", "3", "--eval-depths", "1,2", "--hidden-size", "32",
                 "--device", "cpu", "--no-progress"]) == 0
    return path


def test_maze_model_trains_solves_records_analyzes_and_reports(maze_ckpt, tmp_path, capsys):
    model = checkpoint.load(maze_ckpt)
    assert model.config.task == "maze11" and model.config.seq_len == 121 and model.config.vocab_size == 6
    run = tmp_path / "maze.h5"
    assert main(["solve", str(maze_ckpt), "--generate", "6", "--depth", "4", "--breadth", "2", "--states", "all",
                 "--out", str(run), "--no-progress", "--device", "cpu"]) == 0
    with open_run(run) as r:
        assert r.task == "maze11" and r.puzzles.tokens.shape == (6, 121)
        assert r.rollout.pred.shape == (6, 2, 4, 121) and r.rollout.pred.max() < 6
        wrong = int((~r.rollout.correct[np.arange(6), r.rollout.selected, -1]).sum())
    html = tmp_path / "maze_report.html"
    assert main(["analyze", str(run), "--out", str(html), "--n-puzzles", "1", "--grid", "3",
                 "--basin-samples", "4", "--max-steps", "4", "--restarts", "2", "--n-polish", "2", "--n-lyapunov", "1",
                 "--lyapunov-steps", "4", "--n-selection", "2", "--no-progress", "--device", "cpu"]) == 0
    text = html.read_text()
    assert "Answers drawn" in text and "Basin maps" in text
    with open_run(run) as r:
        fig = report.build_figures(r)["answers"]
    images = [t for t in fig.data if t.type == "image"]
    assert 1 <= len(images) <= 8 and sum("wrong" in a.text for a in fig.layout.annotations) == min(wrong, 4)
    assert np.asarray(images[0].z).shape == (11 * 8, 11 * 8, 3)  # an 11 x 11 board at 8 pixels per cell
    with open_run(run) as r:
        chance = r.read_analysis("probes").attrs["cell_chance"]
        targets = get_task("maze11").probe_targets(r.puzzles.tokens, r.puzzles.solution)
        probes = report.build_figures(r)["probes"]
    known = targets[targets > 0]
    assert chance == pytest.approx(np.bincount(known).max() / known.size)  # the share of on-path open cells
    assert [s.y0 for s in probes.layout.shapes] == [pytest.approx(chance)]
    capsys.readouterr()


def test_answer_pictures_show_the_predicted_path_over_the_maze(maze_ckpt, tmp_path):
    run = tmp_path / "maze.h5"
    assert main(["solve", str(maze_ckpt), "--generate", "3", "--depth", "2", "--breadth", "1", "--out", str(run),
                 "--no-progress", "--device", "cpu"]) == 0
    task = get_task("maze11")
    with open_run(run) as r:
        fig = report.build_figures(r)["answers"]
        first = int(fig.layout.annotations[0].text.split()[0][1:])
        expected = task.image(r.puzzles["tokens", first], r.rollout["pred", first, int(r.rollout.selected[first]), -1],
                              scale=8)
    np.testing.assert_array_equal(np.asarray(fig.data[0].z, dtype=np.uint8), expected)


def test_sudoku_runs_have_no_answer_pictures(tmp_path):
    run = tmp_path / "s.h5"
    assert main(["solve", DEFAULT_CHECKPOINT, "--generate", "2", "--depth", "2", "--breadth", "1", "--out", str(run),
                 "--no-progress", "--device", "cpu"]) == 0
    with open_run(run) as r:
        assert "answers" not in report.build_figures(r)


def test_maze_demo_runs_on_a_maze_checkpoint(maze_ckpt, tmp_path, capsys):
    assert main(["demo", "--task", "maze", "--checkpoint", str(maze_ckpt), "--n", "4", "--depth", "3", "--breadth",
                 "2", "--n-dynamics", "1", "--grid", "3", "--basin-samples", "4", "--out-dir", str(tmp_path),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "demo_report.html" in out and "Answers drawn" in (tmp_path / "demo_report.html").read_text()


def test_demo_refuses_a_missing_checkpoint(tmp_path, capsys):
    assert main(["demo", "--checkpoint", str(tmp_path / "none.pt"), "--out-dir", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_maze_hover_grids_keep_their_open_cells():
    task = get_task("maze11")
    mazes = task.generate(1, seed=2)
    text = report.grid_html(task.answer_strings(mazes.solution)[0], task)
    lines = text.split("<br>")
    assert len(lines) == 11 and all(len(line) == 11 for line in lines)  # no space collapsed away
    assert "\u00a0" in text and "  " not in text
