"""The command line: every sub-command and every flag documented; clean errors."""

import argparse

import pytest

from attractorlab.cli import build_parser, main


def test_every_subcommand_and_flag_has_help():
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subs.choices) == {"train", "solve", "analyze", "demo", "import-eqr", "export-dataset", "landscape"}
    for name, sub in subs.choices.items():
        for action in sub._actions:
            if action.dest != "help":
                assert action.help, f"{name} {action.option_strings or action.dest} has no help text"


def test_help_and_version_exit_cleanly(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0 and "solve" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and "attractorlab" in capsys.readouterr().out


def test_bad_thread_count_is_a_clear_error(tmp_path, capsys):
    assert main(["solve", "--threads", "0", "--out", str(tmp_path / "r.h5")]) == 2
    assert "--threads" in capsys.readouterr().err
