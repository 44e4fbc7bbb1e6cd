"""K-fold cross-validation grouped by observation: honest figures for one recipe, and what a refit is calibrated by.

One split's validation figure is mostly noise on this data (1-8 tiles of each rare class, from about 30
observations), so recipes are judged here on the pooled out-of-fold predictions of every fold instead:

- The folds come from `core.data.split.fold_of_observation` (scikit-learn's StratifiedGroupKFold on the
  observation): no observation, and so no landmark or augmented copy, is on two sides of any fold; tiles without an
  observation id train in every fold and are never validated.
- Each fold is an ordinary run (`cv_folds`, `cv_fold` in its RunConfig), queued as a job or trained in this
  process, tagged `cv:<id>` and listed in a manifest, `<runs dir>/.cv/<id>.json`, like a grid's. Cancel, resume,
  Compare and the one-trainer lock work on it as on any run.
- A fold trains a fixed number of epochs and is scored at its last (no best-epoch choice on its own validation
  fold, which would flatter it, and the refit has no validation to choose on either). Its report
  (`eval_val.json`) keeps every validated tile's logits: pooled, they are the out-of-fold predictions.
- The report pools them: one confusion matrix over every validated original, the figures with 95% intervals
  from a bootstrap over observations (`core.bootstrap`), the folds' mean and spread, and the mean validation
  curve per epoch (which epoch count to refit with). A fold that did not complete is named and left out, never
  averaged in silently.
- A refit on all the data (`val_fraction 0, test_fraction 0, calibrate_from <id>`) takes its temperature from
  the pooled out-of-fold logits and its out-of-distribution calibration from the folds (`refit_record`).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.bootstrap import fmt, intervals
from core.choices import HEADLINE, METRIC_LABELS
from core.classes import CLASS_NAMES
from core.cliargs import refuse, single_run_flag
from core.data.spec import MAX_FOLDS, MIN_FOLDS
from core.experiment.manifest import Manifests, Task, queue_or_run, safe_name
from core.experiment.runs import Run, runs_root
from core.training.config import ConfigError, RunConfig, typed_config

TAG_PREFIX = "cv:"
LABELS = METRIC_LABELS


class CVError(ConfigError):
    """A cross-validation that cannot be launched or reported; the message says why in one line."""


# ---- planning and launching --------------------------------------------------------------------------------

def check_folds(folds: Any) -> int:
    """`folds` as a whole number of folds in [MIN_FOLDS, MAX_FOLDS], or CVError saying what is wrong with it."""
    try:
        value = float(folds)
    except (TypeError, ValueError):
        raise CVError(f"cv: {folds!r} is not a number of folds ({MIN_FOLDS} to {MAX_FOLDS})") from None
    if not math.isfinite(value) or not value.is_integer():
        raise CVError(f"cv: {folds!r} is not a whole number of folds ({MIN_FOLDS} to {MAX_FOLDS})")
    if not MIN_FOLDS <= value <= MAX_FOLDS:
        raise CVError(f"cv: {int(value)} folds; cross-validation takes {MIN_FOLDS} to {MAX_FOLDS} (fewer validate "
                      "too few observations each time, more cost CPU that the data cannot repay)")
    return int(value)


def plan(base: RunConfig | dict[str, Any], folds: Any, seed: int = 0, check_ready: bool = True) -> list[RunConfig]:
    """One valid, ready RunConfig per fold of `base`: CVError on the first problem, before anything is queued."""
    folds = check_folds(folds)
    try:
        recipe = base if isinstance(base, RunConfig) else RunConfig.from_dict(dict(base))
    except ConfigError as exc:
        raise CVError(str(exc)) from None
    values = recipe.to_dict()
    defaults = RunConfig()
    if recipe.cv_folds:
        raise CVError("cv_folds: the configuration is already one fold of a cross-validation; start from the recipe")
    if (recipe.val_fraction, recipe.test_fraction) != (defaults.val_fraction, defaults.test_fraction):
        raise CVError("val_fraction: cross-validation makes its own validation folds and no test split; leave the "
                      f"split shares at their defaults ({defaults.val_fraction}, {defaults.test_fraction}) or do not "
                      "cross-validate")
    if recipe.split_mode == "official":
        raise CVError("split_mode: cross-validation replaces the official split; leave split_mode at auto")
    if recipe.calibrate_from:
        raise CVError("calibrate_from: a cross-validation's folds calibrate on their own validation fold")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise CVError(f"cv_seed: {seed} is not in 0 to {2**32 - 1}")
    prefix = str(values.get("name") or "").strip()
    configs = []
    for i in range(folds):
        name = f"{prefix}-cv{folds}-f{i + 1}" if prefix else f"cv{folds}-f{i + 1}"
        try:
            cfg = RunConfig.from_dict({**values, "split_seed": int(seed), "cv_folds": folds, "cv_fold": i,
                                       "name": name}).validate()
            if check_ready:
                cfg.check_ready()
        except ConfigError as exc:
            raise CVError(str(exc)) from None
        configs.append(cfg)
    return configs


def coverage(cfg: RunConfig) -> list[str]:
    """What the folds cannot do with this data: a class with fewer observations than folds, named."""
    from core.data import load_dataset
    from core.data.split import fold_coverage
    data = load_dataset(cfg.data_spec)
    return fold_coverage(data.records, cfg.cv_folds, CLASS_NAMES)


def cv_dir(runs_dir: Path | None = None) -> Path:
    return MANIFESTS.dir(runs_dir)


def _start(configs: Sequence[RunConfig], how: str, runs_dir: Path | None, grid: str | None = None) -> str:
    base = {k: v for k, v in configs[0].to_dict().items() if k not in ("cv_fold", "name")}
    cv_id, _ = MANIFESTS.create({"how": how, "folds": configs[0].cv_folds, "seed": configs[0].split_seed,
                                 "base": base, "grid": grid}, runs_dir)
    return cv_id


def _task(cv_id: str, cfg: RunConfig, note: str = "") -> Task:
    fold = cfg.cv_fold + 1
    return Task(cfg, {"fold": cfg.cv_fold}, f"fold {fold}", note or f"cross-validation {cv_id}, fold {fold}")


def on_cluster(configs: Sequence[RunConfig], train: Callable[..., int], client: Any, threads: int = 0,
               runs_dir: Path | None = None, say: Callable[[str], None] = print,
               grid: str | None = None) -> tuple[str, int]:
    """The folds side by side on a Dask cluster (`client`, connected): the id and an exit code."""
    cv_id = _start(configs, "cluster", runs_dir, grid)
    return cv_id, MANIFESTS.run_on_cluster(cv_id, [_task(cv_id, c) for c in configs], train, client, threads,
                                           runs_dir, say)


def launch_on_cluster(configs: Sequence[RunConfig], address: str, workers: int = 2,
                      runs_dir: Path | None = None) -> tuple[Path, int]:
    """Hand the folds to a Dask cluster from a process of their own (`python -m core.train cv K --cluster ...`,
    detached: it outlives the page that started it), once the address answers (ClusterError otherwise, nothing
    started). Returns its log file and its pid (the leader of its own process group); the cross-validation is
    listed once its folds are submitted."""
    import os
    import subprocess

    from core.experiment.cluster import check
    from core.experiment.runs import now_iso
    from core.settings import PROJECT_ROOT
    check(address)
    folder = cv_dir(runs_dir) / "launches"  # not beside the manifests, which are every *.json of .cv/
    folder.mkdir(parents=True, exist_ok=True)
    stamp = now_iso().replace(":", "").replace("+", "_")
    recipe, log = folder / f"cluster-{stamp}.config.json", folder / f"cluster-{stamp}.log"
    base = configs[0].to_dict()
    fold_name = f"cv{len(configs)}-f1"  # `plan` names fold 1 PREFIX-cvK-f1, or cvK-f1 without a prefix
    prefix = "" if base["name"] == fold_name else base["name"].removesuffix(f"-{fold_name}")
    RunConfig.from_dict({**base, "cv_folds": 0, "cv_fold": 0, "name": prefix}).save(recipe)
    cmd = [sys.executable, "-m", "core.train", "cv", str(len(configs)), "--config", str(recipe), "--cv-seed",
           str(configs[0].split_seed), "--cluster", address, "--workers", str(workers), "--runs-dir",
           str(runs_root(runs_dir))]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    import threading
    threading.Thread(target=proc.wait, daemon=True).start()  # reaped when it ends: no zombie
    return log, proc.pid


def launch(configs: Sequence[RunConfig], runs_dir: Path | None = None, grid: str | None = None) -> tuple[str, list[Run]]:
    """Queue every fold as a job (one per device at a time, oldest first). Returns the id and the runs; a launch
    failing half way raises JobError naming the folds already queued (the report then names the missing ones)."""
    cv_id = _start(configs, "queued", runs_dir, grid)
    return cv_id, MANIFESTS.launch(cv_id, [_task(cv_id, c) for c in configs], runs_dir)


def relaunch_missing(cv_id: str, runs_dir: Path | None = None) -> list[Run]:
    """Queue again every fold that is missing and not waiting or running (deleted, failed, cancelled, never
    queued), from the manifest's own recipe; the manifest then names the new run for that fold. CVError when none
    is missing, or a fold is still active (it may yet complete)."""
    rep = report(cv_id, runs_dir, with_files=False)
    active = [f for f in rep["folds"] if f.get("state") in ("queued", "running")]
    missing = [f for f in rep["missing"] if f.get("state") not in ("queued", "running")]
    if not missing:
        raise CVError(f"cross-validation {cv_id}: no fold to relaunch" +
                      (f" (fold{'s' if len(active) > 1 else ''} {', '.join(str(f['fold']) for f in active)} "
                       "still queued or running)" if active else " (every fold completed)"))
    configs = {c.cv_fold: c for c in plan({**rep["base"], "cv_folds": 0, "cv_fold": 0}, rep["n_folds"],
                                          rep["seed"] or 0)}
    from core.experiment.jobs import JobError
    tasks = [_task(cv_id, configs[f["fold"] - 1], f"cross-validation {cv_id}, fold {f['fold']} (relaunched)")
             for f in missing]
    try:
        return MANIFESTS.launch(cv_id, tasks, runs_dir)
    except JobError as exc:
        raise CVError(str(exc)) from None


def active_refit(cv_id: str, runs_dir: Path | None = None) -> Run | None:
    """A refit calibrated from `cv_id` that is queued or running (a second would be the same run twice)."""
    from core.experiment.jobs import job_state
    from core.experiment.runs import list_runs
    for run in list_runs(runs_dir):
        cfg = run.config()
        if isinstance(cfg, dict) and cfg.get("calibrate_from") == cv_id and \
                job_state(run, run.status()) in ("queued", "running"):
            return run
    return None


def spread_text(spread: dict[str, float], folds: int) -> str:
    """The folds' mean and spread, or the one fold's figure (a spread of one fold would read as certainty)."""
    return f"folds {spread['mean']:.3f} ± {spread['sd']:.3f}" if folds > 1 else \
        f"the one completed fold {spread['mean']:.3f} (no spread yet)"


def run_in_process(configs: Sequence[RunConfig], train: Callable[..., int], runs_dir: Path | None = None,
                   say: Callable[[str], None] = print, grid: str | None = None,
                   cluster: str | None = None, workers: int = 2) -> tuple[str, int]:
    """Train the folds one after another in this process (`train` is `core.training.runner.train`, passed in so that this
    module does not import the engine), or with `cluster` side by side on a Dask cluster's workers. Returns the id
    and an exit code; in this process, a cancelled fold stops the rest."""
    if cluster:
        from core.experiment.cluster import connect, threads_per_task
        with connect(cluster, workers) as client:  # reached (or ClusterError) before anything is written
            return on_cluster(configs, train, client, threads_per_task(cluster, workers), runs_dir, say, grid)
    cv_id = _start(configs, "in-process", runs_dir, grid)
    tasks = [_task(cv_id, c) for c in configs]
    say(f"cross-validation {cv_id}: {len(configs)} folds grouped by observation, one after another in this process")
    return cv_id, MANIFESTS.run_in_process(cv_id, tasks, train, runs_dir, say)


# ---- reading back ------------------------------------------------------------------------------------------

def manifest_problem(raw: Any, stem: str) -> str | None:
    """What is wrong with a cross-validation manifest as read from disk (hand-edited, damaged), or None: checked
    on every read, so a bad one is refused or skipped by name instead of a traceback or a runaway allocation."""
    if not isinstance(raw, dict):
        return "not a JSON object"
    if raw.get("id") != stem or not safe_name(raw.get("id")):
        return f"its id {raw.get('id')!r} is not its file name {stem!r}"
    try:
        check_folds(raw.get("folds"))
    except CVError as exc:
        return str(exc)
    if isinstance(raw.get("folds"), bool) or not isinstance(raw.get("folds"), (int, float)):
        return f"folds {raw.get('folds')!r} is not a number"
    if not isinstance(raw.get("base"), dict):
        return "base (the recipe) is not an object"
    seed = raw.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        return f"seed {seed!r} is not a whole number from 0 to {2**32 - 1}"
    runs = raw.get("runs")
    if not isinstance(runs, list):
        return "runs is not a list"
    seen: dict[str, int] = {}
    for entry in runs:
        if not isinstance(entry, dict) or not safe_name(entry.get("run")) or isinstance(entry.get("fold"), bool) \
                or not isinstance(entry.get("fold"), int) or not 0 <= entry["fold"] < int(raw["folds"]):
            return f"a runs entry {str(entry)[:80]!r} is not a run name in this folder with a fold number"
        if seen.setdefault(entry["run"], entry["fold"]) != entry["fold"]:
            return f"run {entry['run']} is listed for folds {seen[entry['run']] + 1} and {entry['fold'] + 1}"
    return None


MANIFESTS = Manifests(".cv", "cross-validation", TAG_PREFIX, manifest_problem, CVError)


def list_cvs(runs_dir: Path | None = None, skipped: list[str] | None = None) -> list[dict[str, Any]]:
    """The cross-validations' manifests that read as manifests, newest first; the others named in `skipped`."""
    return MANIFESTS.list(runs_dir, skipped)


def load_manifest(cv_id: str, runs_dir: Path | None = None) -> dict[str, Any]:
    """A cross-validation's manifest, checked (`manifest_problem`); FileNotFoundError or CVError in one line."""
    return MANIFESTS.load(cv_id, runs_dir)


def fold_runs(manifest: dict[str, Any], runs_dir: Path | None = None) -> list[tuple[int, Run | None]]:
    """(fold, run) for every fold of the manifest, in fold order; run None for a fold never queued."""
    root = runs_root(runs_dir)
    by_fold: dict[int, Run] = {}
    for entry in manifest.get("runs", []):
        if isinstance(entry, dict) and safe_name(entry.get("run")) and isinstance(entry.get("fold"), int):
            by_fold[entry["fold"]] = Run(root / entry["run"])
    return [(i, by_fold.get(i)) for i in range(int(manifest.get("folds") or 0))]


def out_of_fold(manifest: dict[str, Any], runs_dir: Path | None = None) -> tuple[dict[str, np.ndarray], list[dict]]:
    """The pooled out-of-fold predictions of the completed folds ({"name", "observation", "y", "logits",
    "probs", "fold"} arrays, one row per validated original), and one status line per fold (state, why missing)."""
    from core.experiment.jobs import job_state
    rows: dict[str, list] = {k: [] for k in ("name", "observation", "y", "logits", "probs", "fold")}
    folds = []
    for fold, run in fold_runs(manifest, runs_dir):
        entry: dict[str, Any] = {"fold": fold + 1, "run": run.name if run else None}
        if run is None:
            folds.append({**entry, "state": "not queued", "missing": "never queued"})
            continue
        if not run.config_file.is_file():
            folds.append({**entry, "state": "deleted", "missing": "its run folder was deleted"})
            continue
        status = run.status()
        state = job_state(run, status)
        report = run.evaluation() if state == "completed" else None
        entry.update(state=state, epochs=len([r for r in run.metrics() if r.get("kind") == "epoch"]))
        predictions = (report or {}).get("predictions") or []
        if state != "completed" or not predictions or "logits" not in predictions[0]:
            why = {"completed": "its report has no out-of-fold predictions"}.get(state, f"it is {state}")
            folds.append({**entry, "missing": why})
            continue
        checked = _checked_predictions(report, predictions)
        if isinstance(checked, str):
            folds.append({**entry, "state": "damaged", "missing": f"its evaluation file is damaged ({checked})"})
            continue
        for p, y in checked:
            rows["name"].append(p["name"])
            rows["observation"].append(p.get("observation"))
            rows["y"].append(y)
            rows["logits"].append(p["logits"])
            rows["probs"].append(p["probs"])
            rows["fold"].append(fold)
        entry.update(tiles=len(predictions), temperature=(report.get("calibration") or {}).get("temperature"))
        entry.update({k: report.get(k) for k in HEADLINE})
        folds.append(entry)
    arrays = {"name": np.array(rows["name"], dtype=object), "observation": np.array(rows["observation"], dtype=object),
              "y": np.array(rows["y"], dtype=np.int64), "fold": np.array(rows["fold"], dtype=np.int64),
              "logits": np.array(rows["logits"], dtype=np.float64).reshape(-1, len(CLASS_NAMES)),
              "probs": np.array(rows["probs"], dtype=np.float64).reshape(-1, len(CLASS_NAMES))}
    return arrays, folds


def _checked_predictions(report: dict[str, Any], predictions: list) -> list[tuple[dict, int]] | str:
    """A fold report's predictions with their class index, or what is wrong with them (an unknown label, logits or
    probabilities of the wrong length or not finite, a missing name)."""
    names = report.get("class_names")
    if names != list(CLASS_NAMES):
        return f"class_names {str(names)[:60]} are not this studio's"
    out = []
    for p in predictions:
        if not isinstance(p, dict) or not isinstance(p.get("name"), str) or p.get("true") not in CLASS_NAMES:
            return f"a prediction without a name or with an unknown label: {str(p)[:60]}"
        for key in ("logits", "probs"):
            v = p.get(key)
            if not isinstance(v, list) or len(v) != len(CLASS_NAMES) or not all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v):
                return f"{p['name']}: {key} is not {len(CLASS_NAMES)} finite numbers"
        out.append((p, CLASS_NAMES.index(p["true"])))
    if len({p["name"] for p, _ in out}) != len(out):
        return "a tile is listed twice"
    return out


def mean_curve(manifest: dict[str, Any], runs_dir: Path | None = None) -> list[dict[str, Any]]:
    """Per epoch, the folds' mean and spread of validation macro-F1 (and balanced accuracy), over the folds that
    reached that epoch: where the mean peaks is the epoch count to refit with."""
    per_epoch: dict[int, list[dict]] = {}
    for _, run in fold_runs(manifest, runs_dir):
        if run is None:
            continue
        for row in run.metrics():
            if isinstance(row, dict) and row.get("kind") == "epoch" and _finite(row.get("val_macro_f1")) \
                    and _finite(row.get("val_balanced_accuracy")) and _finite(row.get("epoch")):
                per_epoch.setdefault(int(row["epoch"]), []).append(row)
    out = []
    for epoch in sorted(per_epoch):
        rows = per_epoch[epoch]
        f1 = np.array([r["val_macro_f1"] for r in rows])
        bal = np.array([r["val_balanced_accuracy"] for r in rows])
        out.append({"epoch": epoch, "folds": len(rows), "macro_f1": float(f1.mean()), "macro_f1_sd": float(f1.std()),
                    "balanced_accuracy": float(bal.mean()), "balanced_accuracy_sd": float(bal.std())})
    return out


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def report(cv_id: str, runs_dir: Path | None = None, with_files: bool = True) -> dict[str, Any]:
    """A cross-validation's figures, from the folds that completed: pooled out-of-fold metrics with 95% intervals
    (bootstrap over observations), per-class precision/recall/F1 with support, the folds' mean and spread, the
    mean validation curve per epoch, and which folds are missing and why. `with_files`: also the figures on
    every file of the held-out observations, as sent and with TTA (`core.experiment.cv_files`, under "files")."""
    from core.metrics import classification_metrics
    manifest = load_manifest(cv_id, runs_dir)
    oof, folds = out_of_fold(manifest, runs_dir)
    missing = [f for f in folds if f.get("missing")]
    out: dict[str, Any] = {"id": manifest["id"], "folds": folds, "n_folds": int(manifest.get("folds") or 0),
                           "missing": missing, "complete": not missing, "seed": manifest.get("seed"),
                           "base": manifest.get("base") or {}, "grid": manifest.get("grid"),
                           "curve": mean_curve(manifest, runs_dir), "created_at": manifest.get("created_at")}
    if not len(oof["y"]):
        out["pooled"] = None
        return out
    pooled = classification_metrics(oof["y"], oof["probs"])
    pooled["intervals"] = intervals(oof["y"], oof["probs"].argmax(1), list(oof["observation"]), len(CLASS_NAMES))
    pooled["observations"] = len({o for o in oof["observation"] if o})
    out["pooled"] = pooled
    done = [f for f in folds if not f.get("missing")]
    out["fold_spread"] = {k: {"mean": float(np.mean([f[k] for f in done])), "sd": float(np.std([f[k] for f in done]))}
                          for k in HEADLINE}
    best = max(out["curve"], key=lambda r: r["macro_f1"]) if out["curve"] else None
    out["best_epoch"] = best["epoch"] if best else None
    if with_files:
        from core.calibration import fit_temperature
        from core.experiment.cv_files import files_report
        out["temperature"] = float(fit_temperature(oof["logits"], oof["y"]))
        out["files"] = files_report(fold_runs(manifest, runs_dir), out["temperature"])
    return out


def format_report(rep: dict[str, Any]) -> str:
    """The report as text (`--cv-report ID`)."""
    base = rep["base"]
    lines = [f"cross-validation {rep['id']}: {rep['n_folds']} folds grouped by observation (seed {rep['seed']}), "
             f"{base.get('model')} at {base.get('image_size') or 'native'} px, {base.get('epochs')} "
             f"epoch{'' if base.get('epochs') == 1 else 's'}"]
    for f in rep["folds"]:
        figures = f"  macro-F1 {f['macro_f1']:.3f} on {f['tiles']} tiles" if not f.get("missing") else \
            f"  MISSING: {f['missing']}"
        lines.append(f"  fold {f['fold']}: {f.get('run') or '-'} ({f.get('state')}){figures}")
    if rep["missing"]:
        lines.append(f"incomplete: fold{'s' if len(rep['missing']) > 1 else ''} "
                     f"{', '.join(str(f['fold']) for f in rep['missing'])} left out of every figure below")
    pooled = rep.get("pooled")
    if not pooled:
        lines.append("no fold has completed yet: no out-of-fold figures")
        return "\n".join(lines)
    lines += format_files(rep)
    iv = pooled["intervals"]
    lines += ["", f"out-of-fold, {pooled['n']} validated originals from {pooled['observations']} observations "
                  f"(95% intervals: {iv['method']})"]
    for k in HEADLINE:
        spread = rep["fold_spread"][k]
        lines.append(f"  {LABELS[k]:<18} {fmt(pooled[k], iv[k])}   {spread_text(spread, len(rep['folds']) - len(rep['missing']))}")
    lines.append(f"  always-{pooled['majority_baseline']['class']} accuracy {pooled['majority_baseline']['accuracy']:.3f}")
    lines += ["", f"{'class':<14}{'support':>8}{'precision':>22}{'recall':>22}{'F1':>22}"]
    for c, civ in zip(pooled["per_class"], iv["per_class"], strict=True):
        precision = fmt(c["precision"], civ["precision"]) if c["predicted"] else "never predicted"
        recall = fmt(c["recall"], civ["recall"]) if c["support"] else "no tiles"
        f1 = fmt(c["f1"], civ["f1"]) if c["support"] else "-"
        lines.append(f"{c['class']:<14}{c['support']:>8}{precision:>22}{recall:>22}{f1:>22}")
    if rep["curve"]:
        lines += ["", "mean validation curve (folds that reached each epoch)"]
        for r in rep["curve"]:
            lines.append(f"  epoch {r['epoch']:>3}: macro-F1 {r['macro_f1']:.3f} ± {r['macro_f1_sd']:.3f} "
                         f"({r['folds']} folds)" + ("  <- highest" if r["epoch"] == rep["best_epoch"] else ""))
    return "\n".join(lines)


def format_files(rep: dict[str, Any]) -> list[str]:
    """The originals / all files / all files with TTA table: per-class recall first, then the headline figures,
    accuracy beside the always-`other` accuracy on the same files, and the false alarms at the scan threshold."""
    from core.experiment.cv_files import VIEWS
    files = rep.get("files") or {}
    views = files.get("views")
    if not views:
        why = "; ".join(files.get("missing") or ["not scored"])
        return ["", f"every file a user could send (originals and their official copies): not scored yet ({why}); "
                    f"python -m core.train score {rep['id']}"]
    shown = [v for v in VIEWS if views.get(v)]
    width = 28
    head = views[shown[0]]
    lines = ["", f"out-of-fold on every file a user could send: {files['originals']} originals and "
                 f"{files['files'] - files['originals']} official copies (turned, flipped, brightened) of "
                 f"{head['observations']} observations; temperature {rep.get('temperature', 1.0):.3f}; 95% intervals, "
                 "bootstrap over observations",
             f"{'':<22}" + "".join(f"{v:>{width}}" for v in shown)]
    lines.append(f"{'support (files)':<22}" + "".join(f"{views[v]['n']:>{width}}" for v in shown))
    lines.append("recall")
    for c, name in enumerate(CLASS_NAMES):
        cells = []
        for v in shown:
            pc, civ = views[v]["per_class"][c], views[v]["intervals"]["per_class"][c]
            cells.append(fmt(pc["recall"], civ["recall"], 2) + f" n={pc['support']}" if pc["support"] else "no files")
        lines.append(f"  {name:<20}" + "".join(f"{x:>{width}}" for x in cells))
    for k in HEADLINE:
        lines.append(f"{LABELS[k]:<22}" + "".join(f"{fmt(views[v][k], views[v]['intervals'][k]):>{width}}"
                                                  for v in shown))
    lines.append(f"{'always-other accuracy':<22}" + "".join(
        f"{views[v]['majority_baseline']['accuracy']:>{width}.3f}" for v in shown))
    cells = []
    for v in shown:
        fa = views[v]["false_alarms"]
        cells.append("-" if fa["rate"] is None else fmt(fa["rate"], fa["interval"]))
    lines.append(f"{'false alarms at 0.9':<22}" + "".join(f"{x:>{width}}" for x in cells))
    lines.append("  (false alarms: the share of `other` files called a landmark with probability >= 0.9, the scan's "
                 "standard threshold)")
    if "all files, TTA" not in shown:
        lines.append("  all files, TTA: not scored (the folds' predictions have no 8-view averages)")
    return lines


def headline_with_intervals(rep: dict[str, Any]) -> dict[str, Any]:
    """The pooled headline figures and their intervals, flat (for tables: a grid ranked by cross-validation)."""
    pooled = rep.get("pooled")
    if not pooled:
        return {}
    iv = pooled["intervals"]
    out: dict[str, Any] = {}
    for k in HEADLINE:
        out[f"oof {LABELS[k]}"] = pooled[k]
        out[f"oof {LABELS[k]} 95%"] = fmt(pooled[k], iv[k]).split(" ", 1)[1] if iv[k] else "-"
    return out


def same_partition(names_a: Sequence[str], folds_a: Sequence[int], names_b: Sequence[str],
                   folds_b: Sequence[int]) -> bool:
    """Whether two fold assignments split their common tiles the same way, whatever the folds' numbering."""
    fold_b = dict(zip(map(str, names_b), (int(f) for f in folds_b), strict=True))
    pairs = {(int(f), fold_b[str(n)]) for n, f in zip(names_a, folds_a, strict=True) if str(n) in fold_b}
    return len(pairs) == len({p[0] for p in pairs}) == len({p[1] for p in pairs})


def paired(cv_a: str, cv_b: str, runs_dir: Path | None = None) -> dict[str, Any]:
    """Recipe A against recipe B on the out-of-fold files both scored, per view: the originals every fold
    validated, and, when both scored them, every file as sent and with 8-view averaging (what users send). Each
    headline figure's difference with its 95% interval from a paired bootstrap over observations, and whether it
    stands out of the noise; `not_paired`: each view left out, and why; `same_folds`: True or False when both are
    complete, None (unknown) while either still misses folds; `folds`: each one's completed and total folds."""
    from core.experiment.cv_files import paired_files, pooled, with_predictions
    manifests = {cv_id: load_manifest(cv_id, runs_dir) for cv_id in (cv_a, cv_b)}
    (a, folds_a), (b, folds_b) = (out_of_fold(manifests[c], runs_dir) for c in (cv_a, cv_b))
    views: dict[str, Any] = {}
    not_paired: dict[str, str] = {}
    try:
        views["originals"] = paired_files({**a, "pred": a["probs"].argmax(1)}, {**b, "pred": b["probs"].argmax(1)})
    except ValueError as exc:
        raise CVError(f"cross-validations {cv_a} and {cv_b}: {exc}") from None
    scored = {c: pooled(fold_runs(manifests[c], runs_dir)) for c in (cv_a, cv_b)}
    lacking = [f"{c}: {'; '.join(missing) or 'no completed fold'}" for c, (f, missing) in scored.items() if f is None]
    if lacking:
        not_paired["all files"] = not_paired["all files, TTA"] = \
            f"{', '.join(lacking)} (python -m core.train score ID)"
    else:
        fa, fb = (with_predictions(scored[c][0]) for c in (cv_a, cv_b))
        for view, key in (("all files", "pred"), ("all files, TTA", "pred_tta")):
            try:
                result = paired_files(fa, fb, key)
            except ValueError as exc:
                not_paired[view] = str(exc)
                continue
            if result is None:
                not_paired[view] = "one of the two was not scored with 8-view averaging"
            else:
                views[view] = result
    done = {c: (sum(f.get("state") == "completed" and not f.get("missing") for f in folds), len(folds))
            for c, folds in ((cv_a, folds_a), (cv_b, folds_b))}
    complete = all(d == t for d, t in done.values())
    same_folds = same_partition(a["name"], a["fold"], b["name"], b["fold"]) if complete else None
    return {"a": cv_a, "b": cv_b, "views": views, "not_paired": not_paired, "same_folds": same_folds,
            "folds": done}


def verdict(d: dict[str, Any], better: str = "A better", worse: str = "B better") -> str:
    """A paired difference's reading: within noise when its interval holds 0."""
    return "within noise" if d["within_noise"] else (better if d["difference"] > 0 else worse)


def paired_rows(result: dict[str, Any]) -> list[dict[str, str]]:
    """`paired`'s figures as table rows: one per headline figure, one column per view ('difference [interval]
    reading'), after a row of the files and observations each view paired."""
    views = result["views"]
    rows = [{"figure": "files (observations)", **{v: f"{d['files']:,} ({d['groups']})" for v, d in views.items()}}]
    for k in HEADLINE:
        rows.append({"figure": LABELS[k], **{
            v: f"{fmt(d[k]['difference'], d[k]['interval'])} {verdict(d[k], 'A better', 'B better')}"
            for v, d in views.items()}})
    return rows


def folds_text(result: dict[str, Any]) -> str:
    """Whether `paired`'s two shared their folds, in words."""
    if result["same_folds"] is None:
        return "incomplete: " + ", ".join(f"{c} has {d} of {t} folds" for c, (d, t) in result["folds"].items()) + \
            ", so the figures cover the completed folds only and whether the folds agree is not known yet"
    if result["same_folds"]:
        return "the same folds"
    return ("other folds: each file was scored by models that trained on different observations, so the difference "
            "mixes the recipes with the splits (cross-validate with the same fold count and seed to pair them)")


def format_paired(result: dict[str, Any]) -> str:
    views = result["views"]
    lines = [f"{result['a']} minus {result['b']}, paired bootstrap over observations (95% intervals); "
             + folds_text(result)]
    for view, d in views.items():
        lines.append(f"  {view}: the {d['files']} out-of-fold files both scored, {d['groups']} observations")
        for k in HEADLINE:
            lines.append(f"    {LABELS[k]:<18} {fmt(d[k]['difference'], d[k]['interval'])}  {verdict(d[k])}")
    for view, why in result["not_paired"].items():
        lines.append(f"  {view}: not paired ({why})")
    return "\n".join(lines)


def score_files(cv_id: str, runs_dir: Path | None = None, tta: bool = True,
             say: Callable[[str], None] = print) -> int:
    """Give every completed fold of a cross-validation its all-files predictions (those that lack them, or lack
    TTA when `tta`); returns how many folds were scored. The data is loaded once, from the recipe."""
    from core.data import load_dataset
    from core.experiment.cv_files import FilesError, read_fold, score_fold
    manifest = load_manifest(cv_id, runs_dir)
    rep = report(cv_id, runs_dir, with_files=False)
    todo = []
    for f, run in fold_runs(manifest, runs_dir):
        state = next((x for x in rep["folds"] if x["fold"] == f + 1), {})
        if run is None or state.get("missing"):
            continue
        try:
            have = read_fold(run)
        except FilesError:
            have = None
        if have is None or (tta and have["logits_tta"] is None):
            todo.append(run)
    if not todo:
        say(f"cross-validation {cv_id}: every completed fold has its all-files predictions")
        return 0
    data = load_dataset(RunConfig.from_dict(manifest["base"]).data_spec)
    t0 = time.perf_counter()
    for i, run in enumerate(todo):
        say(f"cross-validation {cv_id}: scoring fold model {i + 1} of {len(todo)} on every file of its held-out "
            f"observations" + (f" (about {(time.perf_counter() - t0) / i * (len(todo) - i):.0f} s left)" if i else ""))
        score_fold(run, data, tta, say)
    return len(todo)


# ---- the refit ---------------------------------------------------------------------------------------------

def refit_record(cv_id: str, runs_dir: Path | None = None) -> dict[str, Any]:
    """What a refit on all the data takes from the cross-validation it names: the temperature fitted on the pooled
    out-of-fold logits, the out-of-fold figures that describe it, and the folds' out-of-distribution transfer
    ratio (`core.ood.transfer_ratio`). CVError unless every fold completed: a refit is described by all of them."""
    from core.calibration import fit_temperature
    from core.checkpoint import CheckpointError, read_checkpoint
    from core.ood import FeatureDensity, OODError, transfer_ratio
    rep = report(cv_id, runs_dir, with_files=False)
    if rep["missing"]:
        raise CVError(f"calibrate_from: cross-validation {cv_id} is incomplete ("
                      + "; ".join(f"fold {f['fold']}: {f['missing']}" for f in rep["missing"])
                      + "); resume or relaunch them first")
    manifest = load_manifest(cv_id, runs_dir)
    oof, _ = out_of_fold(manifest, runs_dir)
    temperature = float(fit_temperature(oof["logits"], oof["y"]))
    references = []
    for _, run in fold_runs(manifest, runs_dir):
        try:
            stored = read_checkpoint(run.best_checkpoint).get("ood") if run else None
            if stored:
                references.append(FeatureDensity.from_dict(stored))
        except (CheckpointError, OODError, OSError):
            continue
    try:
        ratio = transfer_ratio(references).tolist()
    except OODError:
        ratio = None
    pooled = rep["pooled"]
    metrics = {k: pooled[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1",
                                      "majority_baseline", "per_class", "n", "intervals")}
    return {"temperature": temperature, "metrics": metrics, "ood_ratio": ratio,
            "cv": {"id": cv_id, "folds": rep["n_folds"], "tiles": int(pooled["n"]),
                   "observations": pooled["observations"], "seed": rep["seed"]}}


#: Fields a refit may set apart from its cross-validation's recipe: the split (it has none), its name, how long it
#: trains (the CV's mean curve says), its seed, and how fast it runs.
REFIT_FREE = frozenset({"val_fraction", "test_fraction", "cv_folds", "cv_fold", "split_seed", "calibrate_from", "name",
                        "epochs", "seed", "device", "num_workers", "log_every", "channels_last", "compile", "patience",
                        "early_stopping_metric"})


def check_refit(cfg: RunConfig, runs_dir: Path | None = None) -> dict[str, Any]:
    """Before a refit trains: the cross-validation it names exists, completed, can be read, and is of this recipe
    and this data. CVError naming the difference; returns `refit_record`'s result (read once more after training)."""
    try:
        manifest = load_manifest(cfg.calibrate_from, runs_dir)
    except FileNotFoundError as exc:
        raise CVError(f"calibrate_from: {exc}") from None
    base = manifest.get("base")
    if not isinstance(base, dict):
        raise CVError(f"calibrate_from: cross-validation {cfg.calibrate_from} has no recipe in its manifest")
    mine = cfg.to_dict()
    if [str(Path(p).expanduser().resolve()) for p in base.get("data") or []] != \
            [str(Path(p).expanduser().resolve()) for p in mine.get("data") or []]:
        raise CVError(f"calibrate_from: cross-validation {cfg.calibrate_from} was trained on other data "
                      f"({', '.join(map(str, base.get('data') or [])) or 'none'}; this refit: {', '.join(mine['data'])})")
    differ = sorted(k for k in mine if k not in REFIT_FREE and k != "data" and k in base and base[k] != mine[k])
    if differ:
        shown = "; ".join(f"{k}: {base[k]!r} there, {mine[k]!r} here" for k in differ[:4])
        raise CVError(f"calibrate_from: cross-validation {cfg.calibrate_from} is of another recipe ({shown}"
                      f"{'; ...' if len(differ) > 4 else ''}): refit the recipe it cross-validated")
    try:
        return refit_record(cfg.calibrate_from, runs_dir)
    except CVError:
        raise
    except Exception as exc:
        raise CVError(f"calibrate_from: cross-validation {cfg.calibrate_from}'s fold files cannot be read "
                      f"({type(exc).__name__}: {exc})") from None


# ---- the command line (`python -m core.train cv K`, `report cv [ID] [--against ID]`) ----------------

def main(args: argparse.Namespace, train: Callable[..., int]) -> int:
    """`python -m core.train cv K`: every fold checked before the first one starts, then trained here with
    `train` (core.training.runner.train, passed in: the engine depends on nothing here), or queued; then reported."""
    from core.data import DataError
    runs_dir = Path(args.runs_dir) if args.runs_dir else None
    if clash := single_run_flag(args):
        return refuse(f"--cv makes one run folder per fold under --runs-dir; it takes no {clash}")
    try:
        configs = plan(typed_config(args), args.cv, args.cv_seed)
        for line in coverage(configs[0]):
            print(f"warning: {line}", flush=True)
    except (ConfigError, DataError) as exc:
        return refuse(str(exc))
    return queue_or_run(args, "cross-validation", "folds", "report: python -m core.train report cv",
                        lambda: launch(configs, runs_dir),
                        lambda: run_in_process(configs, train, runs_dir, cluster=args.cluster, workers=args.workers),
                        lambda cv_id: report_main(cv_id, runs_dir))


def report_main(cv_id: str, runs_dir: Path | None, against: str | None = None) -> int:
    """Print a cross-validation's report, or (no id) the cross-validations there are; with `against`, the paired
    comparison of the two."""
    if against:
        try:
            print(format_paired(paired(cv_id, against, runs_dir)))
        except (FileNotFoundError, CVError) as exc:
            return refuse(str(exc))
        return 0
    if not cv_id:
        skipped: list[str] = []
        found = list_cvs(runs_dir, skipped)
        for line in skipped:
            print(f"skipped: {line}", file=sys.stderr)
        for m in found:
            print(f"{m['id']}  {m.get('folds')} folds  {len(m.get('runs', []))} queued  "
                  f"{(m.get('base') or {}).get('model')}" + (f"  grid {m['grid']}" if m.get("grid") else ""))
        if not found:
            print(f"no cross-validations in {cv_dir(runs_dir)}")
        return 0
    try:
        print(format_report(report(cv_id, runs_dir)))
    except (FileNotFoundError, CVError) as exc:
        return refuse(str(exc))
    return 0
