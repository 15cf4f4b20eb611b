"""The reference code's world: checkpoint files read without running their code, dataset folders, metrics."""

import importlib
import json
import math
import os
import random
import sys
from collections import OrderedDict
from fractions import Fraction

import numpy as np
import pytest
import torch

from attractorlab import reference
from attractorlab.errors import AttractorlabError
from attractorlab.reference import ReferenceFormatError

PREFIX = "_orig_mod.model.inner."
ARCH = {"name": "eqr@EqRModel", "short_name": "EqR", "loss": {"name": "losses@ACTLossHead",
        "loss_type": "stablemax_cross_entropy"}, "halt_exploration_prob": 0.1, "halt_max_steps": 16, "H_cycles": 3,
        "L_cycles": 6, "H_layers": 0, "L_layers": 2, "hidden_size": 8, "num_heads": 2, "expansion": 4,
        "pos_encodings": "rope", "board_height": 9, "board_width": 9, "forward_dtype": "bfloat16", "mlp_t": True,
        "lambda_": 0.95, "noise_scale": 0.01, "H_init_std": 1.0, "L_init_std": 1.0}
CARRY_MODULE = '''
from dataclasses import dataclass

@dataclass
class ModelCarry:
    z_H: object
    steps: object
    current_data: dict
'''


def eqr_state(seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = {"embed_tokens.embedding_weight": (11, 8), "lm_head.weight": (11, 8), "q_head.weight": (2, 8),
              "q_head.bias": (2,), "L_level.layers.0.mlp.gate_up_proj.weight": (512, 8),
              "L_level.layers.0.mlp_t.down_proj.weight": (81, 256)}
    state = OrderedDict((PREFIX + k, torch.randn(s, generator=gen)) for k, s in shapes.items())
    state[PREFIX + "rotary_emb.cos_cached"] = torch.arange(6.0)  # a buffer: in `model`, not in the EMA
    return state


def import_throwaway(tmp_path, package, source):
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / package / "eqr.py").write_text(source)
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()
    return importlib.import_module(f"{package}.eqr")


def forget_throwaway(tmp_path, package):
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        del sys.modules[name]
    sys.path.remove(str(tmp_path))
    for file in (tmp_path / package).rglob("*"):
        if file.is_file():
            file.unlink()


@pytest.fixture
def training_checkpoint(tmp_path):
    """A reference-format training checkpoint whose carry class cannot be imported when it is read."""
    assert "models" not in sys.modules
    eqr = import_throwaway(tmp_path, "models", CARRY_MODULE)
    model = eqr_state()
    shadow = OrderedDict((k, v + 1.0) for k, v in model.items() if "cos_cached" not in k)
    param = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([param], lr=0.1, momentum=0.9)
    param.grad = torch.ones(3)
    opt.step()
    payload = {"step": 1234, "total_steps": 5000, "model": model, "optimizers": [opt.state_dict()],
               "optimizer_lrs": [1e-4], "carry": eqr.ModelCarry(torch.zeros(2, 81, 8), torch.ones(2), {"x": 1}),
               "rng": {"torch": torch.random.get_rng_state(), "cuda": None}, "numpy": np.random.get_state(),
               "python": random.getstate(), "iteration": 7,
               "config": {"arch": ARCH, "dataset": {"name": "Sudoku-1k"}, "lr": 1e-4, "ema": True},
               "ema": {"mu": 0.999, "shadow": shadow}}
    path = tmp_path / "step_1234.pth"
    torch.save(payload, path)
    forget_throwaway(tmp_path, "models")
    return path, model, shadow


def test_training_checkpoint_reads_without_its_code(training_checkpoint):
    path, model, shadow = training_checkpoint
    ckpt = reference.read_checkpoint(path)
    assert "models" not in sys.modules  # nothing named in the file was imported
    assert ckpt.kind == "training-checkpoint" and ckpt.step == 1234 and ckpt.path == str(path)
    assert list(ckpt.weights) == list(model)
    assert all(torch.equal(ckpt.weights[k], v) for k, v in model.items())
    assert ckpt.ema_mu == 0.999 and list(ckpt.ema) == list(shadow)
    assert all(torch.equal(ckpt.ema[k], v) and not torch.equal(ckpt.weights[k], v) for k, v in shadow.items())
    assert ckpt.config["arch"] == ARCH and ckpt.config["lr"] == 1e-4
    assert "models.eqr.ModelCarry" in ckpt.placeholders
    assert any(name.startswith("numpy") for name in ckpt.placeholders)

    with_ema, raw = ckpt.state_dict(), ckpt.state_dict(ema=False)
    assert set(with_ema) == {k.removeprefix(PREFIX).join(["inner.", ""]) for k in model}
    key = "inner.embed_tokens.embedding_weight"
    assert torch.equal(with_ema[key], model[PREFIX + key[6:]] + 1) and torch.equal(raw[key], model[PREFIX + key[6:]])
    assert torch.equal(with_ema["inner.rotary_emb.cos_cached"], torch.arange(6.0))

    text = reference.summary(ckpt)
    assert "step          1234" in text and "mu 0.999" in text and "hidden_size=8" in text
    assert "family        eqr" in text and "models.eqr.ModelCarry" in text and "H_layers" in text


class Evil:
    """Unpickling this would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class EvilExec:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def test_malicious_pickle_is_read_without_running_it(tmp_path):
    """The malicious objects become inert placeholders; the weights beside them still load."""
    marker = tmp_path / "pwned"
    payload = {"model": eqr_state(), "evil": Evil(marker),
               "config": {"arch": {"hidden_size": 8, "x": EvilExec(marker)}}}
    path = tmp_path / "evil.pth"
    torch.save(payload, path)
    ckpt = reference.read_checkpoint(path)
    assert not marker.exists()
    assert {f"{os.system.__module__}.system", "builtins.exec"} <= set(ckpt.placeholders)
    assert ckpt.config == {"arch": {"hidden_size": 8}}
    assert torch.equal(ckpt.weights[PREFIX + "lm_head.weight"], payload["model"][PREFIX + "lm_head.weight"])


def test_placeholders_stay_inert():
    module = reference.checkpoints._restricted_pickle(set())
    cls = module.Unpickler.find_class(None, "os", "system")
    made = cls("rm -rf /")
    assert isinstance(made, reference.Placeholder) and made.args == ("rm -rf /",)
    assert isinstance(made("again"), reference.Placeholder) and repr(made) == "<not loaded: os.system>"
    assert module.Unpickler.find_class(None, "torch", "float32") is torch.float32
    assert module.Unpickler.find_class(None, "__builtin__", "set") is set  # protocol 2 names
    assert isinstance(module.Unpickler.find_class(None, "builtins", "getattr")(os, "system"), reference.Placeholder)


def test_config_objects_are_unwrapped_from_their_pickled_state(tmp_path):
    """A config pickled as objects (pydantic-like ``__dict__`` + extras, OmegaConf-like ``_content``/``_val``)."""
    source = '''
class Pydantic:
    def __getstate__(self):
        return {"__dict__": {"name": "eqr@EqRModel", "loss": {"name": "l"}}, "__pydantic_extra__": {"H_cycles": 2},
                "__pydantic_fields_set__": {"name"}, "__pydantic_private__": None}

class Node:
    def __getstate__(self):
        return {"_metadata": None, "_parent": None, "_val": 5}

class Container:
    def __getstate__(self):
        return {"_metadata": None, "_content": {"L_cycles": Node(), "opaque": object.__new__(Opaque)}}

class Opaque:
    def __reduce__(self):
        return Opaque, ()
'''
    eqr = import_throwaway(tmp_path, "cfgmod", source)
    path = tmp_path / "cfg.pth"
    torch.save({"model": eqr_state(), "config": {"arch": eqr.Pydantic(), "omega": eqr.Container()}}, path)
    forget_throwaway(tmp_path, "cfgmod")
    config = reference.read_checkpoint(path).config
    assert config == {"arch": {"name": "eqr@EqRModel", "loss": {"name": "l"}, "H_cycles": 2},
                      "omega": {"L_cycles": 5}}
    assert reference.arch_settings(config) == {"H_cycles": 2}


def test_plain_state_dict_model_only_and_legacy_files(tmp_path):
    state = eqr_state()
    plain = OrderedDict((k.removeprefix("_orig_mod.model."), v) for k, v in state.items())
    cases = {"sd.pt": (plain, {}), "model_only.pt": ({"model": state}, {}),
             "legacy.pt": ({"model": state, "step": 5}, {"_use_new_zipfile_serialization": False})}
    for name, (obj, kwargs) in cases.items():
        torch.save(obj, tmp_path / name, **kwargs)
    ckpt = reference.read_checkpoint(tmp_path / "sd.pt")
    assert ckpt.kind == "state-dict" and ckpt.step is None and ckpt.ema is None and ckpt.config == {}
    assert list(ckpt.weights) == list(plain) and ckpt.placeholders == ()
    only = reference.read_checkpoint(tmp_path / "model_only.pt")
    assert only.kind == "training-checkpoint" and only.step is None and only.ema is None
    legacy = reference.read_checkpoint(tmp_path / "legacy.pt")
    assert legacy.step == 5 and all(torch.equal(legacy.weights[k], v) for k, v in state.items())
    assert "arch" not in reference.summary(ckpt).split("architecture")[1]


def write_bad_files(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"model": eqr_state()}, good)
    data = good.read_bytes()
    files = {"empty.pth": b"", "text.pth": b"hello, this is text\n", "table.csv": b"quizzes,solutions\n1..,123\n",
             "truncated.pth": data[: len(data) // 2], "pickle.pth": b"\x80\x02garbage that is no pickle"}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    np.savez(tmp_path / "arrays.npz", a=np.zeros(2))
    torch.save([1, 2, 3], tmp_path / "list.pth")
    torch.save({"weights": torch.zeros(2), "step": 3}, tmp_path / "foreign.pth")
    torch.save({"format": "attractorlab.checkpoint", "model": {"embed_tokens.weight": torch.zeros(1)}},
               tmp_path / "ours.pth")


@pytest.mark.parametrize(("name", "message"), [
    ("missing.pth", r"missing.pth: not found"),
    ("", r"is a directory"),
    ("empty.pth", r"empty.pth is empty \(0 bytes\), not a PyTorch file"),
    ("text.pth", r"text.pth is not a PyTorch file \(it starts with b'hello, this '\)"),
    ("table.csv", r"table.csv is not a PyTorch file \(it starts with b'quizzes,solu'\)"),
    ("truncated.pth", r"truncated.pth is truncated or corrupt \("),
    ("pickle.pth", r"pickle.pth is truncated or corrupt \("),
    ("arrays.npz", r"arrays.npz is a zip archive but not a PyTorch file \(it holds a.npy\)"),
    ("list.pth", r"list.pth holds no EqR weights \(expected a dict of tensors; found list\)"),
    ("foreign.pth", r"foreign.pth holds no EqR weights \(expected keys like 'inner.embed_tokens.embedding_weight'; "
                    r"found 'weights', 'step'\)"),
    ("ours.pth", r"use attractorlab.checkpoint.load"),
])
def test_bad_files_give_one_line_errors(tmp_path, name, message):
    write_bad_files(tmp_path)
    with pytest.raises(ReferenceFormatError, match=message) as info:
        reference.read_checkpoint(tmp_path / name)
    assert isinstance(info.value, ValueError) and isinstance(info.value, AttractorlabError)
    assert "\n" not in str(info.value)


def test_arch_settings():
    settings = reference.arch_settings({"arch": ARCH, "lr": 1.0})
    assert settings == {k: v for k, v in ARCH.items() if k not in ("name", "short_name", "loss", "H_layers")}
    assert reference.ignored_arch_keys({"arch": ARCH}) == ["name", "short_name", "loss", "H_layers"]
    flat = {"hidden_size": 64, "pos_encodings": None, "board_height": None, "mlp_t": False, "puzzle_emb_ndim": 0,
            "expansion": reference.Placeholder()}
    assert reference.arch_settings(flat) == {"hidden_size": 64, "pos_encodings": "none", "mlp_t": False}
    assert reference.ignored_arch_keys(flat) == ["puzzle_emb_ndim", "expansion"]
    assert reference.arch_family({"arch": {"name": "trm@TRMModel"}}) == "trm" and reference.arch_family({}) is None


# ----------------------------------------------------------------------------------------------- datasets


def sample_arrays(n=6, length=4, vocab=11, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, vocab, (n, length)).astype(np.uint8), rng.integers(1, vocab, (n, length)).astype(np.uint8)


def test_split_round_trip(tmp_path):
    inputs, labels = sample_arrays()
    out = reference.write_split(tmp_path / "data" / "test", inputs, labels, groups=[4, 4, 4, 9, 9, 2],
                                metadata={"vocab_size": 11, "task": "sudoku"})
    split = reference.read_split(out)
    assert isinstance(split.inputs, np.memmap) and split.inputs.dtype == np.uint8
    assert np.array_equal(split.inputs, inputs) and np.array_equal(split.labels, labels)
    assert split.example_groups().tolist() == [0, 0, 0, 1, 1, 2] and split.num_groups == 3
    assert split.example_puzzles().tolist() == list(range(6)) and split.num_examples == 6
    meta = json.loads((out / "dataset.json").read_text())
    assert meta == {"pad_id": 0, "ignore_label_id": 0, "blank_identifier_id": 0, "num_puzzle_identifiers": 1,
                    "vocab_size": 11, "task": "sudoku", "seq_len": 4, "total_groups": 3, "mean_puzzle_examples": 1.0,
                    "total_samples": 6, "sets": ["all"]}
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["test"]  # no temporary folders left


def test_reads_multi_example_puzzles_like_the_reference_layout(tmp_path):
    split_dir = tmp_path / "train"
    split_dir.mkdir()
    inputs, labels = sample_arrays(n=5)
    arrays = {"inputs": inputs, "labels": labels, "puzzle_identifiers": np.zeros(3, np.int32),
              "puzzle_indices": np.array([0, 2, 3, 5], np.int32), "group_indices": np.array([0, 2, 3], np.int32)}
    for name, array in arrays.items():
        np.save(split_dir / f"all__{name}.npy", array)
    (split_dir / "dataset.json").write_text(json.dumps(
        {"seq_len": 4, "vocab_size": 11, "pad_id": 0, "ignore_label_id": 0, "blank_identifier_id": 0,
         "num_puzzle_identifiers": 1, "total_groups": 2, "mean_puzzle_examples": 1, "total_samples": 5,
         "sets": ["all"]}))
    split = reference.read_split(split_dir)
    assert split.example_puzzles().tolist() == [0, 0, 1, 2, 2]
    assert split.example_groups().tolist() == [0, 0, 0, 1, 1]


def test_write_split_refuses_and_replaces(tmp_path):
    inputs, labels = sample_arrays()
    target = reference.write_split(tmp_path / "split", inputs, labels)
    with pytest.raises(ValueError, match="is not empty"):
        reference.write_split(target, inputs, labels)
    reference.write_split(target, inputs[:2], labels[:2], overwrite=True)
    assert reference.read_split(target).num_examples == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["split"]
    bad = [({"groups": [0, 1, 0, 2, 2, 2]}, "group 0 are not consecutive"),
           ({"metadata": {"seq_len": 9}}, r"metadata\['seq_len'\] = 9 contradicts"),
           ({"metadata": {"vocab_size": 5}}, "outside"), ({"groups": [0, 1]}, "groups must be"),
           ({"set_name": "a/b"}, "set_name")]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            reference.write_split(tmp_path / "other", inputs, labels, **kwargs)
    with pytest.raises(ValueError, match="same shape|one shape"):
        reference.write_split(tmp_path / "other", inputs, labels[:3])
    assert not (tmp_path / "other").exists()


def corrupt(split_dir, name, array=None, meta=None):
    if array is not None:
        np.save(split_dir / f"all__{name}.npy", array)
    if meta is not None:
        path = split_dir / "dataset.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **meta}))


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: (d / "all__labels.npy").unlink(), r"all__labels.npy: not found"),
    (lambda d: corrupt(d, "inputs", np.zeros((6, 5), np.uint8)), r"all__inputs.npy: expected shape \[N, 4\]"),
    (lambda d: corrupt(d, "labels", np.zeros((5, 4), np.uint8)), r"all__labels.npy: shape \[5, 4\] does not match"),
    (lambda d: corrupt(d, "inputs", np.zeros((6, 4))), r"all__inputs.npy holds float64 values"),
    (lambda d: corrupt(d, "puzzle_indices", np.array([0, 1, 2, 3, 4, 5, 7])), r"offsets must run from 0 to 6"),
    (lambda d: corrupt(d, "puzzle_indices", np.array([0, 3, 2, 3, 4, 5, 6])), r"offsets decrease at entry 2"),
    (lambda d: corrupt(d, "group_indices", np.array([0, 4, 2, 6])), r"all__group_indices.npy: offsets decrease"),
    (lambda d: corrupt(d, "puzzle_identifiers", np.zeros(4, np.int32)), r"5 offsets for 4 puzzles|7 offsets"),
    (lambda d: corrupt(d, "labels", np.array([[1] * 4] * 3 + [[1, 2, 11, 1]] + [[1] * 4] * 2)),
     r"all__labels.npy: row 3 holds token 11, outside vocab_size 11"),
    (lambda d: corrupt(d, "", meta={"total_groups": 4}), r"total_groups 4 but all__group_indices.npy holds 6"),
    (lambda d: corrupt(d, "", meta={"sets": ["train"]}), r"lists sets \['train'\]; no set 'all'"),
    (lambda d: corrupt(d, "", meta={"seq_len": "81"}), r"seq_len must be a non-negative integer"),
    (lambda d: (d / "dataset.json").write_text("{not json"), r"dataset.json is not valid JSON"),
    (lambda d: (d / "dataset.json").write_text('{"seq_len": 4}'), r"dataset.json lacks pad_id, ignore_label_id"),
    (lambda d: (d / "all__inputs.npy").write_bytes(b"\x93NUMPY garbage"), r"all__inputs.npy is not a readable .npy"),
])
def test_bad_splits_name_the_file(tmp_path, change, message):
    split_dir = reference.write_split(tmp_path / "test", *sample_arrays(vocab=11), metadata={"vocab_size": 11})
    change(split_dir)
    with pytest.raises(ReferenceFormatError, match=message):
        reference.read_split(split_dir)


def test_missing_split_and_dataset_root(tmp_path):
    with pytest.raises(ReferenceFormatError, match="nowhere: not found"):
        reference.read_split(tmp_path / "nowhere")
    (tmp_path / "file.npy").write_bytes(b"")
    with pytest.raises(ReferenceFormatError, match="file.npy is not a folder"):
        reference.read_split(tmp_path / "file.npy")
    for split in ("train", "test"):
        reference.write_split(tmp_path / "ds" / split, *sample_arrays())
    with pytest.raises(ReferenceFormatError, match=r"holds splits test, train: pass one of them"):
        reference.read_split(tmp_path / "ds")


# ----------------------------------------------------------------------------------------------- metrics


def test_logit_change_and_convergence_scores():
    prev = torch.zeros(1, 2, 3)
    logits = torch.tensor([[[3.0, 4.0, 0.0], [0.0, 0.0, 1.0]]])  # cell norms 5 and 1
    assert reference.logit_change(prev, logits).tolist() == [3.0]
    changes = np.array([[5.0, 4.0, 3.0, 2.0, 1.0], [1.0, 1.0, 1.0, 1.0, 7.0]])
    assert reference.convergence_scores(changes).tolist() == [2.0, 3.0]  # mean of the last 3
    assert reference.convergence_scores(changes, window=0).tolist() == [3.0, 2.2]  # 0: all steps
    assert reference.convergence_scores(changes[:, :2], window=3).tolist() == [4.5, 1.0]  # T < window: all
    with pytest.raises(ValueError, match="two outer steps"):
        reference.convergence_scores(np.zeros((2, 0)))
    with pytest.raises(ValueError, match="window"):
        reference.convergence_scores(changes, window=-1)
    with pytest.raises(ValueError, match="one shape"):
        reference.logit_change(prev, logits[:, :1])


def test_pass_at_k_against_binomials():
    assert reference.pass_at_k(4, np.arange(5), 1).tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    np.testing.assert_allclose(reference.pass_at_k(4, np.arange(5), 2), [0, 0.5, 5 / 6, 1, 1])
    for n, k in ((128, 1), (128, 16), (128, 127), (1000, 100)):
        c = np.array([0, 1, 7, n // 2, n - k, n - k + 1, n])
        exact = [float(1 - Fraction(math.comb(n - ci, k), math.comb(n, k))) for ci in c]
        np.testing.assert_allclose(reference.pass_at_k(n, c, k), exact, rtol=1e-12, atol=1e-15)
    for args in ((4, [1], 5), (4, [1], 0), (4, [5], 2), (4, [1.5], 1)):
        with pytest.raises(ValueError):
            reference.pass_at_k(*args)


def test_majority_vote_ties_go_to_the_first_answer():
    a, b, c = [1, 2], [2, 1], [3, 3]
    answers = np.array([[a, b, b, a], [b, a, a, c], [c, b, a, b], [a, c, b, c]])
    assert reference.majority_vote(answers).tolist() == [0, 1, 1, 1]


def hand_case():
    s, x, y, z, w = [2, 3], [2, 2], [3, 3], [4, 4], [5, 5]
    correct = np.array([[False, True, True, False], [True, False, False, False]])
    answers = np.array([[x, s, s, y], [s, z, z, w]])
    scores = np.array([[0.5, 0.1, 0.3, 0.05], [0.2, 0.9, 0.9, 0.4]])
    token_accuracy = np.array([[0.5, 1.0, 1.0, 0.25], [1.0, 0.5, 0.5, 0.0]])
    return correct, answers, scores, token_accuracy


def test_evaluation_metrics_by_hand():
    metrics = reference.evaluation_metrics(*hand_case(), ks=(1, 2))
    assert metrics == pytest.approx({
        "puzzles": 2, "breadth": 4,
        "exact_accuracy": 3 / 8,  # 3 right of 8 rows
        "pass@1": 3 / 8, "pass@2": (5 / 6 + 1 / 2) / 2, "pass@4": 1.0,  # 1 - C(2,2)/C(4,2), 1 - C(3,2)/C(4,2)
        "majority_vote_accuracy": 0.5,  # puzzle 0: s (restart 1, right); puzzle 1: z (restart 1, wrong)
        "token_accuracy": 4.75 / 8, "majority_vote_token_accuracy": (1.0 + 0.5) / 2,
        "convergence_top1_accuracy": 0.5,  # lowest scores: restart 3 (wrong), restart 0 (right)
        "convergence_selected_score": (0.05 + 0.2) / 2,
        "convergence_top2_accuracy": 0.5, "convergence_top2_any": 1.0,  # restarts {3, 1} and {0, 3}
    })
    named = reference.reference_names(metrics)
    assert named["different_init/avg_pass_rate"] == named["all/exact_accuracy"] == 3 / 8
    assert named["different_init/any_correct"] == 1.0 and named["different_init/pass@2"] == metrics["pass@2"]
    assert named["convergence_top_k/cumulative_exact_acc_top1"] == named["convergence_top_k/exact_accuracy"] == 0.5
    assert named["majority_vote/accuracy"] == 0.75 and "different_init/pass@4" not in named
    top2 = reference.reference_names(metrics, top_k=2)
    assert top2["convergence_top_k/any_correct"] == 1.0 and top2["convergence_top_k/cumulative_exact_acc_top2"] == 0.5
    single = reference.evaluation_metrics(*(a[:, :1] for a in hand_case()))
    assert reference.reference_names(single) == {"all/exact_accuracy": 0.5, "all/accuracy": 0.75}


def test_evaluation_metrics_validates_shapes():
    correct, answers, scores, token_accuracy = hand_case()
    with pytest.raises(ValueError, match=r"scores must start with \[n, B\] = \[2, 4\]"):
        reference.evaluation_metrics(correct, answers, scores[:, :3])
    with pytest.raises(ValueError, match="ks"):
        reference.evaluation_metrics(correct, answers, ks=(0,))
    assert "convergence_top1_accuracy" not in reference.evaluation_metrics(correct, answers)


def test_majority_vote_matches_the_reference_dict_vote():
    rng = np.random.default_rng(3)
    for high in (4, 300):  # few distinct answers (many ties) and tokens beyond uint8
        answers = rng.integers(2, high, (50, 8, 3))
        expected = []
        for rows in answers:  # eval_fn._update_di: insertion-ordered votes, max keeps the first maximum
            votes = {}
            for i, row in enumerate(map(tuple, rows)):
                votes.setdefault(row, [0, i])[0] += 1
            expected.append(max(votes.values(), key=lambda v: v[0])[1])
        assert reference.majority_vote(answers).tolist() == expected
