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
