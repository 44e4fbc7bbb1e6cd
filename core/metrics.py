"""Classification metrics that keep the 81%-`other` failure visible: per-class recall, macro-F1, balance."""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
    top_k_accuracy_score,
)

from core.classes import CLASS_NAMES


def classification_metrics(y_true: Sequence[int], y_prob: np.ndarray,
                           class_names: Sequence[str] = CLASS_NAMES) -> dict:
    """Headline and per-class figures from true labels and (N, C) probabilities.

    Every class appears in the per-class table, with support 0 where it is absent, so a missing
    rare class is shown rather than silently dropped from the averages' denominators.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    labels = list(range(len(class_names)))
    y_pred = y_prob.argmax(1)
    present = sorted(set(y_true.tolist()))
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true" is expected on small splits
        warnings.simplefilter("ignore", UserWarning)
        return _metrics(y_true, y_prob, y_pred, labels, present, class_names)


def _metrics(y_true: np.ndarray, y_prob: np.ndarray, y_pred: np.ndarray, labels: list[int], present: list[int],
             class_names: Sequence[str]) -> dict:
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    out = {
        "n": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)) if len(y_true) else 0.0,
        # macro-F1 over the classes present in y_true: an absent class can't be scored either way
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=present, average="weighted", zero_division=0)),
        "top2_accuracy": float(top_k_accuracy_score(y_true, y_prob, k=2, labels=labels))
        if len(labels) > 2 and len(y_true) else None,
        "majority_baseline": majority_baseline(y_true, class_names),
        # "predicted": how often the class was answered; at 0 its precision is undefined (stored as 0)
        "per_class": [{"class": class_names[i], "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                       "support": int(s[i]), "predicted": int(cm[:, i].sum())} for i in labels],
        "confusion": cm.tolist(),
        "class_names": list(class_names),
    }
    return out


def headline(metrics: dict) -> str:
    """One line that never shows accuracy alone."""
    base = metrics["majority_baseline"]["accuracy"]
    return (f"macro-F1 {metrics['macro_f1']:.3f} | balanced acc {metrics['balanced_accuracy']:.3f} | "
            f"acc {metrics['accuracy']:.3f} (always-{metrics['majority_baseline']['class']} baseline {base:.3f})")



def majority_baseline(y_true: Sequence[int], class_names: Sequence[str] = CLASS_NAMES) -> dict:
    """What always answering the split's most common class scores: the floor every model must beat."""
    y_true = np.asarray(y_true, dtype=np.int64)
    if not len(y_true):
        return {"class": None, "accuracy": 0.0, "balanced_accuracy": 0.0, "macro_f1": 0.0}
    majority = int(np.bincount(y_true, minlength=len(class_names)).argmax())
    y_pred = np.full_like(y_true, majority)
    present = sorted(set(y_true.tolist()))
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true" is expected on small splits
        warnings.simplefilter("ignore", UserWarning)
        return {"class": class_names[majority], "accuracy": float(accuracy_score(y_true, y_pred)),
                "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
                "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0))}


def _thin(*arrays: np.ndarray, max_points: int) -> list[list[float]]:
    """Keep at most `max_points` evenly spaced points of a curve, first and last included."""
    n = len(arrays[0])
    idx = np.unique(np.linspace(0, n - 1, min(n, max_points)).round().astype(int)) if n else np.zeros(0, int)
    return [[round(float(v), 5) for v in a[idx]] for a in arrays]


def _pr_points(recall: np.ndarray, precision: np.ndarray, max_points: int) -> list[list[float]]:
    """The points of a precision-recall curve that its average precision is computed from: the first point and
    every point where recall rises (AP = sum of (R_n - R_n-1) P_n over them), so a rare class's curve is drawn as
    exactly the curve its AP says (thinning evenly dropped the (1, 1) corner of a 1-tile class: drawn falling to
    0.5 under a legend of AP 1.00). Only a curve of many positives is thinned, evenly, beyond 4x `max_points`."""
    keep = np.flatnonzero(np.r_[True, np.diff(recall) != 0])
    if len(keep) > 4 * max_points:
        keep = keep[np.unique(np.linspace(0, len(keep) - 1, 4 * max_points).round().astype(int))]
    return [[round(float(v), 5) for v in a[keep]] for a in (recall, precision)]


def per_class_curves(y_true: Sequence[int], y_prob: np.ndarray, class_names: Sequence[str] = CLASS_NAMES,
                     max_points: int = 101) -> dict:
    """One-vs-rest precision-recall and ROC curves with average precision and AUC, per class.

    A class without positives (or without negatives) in `y_true` has no defined curve; it is
    listed under `skipped` with the reason instead of getting a misleading 0 or 1.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    out: dict = {"classes": {}, "skipped": {}}
    for i, name in enumerate(class_names):
        positives = int((y_true == i).sum())
        if positives == 0:
            out["skipped"][name] = "no tiles of this class in the split"
            continue
        if positives == len(y_true):
            out["skipped"][name] = "every tile in the split is of this class"
            continue
        target, score = (y_true == i).astype(int), y_prob[:, i]
        precision, recall, _ = precision_recall_curve(target, score)
        fpr, tpr, _ = roc_curve(target, score)
        recall_pts, precision_pts = _pr_points(recall[::-1], precision[::-1], max_points)
        fpr_pts, tpr_pts = _thin(fpr, tpr, max_points=max_points)
        out["classes"][name] = {"support": positives,
                                "average_precision": float(average_precision_score(target, score)),
                                "roc_auc": float(roc_auc_score(target, score)),
                                "pr": {"recall": recall_pts, "precision": precision_pts},
                                "roc": {"fpr": fpr_pts, "tpr": tpr_pts}}
    return out


def confused_pairs(confusion: Sequence[Sequence[int]], class_names: Sequence[str] = CLASS_NAMES,
                   top: int = 10) -> list[dict]:
    """The off-diagonal cells of a confusion matrix, largest first: which mistakes dominate."""
    cm = np.asarray(confusion, dtype=np.int64)
    rows = cm.sum(axis=1)
    pairs = [{"true": class_names[t], "pred": class_names[p], "count": int(cm[t, p]),
              "fraction_of_true": float(cm[t, p] / rows[t])}
             for t in range(len(cm)) for p in range(len(cm)) if t != p and cm[t, p] > 0]
    pairs.sort(key=lambda d: (-d["count"], -d["fraction_of_true"]))
    return pairs[:top]
