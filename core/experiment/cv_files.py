"""Out-of-fold figures on every file a user could send: originals, their official copies, and flip/turn averaging.

A cross-validation that scores originals only cannot see a model that fails on turned, flipped or brightened
tiles, and users send those (the data set ships `-r90`, `-r180`, `-r270`, `-fh`, `-fv` and `-brt` copies of every
held-out original). So each completed fold's model also scores every file of its held-out observations, once as
sent and once averaged over the 8 flips and 90-degree turns (TTA), into `oof_files.json` in the fold's run folder.
Pooled over the folds, those predictions give three views side by side:

- `originals`: what the cross-validation always measured (the originals' rows of the same file);
- `all files`: every original and every official copy, each scored as sent;
- `all files, TTA`: the same files, each the mean of its 8 views' logits.

Every view reports the usual figures with 95% intervals (bootstrap over observations), the always-`other`
accuracy on the same files, and the **false-alarm rate at the scan threshold**: the share of `other` files that
a model calls a landmark with calibrated probability >= `STANDARD_SCAN_THRESHOLD` (core.settings) (a scan pays for each of them). The
temperature is the one a refit gets: fitted on the pooled out-of-fold logits of the originals.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from core.bootstrap import draw_weights, group_ids, intervals, wilson
from core.classes import CLASS_NAMES
from core.experiment.runs import Run, read_json
from core.settings import STANDARD_SCAN_THRESHOLD

FORMAT = "hirise-studio-oof-files/1"
VIEWS = ("originals", "all files", "all files, TTA")
OTHER = CLASS_NAMES.index("other")


class FilesError(ValueError):
    """A fold's all-files predictions that cannot be made or read; the message says why in one line."""


# ---- scoring one fold --------------------------------------------------------------------------------------

def score_fold(run: Run, data, tta: bool = True, say: Callable[[str], None] = print) -> Path:
    """Score `run`'s model (a completed fold) on every file of its held-out observations, as sent and (with
    `tta`) averaged over the 8 views; write `oof_files.json` in the run folder and return its path. `data` is the
    cross-validation's data (`core.data.load_dataset` of its recipe): the fold's checkpoint names its originals."""
    from core.checkpoint import load_checkpoint
    from core.data import RecordTiles
    from core.evaluate import evaluation_records
    from core.inference import predict_logits, predict_views
    loaded = load_checkpoint(run.best_checkpoint)
    records, _ = evaluation_records(loaded, data, "val", originals_only=False)
    tiles = RecordTiles(data, records)
    t0 = time.perf_counter()
    averaged = None
    if tta:  # the 8 views hold the tile as sent: 8 passes give both
        _, views = predict_views(loaded, tiles)
        plain, averaged = views[0], views.mean(0)
    else:
        plain = predict_logits(loaded, tiles)
    say(f"  {run.name}: {len(records)} files scored as sent{' and with 8-view averaging' if tta else ''} in "
        f"{time.perf_counter() - t0:.0f} s")
    y = data.labels(records)
    payload = {"format": FORMAT, "run": run.name, "arch": loaded.arch, "image_size": loaded.image_size,
               "files": [{"name": r.name, "observation": r.observation, "original": bool(r.is_original),
                          "true": int(t), "logits": [round(float(v), 4) for v in plain[i]],
                          **({"logits_tta": [round(float(v), 4) for v in averaged[i]]} if averaged is not None
                             else {})}
                         for i, (r, t) in enumerate(zip(records, y, strict=True))]}
    return run.save_oof_files(payload)


def read_fold(run: Run) -> dict[str, Any] | None:
    """A fold's all-files predictions as arrays, or None when it has none; FilesError when the file is damaged."""
    if not run.oof_files_file.is_file():
        return None
    raw = read_json(run.oof_files_file)
    if raw is None:
        raise FilesError(f"{run.oof_files_file}: not an all-files prediction file (not JSON)")
    try:
        if raw.get("format") != FORMAT:
            raise ValueError(f"format {raw.get('format')!r}")
        rows = raw["files"]
        out = {"name": np.array([str(r["name"]) for r in rows], dtype=object),
               "observation": np.array([r.get("observation") for r in rows], dtype=object),
               "original": np.array([bool(r["original"]) for r in rows], dtype=bool),
               "y": np.array([int(r["true"]) for r in rows], dtype=np.int64),
               "logits": np.array([r["logits"] for r in rows], dtype=np.float64).reshape(-1, len(CLASS_NAMES))}
        has_tta = bool(rows) and all("logits_tta" in r for r in rows)
        out["logits_tta"] = np.array([r["logits_tta"] for r in rows], dtype=np.float64).reshape(
            -1, len(CLASS_NAMES)) if has_tta else None
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise FilesError(f"{run.oof_files_file}: not an all-files prediction file ({exc})") from None
    if not np.isfinite(out["logits"]).all() or (has_tta and not np.isfinite(out["logits_tta"]).all()) \
            or ((out["y"] < 0) | (out["y"] >= len(CLASS_NAMES))).any():
        raise FilesError(f"{run.oof_files_file}: non-finite logits or unknown labels")
    return out


# ---- pooling and figures -----------------------------------------------------------------------------------

def pooled(folds: list[tuple[int, Run | None]]) -> tuple[dict[str, Any] | None, list[str]]:
    """Every completed fold's all-files predictions, pooled (arrays as `read_fold`'s, plus `fold`), and the
    folds that lack them, named. None when a completed fold lacks them: a partial pool would mislead. `folds`:
    `core.experiment.cv.fold_runs` of a manifest."""
    from core.experiment.jobs import job_state
    parts, missing = [], []
    for f, run in folds:
        if run is None or not run.config_file.is_file() or job_state(run, run.status()) != "completed":
            continue
        try:
            arrays = read_fold(run)
        except FilesError as exc:
            missing.append(f"fold {f + 1}: {exc}")
            continue
        if arrays is None:
            missing.append(f"fold {f + 1}: no all-files predictions")
            continue
        parts.append({**arrays, "fold": np.full(len(arrays["y"]), f, dtype=np.int64)})
    if missing or not parts:
        return None, missing
    out = {k: np.concatenate([p[k] for p in parts]) for k in ("name", "observation", "original", "y", "logits", "fold")}
    out["logits_tta"] = np.concatenate([p["logits_tta"] for p in parts]) \
        if all(p["logits_tta"] is not None for p in parts) else None
    return out, []


def view_predictions(files: dict[str, Any], view: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(row mask, logits, y) of one view, or None when the view was not scored (TTA not run)."""
    if view == "originals":
        mask = files["original"]
        return mask, files["logits"][mask], files["y"][mask]
    if view == "all files":
        return np.ones(len(files["y"]), dtype=bool), files["logits"], files["y"]
    if view == "all files, TTA":
        if files["logits_tta"] is None:
            return None
        return np.ones(len(files["y"]), dtype=bool), files["logits_tta"], files["y"]
    raise ValueError(f"unknown view {view!r} (expected one of {', '.join(VIEWS)})")


def paired_files(a: dict[str, Any], b: dict[str, Any], pred_key: str = "pred") -> dict[str, Any] | None:
    """A minus B on the files both scored, matched by name (`pred_key`: each one's predicted classes), by a paired
    bootstrap over observations: `core.bootstrap.paired_difference`'s figures plus `files`. None when either lacks
    those predictions; ValueError when they label a common file differently (other data)."""
    from core.bootstrap import paired_difference
    if a.get(pred_key) is None or b.get(pred_key) is None:
        return None
    index = {str(n): i for i, n in enumerate(b["name"])}
    rows_a = [i for i, n in enumerate(a["name"]) if str(n) in index]
    rows_b = [index[str(a["name"][i])] for i in rows_a]
    if not rows_a:
        raise ValueError("the two share no scored file")
    if not np.array_equal(np.asarray(a["y"])[rows_a], np.asarray(b["y"])[rows_b]):
        raise ValueError("the two label their common files differently (other data)")
    result = paired_difference(np.asarray(a["y"])[rows_a], np.asarray(a[pred_key])[rows_a],
                               np.asarray(b[pred_key])[rows_b],
                               [o or None for o in np.asarray(a["observation"])[rows_a]], len(CLASS_NAMES))
    return {**result, "files": len(rows_a)}


def with_predictions(files: dict[str, Any]) -> dict[str, Any]:
    """`pooled`'s arrays plus each file's predicted class as sent (`pred`) and with TTA (`pred_tta`, None when
    not scored): what `paired_files` compares."""
    out = dict(files)
    out["pred"] = files["logits"].argmax(1)
    out["pred_tta"] = files["logits_tta"].argmax(1) if files.get("logits_tta") is not None else None
    return out


def false_alarms(y: np.ndarray, probs: np.ndarray, groups: list, threshold: float = STANDARD_SCAN_THRESHOLD,
                 n_draws: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The share of `other` files called a landmark with probability >= `threshold`, with a 95% interval from a
    bootstrap over observations (widened to at least the Wilson interval on the counts)."""
    landmark = np.delete(probs, OTHER, axis=1).max(1) >= threshold
    other = y == OTHER
    n, hits = int(other.sum()), int((landmark & other).sum())
    if not n:
        return {"rate": None, "alarms": 0, "other_files": 0, "interval": None, "threshold": threshold}
    gid = group_ids([g for g, o in zip(groups, other, strict=True) if o])
    per_group_hits = np.bincount(gid, weights=landmark[other].astype(float))
    per_group_n = np.bincount(gid).astype(float)
    weights = draw_weights(len(per_group_n), n_draws, seed)
    drawn = (weights @ per_group_hits) / np.maximum(weights @ per_group_n, 1e-12)
    lo, hi = np.quantile(drawn, [0.025, 0.975])
    w = wilson(hits, n)
    return {"rate": hits / n, "alarms": hits, "other_files": n, "threshold": threshold,
            "interval": [float(min(lo, w.low)), float(max(hi, w.high))]}


def view_figures(files: dict[str, Any], view: str, temperature: float) -> dict[str, Any] | None:
    """One view's figures: classification metrics with intervals, always-`other` accuracy, false alarms."""
    from core.inference import probabilities
    from core.metrics import classification_metrics
    got = view_predictions(files, view)
    if got is None:
        return None
    mask, logits, y = got
    probs = probabilities(logits, temperature)
    groups = list(files["observation"][mask])
    out = classification_metrics(y, probs)
    out["intervals"] = intervals(y, probs.argmax(1), groups, len(CLASS_NAMES))
    out["observations"] = len({g for g in groups if g})
    out["false_alarms"] = false_alarms(y, probs, groups)
    out["view"] = view
    return {k: v for k, v in out.items() if k not in ("curves", "probs")}


def files_report(folds: list[tuple[int, Run | None]], temperature: float) -> dict[str, Any]:
    """The three views' figures (None for a view not scored), or why there are none."""
    files, missing = pooled(folds)
    if files is None:
        return {"views": None, "missing": missing or ["no completed fold"]}
    return {"views": {v: view_figures(files, v, temperature) for v in VIEWS}, "missing": [],
            "files": len(files["y"]), "originals": int(files["original"].sum())}
