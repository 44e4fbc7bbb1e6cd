"""Is a tile like any HiRISE tile at all? Cheap, model-independent statistics of its pixels, against fixed bounds.

A network's features can collapse near its class means for inputs that share nothing with a HiRISE tile (an
all-black image sits closer to the default model's class means than 96% of real tiles), so the feature-space
typicality (`core.ood.FeatureDensity`) cannot be the only check. These statistics are computed on the 227x227
uint8 tile as the model sees it, and compared with bounds set well outside what real HiRISE tiles show.

The bounds were measured on every real tile in ../shared/data (12,593 tiles: hirise-v3_2-subset's 7,360 including
its official rotated, flipped and brightened copies, hirise-v3-subset's 1,336 and hirise-v3_2-extra-train's
3,897); the real extremes are given with each bound, and `docs/ood.md` has the table. Black pixels (grey level
`NODATA` or below) are the no-data fill at the edge of a map-projected observation: a real tile can be mostly
fill, so the contrast and edge statistics leave them out.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Grey levels up to this are treated as the no-data fill of a map-projected observation.
NODATA = 8
#: A pixel-to-pixel step above this is a sharp edge (2x2 forward differences, grey levels).
EDGE_STEP = 70.0
#: Grey levels from this up count as saturated white.
WHITE = 250

#: The bounds; the real tiles' extremes (min or max over the 12,593 real tiles) are given with each.
MIN_SPAN = 12.0  # p99 - p1 of the grey levels: real min 18, 0.1% quantile 40
MIN_NEIGHBOUR_CORRELATION = 0.2  # correlation of neighbouring pixels: real min 0.51, 0.1% quantile 0.58; noise 0.00
MAX_FLAT_SHARE = 0.6  # share of pixels at the commonest grey level: real max 0.49, 99.9% quantile 0.39
MAX_WHITE_SHARE = 0.25  # share of pixels >= WHITE: real max 0.088, 99.9% quantile 0.013
MAX_EDGE_SHARE = 0.05  # share of sharp edges among terrain pixels: real max 0.030, 99.9% quantile 0.015
#: Photograph: both a contrast (std of the terrain pixels) and a share of sharp edges above these. Real tiles
#: reach either (std max 78, 99.9% 56.5; edges 99.9% 0.015) but none both: 0 of 12,593 tiles.
PHOTO_STD = 50.0
PHOTO_EDGE_SHARE = 0.012


@dataclass(frozen=True)
class TileStatistics:
    """What the checks read from one tile's pixels."""

    std: float  # of every pixel
    span: float  # p99 - p1 of every pixel (grey levels)
    neighbour_correlation: float  # of horizontally and vertically adjacent pixels (mean of the two); 0 if flat
    flat_share: float  # share of pixels at the commonest grey level
    white_share: float  # share of pixels >= WHITE
    terrain_std: float  # std of the pixels above NODATA (every pixel when nearly all are fill)
    edge_share: float  # share of sharp edges (> EDGE_STEP) among the terrain's 2x2 neighbourhoods


def tile_statistics(tile: np.ndarray) -> TileStatistics:
    """The statistics of one (H, W) uint8 tile (the 227x227 the model sees)."""
    t = np.asarray(tile)
    if t.ndim != 2 or t.dtype != np.uint8 or min(t.shape) < 3:
        raise ValueError(f"expected an (H, W) uint8 tile, got {t.shape} {t.dtype}")
    x = t.astype(np.float32)
    n = x.size
    std = float(x.std())
    counts = np.bincount(t.ravel(), minlength=256)
    p1, p99 = np.searchsorted(np.cumsum(counts), [0.01 * n, 0.99 * n])  # the grey levels at 1% and 99%
    if std > 0:
        z = x - x.mean()
        corr = float(((z[:, :-1] * z[:, 1:]).mean() + (z[:-1] * z[1:]).mean()) / 2 / (std**2))
    else:
        corr = 0.0
    valid = t > NODATA
    terrain = x[valid] if valid.sum() >= 500 else x.ravel()
    step = np.hypot(x[:-1, 1:] - x[:-1, :-1], x[1:, :-1] - x[:-1, :-1])
    inside = valid[:-1, :-1] & valid[1:, 1:] & valid[:-1, 1:] & valid[1:, :-1]
    steps = step[inside] if inside.sum() >= 500 else step.ravel()
    return TileStatistics(std=std, span=float(p99 - p1), neighbour_correlation=corr,
                          flat_share=float(counts.max() / n), white_share=float(counts[WHITE:].sum() / n),
                          terrain_std=float(terrain.std()), edge_share=float((steps > EDGE_STEP).mean()))


def unlike_hirise(tile: np.ndarray) -> str | None:
    """Why the tile is unlike any HiRISE tile (a short phrase: 'constant image'), or None when its pixels are
    within the bounds real tiles keep."""
    s = tile_statistics(tile)
    if s.std == 0:
        return "constant image"
    if s.span < MIN_SPAN:
        return f"nearly constant image (its grey levels span {s.span:.0f})"
    if s.neighbour_correlation < MIN_NEIGHBOUR_CORRELATION:
        return "pixel noise (neighbouring pixels are unrelated)"
    if s.white_share > MAX_WHITE_SHARE:
        return f"largely saturated white ({s.white_share:.0%} of its pixels), like a page of text or a drawing"
    if s.flat_share > MAX_FLAT_SHARE:
        return f"mostly one flat grey level ({s.flat_share:.0%} of its pixels), like a blank page or a fill"
    if s.edge_share > MAX_EDGE_SHARE:
        return "sharp edges everywhere, like text or a drawing"
    if s.terrain_std > PHOTO_STD and s.edge_share > PHOTO_EDGE_SHARE:
        return "high contrast with sharp edges, like a photograph"
    return None
