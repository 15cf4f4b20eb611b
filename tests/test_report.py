"""HTML report: every figure from a synthetic run file, missing analyses, and a headless-browser render."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import struct
import subprocess
import zlib
from types import SimpleNamespace

import numpy as np
import plotly.graph_objects as go
import pytest

from attractorlab import recording as rec
from attractorlab import report, results

N, B, T = 6, 2, 5
ALL_FIGURES = ["summary", "scaling_depth", "scaling_breadth", "selection", "inner", "residual_curves", "roc",
               "steps_vs_rating", "endings", "halting", "end_states", "lyapunov", "probes", "trajectories", "spectra",
               "spectral_radius", "basin_maps", "basin_stability"]
PLOTLY_HEADER = re.compile(r"\* plotly\.js v\d")


def write_rollout(path: str, seed: int = 0) -> None:
    """A seeded run file with N puzzles, B restarts and T outer steps."""
    r = np.random.default_rng(seed)
    puzzles = SimpleNamespace(tokens=r.integers(1, 11, (N, 81), dtype=np.uint8),
                              solution=r.integers(1, 10, (N, 81), dtype=np.uint8),
                              source=np.array([f"src{i % 2}" for i in range(N)]),
                              rating=r.integers(1, 5000, N).astype(np.int32))
    shape = (N, B, T)
    rollout = {"residual": r.random(shape, dtype=np.float32), "halt_logit": r.normal(size=shape).astype(np.float32),
               "logit_change": r.random(shape, dtype=np.float32),
               "pred": r.integers(1, 10, (*shape, 81), dtype=np.uint8),
               "valid": r.random(shape) > 0.5, "correct": r.random(shape) > 0.5,
               "steps": r.integers(1, T + 1, (N, B)).astype(np.int32),
               "selected": r.integers(0, B, N).astype(np.int32),
               "selected_majority": r.integers(0, B, N).astype(np.int32)}
    with rec.RunWriter(path, breadth=B, depth=T, attrs={"checkpoint_sha256": "ab12cd"}) as w:
        w.append(puzzles, rollout)


def grid(seed: int) -> str:
    return "".join(str(d) for d in np.random.default_rng(seed).integers(1, 10, 81))


def write_summary(path: str) -> None:
    rec.write_analysis(path, "summary", {
        "band_names": np.array(["easy", "hard"]), "band_count": np.array([4, 2]),
        "band_accuracy": np.array([0.75, 0.5]), "source_names": np.array(["src0", "src1"]),
        "source_count": np.array([3, 3]), "source_accuracy": np.array([2 / 3, 2 / 3])},
        {"n": N, "breadth": B, "depth": T, "accuracy": 2 / 3, "majority_accuracy": 0.5, "pass_at_b": 5 / 6,
         "mean_steps": 3.2, "median_steps": 3.0})


def write_all(path: str, seed: int = 0) -> None:
    """Every analysis the report knows, synthetic but well formed."""
    r = np.random.default_rng(seed)
    write_summary(path)
    rec.write_analysis(path, "scaling", {
        "depth_steps": np.arange(1, T + 1), "depth_accuracy": np.linspace(0.2, 0.7, T),
        "depth_oracle": np.linspace(0.3, 0.9, T), "breadth_values": np.array([1, 2]),
        "breadth_accuracy": np.array([0.6, 0.7]), "breadth_oracle": np.array([0.6, 0.85])})
    fpr = np.array([0.0, 0.25, 0.5, 1.0])
    med = np.geomspace(1, 1e-4, T)
    rec.write_analysis(path, "convergence", {
        "steps_axis": np.arange(1, T + 1), "residual_correct_median": med, "residual_correct_q25": med / 2,
        "residual_correct_q75": med * 2, "residual_incorrect_median": np.r_[np.nan, med[1:] * 10],
        "residual_incorrect_q25": np.r_[np.nan, med[1:] * 5], "residual_incorrect_q75": np.r_[np.nan, med[1:] * 20],
        "score_names": np.array(["logit_change", "residual"]), "auroc": np.array([0.8, np.nan]),
        "fpr_logit_change": fpr, "tpr_logit_change": np.sqrt(fpr), "fpr_residual": fpr, "tpr_residual": fpr,
        "steps": r.integers(1, T + 1, N), "rating": r.integers(1, 5000, N), "correct": r.random(N) > 0.4,
        "ending_names": np.array(["converged correct", "converged wrong", "not converged"]),
        "ending_counts": np.array([7, 3, 2]), "halt_rules": np.array(["never", "stable"]),
        "halt_never_values": np.arange(1.0, T + 1), "halt_never_mean_steps": np.arange(1.0, T + 1),
        "halt_never_accuracy": np.linspace(0.2, 0.7, T), "halt_stable_values": np.array([1.0, 2.0]),
        "halt_stable_mean_steps": np.array([3.0, 4.5]), "halt_stable_accuracy": np.array([0.6, 0.7])},
        {"spearman_rho": 0.42, "spearman_p": 0.03})
    rec.write_analysis(path, "selection", {
        "depths": np.array([1, 2, 5]), "attractor_accuracy": np.array([0.2, 0.5, 0.7]),
        "convergence_accuracy": np.array([0.2, 0.4, 0.6]), "oracle_accuracy": np.array([0.5, 0.8, 0.9])},
        {"puzzles": N})
    rec.write_analysis(path, "inner", {
        "steps": np.array([1, 4]), "median_change": np.geomspace(1e-1, 1e-3, 2 * 2 * 3).reshape(2, 2, 3)},
        {"puzzles": N})
    rec.write_analysis(path, "lyapunov", {
        "exponent": r.normal(size=(N, B)) * 0.1, "stderr": np.full((N, B), 0.01), "regime": np.ones((N, B), np.int64),
        "correct": r.random((N, B)) > 0.5, "regime_names": np.array(["contracting", "neutral", "chaotic"]),
        "regime_counts": np.array([0, N * B, 0])})
    rec.write_analysis(path, "end_states", {
        "end_state": np.zeros((N, B), np.int64), "ending_names": np.array(["attractor: correct", "no fixed point"]),
        "ending_counts": np.array([N * B, 0])})
    s = 4
    rec.write_analysis(path, "embedding", {
        "coords": r.normal(size=(N, B, s, 2)).cumsum(axis=2).astype(np.float32), "steps": np.array([0, 1, 3, 5]),
        "puzzle_index": np.arange(N), "correct": r.random((N, B)) > 0.5,
        "explained_variance": np.array([0.41, 0.22])}, {"method": "pca"})
    rec.write_analysis(path, "probes", {
        "steps": np.array([0, 1, 3, 5]), "cell_accuracy": np.array([0.3, 0.6, 0.8, 0.9]),
        "cell_accuracy_std": np.full(4, 0.03), "correct_accuracy": np.array([0.35, 0.7, 0.9, 0.97])})
    for k in range(2):
        m = 4
        eig = r.normal(size=(m, 3)) * 0.5 + 1j * r.normal(size=(m, 3)) * 0.3
        rho = np.abs(eig).max(axis=1)
        rec.write_analysis(path, f"fixed_points/p{k}", {
            "eigvals": eig, "spectral_radius": rho, "stable": rho < 1, "residual": r.random(m) * 1e-6,
            "label": np.array([0, 1, 2, 1]), "grid": np.array([grid(k * 10 + i) for i in range(m)]),
            "count": np.array([5, 2, 1, 1])}, {"puzzle_index": k})
        gy, gx = 12, 16
        labels = r.integers(-1, 3, (gy, gx))
        rec.write_analysis(path, f"basins/p{k}", {
            "fraction": np.array([0.5, 0.3, 0.15, 0.05]), "stderr": np.array([0.05, 0.04, 0.03, 0.02]),
            "attractor_label": np.array([0, 1, 2]), "attractor_grid": np.array([grid(100 + i) for i in range(3)]),
            "map_label": labels, "map_steps": r.integers(1, 30, (gy, gx)), "xs": np.linspace(-1, 2, gx),
            "ys": np.linspace(-1, 1.5, gy), "anchor_coords": np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]),
            "anchor_names": np.array(["correct", "spurious", "start"]),
            "fp_coords": np.array([[0.0, 0.0], [1.0, 0.0], [0.5, 0.5]]), "fp_stable": np.array([True, True, False])},
            {"puzzle_index": k, "samples": 256})


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("report") / "run.h5")
    write_rollout(path)
    write_all(path)
    return path


@pytest.fixture(scope="module")
def full_report(full_run: str) -> tuple[str, list[str]]:
    out = os.path.join(os.path.dirname(full_run), "report.html")
    return out, report.write_report(full_run, out)


def test_every_figure_is_built(full_run):
    with rec.open_run(full_run) as run:
        figs = report.build_figures(run)
    assert list(figs) == ALL_FIGURES
    assert all(isinstance(f, go.Figure) and len(f.data) for f in figs.values())
    traj = figs["trajectories"]
    assert len(traj.frames) == 4 and traj.layout.sliders[0].steps[-1].label == "5"
    assert all(t.x.dtype == np.float32 for t in traj.data if isinstance(t, go.Scattergl))
    assert traj.layout.xaxis.title.text == "PCA 1 (41.0% var.)"  # the variance analyze stores as an array
    maps = figs["basin_maps"]
    heatmaps = [t for t in maps.data if isinstance(t, go.Heatmap)]
    assert heatmaps and all(t.z.dtype == np.float32 for t in heatmaps)
    assert len(maps.layout.updatemenus[0].buttons) == 2
    visible = maps.layout.updatemenus[0].buttons[1].args[0]["visible"]
    assert [t.visible for t in maps.data] == [not v for v in visible]
    correct = next(t for t in heatmaps if t.name.startswith("A0"))
    assert correct.colorscale[0][1] == report.CORRECT and " ".join([grid(100)[:3], grid(100)[3:6]]) in \
        correct.hovertemplate
    names = [t.name for t in figs["roc"].data]
    assert "logit_change (AUROC 0.800)" in names and "residual (AUROC n/a)" in names
    assert "ρ = 0.42" in figs["steps_vs_rating"].layout.title.text
    assert [t.name for t in figs["halting"].data] == ["never", "stable"]
    symbols = [t.marker.symbol for t in figs["spectra"].data]
    assert {"circle", "circle-open"} <= set(symbols)
    assert len(figs["basin_stability"].data) == 2 and figs["basin_stability"].data[0].visible


def test_report_html(full_report, full_run):
    out, names = full_report
    assert names == ALL_FIGURES
    with open(out, encoding="utf-8") as fh:
        text = fh.read()
    assert len(PLOTLY_HEADER.findall(text)) == 1
    assert text.count("Plotly.newPlot(") == len(names)
    for name in names:
        assert f'id="fig-{name}"' in text
    assert "Every analysis is included" in text
    assert not [f for f in os.listdir(os.path.dirname(out)) if f.endswith(".tmp")]
    assert report.write_report(full_run, out) == names  # overwriting an existing report works


def test_missing_analyses_are_listed(tmp_path):
    path = str(tmp_path / "run.h5")
    write_rollout(path)
    write_summary(path)
    rec.write_analysis(path, "probes", {}, {"skipped_reason": "no latent states recorded (--states none)"})
    rec.write_analysis(path, "basins/p0", {}, {"skipped_reason": "puzzle 0 has a single attractor"})
    rec.write_analysis(path, "scaling", {"depth_steps": np.arange(1, T + 1)})
    out = tmp_path / "r.html"
    assert report.write_report(path, out) == ["summary"]
    text = out.read_text(encoding="utf-8")
    missing = text[text.index('id="sec-missing"'):]
    assert "no latent states recorded (--states none)" in missing
    assert "basins/p0</code>: puzzle 0 has a single attractor" in missing
    for name in ("convergence", "embedding", "fixed_points"):
        assert f"<code>{name}</code>: not computed" in missing
    assert "no &#x27;depth_accuracy&#x27; array" in missing
    assert len(PLOTLY_HEADER.findall(text)) == 1


def test_no_analysis(tmp_path):
    path = str(tmp_path / "run.h5")
    write_rollout(path)
    with rec.open_run(path) as run:
        assert report.build_figures(run) == {}
    assert report.write_report(path, tmp_path / "r.html") == []


def _chromium(args: list[str], tmp: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={tmp}", "--enable-logging=stderr", "--v=0",
             "--virtual-time-budget=15000", "--enable-unsafe-swiftshader"]
    return subprocess.run([shutil.which("chromium"), *flags, *args], capture_output=True, text=True, timeout=120)


def _png_colours(path: str) -> int:
    """Distinct byte values in the decompressed pixel stream (a blank page has only a handful)."""
    with open(path, "rb") as fh:
        data = fh.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    return len(set(zlib.decompress(idat)))


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_report_renders_in_headless_chromium(full_report, tmp_path):
    out, names = full_report
    url = "file://" + os.path.abspath(out)
    dom = _chromium(["--dump-dom", url], str(tmp_path / "profile1"))
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if ("CONSOLE" in line or "Uncaught" in line)
               and "GL Driver Message" not in line]  # the software GL driver's performance notes
    assert not console, console
    parts = re.split(r'id="fig-', dom.stdout)[1:]
    rendered = {p.split('"', 1)[0] for p in parts if "main-svg" in p.split('id="fig-', 1)[0]}
    assert rendered == set(names)
    assert 'class="gl-canvas' in dom.stdout  # WebGL traces drew
    shot = tmp_path / "shot.png"
    run = _chromium([f"--screenshot={shot}", "--window-size=1000,1600", url], str(tmp_path / "profile2"))
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    assert _png_colours(str(shot)) > 64


def test_stored_results_round_trip_through_the_run_file(tmp_path):
    path = str(tmp_path / "run.h5")
    write_rollout(path)
    r = np.random.default_rng(3)
    basins = results.PuzzleBasins(
        fraction=np.array([0.7, 0.2, 0.1]), stderr=np.array([0.05, 0.04, 0.03]), attractor_label=np.array([0, 2]),
        attractor_grid=np.array([grid(1), grid(2)]), map_label=r.integers(-1, 2, (4, 5)),
        map_steps=r.integers(1, 9, (4, 5)), xs=np.linspace(0, 1, 5), ys=np.linspace(0, 1, 4),
        anchor_coords=r.normal(size=(3, 2)), anchor_names=np.array(["a", "b", "c"]), fp_coords=r.normal(size=(3, 2)),
        fp_stable=np.array([True, True, False]), puzzle_index=4, samples=64, basin_entropy=0.31,
        boundary_basin_entropy=0.62, boundary_fraction=0.25, entropy_box=3)
    lya = results.LyapunovSurvey(exponent=r.normal(size=(N, B)), stderr=np.full((N, B), 0.01),
                                 regime=np.zeros((N, B), np.int64), correct=r.random((N, B)) > 0.5,
                                 regime_names=np.array(["contracting", "neutral"]), regime_counts=np.array([N * B, 0]),
                                 puzzle_index=np.arange(N), puzzles=N, steps=100)
    for name, res in (("basins/p0", basins), ("lyapunov", lya)):
        rec.write_analysis(path, name, res.to_arrays(), res.to_attrs())
    with rec.open_run(path) as run:
        back_basins = results.PuzzleBasins.from_result(run.read_analysis("basins/p0"))
        back_lya = results.LyapunovSurvey.from_result(run.read_analysis("lyapunov"))
    for res, back in ((basins, back_basins), (lya, back_lya)):
        for field in dataclasses.fields(res):
            want, got = getattr(res, field.name), getattr(back, field.name)
            assert np.array_equal(np.asarray(want), np.asarray(got)), field.name
    assert back_basins.puzzle_index == 4 and back_basins.entropy_box == 3 and back_lya.steps == 100


def test_family_fields_store_one_array_per_name_and_read_back(tmp_path):
    path = str(tmp_path / "run.h5")
    write_rollout(path)
    write_all(path)
    with rec.open_run(path) as run:
        conv = results.ConvergenceStudy.from_result(run.read_analysis("convergence"))
    assert list(conv.fpr) == ["logit_change", "residual"] and list(conv.halt_accuracy) == ["never", "stable"]
    np.testing.assert_array_equal(conv.tpr["logit_change"], np.sqrt([0.0, 0.25, 0.5, 1.0]))
    np.testing.assert_array_equal(conv.halt_mean_steps["stable"], [3.0, 4.5])
    arrays = conv.to_arrays()
    assert {"fpr_residual", "tpr_residual", "halt_stable_values", "halt_never_accuracy"} <= set(arrays)
    assert "fpr" not in arrays and "fpr" not in conv.to_attrs() and conv.to_attrs()["spearman_rho"] == 0.42
    del arrays["tpr_residual"]
    rec.write_analysis(path, "convergence", arrays, conv.to_attrs(), overwrite=True)
    with rec.open_run(path) as run:
        with pytest.raises(results.IncompleteResult, match="no 'tpr_residual' array"):
            results.ConvergenceStudy.from_result(run.read_analysis("convergence"))
        figures, missing = report._collect(run)
    assert "summary" in figures and not {"roc", "halting", "residual_curves"} & set(figures)
    assert ("convergence (roc)", "incomplete convergence result: no 'tpr_residual' array") in missing


def test_a_result_missing_a_needed_field_is_listed_not_drawn(tmp_path):
    path = str(tmp_path / "run.h5")
    write_rollout(path)
    rec.write_analysis(path, "selection", {"depths": np.array([1, 4]), "attractor_accuracy": np.array([0.5, 0.7])})
    rec.write_analysis(path, "end_states", {  # an older file: no per-state radii or distances
        "end_state": np.zeros((N, B), np.int64), "ending_names": np.array(["attractor: correct"]),
        "ending_counts": np.array([N * B])})
    with rec.open_run(path) as run:
        with pytest.raises(results.IncompleteResult, match="no 'convergence_accuracy' array"):
            results.RestartSelection.from_result(run.read_analysis("selection"))
        ends = results.EndStates.from_result(run.read_analysis("end_states"))
        assert ends.distance is None and ends.puzzles == 0
        figures, missing = report._collect(run)
    assert "end_states" in figures and "selection" not in figures
    assert ("selection (selection)", "incomplete selection result: no 'convergence_accuracy' array") in missing
