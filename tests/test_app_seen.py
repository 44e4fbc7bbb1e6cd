"""The Evaluate and Compare pages score a model only on tiles it never trained on (core.seen): how many were left
out and why, and a refusal in words when none, or too few, is left. The runs are made by hand around the tiny
fixture model (no training): only their checkpoints' recorded splits differ."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.checkpoint import read_checkpoint
from core.checkpoint_file import save_checkpoint
from core.data import load_dataset, split_manifest
from core.experiment.runs import Run
from core.settings import APP_STATE_FILE, RUNS_DIR
from tests import model_fixtures, synthetic
from tests.helpers import button, run_page, texts

OBS = [f"ESP_{10000 + o:06d}_{2000 + o:04d}_RED" for o in range(12)]
PREFIX = "20990101-000000-"  # newer than any other test's runs: listed first


def _manifest(data, val, test) -> dict:
    def names(observations):
        return sorted(r.name for r in data.records if r.is_original and r.observation in {OBS[o] for o in observations})
    return {"val": {"files": names(val), "observations": [OBS[o] for o in val]},
            "test": {"files": names(test), "observations": [OBS[o] for o in test]}}


@pytest.fixture(scope="module")
def hand_made_runs(tmp_path_factory):
    """Three finished runs on one synthetic folder (observations 4 and 10 are its official val, 5 and 11 its test):
    A holds out the official val and test; B holds out observations 0 and 4 (val), 2 and 3 (test), so it trained on
    10, half of A's val; C holds out 0 and 1, so it trained on all of A's val."""
    folder = synthetic.write_folder(tmp_path_factory.mktemp("seen-app-data"),
                                    synthetic.official_files("3.2", n_obs=12, per_obs=6, missing=0))
    Path(APP_STATE_FILE).write_text(json.dumps({"data_paths": [str(folder)]}))
    data = load_dataset([str(folder)])
    payload = read_checkpoint(model_fixtures.tiny_checkpoint())
    splits = {"a": split_manifest(data), "b": _manifest(data, (0, 4), (2, 3)), "c": _manifest(data, (0,), (1,))}
    config = {"data": [str(folder)], "model": "simple_cnn", "init": "scratch", "image_size": 32, "epochs": 1}
    best = {"kind": "epoch", "epoch": 0, "best": True, "val_macro_f1": 0.5, "val_balanced_accuracy": 0.5,
            "val_accuracy": 0.5, "val_loss": 1.0, "train_loss": 1.0}
    for name, manifest in splits.items():
        run = Run(Path(RUNS_DIR) / f"{PREFIX}{name}")
        run.path.mkdir(parents=True)
        run.config_file.write_text(json.dumps(config))
        run.status_file.write_text(json.dumps({"state": "completed", "kind": "train", "best": best}))
        run.metrics_file.write_text(json.dumps(best) + "\n")
        save_checkpoint(run.best_checkpoint, {**payload, "config": config, "splits": manifest})
    yield {name: f"{PREFIX}{name}" for name in splits}
    Path(APP_STATE_FILE).unlink(missing_ok=True)


def test_evaluate_scores_only_the_tiles_a_model_never_trained_on_and_refuses_when_none_is_left(hand_made_runs):
    at = run_page("views/evaluate.py")
    at.selectbox[0].set_value(f"run {hand_made_runs['b']}").run()
    at.selectbox[1].set_value("all").run()
    button(at, "Evaluate on the all split").click().run()
    assert not at.exception, [e.value for e in at.exception]
    said = texts(at)
    assert f"Scored on 24 of 72 tiles: 48 excluded because run {hand_made_runs['b']} trained on them" in said
    assert at.metric and "24 tiles · split all" in said
    at.selectbox[0].set_value(f"run {hand_made_runs['a']}").run()
    at.selectbox[1].set_value("train").run()
    button(at, "Evaluate on the train split").click().run()
    refused = [e.value for e in at.error]
    assert any(e.startswith(f"Not scored: nothing is left to score: all 48 train tiles excluded because run "
                            f"{hand_made_runs['a']} trained on them") for e in refused), refused
    assert not at.metric and not at.exception


def test_compare_scores_every_model_on_the_tiles_none_trained_on(hand_made_runs, monkeypatch):
    monkeypatch.setattr("ui.compare.MIN_COMMON_TILES", 5)  # these synthetic splits hold 12 val tiles
    at = run_page("views/compare.py")
    a, b = hand_made_runs["a"], hand_made_runs["b"]
    at.multiselect[0].set_value([a, b]).run()
    at.multiselect[1].set_value([]).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert f"Scored on 6 of 12 val tiles: 6 excluded because {b} trained on them" in texts(at)
    metrics = next(d.value for d in at.dataframe if "macro-F1" in d.value.columns)
    assert list(metrics["val tiles"]) == [6, 6] and metrics["tile set"].nunique() == 1
    pairs = next(d.value for d in at.dataframe if "A" in d.value.columns)
    assert list(pairs["tiles"]) == [6]  # the paired bootstrap runs on those same tiles


@pytest.mark.parametrize("run, refusal", [
    ("b", "only 6 of the 12 val tiles are tiles none of these models trained on (6 excluded because {b} trained "
          "on them"),
    ("c", "nothing is left to score: all 12 val tiles excluded because {c} trained on them")])
def test_compare_refuses_when_too_few_or_no_tiles_are_left(hand_made_runs, run, refusal):
    at = run_page("views/compare.py")
    at.multiselect[0].set_value([hand_made_runs["a"], hand_made_runs[run]]).run()
    at.multiselect[1].set_value([]).run()
    refused = [e.value for e in at.error]
    assert any(e.startswith("Not compared: " + refusal.format(**hand_made_runs)) for e in refused), refused
    assert not any("macro-F1" in d.value.columns for d in at.dataframe) and not at.exception
    assert "No setting differs between these 2 models" in texts(at)  # the settings are still compared
