"""Cross-validation grouped by observation (core.experiment.cv), observation-bootstrap intervals (core.bootstrap), the refit."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from core import bootstrap
from core.classes import CLASS_NAMES
from core.data import DataSpec, load_dataset
from core.data.records import Record
from core.data.split import assign_splits, fold_coverage, fold_of_observation
from core.experiment import cv, grid
from core.experiment.runs import Run, list_runs
from core.training.config import ConfigError, RunConfig
from core.training.runner import main as train_cli
from tests import synthetic
from tests.helpers import app_chooses, run_page, texts, tiny, tiny_form, wait_for

TINY_CV = tiny(epochs=2, max_steps_per_epoch=2, device="cpu")  # what TINY_FLAGS asks for
TINY_FLAGS = ["--model", "simple_cnn", "--init", "scratch", "--image-size", "48", "--batch-size", "16",
              "--epochs", "2", "--max-steps-per-epoch", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cv-runs")


def _records(n_obs: int = 30, per_obs: int = 6, extra: int = 10, seed: int = 0) -> list[Record]:
    """Originals with augmented copies from `n_obs` observations, classes clustered by observation as in HiRISE,
    and tiles without an observation id."""
    rng = np.random.default_rng(seed)
    out = []
    for o in range(n_obs):
        obs = f"ESP_{o:06d}_0000_RED"
        main = int(rng.integers(0, 8))
        for i in range(per_obs):
            label = main if i % 2 else 0
            for aug in ("", "r90", "fh"):
                name = f"{obs}-{i:04d}{'-' + aug if aug else ''}.jpg"
                out.append(Record("s", name, name, label, observation=obs, landmark=f"{obs}-{i:04d}", aug=aug))
    out += [Record("x", f"own-{i}.jpg", f"own-{i}.jpg", i % 8, landmark=f"own-{i}") for i in range(extra)]
    return out


# ---- the folds -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("folds", [3, 5])
def test_folds_keep_observations_and_landmarks_on_one_side_and_validate_every_original_once(folds):
    records = _records()
    validated: dict[str, int] = {}
    for k in range(folds):
        split, how = assign_splits(records, cv_folds=folds, cv_fold=k, seed=7)
        assert f"fold {k + 1} of a {folds}-fold" in how
        assert {r.split for r in split} <= {"train", "val"}  # no test split in a fold
        for attr in ("observation", "landmark"):
            sides: dict[str, set] = {}
            for r in split:
                if r.observation:
                    sides.setdefault(getattr(r, attr), set()).add(r.split)
            assert all(len(s) == 1 for s in sides.values()), attr
        assert all(r.split == "train" for r in split if r.observation is None)  # name-less tiles only train
        for r in split:
            if r.split == "val" and r.is_original:
                validated[r.name] = validated.get(r.name, 0) + 1
    originals = {r.name for r in records if r.observation and r.is_original}
    assert set(validated) == originals and set(validated.values()) == {1}


def test_folds_are_seeded_and_cover_every_class_that_has_enough_observations():
    records = _records(n_obs=40)
    assert fold_of_observation(records, 5, 3) == fold_of_observation(records, 5, 3)
    assert fold_of_observation(records, 5, 3) != fold_of_observation(records, 5, 4)
    fold_of = fold_of_observation(records, 5, 3)
    for label in range(8):
        observations = {r.observation for r in records if r.label == label and r.observation}
        if len(observations) >= 5:
            assert {fold_of[o] for o in observations} == set(range(5)), CLASS_NAMES[label]


def test_fold_coverage_names_a_class_with_fewer_observations_than_folds():
    records = [r for r in _records(n_obs=12) if r.label == 0]
    rare = [Record("s", f"ESP_{900000 + i}_0000_RED-0001.jpg", f"ESP_{900000 + i}_0000_RED-0001.jpg", 7,
                   observation=f"ESP_{900000 + i}_0000_RED", landmark=f"ESP_{900000 + i}_0000_RED-0001") for i in range(2)]
    lines = fold_coverage(records + rare, 5, CLASS_NAMES)
    assert lines == ["class spider comes from 2 observations, fewer than the 5 folds: it is validated in 2 folds only"]


@pytest.mark.parametrize("folds, message", [("1", "cross-validation takes 3 to 10"), ("0", "takes 3 to 10"),
                                            ("100", "100 folds"), ("nan", "'nan' is not a whole number"),
                                            ("2.5", "not a whole number"), ("five", "is not a number of folds")])
def test_bad_fold_counts_are_refused_in_one_line(data_dir, runs_dir, capsys, folds, message):
    code = train_cli(["--data", str(data_dir), *TINY_FLAGS, "--cv", folds, "--runs-dir", str(runs_dir)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_cv_with_split_shares_or_a_run_dir_is_refused(data_dir, runs_dir, capsys):
    assert train_cli(["--data", str(data_dir), *TINY_FLAGS, "--cv", "3", "--val-fraction", "0.2",
                      "--runs-dir", str(runs_dir)]) == 2
    assert "cross-validation makes its own validation folds" in capsys.readouterr().err
    assert train_cli(["--data", str(data_dir), *TINY_FLAGS, "--cv", "3", "--run-dir", str(runs_dir / "x")]) == 2
    assert "--cv makes one run folder per fold" in capsys.readouterr().err
    with pytest.raises(cv.CVError, match="cv_seed: -1 is not in 0 to"):
        cv.plan(RunConfig(data=[str(data_dir)], **TINY_CV), 3, seed=-1)


def test_more_folds_than_observations_is_refused_naming_the_count(tmp_path, capsys):
    data = synthetic.write_folder(tmp_path / "d", synthetic.official_files("3.2", n_obs=3, per_obs=4, missing=0))
    code = train_cli(["--data", str(data), *TINY_FLAGS, "--cv", "4", "--runs-dir", str(tmp_path / "runs")])
    assert code == 2 and "needs at least 4 observations; the data has 3" in capsys.readouterr().err


# ---- the intervals ---------------------------------------------------------------------------------------------

def _noisy_predictions(n_groups: int, per_group: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n_groups * per_group)
    right = rng.random(len(y)) < np.repeat(rng.uniform(0.5, 1.0, n_groups), per_group)  # groups differ in difficulty
    pred = np.where(right, y, (y + 1) % 3)
    groups = [f"obs{g}" for g in np.repeat(np.arange(n_groups), per_group)]
    return y, pred, groups


def test_intervals_hold_the_figure_and_widen_when_observations_are_fewer():
    y, pred, many = _noisy_predictions(60, 10)  # 600 tiles from 60 observations, each of its own difficulty
    y6, pred6, few = _noisy_predictions(6, 100)  # 600 tiles from 6 observations
    wide, narrow = bootstrap.intervals(y6, pred6, few, 3), bootstrap.intervals(y, pred, many, 3)
    for iv, (t, p) in ((wide, (y6, pred6)), (narrow, (y, pred))):
        assert iv["accuracy"][0] <= float((t == p).mean()) <= iv["accuracy"][1]
    width = lambda iv, k: iv[k][1] - iv[k][0]  # noqa: E731
    for key in ("accuracy", "macro_f1", "balanced_accuracy"):
        assert width(wide, key) > 1.5 * width(narrow, key), key
    assert narrow["groups"] == 60 and wide["groups"] == 6
    # resampling tiles, each its own group, would pretend 600 independent draws: narrower still
    tiles = bootstrap.intervals(y6, pred6, [None] * len(y6), 3)
    assert tiles["groups"] == 600 and width(tiles, "accuracy") < 0.5 * width(wide, "accuracy")


def test_a_class_of_one_tile_gets_an_honest_interval_and_an_absent_class_none():
    y = np.array([0] * 50 + [1])
    iv = bootstrap.intervals(y, y, [f"o{i}" for i in range(51)], 3)
    low, high = iv["per_class"][1]["recall"]  # 1 found of 1: every draw that holds it says 1.0; the counts do not
    assert high == 1.0 and 0.1 < low < 0.3
    assert iv["per_class"][0]["recall"][0] > 0.9 and iv["per_class"][2]["recall"] is None


def test_paired_difference_tells_noise_from_a_real_gap():
    y, pred, groups = _noisy_predictions(40, 8)
    same = bootstrap.paired_difference(y, pred, pred, groups, 3)
    assert same["accuracy"]["difference"] == 0 and same["accuracy"]["within_noise"]
    better = bootstrap.paired_difference(y, y, pred, groups, 3)  # a perfect model against a noisy one
    assert better["accuracy"]["difference"] > 0 and not better["accuracy"]["within_noise"]
    flip = pred.copy()
    flip[0] = y[0] if flip[0] != y[0] else (y[0] + 1) % 3  # one tile apart: noise
    assert bootstrap.paired_difference(y, flip, pred, groups, 3)["macro_f1"]["within_noise"]


# ---- a whole cross-validation, the report, a refit ---------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_cv(data_dir, runs_dir, one_thread):
    """A 3-fold cross-validation of a tiny model trained in this process through the CLI."""
    code = train_cli(["--data", str(data_dir), *TINY_FLAGS, "--cv", "3", "--cv-seed", "5", "--name", "t",
                      "--runs-dir", str(runs_dir)])
    assert code == 0
    return cv.list_cvs(runs_dir)[0]["id"]


@pytest.mark.slow
def test_cv_report_pools_every_fold_once_with_intervals(finished_cv, data_dir, runs_dir, capsys):
    rep = cv.report(finished_cv, runs_dir)
    assert rep["complete"] and rep["n_folds"] == 3 and len(rep["folds"]) == 3
    data = load_dataset(DataSpec((str(data_dir),)))
    originals = sorted(r.name for r in data.records if r.is_original and r.observation)
    oof, _ = cv.out_of_fold(cv.load_manifest(finished_cv, runs_dir), runs_dir)
    assert sorted(oof["name"]) == originals  # every validated original exactly once
    pooled = rep["pooled"]
    assert pooled["n"] == len(originals) == sum(f["tiles"] for f in rep["folds"])
    assert np.asarray(pooled["confusion"]).sum() == len(originals)
    assert pooled["intervals"]["macro_f1"][0] <= pooled["macro_f1"] <= pooled["intervals"]["macro_f1"][1]
    assert [r["epoch"] for r in rep["curve"]] == [1, 2] and {r["folds"] for r in rep["curve"]} == {3}
    for _, run in cv.fold_runs(cv.load_manifest(finished_cv, runs_dir), runs_dir):
        assert f"cv:{finished_cv}" in run.notes()["tags"]
        assert run.config()["cv_folds"] == 3 and run.config()["split_seed"] == 5
        epochs = [r for r in run.metrics() if r.get("kind") == "epoch"]
        assert epochs[-1]["best"]  # scored at its last epoch: no best-epoch choice on the fold it is scored on
    assert train_cli(["--cv-report", finished_cv, "--runs-dir", str(runs_dir)]) == 0
    text = capsys.readouterr().out
    assert "out-of-fold" in text and "95% intervals" in text and "fold 3" in text and "MISSING" not in text
    assert train_cli(["--cv-report", finished_cv, "--against", finished_cv, "--runs-dir", str(runs_dir)]) == 0
    text = capsys.readouterr().out  # a recipe against itself: a difference of 0 on every file, within noise
    views = cv.paired(finished_cv, finished_cv, runs_dir)["views"]
    assert f"originals: the {len(originals)} out-of-fold files both scored" in text
    assert list(views) == ["originals", "all files", "all files, TTA"] and views["all files"]["files"] > len(originals)
    assert text.count("within noise") == 9 and "better" not in text and "the same folds" in text
    assert train_cli(["--cv-report", finished_cv, "--against", "nope", "--runs-dir", str(runs_dir)]) == 2
    assert "no cross-validation 'nope'" in capsys.readouterr().err


@pytest.mark.slow
def test_same_partition_ignores_fold_numbering_and_sees_a_moved_tile():
    names = ["a", "b", "c", "d"]
    assert cv.same_partition(names, [0, 0, 1, 1], names, [1, 1, 0, 0])  # renumbered: the same folds
    assert cv.same_partition(names, [0, 0, 1, 1], names[:3], [2, 2, 0])  # on the common tiles
    assert not cv.same_partition(names, [0, 0, 1, 1], names, [0, 1, 1, 1])  # b moved
    assert not cv.same_partition(names, [0, 1, 2, 2], names, [0, 0, 1, 1])  # two folds merged


def test_a_pairing_says_which_views_it_left_out_and_why(finished_cv, runs_dir, tmp_path, capsys):
    copy = tmp_path / "runs"
    shutil.copytree(runs_dir, copy)
    folds = cv.fold_runs(cv.load_manifest(finished_cv, copy), copy)
    folds[1][1].oof_files_file.unlink()  # fold 2 never scored every file: only the originals pair
    result = cv.paired(finished_cv, finished_cv, copy)
    assert list(result["views"]) == ["originals"] and result["same_folds"] is True
    assert set(result["not_paired"]) == {"all files", "all files, TTA"}
    assert "fold 2" in result["not_paired"]["all files"] and "core.train score" in result["not_paired"]["all files"]
    shutil.rmtree(folds[2][1].path)  # a fold gone: the figures cover the others, and the folds' agreement is unknown
    result = cv.paired(finished_cv, finished_cv, copy)
    assert result["same_folds"] is None and result["folds"][finished_cv] == (2, 3)
    assert train_cli(["--cv-report", finished_cv, "--against", finished_cv, "--runs-dir", str(copy)]) == 0
    text = capsys.readouterr().out
    assert f"incomplete: {finished_cv} has 2 of 3 folds" in text and "all files: not paired (" in text


def test_a_deleted_or_cancelled_fold_is_named_and_never_averaged_in(finished_cv, runs_dir, tmp_path):
    copy = tmp_path / "runs"
    shutil.copytree(runs_dir, copy)
    manifest = cv.load_manifest(finished_cv, copy)
    folds = cv.fold_runs(manifest, copy)
    shutil.rmtree(folds[1][1].path)
    folds[2][1].update_status(state="cancelled")
    rep = cv.report(finished_cv, copy)
    assert not rep["complete"] and [f["fold"] for f in rep["missing"]] == [2, 3]
    assert "deleted" in rep["missing"][0]["missing"] and "cancelled" in rep["missing"][1]["missing"]
    assert rep["pooled"]["n"] == rep["folds"][0]["tiles"]
    assert "incomplete: folds 2, 3 left out" in cv.format_report(rep)
    with pytest.raises(cv.CVError, match="incomplete"):
        cv.refit_record(finished_cv, copy)


@pytest.mark.slow
def test_refit_trains_on_everything_and_is_calibrated_by_the_out_of_fold_predictions(finished_cv, data_dir, runs_dir,
                                                                                       capsys):
    from core.calibration import fit_temperature
    from core.checkpoint import load_checkpoint
    run_dir = runs_dir / "refit"
    code = train_cli(["--data", str(data_dir), *TINY_FLAGS, "--val-fraction", "0", "--test-fraction", "0",
                      "--calibrate-from", finished_cv, "--run-dir", str(run_dir)])
    assert code == 0
    run = Run(run_dir)
    log = capsys.readouterr().out  # a trainer started from the CLI prints its log; a job's goes to train.log
    assert "no validation split" in log and "every tile trains" in log and "calibration from cross-validation" in log
    epochs = [r for r in run.metrics() if r.get("kind") == "epoch"]
    assert len(epochs) == 2 and all("val_macro_f1" not in r for r in epochs)  # fixed epochs, nothing validated
    loaded = load_checkpoint(run.best_checkpoint)
    assert loaded.splits["val"]["files"] == [] and loaded.metrics["split"] == "out-of-fold"
    oof, _ = cv.out_of_fold(cv.load_manifest(finished_cv, runs_dir), runs_dir)
    assert loaded.temperature == pytest.approx(fit_temperature(oof["logits"], oof["y"]))  # the fold models' logits
    assert loaded.metrics["macro_f1"] == pytest.approx(cv.report(finished_cv, runs_dir)["pooled"]["macro_f1"])
    assert loaded.ood is not None and loaded.ood.train_quantiles is not None
    payload = torch.load(run.best_checkpoint, weights_only=True)
    assert payload["cv"]["id"] == finished_cv and payload["cv"]["tiles"] == len(oof["y"])


def test_calibrate_from_applies_only_to_a_refit_and_must_be_an_id(data_dir):
    base = dict(data=[str(data_dir)], **TINY_CV)
    with pytest.raises(ConfigError, match="only a run with no validation split"):
        RunConfig(**base, calibrate_from="20261203-000000-abcd").validate()
    with pytest.raises(ConfigError, match="not a cross-validation id"):
        RunConfig(**base, val_fraction=0, test_fraction=0, calibrate_from="../../etc").validate()
    with pytest.raises(ConfigError, match="set test_fraction 0"):
        RunConfig(**base, val_fraction=0, test_fraction=0.2).validate()
    with pytest.raises(ConfigError, match="plateau"):
        RunConfig(**base, val_fraction=0, test_fraction=0, scheduler="plateau").validate()


def test_two_launches_at_once_get_their_own_ids_and_manifests(data_dir, tmp_path):
    import threading
    configs = cv.plan(RunConfig(data=[str(data_dir)], **TINY_CV), 3)
    ids = []
    threads = [threading.Thread(target=lambda: ids.append(cv._start(configs, "queued", tmp_path)))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 6 and len(cv.list_cvs(tmp_path)) == 6


@pytest.mark.slow
def test_a_cross_validated_grid_ranks_by_out_of_fold_macro_f1(data_dir, tmp_path, capsys, one_thread):
    code = train_cli(["--data", str(data_dir), *TINY_FLAGS, "--grid", "optimizer=adam,sgd", "--cv", "3",
                      "--runs-dir", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "oof macro-F1" in out and "ranked by pooled out-of-fold macro-F1" in out
    grid_id = grid.list_grids(tmp_path)[0]["id"]
    table, _ = grid.report(grid_id, tmp_path)
    assert len(table) == 2 and list(table["folds done"]) == ["3/3", "3/3"]
    assert table["oof macro-F1"].is_monotonic_decreasing
    assert all("–" not in v and v.count(",") == 1 for v in table["oof macro-F1 95%"])


# ---- the Train page --------------------------------------------------------------------------------------------

@pytest.fixture()
def app_data(data_dir):
    with app_chooses(data_dir, cv.list_cvs, cv.cv_dir) as chosen:
        yield chosen


@pytest.mark.slow
def test_train_page_refuses_bad_folds_then_queues_a_cross_validation(app_data):
    before = {r.name for r in list_runs()}
    at = run_page("views/train.py")
    tiny_form(at)
    at.text_input(key="cv_folds_text").input("nan").run()
    assert "Cross-validation is refused until this is fixed: cv: 'nan' is not a whole number" in texts(at)
    at.button(key="cv_launch").click().run()
    assert "Not launched: cv: 'nan'" in texts(at) and {r.name for r in list_runs()} == before
    at.text_input(key="cv_folds_text").input("3").run()
    assert "**3 runs**" in texts(at)
    at.button(key="cv_launch").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    new = [r for r in list_runs() if r.name not in before]
    assert sorted(r.config()["cv_fold"] for r in new) == [0, 1, 2]
    cv_id = at.session_state["cv_shown"]
    assert all(r.notes()["tags"] == [f"cv:{cv_id}"] for r in new)
    assert "Refit waits until every fold has completed." in texts(at)
    folds = next(d.value for d in at.dataframe if "macro-F1 (its fold)" in d.value.columns)
    assert list(folds["fold"]) == [1, 2, 3]


@pytest.mark.slow
def test_train_page_hands_a_cross_validation_to_a_cluster_only_when_it_answers(app_data, monkeypatch):
    """On a Dask cluster: a scheduler that does not answer, or a bad worker count, is refused in words and nothing
    starts; `local` starts the background process that submits the folds, and the cross-validation appears."""
    before = {m["id"] for m in cv.list_cvs()}
    at = run_page("views/train.py")
    tiny_form(at)
    at.text_input(key="cv_folds_text").input("3").run()
    at.radio(key="cv_where").set_value("on a Dask cluster").run()
    at.text_input(key="cv_cluster").input("tcp://127.0.0.1:9").run()
    at.button(key="cv_launch").click().run()
    assert "Not launched: cannot reach a Dask scheduler at tcp://127.0.0.1:9" in texts(at)
    at.text_input(key="cv_cluster").input("local").run()
    at.text_input(key="cv_workers").input("0").run()
    at.button(key="cv_launch").click().run()
    assert "Not launched: workers: '0' is not a whole number from 1 to 64" in texts(at)
    assert {m["id"] for m in cv.list_cvs()} == before  # nothing started
    at.text_input(key="cv_workers").input("2").run()
    at.switch_page("views/home.py").run()  # leaving the page and coming back keeps where the folds run (walk)
    at.switch_page("views/train.py").run()
    assert at.radio(key="cv_where").value == "on a Dask cluster"
    assert (at.text_input(key="cv_cluster").value, at.text_input(key="cv_workers").value) == ("local", "2")
    launched = []
    real = cv.launch_on_cluster
    monkeypatch.setattr(cv, "launch_on_cluster", lambda *a, **k: launched.append(real(*a, **k)) or launched[-1])
    at.button(key="cv_launch").click().run()
    assert "Handed to the Dask cluster local" in texts(at), texts(at)
    (log, pid), = launched
    try:  # the hand-off is this page's; the folds on the cluster are tests/test_cluster_plans.py's
        new = wait_for(lambda: [m for m in cv.list_cvs() if m["id"] not in before], timeout=180,
                       what=f"the manifest ({log})")
        assert new[0]["how"] == "cluster" and new[0]["folds"] == 3
    finally:
        import contextlib
        import os
        import shutil
        import signal
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)  # the submitting process and its local cluster
        for m in cv.list_cvs():
            if m["id"] not in before:
                for _, run in cv.fold_runs(m):
                    if run is not None:
                        shutil.rmtree(run.path, ignore_errors=True)
                (cv.cv_dir() / f"{m['id']}.json").unlink()


# ---- the recipe options the search compared ----------------------------------------------------------------------

def test_official_online_trains_on_the_copies_with_transforms_on_top(data_dir):
    from core.training.batches import prepare_data
    cfg = RunConfig(data=[str(data_dir)], **{**TINY_CV, "augment": "official_online",
                                             "transforms": ["hflip", "strong_color_jitter"]}).validate()
    td = prepare_data(cfg, log=lambda line: None)
    train = td.data.select("train", originals_only=False)
    assert len(td.train) == len(train) > len(td.data.select("train", originals_only=True))
    assert td.batch_augment is not None and td.batch_augment.names == ["hflip", "strong_color_jitter"]
    with pytest.raises(ConfigError, match="needs at least one transform"):
        RunConfig(data=[str(data_dir)], **{**TINY_CV, "augment": "official_online", "transforms": []}).validate()


def test_strong_jitter_reaches_further_than_the_plain_one():
    from core.training.augment import BatchAugment
    torch.manual_seed(0)
    x = torch.full((4000, 1, 8, 8), 0.5)
    x[:, :, :4] = 0.25
    spread = {}
    for name in ("color_jitter", "strong_color_jitter"):
        out = BatchAugment([name])(x.clone())
        spread[name] = float(out.mean(dim=(1, 2, 3)).std())
    assert spread["strong_color_jitter"] > 1.5 * spread["color_jitter"] > 0


def test_f1_intervals_are_at_least_as_wide_as_their_parts_allow():
    """Issue 33, item 4: one tile of a class, found once, no longer gets F1 '1.00 (1.00-1.00)'."""
    y = np.array([0, 0, 0, 1])
    iv = bootstrap.intervals(y, y.copy(), ["a", "a", "b", "c"], 2)
    low, high = iv["per_class"][1]["f1"]
    assert high == pytest.approx(1.0) and low < 0.5
    assert low <= iv["per_class"][1]["recall"][0] + 1e-9 or low <= iv["per_class"][1]["precision"][0] + 1e-9
    # a class never predicted (5 tiles, all called class 0): precision is 0/0, so F1 is not pinned at 0 either
    y = np.array([0] * 20 + [1] * 5)
    iv = bootstrap.intervals(y, np.zeros_like(y), [f"o{i}" for i in range(25)], 2)
    recall, f1 = iv["per_class"][1]["recall"], iv["per_class"][1]["f1"]
    assert iv["per_class"][1]["precision"] is None and recall[0] == 0 and f1[0] == 0 and 0 < f1[1] <= 2 * recall[1]


@pytest.mark.slow
@pytest.mark.parametrize("change, message", [
    ({"folds": 1e9}, "cv: 1000000000 folds"), ({"folds": "x"}, "is not a number of folds"),
    ({"id": None}, "is not its file name"), ({"base": []}, "base (the recipe) is not an object"),
    ({"runs": [{"run": "..", "fold": 0}]}, "is not a run name in this folder"),
    ({"seed": "s"}, "seed 's'"), ("same run for every fold", "is listed for folds 1 and 2")])
def test_a_hand_edited_manifest_is_refused_or_skipped_by_name(finished_cv, runs_dir, tmp_path, capsys, change,
                                                              message):
    """Issue 33, item 15: a manifest is checked on every read; nothing runs away, nothing tracebacks."""
    copy = tmp_path / "runs"
    shutil.copytree(runs_dir, copy)
    path = copy / ".cv" / f"{finished_cv}.json"
    manifest = json.loads(path.read_text())
    if change == "same run for every fold":
        change = {"runs": [{"run": manifest["runs"][0]["run"], "fold": f} for f in range(3)]}
    path.write_text(json.dumps({**manifest, **change}))
    with pytest.raises(cv.CVError, match=r"manifest .* is damaged"):
        cv.report(finished_cv, copy)
    assert train_cli(["--cv-report", finished_cv, "--runs-dir", str(copy)]) == 2
    assert message in capsys.readouterr().err
    assert train_cli(["--cv-report", "--runs-dir", str(copy)]) == 0
    assert f"skipped: {finished_cv}.json" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["unknown label", "short logits", "nan probabilities"])
def test_a_damaged_fold_evaluation_is_named_not_a_traceback(finished_cv, runs_dir, tmp_path, damage):
    copy = tmp_path / "runs"
    shutil.copytree(runs_dir, copy)
    run = cv.fold_runs(cv.load_manifest(finished_cv, copy), copy)[0][1]
    report = json.loads(run.eval_file.read_text())
    p = report["predictions"][0]
    if damage == "unknown label":
        p["true"] = "martian"
    elif damage == "short logits":
        p["logits"] = p["logits"][:3]
    else:
        p["probs"] = [float("nan")] * len(p["probs"])
    run.eval_file.write_text(json.dumps(report).replace("NaN", "NaN"))
    rep = cv.report(finished_cv, copy)
    assert rep["folds"][0]["state"] == "damaged" and "evaluation file is damaged" in rep["folds"][0]["missing"]
    with run.metrics_file.open("a") as fh:
        fh.write('{"kind": "epoch", "epoch": "x", "val_macro_f1": "y"}\nnot json\n')
    cv.report(finished_cv, copy)  # a bad metrics line is skipped


def test_a_refits_training_chart_has_no_empty_validation_panel():
    """Issue 33: a refit (no validation split) showed an empty validation chart."""
    from ui.figures import training_curves
    steps = [{"kind": "step", "epoch": 1, "step": 1, "train_loss": 1.0}]
    refit = training_curves([*steps, {"kind": "epoch", "epoch": 1, "step": 1, "train_loss": 1.0}])
    assert [a.text for a in refit.layout.annotations] == ["loss"]
    validated = training_curves([*steps, {"kind": "epoch", "epoch": 1, "step": 1, "train_loss": 1.0, "val_loss": 0.5, "val_macro_f1": 0.3, "val_accuracy": 0.5, "val_balanced_accuracy": 0.4}])
    assert [a.text for a in validated.layout.annotations] == ["loss", "validation"]
