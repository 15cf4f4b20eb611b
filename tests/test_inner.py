"""Inside the outer step: the capture of every inner update, ``--states cycles`` run files, and the z_L-settling
analysis on a constructed approach with a closed-form answer."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from attractorlab import analyze, checkpoint, recording, sudoku
from attractorlab.errors import InputError
from attractorlab.model import EquilibriumReasoner, LatentState, ReasonerConfig, update_names
from attractorlab.rollout import RolloutConfig, inner_updates, rollout
from attractorlab.solve import solve_puzzles


def tiny(hierarchical: bool = True, seed: int = 0) -> EquilibriumReasoner:
    torch.manual_seed(seed)
    cfg = ReasonerConfig(hidden_size=16, expansion=1.0, H_cycles=2, L_cycles=3, L_layers=1)
    if not hierarchical:
        cfg = ReasonerConfig(hidden_size=16, expansion=1.0, H_cycles=2, L_cycles=3, L_layers=1, hierarchical=False)
    return EquilibriumReasoner(cfg).eval()


@pytest.mark.parametrize("hierarchical", [True, False])
def test_capture_reproduces_the_outer_step_from_its_inner_updates(hierarchical):
    model = tiny(hierarchical)
    tokens = torch.as_tensor(sudoku.generate(2, seed=1, difficulty="singles").tokens, dtype=torch.long)
    gen = torch.Generator().manual_seed(0)
    start = model.init_state(tokens, generator=gen)
    seen: list[tuple[str, LatentState]] = []
    with torch.no_grad():
        end = model.step(start, tokens, noise=False, on_update=lambda name, s: seen.append((name, s)))
        plain = model.step(start, tokens, noise=False)
        assert [name for name, _ in seen] == model.update_names() == update_names(2, 3)
        torch.testing.assert_close(end.z_H, plain.z_H, rtol=0, atol=0)  # the hook changes nothing
        x = model.embed(tokens)
        z_H, z_L = start.z_H, start.z_L
        for name, s in seen:  # every captured state is one module application from the one before
            if name.endswith(".H"):
                z_H = model.module(z_H, z_L if hierarchical else x, False, None)
            elif hierarchical:
                z_L = model.module(z_L, z_H + x, False, None)
            else:
                z_H = z_L = model.module(z_H, x, False, None)
            torch.testing.assert_close(s.z_H, z_H, rtol=0, atol=0)
            torch.testing.assert_close(s.z_L, z_H if not hierarchical else z_L, rtol=0, atol=0)
    torch.testing.assert_close(seen[-1][1].z_H, end.z_H, rtol=0, atol=0)
    torch.testing.assert_close(seen[-1][1].z_L, end.z_L, rtol=0, atol=0)


def test_cycles_states_keep_every_inner_update_of_the_recorded_steps(tmp_path):
    model = tiny()
    puzzles = sudoku.generate(3, seed=2, difficulty="singles")
    tok = torch.as_tensor(puzzles.tokens, dtype=torch.long)
    cfg = RolloutConfig(depth=5, breadth=2, seed=3)
    cycles = rollout(model, tok, None, cfg, states="cycles", state_stride=2)
    every = rollout(model, tok, None, cfg, states="all", state_stride=2)
    names = model.update_names()
    assert cycles.state_steps.tolist() == [0, *np.repeat([2, 4, 5], len(names))]
    ends = cycles.states[:, :, len(names)::len(names)]  # the closing update of each recorded step
    np.testing.assert_array_equal(ends, every.states[:, :, 1:])
    np.testing.assert_array_equal(cycles.states[:, :, 0], every.states[:, :, 0])
    only_l = inner_updates(model, ["H*.L*"])
    assert only_l == tuple(n for n in names if ".L" in n)
    with pytest.raises(InputError, match="no inner update matches"):
        inner_updates(model, ["H9.*"])

    path = tmp_path / "cycles.h5"
    ckpt = tmp_path / "tiny.pt"
    checkpoint.save(model, ckpt)
    attrs = {"config_json": json.dumps({"model": model.config.to_dict()}), "checkpoint_path": str(ckpt),
             "checkpoint_sha256": checkpoint.file_sha256(ckpt)}
    solve_puzzles(model, puzzles, cfg, str(path), states="cycles", state_stride=2, state_dtype="float32",
                  updates=("H2.*",), attrs=attrs, progress=False)
    with recording.open_run(path) as run:
        assert run.states.mode == "cycles" and run.states.update_names == ["H2.L1", "H2.L2", "H2.L3", "H2.H"]
        assert run.states.steps.tolist() == [0, *np.repeat([2, 4, 5], 4)]
        assert run.states.updates.tolist() == [-1, *np.tile(np.arange(4), 3)]
        np.testing.assert_array_equal(run.states.data[:][:, :, 4::4], every.states[:, :, 1:])
    statuses = analyze.analyze(str(path), only=["inner", "end_states"], progress=False, log=lambda _: None)
    # a filtered capture cannot say how z_L settles; it kept the closing update, so the end states are there
    assert [s.status for s in statuses] == ["skipped", "computed"]


def _constructed_run(path, r: float, stride: int, depth: int = 4, n_h: int = 2, n_l: int = 3) -> np.ndarray:
    """A ``cycles`` run whose z_L after its g-th z_L update (g counted over the whole rollout) is (1 + r^g) v: the
    relative change of that update is r^(g-1) |1 - r| / (1 + r^g) exactly. Returns the counter g of every recorded
    z_L update, [K, H, L]."""
    seq, d = 81, 4
    names = update_names(n_h, n_l)
    spec = recording.StateSpec(mode="cycles", stride=stride, dtype="float32", shape=(2, seq, d), updates=names)
    steps = spec.steps(depth)
    v = np.random.default_rng(0).normal(size=(seq, d))
    data = np.zeros((1, 2, len(steps), 2, seq, d), np.float32)
    data[:, :, 0, 1] = 2 * v  # the initial z_L: g = 0
    counters = []
    for k, t in enumerate(sorted(set(steps[1:]))):
        row = []
        for h in range(n_h):
            g0 = (t - 1) * n_h * n_l + h * n_l
            row.append([g0 + l for l in range(1, n_l + 1)])
            for j in range(n_l + 1):  # L updates, then the H update (z_L unchanged)
                data[:, :, 1 + k * len(names) + h * (n_l + 1) + j, 1] = (1 + r ** (g0 + min(j + 1, n_l))) * v
        counters.append(row)
    p = SimpleNamespace(tokens=np.zeros((1, seq), np.uint8), solution=np.zeros((1, seq), np.uint8),
                        source=np.array(["constructed"]), rating=np.zeros(1, np.int32))
    shape = (1, 2, depth)
    roll = {"residual": np.zeros(shape, np.float32), "halt_logit": np.zeros(shape, np.float32),
            "logit_change": np.zeros(shape, np.float32), "pred": np.zeros((*shape, seq), np.uint8),
            "valid": np.zeros(shape, bool), "correct": np.zeros(shape, bool),
            "steps": np.full((1, 2), depth, np.int32), "selected": np.zeros(1, np.int32)}
    attrs = {"config_json": json.dumps({"model": {"H_cycles": n_h, "L_cycles": n_l}})}
    with recording.RunWriter(path, breadth=2, depth=depth, attrs=attrs, states=spec) as w:
        w.append(p, roll, data)
    return np.array(counters)


@pytest.mark.parametrize("r, settles", [(0.7, True), (1.3, False)])
@pytest.mark.parametrize("stride", [1, 2])
def test_inner_settling_on_a_constructed_geometric_approach(tmp_path, r, settles, stride):
    g = _constructed_run(tmp_path / "run.h5", r, stride)
    with recording.open_run(tmp_path / "run.h5") as run:
        out = analyze.inner_arrays(run, analyze.AnalyzeOptions()).to_arrays()
    expect = r ** (g - 1.0) * abs(1 - r) / (1 + r**g)  # [K, H, L]
    if stride == 2:  # the first update of a step whose previous step is not stored has no predecessor
        expect[:, 0, 0] = np.nan
    change = out["change"][0]  # [B, K, H, L]
    np.testing.assert_allclose(change, np.broadcast_to(expect, change.shape), rtol=1e-4)
    contraction = np.exp(np.nanmean(np.diff(np.log(expect), axis=-1), axis=-1))
    np.testing.assert_allclose(out["contraction"][0, 0], contraction, rtol=1e-4)
    assert (out["settling_fraction"] == float(settles)).all()
    assert out["steps"].tolist() == ([1, 2, 3, 4] if stride == 1 else [2, 4])


def test_cli_solve_cycles_then_analyze_and_report_inner(tmp_path, capsys):
    from attractorlab.cli import main
    from attractorlab.report import build_figures

    model = tiny()
    ckpt = tmp_path / "tiny.pt"
    checkpoint.save(model, ckpt)
    run = tmp_path / "run.h5"
    base = ["solve", str(ckpt), "--generate", "2", "--difficulty", "singles", "--depth", "3", "--breadth", "2",
            "--states", "cycles", "--out", str(run), "--no-progress", "--halt", "never"]
    assert main([*base, "--capture", "H1.*", "--state-stride", "2"]) == 0
    with recording.open_run(run) as r:
        assert r.states.update_names == ["H1.L1", "H1.L2", "H1.L3", "H1.H"]
    assert main([*base, "--overwrite"]) == 0
    assert main(["analyze", str(run), "--only", "inner", "--no-report"]) == 0
    with recording.open_run(run) as r:
        inner = r.read_analysis("inner")
        assert inner["change"].shape == (2, 2, 3, 2, 3) and np.isfinite(inner["change"]).all()
        assert "inner" in build_figures(r)
    capsys.readouterr()
    assert main(["solve", str(ckpt), "--generate", "1", "--capture", "H1.*", "--out", str(tmp_path / "x.h5")]) == 2
    assert "--capture needs --states cycles" in capsys.readouterr().err
