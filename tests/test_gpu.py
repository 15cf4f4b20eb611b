"""The same computations on a CUDA device as on the CPU (run only where CUDA is available; every path here is
also covered on the CPU by the other test files)."""

import math

import numpy as np
import pytest
import torch

from attractorlab import checkpoint, sudoku, train
from attractorlab.cli import DEFAULT_CHECKPOINT
from attractorlab.dynamics import find_fixed_points, jacobian_spectrum, spectral_radius
from attractorlab.rollout import RolloutConfig, rollout

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


def _affine(d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = 0.9 * torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    b = torch.randn(d, generator=g, dtype=torch.float64)
    return A, b


def test_fixed_points_and_spectrum_on_cuda_match_the_exact_answer():
    A, b = _affine()
    A_c, b_c = A.to(CUDA), b.to(CUDA)
    z0 = 3 * torch.randn(5, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fps = find_fixed_points(lambda z: z @ A_c.T + b_c, z0.to(CUDA), k=3)
    z_star = torch.linalg.solve(torch.eye(16, dtype=torch.float64) - A, b)
    assert fps.z.device.type == "cuda" and len(fps) == 1
    torch.testing.assert_close(fps.z[0].cpu(), z_star, atol=1e-8, rtol=0)
    exact = np.linalg.eigvals(A.numpy())
    exact = exact[np.argsort(-np.abs(exact), kind="stable")][:3]
    np.testing.assert_allclose(np.abs(fps.eigvals[0].cpu().numpy()), np.abs(exact), atol=1e-8)


def test_matrix_free_spectrum_and_radius_on_cuda():
    A, b = _affine(d=40, seed=2)
    A_c, b_c = A.to(CUDA), b.to(CUDA)

    def f(z):
        return z @ A_c.T + b_c

    z = torch.zeros(2, 40, dtype=torch.float64, device=CUDA)
    eig = jacobian_spectrum(f, z, k=4, method="arnoldi")
    exact = np.abs(np.linalg.eigvals(A.numpy()))
    exact.sort()
    np.testing.assert_allclose(np.abs(eig.cpu().numpy()), np.tile(exact[::-1][:4], (2, 1)), rtol=1e-6)
    rho = spectral_radius(f, z, iters=300, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(rho.cpu().numpy(), exact[-1], rtol=1e-3)


def test_rollout_on_cuda_is_deterministic_and_solves_like_the_cpu():
    puzzles = sudoku.generate(8, seed=3, difficulty="singles")
    tok, sol = torch.as_tensor(puzzles.tokens, dtype=torch.long), torch.as_tensor(puzzles.solution)
    cfg = RolloutConfig(depth=16, breadth=2, seed=4, noise=False)
    gpu_model = checkpoint.load(DEFAULT_CHECKPOINT, CUDA)
    first, second = rollout(gpu_model, tok, sol, cfg), rollout(gpu_model, tok, sol, cfg)
    np.testing.assert_array_equal(first.pred, second.pred)
    cpu = rollout(checkpoint.load(DEFAULT_CHECKPOINT), tok, sol, cfg)
    # bf16 autocast on CUDA: trajectories differ in detail, the answers to easy puzzles do not
    assert abs(first.final_correct.mean() - cpu.final_correct.mean()) <= 0.25
    assert (first.pred[:, :, -1] == cpu.pred[:, :, -1]).mean() >= 0.9


def test_training_steps_on_cuda_lower_the_loss():
    pool = sudoku.generate(16, seed=11, difficulty="singles")
    cfg = train.TrainConfig.from_preset("tiny", hidden_size=32, batch_size=8, n_train=16, halt_max_steps=1,
                                        warmup_steps=1, lr=1e-2, augment=False, halt_exploration_prob=0.0,
                                        eval_every=1000, checkpoint_every=1000, seed=0)
    trainer = train.Trainer(cfg, CUDA, pool=pool[:1])
    losses = [trainer.train_step()["lm_loss"] for _ in range(20)]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]


def test_rollout_replayed_from_cuda_graphs_agrees_with_the_eager_one():
    puzzles = sudoku.generate(24, seed=6, difficulty="singles")
    tok, sol = torch.as_tensor(puzzles.tokens, dtype=torch.long), torch.as_tensor(puzzles.solution)
    cfg = RolloutConfig(depth=24, breadth=2, halt="converge", tol=3e-2, seed=4)
    model = checkpoint.load(DEFAULT_CHECKPOINT, CUDA)
    eager = rollout(model, tok, sol, cfg)
    recorded = rollout(model, tok, sol, cfg, cuda_graphs=True)  # records the graphs of the buckets it needs
    replayed = rollout(model, tok, sol, cfg, cuda_graphs=True)  # replays them
    assert len(set(eager.steps.ravel())) > 1  # rows halted at different steps: the batch shrank
    (step,) = model._graphed_steps.values()
    assert len(step.buckets) > 1
    np.testing.assert_array_equal(replayed.pred, recorded.pred)
    np.testing.assert_array_equal(replayed.residual, recorded.residual)
    # the same noise; bf16 kernels on other batch shapes round differently, the answers agree
    assert (recorded.pred[:, :, -1] == eager.pred[:, :, -1]).mean() >= 0.95
    assert abs(recorded.final_correct.mean() - eager.final_correct.mean()) <= 0.1
