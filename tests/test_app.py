"""Every page under Streamlit's AppTest, with and without data and runs; widgets drive core."""
from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from core.checkpoint import read_checkpoint
from core.experiment import jobs
from core.experiment.runs import Run, list_runs
from core.models import default_cam_layer
from core.settings import APP_STATE_FILE, DEFAULT_CHECKPOINT, PROJECT_ROOT, RUNS_DIR
from core.training.config import RunConfig
from core.training.runner import train
from tests import synthetic
from tests.helpers import button, run_page, texts, tiny
from ui import appstate

PAGES = ["views/dataset.py", "views/train.py", "views/evaluate.py", "views/explain.py", "views/compare.py"]
@pytest.fixture()
def no_data(monkeypatch):
    """A fresh clone: no data chosen, no runs, no shared data folder."""
    Path(APP_STATE_FILE).write_text(json.dumps({"data_paths": []}))
    monkeypatch.setattr("ui.appstate.SHARED_DATA_DIR", Path("/nonexistent"))
    yield
    Path(APP_STATE_FILE).unlink(missing_ok=True)


@pytest.fixture(scope="module")
def with_runs(tmp_path_factory):
    """A synthetic data set chosen in the app, and two finished runs to look at."""
    data = synthetic.write_folder(tmp_path_factory.mktemp("app-data"),
                                  synthetic.official_files("3.2", n_obs=12, per_obs=6, missing=0))
    Path(APP_STATE_FILE).write_text(json.dumps({"data_paths": [str(data)]}))
    for name, opt in (("a-adamw", "adamw"), ("b-sgd", "sgd")):
        cfg = RunConfig(data=[str(data)], model="simple_cnn", init="scratch", image_size=48, epochs=2, batch_size=16,
                        optimizer=opt, name=name).validate()
        run = Run(Path(RUNS_DIR) / f"20260101-00000{len(list_runs())}-{name}")
        run.path.mkdir(parents=True)
        cfg.save(run.config_file)
        assert train(cfg, run) == 0
    yield data
    Path(APP_STATE_FILE).unlink(missing_ok=True)


def test_home_and_pages_without_data_or_runs(no_data):
    at = run_page("app.py")
    assert "HiRISE Studio" in at.title[0].value
    assert "No data set chosen" in texts(at)
    for page in PAGES:
        at = run_page(page)
    at = run_page("views/dataset.py")
    assert "Choose a data source" in texts(at)


@pytest.mark.parametrize("typed, message", [("NOWHERE", "not found"),
                                            ("/a" * 3000, "not a usable path (File name too long)"),
                                            ("/tmp/\x00x", "`/tmp/\\x00x`: not a usable path (embedded null byte)")])
def test_dataset_page_rejects_a_missing_or_impossible_path(no_data, tmp_path, typed, message):
    at = run_page("views/dataset.py")
    at.text_area[0].input(str(tmp_path / "nowhere") if typed == "NOWHERE" else typed)
    button(at, "Use these sources").click().run()
    assert message in texts(at) and "Nothing was changed" in texts(at) and not at.exception
    assert json.loads(Path(APP_STATE_FILE).read_text())["data_paths"] == []  # nothing changed


@pytest.mark.parametrize("entry, message", [("", "Give at least one folder or zip"),
                                            ("FILE", "is neither a folder nor a zip"),
                                            ("EMPTY_DIR", "no HiRISE data found")])
def test_dataset_page_refuses_what_it_cannot_read_before_saving(no_data, tmp_path, entry, message):
    (tmp_path / "notes.txt").write_text("not data")
    (tmp_path / "empty").mkdir()
    typed = {"": "", "FILE": str(tmp_path / "notes.txt"), "EMPTY_DIR": str(tmp_path / "empty")}[entry]
    at = run_page("views/dataset.py")
    at.text_area[0].input(typed)
    button(at, "Use these sources").click().run()
    assert message in texts(at) and "Nothing was changed" in texts(at) and not at.exception
    assert json.loads(Path(APP_STATE_FILE).read_text())["data_paths"] == []


def test_dataset_page_names_every_bad_line_not_the_first_only(no_data, tmp_path):
    """The walk: a missing path beside an existing file that is not data named only the first."""
    (tmp_path / "notes.txt").write_text("not data")
    at = run_page("views/dataset.py")
    at.text_area[0].input(f"{tmp_path / 'notes.txt'}\n{tmp_path / 'nowhere'}")
    button(at, "Use these sources").click().run()
    shown = texts(at)
    assert "nowhere`: not found" in shown and "is neither a folder nor a zip" in shown and not at.exception


@pytest.mark.parametrize("typed, message", [("-5", "-5 is outside 0 to 4,294,967,295"),
                                            ("abc", "`abc` is not a whole number"),
                                            ("nan", "`nan` is not a whole number"),
                                            ("9" * 30, "9" * 30 + " is outside 0 to 4,294,967,295"),
                                            ("", "empty: enter a whole number")])
def test_dataset_page_refuses_a_bad_split_seed_and_keeps_the_last(with_runs, typed, message):
    """Also: each change to a sidebar option is kept, the second as the first (an unkeyed widget whose default
    is the remembered choice became a new widget after the first change and dropped the next)."""
    at = run_page("views/dataset.py")
    seed = next(t for t in at.sidebar.text_input if t.label == "Split seed")
    seed.input("7").run()
    assert appstate.data_spec().split_seed == 7 and not at.error
    next(t for t in at.sidebar.text_input if t.label == "Split seed").input(typed).run()
    assert f"Split seed: {message}. The data below keeps seed 7" in texts(at) and not at.exception
    assert appstate.data_spec().split_seed == 7  # kept, and said so
    next(t for t in at.sidebar.text_input if t.label == "Split seed").input("0").run()
    share = next(s for s in at.sidebar.slider if s.label == "Validation share")
    share.set_value(0.2).run()
    next(s for s in at.sidebar.slider if s.label == "Validation share").set_value(0.25).run()
    assert appstate.data_spec().val_fraction == 0.25 and appstate.data_spec().split_seed == 0
    next(s for s in at.sidebar.slider if s.label == "Validation share").set_value(0.15).run()


def test_dataset_page_refuses_shares_that_leave_nothing_to_train_on_in_plain_words(with_runs):
    at = run_page("views/dataset.py")
    kept = appstate.data_spec()
    next(s for s in at.sidebar.slider if s.label == "Validation share").set_value(0.95).run()
    next(s for s in at.sidebar.slider if s.label == "Test share").set_value(0.95).run()
    said = texts(at)
    assert "Validation share 0.95 and test share 0.95 add up to 1.90" in said and "val_fraction" not in said
    assert at.metric and not at.exception  # the data is still shown, with the last shares
    assert (appstate.data_spec().val_fraction, appstate.data_spec().test_fraction) == \
        (kept.val_fraction, kept.test_fraction)
    next(s for s in at.sidebar.slider if s.label == "Validation share").set_value(kept.val_fraction).run()
    next(s for s in at.sidebar.slider if s.label == "Test share").set_value(kept.test_fraction).run()
    assert not at.error


def test_dataset_page_summarises_the_data(with_runs):
    at = run_page("views/dataset.py")
    assert at.metric and any("always-other" in m.label.lower() for m in at.metric)
    assert "No observation or landmark falls on two sides" in texts(at)


def test_explain_page_uses_the_shipped_model_and_a_data_tile(with_runs):
    assert DEFAULT_CHECKPOINT.is_file(), "the shipped checkpoint is missing"
    at = run_page("views/explain.py")
    assert at.sidebar.selectbox[0].value.startswith("default model")
    at.toggle(key="browse").set_value(True).run()
    at.checkbox(key="use_pick").check().run()
    assert not at.exception, [e.value for e in at.exception]
    body = texts(at)
    assert "Predicted **" in body and "Faithfulness" in body
    at.sidebar.selectbox[1].set_value("gradcam++").run()
    captions = " ".join(str(getattr(img, "proto", "")) for img in at.get("image"))
    layer = default_cam_layer(read_checkpoint(DEFAULT_CHECKPOINT)["arch"])  # bn2 for EfficientNet-Lite
    assert not at.exception and f"gradcam++ on {layer}" in captions, captions[:500]


def test_evaluate_page_shows_saved_evaluation_of_a_run(with_runs):
    at = run_page("views/evaluate.py")
    runs = [o for o in at.selectbox[0].options if o.startswith("run ")]
    at.selectbox[0].set_value(runs[0]).run()
    assert not at.exception
    labels = [m.label for m in at.metric]
    assert {"Macro-F1", "Balanced accuracy", "Accuracy"} <= set(labels)
    assert any(label.startswith("Always-") for label in labels)
    at.selectbox[1].set_value("test").run()
    button(at, "Evaluate on the test split").click().run()  # evaluate on test: recomputed in-process with progress
    assert not at.exception and "split test" in texts(at) and "· fp32" in texts(at)
    tta = next(t for t in at.toggle if t.label.startswith("Average 8 flips"))
    tta.set_value(True).run()
    at.switch_page("views/home.py").run()  # away and back: every choice is as it was left (ui.widgets.kept)
    at.switch_page("views/evaluate.py").run()
    assert (at.selectbox[0].value, at.selectbox[1].value) == (runs[0], "test")
    assert next(t for t in at.toggle if t.label.startswith("Average 8 flips")).value is True
    next(t for t in at.toggle if t.label.startswith("Average 8 flips")).set_value(False).run()
    bf16 = next(t for t in at.toggle if t.label == "bf16 (faster)")
    if not bf16.disabled:
        bf16.set_value(True).run()
        button(at, "Evaluate on the test split").click().run()
        assert not at.exception and "· bf16" in texts(at)


def test_compare_page_with_two_runs(with_runs):
    at = run_page("views/compare.py")
    assert len(at.multiselect[0].value) == 2
    assert "optimizer" in at.table[0].value.index  # a static table: long values wrap


def test_compare_settings_say_what_each_run_trained_with():
    """image_size 0, an empty freeze_below and amp are shown as what training used, not as what was stored."""
    from ui.compare import effective_settings
    lite = {"model": "tf_efficientnet_lite0", "image_size": 0, "freeze": "below", "freeze_below": "", "amp": True}
    shown = effective_settings(lite)
    assert shown["image_size"].endswith("(the model's own)")
    assert shown["freeze_below"].startswith("blocks.4 (the model's own point): frozen")
    assert shown["amp"] == "bf16 where the device has it, validation in fp32"  # core.training.engine.use_bf16
    cnn = {"model": "simple_cnn", "image_size": 48, "freeze": "none", "freeze_below": "layer3", "amp": True}
    shown = effective_settings(cnn, {"amp": False, "input_size": 48, "frozen": []})
    assert shown["freeze_below"].startswith("— (freeze is not") and shown["image_size"] == "48"
    assert shown["amp"] == "off (asked for; no bf16 on that machine)"
    assert effective_settings(cnn, {"amp": True})["amp"] == "bf16 on"
    assert effective_settings(lite, {"amp": True})["amp"] == "bf16 on, validation in fp32"


def test_compare_bars_label_a_zero_and_a_class_without_tiles():
    from ui.figures import grouped_bars
    fig = grouped_bars({"a": [0.0, None, 0.5]}, ["x", "y", "z"], "t", "recall")
    assert list(fig.data[0].text) == ["0.00", "no tiles", "0.50"]


def test_compare_page_includes_the_default_model_on_the_runs_tiles(with_runs, monkeypatch):
    monkeypatch.setattr("ui.compare.MIN_COMMON_TILES", 5)  # the runs' split holds 12 val tiles: too few otherwise
    at = run_page("views/compare.py")
    default = next(o for o in at.multiselect[1].options if o.startswith("default model"))
    at.multiselect[1].set_value([default]).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    metrics = next(d.value for d in at.dataframe if "macro-F1" in d.value.columns)
    assert default in metrics.index and metrics.loc[default, "val tiles"] > 0
    # the runs and the default model were trained on different data, so none of the runs' validation tiles is one
    # the default model trained on: every model is scored on all of them, the runs' own reports' tiles
    runs = [i for i in metrics.index if i != default]
    assert metrics.loc[default, "tile set"] == metrics.loc[runs[0], "tile set"]
    assert f"Scored on all {metrics.loc[default, 'val tiles']:.0f} val tiles" in texts(at)


@pytest.mark.slow
def test_train_page_launches_a_job_and_shows_it(with_runs):
    before = {r.name for r in list_runs()}
    at = run_page("views/train.py")
    at.selectbox(key="cfg_model").set_value("simple_cnn").run()
    at.selectbox(key="cfg_init").set_value("scratch").run()
    at.text_input(key="cfg_image_size").input("48").run()
    at.text_input(key="cfg_epochs").input("1").run()
    at.text_input(key="cfg_max_steps_per_epoch").input("2").run()
    button(at, "Launch training").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    new = [r for r in list_runs() if r.name not in before]
    assert len(new) == 1 and new[0].config()["model"] == "simple_cnn"
    deadline = time.time() + 180
    while jobs.job_state(new[0]) in ("queued", "running") and time.time() < deadline:
        time.sleep(1)
    assert jobs.job_state(new[0]) == "completed", new[0].log_tail()
    at = run_page("views/train.py")
    assert f"**{new[0].name}** · state **completed**" in texts(at)


def test_train_page_refuses_imagenet_init_without_weights(with_runs, monkeypatch, tmp_path):
    import torch
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))  # no cached resnet18 weights
    at = run_page("views/train.py")
    at.selectbox(key="cfg_model").set_value("resnet18").run()
    at.selectbox(key="cfg_init").set_value("imagenet").run()
    assert "not in the local cache" in texts(at)  # said before anything is launched
    before = {r.name for r in list_runs()}
    button(at, "Launch training").click().run()
    assert "Not launched" in texts(at) and "resnet18" in texts(at)
    assert {r.name for r in list_runs()} == before


def test_train_page_reports_a_bad_configuration(with_runs):
    at = run_page("views/train.py")
    at.text_area(key="cfg_data_text").input("").run()
    button(at, "Launch training").click().run()
    assert "Not launched" in texts(at) and "data" in texts(at)


def _fake_run(name: str, status: dict, config: dict | None = None, files: dict | None = None) -> Run:
    """A run folder written by hand (no trainer): what the pages read."""
    run = Run(Path(RUNS_DIR) / name)
    run.path.mkdir(parents=True, exist_ok=True)
    run.save_config(config or RunConfig(data=["/nowhere"], model="simple_cnn", init="scratch").to_dict())
    run.update_status(**status)
    for file, content in (files or {}).items():
        (run.path / file).write_text(json.dumps(content))
    return run


def test_suggested_lr_goes_into_the_form(with_runs):
    lrs = [10 ** (-7 + i * 0.1) for i in range(60)]
    result = {"lrs": lrs, "losses": [1.0] * 60, "smoothed": [1.0] * 60, "suggested_lr": 0.0031622}
    run = _fake_run("20260102-000000-lrfind", {"state": "completed", "kind": "lr_find", "steps_per_epoch": 100,
                                               "step_in_epoch": 60}, files={"lr_find.json": result})
    try:
        at = run_page("views/train.py")
        watch = next(s for s in at.selectbox if s.label == "Watch run")
        watch.set_value(run.name).run()
        jobs_table = at.dataframe[0].value
        assert "LR test done, 60/100 batches (loss diverged)" in set(jobs_table["progress"])
        button(at, "Use the suggested LR (3.16e-03) in the form").click().run()
        assert not at.exception
        assert float(at.text_input(key="cfg_lr").value) == pytest.approx(3.16e-3)
        assert "Learning rate set to 3.16e-03" in texts(at)
    finally:
        import shutil
        shutil.rmtree(run.path)


def test_progress_text_says_only_what_is_known():
    cfg = {"epochs": 10}
    starting = {"state": "running", "epoch": 1, "step_in_epoch": 0, "steps_per_epoch": 50, "images_per_s": 0}
    assert "measuring speed" in jobs.progress_text(starting, cfg, []) and "ETA" not in jobs.progress_text(starting, cfg, [])
    running = {**starting, "step_in_epoch": 10, "images_per_s": 120.0, "eta_epoch_s": 30}
    assert "120 images/s · ETA 30 s" in jobs.progress_text(running, cfg, [60.0])
    assert jobs.progress_text({**running, "state": "cancelled"}, cfg, [60.0]) is None  # no stale ETA
    lr = {"state": "running", "kind": "lr_find", "step_in_epoch": 40, "steps_per_epoch": 100, "images_per_s": 50,
          "eta_epoch_s": 12}
    assert jobs.progress_text(lr, cfg, []).startswith("LR range test · batch 40/100")
    assert jobs.progress_column(lr, cfg) == "LR test, batch 40/100"
    assert jobs.progress_column({"state": "queued"}, cfg) == "epoch 0/10"
    assert jobs.progress_column({**lr, "state": "completed", "step_in_epoch": 94}, cfg) == \
        "LR test done, 94/100 batches (loss diverged)"
    mid = {"state": "cancelled", "epoch": 2, "step_in_epoch": 7, "steps_per_epoch": 50}
    assert jobs.progress_column(mid, {"epochs": 2}) == "cancelled in epoch 2/2 (1 finished)"
    assert jobs.progress_column({**mid, "step_in_epoch": 50}, {"epochs": 2}) == "cancelled after epoch 2/2"
    assert jobs.progress_column({**mid, "state": "lost"}, {"epochs": 2}) == "lost in epoch 2/2 (1 finished)"
    assert jobs.progress_column({"state": "failed"}, cfg) == "failed before its first epoch"
    assert jobs.progress_column({"state": "completed", "epoch": 6, "step_in_epoch": 50, "steps_per_epoch": 50},
                                cfg) == "done, 6/10 epochs (stopped early)"


@pytest.mark.parametrize("key, value, message", [("cfg_epochs", "0", "epochs: 0 is below the minimum 1"),
                                                 ("cfg_image_size", "8", "image_size: at least 32 px"),
                                                 ("cfg_lr", "1e308", "lr: 1e+308 is above the maximum 10.0"),
                                                 ("cfg_lr", "", "lr: empty: enter a number"),
                                                 ("cfg_lr", "nan", "lr: nan is not a finite number"),
                                                 ("cfg_epochs", "2.5", "epochs: '2.5' is not a whole number"),
                                                 ("cfg_batch_size", "10000000", "batch_size: 10000000 is above")])
def test_train_form_keeps_and_refuses_out_of_range_values(with_runs, key, value, message):
    """What the user typed is what is shown, checked and refused: no silent clamp to a bound, 0 or an old value."""
    before = {r.name for r in list_runs()}
    at = run_page("views/train.py")
    at.text_input(key=key).input(value).run()
    assert at.text_input(key=key).value == value
    assert any(message in e.value for e in at.error), [e.value for e in at.error]  # at the field, before any click
    button(at, "Launch training").click().run()
    assert f"Not launched: {message}" in texts(at) and at.text_input(key=key).value == value
    assert {r.name for r in list_runs()} == before


def test_train_form_refuses_a_missing_data_path_at_the_field(with_runs, tmp_path):
    before = {r.name for r in list_runs()}
    at = run_page("views/train.py")
    at.text_area(key="cfg_data_text").input(str(tmp_path / "nowhere")).run()
    assert any("data: not found" in e.value for e in at.error)
    button(at, "Find a learning rate").click().run()
    assert "Not launched: data: not found" in texts(at)
    assert {r.name for r in list_runs()} == before


def test_train_form_keeps_its_values_after_leaving_the_page_and_in_a_new_session(with_runs):
    """Issue 25: values set, the page left and opened again (and a refresh: a new session) show the same values,
    so a launch never uses values the user did not see."""
    at = run_page("views/train.py")
    for key, value in (("cfg_epochs", "2"), ("cfg_batch_size", "32"), ("cfg_image_size", "96"),
                       ("cfg_max_steps_per_epoch", "30")):
        at.text_input(key=key).input(value).run()
    at.selectbox(key="cfg_optimizer").set_value("sgd").run()
    at.switch_page("views/home.py")
    at.run()
    at.switch_page("views/train.py")
    at.run()
    shown = {k: at.text_input(key=k).value for k in ("cfg_epochs", "cfg_batch_size", "cfg_image_size",
                                                     "cfg_max_steps_per_epoch")}
    assert shown == {"cfg_epochs": "2", "cfg_batch_size": "32", "cfg_image_size": "96",
                     "cfg_max_steps_per_epoch": "30"}
    assert at.selectbox(key="cfg_optimizer").value == "sgd"
    again = run_page("views/train.py")  # a new session, as after a browser refresh
    assert again.text_input(key="cfg_epochs").value == "2" and again.selectbox(key="cfg_optimizer").value == "sgd"


def test_launch_is_refused_when_the_data_cannot_be_read(with_runs, tmp_path):
    """Issue 25: a data path that exists but is not a data set shows its message and Launch refuses it (it used to
    queue a job that failed 3 s later)."""
    before = {r.name for r in list_runs()}
    empty = tmp_path / "not-a-dataset"
    empty.mkdir()
    at = run_page("views/train.py")
    at.text_area(key="cfg_data_text").input(str(empty)).run()
    assert "Launch is refused until this is fixed" in texts(at) and "cannot read the data" in texts(at)
    button(at, "Launch training").click().run()
    assert "Not launched: data: cannot read the data" in texts(at)
    assert {r.name for r in list_runs()} == before


def test_a_run_gets_a_note_and_tags_and_can_be_deleted_after_confirming(with_runs):
    run = _fake_run("20260103-000000-unwanted", {"state": "failed", "error": "boom"})
    at = run_page("views/train.py")
    next(s for s in at.selectbox if s.label == "Watch run").set_value(run.name).run()
    next(t for t in at.text_area if t.label == "Note").input("diverged at lr 1e-1")
    next(t for t in at.text_input if t.label.startswith("Tags")).input("sweep, bad  sweep")
    button(at, "Save note and tags").click().run()
    assert run.notes() == {"note": "diverged at lr 1e-1", "tags": ["sweep", "bad"]}
    assert "sweep, bad" in set(at.dataframe[0].value["tags"])
    button(at, "Delete this run…").click().run()
    assert run.path.is_dir() and f"Delete **{run.name}**" in texts(at)  # nothing gone before the confirmation
    button(at, "Keep it").click().run()
    assert run.path.is_dir() and not any(b.label.startswith("Yes, delete") for b in at.button)
    button(at, "Delete this run…").click().run()
    button(at, f"Yes, delete {run.name}").click().run()
    assert not at.exception and not run.path.exists()
    assert f"Deleted run {run.name}" in texts(at)


def test_a_running_job_cannot_be_deleted(with_runs):
    from core.experiment.runs import RunBusy, RunLock, delete_run
    run = _fake_run("20260103-000001-busy", {"state": "running"})
    with RunLock.acquire(run):  # a live trainer holds the run
        at = run_page("views/train.py")
        next(s for s in at.selectbox if s.label == "Watch run").set_value(run.name).run()
        assert button(at, "Delete this run…").disabled
        at.session_state["confirm_delete"] = run.name  # asked before the run was resumed
        at.run()
        assert not any(b.label.startswith("Yes, delete") for b in at.button) and button(at, "Delete this run…").disabled
        with pytest.raises(RunBusy):
            delete_run(run)
        assert run.config_file.is_file()
    delete_run(run)
    assert not run.path.exists()


def test_evaluate_galleries_show_full_names_labels_and_probabilities(with_runs):
    at = run_page("views/evaluate.py")
    choice = next(o for o in at.selectbox[0].options if o.startswith("run "))
    at.selectbox[0].set_value(choice).run()
    report = Run(Path(RUNS_DIR) / choice.removeprefix("run ")).evaluation()
    names = {c.value for c in at.code}
    wrong = report["top_losses"]
    assert wrong and {t["name"] for t in wrong} <= names  # whole file names, copyable
    t = wrong[0]
    assert f"true **{t['true']}** → predicted **{t['pred']}** · {t['prob']:.0%}" in texts(at)


def test_a_class_without_tiles_shows_no_recall_but_says_why():
    from ui.per_class import NEVER_PREDICTED, NO_TILES, per_class_table
    rows = [{"class": "crater", "precision": 0.5, "recall": 0.75, "f1": 0.6, "support": 4},
            {"class": "spider", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}]
    styled = per_class_table(rows)
    table = styled.data
    assert table.loc["crater", "recall"] == "0.750"
    assert table.loc["spider", "recall"] == NO_TILES and table.loc["spider", "f1"] == NO_TILES
    html = styled.to_html()
    spider = html.split(">spider<")[1].split("</tr>")[0]
    assert spider.count(f">{NO_TILES}</td>") == 2  # recall and F1 say so; no red 0.000
    # a class never predicted has no precision (0/0), which is not a precision of 0
    rows = [{**r, "predicted": n} for r, n in zip(rows, (3, 0), strict=True)]
    assert per_class_table(rows).data.loc["spider", "precision"] == NEVER_PREDICTED
    assert per_class_table(rows).data.loc["crater", "precision"] == "0.500"
    older = [{k: v for k, v in r.items() if k != "predicted"} for r in rows]  # counted from the confusion matrix
    assert per_class_table(older, [[3, 0], [1, 0]]).data.loc["spider", "precision"] == NEVER_PREDICTED


def test_the_row_normalised_confusion_matrix_leaves_a_class_without_tiles_blank():
    from ui.figures import confusion_matrix
    fig = confusion_matrix([[3, 1], [0, 0]], ["crater", "spider"], normalize=True)
    heat = fig.data[0]
    assert [list(r) for r in heat.text] == [["75%", "25%"], ["–", "–"]]
    assert np.isnan(np.asarray(heat.z, dtype=float)[1]).all()
    assert "no spider tiles" in heat.hovertext[1][0] and "3 of 4 tiles" in heat.hovertext[0][0]
    counts = confusion_matrix([[3, 1], [0, 0]], ["crater", "spider"], normalize=False).data[0]
    assert [list(r) for r in counts.text] == [["3", "1"], ["0", "0"]]


def test_progress_bar_times_each_stage_from_where_it_started(monkeypatch):
    """A resumed feature pass starts at the tiles kept earlier (no speed in them), and the map's one-step
    reduction that follows has no count to make an ETA from."""
    import ui.progress as progress
    shown = []

    class Bar:
        def progress(self, value, text=""):
            shown.append(text)

        def empty(self):
            shown.append("(cleared)")

    clock = iter([0.0, 10.0, 12.0, 30.0])
    monkeypatch.setattr(progress.st, "empty", lambda *args, **kwargs: Bar())
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    update = progress.progress_bar("Embedding")
    update(512, 1024, "features at 260px")  # 512 kept from a stopped pass
    update(612, 1024, "features at 260px")  # 100 tiles in 10 s
    update(0, 1, "reducing to 2-D (umap)")
    update(1, 1, "reducing to 2-D (umap)")
    assert shown == ["features at 260px: 512/1,024 · 0/s · ETA …", "features at 260px: 612/1,024 · 10/s · ETA 41 s",
                     "reducing to 2-D (umap)…", "reducing to 2-D (umap)…", "(cleared)"]


def test_the_live_recall_row_says_no_tiles_for_a_class_the_split_lacks(with_runs):
    """Old runs stored 0.0, new ones None, for a class without validation tiles: both read "no tiles", never
    "None" (Streamlit shows a NaN that way whatever the Styler says) nor a red 0.00."""
    from ui.per_class import NO_TILES
    row = {"kind": "epoch", "epoch": 1, "step": 4, "train_loss": 1.0, "val_loss": 1.0, "val_accuracy": 0.5,
           "val_macro_f1": 0.4, "val_balanced_accuracy": 0.4, "images_per_s": 10.0, "seconds": 1.0, "best": True,
           "val_recall": {"other": 0.5, "crater": 0.25, "spider": None, "swiss cheese": 0.0},
           "val_support": {"other": 4, "crater": 4, "spider": 0, "swiss cheese": 0},
           "val_intervals": {"macro_f1": [0.2, 0.6], "balanced_accuracy": [0.25, 0.55], "accuracy": [0.3, 0.7]}}
    run = _fake_run("20260104-000000-recall", {"state": "completed"})
    run.metrics_file.write_text(json.dumps(row) + "\n")
    at = run_page("views/train.py")
    next(s for s in at.selectbox if s.label == "Watch run").set_value(run.name).run()
    label = "val recall (epoch 1, the last)"
    table = next(d.value for d in at.dataframe if label in list(d.value.columns))  # a row per class
    # each recall with the Wilson interval of its counts: 2 of 4, 1 of 4
    assert list(table[label]) == ["0.50 (0.15–0.85)", "0.25 (0.05–0.70)", NO_TILES, NO_TILES] and not at.exception
    assert "95% interval 0.20–0.60" in texts(at)  # the live headline figures carry their intervals too


# ---- the app's state file written from several threads --------------------------------------------------------

def test_app_state_saved_from_threads_keeps_every_key(tmp_path, monkeypatch):
    monkeypatch.setattr(appstate, "APP_STATE_FILE", tmp_path / "state.json")
    errors: list[BaseException] = []

    def save(i: int) -> None:
        try:
            for j in range(25):
                appstate.save_state(**{f"k{i}_{j}": j})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert len(appstate.load_state()) == 100


# ---- pages facing an empty default checkpoint, a damaged zip, an unwritable runs folder, no GPU, no address ----------

@pytest.fixture()
def own_runs(tmp_path, monkeypatch) -> Path:
    """An empty runs folder and app state of this test's own."""
    monkeypatch.setattr("core.experiment.runs.RUNS_DIR", tmp_path / "runs")
    monkeypatch.setattr(appstate, "APP_STATE_FILE", tmp_path / "app-state.json")
    (tmp_path / "runs").mkdir()
    return tmp_path / "runs"


def test_home_and_explain_survive_an_empty_default_checkpoint(tmp_path, own_runs, monkeypatch):
    import ui.loaders
    empty = tmp_path / "hirise-resnet18.pt"
    empty.touch()
    monkeypatch.setattr(ui.loaders, "DEFAULT_CHECKPOINT", empty)
    assert "No default model: hirise-resnet18.pt is empty (0 bytes)" in texts(run_page("app.py"), captions=False)
    assert "Cannot load the model: hirise-resnet18.pt is empty" in texts(run_page("views/explain.py"), captions=False)


def test_dataset_page_lists_a_damaged_zip_member_and_goes_on(tmp_path, own_runs):
    path, tiles = synthetic.official_zip(tmp_path / "bad-crc.zip")
    raw = bytearray(path.read_bytes())
    raw[synthetic.zip_data_offset(path, tiles[0]) + 200] ^= 0xFF
    path.write_bytes(bytes(raw))
    appstate.save_state(data_paths=[str(path)])
    at = run_page("views/dataset.py")
    assert any(e.label == "1 unreadable tiles (skipped)" for e in at.expander)


def test_home_and_train_read_a_lost_run_they_cannot_write(tmp_path, own_runs, data_dir, monkeypatch):
    lost = Run(own_runs / "20260101-000000-lost")
    lost.path.mkdir()
    RunConfig(data=[str(data_dir)], **tiny(image_size=32)).save(lost.config_file)
    lost.update_status(state="running", pid=2**22 + 11, kind="train")

    def read_only(*_args, **_kw):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("core.experiment.runs.update_json", read_only)  # a fake read-only folder: any write raises
    monkeypatch.setattr("core.experiment.jobs.new_run_dir", read_only)
    at = run_page("app.py")
    runs = next(d.value for d in at.dataframe if "state" in d.value.columns)  # the runs table (after the registry's)
    assert runs["state"].tolist() == ["lost"]
    at = run_page("views/train.py")
    assert "Lost: the training process (pid 4194315) vanished without finishing" in texts(at, captions=False)
    at.text_area(key="cfg_data_text").input(str(data_dir)).run()
    next(b for b in at.button if b.label == "Launch training").click().run()
    assert not at.exception
    assert f"Not launched: cannot write to {own_runs}: Permission denied" in texts(at, captions=False)


def test_the_device_box_offers_cuda_only_with_a_gpu(own_runs, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    at = run_page("views/train.py")
    assert at.selectbox(key="cfg_device").options == ["auto", "cpu"]


@pytest.mark.parametrize("address, serves", [(None, False), ("", False), ("127.0.0.1", True), ("0.0.0.0", True)])
def test_the_app_serves_nothing_on_an_address_nobody_chose(own_runs, monkeypatch, address, serves):
    import streamlit
    real = streamlit.get_option
    monkeypatch.setattr(streamlit, "get_option", lambda key: address if key == "server.address" else real(key))
    for path in ("app.py", "views/explain.py"):
        at = run_page(path)
        assert bool(at.title) == serves
        assert ("started without a server address" in texts(at, captions=False)) != serves


def test_a_paired_difference_is_written_with_signs_so_a_crossing_of_zero_reads_plainly():
    from ui.compare import paired_differences
    names = ["other", "crater"]
    preds_a, preds_b = [], []
    for i in range(40):
        true = names[i % 2]
        tile = {"name": f"ESP_{i // 4:06d}_1000_RED-{i:04d}.jpg", "true": true, "observation": f"O{i // 4}"}
        preds_a.append({**tile, "pred": true if i % 5 else names[1 - i % 2]})
        preds_b.append({**tile, "pred": true if i % 3 else names[1 - i % 2]})
    reports = {name: {"class_names": names, "tiles_digest": "same", "predictions": preds}
               for name, preds in (("a", preds_a), ("b", preds_b))}
    row = paired_differences(reports).iloc[0]
    text = row["macro-F1 A−B"]
    low, high = (float(v) for v in text.split("(")[1].rstrip(")").split(" to "))
    assert text[0] in "+-" and low <= high
    assert row["macro-F1 verdict"] == ("within noise" if low <= 0 <= high else "A better" if low > 0 else "B better")


def test_compare_with_refit_runs_says_so_and_draws_no_empty_validation_charts(with_runs):
    """Issue 33, item 6: two refits of one recipe: 'no setting differs' is said (not all ~40 listed as if they
    did), and no blank validation chart is drawn."""
    import shutil
    config = RunConfig(data=["/nowhere"], model="simple_cnn", init="scratch", val_fraction=0, test_fraction=0).to_dict()
    rows = [{"kind": "step", "epoch": 1, "step": 1, "train_loss": 1.0},
            {"kind": "epoch", "epoch": 1, "step": 1, "train_loss": 0.9}]
    made = []
    try:
        for name in ("20260103-000000-refit-a", "20260103-000001-refit-b"):
            run = _fake_run(name, {"state": "completed"}, config=config)
            run.metrics_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
            made.append(run)
        at = run_page("views/compare.py")
        at.multiselect[0].set_value([r.name for r in made]).run()
        assert not at.exception, [e.value for e in at.exception]
        assert "No setting differs between these 2 models" in texts(at)
        assert "no validation split (a refit trains on every tile), so no validation curve" in texts(at)
        titles = [c.proto.spec for c in at.get("plotly_chart")]
        assert not any("validation macro-F1" in t for t in titles)
    finally:
        for run in made:
            shutil.rmtree(run.path)


def test_a_run_name_that_is_changed_for_its_folder_says_so():
    """Browser walk: '../../etc/passwd' as a run name was rewritten for the folder without a word."""
    at = run_page("views/train.py")
    at.text_input(key="cfg_name").input("../../etc/passwd").run()
    assert "The run's folder will be named after 'etc-passwd'" in texts(at) and not at.exception
    at.text_input(key="cfg_name").input("plain-name").run()
    assert "will be named after" not in texts(at)


def test_the_train_form_takes_the_dataset_pages_split():
    """A browser walk found runs training on split seed 0 while the Dataset page (and Evaluate, Compare, Explore)
    used seed 7, with nothing said: the form's Data tab now follows the Dataset page's choices."""
    from core.data.spec import DataSpec
    from ui import appstate
    before = appstate.load_state().get("data_options")
    try:
        appstate.save_data_options(DataSpec(tuple(appstate.data_paths()), split_seed=7, val_fraction=0.2))
        at = run_page("views/train.py")
        assert at.text_input(key="cfg_split_seed").value == "7" and at.text_input(key="cfg_val_fraction").value == "0.2"
        at.text_input(key="cfg_split_seed").input("3").run()  # a change in the form holds for the form
        at.switch_page("views/home.py").run()
        at.switch_page("views/train.py").run()
        assert at.text_input(key="cfg_split_seed").value == "3"
        appstate.save_data_options(DataSpec(tuple(appstate.data_paths()), split_seed=9))  # the Dataset page again
        at.run()
        assert at.text_input(key="cfg_split_seed").value == "9"
    finally:
        appstate.save_state(data_options=before)


def test_home_runs_table_gives_completed_runs_their_intervals(with_runs):
    """The browser walk: Home's runs table showed bare figures; a completed run's now carry their 95% interval."""
    at = run_page("app.py")
    table = next(d.value for d in at.dataframe if "val macro-F1" in d.value.columns)
    ours = table[table["run"].str.endswith(("-a-adamw", "-b-sgd"))]  # the fixture's completed runs (others: no eval)
    cells = ours["val macro-F1"].tolist()
    assert cells and all(re.fullmatch(r"\d\.\d{3} \(\d\.\d{2}[–-]\d\.\d{2}\)", c) for c in cells), cells


PAGES_WITHOUT_TORCH = r"""
import json, sys
from streamlit.testing.v1 import AppTest
import core.predict

seen = []
real = core.predict.predict_bytes
def watched(*args, **kwargs):  # the Explain page's answers: was torch imported when each was made?
    out = real(*args, **kwargs)
    seen.append("torch" in sys.modules)
    return out
core.predict.predict_bytes = watched

report = {}
home = AppTest.from_file("app.py", default_timeout=120).run()
report["home"] = ("torch" in sys.modules, [e.value for e in home.exception])
at = AppTest.from_file("views/explain.py", default_timeout=180).run()
report["explain, nothing uploaded"] = ("torch" in sys.modules, [e.value for e in at.exception])
at.toggle(key="browse").set_value(True).run()
at.checkbox(key="use_pick").check().run()
body = " ".join(str(m.value) for m in at.markdown) + " ".join(str(c.value) for c in at.caption)
report["answers"] = seen
report["explain, answered"] = ("torch" in sys.modules, [e.value for e in at.exception])
report["cam"] = "Faithfulness" in body and "Predicted **" in body
report["engine"] = [c.value for c in at.sidebar.caption if str(c.value).startswith("Predictions:")]
print(json.dumps(report))
"""


def test_home_and_explains_answers_import_no_torch(with_runs, tmp_path):
    """Issue 30: Home draws, and Explain answers (from the default model's ONNX twin), before torch is imported;
    torch then loads for Grad-CAM, which follows. In a process of its own: this one has torch already."""
    import subprocess
    import sys
    env = {**os.environ, "HIRISE_APP_STATE": str(APP_STATE_FILE), "HIRISE_RUNS_DIR": str(RUNS_DIR),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", PAGES_WITHOUT_TORCH], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["home"] == [False, []] and report["explain, nothing uploaded"] == [False, []], report
    assert report["answers"] and not any(report["answers"]), report  # every answer came before torch
    assert report["explain, answered"] == [True, []] and report["cam"], report  # then Grad-CAM, on torch
    assert report["engine"][0].startswith("Predictions: ONNX Runtime ("), report["engine"]
