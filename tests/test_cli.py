"""`python -m core.train COMMAND`: the subcommands, and the flags-only spellings of before (still working, with a
one-line notice). In-process: argument errors need no subprocess."""
from __future__ import annotations

from pathlib import Path

import pytest

from core.training.runner import SUBCOMMANDS
from core.training.runner import main as train_cli
from tests.helpers import OLD_SPELLING, one_line_error


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        train_cli(["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    for command in SUBCOMMANDS:
        assert f"\n  {command}" in out, command
    with pytest.raises(SystemExit) as exc:
        train_cli([])
    assert exc.value.code == 2 and "COMMAND" in capsys.readouterr().err


def test_new_and_old_spellings_do_the_same(tmp_path: Path, capsys):
    runs = str(tmp_path / "runs")
    assert train_cli(["report", "cv", "--runs-dir", runs]) == 0
    new = capsys.readouterr()
    assert train_cli(["--cv-report", "--runs-dir", runs]) == 0
    old = capsys.readouterr()
    assert old.out.startswith(OLD_SPELLING) and "`python -m core.train report cv [ID]" in old.out
    assert old.out.split("\n", 1)[1] == new.out and "no cross-validations" in new.out and new.err == old.err == ""
    assert train_cli(["report", "grid", "--runs-dir", runs]) == 0
    assert "no grids" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["cv", "1", "--data", "x"], "cross-validation takes 3 to 10"),
    (["grid", "lr=", "--data", "x"], "lr"),
    (["score", "../x"], "no cross-validation '../x'"),
    (["promote", "nope"], "no cross-validation 'nope'"),
    (["report", "cv", "nope"], "no cross-validation 'nope'"),
])
def test_subcommands_refuse_bad_input_in_one_line(argv, message, tmp_path: Path, capsys):
    assert train_cli([*argv, "--runs-dir", str(tmp_path)]) == 2
    assert message in one_line_error(capsys)
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_a_subcommand_without_its_required_flag_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        train_cli(["run", "--data", "x"])
    assert exc.value.code == 2 and "--run-dir" in capsys.readouterr().err
