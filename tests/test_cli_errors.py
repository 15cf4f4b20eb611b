"""Bad input on the command line: one line on stderr, exit code 2, checked before the work, and no lost files."""

import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from attractorlab import analyze, checkpoint, cli, recording, solve, train
from attractorlab.cli import main
from attractorlab.errors import InputError, OutputError
from attractorlab.model import EquilibriumReasoner, ReasonerConfig
from attractorlab.recording.files import error_detail
from attractorlab.rollout import RolloutConfig
from attractorlab.tasks.sudoku import decode, generate, givens_conflict
from attractorlab.tasks.sudoku_csv import load_csv

QUIET = ["--no-progress"]


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    model = EquilibriumReasoner(ReasonerConfig(hidden_size=16, expansion=1.0, H_cycles=1, L_cycles=1, L_layers=1))
    path = tmp_path / "model.pt"
    checkpoint.save(model.eval(), path)
    return path


def one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def small_solve(ckpt, out, *extra: str) -> list[str]:
    return ["solve", str(ckpt), "--generate", "2", "--difficulty", "singles", "--depth", "2", "--breadth", "1",
            "--out", str(out), *QUIET, *extra]


def test_solve_names_a_directory_as_a_directory(ckpt, tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    assert main(small_solve(ckpt, folder)) == 2
    one_line_error(capsys, "is a directory")
    assert main(small_solve(ckpt, folder, "--overwrite")) == 2
    one_line_error(capsys, "is a directory")
    assert main(["solve", str(folder), "--out", str(tmp_path / "r.h5"), *QUIET]) == 2
    one_line_error(capsys, "is a directory, not a checkpoint file")
    assert not (tmp_path / "r.h5").exists()


@pytest.mark.parametrize("seed", [str(2**70), "-1"])
def test_seed_out_of_range_is_refused_before_any_file_changes(ckpt, tmp_path, capsys, seed):
    run = tmp_path / "run.h5"
    assert main(small_solve(ckpt, run)) == 0
    before = run.read_bytes()
    capsys.readouterr()
    assert main(small_solve(ckpt, run, "--overwrite", "--seed", seed)) == 2
    one_line_error(capsys, "--seed must be an integer in [0, 4294967295]")
    assert run.read_bytes() == before
    with pytest.raises(InputError, match="seed"):
        RolloutConfig(seed=2**63)
    with pytest.raises(InputError, match="seed"):
        train.TrainConfig.from_preset("tiny", seed=-3)


def test_a_failed_overwrite_keeps_the_old_run(ckpt, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run.h5"
    assert main(small_solve(ckpt, run)) == 0
    before = run.read_bytes()

    def fail(*args, **kwargs):
        raise InputError("the first batch failed")

    monkeypatch.setattr(solve, "rollout", fail)
    capsys.readouterr()
    assert main(small_solve(ckpt, run, "--overwrite", "--seed", "3")) == 2
    one_line_error(capsys, "the first batch failed")
    assert run.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["model.pt", "run.h5"]
    monkeypatch.undo()
    assert main(small_solve(ckpt, run, "--overwrite", "--seed", "3", "--depth", "3")) == 0
    with recording.open_run(run) as r:
        assert r.n == 2 and r.depth == 3


def test_uncreatable_solve_output_says_so_not_disk_space(ckpt, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(small_solve(ckpt, blocker / "sub" / "r.h5")) == 2
    one_line_error(capsys, "cannot create the directory")


def test_analyze_checks_the_report_path_before_the_analyses(ckpt, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run.h5"
    assert main(small_solve(ckpt, run)) == 0
    monkeypatch.setattr(analyze, "analyze", lambda *a, **k: pytest.fail("the analyses ran"))
    folder = tmp_path / "folder"
    folder.mkdir()
    (tmp_path / "file").write_text("x")
    capsys.readouterr()
    for out, needle in ((folder, "is a directory"), (tmp_path / "file" / "r.html", "cannot create the directory")):
        assert main(["analyze", str(run), "--out", str(out), *QUIET]) == 2
        one_line_error(capsys, needle)
    assert main(["analyze", str(run), "--only", " , ", *QUIET]) == 2
    one_line_error(capsys, "--only needs at least one analysis")


def test_report_writer_turns_os_errors_into_one_line(ckpt, tmp_path, monkeypatch):
    from attractorlab import report

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OutputError, match=r"cannot write the report .*\(Permission denied\)"):
        report.write_html("<html></html>", tmp_path / "r.html")
    assert os.listdir(tmp_path) == ["model.pt"]  # the temporary file is gone


def test_train_guards_an_existing_checkpoint(tmp_path, capsys, monkeypatch):
    out = tmp_path / "trained.pt"
    out.write_bytes(b"a trained checkpoint")
    monkeypatch.setattr(train, "load_data", lambda *a: pytest.fail("training started"))
    assert main(["train", "--preset", "tiny", "--out", str(out), *QUIET]) == 2
    one_line_error(capsys, "exists: pass --resume", "--overwrite")
    assert out.read_bytes() == b"a trained checkpoint"
    assert main(["train", "--resume", "--overwrite", "--out", str(out)]) == 2
    one_line_error(capsys, "exclude each other")
    assert main(["train", "--resume", "--out", str(tmp_path / "missing.pt"), "--n-train", "8"]) == 2
    one_line_error(capsys, "cannot resume", "not found")
    folder = tmp_path / "folder"
    folder.mkdir()
    assert main(["train", "--preset", "tiny", "--out", str(folder), *QUIET]) == 2
    one_line_error(capsys, "is a directory")


@pytest.mark.parametrize("flags, needle", [
    (["--weight-decay", "nan"], "weight_decay"), (["--lr", "inf"], "finite lr"), (["--grad-clip", "-1"], "grad_clip"),
    (["--eval-depths", "0,4"], "eval_depths"), (["--noise-scale", "nan"], "noise_scale"),
    (["--halt-exploration-prob", "nan"], "halt_exploration_prob"), (["--expansion", "inf"], "expansion"),
])
def test_train_refuses_non_finite_and_out_of_range_settings(tmp_path, capsys, monkeypatch, flags, needle):
    monkeypatch.setattr(train, "load_data", lambda *a: pytest.fail("training started"))
    assert main(["train", "--preset", "tiny", "--out", str(tmp_path / "x.pt"), *flags, *QUIET]) == 2
    one_line_error(capsys, needle)


def test_a_malformed_depth_list_names_its_format(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--eval-depths", "abc", "--out", str(tmp_path / "x.pt")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "comma-separated integers" in err and "<lambda>" not in err


def test_conflicting_givens_are_rejected_when_the_file_is_read(tmp_path):
    p = generate(3, seed=2, difficulty="singles")
    assert not givens_conflict(p.tokens).any() and not givens_conflict(p.solution + 1).any()
    bad = "11" + "." * 79  # two 1s in the first row, no answer given
    csv = tmp_path / "bad.csv"
    csv.write_text(f"source,question,answer,rating\nx,{bad},,\n")
    with pytest.raises(InputError, match=r"bad.csv:2: question repeats a given digit"):
        load_csv(csv)
    plain = tmp_path / "bad.txt"
    plain.write_text(bad + "\n" + "." * 81 + "\n")
    with pytest.raises(InputError, match=r"bad.txt:1: question repeats a given digit"):
        load_csv(plain)
    kept = load_csv(plain, skip_invalid=True)
    assert len(kept) == 1 and kept.skipped == 1
    box = np.ones((1, 81), np.uint8)  # blanks, then the same digit twice in the top-left box only
    box[0, [0, 10]] = 6
    column = np.ones((1, 81), np.uint8)
    column[0, [4, 76]] = 9
    assert givens_conflict(np.concatenate([box, column])).tolist() == [True, True]


def test_unanswered_puzzles_say_not_graded(ckpt, tmp_path, capsys):
    plain = tmp_path / "puzzles.txt"
    plain.write_text("\n".join(decode(generate(2, seed=1, difficulty="singles").tokens)) + "\n")
    assert main(["solve", str(ckpt), "--data", str(plain), "--depth", "2", "--breadth", "1",
                 "--out", str(tmp_path / "r.h5"), *QUIET]) == 0
    text = capsys.readouterr().out
    assert "none with a known answer: nothing graded" in text and "accuracy (select)  n/a" in text
    assert not re.search(r"\bnan\b", text)


def test_messages_are_one_line_and_sigterm_unwinds(monkeypatch, capsys):
    def multi_line(args):
        raise InputError("first line\n  second line")

    def terminated(args):
        os.kill(os.getpid(), signal.SIGTERM)
        pytest.fail("SIGTERM did not stop the command")

    before = signal.getsignal(signal.SIGTERM)
    for runner, code in ((multi_line, 2), (terminated, 128 + signal.SIGTERM)):
        monkeypatch.setitem(cli.COMMANDS, "export-dataset", (*cli.COMMANDS["export-dataset"][:2], runner))
        assert main(["export-dataset", "--generate", "1", "--out", "x"]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["attractorlab export-dataset: error: first line second line",
                   "attractorlab export-dataset: terminated"]
    assert signal.getsignal(signal.SIGTERM) is before


def test_hdf5_errors_show_the_systems_reason():
    err = OSError("Unable to create file (unable to open file: name = 'x.h5', errno = 28, error message = "
                  "'No space left on device', flags = 13, o_flags = 242)")
    assert error_detail(err) == "No space left on device"
    assert error_detail(OSError("Unable to open file (truncated file: eof = 96)")) == "truncated file: eof = 96"


def test_landscape_checks_its_figure_path_first(ckpt, tmp_path, capsys, monkeypatch):
    from attractorlab import landscape

    monkeypatch.setattr(landscape, "track", lambda *a, **k: pytest.fail("the landscape was computed"))
    folder = tmp_path / "folder"
    folder.mkdir()
    assert main(["landscape", str(ckpt), "--out", str(folder), *QUIET]) == 2
    one_line_error(capsys, "is a directory")
    assert Path(folder).is_dir()
    monkeypatch.undo()
    for flag in ("--samples", "--restarts", "--max-steps", "--depth"):
        assert main(["landscape", str(ckpt), "--generate", "1", "--out", str(tmp_path / "l.html"), flag, "0",
                     *QUIET]) == 2
        one_line_error(capsys, f"{flag[2:].replace('-', '_')} must be a positive integer, got 0")


def test_small_runs_skip_the_probes_and_small_basin_samples_are_refused(ckpt, tmp_path, capsys):
    run = tmp_path / "run.h5"
    assert main(small_solve(ckpt, run, "--states", "all")) == 0
    assert main(["analyze", str(run), "--only", "probes", "--no-report", *QUIET]) == 0
    assert "probes are cross-validated over puzzles: they need at least 3 puzzles, the run has 2" in \
        capsys.readouterr().out
    with pytest.raises(InputError, match="basin_samples must be >= 3"):
        analyze.AnalyzeOptions(basin_samples=2)


@pytest.mark.parametrize("flags, needle", [(["--n-dynamics", "0"], "--n-dynamics"), (["--grid", "0"], "--grid"),
                                           (["--basin-samples", "2"], "basin_samples"), (["--depth", "0"], "depth")])
def test_demo_checks_its_settings_before_the_run(tmp_path, capsys, monkeypatch, flags, needle):
    monkeypatch.setattr(checkpoint, "load", lambda *a, **k: pytest.fail("the demo started"))
    assert main(["demo", "--out-dir", str(tmp_path / "d"), *flags, *QUIET]) == 2
    one_line_error(capsys, needle)
