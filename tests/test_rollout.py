"""Test-time scaling: halting freezes rows and saves compute, selection rules, determinism, solve -> run.h5."""

import numpy as np
import pytest
import torch

from attractorlab import checkpoint, recording, sudoku
from attractorlab.cli import DEFAULT_CHECKPOINT, main
from attractorlab.model import EquilibriumReasoner, LatentState, ReasonerConfig
from attractorlab.rollout import (
    RolloutConfig,
    convergence_score,
    relative_change,
    rollout,
    select_by_attractor,
    select_lowest_score,
    select_majority,
)
from attractorlab.solve import solve_puzzles as solve


@pytest.fixture(scope="module")
def puzzles():
    return sudoku.generate(6, seed=5, difficulty="singles")


def tiny_model(seed=0, **kw) -> EquilibriumReasoner:
    torch.manual_seed(seed)
    cfg = dict(hidden_size=16, expansion=1.0, H_cycles=1, L_cycles=2, L_layers=1)
    return EquilibriumReasoner(ReasonerConfig(**{**cfg, **kw})).eval()


def as_tensors(p):
    return torch.as_tensor(p.tokens, dtype=torch.long), torch.as_tensor(p.solution)


def test_convergence_score_uses_last_window_before_halting():
    lc = np.array([[[5.0, 4.0, 3.0, 2.0, 1.0], [9.0, 1.0, 1.0, 1.0, 1.0]]])
    steps = np.array([[5, 2]])
    score = convergence_score(lc, steps, window=3)
    np.testing.assert_allclose(score, [[2.0, 5.0]])  # mean(3,2,1); only 2 steps: mean(9,1)
    assert select_lowest_score(score).tolist() == [0]


def test_select_majority_counts_votes_and_breaks_ties_by_score():
    a, b, c = np.full(81, 1), np.full(81, 2), np.full(81, 3)
    pred = np.stack([np.stack([a, b, b, c]), np.stack([a, b, c, a])]).astype(np.uint8)
    score = np.array([[0.1, 0.5, 0.4, 0.0], [0.3, 0.2, 0.1, 0.9]])
    sel = select_majority(pred, score)
    assert pred[0, sel[0], 0] == 2  # b has two votes
    assert sel[1] == 0  # a has two votes (restarts 0 and 3); restart 0 has the lower score


class CubicModel:
    """Stands in for a reasoner: instance i's outer step is a map of 2-D states with attractors at the corners of
    {-1, 1}^2 and saddles on the axes, shifted by the instance's token."""

    device = torch.device("cpu")

    def as_map(self, tokens):
        shift = float(tokens[0, 0])
        return lambda z: z + 0.5 * ((z - shift) - (z - shift) ** 3)


def test_attractor_selection_polishes_only_where_restarts_disagree():
    tokens = torch.tensor([[0], [3]])
    ends = torch.tensor([[[1.02, 0.99], [1.01, 1.03], [-0.999, 1.0], [0.0, 1.0]],  # 2 restarts on (1, 1)
                         [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]], dtype=torch.float64)
    ends[1] += 3.0
    answers = np.array([[[1], [1], [2], [3]], [[7], [7], [7], [7]]])
    score = np.array([[0.5, 0.4, 0.01, 0.02], [0.3, 0.2, 0.1, 0.4]])  # the score prefers restart 2 and 2
    chosen = select_by_attractor(CubicModel(), tokens, ends, answers, score)
    assert chosen.tolist() == [0, 2]  # instance 0: on (1, 1), closest; instance 1: one answer, the score's choice
    assert select_lowest_score(score).tolist() == [2, 2]


def test_rollout_with_attractor_selection_chooses_from_the_polished_ends(puzzles):
    model = tiny_model(seed=3)
    tok, sol = as_tensors(puzzles[:2])
    cfg = RolloutConfig(depth=6, breadth=3, seed=2, select="attractor")
    res = rollout(model, tok, sol, cfg, states="final", state_fn=lambda s: s.flatten())
    final_pred = res.pred[:, :, -1]
    assert not (final_pred == final_pred[:, :1]).all()  # some restarts disagree: a polish ran
    expect = select_by_attractor(model, tok, torch.as_tensor(res.states[:, :, 0]), final_pred,
                                 convergence_score(res.logit_change, res.steps, cfg.window))
    assert res.selected.tolist() == expect.tolist()
    plain = rollout(model, tok, sol, RolloutConfig(depth=6, breadth=3, seed=2))
    np.testing.assert_array_equal(plain.pred, res.pred)  # the rule changes only the choice


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # inside inductor
def test_compiled_rollout_agrees_with_the_eager_one_as_rows_halt(puzzles):
    model = tiny_model(seed=4)
    with torch.no_grad():
        model.q_head.bias.zero_()
        model.q_head.weight.normal_(0, 3.0)
    tok, sol = as_tensors(puzzles[:4])
    cfg = RolloutConfig(depth=6, breadth=2, halt="q", seed=1)
    eager, compiled = rollout(model, tok, sol, cfg), rollout(model, tok, sol, cfg, compile=True)
    assert len(set(eager.steps.ravel())) > 1  # rows left the batch at different steps: shapes changed
    np.testing.assert_array_equal(compiled.steps, eager.steps)
    np.testing.assert_allclose(compiled.residual, eager.residual, rtol=1e-3, atol=1e-6)
    assert (compiled.pred == eager.pred).mean() > 0.999


def test_halting_freezes_rows_and_saves_compute(puzzles):
    model = tiny_model()
    with torch.no_grad():
        model.q_head.bias.zero_()
        model.q_head.weight.normal_(0, 3.0)
    tok, sol = as_tensors(puzzles)
    res = rollout(model, tok, sol, RolloutConfig(depth=12, breadth=3, halt="q", seed=1))
    steps = res.steps
    assert steps.min() >= 1 and steps.max() <= 12
    assert res.compute_steps == steps.sum()
    for i, j in np.ndindex(steps.shape):
        last = steps[i, j] - 1
        for arr in (res.residual, res.halt_logit, res.logit_change, res.valid, res.correct):
            assert (arr[i, j, last:] == arr[i, j, last]).all()
        assert (res.pred[i, j, last:] == res.pred[i, j, last]).all()
        if steps[i, j] < 12:
            assert res.halt_logit[i, j, last] > 0
        assert (res.halt_logit[i, j, :last] <= 0).all()


def test_seeded_determinism_and_fixed_depth(puzzles):
    model = tiny_model()
    tok, sol = as_tensors(puzzles)
    cfg = RolloutConfig(depth=5, breadth=2, seed=3)
    a, b = rollout(model, tok, sol, cfg), rollout(model, tok, sol, cfg)
    c = rollout(model, tok, sol, RolloutConfig(depth=5, breadth=2, seed=4))
    np.testing.assert_array_equal(a.residual, b.residual)
    assert not np.array_equal(a.residual, c.residual)
    assert (a.steps == 5).all() and a.compute_steps == 6 * 2 * 5
    assert a.pred.shape == (6, 2, 5, 81) and a.pred.min() >= 1 and a.pred.max() <= 9


def test_states_all_with_stride_and_final(puzzles):
    model = tiny_model()
    tok, sol = as_tensors(puzzles[:2])
    res = rollout(model, tok, sol, RolloutConfig(depth=5, breadth=2), states="all", state_stride=2)
    assert res.state_steps.tolist() == [0, 2, 4, 5]
    assert res.states.shape == (2, 2, 4, 2, 81, 16)
    fin = rollout(model, tok, sol, RolloutConfig(depth=5, breadth=2), states="final")
    np.testing.assert_allclose(fin.states[:, :, 0], res.states[:, :, -1], rtol=1e-5, atol=1e-6)


def test_valid_and_correct_flags_for_a_model_that_copies_the_solution(puzzles):
    model = tiny_model()
    tok, sol = as_tensors(puzzles[:2])
    res = rollout(model, tok, sol, RolloutConfig(depth=2))
    expected_valid = sudoku.is_valid_solution(puzzles.tokens[:2], res.pred[:, 0, -1])
    np.testing.assert_array_equal(res.valid[:, 0, -1], expected_valid)
    np.testing.assert_array_equal(res.correct[:, 0, -1], (res.pred[:, 0, -1] == puzzles.solution[:2]).all(-1))


@pytest.mark.parametrize("kw,match", [(dict(depth=0), "depth"), (dict(breadth=0), "breadth"),
                                      (dict(halt="sometimes"), "halt rule"), (dict(select="best"), "selection")])
def test_bad_rollout_config(kw, match):
    with pytest.raises(ValueError, match=match):
        RolloutConfig(**kw)


def test_solve_resume_reproduces_an_uninterrupted_run(puzzles, tmp_path):
    model = tiny_model()
    cfg = RolloutConfig(depth=4, breadth=2, seed=7)
    full = tmp_path / "full.h5"
    solve(model, puzzles, cfg, str(full), batch_size=2, progress=False)
    part = tmp_path / "part.h5"
    solve(model, puzzles[:4], cfg, str(part), batch_size=2, progress=False)  # "killed" after two batches
    summary = solve(model, puzzles, cfg, str(part), batch_size=2, resume=True, progress=False)
    assert summary.n == 6
    with recording.open_run(full) as a, recording.open_run(part) as b:
        assert a.n == b.n == 6
        for name in ("residual", "pred", "steps", "selected"):
            np.testing.assert_array_equal(a.rollout[name], b.rollout[name])


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "model.pt"
    checkpoint.save(tiny_model(), path)
    return path


def test_cli_solve_end_to_end(ckpt, tmp_path, capsys):
    out = tmp_path / "run.h5"
    args = ["solve", str(ckpt), "--generate", "5", "--difficulty", "singles", "--depth", "3", "--breadth", "2",
            "--states", "all", "--project", "8", "--out", str(out), "--no-progress", "--batch-size", "2"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "accuracy (select)" in text and "pass@B" in text and "MiB" in text
    with recording.open_run(out) as run:
        assert run.n == 5 and run.breadth == 2 and run.depth == 3
        assert run.attrs["checkpoint_sha256"] == checkpoint.file_sha256(ckpt)
        assert run.states.data.shape == (5, 2, 4, 81, 8)
    assert main(args) == 2  # exists: refuses without --resume/--overwrite
    assert "exists" in capsys.readouterr().err


@pytest.mark.parametrize("extra,match", [
    (["--depth", "0"], "depth"), (["--breadth", "0"], "breadth"), (["--generate", "0"], "generate"),
])
def test_cli_solve_bad_arguments_leave_no_file(ckpt, tmp_path, capsys, extra, match):
    out = tmp_path / "bad.h5"
    assert main(["solve", str(ckpt), "--out", str(out), "--no-progress", "--generate", "2", *extra]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err
    assert not out.exists()


def test_cli_solve_missing_checkpoint_and_unwritable_output(ckpt, tmp_path, capsys):
    assert main(["solve", str(tmp_path / "none.pt"), "--out", str(tmp_path / "r.h5"), "--no-progress"]) == 2
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "r.h5").exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["solve", str(ckpt), "--generate", "2", "--out", str(blocker / "r.h5"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "error" in err and "cannot create the directory" in err and len(err.strip().splitlines()) == 1


def test_cli_solve_compile_without_a_compiler_is_one_line(ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)  # no C++ compiler on PATH
    out = tmp_path / "r.h5"
    assert main(["solve", str(ckpt), "--generate", "2", "--compile", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "C++ compiler" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_torchrun_sharded_solve_merges_into_one_run(ckpt, tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "sharded.h5"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                           "29531", "-m", "attractorlab", "solve", str(ckpt), "--generate", "5", "--difficulty",
                           "singles", "--depth", "3", "--batch-size", "2", "--out", str(out), "--no-progress",
                           "--device", "cpu"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with recording.open_run(out) as run:
        assert run.n == 5
        tokens = np.sort(run.puzzles.tokens, axis=0)
    expected = np.sort(sudoku.generate(5, seed=0, difficulty="singles").tokens, axis=0)
    np.testing.assert_array_equal(tokens, expected)


def _first_run(mask: np.ndarray, patience: int) -> np.ndarray:
    """Step (1-based) at which ``mask [rows, T]`` has been true ``patience`` times in a row; T if never."""
    rows, t_max = mask.shape
    out = np.full(rows, t_max)
    for r in range(rows):
        count = 0
        for t in range(t_max):
            count = count + 1 if mask[r, t] else 0
            if count >= patience:
                out[r] = t + 1
                break
    return out


@pytest.mark.parametrize("halt", ["converge", "stable"])
def test_convergence_and_stable_answer_halting_match_fixed_depth_records(puzzles, halt):
    model = checkpoint.load(DEFAULT_CHECKPOINT)  # the shipped model: trajectories that settle at different steps
    tok, sol = as_tensors(puzzles)
    depth, patience, tol = 24, 3, 1e-3
    fixed = rollout(model, tok, sol, RolloutConfig(depth=depth, breadth=2, noise=False, seed=0))
    halted = rollout(model, tok, sol, RolloutConfig(depth=depth, breadth=2, noise=False, seed=0, halt=halt, tol=tol,
                                                    patience=patience))
    res, pred = fixed.residual.reshape(-1, depth), fixed.pred.reshape(-1, depth, 81)
    if halt == "converge":
        settled = res < tol
    else:
        with torch.no_grad():  # the answer read out from the initial state
            state = model.init_state(tok.repeat_interleave(2, dim=0), generator=torch.Generator().manual_seed(0))
            init = (model.readout(state)[0][..., 2:].argmax(-1) + 1).numpy().astype(np.uint8)
        previous = np.concatenate([init[:, None], pred[:, :-1]], axis=1)
        settled = (pred == previous).all(axis=2)
    expected = _first_run(settled, patience)
    assert expected.min() < depth  # the case exercises early halting
    np.testing.assert_array_equal(halted.steps.reshape(-1), expected)
    assert halted.compute_steps == expected.sum()
    for r, last in enumerate(expected):
        np.testing.assert_array_equal(halted.pred.reshape(-1, depth, 81)[r, :last], pred[r, :last])
        assert (halted.pred.reshape(-1, depth, 81)[r, last:] == pred[r, last - 1]).all()


def test_reference_score_skips_the_change_from_the_initial_state():
    from attractorlab import reference
    from attractorlab.rollout import reference_score

    cell = np.array([[[100.0, 4.0, 3.0, 2.0, 1.0], [100.0, 1.0, 1.0, 1.0, 1.0], [7.0, 7.0, 7.0, 7.0, 7.0]]])
    steps = np.array([[5, 5, 1]])
    score = reference_score(cell, steps, window=3)
    np.testing.assert_allclose(score[0, :2], [2.0, 1.0])  # mean(3, 2, 1), mean(1, 1, 1): never the 100
    assert np.isnan(score[0, 2])  # one step: no change between outer steps
    np.testing.assert_allclose(score[0, :2], reference.convergence_scores(cell[0, :2, 1:], window=3))


def test_reference_protocol_on_an_exported_reference_split(tmp_path, capsys):
    split = tmp_path / "data" / "sudoku-mini" / "test"
    assert main(["export-dataset", "--generate", "6", "--out", str(split), "--no-progress"]) == 0
    loaded = sudoku.TASK.load(split)
    generated = sudoku.generate(6, seed=0)
    np.testing.assert_array_equal(loaded.tokens, generated.tokens)
    np.testing.assert_array_equal(loaded.solution, generated.solution)
    assert main(["export-dataset", "--generate", "6", "--out", str(split), "--no-progress"]) == 2  # no overwrite
    capsys.readouterr()
    out = tmp_path / "ref.h5"
    assert main(["solve", DEFAULT_CHECKPOINT, "--data", str(split), "--protocol", "reference", "--depth", "4",
                 "--breadth", "3", "--halt", "stable", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "paper metrics (reference" in text and "exact_accuracy" in text and "pass@3" in text
    with recording.open_run(out) as run:
        assert (run.rollout.steps == 4).all()  # the protocol runs every row to the full depth
        assert run.config["rollout"]["select"] == "reference" and run.config["rollout"]["full_vocab"]
        final = run.rollout.correct[:, :, -1]
        assert f"exact_accuracy                   {final.mean():.4f}" in text  # mean pass rate over all rows


def test_relative_change_is_that_of_the_flat_states():
    g = torch.Generator().manual_seed(0)
    old = LatentState(torch.randn(5, 81, 16, generator=g), torch.randn(5, 81, 16, generator=g))
    new = LatentState(old.z_H + 0.1 * torch.randn(5, 81, 16, generator=g), 2 * old.z_L)
    flat_new, flat_old = new.flatten(), old.flatten()
    expect = (flat_new - flat_old).norm(dim=1) / flat_new.norm(dim=1)
    torch.testing.assert_close(relative_change(new, old), expect, rtol=1e-6, atol=0)
