"""Issue 29: out-of-fold figures on every file (core.experiment.cv_files) and the champion/challenger gate (core.defaults)."""
from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from core import defaults
from core.classes import CLASS_NAMES
from core.experiment import cv, cv_files
from core.experiment.runs import Run, read_json, write_json_atomic
from core.training.runner import main as train_cli
from tests.test_cv import TINY_FLAGS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("defaults-runs")


@pytest.fixture(scope="module")
def champion_cv(data_dir, runs_dir, one_thread) -> str:
    """A tiny 3-fold cross-validation, and its refit: every fold scores every file of its held-out observations."""
    assert train_cli(["--data", str(data_dir), *TINY_FLAGS, "--cv", "3", "--name", "champ",
                      "--runs-dir", str(runs_dir)]) == 0
    cv_id = cv.list_cvs(runs_dir)[0]["id"]
    assert train_cli(["--data", str(data_dir), *TINY_FLAGS, "--val-fraction", "0", "--test-fraction", "0",
                      "--calibrate-from", cv_id, "--run-dir", str(runs_dir / "champ-refit")]) == 0
    return cv_id


def _copy_cv(runs_dir: Path, cv_id: str, dest: Path, rewrite) -> str:
    """A copy of a cross-validation (manifest, folds and refit) under a new id, each fold's all-files logits
    rewritten by `rewrite(y, logits) -> logits`: a challenger with known predictions on the same folds."""
    new_id = f"{cv_id[:-4]}{len(cv.list_cvs(dest)):04x}"
    manifest = cv.load_manifest(cv_id, runs_dir)
    entries = []
    for fold, run in cv.fold_runs(manifest, runs_dir):
        copy = Run(dest / f"{run.name}-{new_id}")
        shutil.copytree(run.path, copy.path)
        raw = read_json(copy.oof_files_file)
        for row in raw["files"]:
            row["logits"] = rewrite(row["true"], row["logits"])
            row["logits_tta"] = rewrite(row["true"], row["logits_tta"])
        write_json_atomic(copy.oof_files_file, raw)
        entries.append({"run": copy.name, "fold": fold})
    refit = dest / f"refit-{new_id}"
    shutil.copytree(runs_dir / "champ-refit", refit)
    config = json.loads((refit / "config.json").read_text())
    (refit / "config.json").write_text(json.dumps({**config, "calibrate_from": new_id}))
    write_json_atomic(dest / ".cv" / f"{new_id}.json", {**manifest, "id": new_id, "runs": entries})
    return new_id


def test_every_fold_scores_every_file_and_the_report_shows_three_views(champion_cv, data_dir, runs_dir, capsys):
    from core.data import DataSpec, load_dataset
    data = load_dataset(DataSpec((str(data_dir),)))
    named = [r for r in data.records if r.observation]
    files, missing = cv_files.pooled(cv.fold_runs(cv.load_manifest(champion_cv, runs_dir), runs_dir))
    assert not missing
    assert sorted(files["name"]) == sorted(r.name for r in named)  # every file of every observation, once
    assert files["original"].sum() == sum(r.is_original for r in named) < len(named)  # copies are scored too
    assert files["logits_tta"] is not None and not np.allclose(files["logits_tta"], files["logits"])
    rep = cv.report(champion_cv, runs_dir)
    views = rep["files"]["views"]
    assert set(views) == set(cv_files.VIEWS) and all(views.values())
    assert views["originals"]["n"] == files["original"].sum() and views["all files"]["n"] == len(named)
    # the originals' view is the same tiles as the pooled originals' report, scored by the same fold models
    assert views["originals"]["accuracy"] == pytest.approx(rep["pooled"]["accuracy"], abs=1e-6)
    for view in views.values():
        fa = view["false_alarms"]
        assert fa["other_files"] == int((np.asarray(view["confusion"]).sum(1))[0])
        assert fa["interval"][0] <= fa["rate"] <= fa["interval"][1]
    text = cv.format_report(rep)
    assert "all files, TTA" in text and "false alarms at 0.9" in text and "always-other accuracy" in text
    section = text[text.index("out-of-fold on every file"):]
    assert section.index("recall") < section.index("macro-F1")  # per-class recall leads


def test_cv_score_backfills_a_fold_without_all_files_predictions(champion_cv, runs_dir, tmp_path, capsys):
    copy = tmp_path / "runs"
    shutil.copytree(runs_dir, copy)
    folds = cv.fold_runs(cv.load_manifest(champion_cv, copy), copy)
    folds[1][1].oof_files_file.unlink()
    assert cv.report(champion_cv, copy)["files"]["views"] is None  # never a partial pool
    assert "not scored yet" in cv.format_report(cv.report(champion_cv, copy))
    assert train_cli(["--cv-score", champion_cv, "--runs-dir", str(copy), "--no-tta"]) == 0
    out = capsys.readouterr().out
    assert "scoring fold model 1 of 1" in out and "all files, TTA: not scored" in out
    assert cv.report(champion_cv, copy)["files"]["views"]["all files"] is not None
    folds[0][1].oof_files_file.write_text("{ damaged")
    rep = cv.report(champion_cv, copy)
    assert rep["files"]["views"] is None and "not an all-files prediction file" in rep["files"]["missing"][0]


def test_false_alarms_count_other_files_called_a_landmark_at_the_threshold():
    y = np.array([0, 0, 0, 0, 1])
    probs = np.full((5, 8), 0.0)
    probs[:, 0] = 1.0
    probs[0] = [0.05, 0.95, 0, 0, 0, 0, 0, 0]  # an alarm
    probs[1] = [0.15, 0.85, 0, 0, 0, 0, 0, 0]  # below 0.9: none
    fa = cv_files.false_alarms(y, probs, ["a", "a", "b", "c", "d"])
    assert (fa["alarms"], fa["other_files"], fa["rate"]) == (1, 4, 0.25)


def test_the_first_champion_then_a_challenger_that_wins_is_promoted(champion_cv, runs_dir, tmp_path, capsys):
    registry = tmp_path / "checkpoints" / "defaults.json"
    with pytest.raises(defaults.RegistryError, match="no default to beat"):
        defaults.promote(champion_cv, runs_dir, registry=registry)
    first = defaults.promote(champion_cv, runs_dir, first=True, why="the previous default's recipe",
                             registry=registry)
    assert (registry.parent / first["checkpoint"]).is_file() and defaults.oof_file(champion_cv, registry).is_file()
    from core.digest import file_digest
    from core.onnx_model import load_onnx, twin_path
    shipped = registry.parent / first["checkpoint"]  # shipped with its verified ONNX twin (issue 30)
    assert load_onnx(twin_path(shipped), expect_digest=file_digest(shipped)).verified["agreement"] >= 0.995
    assert "ONNX twin" in capsys.readouterr().out
    reg = defaults.read_registry(registry)
    assert reg["current"] == champion_cv and reg["entries"][0]["figures"]["all files"]["macro_f1"][0] > 0

    winner = _copy_cv(runs_dir, champion_cv, runs_dir, _perfect)
    entry = defaults.promote(winner, runs_dir, registry=registry)
    assert "accepted" in capsys.readouterr().out and entry["gate"]["passes"]
    reg = defaults.read_registry(registry)
    assert reg["current"] == winner and [e["id"] for e in reg["entries"]] == [champion_cv, winner]
    assert (registry.parent / reg["entries"][0]["checkpoint"]).is_file()  # the earlier default stays
    path, warning = defaults.default_checkpoint_file(registry.parent, tmp_path / "fallback.pt", registry)
    assert path == registry.parent / entry["checkpoint"] and warning is None


def _perfect(y, logits):
    out = [0.0] * len(CLASS_NAMES)
    out[y] = 9.0
    return out


def test_a_challenger_worse_no_better_or_on_other_folds_is_refused_with_the_figures(champion_cv, runs_dir, tmp_path):
    registry = tmp_path / "checkpoints" / "defaults.json"
    dest = tmp_path / "runs"
    shutil.copytree(runs_dir, dest)
    best = _copy_cv(dest, champion_cv, dest, _perfect)
    defaults.promote(best, dest, first=True, registry=registry)
    loser = _copy_cv(dest, champion_cv, dest, lambda y, logits: [9.0] + [0.0] * (len(CLASS_NAMES) - 1))
    with pytest.raises(defaults.RegistryError, match=r"refused: worse beyond noise.*the default stays") as exc:
        defaults.promote(loser, dest, registry=registry)
    assert "macro-F1" in str(exc.value) and "\n" not in str(exc.value)
    tie = _copy_cv(dest, champion_cv, dest, _perfect)
    with pytest.raises(defaults.RegistryError, match="better beyond noise on neither"):
        defaults.promote(tie, dest, registry=registry)
    shutil.rmtree(dest / f"refit-{tie}")
    with pytest.raises(defaults.RegistryError, match="no completed refit"):
        defaults.promote(tie, dest, registry=registry)
    manifest = cv.load_manifest(loser, dest)
    write_json_atomic(dest / ".cv" / f"{loser}.json", {**manifest, "seed": 7})
    with pytest.raises(defaults.RegistryError, match=r"seed 7.*same folds"):
        defaults.promote(loser, dest, registry=registry)
    assert defaults.read_registry(registry)["current"] == best  # nothing changed
    assert len(defaults.read_registry(registry)["entries"]) == 1


@pytest.mark.parametrize("bad, message", [("nope", "no cross-validation 'nope'"), ("../x", "not a cross-validation id"),
                                          ("a\0b", "not a cross-validation id")])
def test_promote_refuses_unknown_or_unsafe_ids_in_one_line(runs_dir, tmp_path, capsys, bad, message, monkeypatch):
    monkeypatch.setattr(defaults, "registry_path", lambda: tmp_path / "defaults.json")
    assert train_cli(["--promote", bad, "--runs-dir", str(runs_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_an_incomplete_cv_is_refused(champion_cv, runs_dir, tmp_path):
    dest = tmp_path / "runs"
    shutil.copytree(runs_dir, dest)
    folds = cv.fold_runs(cv.load_manifest(champion_cv, dest), dest)
    folds[2][1].update_status(state="cancelled")
    with pytest.raises(defaults.RegistryError, match="incomplete"):
        defaults.promote(champion_cv, dest, first=True, registry=tmp_path / "defaults.json")


def test_two_promotions_at_once_one_wins_and_the_registry_stays_valid(champion_cv, runs_dir, tmp_path):
    registry = tmp_path / "checkpoints" / "defaults.json"
    results: list = []

    def attempt():
        try:
            results.append(defaults.promote(champion_cv, runs_dir, first=True, registry=registry))
        except defaults.RegistryError as exc:
            results.append(exc)
    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(isinstance(r, dict) for r in results) == 1
    assert isinstance(next(r for r in results if not isinstance(r, dict)), defaults.RegistryError)
    assert len(defaults.read_registry(registry)["entries"]) == 1


def test_scan_thresholds_set_at_once_on_eight_defaults_all_land(tmp_path):
    """Eight sessions set thresholds on eight registered defaults at the same moment: each read-modify-write waits
    for the others' lock, so no write is lost and the registry stays valid JSON (without the lock, most runs lose
    some)."""
    registry = tmp_path / "defaults.json"
    ids = [f"e{i}" for i in range(8)]
    registry.write_text(json.dumps({"format": defaults.FORMAT, "current": "e0",
                                    "entries": [{"id": e, "checkpoint": f"{e}.pt", "cv": {}} for e in ids]}))
    barrier = threading.Barrier(len(ids))

    def attempt(i: int):
        barrier.wait()
        defaults.set_scan_threshold(ids[i], round(0.9 + i / 100, 2), f"set by {ids[i]}", registry=registry)
    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(len(ids))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    entries = {e["id"]: e for e in defaults.read_registry(registry)["entries"]}
    assert [(entries[e].get("scan_threshold") or {}).get("why") for e in ids] == [f"set by {e}" for e in ids]
    assert [entries[e]["scan_threshold"]["value"] for e in ids] == [round(0.9 + i / 100, 2) for i in range(8)]


def test_a_registry_damaged_by_hand_is_named_and_its_last_good_default_loads(tmp_path):
    """Every write leaves a last good copy beside the registry; damage the registry by hand and that copy's default
    (with its scan threshold) serves, the warning naming both the damage and what serves."""
    registry = tmp_path / "defaults.json"
    fallback = tmp_path / "builtin.pt"
    (tmp_path / "champ.pt").write_bytes(b"x")
    registry.write_text(json.dumps({"format": defaults.FORMAT, "current": "a",
                                    "entries": [{"id": "a", "checkpoint": "champ.pt", "cv": {}}]}))
    defaults.set_scan_threshold("a", 0.99, "out of fold", registry=registry)  # a write: both files
    assert defaults.last_good_path(registry).read_text() == registry.read_text()
    registry.write_text("{ edited by hand")
    serving = defaults.default_serving(tmp_path, fallback, registry)
    assert serving.checkpoint == tmp_path / "champ.pt" and serving.scan_threshold == (0.99, "out of fold")
    assert "cannot be read" in serving.warning and "last good copy serves: champ.pt" in serving.warning
    with pytest.raises(defaults.RegistryError, match="cannot be read"):  # nothing is written over the damage
        defaults.set_scan_threshold("a", 0.98, "x", registry=registry)
    assert registry.read_text() == "{ edited by hand"
    defaults.last_good_path(registry).write_text("[]")  # the copy damaged too: the built-in default, said
    serving = defaults.default_serving(tmp_path, fallback, registry)
    assert serving.checkpoint == fallback and "built-in default serves: builtin.pt" in serving.warning


def test_a_registry_damaged_by_hand_is_named_and_the_builtin_default_loads(tmp_path):
    registry = tmp_path / "defaults.json"
    fallback = tmp_path / "builtin.pt"
    for text in ("{ not json", json.dumps({"format": defaults.FORMAT, "entries": "x"}),
                 json.dumps({"format": defaults.FORMAT, "current": "a", "entries": []}),
                 json.dumps({"format": defaults.FORMAT, "current": None,
                             "entries": [{"id": "a", "checkpoint": "../../etc/passwd", "cv": {}}]})):
        registry.write_text(text)
        path, warning = defaults.default_checkpoint_file(tmp_path, fallback, registry)
        assert path == fallback and "registry of defaults" in warning and "\n" not in warning
    registry.unlink()
    assert defaults.default_checkpoint_file(tmp_path, fallback, registry) == (fallback, None)


def _always_other(y, logits):
    return [9.0] + [0.0] * (len(CLASS_NAMES) - 1)


def test_train_page_shows_every_file_figures_and_promotes_only_a_winner(champion_cv, runs_dir, tmp_path, monkeypatch):
    from core.experiment.runs import runs_root
    from tests.helpers import run_page, texts
    registry = tmp_path / "checkpoints" / "defaults.json"
    monkeypatch.setattr(defaults, "registry_path", lambda: registry)
    app_runs = runs_root(None)  # what the pages read
    weak = _copy_cv(runs_dir, champion_cv, app_runs, _always_other)
    defaults.promote(weak, app_runs, first=True, why="a weak first champion", registry=registry)
    strong = _copy_cv(runs_dir, champion_cv, app_runs, _perfect)
    weaker = _copy_cv(runs_dir, champion_cv, app_runs, _always_other)
    at = run_page("views/train.py")
    at.selectbox(key="cv_shown").select(weaker).run()
    assert "On every file a user could send" in texts(at)
    table = next(d.value for d in at.dataframe if "figure" in d.value.columns)
    assert list(table.columns) == ["figure", *cv_files.VIEWS]
    assert table["figure"].iloc[1].startswith("recall: ") and "false alarms at 0.9" in list(table["figure"])
    at.button(key=f"cv_promote_{weaker}").click().run()
    assert not at.exception
    assert "Not promoted" in texts(at) and "better beyond noise on neither" in texts(at)
    assert defaults.read_registry(registry)["current"] == weak
    at.selectbox(key="cv_shown").select(strong).run()
    at.selectbox(key=f"cv_against_{strong}").select(weak).run()  # any two, paired, before promoting
    assert "then Compare" in texts(at)  # nothing computed on a mere choice: every rerun would redo it
    at.button(key=f"cv_compare_{strong}").click().run()
    paired = next(d.value for d in at.dataframe if "all files, TTA" in d.value.columns and "originals" in d.value.columns
                  and d.value["figure"].iloc[0] == "files (observations)")
    assert paired.set_index("figure").loc["macro-F1", "all files"].endswith("A better") and not at.exception
    assert "Other folds" not in texts(at)
    at.button(key=f"cv_promote_{strong}").click().run()
    assert not at.exception and "is the default" in texts(at)
    assert defaults.read_registry(registry)["current"] == strong
    home = run_page("app.py")
    assert "Why this default" in texts(home) and "Earlier defaults" in texts(home)


def test_calibrate_from_is_checked_before_training(champion_cv, data_dir, runs_dir, tmp_path, capsys):
    """Issue 33, item 14: an unknown CV, another recipe, other data or damaged fold files: one line, nothing trained."""
    refit = ["--val-fraction", "0", "--test-fraction", "0"]

    def attempt(*extra: str, calibrate: str = champion_cv, where: Path = runs_dir) -> str:
        run_dir = where / f"refused-{len(list(where.iterdir()))}"
        code = train_cli(["--data", str(data_dir), *TINY_FLAGS, *refit, *extra, "--calibrate-from", calibrate,
                          "--run-dir", str(run_dir)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and not (run_dir / "metrics.jsonl").exists() and len(err.splitlines()) == 1, err
        return err
    assert "no cross-validation 'nope'" in attempt(calibrate="nope")
    assert "another recipe (batch_size: 16 there, 32 here" in attempt("--batch-size", "32")
    other = tmp_path / "other-data"
    shutil.copytree(data_dir, other)
    code = train_cli(["--data", str(other), *TINY_FLAGS, *refit, "--calibrate-from", champion_cv,
                      "--run-dir", str(runs_dir / "refused-data")])
    assert code == 2 and "trained on other data" in capsys.readouterr().err
    copy = tmp_path / "runs"
    shutil.copytree(runs_dir, copy)
    fold = cv.fold_runs(cv.load_manifest(champion_cv, copy), copy)[0][1]
    fold.eval_file.write_text('{"predictions": [{"true": "martian", "logits": [1]}], "class_names": []}')
    assert "fold 1: its evaluation file is damaged" in attempt(where=copy)


def test_against_without_cv_report_is_refused(capsys):
    assert train_cli(["--against", "x"]) == 2
    assert "--against compares two cross-validations" in capsys.readouterr().err


def test_a_deleted_fold_can_be_relaunched_and_one_fold_shows_no_spread(champion_cv, runs_dir, tmp_path, monkeypatch):
    """Issue 33, item 8: a deleted fold is relaunched from the manifest's recipe and named in it; nothing to relaunch
    is said; one completed fold reads as one fold, not as '± 0.000'."""
    from core.experiment import jobs
    dest = tmp_path / "runs"
    shutil.copytree(runs_dir, dest)
    folds = cv.fold_runs(cv.load_manifest(champion_cv, dest), dest)
    with pytest.raises(cv.CVError, match="every fold completed"):
        cv.relaunch_missing(champion_cv, dest)
    shutil.rmtree(folds[1][1].path)
    shutil.rmtree(folds[2][1].path)
    assert "the one completed fold" in cv.format_report(cv.report(champion_cv, dest))
    queued = []

    def fake_launch(cfg, where=None):
        run = Run(dest / f"relaunched-{cfg.cv_fold}")
        run.path.mkdir()
        run.begin(cfg.to_dict())
        queued.append(cfg)
        return run
    monkeypatch.setattr(jobs, "launch", fake_launch)
    runs = cv.relaunch_missing(champion_cv, dest)
    assert [c.cv_fold for c in queued] == [1, 2] and all(c.cv_folds == 3 for c in queued)
    assert [r.name for _, r in cv.fold_runs(cv.load_manifest(champion_cv, dest), dest)][1:] == [r.name for r in runs]


def test_refresh_rereads_a_registered_default_and_nothing_else(champion_cv, runs_dir, tmp_path, capsys):
    """After `score` adds 8-view averages to a registered default's folds, `promote ID --refresh` rewrites its
    stored predictions, figures and TTA decision in place; an unregistered or changed cross-validation is refused."""
    registry = tmp_path / "checkpoints" / "defaults.json"
    dest = tmp_path / "runs"
    shutil.copytree(runs_dir, dest)
    for _, run in cv.fold_runs(cv.load_manifest(champion_cv, dest), dest):  # as scored before TTA existed
        raw = read_json(run.oof_files_file)
        for row in raw["files"]:
            row.pop("logits_tta", None)
        write_json_atomic(run.oof_files_file, raw)
    defaults.promote(champion_cv, dest, first=True, registry=registry)
    before = defaults.read_registry(registry)["entries"][0]
    assert "all files, TTA" not in before["figures"] and "not scored" in before["tta_decision"]["why"]
    assert train_cli(["score", champion_cv, "--runs-dir", str(dest)]) == 0  # 8 views now
    capsys.readouterr()
    with pytest.raises(defaults.RegistryError, match="not in the registry"):
        defaults.refresh(_copy_cv(dest, champion_cv, dest, _perfect), dest, registry=registry)
    after = defaults.refresh(champion_cv, dest, registry=registry)
    assert "all files, TTA" in after["figures"] and "not scored" not in after["tta_decision"]["why"]
    assert {k: after[k] for k in ("id", "checkpoint", "date", "why")} == {k: before[k] for k in ("id", "checkpoint",
                                                                                                "date", "why")}
    assert defaults.load_oof(champion_cv, registry).get("pred_tta") is not None
    fold = cv.fold_runs(cv.load_manifest(champion_cv, dest), dest)[0][1]
    raw = read_json(fold.oof_files_file)
    raw["files"] = raw["files"][1:]  # a file fewer: other data than it was registered with
    write_json_atomic(fold.oof_files_file, raw)
    with pytest.raises(defaults.RegistryError, match="differ from those it was registered with"):
        defaults.refresh(champion_cv, dest, registry=registry)


def test_a_dry_run_gives_the_gate_without_a_refit_or_a_write(champion_cv, runs_dir, tmp_path, capsys):
    """`promote ID --dry-run`: a candidate's paired figures against the default (the model card's table), from its
    out-of-fold predictions alone: no refit needed, the registry untouched."""
    registry = tmp_path / "checkpoints" / "defaults.json"
    dest = tmp_path / "runs"
    shutil.copytree(runs_dir, dest)
    defaults.promote(_copy_cv(dest, champion_cv, dest, _perfect), dest, first=True, registry=registry)
    before = registry.read_bytes()
    loser = _copy_cv(dest, champion_cv, dest, lambda y, logits: [9.0] + [0.0] * (len(CLASS_NAMES) - 1))
    shutil.rmtree(dest / f"refit-{loser}")  # no refit: a dry run does not need one
    capsys.readouterr()
    gate = defaults.promote(loser, dest, registry=registry, dry_run=True)
    assert not gate["passes"] and gate["macro_f1"]["difference"] < 0 and gate["tta"]["files"] == gate["files"]
    assert "dry run: nothing written" in capsys.readouterr().out and registry.read_bytes() == before


def test_a_defaults_scan_threshold_is_recorded_checked_and_used_only_with_it(tmp_path):
    """Issue 29: a scan threshold chosen out of fold travels with its default in the registry; a bad one is refused
    (and a hand-damaged one named, the last good copy's default then serving); other checkpoints keep the standard one."""
    from core.registry import default_serving
    from core.scan.scanner import DEFAULT_THRESHOLD, default_threshold
    from core.settings import DEFAULT_CHECKPOINT, DEFAULT_SCAN_THRESHOLD, SCAN_THRESHOLD_WHY

    registry = tmp_path / "defaults.json"
    (tmp_path / "champ.pt").write_bytes(b"x")
    registry.write_text(json.dumps({"format": defaults.FORMAT, "current": "a",
                                    "entries": [{"id": "a", "checkpoint": "champ.pt", "cv": {}}]}))
    assert default_serving(tmp_path, tmp_path / "builtin.pt", registry).scan_threshold is None
    for value, why, message in ((0, "x", "above 0"), (1.5, "x", "above 0"), (float("nan"), "x", "above 0"),
                                (True, "x", "above 0"), (0.98, " ", "say why")):
        with pytest.raises(defaults.RegistryError, match=message):
            defaults.set_scan_threshold("a", value, why, registry=registry)
    with pytest.raises(defaults.RegistryError, match="not in the registry"):
        defaults.set_scan_threshold("b", 0.98, "x", registry=registry)
    defaults.set_scan_threshold("a", 0.98, "chosen out of fold", {"n": 3}, registry=registry)
    serving = default_serving(tmp_path, tmp_path / "builtin.pt", registry)
    assert serving.checkpoint == tmp_path / "champ.pt" and serving.scan_threshold == (0.98, "chosen out of fold")
    raw = json.loads(registry.read_text())
    raw["entries"][0]["scan_threshold"]["value"] = "high"
    registry.write_text(json.dumps(raw))
    damaged = default_serving(tmp_path, tmp_path / "builtin.pt", registry)
    assert damaged.checkpoint == tmp_path / "champ.pt" and "scan_threshold" in damaged.warning  # the last good copy
    assert "last good copy serves" in damaged.warning
    # this installation: the default model's own threshold (the registry's, or the standard), anything else 0.9
    assert default_threshold(None) == default_threshold(DEFAULT_CHECKPOINT) == (DEFAULT_SCAN_THRESHOLD,
                                                                                SCAN_THRESHOLD_WHY)
    assert default_threshold(tmp_path / "champ.pt") == (DEFAULT_THRESHOLD, "the scan's standard threshold")
