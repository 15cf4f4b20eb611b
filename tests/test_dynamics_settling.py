"""Steps to settle and post-hoc halting on constructed run arrays with hand-computed answers, and the replay
against a step-by-step transcription of the halting loop of ``attractorlab.rollout.rollout``."""

import numpy as np
import pytest
import torch

from attractorlab.dynamics import (
    HALT_RULES,
    Settling,
    halting_curves,
    replay_halting,
    steps_to_settle,
    steps_vs_difficulty,
)


def grids(*answers):
    """pred [1, T, 1] from a sequence of one-cell answers."""
    return np.asarray(answers, dtype=np.uint8)[None, :, None]


def test_answer_settles_after_its_last_change():
    pred = np.concatenate([grids(3, 5, 3, 3, 3, 3), grids(1, 1, 1, 1, 1, 1), grids(4, 4, 4, 4, 2, 7)])
    s = steps_to_settle(pred)
    # row 0: the final 3 is back from step 3 on; row 1: never changed; row 2: the final answer appears at step 6
    assert s.answer_step.tolist() == [3, 1, 6] and s.answer_settled.all()
    assert s.depth == 6 and s.never == 7 and s.residual_step is None
    held = steps_to_settle(pred, window=2)  # the final answer must be held two steps
    assert held.answer_step.tolist() == [3, 1, 7] and held.answer_settled.tolist() == [True, True, False]
    flags = np.array([[True, True, True, False, False, False]])  # the same as changed-flags
    assert steps_to_settle(changed=flags).answer_step.tolist() == [3]
    halted = steps_to_settle(pred, steps=np.array([2, 6, 4]))  # only recorded steps count
    assert halted.answer_step.tolist() == [2, 1, 1]


def test_residual_settles_when_it_stays_within_the_floor():
    residual = np.array([[0.5, 0.1, 0.5, 0.1, 0.1],  # within 0.2 from step 4 on
                         [0.1, 0.1, 0.1, 0.1, 0.1],  # from step 1
                         [0.1, 0.1, 0.1, 0.1, 0.5],  # not at the end: never
                         [0.5, 0.5, 0.5, 0.3, 0.25]])  # within 2 x 0.2 from step 4
    s = steps_to_settle(residual=residual, floor=0.2)
    assert s.residual_step.tolist() == [4, 1, 6, 6] and s.residual_settled.tolist() == [True, True, False, False]
    assert steps_to_settle(residual=residual, floor=0.2, margin=2.0).residual_step.tolist() == [4, 1, 6, 4]
    per_row = steps_to_settle(residual=residual, floor=np.array([0.2, 0.05, 1.0, 0.2]))
    assert per_row.residual_step.tolist() == [4, 6, 1, 6]
    assert set(s.to_arrays()) == {"residual_step", "residual_settled", "depth", "never"}
    with pytest.raises(ValueError):
        steps_to_settle(residual=residual)  # a floor is needed
    with pytest.raises(ValueError):
        steps_to_settle()


def test_steps_to_settle_differ_from_steps_run_and_feed_steps_vs_difficulty():
    t = 8
    rating = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    settle_at = np.array([1, 2, 4, 5, 7])  # harder puzzles settle later; every row ran all 8 steps
    residual = np.where(np.arange(1, t + 1) >= settle_at[:, None, None], 0.01, 1.0).repeat(2, axis=1)
    pred = np.where(np.arange(1, t + 1)[None, None, :, None] >= settle_at[:, None, None, None], 9, np.arange(t)[
        None, None, :, None]).repeat(2, axis=1).astype(np.uint8)
    s = steps_to_settle(pred, residual, 0.02)
    np.testing.assert_array_equal(s.answer_step, settle_at[:, None].repeat(2, axis=1))
    np.testing.assert_array_equal(s.residual_step, settle_at[:, None].repeat(2, axis=1))
    flat = steps_vs_difficulty(np.full((5, 2), t), rating)
    assert np.isnan(flat.rho) and "constant" in flat.reason  # steps run: flat at the depth
    res = steps_vs_difficulty(s, rating, n_bins=5)
    assert res.rho == pytest.approx(1.0) and res.bin_mean_steps.tolist() == [1, 2, 4, 5, 7]
    assert steps_vs_difficulty(s, rating, which="residual").rho == pytest.approx(1.0)
    residual[4, 1, -1] = 1.0  # restart 1 of the hardest puzzle never settles
    s2 = steps_to_settle(pred, residual, 0.02)
    assert s2.residual_step[4].tolist() == [7, t + 1] and isinstance(s2, Settling)
    kept = steps_vs_difficulty(s2, rating, which="residual")
    dropped = steps_vs_difficulty(s2, rating, which="residual", unsettled="drop")
    assert kept.bin_mean_steps[-1] == pytest.approx((7 + 9) / 2) and dropped.bin_mean_steps[-1] == 7
    with pytest.raises(ValueError):
        steps_vs_difficulty(s2, rating, which="both")


def reference_halting(rule, residual, q, pred, initial, tol, patience):
    """The halting logic of ``attractorlab.rollout.rollout``, step by step in torch with compaction of halted rows."""
    rows, t = residual.shape
    residual, q = torch.as_tensor(residual), torch.as_tensor(q)
    pred, prev_answer = torch.as_tensor(pred), torch.as_tensor(initial)
    steps = torch.full((rows,), t, dtype=torch.int32)
    active = torch.arange(rows)
    below = torch.zeros(rows, dtype=torch.int32)
    for step in range(t):
        res, q_t, answer = residual[active, step], q[active, step], pred[active, step]
        if rule == "q":
            done = q_t > 0
        elif rule in ("converge", "stable"):
            settled = res < tol if rule == "converge" else (answer == prev_answer).all(dim=1)
            below[active] = torch.where(settled, below[active] + 1, 0)
            done = below[active] >= patience
        else:
            done = torch.zeros_like(q_t, dtype=torch.bool)
        prev_answer = answer
        if step == t - 1:
            done = torch.ones_like(done)
        if done.any():
            steps[active[done]] = step + 1
            keep = ~done
            active, prev_answer = active[keep], prev_answer[keep]
        if active.numel() == 0:
            break
    return steps.numpy()


def random_run(rows=200, t=12, seed=0):
    rng = np.random.default_rng(seed)
    residual = (10.0 ** rng.uniform(-4.5, -1.5, (rows, t))).astype(np.float32)
    residual[:5] = np.float32(0.7)  # exactly float32(0.7) < 0.7 in float64 but not in float32
    q = rng.normal(-1.0, 1.5, (rows, t)).astype(np.float32)
    pred = rng.integers(0, 2, (rows, t, 3), dtype=np.uint8)
    pred[rows // 2:, :, :] = pred[rows // 2:, :1, :] * (rng.uniform(size=(rows - rows // 2, t, 1)) < 0.8)
    initial = pred[:, 0].copy()
    initial[::3] = 1 - initial[::3]
    correct = rng.uniform(size=(rows, t)) < 0.5
    return residual, q, pred, initial, correct


@pytest.mark.parametrize("rule", HALT_RULES)
@pytest.mark.parametrize("tol, patience", [(1e-3, 2), (0.7, 1), (3e-3, 3)])
def test_replay_reproduces_the_live_rule(rule, tol, patience):
    residual, q, pred, initial, correct = random_run()
    expected = reference_halting(rule, residual, q, pred, initial, tol, patience)
    steps, correct_at = replay_halting(rule, residual, q, pred, correct, tol, patience, initial_pred=initial)
    np.testing.assert_array_equal(steps, expected)
    np.testing.assert_array_equal(correct_at, correct[np.arange(len(steps)), steps - 1])
    assert 1 <= steps.min() and steps.max() <= residual.shape[1]


def test_replay_edge_cases():
    t = 5
    residual = np.array([[1e-5] * t, [0.5] * t], dtype=np.float32)
    q = np.array([[0.3] + [-1.0] * (t - 1), [-1.0] * t], dtype=np.float32)
    pred = np.zeros((2, t, 2), dtype=np.uint8)
    pred[1, :, 0] = (np.arange(t) + 1) % 2  # differs from the initial read-out and keeps flipping
    correct = np.array([[True] + [False] * (t - 1), [False] * (t - 1) + [True]])
    for rule, kwargs in (("q", {}), ("converge", dict(patience=1)), ("stable", dict(patience=1))):
        replay = replay_halting(rule, residual, q, pred, correct, initial_pred=np.zeros((2, 2), np.uint8),
                                **kwargs)
        assert replay.steps_used.tolist() == [1, t] and replay.correct_at_halt.tolist() == [True, True]
    never = replay_halting("never", correct=correct)
    assert never.steps_used.tolist() == [t, t] and never.mean_steps() == t and never.accuracy() == 0.5
    # without the initial read-out step 1 counts as a change: stable with patience 1 halts at step 2
    assert replay_halting("stable", pred=pred, correct=correct, patience=1).steps_used.tolist() == [2, t]
    early = replay_halting("never", correct=correct, steps=np.array([2, 3]))  # the run itself halted there
    assert early.steps_used.tolist() == [2, 3]
    batched = replay_halting("converge", residual[None], correct=correct[None], patience=2)
    assert batched.steps_used.shape == (1, 2) and batched.steps_used.tolist() == [[2, t]]
    for bad in (dict(rule="sometimes"), dict(rule="q"), dict(rule="converge", patience=0)):
        with pytest.raises(ValueError):
            replay_halting(**({"residual": residual, "correct": correct} | bad))


def test_halting_curves_sweep_each_rule():
    t = 6
    residual = np.array([[0.1, 0.01, 1e-3, 1e-4, 1e-5, 1e-6],
                         [0.1, 0.1, 0.1, 0.1, 0.1, 0.1]], dtype=np.float32)
    q = np.array([[-2.0, -1.0, 0.5, 1.0, 2.0, 3.0], [-3.0] * t], dtype=np.float32)
    correct = np.array([[False, False, True, True, True, True], [False, False, False, False, False, True]])
    curves = halting_curves(residual, q, correct=correct, values={"q": np.array([0.0, 1.5])})
    assert set(curves.curves) == {"never", "q", "converge"}
    never = curves.curves["never"]
    assert never.values.tolist() == list(range(1, t + 1)) and never.mean_steps.tolist() == list(range(1, t + 1))
    assert never.accuracy.tolist() == [0.0, 0.0, 0.5, 0.5, 0.5, 1.0]
    qc = curves.curves["q"]  # q > 0: row 0 halts at 3 (correct), row 1 at 6; q > 1.5: row 0 at 5
    assert qc.parameter == "threshold" and qc.mean_steps.tolist() == [4.5, 5.5] and qc.accuracy.tolist() == [1, 1]
    conv = curves.curves["converge"]
    assert conv.values.size >= 2 and np.all(np.diff(conv.mean_steps) <= 0)  # larger tol: halts sooner
    arrays = curves.to_arrays()
    assert arrays["q/parameter"] == b"threshold" and arrays["never/accuracy"].shape == (t,)
    stable = halting_curves(pred=np.zeros((2, t, 1), np.uint8), correct=correct).curves["stable"]
    assert stable.values.tolist() == list(range(1, t + 1))
    assert stable.mean_steps.tolist() == [2, 3, 4, 5, 6, 6]  # step 1 counts as a change without initial_pred
    with pytest.raises(ValueError):
        halting_curves(residual, correct=correct, rules=("q",))
