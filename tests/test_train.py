"""Training: the loss goes down, resume is bit-for-bit, DDP (2 gloo processes) equals one process."""

import dataclasses
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from attractorlab import checkpoint, sudoku, train
from attractorlab.cli import main

TINY = dict(hidden_size=32, expansion=2.0, H_cycles=2, L_cycles=2, halt_max_steps=4, batch_size=8, lr=3e-3,
            warmup_steps=2, weight_decay=0.0, ema_decay=0.9, n_train=24, n_eval=4, eval_every=1000,
            checkpoint_every=1000, eval_depths=(1, 2), seed=3)


@pytest.fixture(scope="module")
def pool():
    return sudoku.generate(24, seed=11, difficulty="singles")


def make_trainer(pool, **kw):
    cfg = train.TrainConfig.from_preset("tiny", **{**TINY, **kw})
    return train.Trainer(cfg, torch.device("cpu"), pool=pool)


def test_stablemax_cross_entropy_matches_definition():
    logits = torch.tensor([[2.0, -1.0, 0.0]])
    s = torch.tensor([3.0, 0.5, 1.0], dtype=torch.float64)
    expected = -torch.log(s[0] / s.sum())
    got = train.stablemax_cross_entropy(logits, torch.tensor([0]))
    assert got.dtype == torch.float64
    torch.testing.assert_close(got[0], expected)


def test_training_lowers_loss_on_a_fixed_batch(pool):
    trainer = make_trainer(pool[:1], halt_max_steps=1, augment=False, lr=1e-2, halt_exploration_prob=0.0)
    losses = [trainer.train_step()["lm_loss"] for _ in range(25)]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3])


def test_resume_is_bit_for_bit(pool, tmp_path):
    straight = make_trainer(pool)
    for _ in range(6):
        straight.train_step()
    first = make_trainer(pool)
    for _ in range(3):
        first.train_step()
    first.save(tmp_path / "ck.pt")
    second = make_trainer(pool, seed=99)  # a different seed: everything must come from the checkpoint
    second.cfg = first.cfg
    second.load_state_dict(checkpoint.read(tmp_path / "ck.pt")["train_state"])
    for _ in range(3):
        second.train_step()
    for name, p in straight.model.named_parameters():
        assert torch.equal(p, second.model.state_dict()[name]), name
    for name, v in straight.ema.items():
        assert torch.equal(v, second.ema[name]), name


def test_non_finite_loss_stops_with_clear_error(pool):
    trainer = make_trainer(pool)
    with torch.no_grad():
        trainer.model.lm_head.weight.fill_(float("nan"))
    with pytest.raises(train.TrainingError, match="non-finite loss"):
        trainer.train_step()


def test_non_finite_loss_keeps_last_checkpoint(pool, tmp_path, monkeypatch):
    cfg = train.TrainConfig.from_preset("tiny", **{**TINY, "checkpoint_every": 2, "steps": 10})
    real = train.stablemax_cross_entropy
    calls = {"n": 0}

    def flaky(logits, labels):
        calls["n"] += 1
        out = real(logits, labels)
        return out * float("nan") if calls["n"] > 3 else out

    monkeypatch.setattr(train, "stablemax_cross_entropy", flaky)
    monkeypatch.setattr(train, "load_data", lambda c, progress=False: (pool, pool[:4]))
    out = tmp_path / "run.pt"
    with pytest.raises(train.TrainingError):
        train.train(cfg, out, device="cpu", progress=False)
    assert checkpoint.read(out)["train_state"]["step"] == 2


def test_bad_training_config():
    with pytest.raises(ValueError, match="unknown preset"):
        train.TrainConfig.from_preset("huge")
    with pytest.raises(ValueError, match="batch_size"):
        train.TrainConfig.from_preset("tiny", batch_size=0)
    with pytest.raises(ValueError, match="hidden_size"):
        train.TrainConfig.from_preset("tiny", hidden_size=-3)


CLI_FLAGS = ["--hidden-size", "32", "--expansion", "2", "--H-cycles", "2", "--L-cycles", "2", "--halt-max-steps", "4",
             "--batch-size", "8", "--n-train", "24", "--n-eval", "4", "--eval-depths", "1,2", "--noise-scale", "0",
             "--seed", "5", "--device", "cpu", "--no-progress", "--difficulty", "singles"]


def test_cli_train_and_resume_equal_straight_run(tmp_path, capsys):
    straight, resumed = tmp_path / "a.pt", tmp_path / "b.pt"
    assert main(["train", "--preset", "tiny", "--steps", "6", "--out", str(straight), *CLI_FLAGS]) == 0
    assert "held-out exact accuracy" in capsys.readouterr().out
    assert main(["train", "--preset", "tiny", "--steps", "3", "--checkpoint-every", "3", "--out", str(resumed),
                 *CLI_FLAGS]) == 0
    assert main(["train", "--resume", "--steps", "6", "--out", str(resumed), "--no-progress"]) == 0
    a, b = checkpoint.read(straight), checkpoint.read(resumed)
    for k, v in a["train_state"]["params"].items():
        assert torch.equal(v, b["train_state"]["params"][k]), k
    assert b["meta"]["step"] == 6


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_stops_training_after_the_step_with_a_checkpoint_that_resumes(tmp_path, capsys, monkeypatch, sig):
    straight, stopped = tmp_path / "a.pt", tmp_path / "b.pt"
    assert main(["train", "--preset", "tiny", "--steps", "5", "--out", str(straight), *CLI_FLAGS]) == 0
    step = train.Trainer.train_step

    def signalling_step(self):
        metrics = step(self)
        if self.step_count == 2:  # the signal arrives during step 2: the step ends, then training stops
            os.kill(os.getpid(), getattr(signal, sig))
        return metrics

    monkeypatch.setattr(train.Trainer, "train_step", signalling_step)
    args = ["train", "--preset", "tiny", "--steps", "5", "--checkpoint-every", "100", "--out", str(stopped)]
    capsys.readouterr()
    assert main([*args, *CLI_FLAGS]) == 130
    err = capsys.readouterr().err
    assert "stopping after this step" in err and "stopped at step 2 of 5" in err and "--resume" in err
    assert checkpoint.read(stopped)["meta"]["step"] == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    monkeypatch.undo()
    assert main(["train", "--resume", "--out", str(stopped), "--no-progress"]) == 0
    a, b = checkpoint.read(straight), checkpoint.read(stopped)
    for k, v in a["train_state"]["params"].items():
        assert torch.equal(v, b["train_state"]["params"][k]), k


def _stop_vote(rank: int, init: str, votes: list, out) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        out.put((rank, [train._any_rank(v, torch.device("cpu"), train.Dist(rank=rank, world=2)) for v in votes]))
    finally:
        dist.destroy_process_group()


def test_a_stop_asked_on_one_rank_stops_every_rank(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    init = f"file://{tmp_path / 'store'}"
    votes = {0: [False, True, False], 1: [False, False, False]}  # rank 0 alone is asked at the second step
    procs = [ctx.Process(target=_stop_vote, args=(r, init, votes[r], out)) for r in (0, 1)]
    for p in procs:
        p.start()
    got = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert got == {0: [False, True, False], 1: [False, True, False]}


def test_lr_schedule_warmup_constant_and_cosine_decay():
    cfg = train.TrainConfig.from_preset("tiny", lr=1e-3, warmup_steps=10, steps=110)
    assert train.lr_at(0, cfg) == pytest.approx(1e-4) and train.lr_at(9, cfg) == pytest.approx(1e-3)
    assert train.lr_at(109, cfg) == pytest.approx(1e-3)  # constant by default, as the reference
    cfg = dataclasses.replace(cfg, lr_min_ratio=0.1, decay_start=10)
    assert train.lr_at(10, cfg) == pytest.approx(1e-3)
    assert train.lr_at(60, cfg) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # half-way: the cosine's midpoint
    assert train.lr_at(110, cfg) == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="lr_min_ratio"):
        train.TrainConfig.from_preset("tiny", lr_min_ratio=0.0)


def test_cli_resume_may_start_a_decay_and_equals_a_straight_run(tmp_path, capsys):
    straight, resumed = tmp_path / "a.pt", tmp_path / "b.pt"
    decay = ["--lr-min-ratio", "0.1", "--decay-start", "3"]
    assert main(["train", "--preset", "tiny", "--steps", "6", "--out", str(straight), *CLI_FLAGS, *decay]) == 0
    assert main(["train", "--preset", "tiny", "--steps", "3", "--checkpoint-every", "3", "--out", str(resumed),
                 *CLI_FLAGS]) == 0
    assert main(["train", "--resume", "--steps", "6", "--out", str(resumed), "--no-progress", *decay]) == 0
    a, b = checkpoint.read(straight), checkpoint.read(resumed)
    for k, v in a["train_state"]["params"].items():
        assert torch.equal(v, b["train_state"]["params"][k]), k
    assert b["train_state"]["config"]["lr_min_ratio"] == 0.1
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(resumed), "--lr", "1", "--steps", "8"]) == 2
    err = capsys.readouterr().err
    assert "--lr cannot change on --resume" in err and "Traceback" not in err
    assert main(["train", "--resume", "--out", str(resumed), "--steps", "4"]) == 2
    assert "already at step 6" in capsys.readouterr().err


def test_cli_train_errors(tmp_path, capsys, monkeypatch):
    assert main(["train", "--data", str(tmp_path / "none.csv"), "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert "none.csv" in err and "Traceback" not in err
    assert main(["train", "--resume", "--out", str(tmp_path / "missing.pt")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")  # a file where the output's directory should be: refused before training
    monkeypatch.setattr(train, "load_data", lambda *a: pytest.fail("training started"))
    assert main(["train", "--preset", "tiny", "--out", str(tmp_path / "file" / "x.pt")]) == 2
    assert "cannot create the directory" in capsys.readouterr().err
    monkeypatch.setattr("shutil.which", lambda name: None)  # --compile with no C++ compiler on PATH
    assert main(["train", "--preset", "tiny", "--compile", "--out", str(tmp_path / "y.pt")]) == 2
    err = capsys.readouterr().err
    assert "C++ compiler" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("compiled", [False, True])  # with --compile: each rank's blocks compiled
def test_ddp_two_gloo_processes_match_one_process(tmp_path, compiled):
    single, multi = tmp_path / "single.pt", tmp_path / "ddp.pt"
    args = ["train", "--preset", "tiny", "--steps", "3", *CLI_FLAGS]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "attractorlab", *args, "--out", str(single)], check=True, env=env,
                   capture_output=True)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", str(29517 + compiled), "-m", "attractorlab", *args,
                           *["--compile"] * compiled, "--out", str(multi)], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = checkpoint.read(single)["train_state"], checkpoint.read(multi)["train_state"]
    for k, v in a["params"].items():
        torch.testing.assert_close(b["params"][k], v, rtol=1e-4, atol=1e-5, msg=k)
    assert torch.equal(a["carry"]["tokens"], b["carry"]["tokens"])


@pytest.mark.filterwarnings("ignore:.*torch.jit.script.* is deprecated:DeprecationWarning")  # inside torch.compile
@pytest.mark.parametrize("h_cycles", [1, 2])  # 2: the first H-cycle runs without gradients
def test_compiled_training_step_matches_eager(pool, h_cycles):
    kw = dict(hidden_size=16, expansion=1.0, H_cycles=h_cycles, L_cycles=1, L_layers=1, batch_size=4, noise_scale=0.0)
    eager = make_trainer(pool, **kw)
    compiled = train.Trainer(eager.cfg, torch.device("cpu"), pool=pool, compile_model=True)
    assert compiled.net is compiled.model  # on a CPU the blocks are compiled, not the outer step
    for _ in range(2):
        a, b = eager.train_step(), compiled.train_step()
        assert a["lm_loss"] == pytest.approx(b["lm_loss"], rel=1e-5)
    # AdamW normalises each update, so a weight whose gradient is near zero can move by up to lr either way under
    # float32 rounding; with the first H-cycle compiled too (no gradients) a few do
    atol = 1e-5 if h_cycles == 1 else eager.cfg.lr
    for p, q in zip(eager.model.parameters(), compiled.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=atol)


def test_epoch_stream_draws_every_fixed_copy_once_per_epoch(pool):
    copies, task = 3, sudoku.TASK
    stream = train.EpochStream(pool[:5], seed=4, copies=copies, task=task)
    assert len(stream.tokens) == 5 * (copies + 1)
    np.testing.assert_array_equal(stream.tokens[::copies + 1], pool[:5].tokens)  # the originals stay
    augmented = stream.tokens.reshape(5, copies + 1, -1)
    assert all(len({row.tobytes() for row in group}) > 1 for group in augmented)  # the copies are symmetries
    blank = (augmented == 1)  # a relabelled, permuted copy keeps the number of givens
    assert (blank.sum(-1) == blank[:, :1].sum(-1)).all()
    n = len(stream.tokens)
    first = np.concatenate([stream.draw(7)[0], stream.draw(n - 7)[0]])  # one epoch, drawn in two parts
    key = sorted(r.tobytes() for r in first)
    assert key == sorted(r.tobytes() for r in stream.tokens)  # each example exactly once (without replacement)
    assert stream.epoch == 1 and stream.pos == 0
    crossing = stream.draw(n + 5)[0]  # the second epoch in another order, then into the third
    assert sorted(r.tobytes() for r in crossing[:n]) == key and not np.array_equal(crossing[:n], first)
    again = train.EpochStream(pool[:5], seed=4, copies=copies, task=task)
    np.testing.assert_array_equal(again.tokens, stream.tokens)  # the fixed copies come from the seed
    again.load_state_dict(stream.state_dict())
    np.testing.assert_array_equal(again.draw(9)[0], stream.draw(9)[0])


def test_reference_pipeline_trains_resumes_bit_for_bit_and_evaluates_on_the_given_split(pool, tmp_path):
    from attractorlab.tasks.sudoku_csv import save_csv

    train_csv, test_csv = tmp_path / "train.csv", tmp_path / "test.csv"
    save_csv(pool[:16], train_csv)
    save_csv(pool[16:], test_csv)
    cfg = train.TrainConfig.from_preset("tiny", **{**TINY, "n_train": 10, "n_eval": 3}, augmentations=2,
                                        data=str(train_csv), eval_data=str(test_csv))
    pool_, held = train.load_data(cfg)
    assert len(pool_) == 10 and len(held) == 3
    test_rows = {r.tobytes() for r in pool[16:].tokens}
    assert {r.tobytes() for r in held.tokens} <= test_rows  # the held-out set is the test split's
    assert not {r.tobytes() for r in pool_.tokens} & test_rows
    straight = train.Trainer(cfg, torch.device("cpu"), pool=pool_)
    assert isinstance(straight.stream, train.EpochStream)
    for _ in range(5):
        straight.train_step()
    first = train.Trainer(cfg, torch.device("cpu"), pool=pool_)
    for _ in range(2):
        first.train_step()
    first.save(tmp_path / "ck.pt")
    second = train.Trainer(cfg, torch.device("cpu"), pool=pool_)
    second.load_state_dict(checkpoint.read(tmp_path / "ck.pt")["train_state"])
    for _ in range(3):
        second.train_step()
    for name, p in straight.model.named_parameters():
        assert torch.equal(p, second.model.state_dict()[name]), name
    with pytest.raises(train.InputError, match="augmentation on"):
        train.TrainConfig.from_preset("tiny", augmentations=2, augment=False)
    assert train.TrainConfig.from_preset("paper").augmentations == 1000


def test_warm_start_begins_from_a_checkpoints_weights(pool, tmp_path, capsys):
    source = make_trainer(pool)
    for _ in range(3):
        source.train_step()
    source.save(tmp_path / "src.pt")
    shipped = checkpoint.load(tmp_path / "src.pt")
    args = ["--preset", "tiny", "--steps", "1", "--no-progress"] + [
        f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k not in ("eval_depths", "expansion")]
    assert main(["train", *args, "--init", str(tmp_path / "src.pt"), "--lr", "1e-12", "--warmup-steps", "1",
                 "--out", str(tmp_path / "ft.pt")]) == 0
    tuned = checkpoint.read(tmp_path / "ft.pt")
    assert tuned["train_state"]["step"] == 1 and tuned["meta"]["init"] == str(tmp_path / "src.pt")
    for name, p in shipped.state_dict().items():  # one step at lr 1e-12 keeps the loaded weights
        torch.testing.assert_close(tuned["model"][name], p, rtol=0, atol=1e-6, msg=name)
    fresh = train.Trainer(train.TrainConfig.from_preset("tiny", **TINY), torch.device("cpu"), pool=pool)
    assert not torch.equal(fresh.model.embed_tokens.weight, shipped.embed_tokens.weight)
    capsys.readouterr()
    assert main(["train", *args, "--hidden-size", "48", "--init", str(tmp_path / "src.pt"),
                 "--out", str(tmp_path / "bad.pt")]) == 2
    err = capsys.readouterr().err
    assert "has shape" in err and "Traceback" not in err
    assert main(["train", *args, "--task", "maze11", "--init", str(tmp_path / "src.pt"),
                 "--out", str(tmp_path / "bad.pt")]) == 2
    assert "solves task 'sudoku'" in capsys.readouterr().err
