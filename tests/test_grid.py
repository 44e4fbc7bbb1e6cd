"""Ablation grids (core.experiment.grid): parsing against RunConfig, every combination checked first, one split, the report."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from core.experiment import grid, jobs
from core.experiment.runs import Run, list_runs
from core.training.config import RunConfig
from core.training.runner import main as train_cli
from core.training.runner import train
from tests.helpers import app_chooses, run_page, texts, tiny, tiny_form


def base(data_dir: Path, **overrides) -> RunConfig:
    return RunConfig(data=[str(data_dir)], **{**tiny(epochs=1, max_steps_per_epoch=2, device="cpu"), **overrides})


# ---- parsing -------------------------------------------------------------------------------------------------

def test_parse_good_values_by_the_fields_type():
    assert grid.parse_axis("optimizer=adam,nadam") == grid.Axis("optimizer", ("adam", "nadam"))
    assert grid.parse_axis("--lr=1e-3, 3e-4") == grid.Axis("lr", (1e-3, 3e-4))
    assert grid.parse_axis("augment=online,official").values == ("online", "official")
    assert grid.parse_axis("amp=true,false").values == (True, False)
    assert grid.parse_axis("max-steps-per-epoch=1,2").values == (1, 2)  # a flag's spelling
    assert grid.parse_axis("transforms=hflip+vflip,rot90").values == (("hflip", "vflip"), ("rot90",))


@pytest.mark.parametrize("text, message", [
    ("optimiser=adam,nadam", "optimiser: no such option"),
    ("data=a,b", "data: cannot be varied in a grid: the runs of a grid share their data options"),
    ("split_seed=0,1", "split_seed: cannot be varied in a grid"),
    ("name=a,b", "name: cannot be varied in a grid"),
    ("device=cpu,auto", "device: cannot be varied in a grid"),
    ("optimizer=adam,adamx", "optimizer: unknown value 'adamx'"),
    ("transforms=hflip+twirl,rot90", "transforms: unknown value 'twirl'"),
    ("lr=1e-3,fast", "lr: 'fast' is not a number"),
    ("epochs=1,2.5", "epochs: '2.5' is not a whole number"),
    ("amp=true,maybe", "amp: 'maybe' is not a valid bool"),
    ("lr=1e-3,0.001", "lr: 0.001 is given twice"),
    ("optimizer=adam", "optimizer: give at least two values"),
    ("optimizer=adam,,nadam", "optimizer: an empty value"),
    ("optimizer", "write FIELD=V1,V2"),
])
def test_parse_refuses_with_a_message_naming_the_field(text, message):
    with pytest.raises(grid.GridError) as info:
        grid.parse_axis(text)
    assert message in str(info.value)
    if not message.startswith("write"):
        assert str(info.value).startswith(message.split(":")[0] + ":")  # the form puts it under that field


def test_gridable_fields_come_from_the_config_metadata():
    names = grid.gridable_fields()
    assert {"optimizer", "scheduler", "augment", "lr", "seed", "transforms", "model"} <= set(names)
    assert not {"data", "split_seed", "val_fraction", "name", "init_from", "device"} & set(names)


def test_too_many_fields_or_runs_and_a_field_given_twice(data_dir):
    axes = [grid.parse_axis(t) for t in ("optimizer=adam,nadam", "scheduler=none,cosine", "augment=none,online",
                                         "seed=0,1")]
    with pytest.raises(grid.GridError, match="at most 3 options, not 4"):
        grid.plan(base(data_dir), axes)
    big = [grid.parse_axis("seed=0,1,2,3,4"), grid.parse_axis("lr=1e-3,2e-3,3e-3,4e-3,5e-3")]
    with pytest.raises(grid.GridError, match=r"5 x 5 = 25 runs: a grid holds at most 24"):
        grid.plan(base(data_dir), big)
    with pytest.raises(grid.GridError, match=r"^30 values, 30 runs: a grid holds at most 24"):
        grid.plan(base(data_dir), [grid.parse_axis("seed=" + ",".join(map(str, range(30))))])
    with pytest.raises(grid.GridError, match=r"^seed: varied twice"):
        grid.plan(base(data_dir), [grid.parse_axis("seed=0,1"), grid.parse_axis("seed=2,3")])


def test_every_combination_is_checked_and_names_say_the_values(data_dir):
    p = grid.plan(base(data_dir, name="abl"), [grid.parse_axis("optimizer=adam,nadam"),
                                               grid.parse_axis("scheduler=step,onecycle")])
    assert len(p) == 4
    assert [c.name for c in p.configs] == ["abl-adam-step", "abl-adam-onecycle", "abl-nadam-step",
                                           "abl-nadam-onecycle"]
    assert [(c.optimizer, c.scheduler) for c in p.configs] == [("adam", "step"), ("adam", "onecycle"),
                                                               ("nadam", "step"), ("nadam", "onecycle")]
    assert {c.split_seed for c in p.configs} == {0} and {tuple(c.data) for c in p.configs} == {(str(data_dir),)}
    assert grid.run_label({"lr": 3e-4, "amp": False, "transforms": ("hflip", "vflip")}) == "lr0.0003-amp-off-hflip+vflip"


def test_an_invalid_combination_is_reported_and_nothing_is_queued(data_dir, tmp_path):
    # step_size applies only to StepLR: the onecycle runs of this grid are invalid
    axes = [grid.parse_axis("scheduler=step,onecycle")]
    with pytest.raises(grid.GridError, match=r"^step_size applies only when scheduler is step.*in the run onecycle"):
        grid.plan(base(data_dir, step_size=3), axes)
    with pytest.raises(grid.GridError, match=r"^lr: -0.1 is below the minimum"):
        grid.plan(base(data_dir), [grid.parse_axis("lr=1e-3,-0.1")])
    with pytest.raises(grid.GridError, match=r"^data: not found"):
        grid.plan(base(tmp_path / "nowhere"), axes)
    code = train_cli(["--data", str(data_dir), "--model", "simple_cnn", "--init", "scratch", "--step-size", "3",
                      "--runs-dir", str(tmp_path / "runs"), "--grid", "scheduler=step,onecycle"])
    assert code == 2 and not list_runs(tmp_path / "runs") and not grid.list_grids(tmp_path / "runs")


def test_cli_refuses_an_option_given_twice_and_a_run_dir(data_dir, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert train_cli(["--data", str(data_dir), "--optimizer", "adam", "--runs-dir", str(runs),
                      "--grid", "optimizer=adam,nadam"]) == 2
    assert "optimizer: given both as --optimizer and in --grid" in capsys.readouterr().err
    assert train_cli(["--data", str(data_dir), "--run-dir", str(tmp_path / "r"), "--grid", "seed=0,1"]) == 2
    assert "takes no --run-dir" in capsys.readouterr().err
    assert not runs.exists() and not (tmp_path / "r").exists()


# ---- running and reporting ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_cli_grid_trains_a_2x2_grid_on_one_split_and_reports_it(data_dir, tmp_path, capsys, one_thread):
    runs_dir = tmp_path / "runs"
    argv = ["--data", str(data_dir), "--model", "simple_cnn", "--init", "scratch", "--image-size", "48",
            "--batch-size", "16", "--epochs", "1", "--max-steps-per-epoch", "2", "--device", "cpu",
            "--runs-dir", str(runs_dir), "--grid", "optimizer=adam,nadam", "augment=none,online"]
    assert train_cli(argv) == 0
    out = capsys.readouterr().out
    assert out.count("[grid ") == 8 and "[grid 4/4] run optimizer=nadam, augment=online: completed, val macro-F1" in out
    runs = list_runs(runs_dir)
    assert len(runs) == 4
    configs = [RunConfig.load(r.config_file) for r in runs]
    assert sorted((c.optimizer, c.augment) for c in configs) == [("adam", "none"), ("adam", "online"),
                                                                 ("nadam", "none"), ("nadam", "online")]
    for c in configs:  # everything else equal
        assert {k: v for k, v in c.to_dict().items() if k not in ("optimizer", "augment", "name")} == \
               {k: v for k, v in configs[0].to_dict().items() if k not in ("optimizer", "augment", "name")}
    [manifest] = grid.list_grids(runs_dir)
    assert all(f"grid:{manifest['id']}" in r.notes()["tags"] for r in runs)
    assert {r.name.split("-", 2)[2] for r in runs} == {"adam-none", "adam-online", "nadam-none", "nadam-online"}

    table, split = grid.report(manifest["id"], runs_dir)
    assert list(table.columns[:4]) == ["optimizer", "augment", "run", "state"]
    assert len(table) == 4 and set(table["state"]) == {"completed"}
    assert table["split"].nunique() == 1 and "one split" in split and "4 runs that started" in split
    assert list(table["val macro-F1"]) == sorted(table["val macro-F1"], reverse=True)
    for _, row in table.iterrows():
        best = next(r for r in runs if r.name == row["run"]).best_epoch()
        assert row["val macro-F1"] == best["val_macro_f1"] and row["val accuracy"] == best["val_accuracy"]

    assert train_cli(["--grid-report", manifest["id"], "--runs-dir", str(runs_dir)]) == 0
    printed = capsys.readouterr().out
    assert "one split" in printed and "nadam" in printed and "val macro-F1" in printed
    assert train_cli(["--grid-report", "--runs-dir", str(runs_dir)]) == 0
    assert manifest["id"] in capsys.readouterr().out
    assert train_cli(["--grid-report", "nope", "--runs-dir", str(runs_dir)]) == 2


def test_report_says_when_runs_do_not_share_a_split(data_dir, tmp_path):
    runs_dir = tmp_path / "runs"
    p = grid.plan(base(data_dir), [grid.parse_axis("seed=0,1")])
    grid_id = grid._start_manifest(p, "queued", runs_dir)
    path = grid.MANIFESTS.path(grid_id, runs_dir)
    from core.experiment.runs import new_run_dir, write_json_atomic
    for i, task in enumerate(grid._tasks(grid_id, p)):
        cfg = task.config
        run = new_run_dir(cfg.name, runs_dir)
        run.save_config(cfg.to_dict())
        run.update_status(state="completed", best={"kind": "epoch", "epoch": 1, "val_macro_f1": 0.5 + i / 10,
                                                   "val_balanced_accuracy": 0.4, "val_accuracy": 0.8})
        write_json_atomic(run.splits_file, {"val": {"files": [f"a{i}.jpg"]}, "test": {"files": []}})
        grid.MANIFESTS.record(path, run, task)
    table, split = grid.report(grid_id, runs_dir)
    assert "do NOT share one split" in split
    assert list(table["seed"]) == [1, 0] and list(table["val macro-F1"]) == [0.6, 0.5]
    import shutil
    shutil.rmtree(runs_dir / table["run"][0])  # a run deleted since: its row stays, saying so
    table, split = grid.report(grid_id, runs_dir)
    assert list(table["state"]) == ["completed", "deleted"] and "one split" in split


@pytest.mark.slow
def test_cli_queue_launches_a_2x2_grid_as_jobs(data_dir, tmp_path, capsys):
    runs_dir = tmp_path / "runs"
    assert train_cli(["--data", str(data_dir), "--model", "simple_cnn", "--init", "scratch", "--image-size", "48",
                      "--epochs", "1", "--max-steps-per-epoch", "2", "--device", "cpu", "--runs-dir", str(runs_dir),
                      "--queue", "--grid", "optimizer=adam,nadam", "--grid", "scheduler=step,none"]) == 0
    [manifest] = grid.list_grids(runs_dir)
    grid_id, runs = manifest["id"], [Run(runs_dir / e["run"]) for e in manifest["runs"]]
    assert f"grid {grid_id}: queued 4 runs" in capsys.readouterr().out
    try:
        assert len(runs) == 4 and {r.name for r in list_runs(runs_dir)} == {r.name for r in runs}
        assert {jobs.job_state(r) for r in runs} <= {"queued", "running"}
        assert sorted((r.config()["optimizer"], r.config()["scheduler"]) for r in runs) == \
               [("adam", "none"), ("adam", "step"), ("nadam", "none"), ("nadam", "step")]
        assert all(r.notes()["tags"] == [f"grid:{grid_id}"] for r in runs)
        table, _split = grid.report(grid_id, runs_dir)
        assert len(table) == 4 and set(table["run"]) == {r.name for r in runs}
    finally:
        for r in runs:
            jobs.cancel(r)
        deadline = time.time() + 120
        while any(r.trainer_alive() for r in runs) and time.time() < deadline:
            time.sleep(0.5)
    assert {jobs.job_state(r) for r in runs} <= {"cancelled", "completed"}


# ---- the Train page's grid -----------------------------------------------------------------------------------

@pytest.fixture()
def app_data(data_dir):
    """The synthetic data chosen in the app, and the app's runs folder left as it was found."""
    with app_chooses(data_dir, grid.list_grids, grid.grids_dir) as chosen:
        yield chosen
    from core.settings import RUNS_DIR
    assert Path(RUNS_DIR).is_dir()


@pytest.mark.slow
def test_train_page_grid_refuses_bad_values_at_the_field_then_queues_a_2x2_grid(app_data):
    before = {r.name for r in list_runs()}
    at = run_page("views/train.py")
    tiny_form(at)
    at.multiselect(key="grid_fields").set_value(["lr"]).run()
    at.text_input(key="grid_values_lr").input("1e-3, abc").run()
    assert any("lr: 'abc' is not a number" in e.value for e in at.error)  # at the field, before any click
    at.button(key="grid_launch").click().run()
    assert "Grid not launched: lr: 'abc' is not a number" in texts(at)
    at.text_input(key="grid_values_lr").input("1e-3, -1").run()  # parsed, but not a valid run
    assert any("lr: -1.0 is below the minimum" in e.value and "in the run lr-1.0" in e.value for e in at.error)
    at.button(key="grid_launch").click().run()
    assert "Grid not launched" in texts(at) and at.text_input(key="grid_values_lr").value == "1e-3, -1"
    at.switch_page("views/home.py").run()  # leaving the page keeps the grid as typed (browser walk)
    at.switch_page("views/train.py").run()
    assert at.multiselect(key="grid_fields").value == ["lr"]
    assert at.text_input(key="grid_values_lr").value == "1e-3, -1"
    assert {r.name for r in list_runs()} == before and not at.exception

    at.multiselect(key="grid_fields").set_value(["optimizer", "scheduler"]).run()
    assert "Give at least two values." in texts(at) and not at.error  # a hint until values are picked
    at.multiselect(key="grid_values_optimizer").set_value(["adam", "nadam"]).run()
    at.multiselect(key="grid_values_scheduler").set_value(["step", "onecycle"]).run()
    assert "**4 runs**" in texts(at) and "`nadam-onecycle`" in texts(at)
    at.text_input(key="grid_cv_folds").input("1").run()  # refused folds: no count beside the refusal
    assert "takes 3 to 10" in texts(at) and "**4 runs**" not in texts(at) and at.button(key="grid_launch").label == \
        "Launch grid"
    at.text_input(key="grid_cv_folds").input("0").run()
    assert at.button(key="grid_launch").label == "Launch grid (4 runs)"
    at.button(key="grid_launch").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    new = [r for r in list_runs() if r.name not in before]
    assert len(new) == 4 and {(r.config()["optimizer"], r.config()["scheduler"]) for r in new} == \
           {("adam", "step"), ("adam", "onecycle"), ("nadam", "step"), ("nadam", "onecycle")}
    grid_id = at.session_state["grid_shown"]
    assert all(r.notes()["tags"] == [f"grid:{grid_id}"] for r in new)
    table = next(d.value for d in at.dataframe if "val macro-F1" in d.value.columns)
    assert set(table["run"]) == {r.name for r in new} and list(table.columns[:2]) == ["optimizer", "scheduler"]


@pytest.mark.slow
def test_grid_results_open_the_runs_in_compare(app_data, one_thread):
    p = grid.plan(base(app_data), [grid.parse_axis("seed=0,1")])
    grid_id, code = grid.run_in_process(p, train, say=lambda line: None)
    assert code == 0
    names = [e["run"] for e in grid.load_manifest(grid_id)["runs"]]
    at = run_page("views/train.py")
    at.selectbox(key="grid_shown").set_value(grid_id).run()
    table = next(d.value for d in at.dataframe if "val macro-F1" in d.value.columns)
    assert set(table["state"]) == {"completed"} and "One split: the same data options" in texts(at)
    at.button(key="grid_compare").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert sorted(at.multiselect[0].value) == sorted(names)  # Compare, with the grid's runs picked
    assert "seed" in at.table[0].value.index  # the setting that differs


@pytest.mark.parametrize("manifest, message", [
    ({"id": 7, "runs": []}, "is not its file name"), ({"id": "g1", "runs": [{"run": ".."}]}, "runs is not a list"),
    ({"id": "g1", "runs": [], "cv_folds": "x"}, "cv_folds 'x'"), ({"id": "g1", "fields": "a", "runs": []}, "fields")])
def test_a_hand_edited_grid_manifest_is_refused_or_skipped_by_name(tmp_path, capsys, manifest, message):
    """Issue 33, item 15: a numeric id, a run outside the folder, a bad field: one line, no traceback."""
    folder = tmp_path / ".grids"
    folder.mkdir()
    (folder / "g1.json").write_text(json.dumps(manifest))
    assert train_cli(["--grid-report", "--runs-dir", str(tmp_path)]) == 0
    assert "skipped: g1.json: " in capsys.readouterr().err
    assert train_cli(["--grid-report", "g1", "--runs-dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
