"""Fitting an out-of-distribution reference (`core.ood.FeatureDensity`): from features (`fit_density`), or from a
trained model and its data through the one inference path (`fit_reference`)."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from core.data.records import HELD_OUT

from . import MAX_TRAIN_TILES, N_COMPONENTS, N_QUANTILES, FeatureDensity, OODError

if TYPE_CHECKING:
    from core.checkpoint import LoadedModel
    from core.data import HiriseData, Record
    from core.progress import ProgressCallback


def fit_density(features: np.ndarray, labels: np.ndarray, val_features: np.ndarray | None,
                n_components: int = N_COMPONENTS, with_train_quantiles: bool = False,
                val_from_ratio: np.ndarray | None = None) -> FeatureDensity:
    """Fit class means and a probabilistic-PCA covariance on training features, calibrated on validation ones
    (or, for a model with no validation tiles, on its training distances times `val_from_ratio`)."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if x.ndim != 2 or len(x) != len(y) or len(x) < 2:
        raise OODError(f"need at least two training feature rows with one label each, got {x.shape} and {y.shape}")
    if val_from_ratio is None and (val_features is None or len(val_features) < 2):
        raise OODError("need at least two validation tiles to calibrate the out-of-distribution score")
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(0) for c in classes])
    centred = x - means[np.searchsorted(classes, y)]
    n, dim = centred.shape
    k = max(1, min(n_components, dim - 1, n - 1))
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    eigen = singular**2 / max(n - len(classes), 1)
    total = float((centred**2).sum() / max(n - len(classes), 1))
    floor = max(total / dim, 1e-12) * 1e-3  # a direction of no spread must not divide by zero
    noise = max((total - eigen[:k].sum()) / max(dim - k, 1), floor)
    density = FeatureDensity(means, vt[:k], np.maximum(eigen[:k], floor), noise, np.zeros(2))
    levels = np.linspace(0.0, 1.0, N_QUANTILES)
    trained = np.quantile(density.distance(x), levels) if with_train_quantiles or val_from_ratio is not None else None
    if val_from_ratio is not None:
        quantiles = np.maximum.accumulate(trained * np.asarray(val_from_ratio, dtype=np.float64))
    else:
        quantiles = np.quantile(density.distance(val_features), levels)
    return dataclasses.replace(density, val_quantiles=quantiles, train_quantiles=trained)


def fit_reference(loaded: LoadedModel, data: HiriseData, max_train: int = MAX_TRAIN_TILES,
                  on_progress: ProgressCallback | None = None,
                  known: tuple[list[Record], np.ndarray] | None = None, with_train_quantiles: bool = False,
                  val_from_ratio: np.ndarray | None = None) -> FeatureDensity:
    """The reference of a trained model: fitted on (a seeded sample of) its training originals, calibrated on its
    validation originals, with the features of the one inference path (`core.inference.predict_features`).

    The split is the one the checkpoint records when the data holds all its validation files (so a model trained
    under an older split rule is calibrated on tiles it never saw), else the data's own. `known`: (records,
    features) already computed, used for the validation tiles when they are exactly those records (training's
    final validation pass: one pass gives the report and these)."""
    from core.data import RecordTiles
    from core.inference import predict_features

    train, val = _reference_split(loaded, data)
    if val_from_ratio is not None:
        val = []
    elif not train or len(val) < 2:
        raise OODError(f"{len(train)} training and {len(val)} validation tiles: too few to fit a reference")
    if len(train) > max_train:
        keep = np.sort(np.random.default_rng(0).choice(len(train), max_train, replace=False))
        train = [train[i] for i in keep]
    train_features, _ = predict_features(loaded, RecordTiles(data, train), on_progress=on_progress)
    if not val:
        val_features = None
    elif known is not None and known[0] == val:
        val_features = known[1]
    else:
        val_features, _ = predict_features(loaded, RecordTiles(data, val), on_progress=on_progress)
    return fit_density(train_features, data.labels(train), val_features, with_train_quantiles=with_train_quantiles,
                       val_from_ratio=val_from_ratio)


def _reference_split(loaded: LoadedModel, data: HiriseData) -> tuple[list[Record], list[Record]]:
    """(training originals, validation originals) of `loaded`, as its checkpoint recorded them if possible."""
    val = data.recorded(loaded.splits, "val")
    if val is None:
        return data.select("train", originals_only=True), data.select("val", originals_only=True)
    held = {name for s in HELD_OUT for name in loaded.splits.get(s, {}).get("files") or ()}
    held_observations = {o for s in HELD_OUT for o in loaded.splits.get(s, {}).get("observations") or ()}
    train = [r for r in data.records if r.is_original and r.name not in held
             and not (r.observation and r.observation in held_observations)]
    return train, val
