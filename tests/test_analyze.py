"""`attractorlab analyze` and `demo`: every analysis on a tiny run, caching, --force, clear messages."""

import numpy as np
import pytest
import torch

from attractorlab import analyze, checkpoint, recording, results, sudoku
from attractorlab.cli import DEFAULT_CHECKPOINT, main
from attractorlab.model import EquilibriumReasoner, ReasonerConfig
from attractorlab.rollout import RolloutConfig
from attractorlab.solve import solve_puzzles as solve

SMALL = analyze.AnalyzeOptions(n_puzzles=2, restarts=3, basin_samples=6, grid=3, max_steps=30, max_embed=10,
                               n_polish=2, n_lyapunov=2, lyapunov_steps=10, n_selection=2)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = EquilibriumReasoner(ReasonerConfig(hidden_size=8, expansion=1.0, H_cycles=1, L_cycles=1, L_layers=1))
    with torch.no_grad():  # small block weights make a contracting map (random full-size ones are chaotic)
        for name, p in model.named_parameters():
            if name.startswith("layers."):
                p.mul_(0.1)
    path = tmp_path_factory.mktemp("ck") / "model.pt"
    checkpoint.save(model, path)
    return path


def make_run(ckpt, path, states="all", n=6, project=4):
    model = checkpoint.load(ckpt)
    puzzles = sudoku.generate(n, seed=2, difficulty="singles")
    attrs = {"checkpoint_path": str(ckpt), "checkpoint_sha256": checkpoint.file_sha256(ckpt)}
    solve(model, puzzles, RolloutConfig(depth=4, breadth=2, seed=0), str(path), batch_size=3, states=states,
          project=project if states != "none" else 0, attrs=attrs, progress=False)
    return path


def test_every_analysis_is_computed_stored_and_cached(ckpt, tmp_path):
    run = make_run(ckpt, tmp_path / "run.h5", project=0)  # full states: end states can be polished too
    statuses = analyze.analyze(str(run), options=SMALL, progress=False, log=lambda s: None)
    expect = {name: "computed" for name in analyze.ANALYSES} | {"inner": "skipped"}  # needs --states cycles
    assert {s.name: s.status for s in statuses} == expect
    with recording.open_run(run) as r:
        keys = set(r.analysis_keys())
        assert {"summary", "scaling", "convergence", "embedding", "probes"} <= keys
        assert {"fixed_points/p0", "fixed_points/p1", "basins/p0", "basins/p1"} <= keys
        summary = r.read_analysis("summary")
        acc = r.rollout.correct[np.arange(r.n), r.rollout.selected, -1].mean()
        assert summary.attrs["accuracy"] == pytest.approx(acc)
        scaling = r.read_analysis("scaling")
        assert scaling["depth_accuracy"].shape == (4,) and list(scaling["breadth_values"]) == [1, 2]
        emb = r.read_analysis("embedding")
        assert emb["coords"].shape == (6, 2, 5, 2)  # S = T + 1 snapshots (stride 1)
        fp = r.read_analysis("fixed_points/p0")
        assert fp["eigvals"].ndim == 2 and fp["label"].min() >= 0 and fp["label"].max() <= 2
        basins = r.read_analysis("basins/p0")
        assert basins["map_label"].shape == (3, 3)
        ends = r.read_analysis("end_states")
        assert ends["end_state"].shape == (2, 2) and ends["ending_counts"].sum() == 4
        lyap = r.read_analysis("lyapunov")
        assert lyap["exponent"].shape == (2, 2) and lyap["regime_counts"].sum() == 4
        sel = r.read_analysis("selection")
        depths = sel["depths"]
        assert list(depths) == [1, 2, 3, 4] and sel["attractor_correct"].shape == (2, 4)
        oracle = r.rollout.correct[:2, :, depths - 1].any(axis=1)
        np.testing.assert_array_equal(sel["oracle_correct"], oracle)
        assert (sel["attractor_correct"] <= oracle).all() and (sel["convergence_correct"] <= oracle).all()
        assert basins["fraction"].sum() == pytest.approx(1.0)
        # every stored analysis reads back into its container, every stored array a field of it
        containers = {"summary": results.RunSummary, "scaling": results.ScalingCurves,
                      "convergence": results.ConvergenceStudy, "embedding": results.TrajectoryEmbedding,
                      "probes": results.CellProbes, "end_states": results.EndStates,
                      "lyapunov": results.LyapunovSurvey, "selection": results.RestartSelection,
                      "fixed_points/p0": results.PuzzleFixedPoints, "basins/p0": results.PuzzleBasins}
        for key, container in containers.items():
            stored = r.read_analysis(key)
            back = container.from_result(stored)
            assert set(back.to_arrays()) == set(stored), key
            assert back.to_attrs() == {k: v for k, v in stored.attrs.items() if k in back.to_attrs()}, key
        conv = results.ConvergenceStudy.from_result(r.read_analysis("convergence"))
        assert set(conv.fpr) == set(conv.score_names) and set(conv.halt_accuracy) == set(conv.halt_rules)
    again = analyze.analyze(str(run), options=SMALL, progress=False, log=lambda s: None)
    assert {s.name: s.status for s in again} == {name: "cached" for name in expect} | {"inner": "skipped"}
    forced = analyze.analyze(str(run), only=["summary"], force=True, options=SMALL, progress=False,
                             log=lambda s: None)
    assert [(s.name, s.status) for s in forced] == [("summary", "computed")]


def test_state_analyses_are_skipped_with_a_reason(ckpt, tmp_path):
    run = make_run(ckpt, tmp_path / "scalars.h5", states="none")
    lines = []
    statuses = analyze.analyze(str(run), only=["convergence", "embedding", "probes"], options=SMALL,
                               progress=False, log=lines.append)
    got = {s.name: s for s in statuses}
    assert got["convergence"].status == "computed"
    assert got["embedding"].status == "skipped" and "no recorded states" in got["embedding"].reason
    assert any("embedding" in line and "skipped" in line for line in lines)
    with recording.open_run(run) as r:
        assert "no recorded states" in r.read_analysis("embedding").attrs["skipped_reason"]


def test_checkpoint_mismatch_and_bad_inputs(ckpt, tmp_path, capsys):
    run = make_run(ckpt, tmp_path / "run.h5", states="none")
    other = tmp_path / "other.pt"
    checkpoint.save(EquilibriumReasoner(ReasonerConfig(hidden_size=8, expansion=1.0, L_layers=1)), other)
    assert main(["analyze", str(run), "--checkpoint", str(other), "--no-progress"]) == 2
    assert "does not match" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path / "missing.h5")]) == 2
    assert "missing.h5" in capsys.readouterr().err
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    assert main(["analyze", str(text)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "notes.h5" in err
    assert main(["analyze", str(run), "--only", "everything"]) == 2
    assert "unknown analysis" in capsys.readouterr().err


def test_cli_analyze_writes_report(ckpt, tmp_path, capsys):
    run = make_run(ckpt, tmp_path / "run.h5")
    out = tmp_path / "report.html"
    assert main(["analyze", str(run), "--out", str(out), "--n-puzzles", "1", "--grid", "3", "--basin-samples", "4",
                 "--max-steps", "4", "--restarts", "2", "--no-progress", "--device", "cpu"]) == 0
    html = out.read_text()
    assert "plotly" in html.lower() and len(html) > 10_000
    assert "wrote" in capsys.readouterr().out


def test_demo_smoke(ckpt, tmp_path, capsys):
    assert main(["demo", "--checkpoint", str(ckpt), "--n", "6", "--depth", "4", "--breadth", "2", "--n-dynamics",
                 "1", "--grid", "3", "--basin-samples", "4", "--out-dir", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "accuracy (select)" in out and "demo_report.html" in out
    assert (tmp_path / "demo.h5").exists() and (tmp_path / "demo_report.html").exists()


def test_halting_replayed_post_hoc_equals_the_rule_run_live():
    from attractorlab import dynamics
    from attractorlab.rollout import rollout

    model = checkpoint.load(DEFAULT_CHECKPOINT)
    p = sudoku.generate(8, seed=11)
    tok, sol = torch.as_tensor(p.tokens, dtype=torch.long), torch.as_tensor(p.solution)
    fixed = rollout(model, tok, sol, RolloutConfig(depth=12, noise=False, seed=2))
    for rule in ("stable", "converge", "q"):
        live = rollout(model, tok, sol, RolloutConfig(depth=12, noise=False, seed=2, halt=rule, tol=1e-2))
        replay = dynamics.replay_halting(rule, fixed.residual[:, 0], fixed.halt_logit[:, 0], fixed.pred[:, 0],
                                         fixed.correct[:, 0], tol=1e-2, patience=2)
        np.testing.assert_array_equal(replay.steps_used, live.steps[:, 0])
        np.testing.assert_array_equal(replay.correct_at_halt, live.correct[:, 0, -1])


def test_noisy_run_ends_are_classified_against_the_noise_floor(tmp_path):
    model = checkpoint.load(DEFAULT_CHECKPOINT)
    run = str(tmp_path / "noisy.h5")
    attrs = {"config_json": {"model": model.config.to_dict(), "rollout": {"noise": True, "tol": 1e-3}}}
    attrs.update(checkpoint_path=DEFAULT_CHECKPOINT, checkpoint_sha256=checkpoint.file_sha256(DEFAULT_CHECKPOINT))
    solve(model, sudoku.generate(12, seed=3, difficulty="singles"), RolloutConfig(depth=16, breadth=2, seed=1), run,
          states="final", attrs=attrs, progress=False)
    analyze.analyze(run, only=["convergence", "end_states", "lyapunov"],
                    options=analyze.AnalyzeOptions(n_polish=3, n_lyapunov=3, lyapunov_steps=40), progress=False,
                    log=lambda _: None)
    with recording.open_run(run) as r:
        res = r.read_analysis("convergence")
        correct_end = int(r.rollout.correct[:, :, -1].sum())
    counts = dict(zip(res["ending_names"], res["ending_counts"], strict=True))
    assert res.attrs["noise_floor"] > 1e-3  # path noise keeps the residual above the noise-free tolerance
    # rollouts that end on the answer at a fixed point count as converged (they were all "drifting" before)
    assert counts["converged_valid"] >= correct_end - 2 and counts["drifting"] <= 24 - correct_end + 2
    assert res.attrs["easy_count"] == 12 and res.attrs["easy_settled_within_5"] >= 6
    assert (res["settle_answer"] <= 16).all() and (res["settle_answer"] < res["steps"] + 1).any()
    with recording.open_run(run) as r:
        ends = r.read_analysis("end_states")
        right = r.rollout.correct[:3, :, -1]
    # a noisy end state on the answer polishes to a stable fixed point that reads out the answer
    assert (ends["end_state"][right] == 0).mean() >= 0.8 and (ends["spectral_radius"][right] < 1).all()
    with recording.open_run(run) as r:
        lyap = r.read_analysis("lyapunov")
    # from there the noise-free orbit contracts: the largest exponent is the log of the spectral radius
    assert (lyap["exponent"][right] < 0).all()
    np.testing.assert_allclose(lyap["exponent"][right], np.log(ends["spectral_radius"][right]), atol=0.12)


def test_basin_puzzles_with_more_than_one_ending_come_first():
    from types import SimpleNamespace

    final = np.zeros((4, 3, 5), np.uint8)
    final[1, 2] = 7  # puzzle 1: two different answers among its restarts
    final[3, :, 0] = [1, 2, 3]  # puzzle 3: three
    assert analyze.distinct_endings(final).tolist() == [1, 2, 1, 3]
    pred = np.repeat(final[:, :, None], 2, axis=2)  # [N, B, T, L]
    correct = np.ones((4, 3, 2), bool)
    rollout = SimpleNamespace(correct=correct, selected=np.zeros(4, np.int32), lazy=lambda name: pred)
    picked = analyze.sample_puzzles(SimpleNamespace(n=4, rollout=rollout), 2, seed=0)
    assert sorted(picked.tolist()) == [1, 3]
    assert analyze.AnalyzeOptions().grid is None  # 48 on a GPU, 12 on a CPU, chosen in analyze()
