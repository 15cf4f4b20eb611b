"""The attractor landscape across training, on a constructed sequence where the correct attractor is born at a
known step."""

import numpy as np
import pytest
import torch

from attractorlab import checkpoint, landscape, sudoku
from attractorlab.cli import main
from attractorlab.errors import InputError
from attractorlab.model import EquilibriumReasoner, ReasonerConfig
from attractorlab.rollout import RolloutConfig, rollout


def contraction(seed: int) -> EquilibriumReasoner:
    torch.manual_seed(seed)
    model = EquilibriumReasoner(ReasonerConfig(hidden_size=8, expansion=1.0, H_cycles=1, L_cycles=1, L_layers=1))
    with torch.no_grad():  # weak layers, strong input: one attractor per puzzle, reached in a few steps
        for p in model.layers.parameters():
            p.mul_(0.3)
        model.embed_tokens.weight.mul_(30.0)
    return model.eval()


@pytest.fixture(scope="module")
def sequence(tmp_path_factory):
    """Checkpoints at steps 100 (model A), 200 and 300 (model B); the puzzles' labels are B's own answers."""
    folder = tmp_path_factory.mktemp("landscape")
    a, b = contraction(0), contraction(1)
    paths = []
    for step, model in ((300, b), (100, a), (200, b)):  # out of order: track sorts by the recorded step
        path = folder / f"run.step{step:07d}.pt"
        checkpoint.save(model, path, meta={"step": step})
        paths.append(str(path))
    base = sudoku.generate(2, seed=4, difficulty="singles")
    tokens = np.full_like(base.tokens, sudoku.BLANK)  # blank grids, "solved" by whatever B answers
    res = rollout(b, torch.as_tensor(tokens, dtype=torch.long), None, RolloutConfig(depth=30, noise=False))
    puzzles = sudoku.PuzzleSet(tokens, res.pred[:, 0, -1], base.source, base.rating)
    return paths, puzzles, folder


def test_the_correct_attractor_is_born_where_the_weights_change(sequence):
    paths, puzzles, _ = sequence
    result = landscape.track(paths, puzzles, restarts=2, samples=4, max_steps=30, depth=30, noise=False)
    assert result.steps.tolist() == [100, 200, 300]
    assert result.correct_found.tolist() == [[False, False], [True, True], [True, True]]
    assert result.correct_birth.tolist() == [200, 200]
    assert result.attractors.tolist() == [[1, 1], [1, 1], [1, 1]]  # a contraction: one attractor each
    assert result.births.tolist() == [2, 2, 0] and result.deaths.tolist() == [0, 2, 0]
    np.testing.assert_allclose(result.correct_basin[1:], 1.0)  # every sample reaches the only attractor
    assert result.correct_basin[0].tolist() == [0.0, 0.0] and np.isnan(result.correct_radius[0]).all()
    assert (result.correct_radius[1:] < 1).all() and result.accuracy.tolist() == [0.0, 1.0, 1.0]
    assert "births" in result.table()


def test_cli_landscape_and_its_errors(sequence, tmp_path, capsys):
    paths, _, folder = sequence
    out = tmp_path / "l.html"
    assert main(["landscape", *paths, "--generate", "2", "--difficulty", "singles", "--restarts", "2",
                 "--samples", "4", "--max-steps", "20", "--depth", "8", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3 checkpoints" in text and f"figure: {out}" in text and out.stat().st_size > 100_000
    bare = folder / "nostep.pt"
    checkpoint.save(contraction(2), bare)
    with pytest.raises(InputError, match="records no training step"):
        landscape.checkpoint_step(bare)
    assert main(["landscape", str(bare), "--generate", "1"]) == 2
    assert "no training step" in capsys.readouterr().err
