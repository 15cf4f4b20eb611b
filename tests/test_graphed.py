"""Bucketed outer steps (the CUDA-graph path of rollouts): padding rows to a bucket changes no real row, the noise is
eager's, and a rollout through the buckets agrees with the eager one as rows halt. The buckets run uncaptured here;
the captured replay is checked against these on CUDA in test_gpu.py."""

import numpy as np
import pytest
import torch

from attractorlab import checkpoint, graphed, sudoku
from attractorlab.cli import main
from attractorlab.errors import InputError
from attractorlab.graphed import BucketedStep, bucket_sizes
from attractorlab.model import EquilibriumReasoner, LatentState, ReasonerConfig
from attractorlab.rollout import RolloutConfig, rollout


def test_bucket_sizes_are_powers_of_two_then_the_batch():
    assert bucket_sizes(100) == [8, 16, 32, 64, 100]
    assert bucket_sizes(64) == [8, 16, 32, 64]
    assert bucket_sizes(8) == [8] and bucket_sizes(3) == [3]
    with pytest.raises(InputError):
        bucket_sizes(0)


@pytest.mark.parametrize("variant", [dict(mlp_t=True), dict(mlp_t=False, num_heads=2, pos_encodings="rope2d")])
def test_bucketed_step_matches_the_eager_step_as_rows_leave(variant):
    torch.manual_seed(0)
    model = EquilibriumReasoner(ReasonerConfig(hidden_size=16, expansion=1.0, H_cycles=2, L_cycles=2, L_layers=1,
                                               noise_scale=0.1, **variant)).eval()
    tokens = torch.as_tensor(sudoku.generate(20, seed=1, difficulty="singles").tokens, dtype=torch.long)
    bucketed = BucketedStep(model, 20, capture=False)
    assert bucketed.sizes == [8, 16, 20]
    with torch.inference_mode():
        state = model.init_state(tokens, torch.Generator().manual_seed(2))
        x = model.embed(tokens)
        eager, ours = state, state
        gen_eager, gen_ours = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        for keep in (20, 13, 9, 5):  # 20 rows in the top bucket, 13 padded to 16, 9 to 16, 5 to 8
            rows = slice(0, keep)
            eager = model.step(LatentState(eager.z_H[rows], eager.z_L[rows]), tokens[rows], x=x[rows],
                               generator=gen_eager)
            ours = bucketed(LatentState(ours.z_H[rows], ours.z_L[rows]), tokens[rows], x=x[rows], generator=gen_ours)
            assert ours.z_H.shape == (keep, 81, 16)
            torch.testing.assert_close(ours.z_H, eager.z_H, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(ours.z_L, eager.z_L, rtol=1e-5, atol=1e-5)
    assert sorted(bucketed.buckets) == [(8, True), (16, True), (20, True)]  # 16 built once, reused
    with pytest.raises(InputError, match="largest bucket"):
        bucketed(LatentState(state.z_H.repeat(2, 1, 1), state.z_L.repeat(2, 1, 1)), None, x=x.repeat(2, 1, 1))


def test_rollout_through_buckets_agrees_with_the_eager_one(monkeypatch):
    torch.manual_seed(4)
    model = EquilibriumReasoner(ReasonerConfig(hidden_size=16, expansion=1.0, H_cycles=1, L_cycles=2,
                                               L_layers=1)).eval()
    with torch.no_grad():  # a halting head that stops rows at different steps
        model.q_head.bias.zero_()
        model.q_head.weight.normal_(0, 3.0)
    puzzles = sudoku.generate(6, seed=5, difficulty="singles")
    tok, sol = torch.as_tensor(puzzles.tokens, dtype=torch.long), torch.as_tensor(puzzles.solution)
    cfg = RolloutConfig(depth=6, breadth=3, halt="q", seed=1)
    built = []

    def uncaptured(model, rows, compile=False):
        built.append(BucketedStep(model, rows, capture=False, compile=compile))
        return built[-1]

    monkeypatch.setattr("attractorlab.rollout.graphed_step", uncaptured)
    monkeypatch.setattr("attractorlab.rollout.require_cuda_graphs", lambda device, states: None)
    eager, ours = rollout(model, tok, sol, cfg), rollout(model, tok, sol, cfg, cuda_graphs=True)
    assert len(set(eager.steps.ravel())) > 1  # rows left the batch at different steps
    assert len(built[0].buckets) > 1  # and the rollout moved down the buckets
    np.testing.assert_array_equal(ours.steps, eager.steps)
    np.testing.assert_array_equal(ours.pred, eager.pred)
    np.testing.assert_allclose(ours.residual, eager.residual, rtol=1e-4, atol=1e-7)


def test_cuda_graphs_refuse_a_cpu_model_and_inner_states():
    model = EquilibriumReasoner(ReasonerConfig(hidden_size=8, expansion=1.0, H_cycles=1, L_cycles=1, L_layers=1))
    tok = torch.as_tensor(sudoku.generate(1, seed=0, difficulty="singles").tokens, dtype=torch.long)
    with pytest.raises(InputError, match="CUDA device"):
        graphed.graphed_step(model, 4)
    with pytest.raises(InputError, match="CUDA device"):
        rollout(model, tok, None, RolloutConfig(depth=2), cuda_graphs=True)
    with pytest.raises(InputError, match="cycles"):
        graphed.require_cuda_graphs(torch.device("cuda"), "cycles")
    with pytest.raises(InputError, match="on_update"):
        BucketedStep(model, 4, capture=False)(model.init_state(tok), tok, x=model.embed(tok), on_update=print)


def test_cli_solve_cuda_graphs_on_a_cpu_is_one_line(tmp_path, capsys):
    model = tmp_path / "model.pt"
    checkpoint.save(EquilibriumReasoner(ReasonerConfig(hidden_size=8, expansion=1.0, H_cycles=1, L_cycles=1,
                                                       L_layers=1)), model)
    out = tmp_path / "r.h5"
    args = ["solve", str(model), "--generate", "2", "--cuda-graphs", "--device", "cpu", "--out", str(out),
            "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "CUDA graphs need a CUDA device" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
