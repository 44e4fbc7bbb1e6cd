"""Metrics against hand-computed figures, calibration, evaluate_model on a synthetic set, and the CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from core import evaluate, inference
from core.calibration import expected_calibration_error, fit_temperature, reliability_diagram, softmax
from core.checkpoint import checkpoint_payload
from core.checkpoint_file import save_checkpoint
from core.classes import CLASS_NAMES
from core.data import DataSpec, load_dataset
from core.metrics import classification_metrics, confused_pairs, majority_baseline, per_class_curves
from core.models import build_model
from core.precision import bf16_native
from core.settings import PROJECT_ROOT
from tests import model_fixtures

NAMES = ("a", "b", "c")
# true 0: 2 right, 1 as b, 1 as c | true 1: 2 right, 1 as a | true 2: 3 right
Y_TRUE = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
Y_PRED = [0, 0, 1, 2, 1, 1, 0, 2, 2, 2]


def _probs(pred, n_classes=3, p=0.8):
    out = np.full((len(pred), n_classes), (1 - p) / (n_classes - 1))
    out[np.arange(len(pred)), pred] = p
    return out



pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="session")
def v32_data(v32_folder):
    return load_dataset([v32_folder])


@pytest.fixture(scope="session")
def val_report(tiny, v32_data):
    return evaluate.evaluate_model(tiny, v32_data, "val")


# --- metrics ----------------------------------------------------------------------------------------

def test_metrics_match_hand_computed_confusion():
    m = classification_metrics(Y_TRUE, _probs(Y_PRED), NAMES)
    assert m["confusion"] == [[2, 1, 1], [1, 2, 0], [0, 0, 3]]
    per = {c["class"]: c for c in m["per_class"]}
    # precision = diagonal / column sum, recall = diagonal / row sum
    assert per["a"]["precision"] == pytest.approx(2 / 3) and per["a"]["recall"] == pytest.approx(2 / 4)
    assert per["b"]["precision"] == pytest.approx(2 / 3) and per["b"]["recall"] == pytest.approx(2 / 3)
    assert per["c"]["precision"] == pytest.approx(3 / 4) and per["c"]["recall"] == pytest.approx(1.0)
    assert per["a"]["f1"] == pytest.approx(4 / 7) and per["c"]["f1"] == pytest.approx(6 / 7)
    assert [c["support"] for c in m["per_class"]] == [4, 3, 3]
    assert m["macro_f1"] == pytest.approx((4 / 7 + 2 / 3 + 6 / 7) / 3)  # = 44/63
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)  # = 13/18
    assert m["accuracy"] == pytest.approx(0.7)


def test_majority_baseline_and_confused_pairs():
    base = majority_baseline(Y_TRUE, NAMES)
    assert base["class"] == "a" and base["accuracy"] == pytest.approx(0.4)
    assert base["balanced_accuracy"] == pytest.approx(1 / 3)
    assert base["macro_f1"] == pytest.approx((2 * 0.4 / 1.4) / 3)  # F1 of `a` (p 0.4, r 1), zero for b, c
    pairs = confused_pairs([[2, 1, 1], [1, 2, 0], [0, 0, 3]], NAMES)
    assert [(p["true"], p["pred"], p["count"]) for p in pairs] == [("b", "a", 1), ("a", "b", 1), ("a", "c", 1)]
    assert pairs[0]["fraction_of_true"] == pytest.approx(1 / 3)


def test_curves_skip_absent_classes_and_stay_small():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 5000)  # class c never occurs
    probs = softmax(rng.normal(size=(5000, 3)) + 2 * np.eye(3)[y])
    curves = per_class_curves(y, probs, NAMES, max_points=50)
    assert set(curves["classes"]) == {"a", "b"} and "c" in curves["skipped"]
    a = curves["classes"]["a"]
    assert 0.8 < a["roc_auc"] <= 1 and 0.5 < a["average_precision"] <= 1
    assert len(a["roc"]["fpr"]) <= 50 and len(a["pr"]["recall"]) == len(a["pr"]["precision"]) <= 4 * 50
    assert a["roc"]["fpr"][0] == 0 and a["roc"]["tpr"][-1] == 1


def test_the_pr_curve_drawn_is_the_one_its_average_precision_sums():
    """A rare class's curve keeps its corners: one tile, scored highest, is AP 1.00 and drawn as (1, 1)."""
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(500, int), [1]]
    probs = softmax(rng.normal(size=(501, 3)))
    probs[-1] = [0.01, 0.98, 0.01]
    curve = per_class_curves(y, probs, NAMES, max_points=101)["classes"]["b"]
    assert curve["average_precision"] == 1.0
    assert curve["pr"]["recall"][-1] == 1.0 and curve["pr"]["precision"][-1] == 1.0
    for cls in ("a", "b"):
        c = per_class_curves(y, probs, NAMES)["classes"][cls]
        recall, precision = np.array(c["pr"]["recall"]), np.array(c["pr"]["precision"])
        assert np.sum(np.diff(recall) * precision[1:]) == pytest.approx(c["average_precision"], abs=2e-3)


# --- calibration ------------------------------------------------------------------------------------

@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_fit_temperature_recovers_a_known_temperature(true_t):
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, (4000, 8))  # calibrated logits: labels are drawn from softmax(z)
    labels = np.argmax(z + rng.gumbel(size=z.shape), axis=1)
    assert fit_temperature(z * true_t, labels) == pytest.approx(true_t, rel=0.08)


def test_fit_temperature_falls_back_to_one():
    assert fit_temperature(np.zeros((0, 8)), np.zeros(0, int)) == 1.0
    assert fit_temperature(np.ones((10, 3)), np.zeros(10, int)) == 1.0  # a single class
    bad = np.ones((10, 3))
    bad[0, 0] = np.nan
    assert fit_temperature(bad, np.arange(10) % 3) == 1.0


def test_ece_on_a_hand_example():
    probs = np.array([[0.85, 0.15], [0.85, 0.15], [0.25, 0.75], [0.65, 0.35]])
    labels = np.array([0, 1, 1, 0])
    # bins (0.8, 0.9]: 2 tiles, conf 0.85, acc 0.5 | (0.7, 0.8]: conf 0.75, acc 1 | (0.6, 0.7]: conf 0.65, acc 1
    expected = 2 / 4 * 0.35 + 1 / 4 * 0.25 + 1 / 4 * 0.35
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(expected)
    diagram = reliability_diagram(probs, labels, n_bins=10)
    assert sum(diagram["count"]) == 4 and diagram["count"][8] == 2 and diagram["accuracy"][8] == 0.5
    assert diagram["accuracy"][0] is None


# --- evaluate_model ---------------------------------------------------------------------------------

def test_evaluate_model_report(val_report, v32_data):
    r = val_report
    n = len(v32_data.select("val", originals_only=True))
    assert r["n"] == n == len(r["predictions"]) and r["split"] == "val" and r["originals_only"] and not r["tta"]
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "per_class", "confusion", "majority_baseline",
                "curves", "calibration", "confused_pairs", "top_losses", "predictions", "checkpoint"):
        assert key in r, key
    assert sum(c["support"] for c in r["per_class"]) == n
    assert r["checkpoint"]["arch"] == "simple_cnn" and r["checkpoint"]["temperature"] == 1.0
    assert {"ece_uncalibrated", "ece_calibrated", "temperature"} <= set(r["calibration"])
    absent = [c["class"] for c in r["per_class"] if c["support"] == 0]
    assert set(absent) <= set(r["curves"]["skipped"])
    p = r["predictions"][0]
    assert {"source", "path", "name", "true", "pred", "probs"} <= set(p)
    assert sum(p["probs"]) == pytest.approx(1, abs=1e-3)
    accuracy = np.mean([q["true"] == q["pred"] for q in r["predictions"]])
    assert accuracy == pytest.approx(r["accuracy"])
    assert all(t["true"] != t["pred"] for t in r["top_losses"])
    assert [t["prob"] for t in r["top_losses"]] == sorted((t["prob"] for t in r["top_losses"]), reverse=True)
    json.dumps(r, allow_nan=False)  # strict JSON


def test_evaluate_model_learns_and_tta_is_rotation_invariant(tiny, v32_data):
    calls = []
    r = evaluate.evaluate_model(tiny, v32_data, "all", originals_only=False, tta=True,
                                on_progress=lambda d, t, s: calls.append((d, t)))
    assert r["tta"] and r["n"] == len(v32_data.records)
    assert calls and calls[-1][0] == calls[-1][1] == r["n"]
    assert r["macro_f1"] > r["majority_baseline"]["macro_f1"] + 0.3  # the tiny model really learned
    tiles = v32_data.tiles(v32_data.records[:4])
    a = inference.predict_logits(tiny, tiles, tta=True, on_progress=lambda *a: None)
    b = inference.predict_logits(tiny, np.ascontiguousarray(np.rot90(tiles, 1, axes=(1, 2))[:, ::-1]), tta=True,
                                on_progress=lambda *a: None)
    np.testing.assert_allclose(a, b, atol=1e-3)  # the mean over D4 is the same for any view of the tile


def test_bf16_evaluation_says_so_and_agrees_with_fp32(tiny, v32_data, val_report):
    r = evaluate.evaluate_model(tiny, v32_data, "val", bf16=True)
    assert val_report["precision"] == "fp32"
    assert r["precision"] == ("bf16" if bf16_native(tiny.device) else "fp32")  # no bf16 unit: fp32, and said
    agree = np.mean([a["pred"] == b["pred"] for a, b in zip(r["predictions"], val_report["predictions"], strict=True)])
    assert agree >= 0.95
    assert r["macro_f1"] == pytest.approx(val_report["macro_f1"], abs=0.05)
    if r["precision"] == "bf16":  # the logits really came from bf16 (they are not bit-identical to fp32)
        tiles = v32_data.tiles(v32_data.records[:16])
        quiet = lambda *a: None  # noqa: E731
        a = inference.predict_logits(tiny, tiles, on_progress=quiet)
        b = inference.predict_logits(tiny, tiles, on_progress=quiet, bf16=True)
        assert not np.array_equal(a, b) and np.allclose(a, b, atol=0.5)
    assert ("bf16" in evaluate.format_report(r)) == (r["precision"] == "bf16")


def test_save_and_load_report(val_report, tmp_path):
    path = evaluate.save_report(val_report, tmp_path / "r.json")
    assert evaluate.load_report(path) == val_report
    (tmp_path / "other.json").write_text("{\"a\": 1}")
    with pytest.raises(ValueError, match="not a HiRISE Studio evaluation report"):
        evaluate.load_report(tmp_path / "other.json")


def test_format_report_shows_baseline_and_rare_class_note(val_report):
    text = evaluate.format_report(val_report)
    assert "baseline" in text and "macro-F1" in text and "confusion matrix" in text and "support" in text
    if val_report["few_tiles"]:
        assert "one tile more or less" in text


# --- CLI --------------------------------------------------------------------------------------------

def _write_bad_checkpoints(tmp_path) -> dict[str, tuple[str, str]]:
    """name -> (path, expected message fragment)."""
    model = build_model("simple_cnn")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 definitely not a torch file" * 10)
    plain = tmp_path / "state_dict.pt"
    torch.save(model.state_dict(), plain)
    kw = dict(arch="simple_cnn", image_size=32, mean=0.4, std=0.1, config={})
    seven = checkpoint_payload(model, class_names=list(CLASS_NAMES[:7]), **kw)
    classes = save_checkpoint(tmp_path / "classes.pt", seven)
    wrong = checkpoint_payload(model, **kw)
    wrong["arch"] = "resnet18"
    arch = save_checkpoint(tmp_path / "arch.pt", wrong)
    return {"missing": (str(tmp_path / "nope.pt"), "not found"),
            "corrupt": (str(corrupt), "not a readable checkpoint"),
            "state_dict": (str(plain), "not a HiRISE Studio checkpoint"),
            "classes": (str(classes), "predicts classes"),
            "arch": (str(arch), "do not fit a resnet18")}


@pytest.mark.parametrize("case", ["missing", "corrupt", "state_dict", "classes", "arch"])
def test_cli_refuses_bad_checkpoints_in_one_line(case, tmp_path, v32_folder, capsys):
    path, message = _write_bad_checkpoints(tmp_path)[case]
    assert evaluate.main(["--checkpoint", path, "--data", str(v32_folder), "--split", "val"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("error:") and len(err.splitlines()) == 1


def test_cli_bad_data_path(tmp_path, capsys):
    ck = str(model_fixtures.tiny_checkpoint())
    assert evaluate.main(["--checkpoint", ck, "--data", str(tmp_path / "nothing-here"), "--split", "val"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1


def test_cli_report_and_json(tmp_path, v32_folder, capsys):
    out = tmp_path / "report.json"
    code = evaluate.main(["--checkpoint", str(model_fixtures.tiny_checkpoint()), "--data", str(v32_folder),
                          "--split", "test", "--out", str(out), "--batch-size", "16"])
    text = capsys.readouterr().out
    assert code == 0
    assert "baseline" in text and "confusion matrix" in text and "recall" in text and "support" in text
    assert "most confused" in text
    report = evaluate.load_report(out)
    assert report["split"] == "test" and report["n"] > 0


def test_cli_default_checkpoint_missing_runs_as_a_module(tmp_path, v32_folder):
    env = {**os.environ, "HIRISE_CHECKPOINT": str(tmp_path / "not-trained-yet.pt")}
    proc = subprocess.run([sys.executable, "-m", "core.evaluate", "--data", str(v32_folder), "--split", "val"],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "train a model first" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_model_is_scored_on_the_tiles_its_checkpoint_recorded(tiny, v32_folder):
    """Same data, another split today: the checkpoint's recorded val tiles are still the ones scored."""
    import dataclasses

    from core.data import split_manifest
    trained_on = load_dataset(DataSpec((v32_folder,), split_mode="grouped", split_seed=0))
    today = load_dataset(DataSpec((v32_folder,), split_mode="grouped", split_seed=1))
    recorded = split_manifest(trained_on)
    own_val = {r.name for r in today.select("val", originals_only=True)}
    assert own_val != set(recorded["val"]["files"])  # the two seeds split differently
    model = dataclasses.replace(tiny, splits=recorded)
    report = evaluate.evaluate_model(model, today, "val")
    assert {p["name"] for p in report["predictions"]} == set(recorded["val"]["files"])
    assert "recorded in the checkpoint" in report["tiles_from"]
    assert report["tiles_digest"] == evaluate.tiles_digest(recorded["val"]["files"])
    # a model that records nothing is scored on the data's own split, and says so
    plain = evaluate.evaluate_model(dataclasses.replace(tiny, splits={}), today, "val")
    assert {p["name"] for p in plain["predictions"]} == own_val and "own val split" in plain["tiles_from"]
    # recorded tiles missing from the loaded data: the data's own split, with the reason
    missing = dataclasses.replace(tiny, splits={"val": {"files": ["ESP_000000_0000_RED-0001.jpg"]}})
    partial = evaluate.evaluate_model(missing, today, "val")
    assert "only 0 of the 1 val tiles" in partial["tiles_from"]
    assert {p["name"] for p in partial["predictions"]} == own_val


def test_ensemble_of_saved_reports(val_report, tmp_path, capsys):
    import copy

    from tools.ensemble_reports import ensemble, main
    same = ensemble([val_report, val_report])
    assert same["macro_f1"] == pytest.approx(val_report["macro_f1"]) and same["n"] == val_report["n"]
    # a second model that is sure of the truth everywhere pulls the average to the right answer
    sure = copy.deepcopy(val_report)
    for p in sure["predictions"]:
        p["probs"] = [1.0 if c == p["true"] else 0.0 for c in sure["class_names"]]
    assert ensemble([val_report, sure])["accuracy"] >= val_report["accuracy"]
    other = copy.deepcopy(val_report)
    other["predictions"] = other["predictions"][1:]
    with pytest.raises(ValueError, match="different tiles"):
        ensemble([val_report, other])
    for name, report in (("a.json", val_report), ("b.json", other)):
        evaluate.save_report(report, tmp_path / name)
    assert main([str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 2
    assert "different tiles" in capsys.readouterr().err


def test_a_reports_warnings_are_about_the_tiles_it_scored():
    """`--split all` scores every tile: a class missing from test is no warning about it; scoring val, a class
    missing from val is."""
    from types import SimpleNamespace

    from core.classes import CLASS_NAMES
    from core.data import Record
    coverage = ["class spider has no tiles in test (only 2 observations: a class needs one per split); ..."]
    records = [Record("s", f"{i}", f"{i}.jpg", label) for i, label in enumerate((0, 1, 7))]
    data = SimpleNamespace(coverage=coverage, source_warnings=["src: 3 labelled files are missing"], records=records,
                           labels=lambda recs: np.array([r.label for r in recs]))
    names = list(CLASS_NAMES)
    assert evaluate.scored_warnings(data, np.array([0, 1, 7]), names, "all") == ["src: 3 labelled files are missing"]
    on_val = evaluate.scored_warnings(data, np.array([0, 1]), names, "val")
    assert on_val[1].startswith("spider: no tiles in the val tiles scored here") and len(on_val) == 2


def test_top2_accuracy_and_ece_carry_intervals_over_observations(val_report):
    """Issue 33 (walk): every headline figure on Evaluate has its interval, top-2 accuracy and ECE included."""
    from core.bootstrap import statistic_interval
    from core.calibration import ece_columns, ece_of_sums

    report = val_report
    for key, value in (("top2_accuracy", report["top2_accuracy"]),
                       ("ece_calibrated", report["calibration"]["ece_calibrated"])):
        low, high = report["intervals"][key]
        assert low - 1e-4 <= value <= high + 1e-4, key  # intervals are kept to 4 decimals
    rng = np.random.default_rng(0)
    probs, y = rng.dirichlet(np.ones(8) * 0.5, size=200), rng.integers(0, 8, 200)
    assert ece_of_sums(ece_columns(probs, y).sum(0)) == pytest.approx(expected_calibration_error(probs, y))
    one_group = statistic_interval(ece_columns(probs, y), ["a"] * 200, ece_of_sums)  # one observation: no spread
    assert one_group[0] == one_group[1] == pytest.approx(expected_calibration_error(probs, y), abs=1e-4)
