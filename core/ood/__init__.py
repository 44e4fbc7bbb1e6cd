"""How unlike the training tiles an input is: an out-of-distribution score on the penultimate features.

This package's top holds the value a checkpoint stores (`FeatureDensity`) and how a reader is told its
score; `core.ood.fit` fits one; `python -m core.ood CHECKPOINT` (`__main__`) adds one to an older checkpoint.

A softmax says which class is likeliest, not whether the input is a HiRISE tile at all: pure noise is called
`other` at 95%. The features the classifier head reads say more. This module fits a Gaussian to the training
tiles' features (one mean per class, one shared covariance) and scores an input by its Mahalanobis distance to
the nearest class mean. The covariance is kept low-rank, as in probabilistic PCA: `k` principal directions
with their own variances and one noise variance for the rest, so the fit is a few hundred kB in a checkpoint
rather than a D x D matrix.

The distance alone has no meaning to a reader, so it is calibrated on validation tiles, which the model never
trained on: an input is reported by the share of validation tiles that lie closer (`typicality`), and flagged
when further than `FLAG_SHARE` of them. It is a graded hint, not a detector: an input's features can collapse near
the class means (an all-black image sits closer than 96% of the default model's validation tiles).

So the verdict (`judge`, the one place it is made; the Explain page, the Scan page's detail and `core.predict`
show its words) first asks a cheap, model-independent question of the tile's pixels (`core.ood.pixels`): is
it like any HiRISE tile at all? Constant images, pixel noise, text on white and high-contrast photographs are
not (0 of 12,593 real tiles fail it), and are flagged for every model, with or without a reference; the
feature typicality then judges the rest.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from .pixels import unlike_hirise

#: Flagged when further than 95% of validation tiles: by construction 1 real tile in 20 is flagged too, so the
#: flag asks for care rather than declaring the input foreign. The features alone miss obvious non-tiles (the
#: default model puts an all-black image at 0.04, uniform noise at 0.77-0.88): `judge` asks the pixels first.
FLAG_SHARE = 0.95
N_COMPONENTS = 64
N_QUANTILES = 201
MAX_TRAIN_TILES = 3000  # a seeded sample bounds the feature pass at the end of training (about a minute on a CPU)


class OODError(ValueError):
    """Too few or malformed features to fit, or a stored reference that does not fit the model."""


@dataclass(frozen=True)
class FeatureDensity:
    """Class means and a low-rank shared covariance of training features, with validation distances."""

    class_means: np.ndarray  # (C, D)
    components: np.ndarray  # (k, D), orthonormal rows: the principal directions of the within-class spread
    variances: np.ndarray  # (k,) variance along each component
    noise_variance: float  # variance in every other direction
    val_quantiles: np.ndarray  # (N_QUANTILES,) distances of the validation tiles at 0, 0.5, ..., 100 %
    # (N_QUANTILES,) the same for the training tiles it was fitted on, or None: how much further unseen tiles lie
    # than trained ones (`transfer_ratio`) is what calibrates a model that has no validation split (a refit)
    train_quantiles: np.ndarray | None = None

    def distance(self, features: np.ndarray) -> np.ndarray:
        """(N, D) features -> (N,) squared Mahalanobis distance to the nearest class mean, per dimension."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.class_means.shape[1]:
            raise OODError(f"features of shape {x.shape} do not fit a reference of {self.class_means.shape[1]} "
                           "dimensions")
        best = np.full(len(x), np.inf)
        for mean in self.class_means:
            z = x - mean
            projected = z @ self.components.T
            inside = projected**2
            rest = np.maximum((z**2).sum(1) - inside.sum(1), 0.0)
            best = np.minimum(best, (inside / self.variances).sum(1) + rest / self.noise_variance)
        return best / self.class_means.shape[1]

    def typicality(self, features: np.ndarray) -> np.ndarray:
        """(N,) share of validation tiles whose distance is below each input's: 0.5 is a typical tile, 1.0
        further than every validation tile."""
        d = self.distance(features)
        return np.interp(d, self.val_quantiles, np.linspace(0.0, 1.0, len(self.val_quantiles)), left=0.0,
                         right=1.0)

    def to_dict(self) -> dict:
        """Plain lists and floats: what `torch.load(weights_only=True)` reads back from a checkpoint."""
        return {"class_means": self.class_means.astype(np.float32).tolist(),
                "components": self.components.astype(np.float32).tolist(),
                "variances": self.variances.tolist(), "noise_variance": float(self.noise_variance),
                "val_quantiles": self.val_quantiles.tolist(),
                **({"train_quantiles": self.train_quantiles.tolist()} if self.train_quantiles is not None else {})}

    @classmethod
    def from_dict(cls, values: object) -> FeatureDensity:
        """Read `to_dict`'s output back; OODError when anything is missing or out of shape."""
        try:
            means = np.asarray(values["class_means"], dtype=np.float64)
            comps = np.asarray(values["components"], dtype=np.float64)
            var = np.asarray(values["variances"], dtype=np.float64)
            noise = float(values["noise_variance"])
            quantiles = np.asarray(values["val_quantiles"], dtype=np.float64)
            trained = values.get("train_quantiles")
            trained = None if trained is None else np.asarray(trained, dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise OODError(f"the stored out-of-distribution reference is malformed ({exc})") from exc
        ok = (means.ndim == 2 and comps.ndim == 2 and comps.shape[1] == means.shape[1] and var.shape == comps.shape[:1]
              and quantiles.ndim == 1 and len(quantiles) >= 2 and np.all(np.isfinite(quantiles))
              and np.all(np.diff(quantiles) >= 0) and np.all(var > 0) and np.isfinite(noise) and noise > 0
              and np.all(np.isfinite(means)) and np.all(np.isfinite(comps)))
        if trained is not None and (trained.shape != quantiles.shape or not np.all(np.isfinite(trained))):
            ok = False
        if not ok:
            raise OODError("the stored out-of-distribution reference is malformed (shapes or values)")
        return cls(means, comps, var, noise, quantiles, trained)


def transfer_ratio(references: list[FeatureDensity]) -> np.ndarray:
    """(N_QUANTILES,) how much further held-out tiles lie than training tiles, quantile by quantile: the median
    over `references` (the folds of a cross-validation, each fitted on its training tiles and calibrated on its
    held-out fold) of val_quantiles / train_quantiles. Applied to a refit's own training distances, it stands in
    for the validation tiles that a model trained on everything does not have."""
    ratios = [r.val_quantiles / np.maximum(r.train_quantiles, 1e-12) for r in references
              if r.train_quantiles is not None]
    if not ratios:
        raise OODError("no fold reference records its training distances (folds trained before this existed)")
    return np.median(np.stack(ratios), axis=0)


@dataclass(frozen=True)
class Verdict:
    """The out-of-distribution check's answer on one input (a tile, or a large image's windows): made by `judge`
    or `judge_windows` only, and shown as is by the app and the CLI."""

    flagged: bool
    reason: str  # why it is flagged, a short phrase ("unlike any HiRISE tile: constant image"); "" when not
    text: str  # the sentence for the reader
    typicality: float | None = None  # the feature typicality it weighed, None without a reference


def judge(tile: np.ndarray | None, typicality: float | None) -> Verdict:
    """The verdict on one (227x227 uint8) tile: unlike any HiRISE tile by its pixels (`core.ood.pixels`), else
    unusual by its features' typicality (`FLAG_SHARE` and above), else typical. `tile` None skips the pixel
    check (only a typicality is known); `typicality` None when the checkpoint has no reference."""
    unlike = None if tile is None else unlike_hirise(tile)
    if unlike is not None:
        return _unlike(unlike, typicality)
    return _by_features(typicality, pixels_checked=tile is not None)


def judge_windows(tiles: np.ndarray, typicality: np.ndarray | None) -> Verdict:
    """The verdict on a large image from its (N, 227, 227) windows: unlike any HiRISE tile when more than half of
    its windows are (the commonest reason is given), else by the median of the windows' typicality (as the
    image's typicality is reported), with a note on the windows that are unlike a tile."""
    reasons = [unlike_hirise(t) for t in tiles]
    unlike = [r for r in reasons if r is not None]
    median = None if typicality is None else float(np.median(typicality))
    if not unlike:
        return _by_features(median, pixels_checked=True)
    commonest = Counter(r.split(" (")[0] for r in unlike).most_common(1)[0][0]
    some = f"{len(unlike):,} of its {len(reasons):,} windows"
    if 2 * len(unlike) > len(reasons):
        return _unlike(f"{commonest} ({some})", median)
    verdict = _by_features(median, pixels_checked=True)
    return Verdict(verdict.flagged, verdict.reason, f"{verdict.text} Note: {some} are unlike any HiRISE tile "
                   f"({commonest}, for one); their predictions mean nothing.", median)


def describe(typicality: float) -> tuple[str, bool]:
    """The sentence and flag of `judge` for a typicality alone (no tile to check the pixels of)."""
    verdict = judge(None, typicality)
    return verdict.text, verdict.flagged


def _unlike(why: str, typicality: float | None) -> Verdict:
    reason = f"unlike any HiRISE tile: {why}"
    return Verdict(True, reason, f"Unusual input: {reason}. The model only knows HiRISE tiles, so its prediction "
                   "says nothing about this image, however confident it looks.", typicality)


def _by_features(typicality: float | None, pixels_checked: bool) -> Verdict:
    pixels = " Its pixels are within the bounds real HiRISE tiles keep." if pixels_checked else ""
    if typicality is None:
        return Verdict(False, "", "No feature check: this checkpoint has no out-of-distribution reference "
                       "(`python -m core.ood CHECKPOINT` adds one)." + pixels, None)
    share = f"{typicality:.0%}" if typicality < 0.995 else "over 99.5%"
    if typicality >= FLAG_SHARE:
        reason = f"features unlike the training tiles (further than {share} of validation tiles)"
        return Verdict(True, reason, f"Unusual input: its features lie further from the training tiles than {share} "
                       "of the validation tiles. It may not be a HiRISE tile like those the model learnt from; treat "
                       "the prediction with care.", typicality)
    return Verdict(False, "", f"Typical input: {share} of validation tiles lie closer to the training tiles than "
                   "this one (out-of-distribution check)." + pixels, typicality)
