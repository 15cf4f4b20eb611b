"""The Task interface: a tiny task defined here trains, solves, records, analyzes and reports through the public
API with no change to library code — nothing outside a task module assumes Sudoku."""

import h5py
import numpy as np
import pytest
import torch

from attractorlab import checkpoint, recording, tasks
from attractorlab.cli import main
from attractorlab.model import EquilibriumReasoner, ReasonerConfig
from attractorlab.tasks import PuzzleSet, Task, TaskError, get_task
from attractorlab.train import TrainConfig, train


class CopyTask(Task):
    """Copy the input: 8 cells of tokens 1..4 (0 = pad); the answer encoding is the tokens themselves."""

    name = "copy-test"
    seq_len = 8
    vocab_size = 5
    token_names = ("pad", "a", "b", "c", "d")
    board_shape = (2, 4)
    difficulties = ("mixed",)
    bands = ("all",)
    answer_names = "tokens 1..4, 0 = unknown"

    def answer(self, logits, *, full_vocab=False):
        return logits.argmax(-1).to(torch.uint8)

    def targets(self, solution):
        return solution

    def is_valid(self, inputs, answer):
        return (answer > 0).all(-1)

    def difficulty_band(self, rating):
        return np.where(np.asarray(rating) < 0, "unknown", "all")

    def generate(self, n, seed=0, *, difficulty=None, progress=False):
        tokens = np.random.default_rng(seed).integers(1, 5, size=(n, 8)).astype(np.uint8)
        return PuzzleSet(tokens, tokens.copy(), "generated:copy", np.zeros(n, np.int32))

    def render(self, tokens, answer=None):
        shown = tokens if answer is None else answer
        return "\n".join("".join("-abcd"[v] for v in shown[r * 4:(r + 1) * 4]) for r in range(2))


@pytest.fixture(scope="module")
def copy_task():
    return tasks.register(CopyTask())


def test_registry_and_errors(copy_task):
    assert get_task("copy-test") is copy_task and "sudoku" in tasks.names()
    with pytest.raises(TaskError, match="unknown task 'nope'"):
        get_task("nope")
    with pytest.raises(TaskError, match="8 tokens"):
        copy_task.check(PuzzleSet(np.ones((2, 5), np.uint8), np.ones((2, 5), np.uint8), "x", np.zeros(2, np.int32)))


def test_model_config_takes_sizes_from_the_task(copy_task):
    cfg = ReasonerConfig(task="copy-test", hidden_size=16, expansion=1.0, L_layers=1, H_cycles=1, L_cycles=1)
    assert (cfg.seq_len, cfg.vocab_size, cfg.board_height, cfg.board_width) == (8, 5, 2, 4)
    attn = ReasonerConfig(task="copy-test", hidden_size=16, num_heads=2, mlp_t=False, pos_encodings="rope2d")
    assert EquilibriumReasoner(attn).layers[0].self_attn.cos.shape == (8, 8)
    with pytest.raises(ValueError, match="board_height x board_width"):
        ReasonerConfig(hidden_size=16, num_heads=2, mlp_t=False, pos_encodings="rope2d", board_height=3,
                       board_width=3)


def test_a_second_task_runs_end_to_end(copy_task, tmp_path, capsys):
    model = dict(task="copy-test", hidden_size=16, expansion=1.0, L_layers=1, H_cycles=1, L_cycles=2,
                 halt_max_steps=2)
    cfg = TrainConfig.from_preset("tiny", **model, batch_size=8, steps=3, n_train=16, n_eval=4, eval_every=3,
                                  checkpoint_every=3, eval_depths=(1, 2))
    ckpt = tmp_path / "copy.pt"
    result = train(cfg, ckpt, device="cpu", progress=False)
    assert result["step"] == 3
    assert checkpoint.load(ckpt).config.task == "copy-test"
    run = tmp_path / "copy.h5"
    assert main(["solve", str(ckpt), "--generate", "5", "--depth", "3", "--breadth", "2", "--states", "all",
                 "--out", str(run), "--no-progress"]) == 0
    assert "band all" in capsys.readouterr().out
    with recording.open_run(run) as r:
        assert (r.task, r.n, r.seq_len) == ("copy-test", 5, 8)
        assert r.rollout.pred.shape == (5, 2, 3, 8)
        assert r.rollout.token_accuracy.shape == (5, 2, 3)
    with h5py.File(run) as f:
        assert f.attrs["task"] == "copy-test" and f["puzzles/tokens"].shape == (5, 8)
    report = tmp_path / "copy.html"
    assert main(["analyze", str(run), "--out", str(report), "--n-puzzles", "1", "--restarts", "2",
                 "--basin-samples", "4", "--grid", "3", "--max-steps", "4", "--no-progress"]) == 0
    assert report.stat().st_size > 10_000
    with recording.open_run(run) as r:
        keys = set(r.analysis_keys())
    assert {"summary", "scaling", "convergence", "embedding", "probes", "fixed_points/p0", "basins/p0"} <= keys


def test_schema_1_files_still_read_as_sudoku(tmp_path):
    path = tmp_path / "old.h5"
    with recording.RunWriter(path, breadth=1, depth=2, attrs={}) as w:
        zeros = np.zeros((1, 1, 2), np.float32)
        w.append(get_task("sudoku").generate(1), {
            "residual": zeros, "halt_logit": zeros, "logit_change": zeros, "pred": np.ones((1, 1, 2, 81), np.uint8),
            "valid": zeros.astype(bool), "correct": zeros.astype(bool), "steps": np.full((1, 1), 2, np.int32),
            "selected": np.zeros(1, np.int32)})
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = 1
        del f.attrs["task"]
    with recording.open_run(path) as r:
        assert (r.schema_version, r.task, r.seq_len) == (1, "sudoku", 81)
