"""Checkpoints: round trip, safe loading, clear errors."""

import pytest
import torch

from attractorlab import checkpoint
from attractorlab.cli import main
from attractorlab.model import EquilibriumReasoner, ReasonerConfig


def small_model(**kw) -> EquilibriumReasoner:
    return EquilibriumReasoner(ReasonerConfig(hidden_size=32, expansion=2.0, H_cycles=1, L_cycles=2, **kw))


def test_round_trip(tmp_path):
    model = small_model(mlp_t=False, num_heads=4)
    path = tmp_path / "m.pt"
    checkpoint.save(model, path, meta={"note": "x"})
    loaded = checkpoint.load(path)
    assert loaded.config == model.config
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert not loaded.training
    assert checkpoint.read(path)["meta"] == {"note": "x"}
    assert len(checkpoint.file_sha256(path)) == 64


def test_missing_corrupt_and_foreign_files(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="not found"):
        checkpoint.load(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"definitely not a zip file")
    with pytest.raises(checkpoint.CheckpointError, match="not a readable checkpoint"):
        checkpoint.load(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(checkpoint.CheckpointError, match="not an attractorlab checkpoint"):
        checkpoint.load(foreign)
    truncated = tmp_path / "trunc.pt"
    checkpoint.save(small_model(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:500])
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load(truncated)


def test_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "attractorlab.checkpoint", "payload": Evil()}, path)
    with pytest.raises(checkpoint.CheckpointError, match="not a readable checkpoint"):
        checkpoint.load(path)


def test_incompatible_weights(tmp_path):
    path = tmp_path / "m.pt"
    checkpoint.save(small_model(), path)
    payload = checkpoint.read(path)
    payload["model"]["lm_head.weight"] = torch.zeros(3, 3)
    torch.save(payload, path)
    with pytest.raises(checkpoint.CheckpointError, match="lm_head.weight has shape"):
        checkpoint.load(path)
    del payload["model"]["lm_head.weight"]
    torch.save(payload, path)
    with pytest.raises(checkpoint.CheckpointError, match="missing lm_head.weight"):
        checkpoint.load(path)
    payload["config"]["hidden_size"] = -1
    torch.save(payload, path)
    with pytest.raises(checkpoint.CheckpointError, match="invalid model config"):
        checkpoint.load(path)


def test_save_is_atomic_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    checkpoint.save(small_model(), path)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        checkpoint.save(small_model(), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_import_eqr_cli(tmp_path, capsys):
    ref = small_model(mlp_t=True)
    sd = {"_orig_mod.model.inner." + k.replace("layers.", "L_level.layers.").replace(
        "embed_tokens.weight", "embed_tokens.embedding_weight"): v for k, v in ref.state_dict().items()}
    src = tmp_path / "ref.pt"
    torch.save(sd, src)
    out = tmp_path / "ours.pt"
    assert main(["import-eqr", str(src), "--out", str(out), "--expansion", "2", "--H-cycles", "1",
                 "--L-cycles", "2"]) == 0
    loaded = checkpoint.load(out)
    assert torch.equal(loaded.lm_head.weight, ref.lm_head.weight)
    assert "wrote" in capsys.readouterr().out
    assert main(["import-eqr", str(tmp_path / "missing.pt"), "--out", str(out)]) == 2
    assert "not found" in capsys.readouterr().err


def test_import_eqr_refuses_a_task_that_does_not_fit_the_weights(tmp_path, capsys):
    ref = small_model(mlp_t=True)  # Sudoku weights: 11 tokens, 81 cells
    sd = {"_orig_mod.model.inner." + k.replace("layers.", "L_level.layers.").replace(
        "embed_tokens.weight", "embed_tokens.embedding_weight"): v for k, v in ref.state_dict().items()}
    src = tmp_path / "ref.pt"
    torch.save(sd, src)
    out = tmp_path / "ours.pt"
    assert main(["import-eqr", str(src), "--out", str(out), "--expansion", "2", "--task", "maze"]) == 2
    err = capsys.readouterr().err
    assert "the weights have vocab_size=11, but task maze" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def _training_checkpoint(tmp_path, arch, state):
    """A reference training checkpoint (carry of a class that cannot be imported when read, EMA != raw)."""
    import importlib
    import random
    import sys

    import numpy as np

    pkg = tmp_path / "refpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    source = "from dataclasses import dataclass\n\n@dataclass\nclass ModelCarry:\n    steps: object\n"
    (pkg / "eqr.py").write_text(source)
    sys.path.insert(0, str(tmp_path))
    try:
        carry = importlib.import_module("refpkg.eqr").ModelCarry(torch.ones(2))
        shadow = {k: v * 0.5 for k, v in state.items() if not k.endswith("_init")}  # parameters only
        param = torch.nn.Parameter(torch.ones(2))
        opt = torch.optim.Adam([param])
        param.grad = torch.ones(2)
        opt.step()
        torch.save({"step": 777, "model": state, "optimizers": [opt.state_dict()], "carry": carry,
                    "rng": torch.random.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                    "config": {"arch": arch, "lr": 1e-4}, "ema": {"mu": 0.999, "shadow": shadow}},
                   tmp_path / "eqr.pth")
    finally:
        sys.path.remove(str(tmp_path))
        for name in [n for n in sys.modules if n.startswith("refpkg")]:
            del sys.modules[name]
        for f in pkg.iterdir():
            f.unlink()
    return tmp_path / "eqr.pth", shadow


def test_import_eqr_reads_a_reference_training_checkpoint_with_no_flags(tmp_path, capsys):
    from test_model import _reference_state_dict

    gen = torch.Generator().manual_seed(3)
    state = _reference_state_dict(32, False, 1, gen)
    arch = {"name": "eqr@EqRModel", "hidden_size": 32, "num_heads": 4, "expansion": 4.0, "H_cycles": 2,
            "L_cycles": 3, "L_layers": 1, "mlp_t": False, "pos_encodings": "rope", "lambda_": 0.9, "noise_scale": 0.02,
            "halt_max_steps": 8, "forward_dtype": "bfloat16", "puzzle_emb_ndim": 0}
    path, shadow = _training_checkpoint(tmp_path, arch, state)
    out = tmp_path / "x.pt"
    assert main(["import-eqr", str(path), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "EMA weights" in text and "step 777" in text and "task sudoku" in text
    model = checkpoint.load(out)
    c = model.config
    assert (c.hidden_size, c.num_heads, c.H_cycles, c.L_cycles, c.lambda_, c.noise_scale, c.mlp_t, c.seq_len) == (
        32, 4, 2, 3, 0.9, 0.02, False, 81)
    from_ema = checkpoint.load_reference(shadow, **{k: arch[k] for k in ("num_heads", "H_cycles", "L_cycles",
                                                                         "lambda_", "noise_scale")})
    raw = checkpoint.load_reference(path, weights="raw")
    tok = torch.randint(1, 11, (2, 81), generator=gen)
    z = from_ema.init_state(tok, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = from_ema.readout(from_ema.step(z, tok, noise=False))[0]
        got = model.readout(model.step(z, tok, noise=False))[0]
        other = raw.readout(raw.step(z, tok, noise=False))[0]
    torch.testing.assert_close(got, want)
    assert not torch.allclose(other, want)
    assert main(["import-eqr", str(path), "--out", str(out), "--num-heads", "5"]) == 2  # does not fit the weights
    assert "not divisible by num_heads 5" in capsys.readouterr().err


def test_import_eqr_reads_a_reference_maze_checkpoint(tmp_path, capsys):
    from test_model import _reference_state_dict, _reference_step

    from attractorlab.model import LatentState

    gen = torch.Generator().manual_seed(5)
    state = _reference_state_dict(16, False, 1, gen)
    for key in list(state):  # a maze vocabulary: PAD, wall, open, S, G, path
        if key.endswith(("embed_tokens.embedding_weight", "lm_head.weight")):
            state[key] = torch.randn(6, 16, generator=gen) / 4
    arch = {"name": "eqr@EqRModel", "hidden_size": 16, "num_heads": 2, "expansion": 4.0, "H_cycles": 3,
            "L_cycles": 4, "L_layers": 1, "mlp_t": False, "pos_encodings": "rope", "lambda_": 0.95,
            "noise_scale": 0.01, "halt_max_steps": 16, "forward_dtype": "bfloat16"}
    path, shadow = _training_checkpoint(tmp_path, arch, state)
    out = tmp_path / "maze.pt"
    assert main(["import-eqr", str(path), "--out", str(out)]) == 0
    assert "task maze: 900 cells, vocab 6" in capsys.readouterr().out
    model = checkpoint.load(out)
    c = model.config
    assert (c.task, c.seq_len, c.L_cycles, c.mlp_t, c.pos_encodings, c.forward_dtype) == (
        "maze", 900, 4, False, "rope", "auto")
    inputs = torch.randint(1, 6, (1, 900), generator=gen)
    z_H, z_L = torch.randn(1, 900, 16, generator=gen), torch.randn(1, 900, 16, generator=gen)
    clean = {k.replace("_orig_mod.", ""): v for k, v in shadow.items()}
    want = _reference_step(clean, z_H, z_L, inputs, mlp_t=False, heads=2, H=3, L=4, lam=0.95, n_layers=1)
    with torch.no_grad():
        got = model.step(LatentState(z_H, z_L), inputs, noise=False)
        logits, q = model.readout(got)
    for a, b in zip((got.z_H, got.z_L, logits, q), want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_import_eqr_reads_a_reference_trm_checkpoint(tmp_path, capsys):
    """TRM (models/trm.py): its start vectors are buffers (in ``model``, not in the EMA); no damping, no noise."""
    from test_model import _reference_state_dict, _reference_step

    gen = torch.Generator().manual_seed(8)
    state = _reference_state_dict(16, True, 2, gen)
    vectors = {name: torch.randn(16, generator=gen).bfloat16() for name in ("H_init", "L_init")}
    state.update({f"_orig_mod.model.inner.{name}": v for name, v in vectors.items()})
    arch = {"name": "trm@TRMModel", "hidden_size": 16, "num_heads": 8, "expansion": 4, "H_cycles": 3,
            "L_cycles": 2, "L_layers": 2, "H_layers": 0, "mlp_t": True, "pos_encodings": "none",
            "halt_max_steps": 16, "forward_dtype": "bfloat16", "no_ACT_continue": True}
    path, shadow = _training_checkpoint(tmp_path, arch, state)
    out = tmp_path / "trm.pt"
    assert main(["import-eqr", str(path), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "reference TRM training-checkpoint" in text and "initial state: fixed" in text
    assert "lambda_" not in text.split("from the file's config:")[1]  # TRM's settings are not claimed as read
    model = checkpoint.load(out)
    c = model.config
    assert (c.family, c.lambda_, c.noise_scale, c.initial_state, c.H_cycles, c.L_cycles) == (
        "trm", 1.0, 0.0, "fixed", 3, 2)
    assert torch.equal(model.H_init, vectors["H_init"].float())
    inputs = torch.randint(1, 11, (2, 81), generator=gen)
    clean = {k.replace("_orig_mod.", ""): v for k, v in shadow.items()}
    z_H = vectors["H_init"].float().expand(2, 81, 16)
    z_L = vectors["L_init"].float().expand(2, 81, 16)
    want = _reference_step(clean, z_H, z_L, inputs, mlp_t=True, heads=8, H=3, L=2, lam=1.0, n_layers=2)
    with torch.no_grad():
        got = model.step(model.init_state(inputs), inputs)  # path noise on: TRM has none
        logits, q = model.readout(got)
    for a, b in zip((got.z_H, got.z_L, logits, q), want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    del state["_orig_mod.model.inner.L_init"], state["_orig_mod.model.inner.H_init"]
    torch.save({"model": state, "config": {"arch": arch}}, tmp_path / "novec.pth")
    assert main(["import-eqr", str(tmp_path / "novec.pth"), "--out", str(out)]) == 2
    assert "without its start vectors" in capsys.readouterr().err
