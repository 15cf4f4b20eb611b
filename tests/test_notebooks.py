"""Notebooks (notebooks/*.ipynb): stored without outputs, and each one runs top to bottom at the tiny size.

The notebooks read their sizes and paths from environment variables: ``ATTRACTORLAB_NB_SIZE=tiny``, a tiny
random-weight checkpoint built here (``ATTRACTORLAB_NB_CHECKPOINT``) and a temporary output folder
(``ATTRACTORLAB_NB_OUT_DIR``), so the tests depend neither on the shipped model nor on training time.
"""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest
import torch
from nbclient import NotebookClient

from attractorlab import checkpoint
from attractorlab.model import EquilibriumReasoner, ReasonerConfig, trm_config

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
PLOTLY_MIME = "application/vnd.plotly.v1+json"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random tiny model rescaled to contract (weak layers, strong input), so it has attractors to find."""
    torch.manual_seed(0)
    model = EquilibriumReasoner(ReasonerConfig(hidden_size=8, expansion=1.0, H_cycles=1, L_cycles=1, L_layers=1))
    with torch.no_grad():
        for p in model.layers.parameters():
            p.mul_(0.3)
        model.embed_tokens.weight.mul_(30.0)
    path = tmp_path_factory.mktemp("nb") / "tiny.pt"
    checkpoint.save(model, path)
    trm = EquilibriumReasoner(trm_config(hidden_size=8, expansion=1.0, H_cycles=1, L_cycles=1, L_layers=1))
    trm.load_state_dict({**model.state_dict(), "H_init": trm.H_init, "L_init": trm.L_init})  # its TRM twin
    checkpoint.save(trm, path.with_name("tiny_trm.pt"))
    maze = EquilibriumReasoner(ReasonerConfig(task="maze11", hidden_size=8, expansion=1.0, H_cycles=1, L_cycles=1,
                                              L_layers=1))
    with torch.no_grad():  # contracting in the same way: the maze notebook's fixed points exist
        for p in maze.layers.parameters():
            p.mul_(0.3)
        maze.embed_tokens.weight.mul_(30.0)
    checkpoint.save(maze, path.with_name("tiny_maze.pt"))
    for step in (1, 2):  # two snapshots of a "training run" for the landscape notebook
        checkpoint.save(model, path.with_name(f"tiny.step{step:07d}.pt"), meta={"step": step})
        with torch.no_grad():
            model.embed_tokens.weight.mul_(1.1)
    return path


def test_the_notebooks_exist() -> None:
    assert [p.name for p in NOTEBOOKS] == ["01_quickstart.ipynb", "02_fixed_points_and_spectra.ipynb",
                                           "03_basins.ipynb", "04_convergence_vs_correctness.ipynb",
                                           "05_maze_attractors.ipynb", "06_landscape_across_training.ipynb",
                                           "07_trm_vs_eqr_attractors.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown" and "Question" in nb.cells[0].source
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert "ATTRACTORLAB_NB_SIZE" in code[0].source
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: a cell has stored outputs"
        assert "def " not in cell.source and "class " not in cell.source, f"{path.name}: logic in a notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_at_tiny_size(path: Path, tiny_checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ATTRACTORLAB_NB_SIZE", "tiny")
    monkeypatch.setenv("ATTRACTORLAB_NB_CHECKPOINT", str(tiny_checkpoint))
    monkeypatch.setenv("ATTRACTORLAB_NB_MAZE_CHECKPOINT", str(tiny_checkpoint.with_name("tiny_maze.pt")))
    monkeypatch.setenv("ATTRACTORLAB_NB_TRM_CHECKPOINT", str(tiny_checkpoint.with_name("tiny_trm.pt")))
    monkeypatch.setenv("ATTRACTORLAB_NB_OUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("ATTRACTORLAB_NB_SNAPSHOTS", str(tiny_checkpoint.with_name("tiny.step*.pt")))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    assert any(PLOTLY_MIME in out.get("data", {}) for out in outputs), f"{path.name} shows no Plotly figure"
    assert seconds < 120, f"{path.name} took {seconds:.0f} s at the tiny size"
