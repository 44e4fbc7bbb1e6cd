"""95% intervals on every figure, from a bootstrap that resamples observations, not tiles.

The tiles of one HiRISE observation are alike (same terrain, same lighting, often the same landmark seen again), so
they are not independent draws: resampling single tiles would pretend there are as many independent pieces of
evidence as tiles and give intervals that are too narrow. Each draw here picks observations with replacement and
keeps all their tiles (a tile without an observation id is its own group). A draw is a weighted sum of
per-observation confusion matrices, so 2,000 draws of every figure cost a few milliseconds.

`paired_difference` compares two models scored on the same tiles with the same draws: the interval of the
difference says whether it stands out of the noise of which observations happened to be in the split.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from core.choices import HEADLINE

N_DRAWS = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def as_list(self) -> list[float]:
        return [round(self.low, 4), round(self.high, 4)]


def group_ids(groups: Sequence[str | None]) -> np.ndarray:
    """Integer group ids: one per distinct observation; a tile without one (None or "") is a group of its own."""
    index: dict[str, int] = {}
    out = np.empty(len(groups), dtype=np.int64)
    for i, g in enumerate(groups):
        key = g if g else f"\0tile{i}"
        out[i] = index.setdefault(key, len(index))
    return out


def group_confusions(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray, n_classes: int) -> np.ndarray:
    """(G, C, C) confusion matrix of each group (rows true, columns predicted)."""
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    flat = np.zeros((n_groups, n_classes * n_classes), dtype=np.float64)
    np.add.at(flat, (groups, np.asarray(y_true) * n_classes + np.asarray(y_pred)), 1.0)
    return flat.reshape(n_groups, n_classes, n_classes)


def draw_weights(n_groups: int, n_draws: int = N_DRAWS, seed: int = 0) -> np.ndarray:
    """(n_draws, G) how often each group is picked in each draw (G picks with replacement)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_draws).astype(np.float64) \
        if n_groups else np.zeros((n_draws, 0))


def figures_from_confusions(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Headline and per-class figures of a stack of confusion matrices (..., C, C), as `core.metrics` defines
    them: macro-F1 and balanced accuracy over the classes with tiles in that matrix."""
    support = cm.sum(-1)
    predicted = cm.sum(-2)
    hits = np.diagonal(cm, axis1=-2, axis2=-1)
    total = support.sum(-1)
    present = support > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(present, hits / np.maximum(support, 1), np.nan)
        precision = np.where(predicted > 0, hits / np.maximum(predicted, 1), np.nan)  # undefined if never predicted
        f1 = np.where(hits > 0, 2 * hits / np.maximum(support + predicted, 1), 0.0)
        n_present = present.sum(-1)
        return {"accuracy": hits.sum(-1) / np.maximum(total, 1),
                "balanced_accuracy": np.where(n_present > 0, np.nansum(recall, -1) / np.maximum(n_present, 1), 0.0),
                "macro_f1": np.where(n_present > 0, (f1 * present).sum(-1) / np.maximum(n_present, 1), 0.0),
                "precision": precision, "recall": recall, "f1": np.where(present, f1, np.nan)}


def _interval(values: np.ndarray) -> Interval | None:
    finite = values[np.isfinite(values)]
    if len(finite) < 0.5 * len(values) or not len(finite):
        return None  # the figure is undefined in most draws (a class most draws lack): no interval
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return Interval(float(low), float(high))


def intervals(y_true: Sequence[int], y_pred: Sequence[int], groups: Sequence[str | None], n_classes: int,
              n_draws: int = N_DRAWS, seed: int = 0) -> dict:
    """95% intervals of accuracy, balanced accuracy, macro-F1 and each class's precision, recall and F1, from
    `n_draws` resamplings of the observations (a class's recall and precision: widened to at least their Wilson
    interval, see `wilson`): {"accuracy": [lo, hi], ..., "per_class": [{"precision": [lo, hi],
    ...}], "groups": G, "draws": n_draws, "method": ...}. A figure undefined in most draws gets None."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    gid = group_ids(list(groups))
    per_group = group_confusions(y_true, y_pred, gid, n_classes)
    weights = draw_weights(len(per_group), n_draws, seed)
    drawn = figures_from_confusions(np.einsum("bg,gij->bij", weights, per_group))
    out: dict = {k: _as_list(_interval(drawn[k])) for k in HEADLINE}
    whole = per_group.sum(0)
    hits, support, predicted = np.diagonal(whole), whole.sum(1), whole.sum(0)
    out["per_class"] = []
    for c in range(n_classes):
        precision = _union(_interval(drawn["precision"][:, c]), wilson(hits[c], predicted[c]))
        recall = _union(_interval(drawn["recall"][:, c]), wilson(hits[c], support[c]))
        out["per_class"].append({"precision": _as_list(precision), "recall": _as_list(recall),
                                 "f1": _as_list(_union(_interval(drawn["f1"][:, c]), _f1_bounds(precision, recall)))})
    out.update({"groups": len(per_group), "draws": n_draws, "level": LEVEL,
                "method": f"bootstrap over {len(per_group)} observations ({n_draws} draws)"})
    return out


def statistic_interval(columns: np.ndarray, groups: Sequence[str | None],
                       statistic: Callable[[np.ndarray], np.ndarray], n_draws: int = N_DRAWS,
                       seed: int = 0) -> list[float] | None:
    """95% interval of any figure that is a function of per-tile sums, from the same resampling of observations:
    `columns` (N, K) per tile are summed per observation, each draw weighs the observations, and `statistic` maps
    the (draws, K) sums to (draws,) values (top-2 accuracy: hits / tiles; ECE: the bins' counts and sums)."""
    columns = np.asarray(columns, np.float64).reshape(len(groups), -1)
    gid = group_ids(list(groups))
    per_group = np.zeros((int(gid.max()) + 1 if len(gid) else 0, columns.shape[1]))
    np.add.at(per_group, gid, columns)
    return _as_list(_interval(statistic(draw_weights(len(per_group), n_draws, seed) @ per_group)))


def paired_difference(y_true: Sequence[int], pred_a: Sequence[int], pred_b: Sequence[int],
                      groups: Sequence[str | None], n_classes: int, n_draws: int = N_DRAWS, seed: int = 0) -> dict:
    """Model A minus model B on the same tiles, with the same observation draws for both: for each headline
    figure the difference, its 95% interval, and whether the interval holds 0 (within noise)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    gid = group_ids(list(groups))
    cm_a = group_confusions(y_true, np.asarray(pred_a, dtype=np.int64), gid, n_classes)
    cm_b = group_confusions(y_true, np.asarray(pred_b, dtype=np.int64), gid, n_classes)
    weights = draw_weights(len(cm_a), n_draws, seed)
    a = figures_from_confusions(np.einsum("bg,gij->bij", weights, cm_a))
    b = figures_from_confusions(np.einsum("bg,gij->bij", weights, cm_b))
    whole_a, whole_b = figures_from_confusions(cm_a.sum(0)), figures_from_confusions(cm_b.sum(0))
    out = {}
    for k in HEADLINE:
        iv = _interval(a[k] - b[k])
        out[k] = {"difference": float(whole_a[k] - whole_b[k]), "interval": _as_list(iv),
                  "within_noise": iv is None or iv.low <= 0 <= iv.high}
    out["groups"] = len(cm_a)
    out["draws"] = n_draws
    return out


def wilson(successes: float, trials: float, z: float = 1.959964) -> Interval | None:
    """The Wilson score interval of a proportion: what the counts alone allow. Resampling observations says
    nothing about a class held by one or two of them (1 tile of 1 found gives [1, 1] in every draw), so a class's
    recall and precision get the wider of the two intervals."""
    if trials <= 0:
        return None
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return Interval(float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def _f1_bounds(precision: Interval | None, recall: Interval | None) -> Interval | None:
    """F1 at the ends of its parts' intervals: F1 rises with both, so these bound it at least as honestly as its
    parts (a class of one tile found once would otherwise get F1 '1.00 (1.00-1.00)' beside a recall of 0.21-1). A
    class never predicted has no precision (0/0): anything in [0, 1], so its F1 is not pinned at 0 either."""
    if recall is None:
        return None
    precision = precision or Interval(0.0, 1.0)

    def f1(p: float, r: float) -> float:
        return 2 * p * r / (p + r) if p + r > 0 else 0.0
    return Interval(f1(precision.low, recall.low), f1(precision.high, recall.high))


def _union(a: Interval | None, b: Interval | None) -> Interval | None:
    if a is None or b is None:
        return a or b
    return Interval(min(a.low, b.low), max(a.high, b.high))


def _as_list(iv: Interval | None) -> list[float] | None:
    return iv.as_list() if iv is not None else None


def fmt(value: float | None, interval: Sequence[float] | None, digits: int = 3) -> str:
    """`0.912 [0.871, 0.944]`: a figure with its interval, as every page and CLI prints it."""
    if value is None:
        return "-"
    text = f"{value:.{digits}f}"
    if interval:
        text += f" [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"
    return text
