"""TRM as a configuration of the model, the ablation switches (one stream, no ACT, full backprop), and restarts
of a fixed-start model."""

import numpy as np
import pytest
import torch

from attractorlab import checkpoint, sudoku, train
from attractorlab.cli import main
from attractorlab.model import TRM_SETTINGS, EquilibriumReasoner, LatentState, ReasonerConfig, trm_config
from attractorlab.rollout import RolloutConfig, rollout

SMALL = dict(hidden_size=32, num_heads=4, expansion=2.0, L_layers=1, H_cycles=2, L_cycles=2)


def tokens(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, 11, (n, 81), generator=torch.Generator().manual_seed(seed))


def layers(model, h):
    for layer in model.layers:
        h = layer(h)
    return h


def test_trm_update_has_no_damping_and_no_noise():
    model = EquilibriumReasoner(trm_config(**SMALL)).eval()
    assert model.config.family == "trm" and ReasonerConfig(**SMALL).family == "eqr"
    z, inj = torch.randn(2, 81, 32), torch.randn(2, 81, 32)
    with torch.no_grad():
        out = model.module(z, inj, noise=True, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(out, layers(model, z + inj), rtol=0, atol=0)
        damped = EquilibriumReasoner(ReasonerConfig(**SMALL, noise_scale=0.0))
        damped.load_state_dict({k: v for k, v in model.state_dict().items() if not k.endswith("_init")})
        want = 0.05 * z + 0.95 * layers(model, z + inj)
        torch.testing.assert_close(damped.module(z, inj, noise=True, generator=None), want)


def test_fixed_initial_state_is_the_stored_vectors_and_restarts_draw_around_zero():
    model = EquilibriumReasoner(trm_config(**SMALL)).eval()
    assert model.H_init.shape == (32,) and not torch.equal(model.H_init, model.L_init)
    assert "H_init" in model.state_dict() and "H_init" not in dict(model.named_parameters())
    tok = tokens(3)
    s = model.init_state(tok, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s.z_H, model.H_init.expand(3, 81, 32)) and torch.equal(s.z_L, model.L_init.expand(3, 81, 32))
    r = model.init_state(tokens(64), generator=torch.Generator().manual_seed(0), restart_std=0.5)
    assert abs(r.z_H.std().item() - 0.5) < 0.01 and abs(r.z_H.mean().item()) < 0.01
    assert not torch.equal(r.z_H[0], r.z_H[1])
    eqr = EquilibriumReasoner(ReasonerConfig(**SMALL))
    a = eqr.init_state(tok, generator=torch.Generator().manual_seed(0), restart_std=0.5)
    b = eqr.init_state(tok, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.z_H, b.z_H)  # random-start models keep their own init distribution


def test_trm_checkpoint_round_trip_keeps_the_start_vectors(tmp_path):
    model = EquilibriumReasoner(trm_config(**SMALL))
    checkpoint.save(model, tmp_path / "trm.pt")
    loaded = checkpoint.load(tmp_path / "trm.pt")
    assert loaded.config.initial_state == "fixed" and torch.equal(loaded.H_init, model.H_init)
    assert torch.equal(loaded.L_init, model.L_init)


def test_breadth_restarts_of_a_fixed_start_model():
    model = EquilibriumReasoner(trm_config(**SMALL)).eval()
    tok = tokens(2)
    one = rollout(model, tok, None, RolloutConfig(depth=3, breadth=1), states="final",
                  state_fn=lambda s: s.z_H)
    with torch.no_grad():
        state = model.init_state(tok)
        for _ in range(3):
            state = model.step(state, tok)
    np.testing.assert_allclose(one.states[:, 0, -1], state.z_H.numpy(), rtol=1e-5, atol=1e-5)
    wide = rollout(model, tok, None, RolloutConfig(depth=1, breadth=3, restart_std=1.0), states="all",
                   state_fn=lambda s: s.z_H)
    starts = wide.states[:, :, 0]  # [n, B, L, D]
    assert not np.allclose(starts[0, 0], starts[0, 1])
    assert abs(starts.std() - 1.0) < 0.05
    with pytest.raises(ValueError, match="restart_std"):
        RolloutConfig(restart_std=0.0)


def test_single_stream_applies_the_same_number_of_updates_to_one_stream():
    model = EquilibriumReasoner(ReasonerConfig(**SMALL, hierarchical=False, noise_scale=0.0)).eval()
    assert model.config.family == "variant"
    tok = tokens(2)
    state = model.init_state(tok, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model.step(state, tok)
        x, z = model.embed(tok), state.z_H
        for _ in range(2 * 3):  # H_cycles x (L_cycles + 1)
            z = model.module(z, x, noise=False, generator=None)
    torch.testing.assert_close(out.z_H, z)
    assert torch.equal(out.z_L, out.z_H)


@pytest.fixture(scope="module")
def pool():
    return sudoku.generate(16, seed=5, difficulty="singles")


TINY = dict(hidden_size=32, expansion=2.0, H_cycles=2, L_cycles=2, halt_max_steps=3, batch_size=8, lr=3e-3,
            warmup_steps=2, weight_decay=0.0, ema_decay=0.9, n_train=16, n_eval=4, eval_every=1000,
            checkpoint_every=1000, eval_depths=(1, 2), seed=3)


def test_without_act_every_row_runs_halt_max_steps_segments(pool):
    cfg = train.TrainConfig.from_preset("tiny", **TINY, act=False, halt_exploration_prob=0.0)
    trainer = train.Trainer(cfg, torch.device("cpu"), pool=pool)
    with torch.no_grad():
        trainer.model.q_head.bias.fill_(5.0)  # q > 0 everywhere: ACT would halt every row after one step
    halted = []
    for _ in range(6):
        trainer.train_step()
        halted.append(trainer.halted.clone())
    assert [bool(h.all()) for h in halted] == [False, False, True, False, False, True]
    with_act = train.Trainer(train.TrainConfig.from_preset("tiny", **TINY, halt_exploration_prob=0.0),
                             torch.device("cpu"), pool=pool)
    with torch.no_grad():
        with_act.model.q_head.bias.fill_(5.0)
    with_act.train_step()
    assert with_act.halted.all()


def test_full_backprop_reaches_the_first_h_cycle(pool):
    def grads(full):
        cfg = train.TrainConfig.from_preset("tiny", **TINY, full_backprop=full, noise_scale=0.0)
        trainer = train.Trainer(cfg, torch.device("cpu"), pool=pool)
        trainer.carry = LatentState(torch.randn_like(trainer.carry.z_H), torch.randn_like(trainer.carry.z_L))
        seen = {}
        first = trainer.model.layers[0]
        hook = first.register_forward_hook(lambda m, i, o: seen.setdefault("n", []).append(o.requires_grad))
        trainer.train_step()
        hook.remove()
        return seen["n"]

    assert all(grads(True)) and not all(grads(False))


def test_trm_trains_saves_ema_with_its_vectors_and_resumes(pool, tmp_path):
    cfg = train.TrainConfig.from_preset("tiny", **{**TINY, **TRM_SETTINGS})
    trainer = train.Trainer(cfg, torch.device("cpu"), pool=pool)
    trainer._refill()  # fresh rows start from the stored vectors
    assert torch.equal(trainer.carry.z_H, trainer.model.H_init.expand_as(trainer.carry.z_H))
    trainer.train_step()
    trainer.save(tmp_path / "trm.pt")
    loaded = checkpoint.load(tmp_path / "trm.pt")
    assert loaded.config.family == "trm" and torch.equal(loaded.H_init, trainer.model.H_init)
    other = train.Trainer(train.TrainConfig.from_preset("tiny", **{**TINY, **TRM_SETTINGS, "seed": 9}),
                          torch.device("cpu"), pool=pool)
    assert not torch.equal(other.model.H_init, trainer.model.H_init)
    other.cfg = trainer.cfg
    other.load_state_dict(checkpoint.read(tmp_path / "trm.pt")["train_state"])
    trainer.train_step()
    other.train_step()
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, other.model.state_dict()[name]), name


def test_cli_train_trm_and_solve_say_what_starts_the_restarts(tmp_path, capsys):
    out = tmp_path / "trm.pt"
    assert main(["train", "--preset", "tiny", "--trm", "--steps", "2", "--n-train", "8", "--n-eval", "4",
                 "--batch-size", "4", "--hidden-size", "16", "--eval-depths", "1", "--out", str(out),
                 "--no-progress", "--no-act", "--single-stream", "--full-backprop", "--halt-max-steps", "1"]) == 0
    model = checkpoint.load(out)
    c = model.config
    assert (c.lambda_, c.noise_scale, c.initial_state, c.hierarchical) == (1.0, 0.0, "fixed", False)
    payload = checkpoint.read(out)["train_state"]["config"]
    assert (payload["act"], payload["full_backprop"]) == (False, True)
    capsys.readouterr()
    assert main(["train", "--preset", "tiny", "--trm", "--steps", "1", "--n-train", "8", "--n-eval", "4",
                 "--batch-size", "4", "--hidden-size", "16", "--eval-depths", "1", "--out", str(tmp_path / "t.pt"),
                 "--no-progress", "--noise-scale", "0.02"]) == 0
    assert checkpoint.load(tmp_path / "t.pt").config.noise_scale == 0.02  # explicit flags override --trm
    assert main(["solve", str(tmp_path / "t.pt"), "--generate", "2", "--depth", "2", "--breadth", "3",
                 "--restart-std", "0.5", "--out", str(tmp_path / "r.h5"), "--no-progress"]) == 0
    assert "truncated normal of std 0.5" in capsys.readouterr().out


def test_analyze_draws_a_fixed_start_models_restarts_with_the_runs_std(tmp_path, monkeypatch):
    from attractorlab import analyze, attractors, recording
    from attractorlab.solve import solve_puzzles

    torch.manual_seed(0)
    model = EquilibriumReasoner(trm_config(hidden_size=8, expansion=1.0, H_cycles=1, L_cycles=1, L_layers=1))
    with torch.no_grad():  # a contraction: fixed points are found in a few iterations
        for p in model.layers.parameters():
            p.mul_(0.3)
        model.embed_tokens.weight.mul_(30.0)
    ckpt = tmp_path / "trm.pt"
    checkpoint.save(model, ckpt)
    attrs = {"checkpoint_path": str(ckpt), "checkpoint_sha256": checkpoint.file_sha256(ckpt),
             "config_json": '{"rollout": {"restart_std": 0.5}}'}
    run = tmp_path / "run.h5"
    solve_puzzles(model, sudoku.generate(2, seed=1, difficulty="singles"),
                  RolloutConfig(depth=4, breadth=2, restart_std=0.5), str(run), attrs=attrs, progress=False)
    seen = []
    ends = attractors.rollout_ends
    monkeypatch.setattr(attractors, "rollout_ends", lambda *a: seen.append(a[6]) or ends(*a))  # restart_std
    analyze.analyze(str(run), only=["fixed_points"], options=analyze.AnalyzeOptions(n_puzzles=1, restarts=2,
                    max_steps=8), progress=False, log=lambda _: None)
    assert seen == [0.5]
    with recording.open_run(run) as r:
        assert "fixed_points" in " ".join(r.analysis_keys())
    with pytest.raises(ValueError, match="restart_std"):
        analyze.AnalyzeOptions(restart_std=-1.0)


def test_snapshot_every_keeps_the_ema_weights_of_each_step(tmp_path):
    out = tmp_path / "run.pt"
    cfg = train.TrainConfig.from_preset("tiny", **{**TINY, "steps": 4, "snapshot_every": 2, "n_eval": 2})
    train.train(cfg, out, device="cpu", progress=False)
    snaps = sorted(p.name for p in tmp_path.glob("run.step*.pt"))
    assert snaps == ["run.step0000002.pt", "run.step0000004.pt"]
    last = checkpoint.load(tmp_path / snaps[-1])
    final = checkpoint.load(out)
    for name, value in final.state_dict().items():
        assert torch.equal(value, last.state_dict()[name]), name
    assert checkpoint.read(tmp_path / snaps[0])["meta"]["step"] == 2 and "train_state" not in checkpoint.read(
        tmp_path / snaps[0])
    with pytest.raises(ValueError, match="snapshot_every"):
        train.TrainConfig(snapshot_every=-1)
