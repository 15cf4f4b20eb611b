"""Probe studies (probes/*.py): each script runs on a tiny recorded run, prints its table and writes its figure.

The run comes from a random-weight tiny model rescaled so that its outer step contracts (one attractor per
puzzle, reached in a few steps). Half of the puzzles are blank grids whose "solution" is the
model's own answer, so the run holds correct and incorrect rollouts and every statistic is defined.
"""

from __future__ import annotations

import argparse
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch

from attractorlab import checkpoint, recording, sudoku
from attractorlab.model import EquilibriumReasoner, ReasonerConfig
from attractorlab.rollout import RolloutConfig
from attractorlab.solve import solve_puzzles as solve

PROBES = Path(__file__).resolve().parents[1] / "probes"
DEPTH = 12
SCRIPTS = ("when_decodable", "residual_vs_halting", "basin_size_vs_difficulty", "breadth_finds_basins",
           "trm_vs_eqr_attractors")


def tiny_model() -> EquilibriumReasoner:
    torch.manual_seed(0)
    model = EquilibriumReasoner(ReasonerConfig(hidden_size=8, expansion=1.0, H_cycles=1, L_cycles=1, L_layers=1))
    with torch.no_grad():  # weak layers, strong input injection: a contraction, one attractor per puzzle
        for p in model.layers.parameters():
            p.mul_(0.3)
        model.embed_tokens.weight.mul_(30.0)
    return model


def labelled_puzzles(model: EquilibriumReasoner, cfg: RolloutConfig, path: Path) -> sudoku.PuzzleSet:
    """Real puzzles (odd rows) and blank grids labelled with the model's own final answer (even rows)."""
    puzzles = sudoku.generate(8, seed=3, difficulty="mixed")
    own = np.arange(len(puzzles)) % 2 == 0
    tokens = np.where(own[:, None], sudoku.BLANK, puzzles.tokens).astype(np.uint8)
    unlabelled = sudoku.PuzzleSet(tokens, np.where(own[:, None], 0, puzzles.solution), puzzles.source,
                                  puzzles.rating)
    solve(model, unlabelled, cfg, str(path), overwrite=True, progress=False)
    with recording.open_run(path) as run:
        answer = run.rollout.pred[:, 0, -1]
    return sudoku.PuzzleSet(tokens, np.where(own[:, None], answer, puzzles.solution), puzzles.source,
                            puzzles.rating)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("probes")
    model = tiny_model()
    ckpt = folder / "tiny.pt"
    checkpoint.save(model, ckpt)
    cfg = RolloutConfig(depth=DEPTH, breadth=3, seed=0)
    puzzles = labelled_puzzles(model, cfg, folder / "unlabelled.h5")
    attrs = {"checkpoint_path": str(ckpt), "checkpoint_sha256": checkpoint.file_sha256(ckpt)}
    run, scalars = folder / "run.h5", folder / "scalars.h5"
    solve(model, puzzles, cfg, str(run), states="all", project=4, attrs=attrs, progress=False)
    solve(model, puzzles, cfg, str(scalars), attrs=attrs, progress=False)
    with recording.open_run(run) as r:
        final = r.rollout.correct[:, :, -1]
        assert final.any() and not final.all()
    return {"checkpoint": str(ckpt), "run": str(run), "scalars": str(scalars)}


def script(name: str) -> dict:
    return runpy.run_path(str(PROBES / f"{name}.py"))


def check_output(out: str, figure: Path) -> None:
    assert f"figure: {figure}" in out
    text = figure.read_text()
    assert "<script src=" not in text and len(text) > 1_000_000  # offline: plotly.js inlined, nothing fetched


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_flag_has_help(name: str) -> None:
    parser: argparse.ArgumentParser = script(name)["build_parser"]()
    assert parser.description
    for action in parser._actions:
        assert action.help, f"{name}: {action.option_strings} has no help"


def test_when_decodable(files, tmp_path, capsys) -> None:
    assert script("when_decodable")["main"](["--run", files["run"], "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "probe acc" in out and "readout commits" in out and "lead" in out
    assert any(line.startswith(f"{DEPTH:>5} ") for line in out.splitlines())  # a row for the last step
    check_output(out, tmp_path / "when_decodable.html")


def test_when_decodable_needs_states(files, tmp_path, capsys) -> None:
    assert script("when_decodable")["main"](["--run", files["scalars"], "--out-dir", str(tmp_path)]) == 2
    assert "--states all" in capsys.readouterr().err


@pytest.mark.parametrize("selected", [False, True])
def test_residual_vs_halting(files, tmp_path, capsys, selected: bool) -> None:
    argv = ["--run", files["scalars"], "--out-dir", str(tmp_path), "--bootstrap", "40"] + ["--selected"] * selected
    assert script("residual_vs_halting")["main"](argv) == 0
    out = capsys.readouterr().out
    assert "final_residual" in out and "halt_logit" in out and "residual - halt_logit" in out and "->" in out
    check_output(out, tmp_path / "residual_vs_halting.html")


def test_basin_size_vs_difficulty(files, tmp_path, capsys) -> None:
    argv = ["--run", files["run"], "--checkpoint", files["checkpoint"], "--out-dir", str(tmp_path),
            "--n-puzzles", "4", "--restarts", "2", "--samples", "6", "--max-steps", "24"]
    assert script("basin_size_vs_difficulty")["main"](argv) == 0
    out = capsys.readouterr().out
    assert "basin(correct)" in out and "Spearman" in out
    check_output(out, tmp_path / "basin_size_vs_difficulty.html")


def test_breadth_finds_basins(files, tmp_path, capsys) -> None:
    argv = ["--run", files["run"], "--checkpoint", files["checkpoint"], "--out-dir", str(tmp_path),
            "--n-puzzles", "2", "--max-steps", "24"]
    assert script("breadth_finds_basins")["main"](argv) == 0
    out = capsys.readouterr().out
    assert "pass@b" in out and "distinct attractors" in out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["1"], ["2"], ["3"])]
    assert [row[0] for row in rows] == ["1", "2", "3"]
    assert float(rows[0][1]) == 1.0  # one restart reaches one answer
    check_output(out, tmp_path / "breadth_finds_basins.html")


def test_trm_vs_eqr_attractors_on_a_contraction(files, tmp_path, capsys) -> None:
    """The tiny model contracts: one attractor per puzzle that every restart and basin sample reaches; it is the
    correct one exactly for the half of the puzzles labelled with the model's own answer."""
    from attractorlab.model import trm_config

    eqr = checkpoint.load(files["checkpoint"])
    trm = EquilibriumReasoner(trm_config(**{k: v for k, v in eqr.config.to_dict().items()
                                            if k not in ("lambda_", "noise_scale", "initial_state")}))
    trm.load_state_dict({**eqr.state_dict(), "H_init": trm.H_init, "L_init": trm.L_init})
    checkpoint.save(trm, tmp_path / "trm.pt")
    argv = ["--checkpoints", str(tmp_path / "trm.pt"), files["checkpoint"], "--names", "trm", "eqr",
            "--run", files["run"], "--n-puzzles", "4", "--restarts", "2", "--samples", "4", "--max-steps", "24",
            "--depths", "1,4", "--n-depth", "8", "--out-dir", str(tmp_path)]
    assert script("trm_vs_eqr_attractors")["main"](argv) == 0
    out = capsys.readouterr().out
    rows = {line[:45].strip(): line[45:].split() for line in out.splitlines() if "+-" in line}
    # columns: trm, trm + test-time noise (noisy orbits, then their noise-free continuation), eqr
    assert "trm + test-time noise 0.01" in out and "eqr + test-time" not in out
    for col in (3, 6):  # a contraction: the noisy orbits still end in the one attractor
        assert rows["restarts at a stable fixed point"][col:col + 3] == ["1.000", "+-", "0.000"]
        assert rows["distinct attractors per puzzle"][col:col + 3] == ["1.000", "+-", "0.000"]
        assert rows["correct attractor found"][col] == "0.500"
        assert rows["basin stability of the correct attractor"][col] == "0.500"
    check_output(out, tmp_path / "trm_vs_eqr_attractors.html")
