"""The layout the code keeps (issue 23): no import cycles among core's modules (the layers between core, ui and
views, and what the engine may not import, are import-linter's contracts in pyproject.toml, run by make test)."""
from __future__ import annotations

import sys

import pytest

from core.settings import PROJECT_ROOT


def import_cycles(package: str) -> list[list[str]]:
    """The groups of modules that import each other, directly or around a loop (strongly connected components
    of the runtime import graph: imports under TYPE_CHECKING are not made at run time and are left out)."""
    grimp = pytest.importorskip("grimp", reason="grimp comes with import-linter (requirements.txt)")
    sys.path.insert(0, str(PROJECT_ROOT))
    graph = grimp.build_graph(package, exclude_type_checking_imports=True)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:  # Tarjan's algorithm
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return cycles


def test_no_import_cycles_among_core_modules():
    assert import_cycles("core") == []


def test_the_cycle_finder_finds_a_cycle(tmp_path, monkeypatch):
    pkg = tmp_path / "loopy"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("from . import c\n")
    (pkg / "c.py").write_text("from . import a\n")
    (pkg / "d.py").write_text("from . import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_cycles("loopy") == [["loopy.a", "loopy.b", "loopy.c"]]


# ---- one registry per set of choices: per-option policies live on the option ------------------------------

def test_what_a_resume_may_change_and_a_grid_may_not_vary_is_declared_on_each_option():
    from core.experiment.grid import gridable_fields, why_not_gridable
    from core.training.config import resumable_fields
    assert set(resumable_fields()) == {"epochs", "patience", "log_every", "num_workers", "device", "amp",
                                       "channels_last", "compile", "name"}
    assert "how fast a run goes" in why_not_gridable("compile") and "a path" in why_not_gridable("init_from")
    assert "share their data options" in why_not_gridable("val_fraction") and why_not_gridable("lr") is None
    assert "lr" in gridable_fields() and "name" not in gridable_fields()


@pytest.mark.parametrize("flag, value, message", [("--split-seed", "-1", "below the minimum 0"),
                                                   ("--split-seed", str(2**32), "above the maximum"),
                                                   ("--val-fraction", "nan", "not a finite number"),
                                                   ("--split-mode", "random", "invalid choice")])
def test_the_data_flags_check_what_the_option_registry_declares(flag, value, message, capsys):
    import argparse

    from core.data.cli import add_data_arguments
    parser = argparse.ArgumentParser(prog="t")
    add_data_arguments(parser)
    with pytest.raises(SystemExit) as exc:
        parser.parse_args([flag, value])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert "seed of the grouped split (default: 0)" in " ".join(parser.format_help().split())  # the registry's help
    args = parser.parse_args([])
    assert (args.split_seed, args.val_fraction, args.keep_split_repeats) == (0, 0.15, False)
